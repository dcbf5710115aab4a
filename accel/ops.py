"""The operator namespace the backend-agnostic methods call (torch side); same names as
``reference.ops``."""
from __future__ import annotations

import numpy as np
import torch

from .acdc_ops import acdc_compress  # noqa: F401
from .dst import (active_counts as _active_counts, dst_ee_scores, drop, drop_and_grow, ema_update, explored_union, grow,  # noqa: F401
                  increment_counters, init_counters, mean_abs_over_mask, prune_to_count, require_counts,
                  swap_counts, total)
from .flat import layout_of as _layout_of
from .masks import magnitude_masks, random_masks, random_scores  # noqa: F401
from .merge import (average_bn_stats, average_bn_stats_all, caa, clone_all, interpolate, reprune,  # noqa: F401
                    superpose_cia, superpose_cima)
from .metrics import (exploration_degree, hamming_distance, layer_densities, mask_change,  # noqa: F401
                      prediction_cross_entropy, sample_agreement, total_density, zero_fraction)
from .scores import snip_masks  # noqa: F401


def _device(d: dict):
    return next(iter(d.values())).device


def random_scores_like(weights: dict, seed: int) -> dict:
    """NumPy's stream, copied to the weights' device (docs/methods.md §1.5: identical on every backend)."""
    return random_scores({n: tuple(w.shape) for n, w in weights.items()}, seed, device=_device(weights))


def from_numpy_like(arrays: dict, like: dict) -> dict:
    lay = _layout_of(like)
    flat = np.concatenate([np.asarray(arrays[n], dtype=np.float64).reshape(-1) for n in lay.names])
    return lay.split(torch.from_numpy(flat).to(_device(like)))


def ones_like_masks(weights: dict) -> dict:
    lay = _layout_of(weights)
    return lay.split(torch.ones(lay.numel, dtype=torch.bool, device=_device(weights)), counts=lay.sizes)


def sizes(arrays: dict) -> dict:
    return {n: a.numel() for n, a in arrays.items()}


def count_active(masks: dict) -> dict:
    """Per-layer active counts: host ints (known, or read with one sync), or device counts inside
    a Sparsifier update when the host does not know them (``accel.dst.active_counts``)."""
    return _active_counts(masks)


def abs_all(arrays: dict) -> dict:
    """|a| of every layer, as one flat buffer (``FlatDict``) when the layers share a dtype."""
    if len({a.dtype for a in arrays.values()}) > 1:
        return {n: a.abs() for n, a in arrays.items()}
    lay = _layout_of(arrays)
    return lay.split(lay.flatten(arrays).abs())


