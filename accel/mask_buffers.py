"""The Sparsifier's masks as the optimizer step reads them: persistent buffers in the memory
order of each weight.

The operators see masks in C order, one flat buffer for all layers (``accel.flat``). The step
reads a weight, its gradient, its optimizer state and its mask element by element in memory
order, and a weight in ``channels_last`` is not stored in C order. So the Sparsifier keeps, next
to the C-order masks, a copy laid out like the weights:

* ``kflat``: one bool buffer, each layer's segment in that weight's memory order, with a view per
  layer that has the weight's own strides (``kview[name]``); for a C-contiguous weight the
  segment equals the C-order one;
* ``kfloat[dtype]``: the same as 0/1 values of each weight dtype (``kfloat_view[name]``), what
  ``torch._foreach_mul_`` multiplies gradients with (equal strides keep it on its fast path).

The buffers never move, so the step's pointer tables stay valid across mask updates. ``install``
refreshes them from new C-order masks with one gather (only when some weight is not
C-contiguous) and one copy per dtype: a constant number of launches for any number of layers.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from .flat import Layout

__all__ = ["MaskBuffers", "dense_strides"]


def dense_strides(p: torch.Tensor) -> bool:
    """True when ``p`` covers its numel elements densely in some dimension order (C order,
    channels_last, or any other permutation), so it can be walked as a flat array."""
    if p.is_contiguous():
        return True
    dims = sorted((s, n) for s, n in zip(p.stride(), p.shape) if n != 1)
    expect = 1
    for s, n in dims:
        if s != expect:
            return False
        expect *= n
    return True


def _strided_view(buf: torch.Tensor, offset: int, p: torch.Tensor) -> torch.Tensor:
    if p.is_contiguous() or not dense_strides(p):
        return buf[offset:offset + p.numel()].view(p.shape)
    return buf.as_strided(p.shape, p.stride(), buf.storage_offset() + offset)


class MaskBuffers:
    def __init__(self, params: Mapping[str, torch.Tensor], layout: Layout):
        self.layout = layout
        devices = {p.device for p in params.values()}
        if len(devices) != 1:
            raise ValueError(f"the prunable weights must live on one device, got {sorted(str(d) for d in devices)}")
        self.device = devices.pop()
        self.dense = all(dense_strides(p) for p in params.values())
        n = layout.numel
        self.kflat = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.kview = {name: _strided_view(self.kflat, off, p)
                      for (name, p), off in zip(params.items(), layout.offsets)}
        # memory position -> C-order position, only when some weight is not C-contiguous
        self.perm: Optional[torch.Tensor] = None
        if not all(p.is_contiguous() for p in params.values()):
            idx = torch.empty(n, dtype=torch.int64, device=self.device)
            for (name, p), off in zip(params.items(), layout.offsets):
                _strided_view(idx, off, p).copy_(torch.arange(off, off + p.numel(), device=self.device).view(p.shape))
            self.perm = idx
        self.kfloat: dict = {}
        self.kfloat_view: dict = {}
        for dtype in {p.dtype for p in params.values()}:
            buf = torch.zeros(n, dtype=dtype, device=self.device)
            self.kfloat[dtype] = buf
            self.kfloat_view.update({name: _strided_view(buf, off, p) for (name, p), off in
                                     zip(params.items(), layout.offsets) if p.dtype == dtype})

    def memory_order(self, flat: torch.Tensor) -> torch.Tensor:
        """A C-order flat buffer rearranged into the weights' memory order (itself when they are
        all C-contiguous)."""
        return flat if self.perm is None else flat.index_select(0, self.perm)

    def install(self, flat: torch.Tensor) -> None:
        """Refresh every buffer from new C-order masks (``flat``: bool, layout order)."""
        if self.perm is None:
            self.kflat.copy_(flat)
        else:
            torch.index_select(flat, 0, self.perm, out=self.kflat)
        for buf in self.kfloat.values():
            buf.copy_(self.kflat)

    def float_views(self, flat_keep: torch.Tensor, params: Mapping[str, torch.Tensor]) -> dict:
        """0/1 views laid out like each weight, for a C-order bool buffer other than the masks
        (the survivors of an update)."""
        mem = self.memory_order(flat_keep)
        out, by_dtype = {}, {}
        for (name, p), off in zip(params.items(), self.layout.offsets):
            if p.dtype not in by_dtype:
                by_dtype[p.dtype] = mem.to(p.dtype)
            out[name] = _strided_view(by_dtype[p.dtype], off, p)
        return out
