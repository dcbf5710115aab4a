"""Dynamic sparse training operators on torch tensors (SPEC §3.2, §3.3); twin of ``reference.dst``.

Same names, arguments and results (checked by ``conformance/entries/dst.py``). Name, count and
scalar validation is the reference's scalar logic, imported, not copied.

Drop and grow select for the whole model at once: every layer is flattened into one buffer and a
*segmented* exact top-k (``segmented_topk_within``) picks per layer with stable sorts, so a
mask update costs a handful of kernel launches whatever the number of layers:

    0. compact the candidates (their flat indices, increasing)
    1. stable sort by score, descending          -> equal scores keep flat-index order
    2. stable sort by layer id                   -> grouped by layer, order (1) kept inside
    3. rank within the layer = sorted position - first candidate slot of the layer;
       keep rank < k_layer; scatter back.

Scores are sorted as order-preserving integer keys (IEEE bits, -0.0 folded onto 0.0): radix sorts,
and for 32-bit (or narrower) scores steps 1-2 are one sort of a packed int64 key.

k_layer <= number of candidates of that layer is validated first. The keep set equals the
reference's per-layer stable sort by (-score, flat index).
"""
from __future__ import annotations

import math
from contextlib import nullcontext as _nullcontext
from typing import Mapping, Sequence

import numpy as np
import torch

from reference._checks import check_count
from reference.dst import COUNTER_INITS, EXPLORATION_FORMS, check_exploration  # noqa: F401 (re-export)
from reference.dst import _check_counts, check_fraction, check_iteration
from reference.masks import check_layer_dict, check_layer_names
from . import kernels as _kernels
from ._checks import as_real_tensor, check_finite, check_same_shape
from .topk import select_within, topk_within

__all__ = ["COUNTER_INITS", "EXPLORATION_FORMS", "swap_counts", "drop", "grow", "drop_and_grow",
           "init_counters", "increment_counters", "check_exploration", "dst_ee_scores", "ema_update",
           "mean_abs_over_mask", "prune_to_count", "explored_union", "segmented_topk_within"]


# ----------------------------------------------------------------------------- helpers

def _bool_masks(masks: Mapping, what: str = "masks") -> dict:
    check_layer_dict(masks, what)
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{what}[{n!r}] must be a boolean torch.Tensor, got {type(m).__name__}")
        if m.dtype != torch.bool:
            raise TypeError(f"{what}[{n!r}] must be a boolean mask, got dtype {m.dtype}")
    return dict(masks)


def _real(t, what: str) -> torch.Tensor:
    """Type checks of ``as_real_tensor`` without the (syncing) finiteness check."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{what} must be a real tensor, got dtype {t.dtype}")
    return t


def _check_finite_layers(tensors: Mapping, flat: torch.Tensor, what: str) -> None:
    """One finiteness check over the concatenation; on failure name the first bad layer."""
    if flat.is_floating_point() and not bool(torch.isfinite(flat).all()):
        for n, t in tensors.items():
            check_finite(t, f"{what}[{n!r}]")


def _flat(tensors: Mapping, names) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


def _segment_sums(flat: torch.Tensor, sizes: Sequence[int]) -> list:
    """Per-segment sums of a bool/int buffer as python ints, one reduction and one sync."""
    c = torch.cat([flat.new_zeros(1, dtype=torch.int64), torch.cumsum(flat, 0, dtype=torch.int64)])
    ends = torch.as_tensor(np.cumsum([0, *sizes]), dtype=torch.int64, device=flat.device)
    return (c[ends[1:]] - c[ends[:-1]]).tolist()


def _descending_key(flat: torch.Tensor) -> tuple[torch.Tensor, int]:
    """An int64 key whose ascending order is the descending order of ``flat`` (equal scores ->
    equal keys, -0.0 == 0.0), and the number of bits it spans: integer sorts are radix sorts,
    several times faster than float comparison sorts on CPU."""
    if flat.is_floating_point():
        bits = flat.element_size() * 8
        itype = {64: torch.int64, 32: torch.int32, 16: torch.int16}[bits]
        i = (flat + 0.0).contiguous().view(itype).to(torch.int64)     # + 0.0 turns -0.0 into +0.0
        i = i ^ ((i >> (bits - 1)) & ((1 << (bits - 1)) - 1))          # order-preserving as signed ints
        return (~i, 64) if bits == 64 else (~i + (1 << (bits - 1)), bits)
    if flat.dtype == torch.int64:
        return ~flat, 64
    info = torch.iinfo(flat.dtype)
    return info.max - flat.to(torch.int64), flat.element_size() * 8


SELECT_STRATEGIES = ("auto", "sort", "loop", "kernel")   # 'kernel': CUDA + CuPy radix select (accel/kernels/topk.cu)


def _segmented_select(flat_scores: torch.Tensor, flat_candidates: torch.Tensor,
                      sizes: Sequence[int], ks: Sequence[int], strategy: str = "auto") -> torch.Tensor:
    """The selection of ``segmented_topk_within`` without validation (callers validated).

    Only the candidates are sorted (compacted first: a drop sorts the active weights only), by the
    key (segment, -score); stability breaks equal scores by flat index."""
    n, dev = flat_scores.numel(), flat_scores.device
    keep = torch.zeros(n, dtype=torch.bool, device=dev)
    if n == 0 or not any(ks):
        return keep
    if strategy == "kernel" or (strategy == "auto" and _kernels.on_device(flat_scores)
                                and _kernels.usable(flat_scores)):
        with _kernels.require() if strategy == "kernel" else _nullcontext():
            return _kernels.topk_select(flat_scores, sizes, ks, candidates=flat_candidates)
    if strategy == "loop" or (strategy == "auto" and dev.type == "cpu"):
        # On CPU an O(n) kthvalue selection per segment beats the two whole-model sorts by 3-8x
        # (measured: 266k weights 5.5 vs 15 ms, 12.6M weights 0.24 vs 1.96 s); on CUDA the sorts
        # below keep the update at a handful of launches for the whole model.
        n_cand = _segment_sums(flat_candidates, sizes)
        for s_, c_, (start, size), k in zip(flat_scores.split(sizes), flat_candidates.split(sizes),
                                             zip(np.cumsum([0, *sizes[:-1]]), sizes), ks):
            keep[start:start + size] = select_within(s_, c_, k, n_cand.pop(0))
        return keep
    sizes_t = torch.as_tensor(list(sizes), dtype=torch.int64, device=dev)
    seg = torch.repeat_interleave(torch.arange(len(sizes), device=dev), sizes_t, output_size=n)
    idx = flat_candidates.nonzero().squeeze(1)                # candidates, increasing flat index
    seg_c = seg[idx]
    n_cand = torch.bincount(seg_c, minlength=len(sizes))
    starts = torch.cumsum(n_cand, 0) - n_cand                 # first candidate slot of each segment
    score_key, bits = _descending_key(flat_scores[idx])
    if bits <= 32:    # one stable sort of the packed key (segment, -score)
        perm = torch.argsort((seg_c << 32) | score_key, stable=True)
    else:             # two stable sorts: by -score, then by segment
        by_score = torch.argsort(score_key, stable=True)
        perm = by_score[torch.argsort(seg_c[by_score], stable=True)]
    seg_sorted = seg_c[perm]
    rank = torch.arange(idx.numel(), device=dev) - starts[seg_sorted]
    ks_t = torch.as_tensor(list(ks), dtype=torch.int64, device=dev)
    keep[idx[perm]] = rank < ks_t[seg_sorted]
    return keep


def _split(flat: torch.Tensor, like: Mapping) -> dict:
    parts = torch.split(flat, [t.numel() for t in like.values()])
    return {n: p.reshape(t.shape) for (n, t), p in zip(like.items(), parts)}


def _prepare_selection(masks: dict, scores: Mapping, kind: str):
    """Type/shape checks per layer, one finiteness check, per-layer active counts (one sync).
    Returns (flat mask, flat scores, sizes, n_active)."""
    names = list(masks)
    for n in names:
        s = _real(scores[n], f"{kind} scores[{n!r}]")
        check_same_shape(masks[n], s, f"mask {n!r}", f"{kind} scores {n!r}")
    flat_s = _flat(scores, names)
    _check_finite_layers({n: scores[n] for n in names}, flat_s, f"{kind} scores")
    flat_m = _flat(masks, names)
    sizes = [masks[n].numel() for n in names]
    return flat_m, flat_s, sizes, _segment_sums(flat_m, sizes)


def _check_drop_counts(names, counts, n_active) -> None:
    for n, k, a in zip(names, (counts[n] for n in names), n_active):
        if k > a:
            raise ValueError(f"layer {n!r}: cannot drop {k} weights, only {a} are active")


def _check_grow_counts(names, counts, pools) -> None:
    for n, k, p in zip(names, (counts[n] for n in names), pools):
        if k > p:
            raise ValueError(f"layer {n!r}: a growth of {k} weights is larger than the inactive pool "
                             f"of {p} positions")


# ----------------------------------------------------------------------------- segmented top-k

def segmented_topk_within(flat_scores: torch.Tensor, flat_candidates: torch.Tensor,
                          segment_sizes: Sequence[int], ks: Sequence[int], strategy: str = "auto") -> torch.Tensor:
    """For each consecutive segment of the 1-D ``flat_scores`` (lengths ``segment_sizes``), the
    top ``ks[i]`` scores among its candidates (tie rule: larger score, then smaller index).
    Equal to ``reference.topk.topk_within`` on every segment; two stable sorts in all."""
    if not isinstance(flat_scores, torch.Tensor) or flat_scores.dim() != 1:
        raise ValueError(f"flat_scores must be a 1-D torch.Tensor, got "
                         f"{tuple(flat_scores.shape) if isinstance(flat_scores, torch.Tensor) else type(flat_scores).__name__}")
    _real(flat_scores, "flat_scores")
    if (not isinstance(flat_candidates, torch.Tensor) or flat_candidates.dtype != torch.bool
            or tuple(flat_candidates.shape) != tuple(flat_scores.shape)):
        got = (f"{flat_candidates.dtype} {tuple(flat_candidates.shape)}" if isinstance(flat_candidates, torch.Tensor)
               else type(flat_candidates).__name__)
        raise ValueError(f"candidates must be a boolean tensor of the scores' shape {tuple(flat_scores.shape)}, "
                         f"got {got}")
    sizes = list(segment_sizes)
    for i, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"segment_sizes[{i}]={s!r} must be an integer >= 0")
    if sum(sizes) != flat_scores.numel():
        raise ValueError(f"segment_sizes {sizes} add up to {sum(sizes)}, but there are "
                         f"{flat_scores.numel()} scores")
    ks = list(ks)
    if len(ks) != len(sizes):
        raise ValueError(f"ks has {len(ks)} entries but there are {len(sizes)} segments")
    n_cand = _segment_sums(flat_candidates, sizes)
    ks = [check_count(k, c, f"k of segment {i}") for i, (k, c) in enumerate(zip(ks, n_cand))]
    check_finite(flat_scores, "scores")
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; choose one of {list(SELECT_STRATEGIES)}")
    return _segmented_select(flat_scores, flat_candidates, sizes, ks, strategy)


# ----------------------------------------------------------------------------- prune and grow

def swap_counts(masks: Mapping, fraction: float) -> dict:
    """k_l = floor(f * n_active_l) for every layer (issue #3 / SPEC §3.2); python ints."""
    masks = _bool_masks(masks)
    check_fraction(fraction)
    names = list(masks)
    n_active = _segment_sums(_flat(masks, names), [masks[n].numel() for n in names])
    return {n: int(math.floor(float(fraction) * a)) for n, a in zip(names, n_active)}


def drop(masks: Mapping, drop_scores: Mapping, counts: Mapping) -> dict:
    """Drop counts[l] active weights per layer: keep the top (n_active - k) drop scores among the
    active positions (complement of a keep set). One segmented selection for all layers."""
    masks = _bool_masks(masks)
    counts = _check_counts(counts, masks, "drop counts")
    check_layer_names(masks, drop_scores, "drop scores")
    flat_m, flat_s, sizes, n_active = _prepare_selection(masks, drop_scores, "drop")
    names = list(masks)
    _check_drop_counts(names, counts, n_active)
    keep = _segmented_select(flat_s, flat_m, sizes, [a - counts[n] for n, a in zip(names, n_active)])
    return _split(keep, masks)


def grow(masks: Mapping, grow_scores: Mapping, counts: Mapping) -> dict:
    """Grow counts[l] weights per layer at the largest grow scores among the inactive positions."""
    masks = _bool_masks(masks)
    counts = _check_counts(counts, masks, "grow counts")
    check_layer_names(masks, grow_scores, "grow scores")
    flat_m, flat_s, sizes, n_active = _prepare_selection(masks, grow_scores, "grow")
    names = list(masks)
    _check_grow_counts(names, counts, [s - a for s, a in zip(sizes, n_active)])
    grown = _segmented_select(flat_s, ~flat_m, sizes, [counts[n] for n in names])
    return _split(flat_m | grown, masks)


def drop_and_grow(masks: Mapping, drop_scores: Mapping, grow_scores: Mapping, drop_counts: Mapping,
                  grow_counts: Mapping | None = None) -> dict:
    """One prune-and-grow round ([ST] Eq. 1-2); ``grow_counts`` defaults to ``drop_counts``.
    Everything (both score sets, both count sets) is validated before any selection runs."""
    masks = _bool_masks(masks)
    dcounts = _check_counts(drop_counts, masks, "drop counts")
    check_layer_names(masks, drop_scores, "drop scores")
    flat_m, flat_d, sizes, n_active = _prepare_selection(masks, drop_scores, "drop")
    names = list(masks)
    _check_drop_counts(names, dcounts, n_active)
    gcounts = dcounts if grow_counts is None else _check_counts(grow_counts, masks, "grow counts")
    check_layer_names(masks, grow_scores, "grow scores")
    for n in names:
        g = _real(grow_scores[n], f"grow scores[{n!r}]")
        check_same_shape(masks[n], g, f"mask {n!r}", f"grow scores {n!r}")
    flat_g = _flat(grow_scores, names)
    _check_finite_layers({n: grow_scores[n] for n in names}, flat_g, "grow scores")
    # pool after the drop = inactive before + dropped
    _check_grow_counts(names, gcounts, [s - a + dcounts[n] for n, s, a in zip(names, sizes, n_active)])
    kept = _segmented_select(flat_d, flat_m, sizes, [a - dcounts[n] for n, a in zip(names, n_active)])
    grown = _segmented_select(flat_g, ~kept, sizes, [gcounts[n] for n in names])
    return _split(kept | grown, masks)


# ----------------------------------------------------------------------------- DST-EE ([EE] Eq. 1)

def init_counters(masks: Mapping, init: str = "mask") -> dict:
    """Activation counter N (SPEC §3.3 ambiguity 2): N_0 = M_0 ('mask') or zeros; int64."""
    masks = _bool_masks(masks)
    if init not in COUNTER_INITS:
        raise ValueError(f"counter init {init!r} is not allowed; choose one of {list(COUNTER_INITS)}")
    return {n: m.to(torch.int64) if init == "mask" else torch.zeros_like(m, dtype=torch.int64)
            for n, m in masks.items()}


def increment_counters(counters: Mapping, masks: Mapping) -> dict:
    """N <- N + M_new (SPEC §3.3 ambiguity 3: the mask after drop and grow)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, counters, "counters")
    for n, m in masks.items():
        c = _real(counters[n], f"counters[{n!r}]")
        check_same_shape(m, c, f"mask {n!r}", f"counter {n!r}")
    return {n: counters[n] + m.to(torch.int64) for n, m in masks.items()}


def dst_ee_scores(grads: Mapping, counters: Mapping, t: int, c: float, eps: float, form: str = "eq1") -> dict:
    """DST-EE acquisition function, [EE] Eq. (1): S = |dL/dW| + c * ln(t) / (N + eps)
    (``form='text'``: ln(t) / (N + c)). Computed in the gradient's dtype, in the reference's
    operation order (scalars rounded to that dtype first)."""
    check_exploration(c, eps, form)
    check_iteration(t)
    check_layer_dict(grads, "gradients")
    check_layer_names(grads, counters, "counters")
    for n, g in grads.items():
        g = as_real_tensor(g, f"gradients[{n!r}]")
        N = _real(counters[n], f"counters[{n!r}]")
        check_same_shape(g, N, f"gradient {n!r}", f"counter {n!r}")
    first = next(iter(grads.values()))
    if _kernels.on_device(first):              # CUDA + CuPy: one launch for every layer (kernels/dst.cu)
        fused = _kernels.dst_ee_scores(grads, counters, t, c, eps, form) if _kernels.usable(first) else None
        if fused is not None:
            return fused
    out = {}
    for n, g in grads.items():
        scal = lambda v: torch.tensor(v, dtype=g.dtype, device=g.device)  # noqa: E731
        lnt = scal(math.log(t))
        Nf = counters[n].to(g.dtype)
        bonus = scal(c) * lnt / (Nf + scal(eps)) if form == "eq1" else lnt / (Nf + scal(c))
        out[n] = g.abs() + bonus
    return out


# ----------------------------------------------------------------------------- SNFS / GraNet helpers

def ema_update(ema: Mapping | None, grads: Mapping, beta: float) -> dict:
    """m <- beta m + (1 - beta) g (SNFS momentum); ``ema=None`` starts from zeros."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum beta={beta!r} is outside the allowed range [0, 1)")
    check_layer_dict(grads, "gradients")
    for n, g in grads.items():
        as_real_tensor(g, f"gradients[{n!r}]")
    out = {}
    for n, g in grads.items():
        prev = torch.zeros_like(g) if ema is None else ema[n]
        b = torch.tensor(beta, dtype=g.dtype, device=g.device)
        one_minus = torch.tensor(1.0 - beta, dtype=g.dtype, device=g.device)
        out[n] = b * prev + one_minus * g
    return out


def mean_abs_over_mask(values: Mapping, masks: Mapping) -> dict:
    """Per-layer mean |v| over the active positions (0.0 for an empty layer), accumulated in
    float64; python floats (one device sync)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, values, "values")
    for n, m in masks.items():
        v = as_real_tensor(values[n], f"values[{n!r}]")
        check_same_shape(m, v, f"mask {n!r}", f"values {n!r}")
    names = list(masks)
    sums = torch.stack([torch.where(masks[n], values[n].abs().to(torch.float64), 0.0).sum() for n in names])
    ks = torch.stack([masks[n].sum() for n in names])
    sums, ks = sums.tolist(), ks.tolist()
    return {n: float(s / k) if k else 0.0 for n, s, k in zip(names, sums, ks)}


def prune_to_count(masks: Mapping, scores: Mapping, n_keep: int) -> dict:
    """Global magnitude step of gradual pruning (GraNet): keep the n_keep largest scores among the
    active positions of all layers together (concatenation order, tie rule)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, scores, "scores")
    names = list(masks)
    flat_m = _flat(masks, names)
    for n in names:
        check_same_shape(masks[n], as_real_tensor(scores[n], f"scores[{n!r}]"), f"mask {n!r}", f"scores {n!r}")
    flat_s = _flat(scores, names)
    total = int(flat_m.sum())
    if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)) or not 0 <= n_keep <= total:
        raise ValueError(f"n_keep={n_keep!r} must be an integer in [0, {total}] (the active weights)")
    keep = topk_within(flat_s, flat_m, int(n_keep))
    return _split(keep, masks)


def explored_union(explored: Mapping, masks: Mapping) -> dict:
    """ITOP bookkeeping: b <- b OR m (a weight is explored once it was ever active; SPEC §8.6)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, explored, "explored")
    return {n: torch.as_tensor(explored[n], device=m.device).to(torch.bool) | m for n, m in masks.items()}
