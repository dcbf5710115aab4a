"""The one place where arithmetic tolerances are defined (docs/methods.md §1.15).

Masks and integer results are compared exactly; floating results with the tolerance
of their dtype below.

Whole-run scalars follow three rules:

- exact: masks, counts, and every fraction of counts -- accuracies, densities, exploration degree,
  mask change -- because each is an integer count divided by n as Python ``int / int`` on both
  backends (``reference.metrics``, ``accel.metrics``), the same float64 bits on every device. A
  derived value built from them by shared code in a fixed order (a mean of subnetwork accuracies)
  is exact too.
- ``DERIVED``: floats derived from values that themselves agree only within the float64 tolerance --
  losses (NLL), ECE, interpolation scores -- are sums in a different order on each backend and
  device (3.4 on one, 3.4000000000000004 on another), so they are compared within ``DERIVED``.
  That stays decisive: one more or one less correct sample moves an accuracy-based score by 1/n
  (n <= 10^4 here, so >= 1e-4), and a different prediction moves a mean loss far beyond 1e-9
  relative.
- parameters and buffers: the float64 entry of ``TOLERANCES``.
"""
import math
from numbers import Real

import numpy as np

TOLERANCES = {
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
}

# derived float64 scalars of a run (losses, ECE, interpolation scores): relative and absolute bound
DERIVED = dict(rel=1e-9, abs=1e-12)


def tolerance(dtype) -> dict:
    dt = np.dtype(dtype)
    if dt not in TOLERANCES:
        raise KeyError(f"no tolerance defined for dtype {dt}; defined for {sorted(map(str, TOLERANCES))}")
    return TOLERANCES[dt]


def assert_derived_close(ref, acc, what: str = "value") -> None:
    """``ref`` and ``acc`` -- numbers, or dicts / lists of them nested alike -- agree: the same keys
    and lengths, non-float leaves (ints, strings, bools, None) equal, floats within ``DERIVED``."""
    if isinstance(ref, dict):
        assert isinstance(acc, dict) and list(ref) == list(acc), \
            f"{what}: keys differ {list(ref)} vs {list(acc) if isinstance(acc, dict) else acc!r}"
        for k in ref:
            assert_derived_close(ref[k], acc[k], f"{what}[{k!r}]")
        return
    if isinstance(ref, (list, tuple)):
        assert isinstance(acc, (list, tuple)) and len(ref) == len(acc), f"{what}: {ref!r} vs {acc!r}"
        for i, (r, a) in enumerate(zip(ref, acc)):
            assert_derived_close(r, a, f"{what}[{i}]")
        return
    if isinstance(ref, (float, np.floating)) and not isinstance(ref, bool):
        assert isinstance(acc, Real) and not isinstance(acc, bool), f"{what}: {ref!r} vs {acc!r}"
        assert math.isclose(float(acc), float(ref), rel_tol=DERIVED["rel"], abs_tol=DERIVED["abs"]), \
            f"{what}: {acc!r} is not within {DERIVED} of the reference's {ref!r}"
        return
    assert ref == acc, f"{what}: {ref!r} != {acc!r}"
