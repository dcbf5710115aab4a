"""Iterative magnitude pruning with weight rewinding (lottery tickets; docs/methods.md §2.5: [TH] §2.2.2
quoting Frankle & Carbin, weight rewinding of Frankle et al. 2020; [SC] §3.1), written once over an
engine (``reference.engine`` / ``accel.engine``).

    theta_0 <- init;  m <- 1
    train densely for E epochs; keep theta_r, the network after the rewind epoch r
        (r = 0: rewind to theta_0, the original lottery-ticket reset)
    for k = 1..N:
        prune p of the remaining weights by |theta| (global over the prunable layers, docs/methods.md §2.5 [SC];
            or per layer): m_k subset of m_{k-1} (nested), exactly floor(p n + 0.5) of the n remaining go
        theta <- theta_r * m_k; retrain E - r epochs with the mask fixed, the LR schedule entered at
            epoch r (the same schedule as the dense run from the rewind point on)
        record test metrics of iteration k

The density after k iterations is about (1 - p)^k (exact counts in the records). Each retraining
phase is a fresh optimizer (momentum from 0).
"""
from __future__ import annotations

from dataclasses import replace

from ._checks import imp_keep_count
from .masks import SCOPES
from .procedure_tools import dense_with_rewind, derive_seed, masked, test_metrics
from .stages import Stages



def prune_fraction_of_remaining(ops, masks: dict, weights: dict, rate: float, scope: str = "global") -> dict:
    """Remove ``rate`` of the active weights with the smallest |w| (nested masks, exact counts)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate={rate!r} is outside the allowed range [0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not allowed; choose one of {list(SCOPES)}")
    active, scores = ops.count_active(masks), ops.abs_all(weights)
    if scope == "global":
        n = sum(active.values())
        return ops.prune_to_count(masks, scores, imp_keep_count(rate, n))
    out = {}
    for name in masks:
        n = active[name]
        out.update(ops.prune_to_count({name: masks[name]}, {name: scores[name]}, imp_keep_count(rate, n)))
    return out


def run_imp(engine, cfg, on_record=None, stages=None) -> dict:
    """IMP with weight rewinding on ``engine``; returns the final network and masks, the mask of
    every iteration (nested) and one record per iteration (iteration 0 = the dense network).
    ``stages`` (``reference.stages.Stages``): the dense run and each iteration are resumable stages."""
    ops, split = engine.ops, engine.split
    test = (split.x_test, split.y_test)
    spe = -(-len(split.y_train) // cfg.batch_size)
    stages = Stages.attach(stages, on_record)

    def iteration(k, masks, trained, rewind, **kw):
        t0 = engine.clock()
        masks = prune_fraction_of_remaining(ops, masks, {n: trained[n] for n in masks}, cfg.imp_rate, cfg.imp_scope)
        pcfg = replace(cfg, procedure="train", method="static", lr_schedule=cfg.lr_schedule_name(), density=float(ops.total_density(masks)),
                       seed=derive_seed(cfg.seed, k, 7), epochs=cfg.epochs - cfg.imp_rewind_epoch).validate()
        out = engine.train(pcfg, masked(rewind, masks), masks, lr_offset=cfg.imp_rewind_epoch * spe, **kw)
        stages.add_updates({"phase": [k], **u} for u in out["updates"])
        stages.emit({"state": k, "phase": "imp", "density": float(ops.total_density(out["masks"])),
                     **test_metrics(engine, out["net"], test), "time_s": engine.clock() - t0})
        return {"net": out["net"], "masks": out["masks"], "pruned": masks}

    first = dense_with_rewind(engine, cfg, stages, cfg.imp_rewind_epoch, split.x_train.shape[1],
                              int(split.y_train.max()) + 1)
    trained, rewind = first["net"], first["rewind"]
    names = engine.prunable(trained)
    masks, masks_per_iteration = ops.ones_like_masks({n: trained[n] for n in names}), []
    for k in range(1, cfg.imp_iterations + 1):
        it = stages.train(f"iteration{k}", lambda k=k, m=masks, w=trained, **kw: iteration(k, m, w, rewind, **kw))
        trained, masks = it["net"], it["masks"]
        masks_per_iteration.append(it["pruned"])
    return {"net": trained, "masks": masks, "masks_per_iteration": masks_per_iteration, "records": stages,
            "updates": stages.updates, "rewind": rewind}
