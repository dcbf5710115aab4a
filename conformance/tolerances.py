"""The one place where arithmetic tolerances are defined (DESIGN.md "Comparisons").

Masks and integer results are compared exactly; floating results with the tolerance
of their dtype below.
"""
import numpy as np

TOLERANCES = {
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
}


def tolerance(dtype) -> dict:
    dt = np.dtype(dtype)
    if dt not in TOLERANCES:
        raise KeyError(f"no tolerance defined for dtype {dt}; defined for {sorted(map(str, TOLERANCES))}")
    return TOLERANCES[dt]
