"""Merging sparse networks: Sup-tickets superposition and D²-Sparse interpolation, NumPy reference
(docs/methods.md §4.3, §5.3, §1.12).

A "network" here is a dict name -> array holding every parameter (prunable weights with zeros at
inactive positions, dense biases and BN affine parameters) and, where a rule says so, the BN
running buffers. Functions are pure and check that all networks name the same tensors with the
same shapes before computing anything.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ._checks import as_real_array, check_density
from .masks import check_layer_dict, global_magnitude_masks, magnitude_masks

BN_AVG_MODES = ("std", "var")


def check_alike(nets: Sequence[Mapping], what: str = "networks") -> None:
    """Every network names the same tensors, in the same order, with the same shapes."""
    if len(nets) == 0:
        raise ValueError(f"the list of {what} is empty")
    first = nets[0]
    check_layer_dict(first, f"{what}[0]")
    for i, net in enumerate(nets[1:], start=1):
        check_layer_dict(net, f"{what}[{i}]")
        if list(net) != list(first):
            raise ValueError(f"{what}[{i}] names {list(net)} but {what}[0] names {list(first)}")
        for n in first:
            if np.shape(net[n]) != np.shape(first[n]):
                raise ValueError(f"{what}[{i}][{n!r}] has shape {np.shape(net[n])} but {what}[0][{n!r}] "
                                 f"has shape {np.shape(first[n])}")


def check_t(t) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"t={t!r} must be the 1-based index of the ticket (an integer >= 1)")
    return int(t)


def superpose_cia(avg: Mapping | None, ticket: Mapping, t: int) -> dict:
    """Running connection-independent average, [ST] Eq. (4):  avg_t = ((t - 1) avg_{t-1} + theta_t) / t.

    ``avg`` is None for the first ticket (t = 1), which returns a copy of the ticket."""
    t = check_t(t)
    if avg is None:
        if t != 1:
            raise ValueError(f"the running average is missing but t={t} (only the first ticket starts one)")
        check_alike([ticket], "tickets")
        return {n: as_real_array(v, f"ticket[{n!r}]").copy() for n, v in ticket.items()}
    check_alike([avg, ticket], "running average and ticket")
    out = {}
    for n in avg:
        a, x = as_real_array(avg[n], f"average[{n!r}]"), as_real_array(ticket[n], f"ticket[{n!r}]")
        dt = a.dtype.type
        out[n] = (dt(t - 1) * a + x) / dt(t)
    return out


def cia(tickets: Sequence[Mapping]) -> dict:
    """Connection-independent average of M tickets, [ST] §3.2.2: (1/M) sum_i theta_i."""
    check_alike(tickets, "tickets")
    return {n: sum(as_real_array(tk[n], f"tickets[{i}][{n!r}]") for i, tk in enumerate(tickets)) / len(tickets)
            for n in tickets[0]}


def caa(tickets: Sequence[Mapping], masks: Sequence[Mapping]) -> dict:
    """Connection-aware average, [ST] §3.2.2: sum_i theta_i / N, N = number of tickets in which the
    connection is active (0/0 := 0 for never-active entries; tensors without a mask have N = M)."""
    check_alike(tickets, "tickets")
    if len(masks) != len(tickets):
        raise ValueError(f"caa needs one mask dict per ticket: {len(tickets)} tickets, {len(masks)} mask dicts")
    check_alike(masks, "masks")
    for n in masks[0]:
        if n not in tickets[0] or np.shape(masks[0][n]) != np.shape(tickets[0][n]):
            raise ValueError(f"mask {n!r} does not match a ticket tensor of the same shape")
    out = {}
    for n in tickets[0]:
        total = sum(as_real_array(tk[n], f"tickets[{i}][{n!r}]") for i, tk in enumerate(tickets))
        if n in masks[0]:
            count = sum(np.asarray(m[n], dtype=bool).astype(total.dtype) for m in masks)
            out[n] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        else:
            out[n] = total / total.dtype.type(len(tickets))
    return out


def superpose_cima(avg: Mapping | None, ticket: Mapping, beta: float) -> dict:
    """Connection-independent moving average, [ST] §3.2.2:  avg_t = beta avg_{t-1} + (1 - beta) theta_t,
    avg_1 = theta_1 (docs/methods.md §4.3 resolution)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} is outside the allowed range [0, 1]")
    if avg is None:
        return superpose_cia(None, ticket, 1)
    check_alike([avg, ticket], "running average and ticket")
    out = {}
    for n in avg:
        a, x = as_real_array(avg[n], f"average[{n!r}]"), as_real_array(ticket[n], f"ticket[{n!r}]")
        if a.dtype.kind != "f":  # integer tickets average in float64, like true division elsewhere
            a, x = a.astype(np.float64), x.astype(np.float64)
        dt = a.dtype.type
        out[n] = dt(beta) * a + dt(1.0 - beta) * x
    return out


def interpolate(a: Mapping, b: Mapping, alpha: float) -> dict:
    """Pointwise interpolation alpha a + (1 - alpha) b over every tensor ([D2] App. B.2.2 Eq. 1).

    Floating tensors (weights, biases, BN affine and running statistics) are interpolated;
    integer buffers (BN ``num_batches_tracked``) take the larger of the two."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is outside the allowed range [0, 1]")
    check_alike([a, b], "networks")
    out = {}
    for n in a:
        x, y = np.asarray(a[n]), np.asarray(b[n])
        if x.dtype.kind in "iub":
            out[n] = np.maximum(x, y)
            continue
        x, y = as_real_array(x, f"a[{n!r}]"), as_real_array(y, f"b[{n!r}]")
        dt = x.dtype.type
        out[n] = dt(alpha) * x + dt(1.0 - alpha) * y
    return out


def merged_masks(weights: Mapping) -> dict:
    """The support of a merged network, 1[theta != 0] (docs/methods.md §1.12)."""
    return {n: np.asarray(w) != 0 for n, w in weights.items()}


def reprune(weights: Mapping, densities: Mapping | None = None, density: float | None = None) -> tuple[dict, dict]:
    """Magnitude re-pruning of a merged network back to its target: per layer to ``densities``
    (docs/methods.md §4.3 resolution: the current layer densities) or globally to ``density``.
    Returns (pruned weights, masks)."""
    if (densities is None) == (density is None):
        raise ValueError("reprune needs exactly one of densities= (per layer) or density= (global)")
    if densities is not None:
        masks = magnitude_masks(weights, densities)
    else:
        masks = global_magnitude_masks(weights, check_density(density))
    return {n: np.asarray(w) * masks[n] for n, w in weights.items()}, masks


def average_bn_stats(avg_mean, avg_var, mean, var, t: int, mode: str = "std") -> tuple[np.ndarray, np.ndarray]:
    """Running average of a BN layer's statistics over tickets ([ST] §5 "Batch Normalization"):
    the mean and the standard deviation are averaged (``mode='std'``, literal; the stored running
    variance is the squared averaged std) or the variance itself (``mode='var'``). t = 1 starts."""
    t = check_t(t)
    if mode not in BN_AVG_MODES:
        raise ValueError(f"bn average mode {mode!r} is not allowed; choose one of {list(BN_AVG_MODES)}")
    mean, var = as_real_array(mean, "running mean"), as_real_array(var, "running variance")
    if mean.shape != var.shape:
        raise ValueError(f"running mean has shape {mean.shape} but running variance has shape {var.shape}")
    if np.any(var < 0):
        raise ValueError("running variance has negative entries")
    if t == 1:
        return mean.copy(), var.copy()
    for what, v in (("averaged mean", avg_mean), ("averaged variance", avg_var)):
        if v is None:
            raise TypeError(f"{what} is missing (None) but t={t}; only t=1 starts the average")
        if np.shape(v) != mean.shape:
            raise ValueError(f"{what} has shape {np.shape(v)} but the running mean has shape {mean.shape}")
    avg_mean, avg_var = as_real_array(avg_mean, "averaged mean"), as_real_array(avg_var, "averaged variance")
    if np.any(avg_var < 0):
        raise ValueError("averaged variance has negative entries")
    dt = mean.dtype.type
    new_mean = (dt(t - 1) * avg_mean + mean) / dt(t)
    if mode == "var":
        return new_mean, (dt(t - 1) * avg_var + var) / dt(t)
    std = (dt(t - 1) * np.sqrt(avg_var) + np.sqrt(var)) / dt(t)
    return new_mean, std * std


def average_bn_stats_all(avg: Mapping | None, ticket: Mapping, pairs, t: int, mode: str = "std") -> dict:
    """``average_bn_stats`` for every BN layer of a network: ``pairs`` lists the (running_mean,
    running_var) names; returns {name: averaged array} for all of them ([ST] §5)."""
    out = {}
    for m, v in pairs:
        out[m], out[v] = average_bn_stats(None if avg is None else avg[m], None if avg is None else avg[v],
                                          ticket[m], ticket[v], t, mode)
    return out
