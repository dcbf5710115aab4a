"""Summarize the Sparse Cocktail miniature (docs/methods.md §11.6: [SC] Table 1, Table 7, Fig. 3).

    python experiments/cocktail/summarize.py [RESULTS_FOLDER]     (default experiments/results/cocktail)

Reads every <label>_seed<k>.jsonl of the folder (written by ``twinsparse run
experiments/cocktail/cocktail.toml``) and writes summary.md there: per run (full method and the four
ablations) the mean test accuracy of each pattern's subnetworks, all taken from ONE shared weight set,
before interpolation (each subnetwork on the dense network of the last IMP iteration that trained it)
and after (on D_best; both with their own BnUpdate), mean ± sample std over seeds, and the alphas.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import fmt_values, md_row, md_sep, read_jsonl, seed_logs, write_text  # noqa: E402

PATTERNS = ("dense", "unstructured", "channel", "nm")


def load(folder: str) -> dict:
    runs = defaultdict(dict)
    for label, seed, path in seed_logs(folder):
        final = [r for r in read_jsonl(path) if r.get("phase") == "cocktail"]
        if final:
            runs[label][seed] = final[-1]
    if not runs:
        sys.exit(f"no finished cocktail logs in {folder}: run experiments/cocktail/cocktail.toml first")
    return runs


def main(folder: str) -> str:
    runs = load(folder)
    lines = ["| run | seeds | " + " | ".join(f"{p} before | {p} after" for p in PATTERNS) + " | all after |",
             md_sep(3 + 2 * len(PATTERNS))]
    for label, by_seed in runs.items():
        finals = [by_seed[s] for s in sorted(by_seed)]
        row = [label, str(len(finals))]
        for p in PATTERNS:
            row += [fmt_values([f["pattern_acc_before"][p] for f in finals]),
                    fmt_values([f["pattern_acc_after"][p] for f in finals])]
        row.append(fmt_values([f["test_acc"] for f in finals]))
        lines.append(md_row(row))
    full = runs.get("cocktail")
    if full:
        finals = [full[s] for s in sorted(full)]
        subs = [f["subnetworks"] for f in finals]
        lines += ["", "All subnetworks of the full method (one weight set per seed; unstructured-k keeps 0.8^k of the "
                  "pruned layers' weights, channel-k 0.9^k of their channels):", "",
                  "| subnetwork | before interpolation | after interpolation |", "|---|---|---|"]
        for name in subs[0]:
            lines.append(md_row([name, fmt_values([x[name]["before"] for x in subs]),
                                 fmt_values([x[name]["after"] for x in subs])]))
    lines += ["", "alphas (Alg. 1, alpha_2..alpha_N; the weight kept on D_best) per run and seed:"]
    lines += [f"- {label} seed {s}: {by_seed[s]['alphas']}" for label, by_seed in runs.items() for s in sorted(by_seed)]
    text = "# Sparse Cocktail miniature: test accuracy (%) of the subnetworks of one shared weight set\n\n" + \
        "\n".join(lines) + "\n"
    write_text(os.path.join(folder, "summary.md"), text)
    return text


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("experiments", "results", "cocktail")))
