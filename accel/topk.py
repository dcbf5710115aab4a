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
    return {n: topk_mask(s, count_for_density(densities[n], s.numel())) for n, s in scores.items()}
