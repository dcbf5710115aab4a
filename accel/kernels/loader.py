"""The kernel loader: backends, availability, compilation, launches, pointer and chunk tables.

The per-file wrappers (``topk.py``, ``nm.py``, ``optim.py``, ``dst.py``, ``merge.py`` next to
this file) build their arguments with the helpers here and launch through ``launch``. See the
package docstring for what runs where.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

KERNEL_DIR = Path(__file__).resolve().parent
# every kernel this loader launches, by source file (tests/test_kernels_compile.py checks each
# source compiles for sm_80 and sm_90 and defines these names)
KERNELS = {
    "masked_sgd.cu": ("masked_sgd_f32", "masked_sgd_f64"),
    "masked_adam.cu": ("masked_adam_f32", "masked_adam_f64"),
    "guard.cu": ("nonfinite_check_f32", "nonfinite_check_f64"),
    "topk.cu": ("topk_hist_f32", "topk_hist_f64", "topk_filter_f32", "topk_filter_f64", "topk_refine_f32",
                "topk_refine_f64", "topk_ties_f32", "topk_ties_f64", "topk_resolve_f32", "topk_resolve_f64"),
    "nm_mask.cu": ("nm_masks_f32", "nm_masks_f64"),
    "dst.cu": ("dst_ee_scores_f32", "dst_ee_scores_f64"),
    "merge.cu": ("superpose_cia_f32", "superpose_cia_f64", "umg_channel_scores_f32", "umg_channel_scores_f64"),
}
NVRTC_OPTIONS = ("--std=c++17",)
DISABLE_ENV = "TWINSPARSE_NO_CUDA_KERNELS"
DTYPES = (torch.float32, torch.float64)
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

THREADS = 256                 # threads per block of every kernel (topk_scan requires exactly 256)
CHUNK = 16384                 # elements per block-chunk of the multi-tensor / segmented kernels
MAX_BLOCKS = 1 << 20          # grid cap; every kernel walks its work with a grid-stride loop
RADIX_BITS = 11               # must match topk.cu
KEY_BITS = {torch.float32: 32, torch.float64: 64}

__all__ = ["available", "usable", "on_device", "use_backend", "CupyBackend", "require", "unavailable_reason",
           "chunk_plan", "chunk_plan_host", "pointer_table", "launch", "arg", "scalar", "multi_tensor_launch",
           "launches", "source", "KERNELS", "KERNEL_DIR", "DISABLE_ENV", "DTYPES", "SUFFIX", "THREADS", "CHUNK",
           "MAX_BLOCKS", "graph_tables", "sm_count", "upload", "upload_array", "flat_out_plan", "flat_out_launch",
           "as_flat_dict", "cached_plan", "cached_table", "check_usable", "EW_CHUNK"]

_local = threading.local()
_cupy = None                  # the cupy module once imported; False when the import failed
_cupy_error = ""
_modules: dict = {}
_functions: dict = {}
_streams: dict = {}
_tables: dict = {}
_plans: dict = {}
launches = {"count": 0}       # kernel launches issued by this process (tests and the bench read it)


# ----------------------------------------------------------------------------- backends

class CupyBackend:
    """Launches on a CUDA device: NVRTC-compiled ``cupy.RawModule`` per source and device, on
    PyTorch's current stream; tensors are passed as their raw device pointers (the kernels index
    them as flat arrays; the wrappers make them contiguous or check that they are dense). The
    default backend."""

    device_desc = "a CUDA device"

    def unavailable_reason(self) -> Optional[str]:
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        if _import_cupy() is None:
            return f"CuPy is not importable ({_cupy_error}); install twinsparse[cuda12] or twinsparse[cuda13]"
        return None

    def on_device(self, t: torch.Tensor) -> bool:
        return t.is_cuda

    def stream_key(self, device: torch.device):
        return torch.cuda.current_stream(device).cuda_stream

    def arg(self, t: torch.Tensor):
        return np.uint64(t.data_ptr())         # a pointer parameter is 8 bytes passed by value

    def sm_count(self, device: torch.device) -> int:
        """The multiprocessors of ``device`` (persistent grids are sized by it)."""
        n = _sm_counts.get(device.index)
        if n is None:
            n = _sm_counts[device.index] = int(torch.cuda.get_device_properties(device).multi_processor_count)
        return n

    def launch(self, file: str, kernel: str, device: torch.device, grid: int, block: int, args: tuple) -> None:
        cp = _import_cupy()
        fn = _function(file, kernel, device)
        with cp.cuda.Device(device.index), _stream(device):
            fn((grid,), (block,), args)


_backend = CupyBackend()
_sm_counts: dict = {}


def sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` as the current backend sees them (a backend without the
    notion, 8): the kernels with a persistent grid launch a fixed number of blocks per one."""
    fn = getattr(_backend, "sm_count", None)
    return int(fn(device)) if fn is not None else 8


@contextlib.contextmanager
def use_backend(b):
    """Launch the kernels through ``b`` inside this block (accel.kernels.simt.SimtBackend runs the
    same sources on the CPU under a SIMT emulator; call sites then dispatch CPU tensors to them)."""
    global _backend
    prev, _backend = _backend, b
    _plans.clear()
    _tables.clear()
    try:
        yield b
    finally:
        _backend = prev
        _plans.clear()
        _tables.clear()


def backend():
    """The backend kernels launch through now (``CupyBackend``, or a test's ``use_backend``)."""
    return _backend


# ----------------------------------------------------------------------------- availability

def _import_cupy():
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            import cupy  # noqa: F401  (optional dependency: pip install twinsparse[cuda12] / [cuda13])
            _cupy = cupy
        except Exception as e:  # ImportError, or a CuPy that cannot find its CUDA libraries
            _cupy, _cupy_error = False, f"{type(e).__name__}: {e}"
    return _cupy or None


def unavailable_reason() -> Optional[str]:
    """None when the kernels can run in this process, else why not (for messages and skips)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return f"switched off by {DISABLE_ENV}"
    return _backend.unavailable_reason()


def available() -> bool:
    return unavailable_reason() is None


def on_device(t: torch.Tensor) -> bool:
    """Whether ``t`` lives where the kernels run (a CUDA tensor, for the default backend): the
    call sites' cheap first test before ``usable``."""
    return _backend.on_device(t)


@contextlib.contextmanager
def require():
    """Inside this block a kernel branch that cannot run raises instead of falling back to torch."""
    prev = getattr(_local, "require", False)
    _local.require = True
    try:
        yield
    finally:
        _local.require = prev


def usable(*tensors: torch.Tensor, dtypes=DTYPES) -> bool:
    """True when every tensor is on the kernels' device (CUDA) and of ``dtypes`` (float32 /
    float64) or a bool mask, and the kernels are available. Call sites test ``on_device`` first.
    (The wrappers below make their inputs contiguous, or refuse non-contiguous in-place operands.)"""
    reason = None
    for t in tensors:
        if t is None:
            continue
        if not _backend.on_device(t):
            reason = f"a tensor is not on {_backend.device_desc}"
        elif t.dtype not in dtypes and t.dtype != torch.bool:
            reason = f"dtype {t.dtype} has no kernel (only {[str(d) for d in dtypes]} and bool masks)"
        if reason:
            break
    if reason is None:
        reason = unavailable_reason()
    if reason is None:
        return True
    if getattr(_local, "require", False):
        raise RuntimeError(f"a CUDA kernel was required but cannot run: {reason}")
    return False


def check_usable(what: str, *tensors: Optional[torch.Tensor]) -> None:
    """For a wrapper that has no torch fallback of its own (top-k, N:M): raise unless ``usable``."""
    if not usable(*tensors):
        raise RuntimeError(f"the CUDA {what} kernel cannot run: {unavailable_reason() or 'unsupported tensors'}")


# ----------------------------------------------------------------------------- loading and launching

_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"/\\]+\.cuh)"[ \t]*$', re.M)


def source(name: str) -> str:
    """The text NVRTC compiles for ``name``: the .cu file with each ``#include "x.cuh"`` of a
    header next to it replaced by that header's text (once per header). NVRTC then needs no
    include path, and CuPy's kernel cache, keyed by this text, sees an edit of a header."""
    seen: set = set()

    def inline(m):
        header = m.group(1)
        if header in seen:
            return f"// {header}: inlined above"
        seen.add(header)
        path = KERNEL_DIR / header
        if not path.is_file():
            raise FileNotFoundError(f"{name} includes {header!r}, which is not in {KERNEL_DIR}")
        return f"// ---- {header} (inlined by accel.kernels.source)\n{path.read_text()}\n// ---- end of {header}"

    return _LOCAL_INCLUDE.sub(inline, (KERNEL_DIR / name).read_text())


def _function(file: str, kernel: str, device: torch.device):
    """The compiled kernel (one RawModule per source file and device, compiled on first use)."""
    fkey = (file, kernel, device.index)
    fn = _functions.get(fkey)
    if fn is None:
        cp = _import_cupy()
        key = (file, device.index)
        with cp.cuda.Device(device.index):
            mod = _modules.get(key)
            if mod is None:
                mod = _modules[key] = cp.RawModule(code=source(file), options=NVRTC_OPTIONS)
            fn = _functions[fkey] = mod.get_function(kernel)
    return fn


def _stream(device: torch.device):
    cp = _import_cupy()
    ptr = torch.cuda.current_stream(device).cuda_stream
    key = (device.index, ptr)
    s = _streams.get(key)
    if s is None:
        try:
            s = cp.cuda.ExternalStream(ptr, device.index)
        except TypeError:                       # CuPy < 13 has no device_id argument
            s = cp.cuda.ExternalStream(ptr)
        _streams[key] = s
    return s


def launch(file: str, kernel: str, device: torch.device, grid: int, args: tuple) -> None:
    """Launch ``kernel`` on the backend (CuPy: torch's current stream of ``device``); grid-stride
    kernels take any grid."""
    grid = int(max(1, min(grid, MAX_BLOCKS)))
    _backend.launch(file, kernel, device, grid, THREADS, args)
    launches["count"] += 1


def arg(t: Optional[torch.Tensor]):
    """A kernel argument for a tensor: its raw pointer for CuPy, the tensor itself for the SIMT
    emulator (which checks it: a contiguous CPU tensor), or a null pointer for None."""
    if t is None:
        return np.uint64(0)
    t = t.detach()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return _backend.arg(t)


def pointer_table(tensors: Sequence[Optional[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Device int64 array of raw data pointers (0 for None), cached by the pointer values.

    On CUDA the table is uploaded from pinned host memory without blocking the host. A table built
    while a CUDA graph is being captured is also kept in ``graph_tables`` (with its host copy), so
    that the graph, which replays the upload and then reads the table, never sees freed memory;
    the code that captured the graph takes that list over (``accel.graphs``)."""
    ptrs = tuple(0 if t is None else t.data_ptr() for t in tensors)
    # keyed by the stream too: a table uploaded on one stream is not yet visible to another
    key = (device.index, _backend.stream_key(device), ptrs)
    return cached_table(key, lambda: upload(torch.tensor(ptrs, dtype=torch.int64), device))


def cached_table(key, build):
    """The small device tensor cached under ``key`` (which names the device and the stream), made
    by ``build()`` on a miss; past 512 entries the oldest half is dropped. The pointer tables and
    the top-k ks vectors live here (``use_backend`` clears it)."""
    hit = _tables.get(key)
    if hit is not None:
        return hit[0]
    if len(_tables) > 512:
        for k in list(_tables)[:256]:          # the oldest half
            del _tables[k]
    tab = build()
    _tables[key] = (tab,)
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
    chunk = CHUNK if chunk is None else chunk
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
    return cached_plan((tuple(int(s) for s in sizes), device.index, _backend.stream_key(device), flat, CHUNK), build)


def cached_plan(key, build) -> dict:
    """The launch plan cached under ``key`` (which names the device and the stream), made by
    ``build()`` on a miss; past 64 plans the oldest half is dropped. Every wrapper's chunk table
    lives here (``use_backend`` clears it)."""
    plan = _plans.get(key)
    if plan is None:
        plan = build()
        if len(_plans) > 64:
            for k in list(_plans)[:32]:
                del _plans[k]
        _plans[key] = plan
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
    chunk = min(CHUNK, EW_CHUNK) if chunk is None else int(chunk)

    def build():
        h = chunk_plan_host(sizes, chunk)
        dev = lambda a: upload_array(a, device)  # noqa: E731
        return {"chunk_tensor": dev(h["seg"]), "chunk_start": dev(h["start"]), "sizes": dev(h["sizes"]),
                "out_off": dev(h["offsets"]), "n_chunks": int(h["seg"].size), "chunk": chunk,
                "split": [int(x) for x in sizes]}
    return cached_plan(("flat_out", tuple(int(s) for s in sizes), device.index, _backend.stream_key(device), chunk),
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
            launch(file, f"{kernel}_{SUFFIX[dtype]}", dev, plan["n_chunks"],
                   (*[arg(pointer_table([d[n] for n in sel], dev)) for d in inputs], arg(flat), arg(plan["out_off"]),
                    arg(plan["chunk_tensor"]), arg(plan["chunk_start"]), arg(plan["sizes"]),
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
    tabs = [arg(pointer_table(ts, dev)) for ts in tensor_lists]
    args = (*tabs, arg(plan["seg"]), arg(plan["start"]), arg(plan["sizes"]), np.int64(plan["n_chunks"]),
            np.int64(CHUNK), *scalars)
    launch(file, kernel, dev, plan["n_chunks"], args)
