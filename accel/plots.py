"""The curves of an experiment (``curves.png``): test accuracy and density per epoch, every run in a
style of its own, the legend outside the axes.

Style: runs of one method (or procedure) share a colour, and within a method each run gets its own
line style and marker, so 18 runs of 6 methods at 3 densities stay apart; when every run has its
own method, each gets its own colour. Accuracy: mean over seeds with the min-max band; density:
mean over seeds (GraNet and GMP masks depend on the seed's gradients)."""
from __future__ import annotations

import glob
import io
import json
import os
import re
from collections import OrderedDict

LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def styles(labels: list, groups: dict | None = None) -> dict:
    """label -> matplotlib keyword arguments (color, linestyle, marker); no two labels alike."""
    import matplotlib
    groups = groups or {}
    keys = list(OrderedDict.fromkeys(groups.get(lb, lb) for lb in labels))
    cmap = matplotlib.colormaps["tab10" if len(keys) <= 10 else "tab20"]
    out, within = {}, {}
    for lb in labels:
        g = groups.get(lb, lb)
        gi, k = keys.index(g), within.get(g, 0)
        within[g] = k + 1
        cycle = gi // cmap.N                  # more groups than colours: the style tells them apart
        out[lb] = {"color": cmap(gi % cmap.N), "linestyle": LINESTYLES[(k + cycle) % len(LINESTYLES)],
                   "marker": MARKERS[(k + 2 * cycle) % len(MARKERS)]}
    return out


def _mean(values):
    return sum(values) / len(values)


def series(histories: list) -> dict:
    """What is drawn for one run (one history per seed, cut to the shortest): epochs, accuracy mean /
    min / max in percent, density mean."""
    n = min(len(h) for h in histories)
    accs = [[100 * h[i]["test_acc"] for h in histories] for i in range(n)]
    return {"epoch": [r["epoch"] for r in histories[0][:n]], "acc": [_mean(a) for a in accs],
            "acc_lo": [min(a) for a in accs], "acc_hi": [max(a) for a in accs],
            "density": [_mean([h[i]["density"] for h in histories]) for i in range(n)]}


def figure(results: "OrderedDict[str, list]", title: str, groups: dict | None = None):
    """The matplotlib figure of ``plot_png`` (see there)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = styles(list(results), groups)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, histories in results.items():
        s = series(histories)
        kw = dict(st[label], markersize=3, markevery=max(1, len(s["epoch"]) // 10), linewidth=1.3)
        ax1.plot(s["epoch"], s["acc"], label=label, **kw)
        ax1.fill_between(s["epoch"], s["acc_lo"], s["acc_hi"], color=kw["color"], alpha=0.12)
        ax2.plot(s["epoch"], s["density"], **kw)
    seeds = sorted({len(h) for h in results.values()})
    ax1.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy (mean, band: min-max over seeds)")
    ax2.set(xlabel="epoch", ylabel="density of the prunable set", title="density (mean over seeds)", yscale="log")
    fig.suptitle(f"{title} ({'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per run)")
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
               ncol=1 if len(results) <= 20 else 2)
    fig.tight_layout()
    return fig


def plot_png(results: "OrderedDict[str, list]", title: str, groups: dict | None = None) -> bytes:
    """The accuracy and density curves, as the bytes of a PNG file. ``results``: label -> one history
    (list of epoch records) per seed; ``groups``: label -> method, for the colours."""
    import matplotlib.pyplot as plt
    fig = figure(results, title, groups)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def results_from_logs(folder: str) -> tuple["OrderedDict[str, list]", dict, str]:
    """(label -> histories, label -> method, experiment name) read back from the run logs of an
    output folder (``<label>_seed<seed>.jsonl``), runs in the order of results.json when present."""
    from .rundir import read_log
    runs: dict = {}
    for path in sorted(glob.glob(os.path.join(folder, "*_seed*.jsonl"))):
        m = re.fullmatch(r"(.+)_seed(\d+)\.jsonl", os.path.basename(path))
        if not m:
            continue
        records, _, _ = read_log(path)
        if not records or "config" not in records[0]:
            continue
        cfg = records[0]["config"]
        hist = [r for r in records[1:] if "epoch" in r and "test_acc" in r]
        if hist:
            runs.setdefault(m.group(1), {"method": cfg.get("method") if cfg.get("procedure", "train") == "train"
                                         else cfg.get("procedure"), "seeds": {}})["seeds"][int(m.group(2))] = hist
    if not runs:
        raise FileNotFoundError(f"{folder} holds no run log (<label>_seed<seed>.jsonl) with epoch records")
    order, name = list(runs), os.path.basename(os.path.normpath(folder))
    summary = os.path.join(folder, "results.json")
    if os.path.exists(summary):
        with open(summary, encoding="utf-8") as f:
            data = json.load(f)
        name = data.get("experiment", name)
        order = [r["label"] for r in data.get("rows", []) if r["label"] in runs] + \
                [lb for lb in runs if lb not in {r["label"] for r in data.get("rows", [])}]
    results = OrderedDict((lb, [runs[lb]["seeds"][s] for s in sorted(runs[lb]["seeds"])]) for lb in order)
    return results, {lb: runs[lb]["method"] for lb in order}, name


def replot(folder: str) -> str:
    """Rewrite ``<folder>/curves.png`` (atomically) from the run logs in ``folder``; returns its path."""
    from twinsparse.reference import safeio
    results, groups, name = results_from_logs(folder)
    path = os.path.join(folder, "curves.png")
    safeio.write_atomic(path, plot_png(results, name, groups))
    return path
