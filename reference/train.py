"""The reference training procedure for the NumPy MLP: dense and static sparse training.

Readable on purpose: one loop, the paper operators called by name.

    masks  <- random ERK / uniform / magnitude mask (SPEC §2.3, §2.4), or SNIP at the first batch (§2.7)
    for each epoch, each mini-batch (the shared NumPy pipeline, reference.data.iterate_batches):
        loss, grads <- hand-written forward/backward of the MLP (reference.nn)
        every parameter <- masked SGD step (SPEC §4.5, PyTorch convention §0.3);
                           biases and BatchNorm parameters use an all-ones mask (never pruned, §0.2)
    evaluate on the test split after every epoch (SPEC §8)

The accel engine (``accel.train``) runs the same procedure on torch; for the MLP both start from
``reference.nn.init_mlp(seed)`` and read the same batches, so their runs are comparable step by step.
"""
from __future__ import annotations

import time

import numpy as np

from . import densities as D
from . import masks as M
from . import metrics as MET
from . import scores as S
from .config import RunConfig
from .data import iterate_batches
from .nn import init_mlp, mlp_forward, mlp_loss_and_grads
from .optim import masked_sgd_step
from .prunable import select_prunable
from .schedules import lr_at


def resolve_densities(cfg: RunConfig, weights: dict) -> dict:
    """Per-layer densities of the configured distribution (SPEC §2.3; 'global' = global magnitude)."""
    if cfg.method == "dense":
        return {n: 1.0 for n in weights}
    if cfg.distribution == "global":
        return D.global_magnitude_densities(weights, cfg.density)
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    kw = {"power_scale": cfg.erk_power_scale} if cfg.distribution == "erk" else {}
    return D.layer_densities_for(cfg.distribution, shapes, cfg.density, **kw)


def initial_masks(cfg: RunConfig, weights: dict, densities: dict, grads: dict | None = None) -> dict:
    """Static mask at initialisation (dense: all ones)."""
    if cfg.method == "dense":
        return {n: np.ones(w.shape, dtype=bool) for n, w in weights.items()}
    if cfg.mask_init == "random":
        return M.random_masks(M.random_scores({n: w.shape for n, w in weights.items()}, cfg.seed), densities)
    if cfg.mask_init == "magnitude":
        return M.magnitude_masks(weights, densities)
    total = sum(w.size for w in weights.values())
    kept = sum(densities[n] * w.size for n, w in weights.items())
    return S.snip_masks(weights, grads, kept / total)


def evaluate(params, buffers, x, y, batch: int = 1000) -> dict:
    logits = np.concatenate([mlp_forward(params, buffers, x[i:i + batch], train=False)[0]
                             for i in range(0, len(x), batch)])
    return {"acc": MET.accuracy(logits, y), "nll": MET.nll(logits, y), "ece": MET.ece(logits, y)}


def train_reference(cfg: RunConfig, split, on_epoch=None, on_step=None) -> dict:
    """Train the MLP of ``cfg`` on ``split``; returns the final state and the per-epoch history.

    ``on_epoch(record)`` is called after each epoch, ``on_step(step, params, masks)`` after each
    optimizer step (used by the trajectory conformance check).
    """
    cfg.validate()
    if cfg.model != "mlp":
        raise ValueError(f"the reference backend trains model='mlp' only, got {cfg.model!r}")
    dtype = np.dtype(cfg.dtype)
    x_train, y_train = split.x_train.astype(dtype), split.y_train
    sizes = (x_train.shape[1], *cfg.hidden, int(y_train.max()) + 1)
    params, buffers = init_mlp(sizes, batchnorm=cfg.batchnorm, seed=cfg.seed, dtype=dtype)
    fc_weights = [n for n in params if n.startswith("fc.") and n.endswith(".weight")]
    prunable = select_prunable(fc_weights, cfg.include, cfg.exclude)
    weights = {n: params[n] for n in prunable}
    densities = resolve_densities(cfg, weights)
    masks = None if cfg.method == "static" and cfg.mask_init == "snip" else initial_masks(cfg, weights, densities)
    if masks is not None:
        params = {n: p * masks[n] if n in masks else p for n, p in params.items()}
    bufs: dict = {}
    steps_per_epoch = -(-len(x_train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    hp = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    history, step = [], 0
    for epoch in range(cfg.epochs):
        t0, losses = time.perf_counter(), []
        for xb, yb in iterate_batches(x_train, y_train, cfg.batch_size, cfg.seed, epoch):
            loss, grads, buffers, _ = mlp_loss_and_grads(params, buffers, xb, yb, train=True)
            if masks is None:  # SNIP: saliency |w * g| at the dense initialisation, first batch
                masks = initial_masks(cfg, weights, densities, {n: grads[n] for n in prunable})
            lr = lr_at(step, total, cfg.lr, cfg.lr_schedule)
            new = {}
            for n, p in params.items():
                m = masks[n] if n in masks else np.ones(p.shape, dtype=bool)
                new[n], bufs[n] = masked_sgd_step(p, grads[n], m, bufs.get(n), lr=lr, **hp)
            params, step = new, step + 1
            losses.append(loss)
            if on_step is not None:
                on_step(step, params, masks)
        record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                  "lr": lr_at(step, total, cfg.lr, cfg.lr_schedule),
                  **{f"test_{k}": v for k, v in evaluate(params, buffers, split.x_test.astype(dtype), split.y_test).items()},
                  "density": MET.total_density(masks), "layer_density": MET.layer_densities(masks),
                  "epoch_time": time.perf_counter() - t0}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return {"params": params, "buffers": buffers, "masks": masks, "densities": densities, "history": history}
