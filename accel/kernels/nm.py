"""N:M masks along the GEMM reduction dimension (nm_mask.cu)."""
from __future__ import annotations

import math

import numpy as np
import torch

from . import loader as L


def nm_mask(w: torch.Tensor, n: int, m: int, axis: str) -> torch.Tensor:
    """Validated w (2-D / 4-D, group axis divisible by m): the N:M keep mask (nm_mask.cu)."""
    if not L.usable(w):
        raise RuntimeError(f"the CUDA N:M kernel cannot run: {L.unavailable_reason() or 'unsupported tensor'}")
    out = torch.empty(w.shape, dtype=torch.bool, device=w.device)
    if w.numel() == 0:
        return out
    w = w.contiguous()
    o = w.shape[0]
    if axis == "rows" or w.dim() == 2:
        row, stride = w.numel() // o, 1
    else:
        row, stride = w.shape[1], w.shape[2] * w.shape[3]
    gpr = row // m
    n_groups = o * gpr * stride
    sfx = L.SUFFIX[w.dtype]
    grid = math.ceil(n_groups / L.THREADS)
    if m in (4, 8):
        args = (L.arg(w), L.arg(out), np.int64(n_groups), np.int32(n), np.int64(gpr), np.int64(stride))
        L.launch("nm_mask.cu", f"nm_mask_m{m}_{sfx}", w.device, grid, args)
    else:
        args = (L.arg(w), L.arg(out), np.int64(n_groups), np.int32(n), np.int32(m), np.int64(gpr), np.int64(stride))
        L.launch("nm_mask.cu", f"nm_mask_any_{sfx}", w.device, grid, args)
    return out
