"""Summarize the AC/DC phase-plan miniatures (docs/methods.md §6.1, §6.3, §11.3).

    python experiments/acdc/summarize_plans.py

Reads experiments/results/acdc/{acdc_plans_mlp,acdc_plans_cnn}/ (and acdc_vs_gmp_rigl/ for the 10-epoch
scaled runs) and writes experiments/results/acdc/plans_summary.md: per run the final test accuracy of the
sparse model (or of the GMP / RigL / dense model), and for AC/DC its dense fine-tuned model, the sparse/dense
sample agreement, the prediction cross-entropy (dense as the reference) and the mean change between
consecutive compression masks; mean ± sample std over seeds; "collapsed" counts seeds at chance (<= 15%).
"""
from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import Lines, fmt_values, read_jsonl, seed_logs, write_text  # noqa: E402

ROOT = os.path.join("experiments", "results", "acdc")


def load(name):
    runs = {}
    for label, _, path in seed_logs(os.path.join(ROOT, name)):
        recs = read_jsonl(path)
        outs = [r for r in recs if r.get("phase") == "outputs"]
        if outs:
            o = outs[-1]
            row = {"acc": o["test_acc"], "dense": o["dense_test_acc"], "agree": o["sample_agreement"],
                   "ce": o["cross_entropy_dense_sparse"], "change": o["mean_compressed_mask_change"]}
        else:
            last = [r for r in recs if "epoch" in r and "test_acc" in r][-1]
            row = {"acc": last["test_acc"]}
        runs.setdefault(label, []).append(row)
    return runs


def cell(rows, key, scale=100.0, nd=2):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return fmt_values(vals, scale, nd) if vals else ""


def table(w, runs):
    w("| run | sparse / model acc (%) | collapsed | AC/DC dense fine-tuned (%) | sparse/dense agreement | "
      "cross-entropy (dense ref.) | compression mask change |")
    w("|---|---|---|---|---|---|---|")
    for lab, rows in runs.items():
        dead = sum(r["acc"] <= 0.15 for r in rows)
        w(f"| {lab} | {cell(rows, 'acc')} | {dead}/{len(rows)} | {cell(rows, 'dense')} | {cell(rows, 'agree', 1, 4)} | "
          f"{cell(rows, 'ce', 1, 3)} | {cell(rows, 'change', 1, 3)} |")


def main():
    w = Lines()
    w("# AC/DC: the thesis phase plan vs scaled lengths, and the uniform / 2:4 variants")
    w()
    w("## MLP 784-300-100-10 with BatchNorm, 1000 digits, 50 epochs (acdc_plans_mlp.toml)")
    w()
    w("Thesis plan: W 10, C 5, D 5, C 5, final D 10, final C 15. Scaled plan: W 5, C/D 3 (6 compressions), "
      "final D 5, final C 13. Warm-up 5 epochs + cosine LR (per epoch) for every run; GMP/RigL update every "
      "epoch until 75%.")
    w()
    table(w, load("acdc_plans_mlp"))
    w()
    if glob.glob(os.path.join(ROOT, "acdc_plans_cnn", "*.jsonl")):
        w("## SmallCNN with BatchNorm, 1000 digits, density 0.05 (acdc_plans_cnn.toml: 40 epochs; "
          "acdc_vs_gmp_rigl.toml: 10 epochs, scaled)")
        w()
        w("Thesis plan at 40 epochs: W 10, C 5, final D 10, final C 15. Scaled plan at 40: W 4, C/D 2 (7 "
          "compressions), final D 4, final C 6. At 10 epochs (committed): W 1, C/D 1, final D 1, final C 3. "
          "Cosine LR.")
        w()
        runs = load("acdc_plans_cnn")
        old = load("acdc_vs_gmp_rigl")
        runs.update({f"{k} (10 epochs, scaled)": v for k, v in old.items() if k.startswith("acdc-s95")})
        table(w, runs)
        w()
    write_text(os.path.join(ROOT, "plans_summary.md"), w.text())
    print("\n".join(w))


if __name__ == "__main__":
    main()
