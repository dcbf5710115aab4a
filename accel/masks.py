"""Mask operators on torch tensors (docs/methods.md §1.2-§1.7); twin of ``reference.masks``.

Same names, same arguments, same results (checked by ``conformance/entries/masks.py``).
Name/shape/density validation is the scalar logic of ``reference.masks``, imported, not copied.
N:M selection is vectorized: each element's rank inside its group of m is counted with
broadcast comparisons (m is small), no per-group Python loop.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from twinsparse.reference import masks as _ref
from twinsparse.reference._checks import check_density, count_for_density
from twinsparse.reference.masks import (check_channel_dim, check_layer_dict, check_layer_names, check_nm, check_nm_divisible,
                             layer_axis, nm_group_length, nm_view_shape, warn_dense_layers)
from . import deferred
from . import kernels as _kernels
from .flat import Layout, layout_of
from .kernels.tables import upload
from ._checks import as_real_tensor
from .topk import _require_finite, topk_mask, topk_masks_global, topk_masks_per_layer


# ----------------------------------------------------------------------------- magnitude (§2.1/2.2)

def magnitude_mask(w: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the floor(d*n+0.5) largest |w| of one layer (docs/methods.md §1.2-§1.3, the tie rule)."""
    w = as_real_tensor(w, "weight")
    return topk_mask(w.abs(), count_for_density(density, w.numel()))


def _abs_scores(weights: Mapping[str, torch.Tensor]) -> dict:
    """|w| of every layer, type-checked; finiteness checked once over the flat buffer when the
    layers share a dtype (then the result is one FlatDict)."""
    for n, w in weights.items():
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"weight {n!r} must be a torch.Tensor, got {type(w).__name__}")
        if w.is_complex():
            raise TypeError(f"weight {n!r} must be a real tensor, got dtype {w.dtype}")
    if len({w.dtype for w in weights.values()}) > 1:
        return {n: as_real_tensor(w, f"weight {n!r}").abs() for n, w in weights.items()}
    lay = layout_of(weights)
    flat = lay.flatten(weights)
    _require_finite(lay, flat, "weight", name=lambda n: f"weight {n!r}")
    return lay.split(flat.abs())


def magnitude_masks(weights: Mapping[str, torch.Tensor], densities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer magnitude masks (docs/methods.md §1.3, uniform): one segmented selection."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, densities, "densities")
    for n, d in densities.items():
        check_density(d, f"density of layer {n!r}")
    return topk_masks_per_layer(_abs_scores(weights), densities)


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """One top-k of |w| over the concatenation of all layers (docs/methods.md §1.3, global)."""
    check_layer_dict(weights, "weights")
    d = check_density(density)
    scores = _abs_scores(weights)
    total = sum(s.numel() for s in scores.values())
    return topk_masks_global(scores, count_for_density(d, total))


# ----------------------------------------------------------------------------- N:M (§2.5)

def _keep_n_per_row(groups: torch.Tensor, n: int) -> torch.Tensor:
    """groups [G, m]: rank_i = #{j: a_j > a_i or (a_j == a_i and j < i)}; keep rank < n."""
    a = groups.abs()
    m = a.shape[1]
    ai, aj = a.unsqueeze(2), a.unsqueeze(1)            # [G, m(i), 1], [G, 1, m(j)]
    idx = torch.arange(m, device=a.device)
    earlier = idx.unsqueeze(0) < idx.unsqueeze(1)      # [i, j]: j < i
    beats = (aj > ai) | ((aj == ai) & earlier)
    return beats.sum(dim=2) < n


def _native_nm(shape: tuple, axis) -> bool:
    """The layouts the N:M paths below take as they are (2-D / 4-D, a named axis); any other rank
    or an explicit dimension goes through ``_nm_view4``."""
    return isinstance(axis, str) and len(shape) in (2, 4)


def _nm_view4(shape: tuple, axis) -> tuple:
    """``reference.masks.nm_view_shape`` [A, R, S] as a 4-D [A, R, S, 1] view: its default
    (reduction) N:M groups are the groups of ``axis`` in ``shape``."""
    return (*nm_view_shape(shape, axis), 1)


def nm_mask(w: torch.Tensor, n: int, m: int, axis="reduction") -> torch.Tensor:
    """Keep n of every m consecutive weights along the reduction axis, a given dimension, or rows
    (any rank >= 2); docs/methods.md §1.6."""
    n, m = check_nm(n, m)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(w).__name__}")
    nm_group_length(tuple(w.shape), m, axis)
    check_nm_divisible(tuple(w.shape), m, axis)
    w = as_real_tensor(w, "weight")
    if not _native_nm(tuple(w.shape), axis):
        return nm_mask(w.reshape(_nm_view4(tuple(w.shape), axis)), n, m, "reduction").reshape(w.shape)
    if _kernels.on_device(w) and _kernels.usable(w):   # CUDA + CuPy: one thread per group (accel/kernels/nm_mask.cu)
        return _kernels.nm_mask(w, n, m, axis)
    return _nm_mask_torch(w, n, m, axis)


def _nm_mask_torch(w: torch.Tensor, n: int, m: int, axis: str) -> torch.Tensor:
    if axis == "rows" or w.dim() == 2:
        return _keep_n_per_row(w.reshape(-1, m), n).reshape(w.shape)
    cl = w.permute(0, 2, 3, 1)                         # [O, kh, kw, I], channels last
    keep = _keep_n_per_row(cl.reshape(-1, m), n).reshape(cl.shape)
    return keep.permute(0, 3, 1, 2).contiguous()


def _require_finite_weights(weights: Mapping[str, torch.Tensor], label=lambda name: f"weight {name!r}") -> None:
    """Every weight finite, checked with one multi-tensor reduction (one host read; inside an
    update, deferred to its commit); the error names the first bad weight (``label(name)``)."""
    names = [n for n, w in weights.items() if w.is_floating_point() and w.numel()]
    if not names:
        return

    def message(name):
        bad = int((~torch.isfinite(weights[name])).sum())
        return f"{label(name)} contains {bad} non-finite value(s) (NaN or inf); only finite values are allowed"
    if deferred.active() is not None:
        for name in names:
            deferred.require_finite(weights[name], lambda name=name: message(name))
        return
    by: dict = {}
    for name in names:
        by.setdefault((weights[name].device, weights[name].dtype), []).append(name)
    oks = []
    for group in by.values():
        sums = torch._foreach_norm(torch._foreach_mul([weights[x] for x in group], 0.0), 1)
        oks.append(torch.stack(sums).eq(0).all())
    first_bad = lambda: next(x for x in names if not bool(torch.isfinite(weights[x]).all()))  # noqa: E731
    deferred.require(torch.stack([o.to(oks[0].device) for o in oks]).all(), lambda: message(first_bad()))


def _nm_masks_viewed(weights: Mapping[str, torch.Tensor], n: int, m: int, axis) -> tuple[dict, list]:
    """``nm_masks`` for any rank and per-layer axes: every divisible layer as its 4-D view
    (``_nm_view4``) in one ``nm_masks`` call, the masks reshaped back."""
    for name, w in weights.items():
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"weight {name!r} must be a torch.Tensor, got {type(w).__name__}")
        nm_group_length(tuple(w.shape), m, layer_axis(axis, name))
    dense = [x for x, w in weights.items() if nm_group_length(tuple(w.shape), m, layer_axis(axis, x)) % m]
    views = {x: w.reshape(_nm_view4(tuple(w.shape), layer_axis(axis, x))) for x, w in weights.items() if x not in dense}
    found = {x: torch.ones_like(weights[x], dtype=torch.bool) for x in dense}
    if views:
        got, _ = nm_masks(views, n, m, "reduction")
        found.update((x, v.reshape(weights[x].shape)) for x, v in got.items())
    else:
        _require_finite_weights(weights)
    warn_dense_layers({d: tuple(weights[d].shape) for d in dense}, m, axis)
    return {x: found[x] for x in weights}, dense


def _require_flag_clear(bad: torch.Tensor, weights: Mapping[str, torch.Tensor],
                        label=lambda name: f"weight {name!r}") -> None:
    """A kernel's non-finite flag is clear (now, or at the commit of the enclosing update); the
    error names the first bad weight as ``_require_finite_weights`` does."""
    def message():
        name = next(x for x, w in weights.items() if not bool(torch.isfinite(w).all()))
        bad_n = int((~torch.isfinite(weights[name])).sum())
        return f"{label(name)} contains {bad_n} non-finite value(s) (NaN or inf); only finite values are allowed"
    deferred.require(bad.eq(0), message)


def nm_masks(weights: Mapping[str, torch.Tensor], n: int, m: int,
             axis="reduction") -> tuple[dict[str, torch.Tensor], list[str]]:
    """N:M masks per layer; indivisible layers stay dense and are returned and warned about. On
    CUDA one kernel launch covers every divisible layer (accel/kernels/nm_mask.cu). ``axis`` as
    in ``nm_mask``, or a dict layer name -> axis (``accel.prunable.reduction_dims``)."""
    n, m = check_nm(n, m)
    check_layer_dict(weights, "weights")
    if isinstance(axis, Mapping) or any(isinstance(w, torch.Tensor) and not _native_nm(tuple(w.shape), axis)
                                        for w in weights.values()):
        return _nm_masks_viewed(weights, n, m, axis)
    for name, w in weights.items():
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"weight {name!r} must be a torch.Tensor, got {type(w).__name__}")
        nm_group_length(tuple(w.shape), m, axis)
        if w.is_complex():
            raise TypeError(f"weight {name!r} must be a real tensor, got dtype {w.dtype}")
    dense = [x for x, w in weights.items() if nm_group_length(tuple(w.shape), m, axis) % m]
    todo = [x for x in weights if x not in dense]
    ws = [weights[x] for x in todo]
    found = {x: torch.ones_like(weights[x], dtype=torch.bool) for x in dense}
    if ws and _kernels.on_device(ws[0]) and all(w.device == ws[0].device for w in ws) and _kernels.usable(*ws):
        # one launch for all of them; the kernel flags NaN / inf as it reads (no separate pass)
        bad = torch.zeros(1, dtype=torch.int32, device=ws[0].device)
        found.update(zip(todo, _kernels.nm_masks(ws, n, m, axis, bad=bad)))
        _require_finite_weights({x: weights[x] for x in dense})
        _require_flag_clear(bad, {x: weights[x] for x in todo})
    else:
        _require_finite_weights(weights)
        found.update((x, _nm_mask_torch(w, n, m, axis)) for x, w in zip(todo, ws))
    warn_dense_layers({d: tuple(weights[d].shape) for d in dense}, m, axis)
    return {x: found[x] for x in weights}, dense


# ----------------------------------------------------------------------------- channels (§2.6a)

def _check_channel_weight(w, what: str = "weight", dim: int = 0) -> torch.Tensor:
    w = as_real_tensor(w, what)
    if w.dim() < 2:
        raise ValueError(f"channel pruning needs a weight with an output dimension and at least one more "
                         f"(Linear [O, I], Conv [O, I, *k], ...); {what} has shape {tuple(w.shape)}")
    check_channel_dim(tuple(w.shape), dim, what)
    return w


def channel_scores(w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """score[o] = sum |w| over the entries with index ``o`` along the output dim ``dim`` (docs/methods.md §1.7)."""
    w = _check_channel_weight(w, dim=dim)
    d = check_channel_dim(tuple(w.shape), dim)
    return w.abs().movedim(d, 0).reshape(w.shape[d], -1).sum(dim=1)


def channel_mask(w: torch.Tensor, density: float, dim: int = 0) -> torch.Tensor:
    """Keep the top floor(d*O+0.5) output channels (along ``dim``) by L1 score, broadcast to w's shape."""
    w = _check_channel_weight(w, dim=dim)
    d = check_channel_dim(tuple(w.shape), dim)
    keep = topk_mask(channel_scores(w, d), count_for_density(density, w.shape[d]))
    view = [1] * w.dim()
    view[d] = -1
    return keep.reshape(view).expand(w.shape).contiguous()


def channel_masks(weights: Mapping[str, torch.Tensor], densities: Mapping[str, float],
                  dims: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Per-layer channel masks along each layer's output dim ``dims[name]`` (default 0; docs/methods.md §1.7)."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, densities, "densities")
    dims = {n: 0 for n in weights} if dims is None else dims
    check_layer_names(weights, dims, "dims")
    for name, w in weights.items():
        _check_channel_weight(w, f"weight {name!r}", dims[name])
        check_density(densities[name], f"density of layer {name!r}")
    return {name: channel_mask(w, densities[name], dims[name]) for name, w in weights.items()}


# ----------------------------------------------------------------------------- random (§2.4)

def random_scores(shapes: Mapping[str, tuple], seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """The reference's NumPy float64 scores (docs/methods.md §1.5), copied to ``device`` -- not redrawn: one
    flat buffer (``FlatDict``), one copy from pinned memory that does not block the host."""
    arrays = _ref.random_scores(shapes, seed)
    lay = Layout(list(arrays), [a.shape for a in arrays.values()])
    if not arrays:
        return {}
    flat = np.concatenate([a.reshape(-1) for a in arrays.values()]) if len(arrays) > 1 else \
        next(iter(arrays.values())).reshape(-1)
    return lay.split(upload(torch.from_numpy(flat), torch.device(device)))


def random_mask(random_scores: torch.Tensor, density: float) -> torch.Tensor:
    """Exactly floor(d*n+0.5) positions: top-k of the given random scores (docs/methods.md §1.5)."""
    s = as_real_tensor(random_scores, "random scores")
    return topk_mask(s, count_for_density(density, s.numel()))


def random_masks(random_scores: Mapping[str, torch.Tensor], densities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer random masks with exact counts, from explicit random scores (docs/methods.md §1.5)."""
    check_layer_dict(random_scores, "random scores")
    check_layer_names(random_scores, densities, "densities")
    for name, d in densities.items():
        check_density(d, f"density of layer {name!r}")
    return {name: random_mask(s, densities[name]) for name, s in random_scores.items()}
