"""Functional masked SGD step on torch tensors; twin of ``reference.optim.masked_sgd_step``.

Training uses :class:`accel.Sparsifier` around any ``torch.optim`` optimizer; this function is the
functional form of exactly what that does for SGD (mask the gradient, the PyTorch SGD update,
re-mask the weight), kept so the conformance suite can check it against the reference.
"""
from __future__ import annotations

import torch

from reference.optim import check_sgd_hyperparameters
from . import kernels as _kernels
from ._checks import check_all_finite, check_same_shape


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
