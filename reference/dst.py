"""Dynamic sparse training operators, NumPy reference (docs/methods.md §2.1, §3.2, §2.4, §3.4).

The prune-and-grow exploration of [ST] §3.1 Eq. (1)-(2), in jaxpruner's contract
(score -> exact top-k -> mask), per layer:

    theta_s'  = Psi(theta_s, p)               drop: keep the n_active - k largest drop scores among
                                              the active weights (the k dropped are its complement)
    theta_s   = theta_s' U Phi(., p)          grow: the k largest grow scores among the positions
                                              inactive *after* the drop (just-dropped may regrow)

with k = floor(f * n_active) (docs/methods.md §2.1 resolution: per layer, equal counts). Every selection uses
the tie rule of ``reference.topk`` (larger score wins, ties -> smaller flat index). Functions are
pure; dicts map layer name -> array in layer order.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ._checks import as_real_array, check_same_shape
from .masks import check_layer_dict, check_layer_names
from .topk import topk_within

COUNTER_INITS = ("mask", "zeros")
EXPLORATION_FORMS = ("eq1", "text")


def _bool_masks(masks: Mapping, what: str = "masks") -> dict:
    check_layer_dict(masks, what)
    out = {}
    for n, m in masks.items():
        m = np.asarray(m)
        if m.dtype != bool:
            raise TypeError(f"{what}[{n!r}] must be a boolean mask, got dtype {m.dtype}")
        out[n] = m
    return out


def check_counts(counts: Mapping, masks: Mapping, what: str) -> dict:
    check_layer_names(masks, counts, what)
    out = {}
    for n, k in counts.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"{what}[{n!r}]={k!r} must be an integer >= 0")
        out[n] = int(k)
    return out


def check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drop fraction {fraction!r} is outside the allowed range [0, 1]")
    return float(fraction)


def check_iteration(t) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"t={t!r} must be an integer iteration >= 1 (ln t needs t >= 1)")
    return int(t)


def swap_count(fraction: float, n_active: int) -> int:
    """k = floor(f * n_active) of one layer (docs/methods.md §2.1), in float64 as Python computes it;
    ``fraction`` already checked by ``check_fraction``."""
    return int(math.floor(float(fraction) * int(n_active)))


def drop_count_message(name, k, n_active) -> str:
    """The error of a drop of more weights than a layer has active."""
    return f"layer {name!r}: cannot drop {k} weights, only {n_active} are active"


def grow_count_message(name, k, pool) -> str:
    """The error of a growth larger than a layer's inactive pool."""
    return f"layer {name!r}: a growth of {k} weights is larger than the inactive pool of {pool} positions"


def check_keep_count(n_keep, n_active: int) -> int:
    """``n_keep`` of ``prune_to_count``: an integer in [0, n_active] (the active weights of all layers)."""
    if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)) or not 0 <= n_keep <= n_active:
        raise ValueError(f"n_keep={n_keep!r} must be an integer in [0, {int(n_active)}] (the active weights)")
    return int(n_keep)


def check_counter_init(init: str) -> None:
    if init not in COUNTER_INITS:
        raise ValueError(f"counter init {init!r} is not allowed; choose one of {list(COUNTER_INITS)}")


def check_ema_beta(beta) -> None:
    """The smoothing factor of ``ema_update``: 0 <= beta < 1."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum beta={beta!r} is outside the allowed range [0, 1)")


def swap_counts(masks: Mapping, fraction: float) -> dict:
    """k_l = floor(f * n_active_l) for every layer (docs/methods.md §2.1)."""
    masks = _bool_masks(masks)
    check_fraction(fraction)
    return {n: swap_count(fraction, m.sum()) for n, m in masks.items()}


def _layers(masks: Mapping, scores: Mapping, counts: Mapping, kind: str):
    """The checked (name, mask, scores, count) of every layer of a drop or a grow."""
    masks = _bool_masks(masks)
    counts = check_counts(counts, masks, f"{kind} counts")
    check_layer_names(masks, scores, f"{kind} scores")
    for n, m in masks.items():
        s = as_real_array(scores[n], f"{kind} scores[{n!r}]")
        check_same_shape(m, s, f"mask {n!r}", f"{kind} scores {n!r}")
        yield n, m, s, counts[n]


def drop(masks: Mapping, drop_scores: Mapping, counts: Mapping) -> dict:
    """Drop counts[l] active weights per layer: the kept set is the top (n_active - k) drop scores
    among the active positions (docs/methods.md §1.2: "drop the k smallest" = complement of a keep set)."""
    out = {}
    for n, m, s, k in _layers(masks, drop_scores, counts, "drop"):
        n_active = int(m.sum())
        if k > n_active:
            raise ValueError(drop_count_message(n, k, n_active))
        out[n] = topk_within(s, m, n_active - k)
    return out


def grow(masks: Mapping, grow_scores: Mapping, counts: Mapping) -> dict:
    """Grow counts[l] weights per layer at the largest grow scores among the inactive positions."""
    out = {}
    for n, m, s, k in _layers(masks, grow_scores, counts, "grow"):
        pool = int((~m).sum())
        if k > pool:
            raise ValueError(grow_count_message(n, k, pool))
        out[n] = m | topk_within(s, ~m, k)
    return out


def drop_and_grow(masks: Mapping, drop_scores: Mapping, grow_scores: Mapping, drop_counts: Mapping,
                  grow_counts: Mapping | None = None) -> dict:
    """One prune-and-grow round ([ST] Eq. 1-2). ``grow_counts`` defaults to ``drop_counts``."""
    kept = drop(masks, drop_scores, drop_counts)
    return grow(kept, grow_scores, drop_counts if grow_counts is None else grow_counts)


# ----------------------------------------------------------------------------- DST-EE ([EE] Eq. 1)

def init_counters(masks: Mapping, init: str = "mask") -> dict:
    """Activation counter N (docs/methods.md §3.2 item 2): Alg. 1 N_0 = M_0 ('mask', default) or the
    text's zero tensor ('zeros'). Integer counts."""
    masks = _bool_masks(masks)
    check_counter_init(init)
    return {n: m.astype(np.int64) if init == "mask" else np.zeros(m.shape, np.int64) for n, m in masks.items()}


def increment_counters(counters: Mapping, masks: Mapping) -> dict:
    """N <- N + M_new (docs/methods.md §3.2 item 3: the mask after drop and grow)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, counters, "counters")
    out = {}
    for n, m in masks.items():
        c = np.asarray(counters[n])
        check_same_shape(m, c, f"mask {n!r}", f"counter {n!r}")
        out[n] = c + m.astype(np.int64)
    return out


def check_exploration(c: float, eps: float, form: str) -> None:
    """c >= 0 and eps > 0 (the bonus must stay finite); the form is 'eq1' or 'text'."""
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"c={c!r} is not allowed: the exploration coefficient must be a finite number >= 0")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps={eps!r} is not allowed: it must be a finite number > 0")
    if form not in EXPLORATION_FORMS:
        raise ValueError(f"exploration form {form!r} is not allowed; choose one of {list(EXPLORATION_FORMS)}")
    if form == "text" and c <= 0:
        raise ValueError(f"c={c!r} with form='text' (ln t / (N + c)) needs c > 0")


def check_dst_ee_args(grads: Mapping, counters: Mapping, t, c, eps, form) -> None:
    """The scalar and name checks of ``dst_ee_scores`` (the arrays are checked layer by layer)."""
    check_exploration(c, eps, form)
    check_iteration(t)
    check_layer_dict(grads, "gradients")
    check_layer_names(grads, counters, "counters")


def dst_ee_scores(grads: Mapping, counters: Mapping, t: int, c: float, eps: float, form: str = "eq1") -> dict:
    """DST-EE acquisition function, [EE] Eq. (1):  S = |dL/dW| + c * ln(t) / (N + eps).

    ``form='text'`` is the printed exploration term ln(t) / (N + c) (docs/methods.md §3.2 item 1; the
    default follows Eq. 1 / Alg. 1, where a larger c means more exploration as Fig. 3 states).
    The score is computed in the gradient's dtype.
    """
    check_dst_ee_args(grads, counters, t, c, eps, form)
    out = {}
    for n, g in grads.items():
        g = as_real_array(g, f"gradients[{n!r}]")
        N = np.asarray(counters[n])
        check_same_shape(g, N, f"gradient {n!r}", f"counter {n!r}")
        dt = g.dtype.type
        lnt = dt(math.log(t))
        bonus = dt(c) * lnt / (N.astype(g.dtype) + dt(eps)) if form == "eq1" else lnt / (N.astype(g.dtype) + dt(c))
        out[n] = np.abs(g) + bonus
    return out


# ----------------------------------------------------------------------------- SNFS / GraNet helpers

def ema_update(ema: Mapping | None, grads: Mapping, beta: float) -> dict:
    """Exponentially smoothed gradient m <- beta m + (1 - beta) g (SNFS momentum, [EE] §related)."""
    check_ema_beta(beta)
    check_layer_dict(grads, "gradients")
    out = {}
    for n, g in grads.items():
        g = as_real_array(g, f"gradients[{n!r}]")
        prev = np.zeros_like(g) if ema is None else np.asarray(ema[n])
        out[n] = g.dtype.type(beta) * prev + g.dtype.type(1.0 - beta) * g
    return out


def mean_abs_over_mask(values: Mapping, masks: Mapping) -> dict:
    """Per-layer mean |v| over the active positions (0.0 for a layer with none); SNFS's layer
    importance for redistribution. Accumulated in float64."""
    masks = _bool_masks(masks)
    check_layer_names(masks, values, "values")
    out = {}
    for n, m in masks.items():
        v = as_real_array(values[n], f"values[{n!r}]")
        check_same_shape(m, v, f"mask {n!r}", f"values {n!r}")
        k = int(m.sum())
        out[n] = float(np.abs(v[m]).astype(np.float64).sum() / k) if k else 0.0
    return out


def prune_to_count(masks: Mapping, scores: Mapping, n_keep: int) -> dict:
    """Global magnitude step of gradual pruning (GraNet): keep the n_keep largest scores among the
    active positions of all layers together (concatenation order, tie rule)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, scores, "scores")
    names = list(masks)
    for n in names:
        check_same_shape(masks[n], np.asarray(scores[n]), f"mask {n!r}", f"scores {n!r}")
    flat_m = np.concatenate([masks[n].reshape(-1) for n in names])
    flat_s = np.concatenate([as_real_array(scores[n], f"scores[{n!r}]").reshape(-1) for n in names])
    keep = topk_within(flat_s, flat_m, check_keep_count(n_keep, int(flat_m.sum())))
    out, start = {}, 0
    for n in names:
        size = masks[n].size
        out[n] = keep[start:start + size].reshape(masks[n].shape)
        start += size
    return out


def explored_union(explored: Mapping, masks: Mapping) -> dict:
    """ITOP bookkeeping: b <- b OR m (a weight is explored once it was ever active; docs/methods.md §3.4)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, explored, "explored")
    return {n: np.asarray(explored[n], dtype=bool) | m for n, m in masks.items()}
