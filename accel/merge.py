"""Merging sparse networks on torch tensors (SPEC §6.1, §6.2, §2.10); twin of ``reference.merge``.

Same names, arguments and operation order as the reference, so float results agree within the
dtype tolerance (checked by ``conformance/entries/merge.py``). A "network" is a dict
name -> tensor. Functions are pure: inputs are never modified; every check runs before any
arithmetic. Python scalars (t, beta, alpha) are rounded to the tensor dtype first, as the
reference does with ``dtype.type(scalar)``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from reference._checks import check_density
from reference.masks import check_layer_dict
from reference.merge import BN_AVG_MODES, _check_t
from . import kernels as _kernels
from ._checks import as_real_tensor, scalar_as
from ._exact import true_div
from .masks import global_magnitude_masks, magnitude_masks

__all__ = ["BN_AVG_MODES", "check_alike", "superpose_cia", "cia", "caa", "superpose_cima",
           "interpolate", "merged_masks", "reprune", "average_bn_stats"]


def _tensor(v, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(v).__name__}")
    return v


def check_alike(nets: Sequence[Mapping], what: str = "networks") -> None:
    """Every network names the same tensors, in the same order, with the same shapes."""
    if len(nets) == 0:
        raise ValueError(f"the list of {what} is empty")
    first = nets[0]
    check_layer_dict(first, f"{what}[0]")
    for i, net in enumerate(nets):
        if i:
            check_layer_dict(net, f"{what}[{i}]")
            if list(net) != list(first):
                raise ValueError(f"{what}[{i}] names {list(net)} but {what}[0] names {list(first)}")
        for n in first:
            s, s0 = tuple(_tensor(net[n], f"{what}[{i}][{n!r}]").shape), tuple(first[n].shape)
            if s != s0:
                raise ValueError(f"{what}[{i}][{n!r}] has shape {s} but {what}[0][{n!r}] has shape {s0}")


def _real(v, what: str) -> torch.Tensor:
    """A real tensor for arithmetic: integer/bool tensors become float64 (NumPy's true division)."""
    v = as_real_tensor(v, what)
    return v if v.is_floating_point() else v.to(torch.float64)


def _check_all(nets: Sequence[Mapping], what: str) -> None:
    for i, net in enumerate(nets):
        for n, v in net.items():
            as_real_tensor(v, f"{what}[{i}][{n!r}]")


def superpose_cia(avg: Mapping | None, ticket: Mapping, t: int) -> dict:
    """Running connection-independent average, [ST] Eq. (4): avg_t = ((t - 1) avg_{t-1} + theta_t) / t.
    ``avg`` is None for the first ticket (t = 1), which returns a copy of the ticket."""
    t = _check_t(t)
    if avg is None:
        if t != 1:
            raise ValueError(f"the running average is missing but t={t} (only the first ticket starts one)")
        check_alike([ticket], "tickets")
        _check_all([ticket], "ticket")
        return {n: v.clone() for n, v in ticket.items()}
    check_alike([avg, ticket], "running average and ticket")
    _check_all([avg, ticket], "running average and ticket")
    first = next(iter(avg.values()))
    if _kernels.on_device(first):            # CUDA + CuPy: one launch for the whole network (kernels/merge.cu)
        fused = _kernels.superpose_cia(avg, ticket, t) if _kernels.usable(first) else None
        if fused is not None:
            return fused
    out = {}
    for n in avg:
        a, x = _real(avg[n], f"average[{n!r}]"), _real(ticket[n], f"ticket[{n!r}]")
        out[n] = true_div(a * scalar_as(t - 1, a.dtype) + x, t)
    return out


def _mean_sum(tickets: Sequence[Mapping], n: str) -> torch.Tensor:
    total = None
    for i, tk in enumerate(tickets):
        x = _real(tk[n], f"tickets[{i}][{n!r}]")
        total = x.clone() if total is None else total + x
    return total


def cia(tickets: Sequence[Mapping]) -> dict:
    """Connection-independent average of M tickets, [ST] §3.2.2: (1/M) sum_i theta_i."""
    check_alike(tickets, "tickets")
    _check_all(tickets, "tickets")
    return {n: true_div(_mean_sum(tickets, n), len(tickets)) for n in tickets[0]}


def caa(tickets: Sequence[Mapping], masks: Sequence[Mapping]) -> dict:
    """Connection-aware average, [ST] §3.2.2: sum_i theta_i / N, N = number of tickets in which the
    connection is active (0/0 := 0; tensors without a mask have N = M)."""
    check_alike(tickets, "tickets")
    if len(masks) != len(tickets):
        raise ValueError(f"caa needs one mask dict per ticket: {len(tickets)} tickets, {len(masks)} mask dicts")
    check_alike(masks, "masks")
    for n in masks[0]:
        if n not in tickets[0] or tuple(masks[0][n].shape) != tuple(tickets[0][n].shape):
            raise ValueError(f"mask {n!r} does not match a ticket tensor of the same shape")
    _check_all(tickets, "tickets")
    out = {}
    for n in tickets[0]:
        total = _mean_sum(tickets, n)
        if n in masks[0]:
            count = None
            for m in masks:
                c = m[n].to(device=total.device, dtype=torch.bool).to(total.dtype)
                count = c if count is None else count + c
            active = count > 0
            out[n] = torch.where(active, total / torch.where(active, count, torch.ones_like(count)),
                                 torch.zeros_like(total))
        else:
            out[n] = true_div(total, len(tickets))
    return out


def superpose_cima(avg: Mapping | None, ticket: Mapping, beta: float) -> dict:
    """Connection-independent moving average, [ST] §3.2.2: avg_t = beta avg_{t-1} + (1 - beta) theta_t,
    avg_1 = theta_1 (SPEC §6.1 resolution)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} is outside the allowed range [0, 1]")
    if avg is None:
        return superpose_cia(None, ticket, 1)
    check_alike([avg, ticket], "running average and ticket")
    _check_all([avg, ticket], "running average and ticket")
    out = {}
    for n in avg:
        a, x = _real(avg[n], f"average[{n!r}]"), _real(ticket[n], f"ticket[{n!r}]")
        out[n] = a * scalar_as(beta, a.dtype) + x * scalar_as(1.0 - beta, a.dtype)
    return out


def interpolate(a: Mapping, b: Mapping, alpha: float) -> dict:
    """Pointwise alpha a + (1 - alpha) b over every tensor ([D2] App. B.2.2 Eq. 1); integer buffers
    (BN ``num_batches_tracked``) take the larger of the two."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is outside the allowed range [0, 1]")
    check_alike([a, b], "networks")
    _check_all([a, b], "networks")
    out = {}
    for n in a:
        x, y = a[n], b[n]
        if not x.is_floating_point():
            out[n] = torch.logical_or(x, y) if x.dtype == torch.bool else torch.maximum(x, y.to(x.dtype))
            continue
        x, y = _real(x, f"a[{n!r}]"), _real(y, f"b[{n!r}]")
        out[n] = x * scalar_as(alpha, x.dtype) + y * scalar_as(1.0 - alpha, x.dtype)
    return out


def merged_masks(weights: Mapping) -> dict:
    """The support of a merged network, 1[theta != 0] (SPEC §2.10)."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a dict of name -> tensor, got {type(weights).__name__}")
    return {n: _tensor(w, f"weights[{n!r}]") != 0 for n, w in weights.items()}


def reprune(weights: Mapping, densities: Mapping | None = None, density: float | None = None) -> tuple[dict, dict]:
    """Magnitude re-pruning of a merged network back to its target: per layer to ``densities``
    or globally to ``density`` (SPEC §6.1 ambiguity 2). Returns (pruned weights, masks)."""
    if (densities is None) == (density is None):
        raise ValueError("reprune needs exactly one of densities= (per layer) or density= (global)")
    if densities is not None:
        masks = magnitude_masks(weights, densities)
    else:
        masks = global_magnitude_masks(weights, check_density(density))
    return {n: w * masks[n] for n, w in weights.items()}, masks


def average_bn_stats(avg_mean, avg_var, mean, var, t: int, mode: str = "std") -> tuple[torch.Tensor, torch.Tensor]:
    """Running average of a BN layer's statistics over tickets ([ST] §5): mean and standard deviation
    (``mode='std'``; stored variance = averaged std squared) or the variance (``mode='var'``)."""
    t = _check_t(t)
    if mode not in BN_AVG_MODES:
        raise ValueError(f"bn average mode {mode!r} is not allowed; choose one of {list(BN_AVG_MODES)}")
    mean, var = as_real_tensor(mean, "running mean"), as_real_tensor(var, "running variance")
    if tuple(mean.shape) != tuple(var.shape):
        raise ValueError(f"running mean has shape {tuple(mean.shape)} but running variance has shape {tuple(var.shape)}")
    if bool((var < 0).any()):
        raise ValueError("running variance has negative entries")
    if t == 1:
        return mean.clone(), var.clone()
    for what, v in (("averaged mean", avg_mean), ("averaged variance", avg_var)):
        if v is None:
            raise TypeError(f"{what} is missing (None) but t={t}; only t=1 starts the average")
        as_real_tensor(v, what)
        if tuple(v.shape) != tuple(mean.shape):
            raise ValueError(f"{what} has shape {tuple(v.shape)} but the running mean has shape {tuple(mean.shape)}")
    if bool((avg_var < 0).any()):
        raise ValueError("averaged variance has negative entries")
    dt = mean.dtype
    new_mean = true_div(avg_mean * scalar_as(t - 1, dt) + mean, t)
    if mode == "var":
        return new_mean, true_div(avg_var * scalar_as(t - 1, dt) + var, t)
    std = true_div(torch.sqrt(avg_var) * scalar_as(t - 1, dt) + torch.sqrt(var), t)
    return new_mean, std * std
