"""Merging sparse networks on torch tensors (docs/methods.md §4.3, §5.3, §1.12); twin of ``reference.merge``.

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

from twinsparse.reference._checks import check_density
from twinsparse.reference.masks import check_layer_dict
from twinsparse.reference.merge import BN_AVG_MODES, check_t
from . import kernels as _kernels
from . import deferred
from ._checks import as_real_tensor, check_all_finite, scalar_as
from ._exact import true_div
from .flat import FlatDict, layout_of
from .masks import global_magnitude_masks, magnitude_masks

__all__ = ["BN_AVG_MODES", "check_alike", "superpose_cia", "cia", "caa", "superpose_cima",
           "interpolate", "merged_masks", "reprune", "average_bn_stats", "average_bn_stats_all", "clone_all"]


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
    """Every tensor real (checked here) and finite (one multi-tensor check, deferred inside an update)."""
    tensors = []
    for i, net in enumerate(nets):
        for n, v in net.items():
            v = _tensor(v, f"{what}[{i}][{n!r}]")
            if v.is_complex():
                raise TypeError(f"{what}[{i}][{n!r}] must be a real tensor, got dtype {v.dtype}")
            tensors.append(v)
    check_all_finite(tensors, what)


def _groups(names, *nets):
    """The tensors of ``nets`` grouped by dtype, each group flattened into one buffer per net:
    [(layout, [flat of net 0, flat of net 1, ...])]; integer tensors become float64 first (NumPy's
    true division), as ``_real`` does."""
    by: dict = {}
    for n in names:
        by.setdefault(nets[0][n].dtype, []).append(n)
    out = []
    for dtype, group in by.items():
        lay = layout_of({n: nets[0][n] for n in group})
        flats = []
        for net in nets:
            f = lay.flatten({n: net[n] for n in group}) if not isinstance(net, FlatDict) or net.layout != lay \
                else net.flat
            flats.append(f if f.is_floating_point() else f.to(torch.float64))
        out.append((lay, flats))
    return out


def _assemble(names, parts) -> dict:
    """Per-name views of the group results, in ``names`` order."""
    views = {}
    for lay, flat in parts:
        views.update(lay.split(flat))
    return {n: views[n] for n in names}


def superpose_cia(avg: Mapping | None, ticket: Mapping, t: int) -> dict:
    """Running connection-independent average, [ST] Eq. (4): avg_t = ((t - 1) avg_{t-1} + theta_t) / t.
    ``avg`` is None for the first ticket (t = 1), which returns a copy of the ticket."""
    t = check_t(t)
    if avg is None:
        if t != 1:
            raise ValueError(f"the running average is missing but t={t} (only the first ticket starts one)")
        check_alike([ticket], "tickets")
        _check_all([ticket], "ticket")
        return clone_all(ticket)
    check_alike([avg, ticket], "running average and ticket")
    _check_all([avg, ticket], "running average and ticket")
    first = next(iter(avg.values()))
    if _kernels.on_device(first):            # CUDA + CuPy: one launch for the whole network (kernels/merge.cu)
        fused = _kernels.superpose_cia(avg, ticket, t) if _kernels.usable(first) else None
        if fused is not None:
            return fused
    names = list(avg)
    return _assemble(names, [(lay, true_div(a * scalar_as(t - 1, a.dtype) + x, t))
                             for lay, (a, x) in _groups(names, avg, ticket)])


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
    avg_1 = theta_1 (docs/methods.md §4.3 resolution)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} is outside the allowed range [0, 1]")
    if avg is None:
        return superpose_cia(None, ticket, 1)
    check_alike([avg, ticket], "running average and ticket")
    _check_all([avg, ticket], "running average and ticket")
    names = list(avg)
    return _assemble(names, [(lay, a * scalar_as(beta, a.dtype) + x * scalar_as(1.0 - beta, a.dtype))
                             for lay, (a, x) in _groups(names, avg, ticket)])


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
    """The support of a merged network, 1[theta != 0] (docs/methods.md §1.12)."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a dict of name -> tensor, got {type(weights).__name__}")
    return {n: _tensor(w, f"weights[{n!r}]") != 0 for n, w in weights.items()}


def reprune(weights: Mapping, densities: Mapping | None = None, density: float | None = None) -> tuple[dict, dict]:
    """Magnitude re-pruning of a merged network back to its target: per layer to ``densities``
    or globally to ``density`` (docs/methods.md §4.3). Returns (pruned weights, masks)."""
    if (densities is None) == (density is None):
        raise ValueError("reprune needs exactly one of densities= (per layer) or density= (global)")
    if densities is not None:
        masks = magnitude_masks(weights, densities)
    else:
        masks = global_magnitude_masks(weights, check_density(density))
    if isinstance(masks, FlatDict) and len({w.dtype for w in weights.values()}) == 1:
        lay = masks.layout
        return lay.split(lay.flatten(weights) * masks.flat), masks     # one product for every layer
    return {n: w * masks[n] for n, w in weights.items()}, masks


def average_bn_stats(avg_mean, avg_var, mean, var, t: int, mode: str = "std") -> tuple[torch.Tensor, torch.Tensor]:
    """Running average of a BN layer's statistics over tickets ([ST] §5): mean and standard deviation
    (``mode='std'``; stored variance = averaged std squared) or the variance (``mode='var'``)."""
    t = check_t(t)
    if mode not in BN_AVG_MODES:
        raise ValueError(f"bn average mode {mode!r} is not allowed; choose one of {list(BN_AVG_MODES)}")
    mean, var = as_real_tensor(mean, "running mean"), as_real_tensor(var, "running variance")
    if tuple(mean.shape) != tuple(var.shape):
        raise ValueError(f"running mean has shape {tuple(mean.shape)} but running variance has shape {tuple(var.shape)}")
    deferred.require((var >= 0).all(), lambda: "running variance has negative entries")
    if t == 1:
        return mean.clone(), var.clone()
    for what, v in (("averaged mean", avg_mean), ("averaged variance", avg_var)):
        if v is None:
            raise TypeError(f"{what} is missing (None) but t={t}; only t=1 starts the average")
        as_real_tensor(v, what)
        if tuple(v.shape) != tuple(mean.shape):
            raise ValueError(f"{what} has shape {tuple(v.shape)} but the running mean has shape {tuple(mean.shape)}")
    deferred.require((avg_var >= 0).all(), lambda: "averaged variance has negative entries")
    dt = mean.dtype
    new_mean = true_div(avg_mean * scalar_as(t - 1, dt) + mean, t)
    if mode == "var":
        return new_mean, true_div(avg_var * scalar_as(t - 1, dt) + var, t)
    std = true_div(torch.sqrt(avg_var) * scalar_as(t - 1, dt) + torch.sqrt(var), t)
    return new_mean, std * std


def average_bn_stats_all(avg: Mapping | None, ticket: Mapping, pairs: Sequence, t: int, mode: str = "std") -> dict:
    """``average_bn_stats`` for every BN layer of a network at once: ``pairs`` lists the
    (running_mean, running_var) names; returns {name: averaged tensor} for all of them. The
    statistics of all layers are concatenated (one buffer of means, one of variances), so the
    arithmetic is the per-layer one, element by element, in a constant number of launches."""
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        return {}
    means = {m: ticket[m] for m, _ in pairs}
    var_names = [v for _, v in pairs]
    if len({ticket[m].dtype for m in means} | {ticket[v].dtype for v in var_names}) > 1:
        out = {}
        for m, v in pairs:
            out[m], out[v] = average_bn_stats(None if avg is None else avg[m], None if avg is None else avg[v],
                                              ticket[m], ticket[v], t, mode)
        return out
    for m, v in pairs:
        if tuple(ticket[m].shape) != tuple(ticket[v].shape):
            raise ValueError(f"running mean {m!r} has shape {tuple(ticket[m].shape)} but running variance "
                             f"{v!r} has shape {tuple(ticket[v].shape)}")
    lay = layout_of(means)
    cat = lambda net, names: torch.cat([net[n].reshape(-1) for n in names])  # noqa: E731
    mean_names = [m for m, _ in pairs]
    prev_m = None if avg is None else cat(avg, mean_names)
    prev_v = None if avg is None else cat(avg, var_names)
    new_m, new_v = average_bn_stats(prev_m, prev_v, cat(ticket, mean_names), cat(ticket, var_names), t, mode)
    means_out, vars_out = lay.split(new_m).values(), lay.split(new_v).values()
    out = {}
    for (m, v), a, b in zip(pairs, means_out, vars_out):       # the reference's order: mean, var per layer
        out[m], out[v] = a, b
    return out


def clone_all(net: Mapping) -> dict:
    """A copy of every tensor, one buffer per dtype (a constant number of copies)."""
    names = list(net)
    by: dict = {}
    for n in names:
        by.setdefault(net[n].dtype, []).append(n)
    views = {}
    for group in by.values():
        lay = layout_of({n: net[n] for n in group})
        views.update(lay.split(torch.cat([net[n].reshape(-1) for n in group]) if len(group) > 1
                               else net[group[0]].reshape(-1).clone()))
    return {n: views[n] for n in names}
