"""The kernel loader: backends, availability, compilation and launches (the tables that let one
launch cover many tensors are in tables.py).

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
from typing import Optional

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

__all__ = ["available", "usable", "on_device", "use_backend", "CupyBackend", "require", "unavailable_reason", "launch", "arg", "launches", "source", "KERNELS", "KERNEL_DIR", "DISABLE_ENV", "DTYPES", "SUFFIX", "THREADS", "CHUNK", "MAX_BLOCKS", "sm_count", "check_usable"]

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
