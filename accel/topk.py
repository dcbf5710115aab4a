"""Exact top-k on torch tensors with the project's tie rule; twin of ``reference.topk``.

The keep set of every selection is the first k entries of a stable sort by (-score, flat index):
larger score wins, equal scores go to the smaller flat index (C order; the index within the
concatenation for global selections).

Two forms:

* one tensor (``topk_mask``, ``topk_within``): O(n) without a sort. The k-th largest value is
  found with ``torch.kthvalue``, everything strictly above it is kept, and the remaining slots go
  to the entries equal to it in increasing flat index (a cumulative count);
* many segments of one flat buffer (``select_segments``: every layer of a model at once, per-layer
  k): on CUDA with CuPy the radix-select kernels of ``accel/kernels/topk.cu``; on CUDA without
  them stable sorts of an integer key (segment, -score), ranks within the segment compared with the
  segment's k. Neither asks the host for anything (the counts may be device tensors), so a
  whole-model mask update needs no host synchronisation for its selections. On a CPU, where a host
  read is free, one O(n) selection per layer (``strategy="loop"``) is faster than the sorts.

Validation of counts and finiteness goes through ``accel.deferred``: immediate for a direct call,
read once at the end of a Sparsifier update.
"""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from twinsparse.reference._checks import check_count, check_nonempty, count_for_density
from . import deferred
from . import kernels as _kernels
from ._checks import check_finite
from .flat import Layout, cpu_path, int_vector, layout_of, segment_sums

__all__ = ["topk_mask", "topk_masks_global", "topk_masks_per_layer", "topk_within", "select_within",
           "select_segments", "segmented_topk_within", "SELECT_STRATEGIES", "descending_key"]

SELECT_STRATEGIES = ("auto", "sort", "loop", "kernel")   # kernel: CUDA + CuPy radix select (kernels/topk.cu)
Counts = Union[Sequence[int], torch.Tensor]


# ----------------------------------------------------------------------------- one tensor

def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask with exactly ``k`` True entries (larger score wins, ties -> smaller flat index)."""
    n = scores.numel()
    k = check_count(k, n)
    check_finite(scores, "scores")
    flat = scores.reshape(-1)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k == n:
        return torch.ones_like(scores, dtype=torch.bool)
    if _kernels.on_device(flat) and _kernels.usable(flat):   # CUDA + CuPy: radix select (accel/kernels/topk.cu)
        return _kernels.topk_mask(flat, k).reshape(scores.shape)
    # the k-th largest = the (n-k+1)-th smallest
    thr = torch.kthvalue(flat, n - k + 1).values
    above = flat > thr
    ties = flat == thr
    need = k - above.sum()
    keep = above | (ties & (torch.cumsum(ties, 0) <= need))
    return keep.reshape(scores.shape)


def topk_masks_global(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """One top-k over the concatenation of all tensors (dict order, C-order flattening)."""
    check_nonempty(scores, "set of score tensors")
    lay = layout_of(scores)
    return lay.split(topk_mask(lay.flatten(scores), k))


def topk_masks_per_layer(scores: Mapping[str, torch.Tensor], densities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer top-k with k_l = floor(d_l * n_l + 0.5): one segmented selection for all layers."""
    check_nonempty(scores, "set of score tensors")
    missing = [n for n in scores if n not in densities]
    if missing:
        raise ValueError(f"no density given for layer(s) {missing}; densities name {list(densities)}")
    ks = [count_for_density(densities[n], s.numel()) for n, s in scores.items()]
    lay = layout_of(scores)
    dtypes = {s.dtype for s in scores.values()}
    if len(dtypes) > 1:          # mixed dtypes cannot share one buffer: one selection per layer
        return {n: topk_mask(s, k) for (n, s), k in zip(scores.items(), ks)}
    flat = lay.flatten(scores)
    _require_finite(lay, flat, "scores")
    return lay.split(select_segments(flat, None, lay, ks), counts=ks)


# ----------------------------------------------------------------------------- among candidates

def topk_within(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k of ``scores`` restricted to the positions where ``candidates`` is True
    (tie rule among candidates: larger score, then smaller flat index); twin of
    ``reference.topk.topk_within``."""
    _check_candidates(scores, candidates)
    n_cand = int(candidates.sum())
    k = check_count(k, n_cand)
    check_finite(scores, "scores")
    return select_within(scores, candidates, k, n_cand)


def select_within(scores: torch.Tensor, candidates: torch.Tensor, k, n_cand: Optional[int] = None) -> torch.Tensor:
    """The selection of ``topk_within`` for validated inputs (0 <= k <= candidates.sum()); ``k``
    may be a 0-d device tensor. O(n): non-candidates are pushed below every candidate, the k-th
    largest value is found with ``torch.kthvalue``, and ties at it are counted among candidates
    only, so a non-candidate is never chosen."""
    if isinstance(k, int):
        if k == 0:
            return torch.zeros_like(candidates)
        if n_cand is not None and k == n_cand:
            return candidates.clone()
    flat, cand = scores.reshape(-1), candidates.reshape(-1)
    if isinstance(k, int) and _kernels.on_device(flat) and _kernels.usable(flat):   # radix select among candidates
        return _kernels.topk_select(flat, [flat.numel()], [k], candidates=cand).reshape(scores.shape)
    if flat.numel() == 0:
        return torch.zeros_like(candidates)
    n = flat.numel()
    if isinstance(k, torch.Tensor):     # a device k: kthvalue needs a host rank, so sort instead
        return select_segments(flat, cand, Layout(["all"], [(n,)]), k.reshape(1)).reshape(scores.shape)
    if cpu_path(flat) and n_cand is not None and 2 * int(n_cand) < n:
        # few candidates (a drop among the active weights): select among them only
        thr = torch.kthvalue(flat[cand], int(n_cand) - k + 1).values
    else:
        # the k-th largest of ``pushed`` is the k-th largest candidate score (k <= n_cand and every
        # non-candidate sits at or below every candidate)
        bottom = float("-inf") if scores.is_floating_point() else torch.iinfo(scores.dtype).min
        thr = torch.kthvalue(flat.masked_fill(~cand, bottom), n - k + 1).values
    above = cand & (flat > thr)
    ties = cand & (flat == thr)
    need = k - torch.count_nonzero(above)
    if cpu_path(flat) and int(torch.count_nonzero(ties)) <= int(need):   # (a host read is free on a CPU)
        keep = above | ties            # every tie fits: no running count of the ties needed
    else:
        keep = above | (ties & (torch.cumsum(ties, 0) <= need))
    return keep.reshape(scores.shape)


def _check_candidates(scores, candidates) -> None:
    if (not isinstance(candidates, torch.Tensor) or candidates.dtype != torch.bool
            or tuple(candidates.shape) != tuple(scores.shape)):
        got = (f"{candidates.dtype} {tuple(candidates.shape)}" if isinstance(candidates, torch.Tensor)
               else type(candidates).__name__)
        raise ValueError(f"candidates must be a boolean tensor of the scores' shape {tuple(scores.shape)}, "
                         f"got {got}")


def _require_finite(layout: Layout, flat: torch.Tensor, what: str, name=None) -> None:
    """Every score finite (one reduction over the buffer); the message names the first bad layer
    as ``what[name]`` (or ``name(layer)`` when given)."""
    if not flat.is_floating_point():
        return

    def message():
        bad = ~torch.isfinite(flat)
        seg = int(torch.searchsorted(torch.tensor(layout.offsets[1:] + (layout.numel,)),
                                     int(bad.nonzero()[0]), right=True))
        layer = layout.names[seg]
        label = name(layer) if name is not None else f"{what}[{layer!r}]"
        return f"{label} contains {int(bad.sum())} non-finite value(s) (NaN or inf); only finite values are allowed"
    deferred.require_finite(flat, message)


# ----------------------------------------------------------------------------- many segments

def descending_key(flat: torch.Tensor) -> tuple[torch.Tensor, int]:
    """An int64 key whose ascending order is the descending order of ``flat`` (equal scores ->
    equal keys, -0.0 == 0.0), and the number of bits it spans (32-bit keys are >= 0): integer
    sorts are radix sorts, several times faster than float comparison sorts."""
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


def _ks_tensor(ks: Counts, device) -> torch.Tensor:
    if isinstance(ks, torch.Tensor):
        return ks if ks.dtype == torch.int64 else ks.to(torch.int64)
    return int_vector(ks, device)


def select_segments(flat_scores: torch.Tensor, candidates: Optional[torch.Tensor], layout: Layout, ks: Counts,
                    *, n_cand: Optional[int] = None, or_with: Optional[torch.Tensor] = None,
                    strategy: str = "auto", invert: bool = False) -> torch.Tensor:
    """For every segment of ``layout``, keep its ``ks[i]`` largest scores among the candidates
    (all positions when ``candidates`` is None; the positions where it is False when ``invert``:
    the kernels read it that way, no complement is built); OR-ed with ``or_with`` when given. Inputs are
    validated by the caller (0 <= ks[i] <= candidates of segment i, finite scores); ``ks`` may be
    a device tensor, and ``n_cand`` (the total number of candidates, when the host knows it) lets
    the sort path sort the candidates only. No host synchronisation."""
    n, dev = flat_scores.numel(), flat_scores.device
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=dev)
    use_kernel = strategy == "kernel" or (strategy == "auto" and _kernels.on_device(flat_scores)
                                          and _kernels.usable(flat_scores, candidates, or_with))
    if use_kernel:
        with _kernels.require() if strategy == "kernel" else _nullcontext():
            return _kernels.topk_select(flat_scores, layout.sizes, ks, candidates=candidates, invert=invert,
                                        or_with=or_with)
    if invert and candidates is not None:
        candidates = ~candidates
    if strategy == "loop" or (strategy == "auto" and cpu_path(flat_scores)):
        keep = _select_loop(flat_scores, candidates, layout, ks)
    else:
        keep = _select_sort(flat_scores, candidates, layout, _ks_tensor(ks, dev), n_cand)
    return keep if or_with is None else keep | or_with


def _select_sort(flat, cand, layout: Layout, ks: torch.Tensor, n_cand: Optional[int]) -> torch.Tensor:
    """Stable sorts of the key (segment, candidate first, -score); rank within the segment < k."""
    n, dev = flat.numel(), flat.device
    info = layout.on(dev)
    seg = info["seg"]
    idx = None
    if cand is not None and n_cand is not None:          # sort the candidates only (their count is known)
        idx = torch.nonzero_static(cand, size=int(n_cand)).squeeze(1)
        flat, seg = flat[idx], seg[idx]
        per_seg = segment_sums(layout, cand)
        firsts = torch.cumsum(per_seg, 0) - per_seg       # first slot of each segment in the compacted order
        rest = None
    else:
        firsts = info["starts"]
        rest = None if cand is None else (~cand).to(torch.int64)   # non-candidates after the candidates
    key, bits = descending_key(flat)
    if bits <= 32:        # one stable sort of the packed key (segment, non-candidate, -score)
        packed = (seg << 33) | key if rest is None else (seg << 33) | (rest << 32) | key
        perm = torch.argsort(packed, stable=True)
    else:                 # by -score, then (stably) by (segment, non-candidate)
        by_score = torch.argsort(key, stable=True)
        outer = seg if rest is None else (seg << 1) | rest
        perm = by_score[torch.argsort(outer[by_score], stable=True)]
    seg_sorted = seg[perm]
    rank = torch.arange(perm.numel(), device=dev) - firsts[seg_sorted]
    keep = torch.zeros(n, dtype=torch.bool, device=dev)
    keep[perm if idx is None else idx[perm]] = rank < ks[seg_sorted]
    return keep


def _select_loop(flat, cand, layout: Layout, ks) -> torch.Tensor:
    """Per segment ``select_within`` (O(n) kthvalue each; reads the counts on the host)."""
    ks = ks.tolist() if isinstance(ks, torch.Tensor) else list(ks)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    cand = torch.ones_like(keep) if cand is None else cand
    n_cand = segment_sums(layout, cand).tolist()
    for start, size, k, c in zip(layout.offsets, layout.sizes, ks, n_cand):
        keep[start:start + size] = select_within(flat[start:start + size], cand[start:start + size], int(k), c)
    return keep


def segmented_topk_within(flat_scores: torch.Tensor, flat_candidates: torch.Tensor,
                          segment_sizes: Sequence[int], ks: Sequence[int], strategy: str = "auto") -> torch.Tensor:
    """For each consecutive segment of the 1-D ``flat_scores`` (lengths ``segment_sizes``), the
    top ``ks[i]`` scores among its candidates (tie rule: larger score, then smaller index).
    Equal to ``reference.topk.topk_within`` on every segment; validated eagerly."""
    if not isinstance(flat_scores, torch.Tensor) or flat_scores.dim() != 1:
        raise ValueError(f"flat_scores must be a 1-D torch.Tensor, got "
                         f"{tuple(flat_scores.shape) if isinstance(flat_scores, torch.Tensor) else type(flat_scores).__name__}")
    if flat_scores.is_complex():
        raise TypeError(f"flat_scores must be a real tensor, got dtype {flat_scores.dtype}")
    _check_candidates(flat_scores, flat_candidates)
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
    layout = Layout([str(i) for i in range(len(sizes))], [(int(s),) for s in sizes])
    n_cand = segment_sums(layout, flat_candidates).tolist() if sizes else []
    ks = [check_count(k, c, f"k of segment {i}") for i, (k, c) in enumerate(zip(ks, n_cand))]
    check_finite(flat_scores, "scores")
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; choose one of {list(SELECT_STRATEGIES)}")
    if not sizes or not any(ks):
        return torch.zeros(flat_scores.numel(), dtype=torch.bool, device=flat_scores.device)
    return select_segments(flat_scores, flat_candidates, layout, ks, n_cand=sum(n_cand), strategy=strategy)
