"""DST-EE acquisition scores for every layer in one launch (dst.cu)."""
from __future__ import annotations

import math

import numpy as np
import torch

from . import loader as L
from . import tables as T


def dst_ee_scores(grads: dict, counters: dict, t: int, c: float, eps: float, form: str):
    """Validated inputs: the [EE] Eq. 1 scores for every layer in one launch per dtype (a FlatDict
    over one flat buffer when the layers share a dtype), or None when some input cannot go to the
    kernel."""
    names = list(grads)
    gl, cl = list(grads.values()), [counters[n] for n in names]
    if not (L.usable(*gl) and all(c.dtype == torch.int64 and c.device == g.device for g, c in zip(gl, cl))):
        return None
    return T.flat_out_launch("dst.cu", "dst_ee_scores", (grads, counters),
                             lambda dtype: (T.scalar(c, dtype), T.scalar(math.log(t), dtype), T.scalar(eps, dtype),
                                            np.int32(0 if form == "eq1" else 1)))
