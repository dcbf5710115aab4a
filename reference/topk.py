"""Exact top-k selection with the project's tie rule (docs/methods.md §1.2, §1.15).

The keep set of a top-k selection is the first k elements of a stable sort by the key
(-score, flat index): larger score wins, and among equal scores the smaller flat index
(C order) wins. "Drop the k smallest" is always the complement of a keep set of size n-k,
never a separate ascending sort. A NaN or inf score is an error.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ._checks import check_count, check_finite, check_nonempty, count_for_density


def descending_order(flat: np.ndarray) -> np.ndarray:
    """Indices sorting ``flat`` by (-score, index) without negating (safe for unsigned and integer
    minima): a stable ascending sort of the reversed array puts ties in descending index order,
    and reversing that result gives descending scores with ties in ascending index order."""
    n = flat.size
    return (n - 1 - np.argsort(flat[::-1], kind="stable"))[::-1]


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (same shape as ``scores``) with exactly ``k`` True entries.

    [TH] §3.3.1 Eq. 3.2 (T_k keeps the k largest entries), App. C.1.2 ("ties broken
    lexicographically"); docs/methods.md §1.2 resolution: stable sort by (-score, flat index).
    """
    scores = np.asarray(scores)
    k = check_count(k, scores.size)
    check_finite(scores, "scores")
    flat = scores.reshape(-1)
    order = descending_order(flat)  # larger score first; equal scores keep index order
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:k]] = True
    return keep.reshape(scores.shape)


def topk_masks_global(scores: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """One top-k over the concatenation of all tensors (dict order, each flattened in C order).

    docs/methods.md §1.2 "global" variant ([TH] AC/DC and CrAM default); the flat index used by the tie
    rule is the index within the concatenation.
    """
    check_nonempty(scores, "set of score tensors")
    names = list(scores)
    flats = [np.asarray(scores[n]).reshape(-1) for n in names]
    keep = topk_mask(np.concatenate(flats), k)
    out, start = {}, 0
    for name, f in zip(names, flats):
        out[name] = keep[start:start + f.size].reshape(np.shape(scores[name]))
        start += f.size
    return out


def topk_masks_per_layer(scores: Mapping[str, np.ndarray], densities: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-layer top-k with k_l = floor(d_l * n_l + 0.5) (docs/methods.md §1.2, §1.3 "uniform" variant)."""
    check_nonempty(scores, "set of score tensors")
    missing = [n for n in scores if n not in densities]
    if missing:
        raise ValueError(f"no density given for layer(s) {missing}; densities name {list(densities)}")
    return {n: topk_mask(s, count_for_density(densities[n], np.size(s))) for n, s in scores.items()}


def topk_within(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The top-k of ``scores`` restricted to the positions where ``candidates`` is True
    (the tie rule applies among candidates: larger score, then smaller flat index)."""
    scores = np.asarray(scores)
    candidates = np.asarray(candidates)
    if candidates.dtype != bool or candidates.shape != scores.shape:
        raise ValueError(f"candidates must be a boolean array of the scores' shape {scores.shape}, "
                         f"got {candidates.dtype} {candidates.shape}")
    idx = np.flatnonzero(candidates.reshape(-1))
    k = check_count(k, idx.size)
    check_finite(scores, "scores")
    flat = scores.reshape(-1)[idx]
    order = descending_order(flat)
    keep = np.zeros(scores.size, dtype=bool)
    keep[idx[order[:k]]] = True
    return keep.reshape(scores.shape)
