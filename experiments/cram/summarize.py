"""Summarize the CrAM miniature (docs/methods.md §7.5, §11.4) from its JSON-lines logs.

    python experiments/cram/summarize.py [RESULTS_FOLDER]

Default folder: experiments/results/cram/cram_vs_sgd. Writes summary.md there: per run (label) and pattern,
the dense test accuracy and the one-shot pruned accuracy at every sparsity before and after BNT, mean ±
sample std over seeds (ddof 1); plus the "best of before/after BNT" table the thesis reports in Tables
5.14/5.15. Every number comes from the last record of each log (its ``oneshot`` list).
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from collections import OrderedDict

from twinsparse.accel.runner import mean_std

DEFAULT = os.path.join("experiments", "results", "cram", "cram_vs_sgd")


def load(folder: str) -> "OrderedDict[str, list]":
    runs: "OrderedDict[str, list]" = OrderedDict()
    paths = sorted(glob.glob(os.path.join(folder, "*_seed*.jsonl")))
    if not paths:
        sys.exit(f"no logs in {folder}: run the config first")
    order = None
    if os.path.isfile(os.path.join(folder, "results.json")):
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
            order = [r["label"] for r in json.load(f)["rows"]]
    for path in paths:
        label, _ = re.match(r"(.+)_seed(\d+)\.jsonl$", os.path.basename(path)).groups()
        with open(path, encoding="utf-8") as f:
            recs = [json.loads(line) for line in f]
        last = [r for r in recs if "oneshot" in r]
        if not last:
            sys.exit(f"{path} has no one-shot record (not a finished 'cram' procedure run)")
        runs.setdefault(label, []).append(last[-1])
    if order:
        runs = OrderedDict((k, runs[k]) for k in order if k in runs)
    return runs


def _fmt(values) -> str:
    m, s = mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}"


def tables(runs) -> str:
    first = next(iter(runs.values()))[0]["oneshot"]
    patterns = list(OrderedDict.fromkeys(r["pattern"] for r in first))
    has_bnt = "test_acc_bnt" in first[0]
    out = []
    for pat in patterns:
        cols = [r["sparsity"] for r in first if r["pattern"] == pat]
        head = "| run | seeds | dense | " + " | ".join(f"{100 * s:.0f}%" for s in cols) + " |"
        sep = "|---" * (3 + len(cols)) + "|"
        kinds = [("before BNT", "test_acc")] + ([("after BNT", "test_acc_bnt"), ("best of both", None)] if has_bnt else [])
        for title, key in kinds:
            out += [f"\n### {pat}: one-shot test accuracy (%), {title}\n", head, sep]
            for label, finals in runs.items():
                cells = []
                for i in range(len(cols)):
                    rows = [[r for r in f["oneshot"] if r["pattern"] == pat][i] for f in finals]
                    vals = [r[key] if key else max(r["test_acc"], r["test_acc_bnt"]) for r in rows]
                    cells.append(_fmt(vals))
                out.append(f"| {label} | {len(finals)} | {_fmt([f['test_acc'] for f in finals])} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    folder = (argv or sys.argv[1:] or [DEFAULT])[0]
    runs = load(folder)
    text = (f"# CrAM one-shot pruning summary ({folder})\n\nDense = the trained model, unpruned. One-shot: "
            f"magnitude pruning of the prunable set (fc weights), then BNT on 1000 training samples.\n"
            + tables(runs) + "\n")
    with open(os.path.join(folder, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
