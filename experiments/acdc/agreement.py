"""The dense-vs-GMP sample agreement that AC/DC's sparse/dense agreement is compared against ([TH] §3.6.1,
Table 3.9: AC/DC 89.8% / 86.8% vs GMP 86.0% / 83.5% at 80% / 90% sparsity; docs/methods.md §6.3).

    OMP_NUM_THREADS=1 python experiments/acdc/agreement.py

For each seed of experiments/acdc/acdc_vs_gmp_rigl_mlp30.toml it trains the dense model (the same
defaults: MLP with BatchNorm, 1000 digits, 30 epochs) and reads nothing else from the committed runs: it
retrains GMP at 90% and 95% with the same seed, init and batches, and measures on the 1000 test digits the
sample agreement (same top-1 prediction) and the prediction cross-entropy (dense as the reference) between
the dense model and each GMP model. The AC/DC pairs (its sparse model vs its dense fine-tuned model) are
read from the committed logs of that experiment. Writes experiments/results/acdc/agreement/agreement.json
and summary.md.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from twinsparse.accel import metrics as MET
from twinsparse.accel.runner import load_split
from twinsparse.accel.train import predict, train_accel
from twinsparse.reference.experiment_file import load_experiment
from twinsparse.reference.safeio import write_atomic

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import fmt_ms, mean_std, read_jsonl, seed_logs  # noqa: E402

CONFIG = os.path.join("experiments", "acdc", "acdc_vs_gmp_rigl_mlp30.toml")
RESULTS = os.path.join("experiments", "results", "acdc", "acdc_vs_gmp_rigl_mlp30")
OUT = os.path.join("experiments", "results", "acdc", "agreement")


def acdc_pairs():
    """{label: [(agreement, ce_dense_sparse, sparse acc, dense acc) per seed]} from the committed AC/DC logs."""
    out = {}
    for label, _, path in seed_logs(RESULTS, "acdc-s*_seed*.jsonl"):
        o = [r for r in read_jsonl(path) if r.get("phase") == "outputs"][-1]
        out.setdefault(label, []).append((o["sample_agreement"], o["cross_entropy_dense_sparse"], o["test_acc"],
                                          o["dense_test_acc"]))
    if not out:
        sys.exit(f"no AC/DC logs in {RESULTS}: run {CONFIG} first")
    return out


def main():
    exp = load_experiment(CONFIG)
    by_label = {r.label: r for r in exp.runs}
    gmp = {lab: by_label[lab] for lab in ("gmp-s90", "gmp-s95")}
    dense = by_label["gmp-s90"].replace(label="dense", method="dense", density=1.0)
    rows = {lab: [] for lab in gmp}
    for seed in exp.seeds:
        cfg_d = dense.replace(seed=seed)
        split = load_split(cfg_d)
        z_dense = predict(cfg_d, train_accel(cfg_d, split)["model"], split.x_test)
        for lab, run in gmp.items():
            cfg = run.replace(seed=seed)
            z = predict(cfg, train_accel(cfg, split)["model"], split.x_test)
            yt = torch.from_numpy(split.y_test)
            rows[lab].append((MET.sample_agreement(z, z_dense), MET.prediction_cross_entropy(z_dense, z),
                              MET.accuracy(z, yt), MET.accuracy(z_dense, yt)))
            print(seed, lab, rows[lab][-1], flush=True)
    acdc = acdc_pairs()
    table = {"gmp (vs dense)": rows, "acdc (sparse vs dense fine-tuned)": acdc}
    lines = ["# Sparse/dense agreement: AC/DC vs GMP (thesis Table 3.9 miniature)", "",
             f"Setting: {CONFIG} (MLP with BatchNorm, 1000 digits, 30 epochs), seeds {exp.seeds}; 1000 test digits.",
             "GMP pairs: the GMP model vs a dense model trained with the same seed, init and batches. AC/DC pairs: "
             "its sparse model vs its own dense fine-tuned model (committed logs). mean ± std over seeds.", "",
             "| pair | sparsity | sample agreement | cross-entropy (dense ref.) | sparse acc | dense acc |",
             "|---|---|---|---|---|---|"]
    for kind, groups in table.items():
        for lab, vals in sorted(groups.items()):
            cols = list(zip(*vals))
            cells = [fmt_ms(mean_std(c), 1.0, 4) for c in cols]
            lines.append(f"| {kind} | {lab.split('-s')[-1]}% | " + " | ".join(cells) + " |")
    os.makedirs(OUT, exist_ok=True)
    write_atomic(os.path.join(OUT, "agreement.json"), json.dumps(
        {k: {lab: [list(map(float, v)) for v in vals] for lab, vals in g.items()} for k, g in table.items()},
        indent=1).encode())
    write_atomic(os.path.join(OUT, "summary.md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
