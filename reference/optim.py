"""Masked (sparse-support) SGD step, docs/methods.md §1.9 (with its optimizer convention).

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


def check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay) -> None:
    """Scalar validation shared by both backends (same rules as torch.optim.Adam / AdamW)."""
    for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v!r} is not allowed: it must be a finite number >= 0")
    for name, v in (("beta1", beta1), ("beta2", beta2)):
        if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
            raise ValueError(f"{name}={v!r} is outside the allowed range [0, 1)")


def masked_adam_step(w, g, mask, exp_avg, exp_avg_sq, max_exp_avg_sq=None, step=0, *, lr, beta1=0.9, beta2=0.999,
                     eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    """One masked Adam (``decoupled=False``, L2 added to the gradient) or AdamW (``decoupled=True``,
    decoupled weight decay) step on one tensor, in torch.optim.Adam's convention. Returns
    (new_w, new_exp_avg, new_exp_avg_sq, new_max_exp_avg_sq or None, step + 1); inputs are not
    modified. ``step`` is the number of steps taken so far.

        d    = m * g                                   (gradient masked first)
        w    = w * (1 - lr * weight_decay)             (AdamW)     or  d = d + weight_decay * w  (Adam)
        a    = beta1 * a + (1 - beta1) * d
        b    = beta2 * b + (1 - beta2) * d * d
        bmax = max(bmax, b)                            (amsgrad)
        w    = (w - lr / (1 - beta1^s) * a / (sqrt(b or bmax) / sqrt(1 - beta2^s) + eps)) * m,  s = step + 1

    and a, b, bmax multiplied by m. The two bias corrections are computed in float64 and rounded
    to the dtype (as the CUDA kernel does); every other operation runs in the array's dtype.
    """
    check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    check_same_shape(w, g, "weight", "gradient")
    check_same_shape(w, mask, "weight", "mask")
    for what, a in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)) + ((("max_exp_avg_sq", max_exp_avg_sq),) if amsgrad else ()):
        if a is None:
            raise ValueError(f"{what} is missing")
        check_same_shape(w, a, "weight", what)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step={step!r} must be an integer >= 0 (the steps taken so far)")
    check_finite(w, "weights")
    check_finite(g, "gradients")
    T = w.dtype.type
    m = np.asarray(mask, dtype=bool).astype(w.dtype)
    d = g * m
    s = int(step) + 1
    if weight_decay != 0:
        if decoupled:
            w = w * T(1.0 - lr * weight_decay)
        else:
            d = d + T(weight_decay) * w
    a = T(beta1) * exp_avg + T(1.0 - beta1) * d
    b = T(beta2) * exp_avg_sq + T(1.0 - beta2) * (d * d)
    v, new_max = b, None
    if amsgrad:
        v = new_max = np.maximum(max_exp_avg_sq, b)
    step_size = T(lr / (1.0 - beta1 ** s))
    bc2_sqrt = T(np.sqrt(1.0 - beta2 ** s))
    denom = np.sqrt(v) / bc2_sqrt + T(eps)
    new_w = (w - step_size * (a / denom)) * m
    return new_w, a * m, b * m, None if new_max is None else new_max * m, s
