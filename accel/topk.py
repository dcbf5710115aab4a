"""Exact top-k on torch tensors with the project's tie rule; twin of ``reference.topk``.

Selection runs in O(n) without a sort: the k-th largest value is found with
``torch.kthvalue``, everything strictly above it is kept, and the remaining slots go to the
entries equal to it in increasing flat index (cumulative count). That is exactly the keep set of
a stable sort by (-score, index), which the conformance registry checks.
"""
from __future__ import annotations

from typing import Mapping

import torch

from reference._checks import check_count, check_nonempty, count_for_density
from . import kernels as _kernels
from ._checks import check_finite


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
    names = list(scores)
    flats = [scores[n].reshape(-1) for n in names]
    keep = topk_mask(torch.cat(flats), k)
    return {n: part.reshape(scores[n].shape) for n, part in zip(names, torch.split(keep, [f.numel() for f in flats]))}


def topk_masks_per_layer(scores: Mapping[str, torch.Tensor], densities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer top-k with k_l = floor(d_l * n_l + 0.5)."""
    check_nonempty(scores, "set of score tensors")
    missing = [n for n in scores if n not in densities]
    if missing:
        raise ValueError(f"no density given for layer(s) {missing}; densities name {list(densities)}")
    ts = list(scores.values())
    if (all(isinstance(s, torch.Tensor) and _kernels.on_device(s) for s in ts) and len({s.dtype for s in ts}) == 1
            and _kernels.usable(*ts)):               # CUDA + CuPy: one segmented radix select for all layers
        ks = []
        for n, s in scores.items():                  # topk_mask's checks, in its order
            ks.append(count_for_density(densities[n], s.numel()))
            check_finite(s, "scores")
        keep = _kernels.topk_select(torch.cat([s.reshape(-1) for s in ts]), [s.numel() for s in ts], ks)
        return {n: part.reshape(s.shape) for (n, s), part in zip(scores.items(), torch.split(keep, [s.numel() for s in ts]))}
    return {n: topk_mask(s, count_for_density(densities[n], s.numel())) for n, s in scores.items()}


def topk_within(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k of ``scores`` restricted to the positions where ``candidates`` is True
    (tie rule among candidates: larger score, then smaller flat index); twin of
    ``reference.topk.topk_within``.

    O(n) like ``topk_mask``: non-candidates are pushed to the bottom (-inf, or the dtype minimum
    for integer scores), the k-th largest value is found with ``torch.kthvalue``, and the ties
    at it are counted among candidates only, so a non-candidate is never chosen.
    """
    if (not isinstance(candidates, torch.Tensor) or candidates.dtype != torch.bool
            or tuple(candidates.shape) != tuple(scores.shape)):
        got = (f"{candidates.dtype} {tuple(candidates.shape)}" if isinstance(candidates, torch.Tensor)
               else type(candidates).__name__)
        raise ValueError(f"candidates must be a boolean tensor of the scores' shape {tuple(scores.shape)}, "
                         f"got {got}")
    n_cand = int(candidates.sum())
    k = check_count(k, n_cand)
    check_finite(scores, "scores")
    return select_within(scores, candidates, k, n_cand)


def select_within(scores: torch.Tensor, candidates: torch.Tensor, k: int, n_cand: int) -> torch.Tensor:
    """The selection of ``topk_within`` for validated inputs (0 <= k <= n_cand = candidates.sum())."""
    if k == 0:
        return torch.zeros_like(candidates)
    if k == n_cand:
        return candidates.clone()
    flat, cand = scores.reshape(-1), candidates.reshape(-1)
    if _kernels.on_device(flat) and _kernels.usable(flat):   # CUDA + CuPy: radix select among the candidates
        return _kernels.topk_select(flat, [flat.numel()], [k], candidates=cand).reshape(scores.shape)
    bottom = float("-inf") if scores.is_floating_point() else torch.iinfo(scores.dtype).min
    pushed = flat.masked_fill(~cand, bottom)
    # the k-th largest of ``pushed`` is the k-th largest candidate score (k <= n_cand and every
    # non-candidate sits at or below every candidate)
    thr = torch.kthvalue(pushed, flat.numel() - k + 1).values
    above = cand & (flat > thr)
    ties = cand & (flat == thr)
    keep = above | (ties & (torch.cumsum(ties, 0) <= k - above.sum()))
    return keep.reshape(scores.shape)
