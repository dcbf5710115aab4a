"""DST-EE acquisition scores for every layer in one launch (dst.cu)."""
from __future__ import annotations

import math

import numpy as np
import torch

from . import loader as L


def dst_ee_scores(grads: dict, counters: dict, t: int, c: float, eps: float, form: str):
    """Validated inputs: the [EE] Eq. 1 scores for every layer in one launch per dtype (a FlatDict
    over one flat buffer when the layers share a dtype), or None when some input cannot go to the
    kernel."""
    names = list(grads)
    gl, cl = list(grads.values()), [counters[n] for n in names]
    if not (L.usable(*gl) and all(c.dtype == torch.int64 and c.device == g.device for g, c in zip(gl, cl))):
        return None
    grads = {n: g if g.is_contiguous() else g.contiguous() for n, g in zip(names, gl)}   # pointers: no detach
    counters = {n: c if c.is_contiguous() else c.contiguous() for n, c in zip(names, cl)}
    out = {}
    for dtype in sorted({g.dtype for g in gl}, key=str):
        sel = names if len({g.dtype for g in gl}) == 1 else [n for n in names if grads[n].dtype == dtype]
        dev = grads[sel[0]].device
        plan = L.flat_out_plan([grads[n].numel() for n in sel], dev)
        flat = torch.empty(sum(plan["split"]), dtype=dtype, device=dev)
        if plan["n_chunks"]:
            L.launch("dst.cu", f"dst_ee_scores_{L.SUFFIX[dtype]}", dev, plan["n_chunks"],
                     (L.arg(L.pointer_table([grads[n] for n in sel], dev)),
                      L.arg(L.pointer_table([counters[n] for n in sel], dev)), L.arg(flat), L.arg(plan["out_off"]),
                      L.arg(plan["chunk_tensor"]), L.arg(plan["chunk_start"]), L.arg(plan["sizes"]),
                      np.int64(plan["n_chunks"]), np.int64(plan["chunk"]), L.scalar(c, dtype),
                      L.scalar(math.log(t), dtype), L.scalar(eps, dtype), np.int32(0 if form == "eq1" else 1)))
        part = as_flat_dict({n: grads[n] for n in sel}, flat)
        if len(sel) == len(names):
            return part
        out.update(part)
    return {n: out[n] for n in names}


def as_flat_dict(like: dict, flat: torch.Tensor):
    """The views of ``flat`` laid out like the tensors of ``like`` (name -> shape), as an
    accel.flat.FlatDict, so that the next operator finds the buffer without a copy."""
    from ..flat import layout_of             # accel.flat imports this package: import late
    return layout_of(like).split(flat)
