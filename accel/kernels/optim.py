"""Fused masked optimizer steps and the NaN/inf guard (masked_sgd.cu, masked_adam.cu, guard.cu).

``sgd_step`` / ``adam_step`` / ``nonfinite_check`` are what the Sparsifier's step engine
(``accel.step``) launches: one launch per dtype for every tensor of a parameter group, reading
``found_inf`` (skip on the device) and ``grad_scale`` (GradScaler) from device memory. The
functional forms (``masked_sgd_step(_all)``, ``masked_adam_step``) return new tensors and are the
accel twins' kernel branch, checked against the reference by the conformance registry.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import loader as L
from . import tables as T


def _ptr_or_null(t: Optional[torch.Tensor]):
    return L.arg(t)


def sgd_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], masks: Sequence[Optional[torch.Tensor]],
             bufs_in: Sequence[Optional[torch.Tensor]], bufs_out: Sequence[Optional[torch.Tensor]], *, lr: float,
             momentum: float, weight_decay: float, dampening: float, nesterov: bool, maximize: bool = False,
             found_inf: Optional[torch.Tensor] = None, grad_scale: Optional[torch.Tensor] = None,
             mask_grad: bool = False, w_out: Optional[Sequence[torch.Tensor]] = None) -> None:
    """One launch over same-dtype lists (params updated in place unless ``w_out`` is given; mask
    / buf_in entries may be None; buf_out entries are None exactly when momentum == 0). See
    masked_sgd.cu for the arithmetic."""
    if not params:
        return
    dtype = params[0].dtype
    hp = (T.scalar(lr, dtype), T.scalar(momentum, dtype), T.scalar(weight_decay, dtype), T.scalar(1 - dampening, dtype))
    T.multi_tensor_launch("masked_sgd.cu", f"masked_sgd_{L.SUFFIX[dtype]}",
                          (params, params if w_out is None else w_out, grads, masks, bufs_in, bufs_out),
                          (*hp, np.int32(bool(nesterov)), np.int32(bool(mask_grad)), _ptr_or_null(found_inf),
                           _ptr_or_null(grad_scale), np.int32(bool(maximize))))


def adam_step(params, grads, masks, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr: float, beta1: float,
              beta2: float, weight_decay: float, eps: float, amsgrad: bool, decoupled: bool, maximize: bool = False,
              found_inf: Optional[torch.Tensor] = None, grad_scale: Optional[torch.Tensor] = None) -> None:
    """One launch over same-dtype lists, everything in place; ``steps`` are the float32 step
    counts, already advanced for this step. See masked_adam.cu for the arithmetic."""
    if not params:
        return
    dtype = params[0].dtype
    maxes = max_exp_avg_sqs if amsgrad else [None] * len(params)
    T.multi_tensor_launch("masked_adam.cu", f"masked_adam_{L.SUFFIX[dtype]}",
                          (params, grads, masks, exp_avgs, exp_avg_sqs, maxes, steps),
                          (np.float64(lr), np.float64(beta1), np.float64(beta2), T.scalar(weight_decay, dtype),
                           T.scalar(eps, dtype), T.scalar(1.0 - lr * weight_decay, dtype), np.int32(bool(amsgrad)),
                           np.int32(bool(decoupled)), np.int32(bool(maximize)), _ptr_or_null(found_inf),
                           _ptr_or_null(grad_scale)))


def nonfinite_check(grads: Sequence[torch.Tensor], found_inf: torch.Tensor, record: Optional[torch.Tensor] = None,
                    scratch: Optional[torch.Tensor] = None) -> None:
    """Set ``found_inf`` (float32, zeroed by the caller) when a gradient holds NaN or inf; one
    launch per dtype (float32 / float64 gradients only). ``record`` (float64 [3]: bad steps, first
    bad iteration, iterations) is advanced by the last launch, which counts its finished blocks in
    ``scratch`` (int32 [1], zero between launches) (guard.cu)."""
    by_dtype: dict = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    null = np.uint64(0)
    for i, (dtype, gs) in enumerate(by_dtype.items()):
        keep = record is not None and i == len(by_dtype) - 1
        rec = (L.arg(scratch), L.arg(record)) if keep else (null, null)
        T.multi_tensor_launch("guard.cu", f"nonfinite_check_{L.SUFFIX[dtype]}", (gs,),
                              (L.arg(found_inf), np.int32(keep), *rec))


# ----------------------------------------------------------------------------- functional forms

def _sgd_inputs_ok(w, g, mask, buf) -> bool:
    return (mask.dtype == torch.bool and g.dtype == w.dtype and (buf is None or buf.dtype == w.dtype)
            and L.usable(w, g, mask, buf))


def masked_sgd_step(w, g, mask, buf=None, *, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
    """Functional form (new tensors; inputs untouched), or None when the kernel cannot take these
    inputs (the caller then runs torch)."""
    return masked_sgd_step_all({"w": w}, {"w": g}, {"w": mask}, {"w": buf}, lr=lr, momentum=momentum,
                               weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, single=True)


def masked_sgd_step_all(weights, grads, masks, bufs, *, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
                        nesterov=False, single=False):
    """Whole dict in one launch per dtype; returns (new weights, new bufs) like the torch twin (or
    a (new_w, new_buf) pair when ``single``), or None when some input cannot go to the kernel."""
    names = list(weights)
    if not all(_sgd_inputs_ok(weights[n], grads[n], masks[n], bufs.get(n)) for n in names):
        return None
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    weights, grads = {n: c(weights[n]) for n in names}, {n: c(grads[n]) for n in names}
    masks, bufs = {n: c(masks[n]) for n in names}, {n: c(bufs.get(n)) for n in names}
    new = lambda n: torch.empty(weights[n].shape, dtype=weights[n].dtype, device=weights[n].device)  # noqa: E731
    out_w = {n: new(n) for n in names}
    out_b = {n: (new(n) if momentum != 0 else None) for n in names}
    for dtype in {weights[n].dtype for n in names}:
        sel = [n for n in names if weights[n].dtype == dtype]
        sgd_step([weights[n] for n in sel], [grads[n] for n in sel], [masks[n] for n in sel],
                 [bufs.get(n) if momentum != 0 else None for n in sel], [out_b[n] for n in sel],
                 lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening, nesterov=nesterov,
                 w_out=[out_w[n] for n in sel])
    if single:
        return out_w["w"], out_b["w"]
    return out_w, out_b


def masked_adam_step(w, g, mask, exp_avg, exp_avg_sq, max_exp_avg_sq, step, *, lr, beta1, beta2, eps,
                     weight_decay, amsgrad, decoupled):
    """Functional form of one masked Adam/AdamW step on one tensor (new tensors), or None when the
    kernel cannot take these inputs."""
    if not (mask.dtype == torch.bool and L.usable(w, g, mask, exp_avg, exp_avg_sq, max_exp_avg_sq)
            and g.dtype == w.dtype):
        return None
    out = [t.detach().clone().contiguous() for t in (w, exp_avg, exp_avg_sq)]
    mx = max_exp_avg_sq.detach().clone().contiguous() if amsgrad else None
    st = torch.tensor(float(step + 1), dtype=torch.float32, device=w.device)
    adam_step([out[0]], [g.contiguous()], [mask.contiguous()], [out[1]], [out[2]], [mx], [st], lr=lr, beta1=beta1,
              beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=amsgrad, decoupled=decoupled)
    return out[0], out[1], out[2], mx, step + 1
