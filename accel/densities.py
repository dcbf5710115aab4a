"""Layer-wise densities for accel (docs/methods.md §1.4): the scalar distributions imported from
``reference.densities`` (no twin, docs/methods.md §1.15), the torch twin of ``global_magnitude_densities``,
and the user-facing spec factories taken by the Sparsifier::

    Sparsifier(model, opt, density=densities.erk(0.1), ...)

A ``DensitySpec`` records (kind, density, options) and ``resolve(weights)`` turns it into a
``dict name -> density`` for the given prunable weights.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import torch

from twinsparse.reference._checks import check_density
from twinsparse.reference.densities import (DISTRIBUTIONS, check_keeps_weights, er_densities, erk_densities,  # noqa: F401
                                 layer_densities_for, uniform_densities)
from twinsparse.reference.masks import check_layer_dict
from .masks import global_magnitude_masks

__all__ = ["DISTRIBUTIONS", "uniform_densities", "er_densities", "erk_densities", "layer_densities_for",
           "global_magnitude_densities", "DensitySpec", "uniform", "er", "erk", "global_magnitude",
           "from_config", "KINDS"]


def global_magnitude_densities(weights: Mapping[str, torch.Tensor], density: float) -> dict[str, float]:
    """Per-layer kept fraction of a global magnitude top-k (docs/methods.md §1.3); twin of the reference."""
    check_layer_dict(weights, "weights")
    masks = global_magnitude_masks(weights, density)
    return {n: int(m.sum()) / m.numel() if m.numel() else 1.0 for n, m in masks.items()}


@dataclass(frozen=True)
class DensitySpec:
    """How densities are allocated: ``kind`` in KINDS, overall ``density``, distribution ``options``.

    ``allow_empty``: a layer may end up with 0 kept weights (a density that rounds to no weight, an
    override of 0, or density 0 itself); without it that is an error, the rule of every door
    (``reference.densities.check_keeps_weights``)."""
    kind: str
    density: float
    options: dict = field(default_factory=dict)
    allow_empty: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown density kind {self.kind!r}; allowed: {sorted(KINDS)}")
        if not isinstance(self.allow_empty, bool):
            raise TypeError(f"allow_empty must be True or False, got {self.allow_empty!r}")
        d = check_density(self.density)
        if d == 0.0 and not self.allow_empty:
            raise ValueError(f"density={self.density!r} keeps no weight in any layer; the allowed range is (0, 1], "
                             f"or pass allow_empty=True to prune every layer entirely on purpose")
        object.__setattr__(self, "density", d)
        object.__setattr__(self, "options", dict(self.options))

    def resolve(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Per-layer densities for these prunable weights (shape-based, or by magnitude for global);
        a layer left with 0 weights is an error unless ``allow_empty``."""
        check_layer_dict(weights, "weights")
        if self.kind == "global_magnitude":
            dens = global_magnitude_densities(weights, self.density)
        else:
            shapes = {n: tuple(w.shape) for n, w in weights.items()}
            dens = layer_densities_for(self.kind, shapes, self.density, **self.options)
        return check_keeps_weights(dens, {n: w.numel() for n, w in weights.items()}, self.allow_empty,
                                   f"density {self.kind}({self.density:.3g})")


def _names(names: Iterable[str], what: str) -> tuple:
    if isinstance(names, str):
        raise TypeError(f"{what} must be a collection of layer names, got the single string {names!r}")
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{what} must hold layer names (str), got {bad}")
    return names


def _overrides(overrides: Optional[Mapping[str, float]]) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict of layer name -> density, got {type(overrides).__name__}")
    return {n: check_density(v, f"override for layer {n!r}") for n, v in overrides.items()}


def uniform(density: float, exclude: Iterable[str] = (), allow_empty: bool = False) -> DensitySpec:
    """The same density in every pruned layer (docs/methods.md §1.3 uniform)."""
    return DensitySpec("uniform", density, {"exclude": _names(exclude, "exclude")}, allow_empty)


def er(density: float, overrides: Optional[Mapping[str, float]] = None, exclude: Iterable[str] = (),
       allow_empty: bool = False) -> DensitySpec:
    """Erdős-Rényi densities (docs/methods.md §1.4)."""
    return DensitySpec("er", density, {"overrides": _overrides(overrides), "exclude": _names(exclude, "exclude")},
                       allow_empty)


def erk(density: float, power_scale: float = 1.0, overrides: Optional[Mapping[str, float]] = None,
        exclude: Iterable[str] = (), allow_empty: bool = False) -> DensitySpec:
    """Erdős-Rényi-Kernel densities (docs/methods.md §1.4). ``allow_empty``: see ``DensitySpec``."""
    try:
        p = float(power_scale)
    except (TypeError, ValueError):
        raise TypeError(f"power_scale must be a number >= 0, got {power_scale!r}") from None
    if not (p >= 0 and p != float("inf")):
        raise ValueError(f"power_scale={power_scale!r} is not allowed; it must be a finite number >= 0")
    return DensitySpec("erk", density, {"power_scale": p, "overrides": _overrides(overrides),
                                        "exclude": _names(exclude, "exclude")}, allow_empty)


def global_magnitude(density: float, allow_empty: bool = False) -> DensitySpec:
    """One global magnitude top-k over all prunable weights (docs/methods.md §1.3 global)."""
    return DensitySpec("global_magnitude", density, {}, allow_empty)


KINDS = {"uniform": uniform, "er": er, "erk": erk, "global_magnitude": global_magnitude}


def from_config(kind: str, density: float, **options) -> DensitySpec:
    """Build a DensitySpec from config values, e.g. ``from_config("erk", 0.1, power_scale=1.0)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown density kind {kind!r}; allowed: {sorted(KINDS)}")
    factory = KINDS[kind]
    allowed = [p for p in inspect.signature(factory).parameters if p != "density"]
    unknown = [o for o in options if o not in allowed]
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for density kind {kind!r}; allowed: {allowed}")
    return factory(density, **options)
