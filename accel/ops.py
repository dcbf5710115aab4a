"""The operator namespace the backend-agnostic methods call (torch side); same names as
``reference.ops``."""
from __future__ import annotations

import numpy as np
import torch

from .acdc import acdc_compress  # noqa: F401
from .dst import (dst_ee_scores, drop, drop_and_grow, ema_update, explored_union, grow,  # noqa: F401
                  increment_counters, init_counters, mean_abs_over_mask, prune_to_count, swap_counts)
from .masks import magnitude_masks, random_masks, random_scores  # noqa: F401
from .merge import average_bn_stats, caa, interpolate, reprune, superpose_cia, superpose_cima  # noqa: F401
from .metrics import (exploration_degree, hamming_distance, layer_densities, mask_change,  # noqa: F401
                      prediction_cross_entropy, sample_agreement, total_density, zero_fraction)
from .scores import snip_masks  # noqa: F401


def _device(d: dict):
    return next(iter(d.values())).device


def random_scores_like(weights: dict, seed: int) -> dict:
    """NumPy's stream, copied to the weights' device (SPEC §0.3: identical on every backend)."""
    return random_scores({n: tuple(w.shape) for n, w in weights.items()}, seed, device=_device(weights))


def from_numpy_like(arrays: dict, like: dict) -> dict:
    dev = _device(like)
    return {n: torch.as_tensor(np.asarray(arrays[n], dtype=np.float64), device=dev) for n in like}


def ones_like_masks(weights: dict) -> dict:
    return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}


def sizes(arrays: dict) -> dict:
    return {n: a.numel() for n, a in arrays.items()}


def count_active(masks: dict) -> dict:
    """Per-layer active counts with a single device sync."""
    names = list(masks)
    counts = torch.stack([m.sum() for m in masks.values()]).tolist()
    return dict(zip(names, (int(c) for c in counts)))


def abs_all(arrays: dict) -> dict:
    return {n: a.abs() for n, a in arrays.items()}


def clone_all(arrays: dict) -> dict:
    return {n: a.detach().clone() for n, a in arrays.items()}
