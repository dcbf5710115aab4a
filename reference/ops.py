"""The operator namespace the backend-agnostic methods call (NumPy side).

``accel.ops`` holds the same names on torch tensors. Everything here is either a twin operator
(registered in conformance) or a trivial dict helper.
"""
from __future__ import annotations

import numpy as np

from .acdc_ops import acdc_compress  # noqa: F401
from .dst import (dst_ee_scores, drop, drop_and_grow, ema_update, explored_union, grow,  # noqa: F401
                  increment_counters, init_counters, mean_abs_over_mask, prune_to_count, swap_counts)
from .masks import magnitude_masks, random_masks, random_scores  # noqa: F401
from .merge import (average_bn_stats, average_bn_stats_all, caa, interpolate, reprune,  # noqa: F401
                    superpose_cia, superpose_cima)
from .metrics import (exploration_degree, hamming_distance, layer_densities, mask_change,  # noqa: F401
                      prediction_cross_entropy, sample_agreement, total_density, zero_fraction)
from .scores import snip_masks  # noqa: F401


def random_scores_like(weights: dict, seed: int) -> dict:
    return random_scores({n: np.shape(w) for n, w in weights.items()}, seed)


def from_numpy_like(arrays: dict, like: dict) -> dict:
    return {n: np.asarray(arrays[n], dtype=np.float64) for n in like}


def ones_like_masks(weights: dict) -> dict:
    return {n: np.ones(np.shape(w), dtype=bool) for n, w in weights.items()}


def sizes(arrays: dict) -> dict:
    return {n: int(np.size(a)) for n, a in arrays.items()}


def count_active(masks: dict) -> dict:
    return {n: int(np.count_nonzero(m)) for n, m in masks.items()}


def total(counts: dict) -> int:
    """The sum of per-layer counts (accel: a device scalar when the counts live on the device)."""
    return sum(counts.values())


def require_counts(masks: dict, expected: dict, what: str) -> None:
    """Invariant of a mask update: every layer of ``masks`` holds exactly ``expected[layer]``
    active weights (accel checks this on the device when the update commits)."""
    actual = count_active(masks)
    bad = {n: (expected[n], actual[n]) for n in actual if expected[n] != actual[n]}
    if bad:
        raise RuntimeError(f"{what}: per-layer active counts {bad} (expected, got) break the update's invariant")


def abs_all(arrays: dict) -> dict:
    return {n: np.abs(a) for n, a in arrays.items()}


def clone_all(arrays: dict) -> dict:
    return {n: np.array(a, copy=True) for n, a in arrays.items()}
