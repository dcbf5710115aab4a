"""Summarize the CrAM miniature (docs/methods.md §7.5, §11.4) from its JSON-lines logs.

    python experiments/cram/summarize.py [RESULTS_FOLDER]

Default folder: experiments/results/cram/cram_vs_sgd. Writes summary.md there: per run (label) and pattern,
the dense test accuracy and the one-shot pruned accuracy at every sparsity before and after BNT, mean ±
sample std over seeds (ddof 1); plus the "best of before/after BNT" table the thesis reports in Tables
5.14/5.15. Every number comes from the last record of each log (its ``oneshot`` list).
"""
from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import fmt_values, md_row, md_sep, read_jsonl, seed_logs, write_text  # noqa: E402

DEFAULT = os.path.join("experiments", "results", "cram", "cram_vs_sgd")


def load(folder: str) -> "OrderedDict[str, list]":
    runs: "OrderedDict[str, list]" = OrderedDict()
    logs = list(seed_logs(folder))
    if not logs:
        sys.exit(f"no logs in {folder}: run the config first")
    order = None
    if os.path.isfile(os.path.join(folder, "results.json")):
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
            order = [r["label"] for r in json.load(f)["rows"]]
    for label, _, path in logs:
        last = [r for r in read_jsonl(path) if "oneshot" in r]
        if not last:
            sys.exit(f"{path} has no one-shot record (not a finished 'cram' procedure run)")
        runs.setdefault(label, []).append(last[-1])
    if order:
        runs = OrderedDict((k, runs[k]) for k in order if k in runs)
    return runs


def tables(runs) -> str:
    first = next(iter(runs.values()))[0]["oneshot"]
    patterns = list(OrderedDict.fromkeys(r["pattern"] for r in first))
    has_bnt = "test_acc_bnt" in first[0]
    out = []
    for pat in patterns:
        cols = [r["sparsity"] for r in first if r["pattern"] == pat]
        head = md_row(["run", "seeds", "dense"] + [f"{100 * s:.0f}%" for s in cols])
        sep = md_sep(3 + len(cols))
        kinds = [("before BNT", "test_acc")] + ([("after BNT", "test_acc_bnt"), ("best of both", None)] if has_bnt else [])
        for title, key in kinds:
            out += [f"\n### {pat}: one-shot test accuracy (%), {title}\n", head, sep]
            for label, finals in runs.items():
                cells = []
                for i in range(len(cols)):
                    rows = [[r for r in f["oneshot"] if r["pattern"] == pat][i] for f in finals]
                    vals = [r[key] if key else max(r["test_acc"], r["test_acc_bnt"]) for r in rows]
                    cells.append(fmt_values(vals))
                out.append(md_row([label, str(len(finals)), fmt_values([f["test_acc"] for f in finals])] + cells))
    return "\n".join(out)


def main(argv=None) -> None:
    folder = (argv or sys.argv[1:] or [DEFAULT])[0]
    runs = load(folder)
    text = (f"# CrAM one-shot pruning summary ({folder})\n\nDense = the trained model, unpruned. One-shot: "
            f"magnitude pruning of the prunable set (fc weights), then BNT on 1000 training samples.\n"
            + tables(runs) + "\n")
    write_text(os.path.join(folder, "summary.md"), text)
    print(text)


if __name__ == "__main__":
    main()
