"""Sup-tickets running average and Sparse-Cocktail UMG channel scores (merge.cu), each for every
tensor of a network in one launch (per dtype)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import loader as L
from . import tables as T

UMG_CHANNELS = 8              # channels per block (one per warp of 256 threads); must match merge.cu


def superpose_cia(avg: dict, ticket: dict, t: int):
    """Validated, alike dicts: ((t - 1) avg + ticket) / t for every tensor, one launch per dtype
    (a FlatDict over one flat buffer when the tensors share a dtype); None when some tensor cannot
    go to the kernel (integer tensors, dtype mismatch)."""
    names = list(avg)
    al, tl = list(avg.values()), [ticket[n] for n in names]
    if not (L.usable(*al, *tl) and all(a.dtype == x.dtype for a, x in zip(al, tl))):
        return None
    return T.flat_out_launch("merge.cu", "superpose_cia", (avg, ticket),
                             lambda dtype: (T.scalar(t - 1, dtype), T.scalar(t, dtype)))


def _umg_plan(shapes: Sequence[tuple], dev: torch.device) -> dict:
    """Device tables (cached by the shapes): per weight its rows R, channels O and score offset;
    per chunk its weight and first channel (UMG_CHANNELS channels per chunk)."""
    def build():
        outs = [int(s[0]) for s in shapes]
        rows = [int(np.prod(s[1:], dtype=np.int64)) for s in shapes]
        h = T.chunk_plan_host(outs, UMG_CHANNELS)        # chunks of channels; offsets: where each weight's scores start
        dev_ = lambda a: T.upload_array(a, dev)  # noqa: E731
        return {"outs": outs, "out_off": dev_(h["offsets"]), "rows": dev_(np.array(rows, np.int64)),
                "n_out": dev_(h["sizes"]), "chunk_tensor": dev_(h["seg"]), "chunk_o0": dev_(h["start"]),
                "n_chunks": int(h["seg"].size)}
    return T.cached_plan(("umg", tuple(shapes), dev.index, L.backend().stream_key(dev)), build)


def umg_channel_scores_all(ws: Sequence[torch.Tensor], masks_u: Sequence[torch.Tensor],
                           masks_nm: Sequence[Optional[torch.Tensor]], beta: float, bad: Optional[torch.Tensor] = None):
    """Validated weights ([O, ...], one device) and boolean masks of their shapes (a mask_nm may
    be None: all ones): the UMG score per output channel of every weight, in one launch per dtype;
    views of one flat buffer per dtype. None when some tensor cannot go to the kernel. ``bad``
    (an int32 device tensor, 1 element, zeroed by the caller): set to 1 when a weight holds NaN
    or inf."""
    masks_nm = list(masks_nm)
    if not ws:
        return []
    if not L.usable(*ws, *masks_u, *[m for m in masks_nm if m is not None]):
        return None
    dev = ws[0].device
    cont = lambda t: t if t is None or t.is_contiguous() else t.contiguous()  # noqa: E731  (pointers: no detach)
    ws, masks_u, masks_nm = [cont(w) for w in ws], [cont(m) for m in masks_u], [cont(m) for m in masks_nm]
    scores: list = [None] * len(ws)
    for dtype in sorted({w.dtype for w in ws}, key=str):
        idx = [i for i, w in enumerate(ws) if w.dtype == dtype]
        plan = _umg_plan([tuple(ws[i].shape) for i in idx], dev)
        flat = torch.empty(sum(plan["outs"]), dtype=dtype, device=dev)
        if plan["n_chunks"]:
            L.launch("merge.cu", f"umg_channel_scores_{L.SUFFIX[dtype]}", dev, plan["n_chunks"],
                     (L.arg(T.pointer_table([ws[i] for i in idx], dev)),
                      L.arg(T.pointer_table([masks_u[i] for i in idx], dev)),
                      L.arg(T.pointer_table([masks_nm[i] for i in idx], dev)), L.arg(flat), L.arg(plan["out_off"]),
                      L.arg(plan["rows"]), L.arg(plan["n_out"]), L.arg(plan["chunk_tensor"]), L.arg(plan["chunk_o0"]),
                      np.int64(plan["n_chunks"]), T.scalar(beta, dtype), T.scalar(1.0 - beta, dtype), L.arg(bad)))
        for i, part in zip(idx, flat.split(plan["outs"])):
            scores[i] = part
    return scores


def umg_channel_scores(w: torch.Tensor, mask_u: torch.Tensor, mask_nm: Optional[torch.Tensor], beta: float):
    """Validated inputs: the UMG score per output channel, or None when the kernel cannot take them."""
    out = umg_channel_scores_all([w], [mask_u], [mask_nm], beta)
    return None if out is None else out[0]
