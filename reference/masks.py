"""Mask operators (docs/methods.md §1.2-§1.7): magnitude, N:M, channel and random masks, NumPy reference.

Every mask is a bool array of its weight's shape; dicts map layer name -> array and keep their
order (docs/methods.md §1.1). Every selection goes through ``reference.topk`` (docs/methods.md §1.2 tie rule: larger
score wins, ties -> smaller flat index) and every density becomes a count with
k = floor(d * n + 0.5). Functions are pure: inputs are never modified.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from ._checks import check_density, check_nonempty, count_for_density, as_real_array
from .topk import topk_mask, topk_masks_global, topk_masks_per_layer

NM_AXES = ("reduction", "rows")


# ----------------------------------------------------------------------------- shared checks
# (pure scalar logic on names and shapes; accel imports these, docs/methods.md §1.15)

def check_layer_dict(layers, what: str) -> None:
    if not isinstance(layers, Mapping):
        raise TypeError(f"{what} must be a dict of layer name -> array, got {type(layers).__name__}")
    check_nonempty(layers, what)


def check_layer_names(layers: Mapping, per_layer: Mapping, what: str) -> None:
    """``per_layer`` (e.g. densities) must name exactly the layers of ``layers``."""
    if not isinstance(per_layer, Mapping):
        raise TypeError(f"{what} must be a dict of layer name -> value, got {type(per_layer).__name__}")
    missing = [n for n in layers if n not in per_layer]
    unknown = [n for n in per_layer if n not in layers]
    if missing or unknown:
        raise ValueError(f"{what} must name exactly the layers {list(layers)}; "
                         f"missing {missing}, unknown {unknown}")


def check_nm(n, m) -> tuple[int, int]:
    """docs/methods.md §1.6: keep n of every m consecutive weights, 0 <= n <= m, m >= 1."""
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"N:M {name} must be an integer, got {v!r}")
    n, m = int(n), int(m)
    if m < 1:
        raise ValueError(f"N:M group size m={m} is not allowed; m must be >= 1")
    if n < 0 or n > m:
        raise ValueError(f"N:M keep count n={n} is not allowed with m={m}; need 0 <= n <= m")
    return n, m


def nm_group_length(shape: tuple, m: int, axis: str) -> int:
    """Length of the axis cut into groups of m: I (reduction) or the flattened row (rows).

    Raises ValueError for shapes that are not 2-D [O, I] or 4-D [O, I, kh, kw] and for an
    unknown ``axis``; divisibility is checked by the caller.
    """
    if axis not in NM_AXES:
        raise ValueError(f"N:M axis={axis!r} is not allowed; choose one of {list(NM_AXES)}")
    if len(shape) not in (2, 4):
        raise ValueError(f"N:M needs a Linear [O, I] or Conv [O, I, kh, kw] weight, got shape {tuple(shape)}")
    return int(shape[1]) if axis == "reduction" else int(np.prod(shape[1:], dtype=np.int64))


def check_nm_divisible(shape: tuple, m: int, axis: str) -> None:
    length = nm_group_length(shape, m, axis)
    if length % m:
        what = "reduction size I" if axis == "reduction" else "row length I*kh*kw"
        raise ValueError(f"N:M groups of m={m} do not divide the layer of shape {tuple(shape)}: "
                         f"{what}={length} is not a multiple of {m} (layers are never padded; "
                         f"use nm_masks to leave such layers dense)")


def check_shapes_dict(shapes) -> None:
    if not isinstance(shapes, Mapping):
        raise TypeError(f"shapes must be a dict of layer name -> shape tuple, got {type(shapes).__name__}")
    check_nonempty(shapes, "dict of shapes")
    for name, shp in shapes.items():
        if not isinstance(shp, (tuple, list)) or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in shp):
            raise ValueError(f"shape of layer {name!r} must be a tuple of non-negative ints, got {shp!r}")


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed={seed} is not allowed; the seed must be a non-negative integer")
    return int(seed)


# ----------------------------------------------------------------------------- magnitude (§2.1/2.2)

def magnitude_mask(w: np.ndarray, density: float) -> np.ndarray:
    """Uniform magnitude pruning of one layer: keep the k = floor(d*n+0.5) largest |w|.

    docs/methods.md §1.2 (T_k, [TH] Eq. 3.2) and §2.2; ties -> smaller flat index (docs/methods.md §1.2).
    """
    w = as_real_array(w, "weight")
    return topk_mask(np.abs(w), count_for_density(density, w.size))


def magnitude_masks(weights: Mapping[str, np.ndarray], densities: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-layer magnitude masks, layer l keeping floor(d_l*n_l+0.5) weights (docs/methods.md §1.3 uniform)."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, densities, "densities")
    for n, d in densities.items():
        check_density(d, f"density of layer {n!r}")
    scores = {n: np.abs(as_real_array(w, f"weight {n!r}")) for n, w in weights.items()}
    return topk_masks_per_layer(scores, densities)


def global_magnitude_masks(weights: Mapping[str, np.ndarray], density: float) -> dict[str, np.ndarray]:
    """Global magnitude pruning: one top-k of |w| over the concatenation of all layers.

    docs/methods.md §1.3 ([TH] AC/DC and CrAM default); k = floor(d * N + 0.5) with N the total
    count; the tie rule's flat index is the index within the concatenation (dict order).
    """
    check_layer_dict(weights, "weights")
    d = check_density(density)
    scores = {n: np.abs(as_real_array(w, f"weight {n!r}")) for n, w in weights.items()}
    total = sum(s.size for s in scores.values())
    return topk_masks_global(scores, count_for_density(d, total))


# ----------------------------------------------------------------------------- N:M (§2.5)

def _keep_n_per_row(groups: np.ndarray, n: int) -> np.ndarray:
    """groups [G, m]: keep the n largest |value| per row, ties -> lower index (stable sort)."""
    order = np.argsort(-np.abs(groups), axis=1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return keep


def nm_mask(w: np.ndarray, n: int, m: int, axis: str = "reduction") -> np.ndarray:
    """N:M mask: keep n of every m consecutive weights (docs/methods.md §1.6, [TH] §2.2.3, [SC] §3.4).

    ``axis="reduction"`` (default, the GEMM reduction dimension): Linear [O, I] -> groups of
    m consecutive input features per row; Conv [O, I, kh, kw] -> viewed channels-last
    (permute 0, 2, 3, 1), groups of m consecutive input channels at each (o, kh, kw).
    ``axis="rows"``: groups of m consecutive entries of the row-major ``w.reshape(O, -1)``.
    Within a group the n largest |w| are kept, ties -> lower index within the group.
    The group axis must be divisible by m (never padded); otherwise ValueError.
    """
    n, m = check_nm(n, m)
    w = np.asarray(w)
    nm_group_length(w.shape, m, axis)
    check_nm_divisible(w.shape, m, axis)
    w = as_real_array(w, "weight")
    if axis == "rows" or w.ndim == 2:
        return _keep_n_per_row(w.reshape(-1, m), n).reshape(w.shape)
    cl = w.transpose(0, 2, 3, 1)                      # [O, kh, kw, I], channels last
    keep = _keep_n_per_row(cl.reshape(-1, m), n).reshape(cl.shape)
    return np.ascontiguousarray(keep.transpose(0, 3, 1, 2))


def nm_masks(weights: Mapping[str, np.ndarray], n: int, m: int,
             axis: str = "reduction") -> tuple[dict[str, np.ndarray], list[str]]:
    """N:M masks for every layer; returns ``(masks, dense_layers)`` (docs/methods.md §1.6).

    A layer whose group axis is not divisible by m is left dense (all-True mask), listed in
    ``dense_layers`` and named in a warning -- never silently padded.
    """
    n, m = check_nm(n, m)
    check_layer_dict(weights, "weights")
    for name, w in weights.items():               # validate every layer before computing
        nm_group_length(np.shape(w), m, axis)
        as_real_array(w, f"weight {name!r}")
    masks, dense = {}, []
    for name, w in weights.items():
        if nm_group_length(np.shape(w), m, axis) % m:
            masks[name] = np.ones(np.shape(w), dtype=bool)
            dense.append(name)
        else:
            masks[name] = nm_mask(w, n, m, axis)
    warn_dense_layers({d: tuple(np.shape(weights[d])) for d in dense}, m, axis)
    return masks, dense


def warn_dense_layers(dense_shapes: Mapping[str, tuple], m: int, axis: str) -> None:
    """Name the layers that N:M left dense (docs/methods.md §1.6: reported, never silently padded)."""
    if dense_shapes:
        warnings.warn(f"N:M with m={m} along axis={axis!r} left {len(dense_shapes)} layer(s) dense because "
                      f"their group axis is not divisible by {m}: {dict(dense_shapes)}", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- channels (§2.6a)

def _check_channel_weight(w, what: str = "weight") -> np.ndarray:
    w = as_real_array(w, what)
    if w.ndim < 2:
        raise ValueError(f"channel pruning needs a weight with an output dimension and at least one more "
                         f"(Linear [O, I] or Conv [O, I, kh, kw]); {what} has shape {w.shape}")
    return w


def channel_scores(w: np.ndarray) -> np.ndarray:
    """L1 norm of each output filter / row: score[o] = sum |w[o]| (docs/methods.md §1.7, [TH] §2.2.1)."""
    w = _check_channel_weight(w)
    return np.abs(w).reshape(w.shape[0], -1).sum(axis=1)


def channel_mask(w: np.ndarray, density: float) -> np.ndarray:
    """Keep the top floor(d*O+0.5) output channels by L1 score (tie rule), broadcast to w's shape."""
    w = _check_channel_weight(w)
    k = count_for_density(density, w.shape[0])
    keep = topk_mask(channel_scores(w), k)
    return np.broadcast_to(keep.reshape((-1,) + (1,) * (w.ndim - 1)), w.shape).copy()


def channel_masks(weights: Mapping[str, np.ndarray], densities: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-layer channel masks (docs/methods.md §1.7), layer l keeping floor(d_l*O_l+0.5) filters."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, densities, "densities")
    for name, w in weights.items():
        _check_channel_weight(w, f"weight {name!r}")
        check_density(densities[name], f"density of layer {name!r}")
    return {name: channel_mask(w, densities[name]) for name, w in weights.items()}


# ----------------------------------------------------------------------------- random (§2.4)

def random_scores(shapes: Mapping[str, tuple], seed: int) -> dict[str, np.ndarray]:
    """Explicit randomness for random masks (docs/methods.md §1.2, §1.5): float64 uniform [0, 1) scores.

    Drawn with ``np.random.default_rng(seed)`` layer by layer in dict order; accel copies these
    arrays to its device so both backends select the same positions.
    """
    check_shapes_dict(shapes)
    rng = np.random.default_rng(check_seed(seed))
    return {name: rng.random(tuple(int(s) for s in shp)) for name, shp in shapes.items()}


def random_mask(random_scores: np.ndarray, density: float) -> np.ndarray:
    """Exactly k = floor(d*n+0.5) random positions: top-k of the given random scores (docs/methods.md §1.5)."""
    s = as_real_array(random_scores, "random scores")
    return topk_mask(s, count_for_density(density, s.size))


def random_masks(random_scores: Mapping[str, np.ndarray], densities: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-layer random masks with exact counts (docs/methods.md §1.5), from explicit random scores."""
    check_layer_dict(random_scores, "random scores")
    check_layer_names(random_scores, densities, "densities")
    for name, d in densities.items():
        check_density(d, f"density of layer {name!r}")
    return {name: random_mask(s, densities[name]) for name, s in random_scores.items()}
