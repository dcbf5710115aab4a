"""Input validation shared by every reference operator (and re-used by accel for scalars).

Every public operator validates before it computes, so a bad call raises a clear
error naming the bad value and what is allowed, and nothing is half-applied.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def check_density(density: float, name: str = "density", allow_zero: bool = True) -> float:
    """A density d is the kept fraction, allowed in [0, 1] ((0, 1] when allow_zero is False). A
    string (even "0.5") or a bool is a type error, not a number to convert."""
    if isinstance(density, (str, bytes, bool)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(density).__name__} {density!r}")
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1], got {density!r}") from None
    lo_ok = d >= 0.0 if allow_zero else d > 0.0
    if not (math.isfinite(d) and lo_ok and d <= 1.0):
        allowed = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name}={density!r} is outside the allowed range {allowed}")
    return d


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """A sparsity s = 1 - d is allowed in [0, 1): s = 1 would prune every weight."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {sparsity!r}") from None
    if not (math.isfinite(s) and 0.0 <= s < 1.0):
        raise ValueError(f"{name}={sparsity!r} is outside the allowed range [0, 1)")
    return s


def check_count(k: int, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in [0, {n}], got {k!r}")
    if not 0 <= int(k) <= n:
        raise ValueError(f"{name}={int(k)} is outside the allowed range [0, {n}] (n = {n} elements)")
    return int(k)


def check_finite(a: np.ndarray, what: str) -> None:
    """NaN or inf in scores, weights or gradients is an error (docs/methods.md §1.15)."""
    a = np.asarray(a)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{what} contains {bad} non-finite value(s) (NaN or inf); only finite values are allowed")


def check_same_shape(a, b, what_a: str, what_b: str) -> None:
    if tuple(np.shape(a)) != tuple(np.shape(b)):
        raise ValueError(f"shape mismatch: {what_a} has shape {tuple(np.shape(a))} but {what_b} has shape {tuple(np.shape(b))}")


def check_same_keys(a: Mapping, b: Mapping, what_a: str, what_b: str) -> None:
    if list(a.keys()) != list(b.keys()):
        raise ValueError(f"{what_a} and {what_b} must name the same layers in the same order: "
                         f"{list(a.keys())} vs {list(b.keys())}")


def check_nonempty(layers: Mapping, what: str = "prunable set") -> None:
    if len(layers) == 0:
        raise ValueError(f"the {what} is empty: there is no layer to prune (check include/exclude)")


def count_for_density(density: float, n: int) -> int:
    """docs/methods.md §1.2 count rounding: k = floor(d * n + 0.5), computed in float64."""
    d = check_density(density)
    return int(math.floor(np.float64(d) * np.float64(n) + np.float64(0.5)))


def imp_keep_count(rate: float, n: int) -> int:
    """IMP's "prune ``rate`` of the remaining weights" ([TH] §2.2.2, [SC] §3.1) on ``n`` active weights:
    floor(rate * n + 0.5) go (docs/methods.md §1.2 rounding of the pruned count), the rest stay. The one rule for
    the IMP procedure (``reference.imp``) and Sparse Cocktail's unstructured masks."""
    return int(n) - count_for_density(rate, n)


def as_real_array(a, what: str) -> np.ndarray:
    """``a`` as a NumPy array of a real numeric dtype with only finite values, else a clear error."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a real numeric array, got dtype {a.dtype}")
    check_finite(a, what)
    return a


def check_int(v, name: str, lo: int, hi: int | None = None) -> int:
    """An integer in [lo, hi] (hi None: no upper bound), else TypeError/ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={int(v)} is not allowed; it must be {allowed}")
    return int(v)
