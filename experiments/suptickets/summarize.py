"""Summarize the Sup-tickets miniature (docs/methods.md §11.2 claims 1, 6, 8, 11).

    python experiments/suptickets/summarize.py

Reads experiments/results/suptickets/{base_vs_sup,averaging}/ (the JSONL logs, cross-checked against
results.json) and writes experiments/results/suptickets/summary.md and suptickets.png.

Every number comes from the final-epoch line of each log. With suptickets the final line's
test_acc/nll/ece are the ULTIMATE ticket; network_test_* the last training network; suptickets.tickets
the individual cheap tickets. mean ± sample std (ddof=1) over seeds.

Noise rules (mechanical):
  * per case, "*" when |delta of the means| > the larger of the two groups' seed stds (the brief's rule);
  * pooled verdicts use the PAIRED per-seed differences (base and +Sup share init, batches and the whole
    trajectory up to T0; CIA/CAA/CIMA share the whole training trajectory), pooled over the cases of the
    claim: significant when |mean diff| > 2 standard errors (SE = sd / sqrt(n)).
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # experiments/: summary_tools
from summary_tools import (Lines, check_final_means, fmt_ms, load_results_json, mean_std, pyplot,  # noqa: E402
                           read_jsonl, seed_logs, wall_time, write_text)

ROOT = os.path.join("experiments", "results", "suptickets")
METHODS = [("set", "SET"), ("rigl", "RigL"), ("granet", "GraNet")]
SPARSITIES = [90, 95]
RULES = ["cia", "caa", "cima"]


def load(name):
    """{label: {seed: final-epoch record}}, plus the wall time from results.md."""
    folder = os.path.join(ROOT, name)
    summary = load_results_json(folder, f"run experiments/suptickets/{name}.toml first")
    runs = {}
    for label, seed, path in seed_logs(folder):
        epochs = [rec for rec in read_jsonl(path) if "epoch" in rec]
        runs.setdefault(label, {})[seed] = epochs[-1] if epochs else None
    check_final_means(summary, lambda label: [r["test_acc"] for r in runs[label].values()], name)
    return runs, wall_time(folder)


def vals(run, key):
    return [run[s][key] for s in sorted(run)]


def paired(a, b, key_a, key_b=None):
    """Per-seed differences a[key_a] - b[key_b] over the seeds both have."""
    key_b = key_b or key_a
    seeds = sorted(set(a) & set(b))
    return [a[s][key_a] - b[s][key_b] for s in seeds]


def pooled(diffs):
    m, s = mean_std(diffs)
    se = s / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return m, se, (abs(m) > 2 * se) if se > 0 else (m != 0)


def pct(ms, nd=2):
    return fmt_ms(ms, 100, nd)


def num(ms, nd=3):
    return fmt_ms(ms, 1, nd)


def ticket_means(run):
    """Per seed: mean acc/nll/ece over the individual cheap tickets, best and last ticket acc."""
    out = {}
    for s, rec in run.items():
        tk = rec["suptickets"]["tickets"]
        out[s] = {"mean_acc": sum(t["acc"] for t in tk) / len(tk), "mean_nll": sum(t["nll"] for t in tk) / len(tk),
                  "mean_ece": sum(t["ece"] for t in tk) / len(tk), "best_acc": max(t["acc"] for t in tk),
                  "last_acc": tk[-1]["acc"], "n": len(tk)}
    return out


def main():
    base, wall_a = load("base_vs_sup")
    avg, wall_b = load("averaging")
    w = Lines()
    seeds = sorted(next(iter(base.values())))
    w("# Sup-tickets miniature (docs/methods.md §11.2): MNIST-5k, MLP 784-300-100-10 with BatchNorm")
    w()
    w(f"15 epochs x 55 iterations (T = 825), SGD 0.05 / momentum 0.9 / wd 5e-4, cosine, ERK random init, "
      f"delta_t 25, drop 0.3, t_end 0.75; GraNet 0.5 -> target by 50% of training. Sup-tickets: C = 28 "
      f"iterations (0.5 epoch), 3 cheap tickets (st_n_tickets = 3, T0 = 741: the last 10.2%), explore 0.3, "
      f"per-layer re-prune, cyclic LR 0.001-0.005, BN statistics averaged (mean and std). Seeds {seeds}. "
      f"Test set: 1000 digits (so 0.1 % = 1 digit). Wall time (results.md): base_vs_sup "
      f"{wall_a:.0f} s, averaging {wall_b:.0f} s (OMP_NUM_THREADS=1, 2-core CPU shared with another job).")
    w()
    w("`*` = |Δ of the means| > the larger seed std of the two groups. Paired Δ = mean ± std of the per-seed "
      "differences (same seed: identical trajectory until T0).")
    w()
    # ---------------------------------------------------------------- (a)
    w("## (a) Base vs + Sup-tickets (ultimate ticket)")
    w()
    dense = base.get("dense")
    if dense:
        w(f"dense (BN): acc {pct(mean_std(vals(dense, 'test_acc')))} %, NLL {num(mean_std(vals(dense, 'test_nll')))}, "
          f"ECE {num(mean_std(vals(dense, 'test_ece')))}")
        w()
    w("| method | sparsity | base acc (%) | +Sup acc (%) | Δacc (pp) | paired Δacc (pp) | base NLL | +Sup NLL | ΔNLL | "
      "base ECE | +Sup ECE | ΔECE |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    improved, ties, sig_better, sig_worse, cases = 0, 0, 0, 0, []
    all_dacc, rigl_dnll, rigl_dece, all_dnll, all_dece = [], [], [], [], []
    bars = []
    for m, name in METHODS:
        for sp in SPARSITIES:
            b, s = base[f"{m}-s{sp}"], base[f"{m}-s{sp}+sup"]
            row = {}
            cells = []
            for key, scale, nd in (("test_acc", 100, 2), ("test_nll", 1, 3), ("test_ece", 1, 3)):
                mb, ms_ = mean_std(vals(b, key)), mean_std(vals(s, key))
                d = ms_[0] - mb[0]
                mark = "*" if abs(d) > max(mb[1], ms_[1]) else ""
                row[key] = (mb, ms_, d, mark)
                if key == "test_acc":
                    pd = mean_std(paired(s, b, key))
                    cells += [pct(mb), pct(ms_), f"{100 * d:+.2f}{mark}", f"{100 * pd[0]:+.2f} ± {100 * pd[1]:.2f}"]
                else:
                    cells += [num(mb), num(ms_), f"{d:+.3f}{mark}"]
            d_acc, mark = row["test_acc"][2], row["test_acc"][3]
            improved += d_acc > 1e-9
            ties += abs(d_acc) <= 1e-9
            sig_better += bool(mark) and d_acc > 0
            sig_worse += bool(mark) and d_acc < 0
            all_dacc += paired(s, b, "test_acc")
            all_dnll += paired(s, b, "test_nll")
            all_dece += paired(s, b, "test_ece")
            if m == "rigl":
                rigl_dnll += paired(s, b, "test_nll")
                rigl_dece += paired(s, b, "test_ece")
            cases.append((name, sp, d_acc))
            bars.append((f"{name}\n{sp}%", row["test_acc"][0], row["test_acc"][1]))
            w(f"| {name} | {sp}% | " + " | ".join(cells) + " |")
    w()
    w(f"Improved (Δacc > 0): **{improved} of {len(cases)}** (paper: 63 of 66), {ties} tied, "
      f"{len(cases) - improved - ties} worse; beyond the larger std: {sig_better} better, {sig_worse} worse.")
    w()
    # ---------------------------------------------------------------- (b)
    w("## (b) Averaging rule: RigL + Sup-tickets, CIA vs CAA vs CIMA (β = 0.8)")
    w()
    w("| sparsity | rule | acc (%) | NLL | ECE | paired Δacc vs CIA (pp) |")
    w("|---|---|---|---|---|---|")
    cia_minus_caa, cia_minus_cima = [], []
    for sp in SPARSITIES:
        cia = avg[f"rigl-s{sp}+sup-cia"]
        for r in RULES:
            run = avg[f"rigl-s{sp}+sup-{r}"]
            pd = "" if r == "cia" else (lambda x: f"{100 * x[0]:+.2f} ± {100 * x[1]:.2f}")(mean_std(paired(run, cia, "test_acc")))
            w(f"| {sp}% | {r.upper()} | {pct(mean_std(vals(run, 'test_acc')))} | {num(mean_std(vals(run, 'test_nll')))} | "
              f"{num(mean_std(vals(run, 'test_ece')))} | {pd} |")
        cia_minus_caa += paired(cia, avg[f"rigl-s{sp}+sup-caa"], "test_acc")
        cia_minus_cima += paired(cia, avg[f"rigl-s{sp}+sup-cima"], "test_acc")
    # determinism: the CIA runs repeat rigl-s9x+sup of base_vs_sup; CAA/CIMA share the training trajectory
    same = all(abs(a - b) < 1e-12 for sp in SPARSITIES
               for a, b in zip(vals(avg[f"rigl-s{sp}+sup-cia"], "test_acc"), vals(base[f"rigl-s{sp}+sup"], "test_acc")))
    shared = all(avg[f"rigl-s{sp}+sup-{r}"][s]["network_test_acc"] == avg[f"rigl-s{sp}+sup-cia"][s]["network_test_acc"]
                 for sp in SPARSITIES for r in RULES for s in seeds)
    w()
    w(f"Checks: CIA runs reproduce base_vs_sup's rigl+sup exactly: {'yes' if same else 'NO'}; the three rules share "
      f"the training network (same network_test_acc per seed): {'yes' if shared else 'NO'}, so the paired Δ "
      f"isolates the averaging rule.")
    w()
    # ---------------------------------------------------------------- (c)
    w("## (c) Ultimate ticket vs the individual cheap tickets vs the last training network (acc %, mean over seeds)")
    w()
    w("The 'network' is the training network after the last iteration, which (Alg. 1) has just been explored: "
      "30 % of its active weights dropped by |w| and as many regrown at 0 right after ticket 3 was taken. "
      "Ticket 3 is that same network just before the exploration.")
    w()
    w("| run | ultimate | mean ticket | best ticket | ticket 3 (last) | network | ult − mean ticket (paired, pp) | "
      "ult − network (pp) | ult NLL | mean-ticket NLL |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    ult_minus_mean, ult_bars = [], []
    sup_runs = [(f"{m}-s{sp}+sup", base[f"{m}-s{sp}+sup"], True) for m, _ in METHODS for sp in SPARSITIES]
    sup_runs += [(f"rigl-s{sp}+sup-{r}", avg[f"rigl-s{sp}+sup-{r}"], False) for sp in SPARSITIES for r in ("caa", "cima")]
    for label, run, in_claim in sup_runs:
        tm = ticket_means(run)
        d = [run[s]["test_acc"] - tm[s]["mean_acc"] for s in sorted(run)]
        dn = [run[s]["test_acc"] - run[s]["network_test_acc"] for s in sorted(run)]
        if in_claim:
            ult_minus_mean += d
            ult_bars.append((label, run, tm))
        mm = lambda xs: 100 * sum(xs) / len(xs)
        w(f"| {label} | {mm(vals(run, 'test_acc')):.2f} | {mm([tm[s]['mean_acc'] for s in tm]):.2f} | "
          f"{mm([tm[s]['best_acc'] for s in tm]):.2f} | {mm([tm[s]['last_acc'] for s in tm]):.2f} | "
          f"{mm(vals(run, 'network_test_acc')):.2f} | {100 * mean_std(d)[0]:+.2f} ± {100 * mean_std(d)[1]:.2f} | "
          f"{100 * mean_std(dn)[0]:+.2f} ± {100 * mean_std(dn)[1]:.2f} | {mean_std(vals(run, 'test_nll'))[0]:.3f} | "
          f"{sum(tm[s]['mean_nll'] for s in tm) / len(tm):.3f} |")
    w()
    # ---------------------------------------------------------------- (d)
    w("## (d) Ticket diversity (pairwise over the 3 cheap tickets, test set)")
    w()
    w("| run | disagreement | KL (symmetric) |")
    w("|---|---|---|")
    for label, run, _ in sup_runs:
        dis = mean_std(r["suptickets"]["disagreement"] for r in run.values())
        kl = mean_std(r["suptickets"]["kl"] for r in run.values())
        w(f"| {label} | {dis[0]:.4f} ± {dis[1]:.4f} | {kl[0]:.4f} ± {kl[1]:.4f} |")
    w()
    w("(Paper Table 6, WRN28-10 CIFAR-10: d_dis 0.015-0.017, d_KL 0.015 for SET/RigL + Sup-tickets.)")
    w()
    # ---------------------------------------------------------------- (e)
    w("## (e) Verdicts on docs/methods.md §11.2 (mechanical; pooled paired differences, significant = |mean| > 2 SE)")
    w()

    def verdict(diffs, want_positive, extra_ok=True):
        m, se, sig = pooled(diffs)
        good = m > 0 if want_positive else m < 0
        if sig and good and extra_ok:
            v = "holds"
        elif sig and not good:
            v = "does not hold"
        else:
            v = "within noise"
        return v, m, se

    v, m, se = verdict(all_dacc, True, extra_ok=improved >= 5)
    w(f"- **Claim 1** (Sup-tickets improves the base method, 63/66): improved in {improved}/6 cases, {ties} tied "
      f"({sig_better} beyond the larger std, {sig_worse} worse beyond it); pooled paired Δacc = {100 * m:+.2f} pp "
      f"± {100 * se:.2f} SE over {len(all_dacc)} seed pairs → **{v}** (holds needs ≥ 5/6 improved and a "
      f"significant positive pooled Δ).")
    v, m, se = verdict(cia_minus_caa, True)
    per = ", ".join(f"{sp}%: {100 * mean_std(paired(avg[f'rigl-s{sp}+sup-cia'], avg[f'rigl-s{sp}+sup-caa'], 'test_acc'))[0]:+.2f} pp"
                    for sp in SPARSITIES)
    vm, mm_, sem = verdict(cia_minus_cima, True)
    w(f"- **Claim 6** (CIA ≥ CAA): acc(CIA) − acc(CAA) = {per}; pooled {100 * m:+.2f} ± {100 * se:.2f} SE "
      f"(n = {len(cia_minus_caa)}) → **{v}**" + (" (means ≥ 0 but not significant: consistent with ≥)" if v == "within noise" and m >= 0 else "")
      + f". (CIA − CIMA: {100 * mm_:+.2f} ± {100 * sem:.2f} SE → {vm}.)")
    v, m, se = verdict(ult_minus_mean, True)
    n_pos = sum(1 for label, run, tm in ult_bars
                if sum(run[s]["test_acc"] - tm[s]["mean_acc"] for s in run) > 0)
    w(f"- **Claim 8** (ultimate ticket > mean of the individual cheap tickets): ultimate ahead in {n_pos}/"
      f"{len(ult_bars)} method/sparsity cases; pooled paired Δ = {100 * m:+.2f} pp ± {100 * se:.2f} SE "
      f"(n = {len(ult_minus_mean)}) → **{v}**" + (" (the paper's 'large margin' is not seen)" if abs(m) < 0.005 else "") + ".")
    for tag, dn, de in (("RigL (the claim)", rigl_dnll, rigl_dece), ("all 3 methods", all_dnll, all_dece)):
        vn, mn, sen = verdict(dn, False)
        ve, me, see = verdict(de, False)
        w(f"- **Claim 11** (lower NLL and ECE with Sup-tickets), {tag}: ΔNLL = {mn:+.4f} ± {sen:.4f} SE → **{vn}**; "
          f"ΔECE = {me:+.4f} ± {see:.4f} SE → **{ve}** (n = {len(dn)} seed pairs; sign of Δ: NLL "
          f"{'−' if mn < 0 else '+'}, ECE {'−' if me < 0 else '+'}).")
    w()
    w("Scale caveat: a 55-iteration-per-epoch MLP on 3500 digits with 3 tickets, not CIFAR ResNets/VGG; the "
      "verdicts are about this miniature only.")
    text = w.text()
    write_text(os.path.join(ROOT, "summary.md"), text)
    print(text)
    plot(bars, ult_bars, dense, os.path.join(ROOT, "suptickets.png"))


def plot(bars, ult_bars, dense, path):
    import numpy as np
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8))
    x = np.arange(len(bars))
    wd = 0.38
    ax1.bar(x - wd / 2, [100 * b[1][0] for b in bars], wd, yerr=[100 * b[1][1] for b in bars], capsize=3, label="base")
    ax1.bar(x + wd / 2, [100 * b[2][0] for b in bars], wd, yerr=[100 * b[2][1] for b in bars], capsize=3,
            label="+ Sup-tickets (ultimate)")
    if dense:
        d = mean_std(vals(dense, "test_acc"))
        ax1.axhline(100 * d[0], color="k", ls="--", lw=1, label=f"dense {100 * d[0]:.2f}")
    lo = min(100 * min(b[1][0] - b[1][1], b[2][0] - b[2][1]) for b in bars)
    hi = max(100 * max(b[1][0] + b[1][1], b[2][0] + b[2][1]) for b in bars)
    ax1.set_ylim(lo - 0.5, hi + 0.5)
    ax1.set_xticks(x, [b[0] for b in bars])
    ax1.set(ylabel="test accuracy (%)", title="base vs + Sup-tickets (mean ± std, 3 seeds)")
    ax1.legend(fontsize=8, loc="lower left")

    keys = [("ultimate", None), ("ticket 1", 0), ("ticket 2", 1), ("ticket 3", 2), ("network", "net")]
    x = np.arange(len(ult_bars))
    wd = 0.16
    ys_all = []
    for j, (name, k) in enumerate(keys):
        ys, es = [], []
        for label, run, tm in ult_bars:
            if k is None:
                v = vals(run, "test_acc")
            elif k == "net":
                v = vals(run, "network_test_acc")
            else:
                v = [run[s]["suptickets"]["tickets"][k]["acc"] for s in sorted(run)]
            m, s = mean_std(v)
            ys.append(100 * m)
            es.append(100 * s)
        ys_all += [y - e for y, e in zip(ys, es)] + [y + e for y, e in zip(ys, es)]
        ax2.bar(x + (j - 2) * wd, ys, wd, yerr=es, capsize=2, label=name)
    ax2.set_ylim(min(ys_all) - 0.5, max(ys_all) + 0.5)
    ax2.set_xticks(x, [lb.replace("+sup", "") for lb, _, _ in ult_bars])
    ax2.set(ylabel="test accuracy (%)", title="ultimate ticket vs cheap tickets vs last (explored) network")
    ax2.legend(fontsize=7, ncol=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
