"""Functional masked SGD step on torch tensors; twin of ``reference.optim.masked_sgd_step``.

Training uses :class:`accel.Sparsifier` around any ``torch.optim`` optimizer; this function is the
functional form of exactly what that does for SGD (mask the gradient, the PyTorch SGD update,
re-mask the weight), kept so the conformance suite can check it against the reference.
"""
from __future__ import annotations

import math

import torch

from twinsparse.reference.optim import check_adam_hyperparameters, check_sgd_hyperparameters
from . import kernels as _kernels
from ._checks import check_all_finite, check_same_shape, scalar_as


def _check_step(w, g, mask, buf, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
    check_sgd_hyperparameters(lr, momentum, weight_decay, dampening, nesterov)
    check_same_shape(w, g, "weight", "gradient")
    check_same_shape(w, mask, "weight", "mask")
    if buf is not None:
        check_same_shape(w, buf, "weight", "momentum buffer")
    check_all_finite([w], "weights")
    check_all_finite([g], "gradients")


def masked_sgd_step(w, g, mask, buf=None, *, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
    _check_step(w, g, mask, buf, lr, momentum, weight_decay, dampening, nesterov)
    if _kernels.on_device(w):                # CUDA + CuPy: the fused kernel (accel/kernels/masked_sgd.cu)
        fused = _kernels.masked_sgd_step(w, g, mask, buf, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                         dampening=dampening, nesterov=nesterov) if _kernels.usable(w) else None
        if fused is not None:
            return fused
    m = mask.to(w.dtype)
    d = g * m
    if weight_decay != 0:
        d = d.add(w, alpha=weight_decay)
    new_buf = None
    if momentum != 0:
        new_buf = d.clone() if buf is None else buf.mul(momentum).add_(d, alpha=1 - dampening)
        d = d.add(new_buf, alpha=momentum) if nesterov else new_buf
        new_buf = new_buf * m
    new_w = w.add(d, alpha=-lr).mul_(m)
    return new_w, new_buf


def masked_sgd_step_all(weights, grads, masks, bufs, **hp):
    first = next(iter(weights.values()), None)
    if isinstance(first, torch.Tensor) and _kernels.on_device(first) and _kernels.usable(first):   # one launch, all layers
        for name in weights:
            _check_step(weights[name], grads[name], masks[name], bufs.get(name), **hp)
        fused = _kernels.masked_sgd_step_all(weights, grads, masks, bufs, **hp)
        if fused is not None:
            return fused
    out_w, out_b = {}, {}
    for name in weights:
        out_w[name], out_b[name] = masked_sgd_step(weights[name], grads[name], masks[name], bufs.get(name), **hp)
    return out_w, out_b


def masked_adam_step(w, g, mask, exp_avg, exp_avg_sq, max_exp_avg_sq=None, step=0, *, lr, beta1=0.9, beta2=0.999,
                     eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    """Twin of ``reference.optim.masked_adam_step`` (same arguments, same results within the
    dtype tolerance): the functional form of what the Sparsifier does for Adam / AdamW."""
    check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    check_same_shape(w, g, "weight", "gradient")
    check_same_shape(w, mask, "weight", "mask")
    for what, a in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)) + ((("max_exp_avg_sq", max_exp_avg_sq),) if amsgrad else ()):
        if a is None:
            raise ValueError(f"{what} is missing")
        check_same_shape(w, a, "weight", what)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} must be an integer >= 0 (the steps taken so far)")
    check_all_finite([w], "weights")
    check_all_finite([g], "gradients")
    if _kernels.on_device(w) and _kernels.usable(w):        # CUDA + CuPy: kernels/masked_adam.cu
        fused = _kernels.masked_adam_step(w, g, mask, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr=lr, beta1=beta1,
                                          beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                          decoupled=decoupled)
        if fused is not None:
            return fused
    dt = w.dtype
    T = lambda x: scalar_as(x, dt)  # noqa: E731
    m = mask.to(dt)
    d = g * m
    s = step + 1
    if weight_decay != 0:
        w = w * T(1.0 - lr * weight_decay) if decoupled else w
        d = d if decoupled else d + T(weight_decay) * w
    a = T(beta1) * exp_avg + T(1.0 - beta1) * d
    b = T(beta2) * exp_avg_sq + T(1.0 - beta2) * (d * d)
    v, new_max = b, None
    if amsgrad:
        v = new_max = torch.maximum(max_exp_avg_sq, b)
    step_size = T(lr / (1.0 - beta1 ** s))
    bc2_sqrt = T(math.sqrt(1.0 - beta2 ** s))
    denom = torch.sqrt(v) / torch.tensor(bc2_sqrt, dtype=dt, device=w.device) + T(eps)
    new_w = (w - step_size * (a / denom)) * m
    return new_w, a * m, b * m, None if new_max is None else new_max * m, s
