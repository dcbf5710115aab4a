"""Layer-wise density allocation (docs/methods.md §1.4): uniform, ER, ERK, and the global-magnitude split.

The shape-based distributions are pure scalar logic on layer shapes (docs/methods.md §1.15: written once
here, imported by accel). Inputs are ``shapes: dict name -> shape`` of prunable weights
(any rank >= 2: Linear [O, I], Conv [O, I, *k], ConvTranspose [I, O, *k], attention, embedding
and RNN weights); outputs are ``dict name -> density`` in the same order.

ER / ERK (docs/methods.md §1.4 RESOLUTION, EXTERNAL reference form of Evci et al. 2020): the density of
layer l is d_l = eps * r_l with
    ER  r_l = (O + I) / (O * I)                     (dims 0 and 1 only, also for conv)
    ERK r_l = (sum(shape) / prod(shape)) ** power_scale
and eps solved so that sum_l d_l n_l = density * sum_l n_l over the pruned layers. Any layer
whose density would exceed 1 is made dense and removed from the solve, and eps is re-solved,
until no layer exceeds 1 (docs/methods.md §1.15: without this loop ERK misses the target).

``overrides`` fix a layer's density inside the budget (1.0 = dense, the others make up for it);
``exclude`` names layers that are not pruned at all: they get 1.0 and are NOT counted in the
budget, so the target density applies to the pruned layers only (AC/DC (★) counting, docs/methods.md §1.1).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from ._checks import check_density, check_nonempty, count_for_density
from .masks import check_layer_dict, global_magnitude_masks

# relative slack for the budget arithmetic (float64 sums of layer sizes)
_REL_TOL = 1e-9


# ----------------------------------------------------------------------------- checks

def _check_shapes(shapes) -> dict[str, tuple]:
    if not isinstance(shapes, Mapping):
        raise TypeError(f"shapes must be a dict of layer name -> shape tuple, got {type(shapes).__name__}")
    check_nonempty(shapes, "set of layer shapes")
    out = {}
    for name, shp in shapes.items():
        try:
            t = tuple(shp)
        except TypeError:
            raise TypeError(f"shape of layer {name!r} must be a tuple of ints, got {shp!r}") from None
        if len(t) < 2:
            raise ValueError(f"layer {name!r} has shape {t}: only weights of rank >= 2 (Linear [O, I], Conv "
                             f"[O, I, *k], attention, embedding and RNN weights) can be allocated a density")
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in t):
            raise ValueError(f"layer {name!r} has shape {t}: every dimension must be a positive int")
        out[name] = tuple(int(s) for s in t)
    return out


def _check_names(names: Iterable, shapes: Mapping, what: str) -> list:
    if isinstance(names, str):
        raise TypeError(f"{what} must be a collection of layer names, got the single string {names!r}")
    names = list(names)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"{what} names unknown layer(s) {unknown}; known layers are {list(shapes)}")
    return names


def _split(shapes, density, exclude, overrides):
    """Validate and return (shapes, density, excluded set, overrides dict)."""
    shapes = _check_shapes(shapes)
    d = check_density(density)
    excluded = set(_check_names(exclude, shapes, "exclude"))
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict of layer name -> density, got {type(overrides).__name__}")
    _check_names(overrides, shapes, "overrides")
    both = [n for n in overrides if n in excluded]
    if both:
        raise ValueError(f"layer(s) {both} are both excluded and given an override; an excluded layer is not "
                         f"pruned at all, so choose one")
    fixed = {n: check_density(v, f"override for layer {n!r}") for n, v in overrides.items()}
    if len(excluded) == len(shapes):
        raise ValueError(f"every layer is excluded ({sorted(excluded)}): there is no layer left to prune")
    return shapes, d, excluded, fixed


# ----------------------------------------------------------------------------- distributions

def uniform_densities(shapes: Mapping[str, tuple], density: float, exclude: Iterable[str] = ()) -> dict[str, float]:
    """The same density in every pruned layer; excluded layers stay dense (docs/methods.md §1.3 uniform)."""
    shapes, d, excluded, _ = _split(shapes, density, exclude, None)
    return {n: 1.0 if n in excluded else d for n in shapes}


def _solve_proportional(shapes: dict, raw: dict, density: float, excluded: set, fixed: dict) -> dict[str, float]:
    """d_l = eps * raw_l hitting the budget, with iterative dense-layer exclusion (docs/methods.md §1.4)."""
    size = {n: math.prod(s) for n, s in shapes.items()}
    pruned = [n for n in shapes if n not in excluded]
    budget = density * sum(size[n] for n in pruned)          # weights to keep in the pruned layers
    tol = _REL_TOL * sum(size[n] for n in pruned)
    left = budget - sum(fixed[n] * size[n] for n in fixed)
    if left < -tol:
        raise ValueError(f"infeasible overrides: they keep {budget - left:.6g} weights but density={density} "
                         f"allows only {budget:.6g} in the pruned layers")
    free = [n for n in pruned if n not in fixed]
    if left > sum(size[n] for n in free) + tol:
        raise ValueError(f"infeasible overrides: to reach density={density} the remaining layers {free} would have "
                         f"to keep {left:.6g} weights but hold only {sum(size[n] for n in free)} even when dense")
    dense: list = []
    while True:
        solve = [n for n in free if n not in dense]
        rest = left - sum(size[n] for n in dense)
        denom = sum(raw[n] * size[n] for n in solve)
        eps = max(rest, 0.0) / denom if denom > 0 else 0.0
        over = [n for n in solve if eps * raw[n] > 1.0]
        if not over:
            break
        dense.extend(over)
    out = {}
    for n in shapes:
        if n in excluded or n in dense:
            out[n] = 1.0
        elif n in fixed:
            out[n] = fixed[n]
        else:
            out[n] = float(eps * raw[n])
    return out


def er_densities(shapes: Mapping[str, tuple], density: float, exclude: Iterable[str] = (),
                 overrides: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """Erdős-Rényi: density proportional to (O + I) / (O * I), dims 0 and 1 (docs/methods.md §1.4, [TH] §2.2.1)."""
    shapes, d, excluded, fixed = _split(shapes, density, exclude, overrides)
    raw = {n: (s[0] + s[1]) / (s[0] * s[1]) for n, s in shapes.items()}
    return _solve_proportional(shapes, raw, d, excluded, fixed)


def erk_densities(shapes: Mapping[str, tuple], density: float, power_scale: float = 1.0,
                  overrides: Optional[Mapping[str, float]] = None, exclude: Iterable[str] = ()) -> dict[str, float]:
    """Erdős-Rényi-Kernel: density proportional to (sum(shape)/prod(shape))**power_scale (docs/methods.md §1.4).

    ``power_scale=1`` is the documented form; 0 gives the uniform distribution.
    """
    try:
        p = float(power_scale)
    except (TypeError, ValueError):
        raise TypeError(f"power_scale must be a number >= 0, got {power_scale!r}") from None
    if not (math.isfinite(p) and p >= 0):
        raise ValueError(f"power_scale={power_scale!r} is not allowed; it must be a finite number >= 0")
    shapes, d, excluded, fixed = _split(shapes, density, exclude, overrides)
    raw = {n: (sum(s) / math.prod(s)) ** p for n, s in shapes.items()}
    return _solve_proportional(shapes, raw, d, excluded, fixed)


DISTRIBUTIONS: dict[str, Callable] = {"uniform": uniform_densities, "er": er_densities, "erk": erk_densities}


def layer_densities_for(name: str, shapes: Mapping[str, tuple], density: float, **kw) -> dict[str, float]:
    """Dispatch to a distribution in ``DISTRIBUTIONS`` by name."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown density distribution {name!r}; allowed: {sorted(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name](shapes, density, **kw)


# ----------------------------------------------------------------------------- the empty-layer rule

def check_keeps_weights(densities: Mapping[str, float], sizes: Mapping[str, int], allow_empty: bool = False,
                        source: str = "the densities") -> dict[str, float]:
    """The one rule of every door that turns densities into masks: a layer that would keep 0
    weights (``floor(d * n + 0.5) == 0``, docs/methods.md §1.2 rounding) is an error, unless the caller asks
    for empty layers explicitly with ``allow_empty=True``. Returns ``densities`` unchanged."""
    empty = [n for n, d in densities.items() if count_for_density(d, int(sizes[n])) == 0]
    if empty and not allow_empty:
        shown = ", ".join(f"{n!r} (density {densities[n]:.3g} of {int(sizes[n])} weights; it needs >= "
                          f"{0.5 / int(sizes[n]):.3g} to keep one)" for n in empty[:4])
        more = f" and {len(empty) - 4} more" if len(empty) > 4 else ""
        raise ValueError(f"{source} would keep 0 weights in {len(empty)} of {len(densities)} layer(s): {shown}{more}. "
                         f"Raise the density, exclude the layer, or pass allow_empty=True to prune it entirely "
                         f"on purpose")
    return dict(densities)


# ----------------------------------------------------------------------------- array function

def global_magnitude_densities(weights: Mapping[str, np.ndarray], density: float) -> dict[str, float]:
    """Per-layer kept fraction of a global magnitude top-k (docs/methods.md §1.3 global variant)."""
    check_layer_dict(weights, "weights")
    masks = global_magnitude_masks(weights, density)
    return {n: float(m.sum()) / m.size if m.size else 1.0 for n, m in masks.items()}
