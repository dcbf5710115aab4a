"""Sparse Cocktail's co-training step for the NumPy MLP ([SC] §3.5, Eq. 1, Fig. 2; docs/methods.md §1.9, §8.2)
and the array operators the procedure (``reference.cocktail_procedure``, written once) calls on this backend.
Twin: ``accel.cocktail_step``.

One shared weight set W (the dense network D_k); a subnetwork S_k = D_k ⊙ m shares it.

    dense step  (i odd):  g = dL/dW of CE(D(X_i), Y_i); every parameter takes an SGD step
    sparse step (i even): S = W ⊙ m; L = 1/2 [CE(S(X_i), Y_i) + CE_soft(S(X_i), stopgrad(D(X_i)))] (Eq. 1)
                          g = m ⊙ dL/d(W ⊙ m); only the entries on m take the step (weights AND
                          momentum), entries off m keep their values: the shared dense weights are
                          never zeroed by a sparse step (unlike the masked step of docs/methods.md §1.9, which
                          re-masks the weights: that is for a network that *is* sparse)
    AST-style step (ablation, no dense pivot): the sparse forward with plain CE, no distillation

SGD with PyTorch's convention (docs/methods.md §1.9): d = g + wd w; b <- mu b + d (b = 0 after a rewind, so
the first step gives b = d exactly as torch.optim.SGD); d <- d + mu b (Nesterov) or b; w <- w - lr d.
Biases and BatchNorm parameters are never masked. The teacher D(X_i) runs in train mode (batch
statistics) without updating the running statistics (docs/methods.md §8.2); the student's forward
updates the shared running statistics (BnUpdate per subnetwork fixes them at the end, [SC] §3.6).
"""
from __future__ import annotations

import numpy as np

from .cocktail_ops import dense_pivot_loss, imp_unstructured_masks, umg_channel_masks  # noqa: F401
from .masks import nm_masks  # noqa: F401
from .merge import interpolate  # noqa: F401
from .nn import mlp_backward, mlp_forward, mlp_loss_and_grads
from .optim import check_sgd_hyperparameters
from .train import load_net


def cotrain_sgd_step(w, g, mask, buf, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One co-training SGD step on one tensor; returns (new_w, new_buf). ``mask`` None: every entry
    steps (dense step, or a tensor that is never pruned); else only the entries on the mask change.
    ``buf`` is the momentum buffer (zeros after a rewind). Inputs are not modified."""
    check_sgd_hyperparameters(lr, momentum, weight_decay, 0.0, nesterov)
    w, g, buf = np.asarray(w), np.asarray(g), np.asarray(buf)
    if not (w.shape == g.shape == buf.shape):
        raise ValueError(f"shape mismatch: weight {w.shape}, gradient {g.shape}, momentum buffer {buf.shape}")
    if mask is not None and np.shape(mask) != w.shape:
        raise ValueError(f"shape mismatch: weight {w.shape} but mask {np.shape(mask)}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gradients contain non-finite values (NaN or inf); only finite values are allowed")
    dt = w.dtype.type
    d = g + dt(weight_decay) * w if weight_decay else g
    nb = dt(momentum) * buf + d if momentum else buf
    if momentum:
        d = d + dt(momentum) * nb if nesterov else nb
    new = w - dt(lr) * d
    if mask is None:
        return new, nb
    m = np.asarray(mask, dtype=bool)
    return np.where(m, new, w), np.where(m, nb, buf)


class CoTrainer:
    """The shared network of one co-training phase on the reference engine (a dict of arrays),
    with its momentum buffers (zero at the start: the optimizer is rewound with the weights)."""

    def __init__(self, engine, cfg, net: dict):
        self.params, self.buffers = load_net(net, *engine.template)
        self.dtype = np.dtype(cfg.dtype)
        self.bufs = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.hp = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)

    def step(self, x, y, masks: dict | None, lr: float, distill: bool, temperature: float = 1.0) -> float:
        """One mini-batch: dense when ``masks`` is None, else the subnetwork W ⊙ masks (Eq. 1 loss
        when ``distill``, plain CE otherwise). Returns the loss."""
        x = np.asarray(x, self.dtype)
        if masks is None:
            loss, grads, self.buffers, _ = mlp_loss_and_grads(self.params, self.buffers, x, y)
        else:
            sparse = {n: p * masks[n] if n in masks else p for n, p in self.params.items()}
            if distill:
                teacher, _, _ = mlp_forward(self.params, self.buffers, x, train=True)  # running stats untouched
                logits, cache, self.buffers = mlp_forward(sparse, self.buffers, x, train=True)
                loss, dlogits = dense_pivot_loss(logits, teacher, y, temperature)
                grads = mlp_backward(sparse, cache, dlogits)
            else:
                loss, grads, self.buffers, _ = mlp_loss_and_grads(sparse, self.buffers, x, y)
            grads = {n: g * masks[n] if n in masks else g for n, g in grads.items()}
        for n in self.params:
            m = None if masks is None else masks.get(n)
            self.params[n], self.bufs[n] = cotrain_sgd_step(self.params[n], grads[n], m, self.bufs[n], lr=lr, **self.hp)
        return float(loss)

    def net(self) -> dict:
        return {**{n: p.copy() for n, p in self.params.items()}, **{n: b.copy() for n, b in self.buffers.items()}}

    def state(self) -> dict:
        """Network and momentum buffers (a co-training checkpoint)."""
        return {"net": self.net(), "bufs": {n: b.copy() for n, b in self.bufs.items()}}

    def load_state(self, state: dict) -> None:
        self.params, self.buffers = load_net(state["net"], self.params, self.buffers)
        self.bufs = {n: np.array(state["bufs"][n], copy=True) for n in self.params}


def to_numpy(a) -> np.ndarray:
    return np.asarray(a)


def ones_like(w) -> np.ndarray:
    return np.ones(np.shape(w), dtype=bool)


def count(m) -> int:
    return int(np.count_nonzero(m))
