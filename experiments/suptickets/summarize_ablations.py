"""Summarize the Sup-tickets ablations (docs/methods.md §4, §11.2 claims 5, 7, 8, 10).

    python experiments/suptickets/summarize_ablations.py

Reads experiments/results/suptickets/{cycle_length,ticket_count,lr_schedules,base_vs_sup}/ (the JSON-lines
logs) and writes experiments/results/suptickets/ablations.md. Every number is the final-epoch record: the
ultimate ticket's test metrics, and the individual cheap tickets' in ``suptickets.tickets``; mean ± sample
std over seeds. Paired differences compare runs of one seed (identical trajectory until the stage starts
when the stage start is the same); "significant" = |mean paired difference| > 2 standard errors.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import ROOT, load, paired, pct, pooled, ticket_means, vals  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import Lines, mean_std, write_text  # noqa: E402


def best(labels, runs):
    means = {lab: mean_std(vals(runs[lab], "test_acc"))[0] for lab in labels}
    top = max(means.values())
    return [lab for lab, m in means.items() if m == top]


def main():
    w = Lines()
    w("# Sup-tickets ablations (miniature of [ST] §5 Table 5, Fig. 4, Table 7 and Table 4)")
    w()
    w("RigL + Sup-tickets (CIA) on the BatchNorm MLP of base_vs_sup.toml: 15 epochs x 55 iterations (T = 825), "
      "SGD 0.05 / momentum 0.9 / wd 5e-4, cosine, stage LR in [0.001, 0.005], 3 seeds, 1000 test digits "
      "(0.1 pp = 1 digit). Cells: test accuracy (%) of the ultimate ticket; 'cheap' = mean accuracy of the "
      "individual cheap tickets; 'gain' = ultimate - cheap, paired per seed.")
    w()
    # ------------------------------------------------------------ cycle length
    cyc, _ = load("cycle_length")
    w("## Cycle length (Table 5): stage fixed at the last 10% (83 iterations)")
    w()
    w("| sparsity | C (iterations) | tickets | ultimate (%) | cheap (%) | gain (pp, paired mean ± SE) |")
    w("|---|---|---|---|---|---|")
    for s in (95, 90):
        labels = [f"rigl-s{s}+sup-c{c}" for c in (7, 13, 27, 40)]
        for lab in labels:
            r, tm = cyc[lab], ticket_means(cyc[lab])
            gain = pooled([r[k]["test_acc"] - tm[k]["mean_acc"] for k in r])
            w(f"| {s}% | {lab.split('-c')[-1]} | {tm[0]['n']} | {pct(mean_std(vals(r, 'test_acc')))} | "
              f"{pct(mean_std([t['mean_acc'] for t in tm.values()]))} | {100 * gain[0]:+.2f} ± {100 * gain[1]:.2f} |")
        w(f"| {s}% | best on the means | | {', '.join(x.split('-c')[-1] for x in best(labels, cyc))} | | |")
        spread = [mean_std(vals(cyc[lab], "test_acc"))[0] for lab in labels]
        w(f"| {s}% | max - min of the means | | {100 * (max(spread) - min(spread)):.2f} pp | | |")
    w()
    # ------------------------------------------------------------ ticket count
    tc, _ = load("ticket_count")
    w("## Number of cheap tickets (Fig. 4): C = 28 iterations, M tickets in the last 28 M iterations")
    w()
    w("| sparsity | M | ultimate (%) | cheap (%) | gain (pp, paired mean ± SE) |")
    w("|---|---|---|---|---|")
    gains = []
    for s in (95, 90):
        labels = [f"rigl-s{s}+sup-m{m}" for m in (2, 4, 7)]
        for lab in labels:
            r, tm = tc[lab], ticket_means(tc[lab])
            d = [r[k]["test_acc"] - tm[k]["mean_acc"] for k in r]
            gains += d
            g = pooled(d)
            w(f"| {s}% | {lab.split('-m')[-1]} | {pct(mean_std(vals(r, 'test_acc')))} | "
              f"{pct(mean_std([t['mean_acc'] for t in tm.values()]))} | {100 * g[0]:+.2f} ± {100 * g[1]:.2f} |")
        w(f"| {s}% | best on the means: M = {', '.join(x.split('-m')[-1] for x in best(labels, tc))} | | | |")
    g = pooled(gains)
    w()
    w(f"Ultimate minus mean cheap ticket, pooled over the 6 cases x 3 seeds: {100 * g[0]:+.2f} pp "
      f"(SE {100 * g[1]:.2f}; {'significant' if g[2] else 'within noise'}).")
    w()
    # ------------------------------------------------------------ LR schedules
    lr, _ = load("lr_schedules")
    w("## Stage learning-rate schedules (Table 7): Eq. 3 vs FGE's vs SWA's cyclical rate, same range")
    w()
    w("| sparsity | Eq. 3 (%) | FGE (%) | SWA (%) | best on the means | paired Eq.3 - FGE (pp) | paired Eq.3 - SWA (pp) |")
    w("|---|---|---|---|---|---|---|")
    wins, d_fge, d_swa = 0, [], []
    for s in (95, 90, 80):
        labs = {k: f"rigl-s{s}+sup-{k}" for k in ("eq3", "fge", "swa")}
        m = {k: mean_std(vals(lr[v], "test_acc")) for k, v in labs.items()}
        a = paired(lr[labs["eq3"]], lr[labs["fge"]], "test_acc")
        b = paired(lr[labs["eq3"]], lr[labs["swa"]], "test_acc")
        d_fge += a
        d_swa += b
        wins += (m["eq3"][0] > m["fge"][0]) + (m["eq3"][0] > m["swa"][0])
        top = best(list(labs.values()), lr)
        w(f"| {s}% | {pct(m['eq3'])} | {pct(m['fge'])} | {pct(m['swa'])} | "
          f"{', '.join(t.split('-')[-1] for t in top)} | {100 * mean_std(a)[0]:+.2f} ± {100 * mean_std(a)[1]:.2f} | "
          f"{100 * mean_std(b)[0]:+.2f} ± {100 * mean_std(b)[1]:.2f} |")
    pf, ps = pooled(d_fge), pooled(d_swa)
    w()
    w(f"Eq. 3 above the other schedule on the means in {wins} of 6 comparisons (paper: 5 of 6). Pooled paired "
      f"Eq. 3 - FGE: {100 * pf[0]:+.2f} pp (SE {100 * pf[1]:.2f}, {'significant' if pf[2] else 'within noise'}); "
      f"Eq. 3 - SWA: {100 * ps[0]:+.2f} pp (SE {100 * ps[1]:.2f}, {'significant' if ps[2] else 'within noise'}).")
    w()
    # ------------------------------------------------------------ GraNet + Sup vs dense
    base, _ = load("base_vs_sup")
    w("## GraNet + Sup-tickets vs dense (Table 4), from base_vs_sup")
    w()
    dense = mean_std(vals(base["dense"], "test_acc"))
    w("| run | test acc (%) | Δ vs dense (pp, paired) |")
    w("|---|---|---|")
    w(f"| dense | {pct(dense)} | |")
    for s in (90, 95):
        lab = f"granet-s{s}+sup"
        d = mean_std(paired(base[lab], base["dense"], "test_acc"))
        w(f"| {lab} | {pct(mean_std(vals(base[lab], 'test_acc')))} | {100 * d[0]:+.2f} ± {100 * d[1]:.2f} |")
    w()
    out = os.path.join(ROOT, "ablations.md")
    write_text(out, w.text())
    print("\n".join(w))


if __name__ == "__main__":
    main()
