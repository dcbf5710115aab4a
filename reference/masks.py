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

SCOPES = ("global", "layer")   # magnitude selection over all layers at once, or within each layer

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


def nm_group_dim(shape: tuple, axis) -> int:
    """The dimension N:M groups run along: ``"reduction"`` is dim 1 (PyTorch's ``[out, in, *kernel]``
    weights: Linear, Conv1d/2d/3d, attention projections, RNN weights), an int names the dimension
    itself (``accel.prunable.reduction_dims``: 0 for ConvTranspose). ``"rows"`` has no single
    dimension (groups run along the flattened row); it returns 1."""
    if isinstance(axis, bool) or not (axis in NM_AXES or isinstance(axis, (int, np.integer))):
        raise ValueError(f"N:M axis={axis!r} is not allowed; choose one of {list(NM_AXES)} or a dimension index")
    if len(shape) < 2:
        raise ValueError(f"N:M needs a weight of rank >= 2 (Linear [O, I], Conv [O, I, *k], ...), got shape {tuple(shape)}")
    if isinstance(axis, str):
        return 1
    d = int(axis)
    if not -len(shape) <= d < len(shape):
        raise ValueError(f"N:M axis={d} is not a dimension of the weight of shape {tuple(shape)} "
                         f"(allowed: {-len(shape)} .. {len(shape) - 1})")
    return d % len(shape)


def nm_group_length(shape: tuple, m: int, axis) -> int:
    """Length of the axis cut into groups of m: the size of the group dimension (``nm_group_dim``),
    or the flattened row ``prod(shape[1:])`` for ``axis="rows"``.

    Raises ValueError for weights of rank < 2 and for an unknown ``axis``; divisibility is checked
    by the caller."""
    d = nm_group_dim(shape, axis)
    return int(np.prod(shape[1:], dtype=np.int64)) if axis == "rows" else int(shape[d])


def nm_view_shape(shape: tuple, axis) -> tuple:
    """The weight seen as ``[A, R, S]``: groups of m consecutive entries along R (stride S), at every
    (a, s). Dim d of the group axis gives A = prod(shape[:d]), R = shape[d], S = prod(shape[d+1:]);
    ``"rows"`` gives [O, prod(shape[1:]), 1]. A 4-D Conv with the default axis is [O, I, kh*kw]."""
    d = nm_group_dim(shape, axis)
    if axis == "rows":
        return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64)), 1
    return (int(np.prod(shape[:d], dtype=np.int64)), int(shape[d]), int(np.prod(shape[d + 1:], dtype=np.int64)))


def check_nm_divisible(shape: tuple, m: int, axis) -> None:
    length = nm_group_length(shape, m, axis)
    if length % m:
        d = nm_group_dim(shape, axis)
        what = "row length" if axis == "rows" else "input size (dim 1) I" if d == 1 else f"size of dim {d}"
        raise ValueError(f"N:M groups of m={m} do not divide the layer of shape {tuple(shape)}: "
                         f"{what}={length} is not a multiple of {m} (layers are never padded; "
                         f"use nm_masks to leave such layers dense)")


def layer_axis(axis, name: str):
    """The N:M axis of layer ``name``: ``axis`` itself, or ``axis[name]`` for a per-layer dict."""
    if isinstance(axis, Mapping):
        if name not in axis:
            raise ValueError(f"the per-layer N:M axis dict has no entry for layer {name!r}; it names {list(axis)}")
        return axis[name]
    return axis


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


def nm_mask(w: np.ndarray, n: int, m: int, axis="reduction") -> np.ndarray:
    """N:M mask: keep n of every m consecutive weights (docs/methods.md §1.6, [TH] §2.2.3, [SC] §3.4).

    ``axis="reduction"`` (default, the GEMM reduction dimension, dim 1 of a PyTorch weight):
    Linear [O, I] -> groups of m consecutive input features per row; Conv [O, I, *k] -> viewed
    channels-last, groups of m consecutive input channels at each (o, *k). An int ``axis`` names
    the group dimension d (any rank): groups of m consecutive entries along d at every position
    of the other dimensions (``nm_view_shape``). ``axis="rows"``: groups of m consecutive entries
    of the row-major ``w.reshape(O, -1)``. Within a group the n largest |w| are kept, ties ->
    lower index within the group. The group axis must be divisible by m (never padded);
    otherwise ValueError.
    """
    n, m = check_nm(n, m)
    w = np.asarray(w)
    nm_group_length(w.shape, m, axis)
    check_nm_divisible(w.shape, m, axis)
    w = as_real_array(w, "weight")
    a, r, s = nm_view_shape(w.shape, axis)
    cl = w.reshape(a, r, s).transpose(0, 2, 1)                  # [A, S, R]: the group axis last
    keep = _keep_n_per_row(cl.reshape(-1, m), n).reshape(cl.shape)
    return np.ascontiguousarray(keep.transpose(0, 2, 1)).reshape(w.shape)


def nm_masks(weights: Mapping[str, np.ndarray], n: int, m: int,
             axis="reduction") -> tuple[dict[str, np.ndarray], list[str]]:
    """N:M masks for every layer; returns ``(masks, dense_layers)`` (docs/methods.md §1.6).

    ``axis`` as in ``nm_mask``, or a dict layer name -> axis (``accel.prunable.reduction_dims``).
    A layer whose group axis is not divisible by m is left dense (all-True mask), listed in
    ``dense_layers`` and named in a warning -- never silently padded.
    """
    n, m = check_nm(n, m)
    check_layer_dict(weights, "weights")
    for name, w in weights.items():               # validate every layer before computing
        nm_group_length(np.shape(w), m, layer_axis(axis, name))
        as_real_array(w, f"weight {name!r}")
    masks, dense = {}, []
    for name, w in weights.items():
        ax = layer_axis(axis, name)
        if nm_group_length(np.shape(w), m, ax) % m:
            masks[name] = np.ones(np.shape(w), dtype=bool)
            dense.append(name)
        else:
            masks[name] = nm_mask(w, n, m, ax)
    warn_dense_layers({d: tuple(np.shape(weights[d])) for d in dense}, m, axis)
    return masks, dense


def warn_dense_layers(dense_shapes: Mapping[str, tuple], m: int, axis) -> None:
    """Name the layers that N:M left dense (docs/methods.md §1.6: reported, never silently padded)."""
    if dense_shapes:
        if isinstance(axis, Mapping):
            axis = {n: axis[n] for n in dense_shapes}
        warnings.warn(f"N:M with m={m} along axis={axis!r} left {len(dense_shapes)} layer(s) dense because "
                      f"their group axis is not divisible by {m}: {dict(dense_shapes)}", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- channels (§2.6a)

def _check_channel_weight(w, what: str = "weight", dim: int = 0) -> np.ndarray:
    w = as_real_array(w, what)
    if w.ndim < 2:
        raise ValueError(f"channel pruning needs a weight with an output dimension and at least one more "
                         f"(Linear [O, I], Conv [O, I, *k], ...); {what} has shape {w.shape}")
    check_channel_dim(w.shape, dim, what)
    return w


def check_channel_dim(shape: tuple, dim, what: str = "weight") -> int:
    """The output (filter) dimension of a weight: 0 for PyTorch's [out, in, *k] weights, 1 for
    ConvTranspose ([in, out, *k]; ``accel.prunable.output_dims``)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -len(shape) <= dim < len(shape):
        raise ValueError(f"channel dim={dim!r} is not a dimension of {what} of shape {tuple(shape)} "
                         f"(allowed: {-len(shape)} .. {len(shape) - 1})")
    return int(dim) % len(shape)


def channel_scores(w: np.ndarray, dim: int = 0) -> np.ndarray:
    """L1 norm of each output filter: score[o] = sum |w| over every index with index[dim] = o
    (docs/methods.md §1.7, [TH] §2.2.1); ``dim`` = the output dimension."""
    w = _check_channel_weight(w, dim=dim)
    d = check_channel_dim(w.shape, dim)
    return np.abs(np.moveaxis(w, d, 0)).reshape(w.shape[d], -1).sum(axis=1)


def channel_mask(w: np.ndarray, density: float, dim: int = 0) -> np.ndarray:
    """Keep the top floor(d*O+0.5) output channels (along ``dim``) by L1 score (tie rule),
    broadcast to w's shape."""
    w = _check_channel_weight(w, dim=dim)
    d = check_channel_dim(w.shape, dim)
    keep = topk_mask(channel_scores(w, d), count_for_density(density, w.shape[d]))
    view = [1] * w.ndim
    view[d] = -1
    return np.broadcast_to(keep.reshape(view), w.shape).copy()


def channel_masks(weights: Mapping[str, np.ndarray], densities: Mapping[str, float],
                  dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Per-layer channel masks (docs/methods.md §1.7), layer l keeping floor(d_l*O_l+0.5) filters along its
    output dimension ``dims[l]`` (default 0; ``accel.prunable.output_dims``)."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, densities, "densities")
    dims = {n: 0 for n in weights} if dims is None else dims
    check_layer_names(weights, dims, "dims")
    for name, w in weights.items():
        _check_channel_weight(w, f"weight {name!r}", dims[name])
        check_density(densities[name], f"density of layer {name!r}")
    return {name: channel_mask(w, densities[name], dims[name]) for name, w in weights.items()}


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
