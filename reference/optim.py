"""Masked (sparse-support) SGD step, SPEC §4.5 with the optimizer convention of SPEC §0.3.

PyTorch convention (a documented deviation from [TH] §2.1.2, which writes
v <- mu v - eta g, theta <- theta + v; the two agree only for a constant learning rate):

    d   = m * g + weight_decay * w          (gradient masked first, then L2 term)
    buf = d                   on the first step (buf is None), else  mu * buf + (1 - dampening) * d
    d   = d + mu * buf        if nesterov,  else  buf
    w   = (w - lr * d) * m    (re-masked so weight decay and momentum cannot revive pruned entries)
    buf = buf * m

With w already masked, every term is zero off the mask, so momentum never revives a weight.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_finite, check_same_shape


def check_sgd_hyperparameters(lr, momentum, weight_decay, dampening, nesterov) -> None:
    """Scalar validation shared by both backends (same rules as torch.optim.SGD)."""
    for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v!r} is not allowed: it must be a finite number >= 0")
    if not (0.0 <= dampening <= 1.0):
        raise ValueError(f"dampening={dampening!r} is outside the allowed range [0, 1]")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0 (got momentum={momentum}, dampening={dampening})")


def masked_sgd_step(w, g, mask, buf=None, *, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
    """One masked SGD(-momentum) step on one tensor. Returns (new_w, new_buf); inputs are not modified.

    ``buf`` is None before the first step (and stays None when momentum == 0).
    """
    check_sgd_hyperparameters(lr, momentum, weight_decay, dampening, nesterov)
    check_same_shape(w, g, "weight", "gradient")
    check_same_shape(w, mask, "weight", "mask")
    if buf is not None:
        check_same_shape(w, buf, "weight", "momentum buffer")
    check_finite(w, "weights")
    check_finite(g, "gradients")
    m = np.asarray(mask, dtype=bool).astype(w.dtype)
    d = g * m
    if weight_decay != 0:
        d = d + w.dtype.type(weight_decay) * w
    new_buf = None
    if momentum != 0:
        new_buf = d.copy() if buf is None else w.dtype.type(momentum) * buf + w.dtype.type(1 - dampening) * d
        d = d + w.dtype.type(momentum) * new_buf if nesterov else new_buf
        new_buf = new_buf * m
    new_w = (w - w.dtype.type(lr) * d) * m
    return new_w, new_buf


def masked_sgd_step_all(weights, grads, masks, bufs, **hp):
    """The step over a dict of layers (dict order); ``bufs`` maps name -> buffer or None."""
    out_w, out_b = {}, {}
    for name in weights:
        out_w[name], out_b[name] = masked_sgd_step(weights[name], grads[name], masks[name], bufs.get(name), **hp)
    return out_w, out_b
