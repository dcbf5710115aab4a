"""Sup-tickets running average and Sparse-Cocktail UMG channel scores (merge.cu)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import loader as L


def superpose_cia(avg: dict, ticket: dict, t: int):
    """Validated, alike dicts: ((t - 1) avg + ticket) / t for every tensor, one launch per dtype;
    None when some tensor cannot go to the kernel (integer tensors, dtype mismatch)."""
    names = list(avg)
    if not all(avg[n].dtype == ticket[n].dtype and L.usable(avg[n], ticket[n]) for n in names):
        return None
    avg = {n: avg[n].contiguous() for n in names}
    ticket = {n: ticket[n].contiguous() for n in names}
    out = {n: torch.empty(avg[n].shape, dtype=avg[n].dtype, device=avg[n].device) for n in names}
    for dtype in {avg[n].dtype for n in names}:
        sel = [n for n in names if avg[n].dtype == dtype]
        L.multi_tensor_launch("merge.cu", f"superpose_cia_{L.SUFFIX[dtype]}",
                              [[d[n] for n in sel] for d in (avg, ticket, out)],
                              (L.scalar(t - 1, dtype), L.scalar(t, dtype)))
    return out


def umg_channel_scores(w: torch.Tensor, mask_u: torch.Tensor, mask_nm: Optional[torch.Tensor], beta: float):
    """Validated inputs: the UMG score per output channel, or None when the kernel cannot take them."""
    if not L.usable(w, mask_u, mask_nm):
        return None
    o = w.shape[0]
    score = torch.empty(o, dtype=w.dtype, device=w.device)
    if o == 0:
        return score
    w, mask_u = w.contiguous(), mask_u.contiguous()
    mask_nm = None if mask_nm is None else mask_nm.contiguous()
    row = w.numel() // o
    args = (L.arg(w), L.arg(mask_u), L.arg(mask_nm), L.arg(score), np.int64(o), np.int64(row),
            L.scalar(beta, w.dtype), L.scalar(1.0 - beta, w.dtype))
    L.launch("merge.cu", f"umg_channel_scores_{L.SUFFIX[w.dtype]}", w.device, o, args)
    return score
