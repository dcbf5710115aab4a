"""Sparse Cocktail ([SC] Li et al., ICML 2024), procedure 'cocktail', written once over the engines
(``reference.engine`` / ``accel.engine``); the per-backend co-training step and array operators live
in ``reference.cocktail_step`` / ``accel.cocktail_step``. docs/methods.md §8.1 (pipeline), §2.5, §2.6(b) (UMG),
§4.6 (dense pivot), §5.6 (schedule), §6.3 (Alg. 1), §6.4 (BnUpdate).

    T = the training set; B = its last 5% per class (hold-out, [SC] Table 5), T' = T \\ B  (see below)
    D_0 <- dense training on T' for E epochs; theta_r <- the network after epoch r      ([SC] §3.3)
    for k = 1..N:                                                     P_k: Unified Mask Generation (§3.4)
        m^u_k  <- keep round(0.8 |m^u_{k-1}|) largest |D_{k-1}| within m^u_{k-1}, global over the range
        m^nm   <- N:M mask of D_{k-1} at k = 2, 5, 8 (1:2, 2:4, 4:8), kept unchanged elsewhere ([SC] §4)
        m^c_k  <- per layer the round(0.9^k O) output channels with the largest
                  beta ||m^u_k ⊙ C||_1 + (1 - beta) ||m^nm_k ⊙ C||_1, among the channels of m^c_{k-1}
        W <- theta_r (R: weights and BN buffers; momentum 0; LR schedule entered at epoch r)
        T_k: epochs r..E on T'; step i odd: dense step; i even: the next pattern of (u, c[, nm]) with
             Eq. 1, 1/2 [CE(S(X), Y) + CE(S(X), stopgrad(D(X)))]                          (§3.5)
        D_k <- W
    D_best <- D_1; for k = 2..N: alpha_k <- argmax_{alpha in C} sum_{j<=k} sum_{m in {u_j, c_j, nm_j}}
              ValAcc_B[(alpha D_best + (1 - alpha) D_k) ⊙ m];  D_best <- alpha_k D_best + (1 - alpha_k) D_k
    BnUpdate: for each subnetwork (dense, u_1..u_N, c_1..c_N, 1:2, 2:4, 4:8) its own BN statistics,
              one pass over T' in train mode (App. C Alg. 1 l.8, docs/methods.md §8.3)

Output: ONE shared weight set D_best, a bank of masks (24 at N = 10: 1 dense (all-ones) + 10
unstructured + 10 channel + 3 N:M, [SC] §4 "24 networks at once") and one BN-statistics set per
subnetwork. Decisions (docs/methods.md §8 explains each):
- Hold-out: [SC] says "last 5% of training set". MNIST-5k is stored sorted by label, so the literal
  last 5% would be digit 9 only; we take the last 5% *of each class* in native order (the paper's
  intent on CIFAR-10, whose order is not sorted). It is never trained on (dense stage included),
  never used by BnUpdate; only Alg. 1 scores on it.
- Pruning range "All convolutional layers except the 1st layer" ([SC] Tables 5/6; the classifier is
  not pruned): ``cocktail_range='paper'`` = the prunable set without its first and last layer;
  'hidden' keeps the first layer in (an MLP's first layer holds most weights).
- Sparse steps update only the entries on the mask (weights and momentum; ``cocktail_step``).
- "Before interpolation" (App. J) = each subnetwork on the dense network of the last IMP iteration
  that trained it (u_j, c_j on D_j; an N:M mask on the last D_j that used it; dense on D_N), with
  its own BnUpdate; "after" = on D_best with its BnUpdate. Alg. 1 candidates are scored with the
  interpolated BN buffers (no BnUpdate per candidate); argmax ties -> the largest alpha.
- [SC] §3.6 "post-interpolation, we implement magnitude pruning" vs Alg. 1: the stored masks (Alg. 1).
Ablations ([SC] Fig. 3): cocktail_rewind=false (continue from D_{k-1}, same LR segment),
cocktail_interpolate=false (D_best = D_N, "using the final for testing"), cocktail_pivot=false (AST-
style: sparse steps only, round-robin, plain CE), cocktail_umg=false (channel score ||C||_1 of the
unmasked weights, [SC] Fig. 3 "channel-weight-based mask generation").
"""
from __future__ import annotations

import math

import numpy as np

from .cocktail_ops import (CANDIDATE_POOL, NM_SCHEDULE, greedy_interpolation, imp_schedule, nm_generated_at,
                           nm_pattern_at, pivot_step)
from .config import COCKTAIL_RANGES
from .procedure_tools import dense_with_rewind, derive_seed, masked
from .data import Split, iterate_batches
from .schedules import lr_at
from .stages import Stages

PATTERNS = ("dense", "unstructured", "channel", "nm")
RANGES = COCKTAIL_RANGES
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------- subnetwork names

class UnknownSubnetworkError(KeyError, ValueError):
    """A subnetwork that the cocktail does not hold (the message lists the available ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def subnetwork_name(pattern: str, level=None) -> str:
    """'dense'; 'unstructured-k' / 'channel-k' (k = IMP iteration, 1-based); 'nm-n:m' (level '2:4' or (2, 4))."""
    if pattern == "dense" and level is None:
        return "dense"
    if pattern in ("unstructured", "channel") and isinstance(level, (int, np.integer)) and not isinstance(level, bool) \
            and level >= 1:
        return f"{pattern}-{int(level)}"
    if pattern == "nm":
        nm = tuple(level.split(":")) if isinstance(level, str) else level
        if isinstance(nm, tuple) and len(nm) == 2 and all(str(v).isdigit() for v in nm):
            return f"nm-{int(nm[0])}:{int(nm[1])}"
    raise ValueError(f"({pattern!r}, {level!r}) does not name a subnetwork: use ('dense',), ('unstructured', k), "
                     f"('channel', k) with k >= 1 the IMP iteration, or ('nm', 'n:m')")


def subnetwork_names(n_iterations: int, schedule=NM_SCHEDULE) -> list:
    """The bank's names in order: dense, unstructured-1..N, channel-1..N, the N:M masks generated by P_N."""
    ks = range(1, n_iterations + 1)
    return (["dense"] + [f"unstructured-{k}" for k in ks] + [f"channel-{k}" for k in ks]
            + [f"nm-{n}:{m}" for start, (n, m) in schedule if start <= n_iterations])


def resolve_subnetwork(available, pattern: str, level=None) -> str:
    """The name of (pattern, level) if ``available`` holds it, else UnknownSubnetworkError listing them."""
    try:
        name = subnetwork_name(pattern, level)
    except ValueError as e:
        raise UnknownSubnetworkError(f"{e}; available subnetworks: {list(available)}") from None
    if name not in available:
        raise UnknownSubnetworkError(f"no subnetwork {name!r} (pattern={pattern!r}, level={level!r}); "
                                     f"available subnetworks: {list(available)}")
    return name


def subnetwork(result: dict, pattern: str, level=None) -> dict:
    """The network (shared weights ⊙ mask, with its own BN statistics) of one subnetwork of a result."""
    name = resolve_subnetwork(result["masks"], pattern, level)
    return {**masked(result["net"], result["masks"][name]), **result["bn"][name]}


# ----------------------------------------------------------------------------- data and range

def holdout_rows(y, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, hold-out rows): per class the last floor(f n_c + 0.5) rows in native order."""
    y = np.asarray(y)
    hold = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        n = int(math.floor(fraction * rows.size + 0.5))
        if n < 1:
            raise ValueError(f"cocktail_holdout_fraction={fraction} gives class {int(c)} ({rows.size} training "
                             f"samples) no hold-out sample; the hold-out cannot score every class")
        hold.append(rows[rows.size - n:])
    hold = np.sort(np.concatenate(hold))
    return np.setdiff1d(np.arange(y.size), hold), hold


def pruning_range(names: list, which: str) -> list:
    """[SC] Tables 5/6 pruning range over the prunable set (see the module docstring)."""
    lo = {"paper": 3, "hidden": 2}.get(which)
    if lo is None:
        raise ValueError(f"cocktail_range={which!r} is not allowed; choose one of {list(RANGES)}")
    if len(names) < lo:
        raise ValueError(f"cocktail_range={which!r} needs at least {lo} prunable layers, got {names}")
    return list(names[1:-1] if which == "paper" else names[:-1])


def backend(engine):
    """The backend's co-training step and array operators (``reference.cocktail_step`` /
    ``accel.cocktail_step``), as its engine offers them."""
    return engine.cocktail_step


def _bn_of(net: dict) -> dict:
    return {n: v for n, v in net.items() if n.rsplit(".", 1)[-1] in _BN_BUFFERS}


# ----------------------------------------------------------------------------- the steps

def generate_masks(B, cfg, k: int, w: dict, prev: dict) -> dict:
    """P_k ([SC] §3.4): {'unstructured', 'channel', 'nm' (None before k = 2)} over the range."""
    mu = B.imp_unstructured_masks(w, prev["unstructured"], cfg.cocktail_unstructured_rate)
    nm = B.nm_masks(w, *nm_pattern_at(k))[0] if nm_generated_at(k) else prev["nm"]
    d = (1.0 - cfg.cocktail_channel_rate) ** k
    if cfg.cocktail_umg:
        mc = B.umg_channel_masks(w, mu, nm, d, cfg.cocktail_beta, alive=prev["channel"])
    else:       # beta = 1 with an all-ones m^u: exactly ||C||_1 of the unmasked weights
        mc = B.umg_channel_masks(w, {n: B.ones_like(v) for n, v in w.items()}, None, d, 1.0, alive=prev["channel"])
    return {"unstructured": mu, "channel": mc, "nm": nm}


def cotrain(B, engine, cfg, net: dict, patterns: list, x, y, seed: int, progress=None) -> dict:
    """T_k ([SC] §3.5): epochs r..E over (x, y); ``patterns`` = [(name, masks)] in round-robin order.
    ``progress`` (``reference.stages.Progress``): the trainer is checkpointed after every epoch and
    resumed from the last one."""
    r, bs = cfg.cocktail_rewind_epoch, cfg.batch_size
    spe = -(-len(y) // bs)
    offset, total = r * spe, (cfg.epochs - r) * spe
    names, masks = [p for p, _ in patterns], dict(patterns)
    trainer, i, start = B.CoTrainer(engine, cfg, net), 0, 0
    plan = cfg.lr_plan(spe)
    saved = progress.load() if progress is not None else None
    if saved is not None:
        trainer.load_state(saved["trainer"])
        i, start = saved["i"], saved["epoch"]
    for epoch in range(start, cfg.epochs - r):
        for xb, yb in iterate_batches(x, y, bs, seed, epoch):
            i += 1
            kind = pivot_step(i, names) if cfg.cocktail_pivot else names[(i - 1) % len(names)]
            lr = lr_at(offset + i - 1, offset + total, cfg.lr, plan)
            sparse = None if kind == "dense" else masks[kind]
            trainer.step(xb, yb, sparse, lr, distill=cfg.cocktail_pivot and sparse is not None,
                         temperature=cfg.cocktail_temperature)
        if progress is not None:
            progress.save({"epoch": epoch + 1, "i": i, "trainer": trainer.state()})
    return trainer.net()


def masks_of_iteration(it: dict) -> list:
    """The masks of one iteration summed in Alg. 1 l.5 (N:M absent at k = 1 is skipped)."""
    return [it[p] for p in ("unstructured", "channel", "nm") if it[p] is not None]


def greedy_interpolate(B, engine, nets: list, iterations: list, x_hold, y_hold) -> tuple:
    """[SC] App. C Alg. 1 on the hold-out: (D_best, [alpha_2..alpha_N], {k: {alpha: objective}})."""
    best, table = {(): nets[0]}, {}

    def d_best(prev: tuple) -> dict:
        if prev not in best:
            best[prev] = B.interpolate(d_best(prev[:-1]), nets[len(prev)], prev[-1])
        return best[prev]

    def objective(k: int, alpha: float, prev: tuple) -> float:
        cand = B.interpolate(d_best(prev), nets[k - 1], alpha)
        score = sum(engine.evaluate(masked(cand, m), x_hold, y_hold)["acc"]
                    for it in iterations[:k] for m in masks_of_iteration(it))
        table.setdefault(k, {})[alpha] = score
        return score

    alphas = greedy_interpolation(len(nets), objective, CANDIDATE_POOL)
    return d_best(tuple(alphas)), alphas, table


def _eval(engine, net, m, bn, data) -> dict:
    return engine.evaluate({**masked(net, m), **bn}, *data)


# ----------------------------------------------------------------------------- the procedure

def run_cocktail(engine, cfg, on_record=None, stages=None) -> dict:
    """Sparse Cocktail on ``engine`` (see the module docstring). One record per stage: 0 = dense
    training, k = IMP iteration k (its subnetworks before interpolation), N + 1 = the cocktail
    (every subnetwork of the one shared weight set, after interpolation and BnUpdate). ``stages``
    (``reference.stages.Stages``): the dense run, each iteration and the cocktail are resumable
    stages (training epochs checkpointed)."""
    B, split = backend(engine), engine.split
    train, hold = holdout_rows(split.y_train, cfg.cocktail_holdout_fraction)
    x, y = split.x_train[train], split.y_train[train]
    x_hold, y_hold = split.x_train[hold], split.y_train[hold]
    eng = type(engine)(cfg, Split(x_train=x, y_train=y, x_holdout=x[:0], y_holdout=y[:0], x_test=split.x_test,
                                  y_test=split.y_test))
    test = (eng.split.x_test, eng.split.y_test)
    stages = Stages.attach(stages, on_record)

    def iteration(k, prev, last, rewind, ones, size):
        t0 = eng.clock()
        it = generate_masks(B, cfg, k, {n: last[n] for n in ones}, prev)
        pats = [(p, it[p]) for p in ("unstructured", "channel", "nm") if it[p] is not None]
        start = rewind if cfg.cocktail_rewind else last
        net = cotrain(B, eng, cfg, start, pats, x, y, derive_seed(cfg.seed, k, 0xC7), stages.progress())
        names = {"dense": ones, f"unstructured-{k}": it["unstructured"], f"channel-{k}": it["channel"]}
        if it["nm"] is not None:
            names["nm-%d:%d" % nm_pattern_at(k)] = it["nm"]
        rec = {}
        for name, m in names.items():        # before interpolation: on D_k, own BnUpdate
            bn = _bn_of(eng.bn_recalibrate(masked(net, m), x))
            rec[name] = _eval(eng, net, m, bn, test)
        density = sum(B.count(v) for v in it["unstructured"].values()) / size
        stages.emit({"state": k, "phase": "cotrain", "density": density, **_mean_metrics(rec),
                     "subnetworks": {n: v["acc"] for n, v in rec.items()}, "time_s": eng.clock() - t0})
        return {"masks": it, "net": net, "before": rec, "bank": names, "density": density}

    def cocktail(nets, iterations, bank, before, density):
        t0 = eng.clock()
        if cfg.cocktail_interpolate:
            shared, alphas, table = greedy_interpolate(B, eng, nets, iterations, x_hold, y_hold)
        else:
            shared, alphas, table = nets[-1], [], {}
        bank = {n: bank[n] for n in subnetwork_names(cfg.cocktail_iterations)}
        after, bn_bank = {}, {}
        for name, m in bank.items():             # BnUpdate for each subnetwork (Alg. 1 l.8)
            bn_bank[name] = _bn_of(eng.bn_recalibrate(masked(shared, m), x))
            after[name] = _eval(eng, shared, m, bn_bank[name], test)
        stages.emit({"state": cfg.cocktail_iterations + 1, "phase": "cocktail", "density": density,
                     **_mean_metrics(after), "alphas": alphas, "n_subnetworks": len(bank),
                     "interpolation": {str(k): {str(a): v for a, v in row.items()} for k, row in table.items()},
                     "subnetworks": {n: {"before": before[n]["acc"], "after": after[n]["acc"]} for n in bank},
                     "pattern_acc_before": _by_pattern(before), "pattern_acc_after": _by_pattern(after),
                     "time_s": eng.clock() - t0})
        return {"net": shared, "masks": bank, "bn": bn_bank, "alphas": alphas}

    first = dense_with_rewind(eng, cfg, stages, cfg.cocktail_rewind_epoch, x.shape[1], int(split.y_train.max()) + 1)
    pretrained, rewind = first["net"], first["rewind"]
    rng = pruning_range(eng.prunable(pretrained), cfg.cocktail_range)
    size = sum(int(np.size(B.to_numpy(pretrained[n]))) for n in rng)
    ones = {n: B.ones_like(pretrained[n]) for n in rng}
    prev = {"unstructured": ones, "channel": None, "nm": None}
    nets, iterations, bank, before, density = [], [], {}, {}, 1.0
    for k in range(1, cfg.cocktail_iterations + 1):
        out = stages.stage(f"iteration{k}", lambda k=k, prev=prev, last=(nets or [pretrained])[-1]:
                           iteration(k, prev, last, rewind, ones, size))
        prev, density = out["masks"], out["density"]
        iterations.append(prev)
        nets.append(out["net"])
        bank.update(out["bank"])
        before.update(out["before"])
    final = stages.stage("cocktail", lambda: cocktail(nets, iterations, bank, before, density))
    return {**final, "records": stages, "updates": [], "nets": nets, "pretrained": pretrained,
            "iterations": iterations, "range": rng, "train_rows": train, "holdout_rows": hold}


def _mean_metrics(per_net: dict) -> dict:
    return {f"test_{k}": float(np.mean([v[k] for v in per_net.values()])) for k in ("acc", "nll", "ece")}


def _by_pattern(per_net: dict) -> dict:
    """Mean test accuracy per pattern (Table 1 / Table 7 rows)."""
    out = {}
    for p in PATTERNS:
        accs = [v["acc"] for n, v in per_net.items() if n.split("-")[0] == p]
        if accs:
            out[p] = float(np.mean(accs))
    return out


def describe(cfg) -> str:
    """The schedule of a 'cocktail' run (dry run): per iteration the sparsities and the N:M pattern."""
    rows = imp_schedule(cfg.cocktail_iterations, cfg.cocktail_unstructured_rate, cfg.cocktail_channel_rate)
    lines = [f"procedure cocktail: {cfg.cocktail_iterations} IMP iteration(s), {len(subnetwork_names(cfg.cocktail_iterations))} "
             f"subnetworks in one weight set; range={cfg.cocktail_range!r}; {cfg.epochs} + "
             f"{cfg.cocktail_iterations} x {cfg.epochs - cfg.cocktail_rewind_epoch} epochs; hold-out "
             f"{cfg.cocktail_holdout_fraction:.0%} per class; rewind={cfg.cocktail_rewind}, interpolate="
             f"{cfg.cocktail_interpolate}, pivot={cfg.cocktail_pivot}, umg={cfg.cocktail_umg}",
             f"{'k':>3} {'unstructured':>13} {'channel':>8} {'N:M':>5}"]
    for r in rows:
        nm = "%d:%d" % r["nm"] if r["nm"] else "-"
        lines.append(f"{r['k']:>3} {r['unstructured']:>13.3f} {r['channel']:>8.3f} {nm + ('*' if r['nm_new'] else ''):>5}")
    return "\n".join(lines + ["(* = N:M mask generated at this P_k)"])
