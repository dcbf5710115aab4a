"""The device-resident tables that let one launch cover many tensors: pointer tables, chunk plans
(which block walks which part of which tensor), their caches, host-to-device uploads that do not
wait for the stream, and the multi-tensor / flat-output launches built on them. ``loader`` holds
the backends, compilation and the single launch."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import loader as L      # read at call time: tests narrow L.CHUNK, use_backend swaps the backend


def pointer_table(tensors: Sequence[Optional[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Device int64 array of raw data pointers (0 for None), cached by the pointer values.

    On CUDA the table is uploaded from pinned host memory without blocking the host. A table built
    while a CUDA graph is being captured is also kept in ``graph_tables`` (with its host copy), so
    that the graph, which replays the upload and then reads the table, never sees freed memory;
    the code that captured the graph takes that list over (``accel.graphs``)."""
    ptrs = tuple(0 if t is None else t.data_ptr() for t in tensors)
    # keyed by the stream too: a table uploaded on one stream is not yet visible to another
    key = (device.index, L.backend().stream_key(device), ptrs)
    return cached_table(key, lambda: upload(torch.tensor(ptrs, dtype=torch.int64), device))


def cached_table(key, build):
    """The small device tensor cached under ``key`` (which names the device and the stream), made
    by ``build()`` on a miss; past 512 entries the oldest half is dropped. The pointer tables and
    the top-k ks vectors live here (``use_backend`` clears it)."""
    hit = L._tables.get(key)
    if hit is not None:
        return hit[0]
    if len(L._tables) > 512:
        for k in list(L._tables)[:256]:          # the oldest half
            del L._tables[k]
    tab = build()
    L._tables[key] = (tab,)
    return tab


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``: on CUDA through pinned memory, without blocking the host
    (and kept alive with its pinned copy when a CUDA graph is being captured, see pointer_table)."""
    if device.type == "cpu":
        return host
    if device.type != "cuda":
        return host.to(device)
    pinned = host.pin_memory()
    out = pinned.to(device, non_blocking=True)
    if torch.cuda.is_current_stream_capturing():   # the graph replays this copy: keep both ends alive
        graph_tables.append((out, pinned))
    return out                  # (otherwise torch's pinned-memory allocator holds the block until the copy ran)


graph_tables: list = []       # (table, pinned host copy) built during a CUDA-graph capture


def chunk_plan_host(sizes: Sequence[int], chunk: Optional[int] = None) -> dict:
    """The chunk table (NumPy): chunk c covers elements [start[c], end[c]) of segment seg[c], in
    segment order then index order; ``first[c]`` is the index of the first chunk of seg[c].
    Every element of every segment lies in exactly one chunk; empty segments have none."""
    chunk = L.CHUNK if chunk is None else chunk
    seg, start, end, first = [], [], [], []
    for s, n in enumerate(sizes):
        n = int(n)
        lo = np.arange(0, n, chunk, dtype=np.int64)
        f = len(start)
        seg.extend([s] * lo.size)
        start.extend(lo.tolist())
        end.extend(np.minimum(lo + chunk, n).tolist())
        first.extend([f] * lo.size)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])[:-1].astype(np.int64)
    return {"seg": np.asarray(seg, np.int32), "start": np.asarray(start, np.int64),
            "end": np.asarray(end, np.int64), "first": np.asarray(first, np.int64),
            "offsets": offsets, "sizes": np.asarray(sizes, np.int64)}


def chunk_plan(sizes: Sequence[int], device: torch.device, flat: bool) -> dict:
    """Device chunk table for ``sizes``. ``flat=True``: start/end are offsets into one flat buffer
    (segmented kernels); ``flat=False``: offsets within each tensor (multi-tensor kernels)."""
    def build():
        h = chunk_plan_host(sizes)
        off = h["offsets"][h["seg"]] if flat and h["seg"].size else 0
        dev = lambda a: upload_array(a, device)  # noqa: E731
        return {"seg": dev(h["seg"]), "start": dev(h["start"] + off), "end": dev(h["end"] + off),
                "first": dev(h["first"]), "sizes": dev(h["sizes"]), "n_chunks": int(h["seg"].size)}
    return cached_plan((tuple(int(s) for s in sizes), device.index, L.backend().stream_key(device), flat, L.CHUNK), build)


def cached_plan(key, build) -> dict:
    """The launch plan cached under ``key`` (which names the device and the stream), made by
    ``build()`` on a miss; past 64 plans the oldest half is dropped. Every wrapper's chunk table
    lives here (``use_backend`` clears it)."""
    plan = L._plans.get(key)
    if plan is None:
        plan = build()
        if len(L._plans) > 64:
            for k in list(L._plans)[:32]:
                del L._plans[k]
        L._plans[key] = plan
    return plan


def upload_array(a, device: torch.device) -> torch.Tensor:
    """A host NumPy array on ``device`` (through ``upload``: pinned memory, no blocking)."""
    return upload(torch.from_numpy(np.ascontiguousarray(a)), device)


EW_CHUNK = 4096               # elements per chunk of the vectorised elementwise kernels (dst.cu, merge.cu's CIA)


def flat_out_plan(sizes: Sequence[int], device: torch.device, chunk: Optional[int] = None) -> dict:
    """Device chunk table (cached by the sizes) for a multi-tensor kernel whose outputs are laid end
    to end in one flat buffer: chunk c -> tensor ``chunk_tensor[c]``, elements [chunk_start[c],
    min(chunk_start[c] + chunk, sizes[t])) of that tensor; ``out_off[t]`` is the offset of tensor t
    in the flat output. ``chunk`` defaults to min(CHUNK, EW_CHUNK)."""
    chunk = min(L.CHUNK, EW_CHUNK) if chunk is None else int(chunk)

    def build():
        h = chunk_plan_host(sizes, chunk)
        dev = lambda a: upload_array(a, device)  # noqa: E731
        return {"chunk_tensor": dev(h["seg"]), "chunk_start": dev(h["start"]), "sizes": dev(h["sizes"]),
                "out_off": dev(h["offsets"]), "n_chunks": int(h["seg"].size), "chunk": chunk,
                "split": [int(x) for x in sizes]}
    return cached_plan(("flat_out", tuple(int(s) for s in sizes), device.index, L.backend().stream_key(device), chunk),
                       build)


def flat_out_launch(file: str, kernel: str, inputs: Sequence[dict], scalars) -> dict:
    """The elementwise multi-tensor kernels with one flat output (dst.cu's scores, merge.cu's CIA).
    ``inputs``: aligned dicts of validated tensors (name -> tensor; the first gives the names, the
    dtypes, the device and the sizes). One launch of ``{kernel}_{f32|f64}`` per dtype, with the
    arguments (a pointer table per dict, the flat output, out_off, chunk_tensor, chunk_start,
    sizes, n_chunks, chunk, ``*scalars(dtype)``). Returns the outputs laid out like the first dict:
    a FlatDict over one flat buffer when the tensors share a dtype, else a dict in its order."""
    names = list(inputs[0])
    inputs = [{n: d[n] if d[n].is_contiguous() else d[n].contiguous() for n in names} for d in inputs]  # no detach
    lead = inputs[0]
    out = {}
    dtypes = {t.dtype for t in lead.values()}
    for dtype in sorted(dtypes, key=str):
        sel = names if len(dtypes) == 1 else [n for n in names if lead[n].dtype == dtype]
        dev = lead[sel[0]].device
        plan = flat_out_plan([lead[n].numel() for n in sel], dev)
        flat = torch.empty(sum(plan["split"]), dtype=dtype, device=dev)
        if plan["n_chunks"]:
            L.launch(file, f"{kernel}_{L.SUFFIX[dtype]}", dev, plan["n_chunks"],
                   (*[L.arg(pointer_table([d[n] for n in sel], dev)) for d in inputs], L.arg(flat), L.arg(plan["out_off"]),
                    L.arg(plan["chunk_tensor"]), L.arg(plan["chunk_start"]), L.arg(plan["sizes"]),
                    np.int64(plan["n_chunks"]), np.int64(plan["chunk"]), *scalars(dtype)))
        part = as_flat_dict({n: lead[n] for n in sel}, flat)
        if len(sel) == len(names):
            return part
        out.update(part)
    return {n: out[n] for n in names}


def as_flat_dict(like: dict, flat: torch.Tensor):
    """The views of ``flat`` laid out like the tensors of ``like`` (name -> shape), as an
    accel.flat.FlatDict, so that the next operator finds the buffer without a copy."""
    from ..flat import layout_of             # accel.flat imports this package: import late
    return layout_of(like).split(flat)


def scalar(x: float, dtype: torch.dtype):
    """``x`` rounded to the kernel's dtype, as a NumPy scalar of that width (the reference's
    ``dtype.type(x)``)."""
    return np.float32(x) if dtype == torch.float32 else np.float64(x)


def multi_tensor_launch(file: str, kernel: str, tensor_lists: Sequence[Sequence], scalars: tuple,
                        sizes: Optional[Sequence[int]] = None) -> None:
    """One launch of a multi-tensor kernel (masked_sgd.cu, masked_adam.cu, guard.cu, dst.cu,
    merge.cu's CIA): one pointer table per list in ``tensor_lists`` (aligned lists; the first gives
    the sizes and the device unless ``sizes`` is given), then the chunk table (chunk_tensor,
    chunk_start, sizes, n_chunks, chunk_len), then ``scalars``."""
    first = next(t for ts in tensor_lists for t in ts if t is not None)
    dev = first.device
    if sizes is None:
        sizes = [t.numel() for t in tensor_lists[0]]
    plan = chunk_plan(sizes, dev, flat=False)
    tabs = [L.arg(pointer_table(ts, dev)) for ts in tensor_lists]
    args = (*tabs, L.arg(plan["seg"]), L.arg(plan["start"]), L.arg(plan["sizes"]), np.int64(plan["n_chunks"]),
            np.int64(L.CHUNK), *scalars)
    L.launch(file, kernel, dev, plan["n_chunks"], args)
