"""Tensor validation for accel operators (scalar checks are imported from reference)."""
from __future__ import annotations

import torch


def check_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contains {bad} non-finite value(s) (NaN or inf); only finite values are allowed")


def check_all_finite(tensors, what: str) -> None:
    """One reduction (one sync) for a list of tensors; names the first bad one only on failure."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return
    norms = torch._foreach_norm(tensors, float("inf"))
    if bool(torch.isfinite(torch.stack(norms)).all()):
        return
    for i, t in enumerate(tensors):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} (tensor {i}, shape {tuple(t.shape)}) contains non-finite values (NaN or inf)")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape mismatch: {what_a} has shape {tuple(a.shape)} but {what_b} has shape {tuple(b.shape)}")
