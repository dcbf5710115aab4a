"""Tensor validation for accel operators (scalar checks are imported from reference)."""
from __future__ import annotations

import numpy as np
import torch

from . import deferred


def check_finite(t: torch.Tensor, what: str) -> None:
    """NaN or inf is an error: raised now, or when the enclosing update commits (``accel.deferred``)."""
    if not t.is_floating_point():
        return

    def message():
        bad = int((~torch.isfinite(t)).sum())
        return f"{what} contains {bad} non-finite value(s) (NaN or inf); only finite values are allowed"
    deferred.require_finite(t, message)


def check_all_finite(tensors, what: str) -> None:
    """Raise if any tensor holds NaN or inf, naming the first bad one (now, or at the commit of the
    enclosing update). Two multi-tensor operations for any number of tensors: x * 0 is 0 for a
    finite x and NaN otherwise, and a sum of those is 0 exactly when every entry is finite (it
    cannot overflow, and a NaN term always propagates through a sum)."""
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return

    def message():
        for i, t in enumerate(tensors):
            if not bool(torch.isfinite(t).all()):
                return f"{what} (tensor {i}, shape {tuple(t.shape)}) contains non-finite values (NaN or inf)"
        raise AssertionError("unreachable: the finiteness reduction flagged finite tensors")
    if deferred.active() is not None:           # every check of the transaction shares one reduction
        for t in tensors:
            deferred.require_finite(t, message)
        return
    sums = torch._foreach_norm(torch._foreach_mul(tensors, 0.0), 1)
    deferred.require(torch.stack(sums).eq(0).all(), message)


def check_same_shape(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape mismatch: {what_a} has shape {tuple(a.shape)} but {what_b} has shape {tuple(b.shape)}")


def as_real_tensor(t, what: str) -> torch.Tensor:
    """``t`` must be a real torch.Tensor with only finite values, else a clear error."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{what} must be a real tensor, got dtype {t.dtype}")
    check_finite(t, what)
    return t


_NUMPY_FLOATS = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def scalar_as(x: float, dtype: torch.dtype) -> float:
    """The Python scalar ``x`` rounded to ``dtype`` (the reference's ``dtype.type(x)``), so that
    ``scalar * tensor`` rounds as the NumPy twin does (on the host: no device work)."""
    np_type = _NUMPY_FLOATS.get(dtype)
    if np_type is not None:
        return float(np_type(x))
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()
