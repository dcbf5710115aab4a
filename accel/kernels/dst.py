"""DST-EE acquisition scores for every layer in one launch (dst.cu)."""
from __future__ import annotations

import math

import numpy as np
import torch

from . import loader as L


def dst_ee_scores(grads: dict, counters: dict, t: int, c: float, eps: float, form: str):
    """Validated inputs: the [EE] Eq. 1 scores for every layer in one launch per dtype, or None
    when some input cannot go to the kernel."""
    names = list(grads)
    if not all(counters[n].dtype == torch.int64 and counters[n].device == grads[n].device and L.usable(grads[n])
               for n in names):
        return None
    grads = {n: grads[n].contiguous() for n in names}
    counters = {n: counters[n].contiguous() for n in names}
    out = {n: torch.empty(grads[n].shape, dtype=grads[n].dtype, device=grads[n].device) for n in names}
    for dtype in {grads[n].dtype for n in names}:
        sel = [n for n in names if grads[n].dtype == dtype]
        L.multi_tensor_launch("dst.cu", f"dst_ee_scores_{L.SUFFIX[dtype]}",
                              [[d[n] for n in sel] for d in (grads, counters, out)],
                              (L.scalar(c, dtype), L.scalar(math.log(t), dtype), L.scalar(eps, dtype),
                               np.int32(0 if form == "eq1" else 1)))
    return out
