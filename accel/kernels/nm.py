"""N:M masks along the GEMM reduction dimension (nm_mask.cu): every weight of a model in one
launch per dtype, the masks laid end to end in one flat boolean buffer."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import loader as L
from . import tables as T

NM_CHUNK_GROUPS = 2048        # must match nm_mask.cu


def _geometry(shape: tuple, m: int, axis: str) -> tuple[int, int]:
    """(S, groups) of a validated 2-D / 4-D weight: S = kh*kw along the reduction axis of a conv,
    else 1 (consecutive groups of m)."""
    numel = int(np.prod(shape, dtype=np.int64))
    stride = 1 if axis == "rows" or len(shape) == 2 else int(shape[2]) * int(shape[3])
    return stride, numel // m


def _plan(shapes: Sequence[tuple], m: int, axis: str, dev: torch.device) -> dict:
    """Device tables (cached by the shapes): per tensor the offset of its mask in the flat output,
    S and its number of groups; per chunk its tensor and first group."""
    def build():
        geo = [_geometry(s, m, axis) for s in shapes]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        offs = np.concatenate([[0], np.cumsum(sizes)])[:-1].astype(np.int64)
        h = T.chunk_plan_host([g for _, g in geo], NM_CHUNK_GROUPS)     # chunks of groups
        dev_ = lambda a: T.upload_array(a, dev)  # noqa: E731
        return {"offsets": offs.tolist(), "sizes": sizes, "shapes": [tuple(int(d) for d in s) for s in shapes],
                "out_off": dev_(offs),
                "strides": dev_(np.array([s for s, _ in geo], np.int64)),
                "n_groups": dev_(h["sizes"]),
                "chunk_tensor": dev_(h["seg"]), "chunk_group": dev_(h["start"]),
                "n_chunks": int(h["seg"].size)}
    return T.cached_plan(("nm", tuple(shapes), m, axis, dev.index, L.backend().stream_key(dev)), build)


def nm_masks(weights: Sequence[torch.Tensor], n: int, m: int, axis: str,
             bad: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Validated weights (2-D / 4-D, group axis divisible by m, float32 / float64, one device):
    their N:M keep masks (nm_mask.cu), one launch per dtype for all of them. The masks are views
    of one flat boolean buffer, in the order of ``weights``. ``bad`` (an int32 device tensor, 1
    element, zeroed by the caller): set to 1 when a weight holds NaN or inf (the masks are then
    meaningless), which spares the caller a separate finiteness pass."""
    if not weights:
        return []
    L.check_usable("N:M", *weights)
    dev = weights[0].device
    weights = [w if w.is_contiguous() else w.contiguous() for w in weights]   # (pointers only: no detach needed)
    plan = _plan([tuple(w.shape) for w in weights], m, axis, dev)
    flat = torch.empty(sum(plan["sizes"]), dtype=torch.bool, device=dev)
    outs = [p.view(s) for p, s in zip(flat.split(plan["sizes"]), plan["shapes"])]   # a tuple views fastest
    if plan["n_chunks"] == 0:
        return outs
    dtypes = {w.dtype for w in weights}
    for dtype in sorted(dtypes, key=str):
        # another dtype's tensors get a null pointer: their chunks are skipped by this launch
        ptrs = [w if w.dtype == dtype else None for w in weights]
        L.launch("nm_mask.cu", f"nm_masks_{L.SUFFIX[dtype]}", dev, plan["n_chunks"],
                 (L.arg(T.pointer_table(ptrs, dev)), L.arg(flat), L.arg(plan["out_off"]), L.arg(plan["strides"]),
                  L.arg(plan["n_groups"]), L.arg(plan["chunk_tensor"]), L.arg(plan["chunk_group"]),
                  np.int64(plan["n_chunks"]), np.int32(n), np.int32(m), L.arg(bad)))
    return outs


def nm_mask(w: torch.Tensor, n: int, m: int, axis: str) -> torch.Tensor:
    """Validated w (2-D / 4-D, group axis divisible by m): the N:M keep mask (nm_mask.cu)."""
    if w.numel() == 0:
        return torch.empty(w.shape, dtype=torch.bool, device=w.device)
    return nm_masks([w], n, m, axis)[0]
