"""Helpers shared by the summarize scripts of experiments/ (and experiments/acdc/agreement.py).

The scripts run as ``python experiments/<dir>/<script>.py`` from the repository root; each puts this
folder on ``sys.path`` first (``sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))``)
and imports what it needs from here:

* the logs of a results folder (``seed_logs``: label, seed and path of every ``<label>_seed<k>.jsonl``;
  ``read_jsonl``), its ``results.json`` (``load_results_json``, ``check_final_means``) and the wall time
  that ``results.md`` reports (``wall_time``);
* mean ± sample std over seeds (``mean_std``, the runner's), ``spearman``, and the markdown cells: ``fmt_ms`` formats a
  (mean, std) pair scaled after averaging, ``fmt_values`` averages the scaled values;
* markdown rows (``md_row``, ``md_sep``), the report being built (``Lines``), ``write_text`` and
  ``pyplot`` (matplotlib on the Agg backend).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import sys

from twinsparse.accel.runner import mean_std

__all__ = ["mean_std", "spearman", "seed_logs", "read_jsonl", "load_results_json", "check_final_means", "wall_time",
           "fmt_ms", "fmt_values", "md_row", "md_sep", "Lines", "write_text", "pyplot"]

_LOG = re.compile(r"(.+)_seed(\d+)\.jsonl$")


# ----------------------------------------------------------------------------- reading results

def seed_logs(folder: str, pattern: str = "*_seed*.jsonl"):
    """(label, seed, path) of every JSON-lines log ``<label>_seed<k>.jsonl`` in ``folder`` matching
    ``pattern``, in sorted path order."""
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        label, seed = _LOG.match(os.path.basename(path)).groups()
        yield label, int(seed), path


def read_jsonl(path: str) -> list:
    """The records of a JSON-lines log."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_results_json(folder: str, missing: str) -> dict:
    """``folder``/results.json (the runner's table); exits with ``missing`` appended when it is absent."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        sys.exit(f"missing {folder}/results.json: {missing}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_final_means(summary: dict, final_accs, name: str) -> None:
    """Cross-check the logs against results.json: for every row, the mean of ``final_accs(label)``
    (the final test accuracy of each seed) equals the row's ``test_acc`` mean."""
    for row in summary["rows"]:
        m, _ = mean_std(final_accs(row["label"]))
        assert abs(m - row["test_acc"][0]) < 1e-9, (name, row["label"])


def wall_time(folder: str):
    """The wall time (s) that ``folder``/results.md reports, or None."""
    md = os.path.join(folder, "results.md")
    if not os.path.isfile(md):
        return None
    with open(md, encoding="utf-8") as f:
        found = re.search(r"wall time: ([0-9.]+) s", f.read())
    return float(found.group(1)) if found else None


# ----------------------------------------------------------------------------- statistics

def spearman(xs, ys, undefined=float("nan")) -> float:
    """Spearman's rank correlation (tied values share their average rank); ``undefined`` when a
    side is constant."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / den if den else undefined


# ----------------------------------------------------------------------------- formatting

def fmt_ms(ms, scale=1.0, nd=2) -> str:
    """A (mean, std) pair as "mean ± std", both times ``scale``, ``nd`` decimals."""
    return f"{scale * ms[0]:.{nd}f} ± {scale * ms[1]:.{nd}f}"


def fmt_values(values, scale=100.0, nd=2) -> str:
    """Mean ± sample std of ``scale`` times each value, ``nd`` decimals."""
    m, s = mean_std([scale * v for v in values])
    return f"{m:.{nd}f} ± {s:.{nd}f}"


def md_row(cells) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def md_sep(n: int) -> str:
    """The separator row of a markdown table of ``n`` columns."""
    return "|---" * n + "|"


class Lines(list):
    """The lines of a report: ``w(s)`` appends one (``w()`` an empty one); ``text()`` joins them."""

    def __call__(self, s: str = "") -> None:
        self.append(s)

    def text(self) -> str:
        return "\n".join(self) + "\n"


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (ImportError without matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
