"""Layers laid end to end in one flat buffer, so that whole-model mask work is a few tensor
operations whatever the number of layers.

A :class:`Layout` is the names, shapes and offsets of a set of layers (cached per device: the
segment id of every position, the segment starts and ends). A :class:`FlatDict` is an ordinary
``dict`` name -> tensor whose values are views into one 1-D buffer ``.flat`` laid out by
``.layout``; every accel operator accepts plain dicts too, and returns a ``FlatDict`` where it
builds a new set of masks or scores, so the next operator finds the buffer without a copy.

``FlatDict.counts`` optionally carries the per-layer number of True entries of a boolean
buffer when the host knows it without asking the device (the masks a Sparsifier installed, whose
counts it read back once, or masks built with counts fixed by construction). Operators that
would otherwise count on the device (one reduction and one host sync) use it instead.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Mapping, Optional, Sequence

import torch

from .kernels.tables import upload

__all__ = ["Layout", "FlatDict", "DeviceCounts", "flatten", "layout_of", "segment_sums", "int_vector"]

_LAYOUTS: dict = {}


class Layout:
    """Names and shapes of consecutive segments of one flat buffer (C order inside each)."""

    def __init__(self, names: Sequence[str], shapes: Sequence[tuple]):
        self.names = tuple(names)
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        offs, o = [], 0
        for s in self.sizes:
            offs.append(o)
            o += s
        self.offsets = tuple(offs)
        self.numel = o
        self._device: dict = {}

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and (self.names, self.shapes) == (other.names, other.shapes)

    def __hash__(self) -> int:
        return hash((self.names, self.shapes))

    def __repr__(self) -> str:
        return f"Layout({len(self.names)} segments, {self.numel} elements)"

    def on(self, device: torch.device) -> dict:
        """Device tensors of the layout (built once per device): ``seg`` (segment id of every
        position, int64), ``starts`` / ``ends`` (int64 per segment), ``sizes`` (int64)."""
        key = torch.device(device)
        info = self._device.get(key)
        if info is None:
            sizes = torch.tensor(self.sizes, dtype=torch.int64)
            starts = torch.tensor(self.offsets, dtype=torch.int64)
            seg = torch.repeat_interleave(torch.arange(len(self.sizes), dtype=torch.int64), sizes,
                                          output_size=self.numel)
            info = {"seg": upload(seg, key), "starts": upload(starts, key), "ends": upload(starts + sizes, key),
                    "sizes": upload(sizes, key)}
            self._device[key] = info
        return info

    def split(self, flat: torch.Tensor, counts=None) -> "FlatDict":
        """The views of ``flat`` (1-D, ``numel`` elements) per segment, as a FlatDict."""
        return FlatDict(self, flat, counts)

    def flatten(self, tensors: Mapping) -> torch.Tensor:
        """The 1-D concatenation of ``tensors`` in this layout's order: the buffer itself (no copy)
        when ``tensors`` is a FlatDict of this layout, else one ``torch.cat``."""
        if isinstance(tensors, FlatDict) and tensors.layout == self:
            return tensors.flat
        parts = [tensors[n].reshape(-1) for n in self.names]
        if not parts:
            raise ValueError("cannot flatten an empty set of layers")
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()


def layout_of(tensors: Mapping) -> Layout:
    """The (cached) layout of a dict of tensors, or the FlatDict's own."""
    if isinstance(tensors, FlatDict):
        return tensors.layout
    key = tuple((n, tuple(t.shape)) for n, t in tensors.items())
    lay = _LAYOUTS.get(key)
    if lay is None:
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
        lay = _LAYOUTS[key] = Layout([n for n, _ in key], [s for _, s in key])
    return lay


class FlatDict(dict):
    """A dict name -> view of one flat buffer (see the module docstring)."""

    def __init__(self, layout: Layout, flat: torch.Tensor, counts: Optional[Sequence[int]] = None):
        if flat.dim() != 1 or flat.numel() != layout.numel:
            raise ValueError(f"a flat buffer of {layout.numel} elements is needed, got shape {tuple(flat.shape)}")
        super().__init__((n, p.view(s)) for n, p, s in zip(layout.names, flat.split(layout.sizes), layout.shapes))
        self.layout = layout
        self.flat = flat
        self.counts = None if counts is None else tuple(int(c) for c in counts)

    def __reduce__(self):           # pickles / deep-copies as an OrderedDict of tensors (weights_only-safe)
        return (OrderedDict, (list(self.items()),))

    def device_counts(self) -> torch.Tensor:
        """Per-layer sums of the buffer as an int64 device vector (computed once; no host sync)."""
        c = getattr(self, "_device_counts", None)
        if c is None:
            c = self._device_counts = segment_sums(self.layout, self.flat)
        return c


class DeviceCounts(dict):
    """Per-layer integer counts that live on the device: a dict name -> 0-d view of ``.vec``
    (an int64 vector in layout order). Operators read ``.vec``; nothing asks the host."""

    def __init__(self, layout: Layout, vec: torch.Tensor):
        super().__init__(zip(layout.names, vec.unbind(0)))
        self.layout = layout
        self.vec = vec

    def __reduce__(self):
        return (OrderedDict, (list(self.items()),))


# On a CPU a host read costs nothing and one reduction per layer beats a running sum of the whole
# model, so a few operators take CPU-specific paths there (accel/kernels/NOTES.md). False makes a
# CPU run the same tensor programs as CUDA without CuPy: the engine-contract test counts those.
CPU_PATHS = True


def cpu_path(t: torch.Tensor) -> bool:
    """Whether ``t`` takes the CPU-specific paths (see ``CPU_PATHS``)."""
    return CPU_PATHS and t.device.type == "cpu"


def int_vector(values: Sequence[int], device) -> torch.Tensor:
    """Host integers as an int64 tensor on ``device``, copied without blocking the host (pinned
    memory on CUDA): a pageable host-to-device copy would wait for the stream."""
    return upload(torch.tensor([int(v) for v in values], dtype=torch.int64), torch.device(device))


def flatten(tensors: Mapping) -> tuple[Layout, torch.Tensor]:
    lay = layout_of(tensors)
    return lay, lay.flatten(tensors)


def segment_sums(layout: Layout, flat: torch.Tensor) -> torch.Tensor:
    """Per-segment sums of a bool / integer buffer as an int64 device vector, without a host sync
    (one cumulative sum and two gathers). On a CPU one sum per segment: no 64-bit running sum of
    the whole buffer to write (ResNet-50: 3 calls of a RigL update went from 0.46 s to ~0.03 s)."""
    if cpu_path(flat):
        count = torch.count_nonzero if flat.dtype == torch.bool else (lambda s: s.sum(dtype=torch.int64))
        return torch.stack([count(s) for s in flat.split(layout.sizes)]) if layout.sizes \
            else torch.zeros(0, dtype=torch.int64)
    info = layout.on(flat.device)
    c = torch.zeros(flat.numel() + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(flat, 0, dtype=torch.int64, out=c[1:])
    return c.index_select(0, info["ends"]) - c.index_select(0, info["starts"])
