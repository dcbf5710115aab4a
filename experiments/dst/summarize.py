"""Summarize the DST-EE miniature (docs/methods.md §11.5: Table 1 and Fig. 3) from the three results folders.

    python experiments/dst/summarize.py

Reads experiments/results/dst/{table1_mlp,table1_cnn,c_sweep_mlp}/ (results.json + the JSONL logs) and
writes experiments/results/dst/summary.md, c_sweep.png and exploration.png. Every number comes from
the logs: final-epoch test accuracy and exploration degree R per seed, mean ± sample std (ddof=1).
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import (check_final_means, fmt_ms, load_results_json, md_row, mean_std, pyplot,  # noqa: E402
                           read_jsonl, seed_logs, spearman, wall_time, write_text)

ROOT = os.path.join("experiments", "results", "dst")
TABLES = {"MLP 784-300-100-10": "table1_mlp", "SmallCNN (BatchNorm)": "table1_cnn"}
SWEEP = "c_sweep_mlp"
METHODS = [("dense", "dense"), ("static", "static"), ("set", "SET"), ("rigl", "RigL"), ("snfs", "SNFS"),
           ("granet", "GraNet"), ("dst_ee", "DST-EE")]
DYNAMIC = ["set", "rigl", "snfs", "granet", "dst_ee"]
SPARSITIES = [90, 95, 98]


def load_folder(name):
    """{label: {"config": cfg, "epochs": [[rec...] per seed], "updates": [[u...] per seed], "seeds": [...]}}"""
    folder = os.path.join(ROOT, name)
    summary = load_results_json(folder, "run the config first")
    runs = {}
    for label, seed, path in seed_logs(folder):
        epochs, updates, cfg = [], [], None
        for rec in read_jsonl(path):
            if "config" in rec:
                cfg = rec["config"]
            elif "mask_update" in rec:
                updates.append(rec["mask_update"])
            else:
                epochs.append(rec)
        r = runs.setdefault(label, {"config": cfg, "epochs": [], "updates": [], "seeds": []})
        r["epochs"].append(epochs)
        r["updates"].append(updates)
        r["seeds"].append(seed)
    # cross-check the per-seed logs against results.json (same final-epoch mean)
    check_final_means(summary, lambda label: [e[-1]["test_acc"] for e in runs[label]["epochs"]], name)
    return runs, summary, wall_time(folder)


def final(run, key):
    return mean_std([e[-1][key] for e in run["epochs"]])


def fmt(ms, scale=100.0, nd=2):
    return fmt_ms(ms, scale, nd)


def compare(a, b, name_a, name_b):
    """'A >= B' on the means, and whether |difference| exceeds one std (the larger of the two seed stds)."""
    diff = a[0] - b[0]
    holds = diff >= 0
    sd = max(a[1], b[1])
    sig = abs(diff) > sd
    rel = "≥" if holds else "<"
    noise = f"|Δ| {100 * abs(diff):.2f} pp > 1 std ({100 * sd:.2f} pp)" if sig else \
        f"within noise (|Δ| {100 * abs(diff):.2f} pp ≤ 1 std {100 * sd:.2f} pp)"
    return holds, sig, f"{name_a} {rel} {name_b} ({100 * a[0]:.2f} vs {100 * b[0]:.2f}; {noise})"


def table_section(title, runs, wall, lines, verdicts):
    cfg = runs["dense"]["config"]
    n_seeds = len(runs["dense"]["seeds"])
    lines.append(f"### {title}: {cfg['epochs']} epochs, {n_seeds} seeds, wall time {wall:.0f} s\n")
    lines.append("Final-epoch test accuracy (%) on the 1000 test digits, mean ± std over seeds. "
                 "Dense has density 1.0 (same value repeated in every column).\n")
    lines.append("| method | 90% | 95% | 98% |")
    lines.append("|---|---|---|---|")
    for key, name in METHODS:
        cells = []
        for sp in SPARSITIES:
            label = "dense" if key == "dense" else f"{key}-s{sp}"
            cells.append(fmt(final(runs[label], "test_acc")) if label in runs else "n/a")
        lines.append(md_row([name] + cells))
    lines.append("\nFinal exploration degree R (fraction of prunable weights ever active, docs/methods.md §3.4), mean ± std. "
                 "Static: R = density. GraNet starts from init_density 0.5, so its R ≥ 0.5 by construction.\n")
    lines.append("| method | 90% | 95% | 98% |")
    lines.append("|---|---|---|---|")
    for key, name in METHODS:
        if key == "dense":
            continue
        cells = [fmt(final(runs[f"{key}-s{sp}"], "exploration_degree"), 1.0, 4) for sp in SPARSITIES]
        lines.append(md_row([name] + cells))
    n_up = len(runs[f"rigl-s{SPARSITIES[0]}"]["updates"][0])
    lines.append(f"\n({n_up} mask-update rounds per dynamic run.)\n")
    for sp in SPARSITIES:
        ee, rigl, set_ = (final(runs[f"{m}-s{sp}"], "test_acc") for m in ("dst_ee", "rigl", "set"))
        h1, s1, t1 = compare(ee, rigl, "DST-EE", "RigL")
        h2, s2, t2 = compare(rigl, set_, "RigL", "SET")
        chain = "HOLDS" if (h1 and h2) else "FAILS"
        strength = "both steps exceed 1 std" if (h1 and h2 and s1 and s2) else \
            ("at least one step within noise" if (h1 and h2) else "")
        verdicts.append(f"- {title}, {sp}% sparsity: DST-EE ≥ RigL ≥ SET on the means **{chain}**"
                        f"{' (' + strength + ')' if strength else ''}. {t1}; {t2}.")


def c_label(label):
    return float(label.split("-c", 1)[1])


def sweep_section(runs, wall, lines, verdicts):
    ee = sorted((r["config"]["c"], lab) for lab, r in runs.items() if r["config"]["method"] == "dst_ee")
    rigl_label = next(lab for lab, r in runs.items() if r["config"]["method"] == "rigl")
    cfg = runs[rigl_label]["config"]
    lines.append(f"### (b) DST-EE c sweep: MLP, density {cfg['density']} ({100 * (1 - cfg['density']):.0f}% sparsity), "
                 f"eps {runs[ee[0][1]]['config']['eps']}, {cfg['epochs']} epochs, {len(cfg and runs[rigl_label]['seeds'])} seeds, "
                 f"wall time {wall:.0f} s\n")
    lines.append("| c | final R | test acc (%) |")
    lines.append("|---|---|---|")
    Rs, accs, cs = [], [], []
    for c, lab in ee:
        R, acc = final(runs[lab], "exploration_degree"), final(runs[lab], "test_acc")
        Rs.append(R), accs.append(acc), cs.append(c)
        lines.append(f"| {c:g} | {fmt(R, 1.0, 4)} | {fmt(acc)} |")
    rR, racc = final(runs[rigl_label], "exploration_degree"), final(runs[rigl_label], "test_acc")
    lines.append(f"| RigL (reference) | {fmt(rR, 1.0, 4)} | {fmt(racc)} |\n")

    mono_R = all(b[0] >= a[0] for a, b in zip(Rs, Rs[1:]))
    steps = ", ".join(f"{cs[i]:g}→{cs[i + 1]:g}: {Rs[i + 1][0] - Rs[i][0]:+.4f}" for i in range(len(cs) - 1))
    verdicts.append(f"- R monotone non-decreasing in c (means): **{'YES' if mono_R else 'NO'}** ({steps}).")
    flat = [i for i in range(len(cs) - 1) if abs(Rs[i + 1][0] - Rs[i][0]) <= max(Rs[i][1], Rs[i + 1][1])]
    if flat:
        verdicts.append("  - R steps within one std (no resolvable change): "
                        + ", ".join(f"{cs[i]:g}→{cs[i + 1]:g}" for i in flat) + ".")
    mono_acc = all(b[0] >= a[0] for a, b in zip(accs, accs[1:]))
    rho = spearman(cs, [a[0] for a in accs])
    best = max(range(len(cs)), key=lambda i: accs[i][0])
    _, _, end_cmp = compare(accs[-1], accs[0], f"acc(c={cs[-1]:g})", f"acc(c={cs[0]:g})")
    verdicts.append(f"- Accuracy increases with c (means, monotone non-decreasing): **{'YES' if mono_acc else 'NO'}**; "
                    f"Spearman rank correlation of mean accuracy with c = {rho:+.2f}; best c = {cs[best]:g} "
                    f"({100 * accs[best][0]:.2f}%); {end_cmp}.")
    for i, (c, lab) in enumerate(ee):
        if abs(c - 1e-3) < 1e-12:
            _, _, t = compare(accs[i], racc, "DST-EE(c=1e-3)", "RigL")
            verdicts.append(f"- c sweep at 95%: {t}.")
    return cs, Rs, accs, rR, racc, ee, rigl_label


def plot_sweep(cs, Rs, accs, rR, racc, path):
    plt = pyplot()
    pos = [c for c in cs if c > 0]
    zero_x = min(pos) / 10 if pos else 1e-5   # c = 0 drawn one decade left of the smallest c > 0
    xs = [c if c > 0 else zero_x for c in cs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, vals, ref, ylab, scale, loc in ((axes[0], Rs, rR, "final exploration degree R", 1.0, "center right"),
                                            (axes[1], accs, racc, "final test accuracy (%)", 100.0, "lower left")):
        m = [scale * v[0] for v in vals]
        s = [scale * v[1] for v in vals]
        ax.errorbar(xs[1:] if cs[0] == 0 else xs, m[1:] if cs[0] == 0 else m, yerr=s[1:] if cs[0] == 0 else s,
                    marker="o", capsize=3, color="C0", label="DST-EE (mean ± std, 3 seeds)")
        if cs[0] == 0:
            ax.errorbar([xs[0]], [m[0]], yerr=[s[0]], marker="s", capsize=3, color="C3", linestyle="none",
                        label="DST-EE, c = 0 (plotted at offset)")
        ax.axhline(scale * ref[0], color="k", linestyle="--", linewidth=1, label="RigL (mean)")
        ax.axhspan(scale * (ref[0] - ref[1]), scale * (ref[0] + ref[1]), color="k", alpha=0.1, label="RigL ± std")
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(["0" if c == 0 else f"{c:g}" for c in cs])
        if cs[0] == 0:
            ax.axvline(math.sqrt(xs[0] * xs[1]), color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="exploration coefficient c (log scale; c = 0 left of the dotted line)", ylabel=ylab)
        ax.legend(fontsize=8, loc=loc)
        ax.grid(alpha=0.3)
    axes[0].set_title("DST-EE, MLP 95% sparsity: R vs c")
    axes[1].set_title("DST-EE, MLP 95% sparsity: accuracy vs c")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_curve(run, key="exploration_degree"):
    ts = [u["t"] for u in run["updates"][0]]
    for ups in run["updates"]:
        assert [u["t"] for u in ups] == ts, "mask-update rounds differ between seeds"
    vals = [sum(ups[i][key] for ups in run["updates"]) / len(run["updates"]) for i in range(len(ts))]
    return ts, vals


def plot_exploration(sweep_runs, ee, rigl_label, table_runs, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    cmap = plt.get_cmap("viridis")
    for i, (c, lab) in enumerate(ee):
        ts, vals = mean_curve(sweep_runs[lab])
        ax.plot(range(1, len(ts) + 1), vals, marker=".", color=cmap(i / max(1, len(ee) - 1)), label=f"DST-EE c={c:g}")
    ts, vals = mean_curve(sweep_runs[rigl_label])
    ax.plot(range(1, len(ts) + 1), vals, color="k", linestyle="--", marker="x", label="RigL")
    ax.set(xlabel="mask-update round q (every ΔT = 25 iterations)", ylabel="exploration degree R (mean of 3 seeds)",
           title="MLP, 95% sparsity: R over mask-update rounds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for key, name in METHODS:
        if key not in DYNAMIC:
            continue
        ts, vals = mean_curve(table_runs[f"{key}-s95"])
        ax.plot(range(1, len(ts) + 1), vals, marker=".", label=name)
    ax.set(xlabel="mask-update round q", ylabel="exploration degree R (mean of 3 seeds)", yscale="log",
           title="MLP, 95% sparsity, Table-1 methods (c = 1e-3 for DST-EE)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    lines = ["# DST-EE miniature on MNIST-5k (docs/methods.md §11.5: Table 1 and Fig. 3)\n",
             "Generated by `python experiments/dst/summarize.py` from `experiments/results/dst/*/`. "
             "Configs: `experiments/dst/*.toml` (SGD 0.05, momentum 0.9, wd 5e-4, cosine LR, batch 64, ERK random "
             "init, ΔT = 25, drop fraction 0.3 with cosine decay until 75% of training, DST-EE c = 1e-3 eps = 1, "
             "GraNet init_density 0.5 prune_end_fraction 0.5). All methods have the same epochs per model.\n",
             "## (a) Table 1 miniature\n"]
    verdicts = []
    table_runs = {}
    for title, folder in TABLES.items():
        runs, _, wall = load_folder(folder)
        table_runs[folder] = runs
        table_section(title, runs, wall or float("nan"), lines, verdicts)
    sweep_runs, _, wall = load_folder(SWEEP)
    cs, Rs, accs, rR, racc, ee, rigl_label = sweep_section(sweep_runs, wall or float("nan"), lines, verdicts)
    lines.append("Plots: `c_sweep.png` (R and accuracy vs c), `exploration.png` (R vs mask-update round).\n")
    lines.append("## (c) Verdicts (computed mechanically; 'exceeds 1 std' means |Δmean| > the larger of the two "
                 "seed stds)\n")
    lines += verdicts
    out = os.path.join(ROOT, "summary.md")
    write_text(out, "\n".join(lines) + "\n")
    plot_sweep(cs, Rs, accs, rR, racc, os.path.join(ROOT, "c_sweep.png"))
    plot_exploration(sweep_runs, ee, rigl_label, table_runs["table1_mlp"], os.path.join(ROOT, "exploration.png"))
    print("\n".join(lines))
    print(f"\nwrote {out}, {ROOT}/c_sweep.png, {ROOT}/exploration.png")


if __name__ == "__main__":
    main()
