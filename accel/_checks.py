"""Tensor validation for accel operators (scalar checks are imported from reference)."""
from __future__ import annotations

import torch


def check_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contains {bad} non-finite value(s) (NaN or inf); only finite values are allowed")


def check_all_finite(tensors, what: str) -> None:
    """Raise if any tensor holds NaN or inf, naming the first bad one.

    Fast path: one sum per tensor (a sum is finite whenever every term is, unless it overflows);
    only when a sum is not finite are the tensors checked element-wise, so a huge-but-finite
    gradient whose sum overflows is still accepted.
    """
    tensors = [t for t in tensors if t is not None]
    if not tensors or bool(torch.isfinite(torch.stack([t.sum() for t in tensors])).all()):
        return
    for i, t in enumerate(tensors):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} (tensor {i}, shape {tuple(t.shape)}) contains non-finite values (NaN or inf)")


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


def scalar_as(x: float, dtype: torch.dtype) -> float:
    """The Python scalar ``x`` rounded to ``dtype`` (the reference's ``dtype.type(x)``), so that
    ``scalar * tensor`` rounds as the NumPy twin does."""
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()
