"""Sparse Cocktail's co-training step on any torch model ([SC] §3.5, Eq. 1; docs/methods.md §8.2) and the
array operators ``reference.cocktail_procedure`` calls on this backend; twin of ``reference.cocktail_step``
(read that one for the maths).

The subnetwork forward is ``torch.func.functional_call`` with the masked weights W ⊙ m, so the
gradient reaching W is m ⊙ dL/d(W ⊙ m) by autograd; the teacher (dense, train mode, no grad) runs
on clones of the buffers so its batch statistics never enter the running statistics.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from twinsparse.reference.optim import check_sgd_hyperparameters
from .cocktail_ops import dense_pivot_criterion, imp_unstructured_masks, umg_channel_masks  # noqa: F401
from .masks import nm_masks  # noqa: F401
from .merge import interpolate  # noqa: F401
from .train import _inputs, _targets, load_net
from ._checks import scalar_as


def cotrain_sgd_step(w, g, mask, buf, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """Twin of ``reference.cocktail_step.cotrain_sgd_step``: (new_w, new_buf); with a mask only the
    entries on it change (weights and momentum)."""
    check_sgd_hyperparameters(lr, momentum, weight_decay, 0.0, nesterov)
    if not (w.shape == g.shape == buf.shape):
        raise ValueError(f"shape mismatch: weight {tuple(w.shape)}, gradient {tuple(g.shape)}, "
                         f"momentum buffer {tuple(buf.shape)}")
    if mask is not None and mask.shape != w.shape:
        raise ValueError(f"shape mismatch: weight {tuple(w.shape)} but mask {tuple(mask.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("gradients contain non-finite values (NaN or inf); only finite values are allowed")
    dt = w.dtype
    d = g + scalar_as(weight_decay, dt) * w if weight_decay else g
    nb = scalar_as(momentum, dt) * buf + d if momentum else buf
    if momentum:
        d = d + scalar_as(momentum, dt) * nb if nesterov else nb
    new = w - scalar_as(lr, dt) * d
    if mask is None:
        return new, nb
    return torch.where(mask, new, w), torch.where(mask, nb, buf)


class CoTrainer:
    """The shared network of one co-training phase on the accel engine (its model), with zeroed
    momentum buffers."""

    def __init__(self, engine, cfg, net: dict):
        self.cfg, self.model = cfg, engine.model
        load_net(self.model, net)
        self.model.train()
        self.params = dict(self.model.named_parameters())
        self.bufs = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.hp = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)

    def step(self, x, y, masks: dict | None, lr: float, distill: bool, temperature: float = 1.0) -> float:
        xt, yt = _inputs(self.cfg, np.asarray(x)), _targets(self.cfg, np.asarray(y))
        names = list(self.params)
        with torch.enable_grad():
            if masks is None:
                loss = F.cross_entropy(self.model(xt), yt)
            else:
                sparse = {n: self.params[n] * masks[n] for n in masks}
                if distill:
                    with torch.no_grad():
                        clones = {n: b.clone() for n, b in self.model.named_buffers()}
                        teacher = functional_call(self.model, clones, (xt,))
                    loss = dense_pivot_criterion(functional_call(self.model, sparse, (xt,)), teacher, yt, temperature)
                else:
                    loss = F.cross_entropy(functional_call(self.model, sparse, (xt,)), yt)
            grads = torch.autograd.grad(loss, [self.params[n] for n in names], allow_unused=True)
        with torch.no_grad():
            for n, g in zip(names, grads):
                p = self.params[n]
                g = torch.zeros_like(p) if g is None else g
                m = None if masks is None else masks.get(n)
                new, self.bufs[n] = cotrain_sgd_step(p, g, m, self.bufs[n], lr=lr, **self.hp)
                p.copy_(new)
        return float(loss.detach())

    def net(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def state(self) -> dict:
        """Network and momentum buffers (a co-training checkpoint)."""
        return {"net": self.net(), "bufs": {n: b.clone() for n, b in self.bufs.items()}}

    def load_state(self, state: dict) -> None:
        load_net(self.model, state["net"])
        self.bufs = {n: state["bufs"][n].clone() for n in self.params}


def to_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy()


def ones_like(w) -> torch.Tensor:
    return torch.ones_like(w, dtype=torch.bool)


def count(m) -> int:
    return int(m.sum())
