"""CUDA C kernels for the accel hot paths, loaded with CuPy, run on PyTorch tensors (issue 6).

The sources are the ``*.cu`` files next to this module; each file's header comment says what its
kernels compute and why they are correct. They are compiled once per process and device with
``cupy.RawModule`` (NVRTC; CuPy also keeps its on-disk kernel cache), and launched

* on PyTorch tensors without copies: arguments go through DLPack (``cupy.from_dlpack``; bool
  tensors as their uint8 view), tables of many tensors as their raw ``data_ptr()`` values;
* on PyTorch's current CUDA stream (``torch.cuda.current_stream().cuda_stream`` wrapped as a
  ``cupy.cuda.ExternalStream``), so they are ordered with the surrounding torch work and nothing
  synchronizes.

They are used automatically when the tensors are on CUDA, of a supported dtype (float32 /
float64), and CuPy is importable; otherwise the accel operators keep their torch implementation,
which is the CPU path and the fallback. ``TWINSPARSE_NO_CUDA_KERNELS=1`` switches them off.
Every call site guards the kernel branch with ``kernels.on_device(tensor)`` (``tensor.is_cuda``)
first, so on CPU nothing here runs and CuPy is never imported. A test can swap the backend
(``use_backend``): ``conformance.simt`` runs these same sources on the CPU under a SIMT emulator,
through this same host code.

The functions below take inputs that the accel operators have already validated (shapes, counts,
finiteness); they are not a public API of their own. ``require()`` turns a silent fallback into an
error (the conformance registry's kernel entries use it to prove the kernel path ran).

Hot paths (the file, its kernels, the accel call site):

=====================  ==================================  =========================================
masked_sgd.cu          masked_sgd_{f32,f64}                accel.optim.masked_sgd_step(_all),
                                                           Sparsifier step with torch.optim.SGD
topk.cu                topk_{hist,tie_count,select}_*,     accel.topk (topk_mask, per-layer,
                       topk_scan                           global, select_within),
                                                           accel.dst drop / grow / drop_and_grow
nm_mask.cu             nm_mask_{m4,m8,any}_*               accel.masks.nm_mask
dst.cu                 dst_ee_scores_*                     accel.dst.dst_ee_scores
merge.cu               superpose_cia_*,                    accel.merge.superpose_cia,
                       umg_channel_scores_*                accel.cocktail_ops.umg_channel_scores
=====================  ==================================  =========================================
"""
from __future__ import annotations

import contextlib
import math
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
    "topk.cu": ("topk_hist_f32", "topk_hist_f64", "topk_scan", "topk_tie_count_f32", "topk_tie_count_f64",
                "topk_select_f32", "topk_select_f64"),
    "nm_mask.cu": ("nm_mask_m4_f32", "nm_mask_m4_f64", "nm_mask_m8_f32", "nm_mask_m8_f64",
                   "nm_mask_any_f32", "nm_mask_any_f64"),
    "dst.cu": ("dst_ee_scores_f32", "dst_ee_scores_f64"),
    "merge.cu": ("superpose_cia_f32", "superpose_cia_f64", "umg_channel_scores_f32", "umg_channel_scores_f64"),
}
NVRTC_OPTIONS = ("--std=c++17",)
DISABLE_ENV = "TWINSPARSE_NO_CUDA_KERNELS"
DTYPES = (torch.float32, torch.float64)
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

THREADS = 256                 # threads per block of every kernel (topk_scan requires exactly 256)
CHUNK = 16384                 # elements per block-chunk of the multi-tensor / segmented kernels
MAX_BLOCKS = 1 << 20          # grid cap; every kernel walks its work with a grid-stride loop
RADIX_BITS = 11               # must match topk.cu
KEY_BITS = {torch.float32: 32, torch.float64: 64}

__all__ = ["available", "usable", "on_device", "use_backend", "CupyBackend", "require", "unavailable_reason",
           "radix_passes", "chunk_plan",
           "topk_select", "topk_mask", "nm_mask", "masked_sgd", "masked_sgd_step", "masked_sgd_step_all",
           "sgd_optimizer_step", "dst_ee_scores", "superpose_cia", "umg_channel_scores", "launches"]

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
    PyTorch's current stream, tensors handed over through DLPack. The default backend."""

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
        cp = _import_cupy()
        with cp.cuda.Device(t.device.index), _stream(t.device):   # DLPack hand-over on the same stream
            return cp.from_dlpack(t)

    def launch(self, file: str, kernel: str, device: torch.device, grid: int, block: int, args: tuple) -> None:
        cp = _import_cupy()
        fn = _function(file, kernel, device)
        with cp.cuda.Device(device.index), _stream(device):
            fn((grid,), (block,), args)


_backend = CupyBackend()


@contextlib.contextmanager
def use_backend(b):
    """Launch the kernels through ``b`` inside this block (conformance.simt.SimtBackend runs the
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


def _launch(file: str, kernel: str, device: torch.device, grid: int, args: tuple) -> None:
    """Launch ``kernel`` on the backend (CuPy: torch's current stream of ``device``); grid-stride
    kernels take any grid."""
    grid = int(max(1, min(grid, MAX_BLOCKS)))
    _backend.launch(file, kernel, device, grid, THREADS, args)
    launches["count"] += 1


def _arg(t: Optional[torch.Tensor]):
    """A kernel argument for a tensor: a zero-copy view for the backend (CuPy: through DLPack;
    bool as uint8), or a null pointer for None."""
    if t is None:
        return np.uint64(0)
    t = t.detach()                           # DLPack refuses tensors that require grad
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return _backend.arg(t)


def _pointer_table(tensors: Sequence[Optional[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Device int64 array of raw data pointers (0 for None), cached by the pointer values."""
    ptrs = tuple(0 if t is None else (t.view(torch.uint8) if t.dtype == torch.bool else t).data_ptr()
                 for t in tensors)
    # keyed by the stream too: a table uploaded on one stream is not yet visible to another
    key = (device.index, _backend.stream_key(device), ptrs)
    tab = _tables.get(key)
    if tab is None:
        if len(_tables) > 256:
            _tables.clear()
        tab = torch.tensor(ptrs, dtype=torch.int64).to(device)
        _tables[key] = tab
    return tab


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
    key = (tuple(int(s) for s in sizes), device.index, _backend.stream_key(device), flat, CHUNK)
    plan = _plans.get(key)
    if plan is None:
        h = chunk_plan_host(sizes)
        off = h["offsets"][h["seg"]] if flat and h["seg"].size else 0
        dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        plan = {"seg": dev(h["seg"]), "start": dev(h["start"] + off), "end": dev(h["end"] + off),
                "first": dev(h["first"]), "sizes": dev(h["sizes"]), "n_chunks": int(h["seg"].size)}
        if len(_plans) > 64:
            _plans.clear()
        _plans[key] = plan
    return plan


def _scalar(x: float, dtype: torch.dtype):
    """``x`` rounded to the kernel's dtype, as a NumPy scalar of that width (the reference's
    ``dtype.type(x)``)."""
    return np.float32(x) if dtype == torch.float32 else np.float64(x)


def _multi_tensor_launch(file: str, kernel: str, tensor_lists: Sequence[Sequence], scalars: tuple) -> None:
    """One launch of a multi-tensor kernel (masked_sgd.cu, dst.cu, merge.cu's CIA): one pointer
    table per list in ``tensor_lists`` (aligned lists; the first gives the sizes and the device),
    then the chunk table (chunk_tensor, chunk_start, sizes, n_chunks, chunk_len), then ``scalars``."""
    dev = tensor_lists[0][0].device
    plan = chunk_plan([t.numel() for t in tensor_lists[0]], dev, flat=False)
    tabs = [_arg(_pointer_table(ts, dev)) for ts in tensor_lists]
    args = (*tabs, _arg(plan["seg"]), _arg(plan["start"]), _arg(plan["sizes"]), np.int64(plan["n_chunks"]),
            np.int64(CHUNK), *scalars)
    _launch(file, kernel, dev, plan["n_chunks"], args)


# ----------------------------------------------------------------------------- top-k (topk.cu)

def radix_passes(dtype: torch.dtype) -> list[tuple[int, int]]:
    """(shift, width) of each radix-select pass, most significant digit first."""
    bits = KEY_BITS[dtype]
    out, hi = [], bits
    while hi > 0:
        width = min(RADIX_BITS, hi)
        out.append((hi - width, width))
        hi -= width
    return out


def topk_select(flat_scores: torch.Tensor, sizes: Sequence[int], ks: Sequence[int],
                candidates: Optional[torch.Tensor] = None, invert: bool = False,
                or_with: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Segmented exact top-k (topk.cu): for each consecutive segment of the 1-D ``flat_scores``,
    the ``ks[i]`` largest scores among the candidates (``candidates`` True, or False when
    ``invert``; every position when None), ties -> smaller index; OR-ed with ``or_with`` when
    given. Inputs validated by the caller (0 <= k <= candidates of the segment, finite scores)."""
    if not usable(flat_scores, candidates, or_with):
        raise RuntimeError(f"the CUDA top-k kernel cannot run: {unavailable_reason() or 'unsupported tensors'}")
    flat_scores = flat_scores.reshape(-1).contiguous()
    candidates = None if candidates is None else candidates.reshape(-1).contiguous()
    or_with = None if or_with is None else or_with.reshape(-1).contiguous()
    dev, dtype, n = flat_scores.device, flat_scores.dtype, flat_scores.numel()
    out = torch.empty(n, dtype=torch.bool, device=dev)
    if n == 0:
        return out
    sfx = _SUFFIX[dtype]
    plan = chunk_plan(sizes, dev, flat=True)
    nseg, nch = len(sizes), plan["n_chunks"]
    hist = torch.zeros(nseg << RADIX_BITS, dtype=torch.int64, device=dev)   # u64 bins, re-zeroed by topk_scan
    prefix = torch.zeros(nseg, dtype=torch.int64, device=dev)
    krem = torch.tensor([int(k) for k in ks], dtype=torch.int64).to(dev)
    s, c, o = _arg(flat_scores), _arg(candidates), _arg(or_with)
    tab = (_arg(plan["seg"]), _arg(plan["start"]), _arg(plan["end"]), np.int64(nch))
    P, K, H = _arg(prefix), _arg(krem), _arg(hist)
    inv = np.int32(1 if invert else 0)
    for shift, width in radix_passes(dtype):
        _launch("topk.cu", f"topk_hist_{sfx}", dev, nch, (s, c, inv, *tab, P, K, H, np.int32(shift), np.int32(width)))
        _launch("topk.cu", "topk_scan", dev, nseg, (H, P, K, np.int32(nseg), np.int32(shift)))
    ties = torch.empty(nch, dtype=torch.int64, device=dev)
    _launch("topk.cu", f"topk_tie_count_{sfx}", dev, nch, (s, c, inv, *tab, P, K, _arg(ties)))
    excl = torch.cumsum(ties, 0) - ties                      # ties in earlier chunks (all segments)
    base = (excl - excl[plan["first"]]).contiguous()         # ... of the same segment only
    _launch("topk.cu", f"topk_select_{sfx}", dev, nch, (s, c, inv, o, *tab, P, K, _arg(base), _arg(out)))
    return out


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    flat = scores.reshape(-1)
    return topk_select(flat, [flat.numel()], [k]).reshape(scores.shape)


# ----------------------------------------------------------------------------- N:M (nm_mask.cu)

def nm_mask(w: torch.Tensor, n: int, m: int, axis: str) -> torch.Tensor:
    """Validated w (2-D / 4-D, group axis divisible by m): the N:M keep mask (nm_mask.cu)."""
    if not usable(w):
        raise RuntimeError(f"the CUDA N:M kernel cannot run: {unavailable_reason() or 'unsupported tensor'}")
    out = torch.empty(w.shape, dtype=torch.bool, device=w.device)
    if w.numel() == 0:
        return out
    w = w.contiguous()
    o = w.shape[0]
    if axis == "rows" or w.dim() == 2:
        row, stride = w.numel() // o, 1
    else:
        row, stride = w.shape[1], w.shape[2] * w.shape[3]
    gpr = row // m
    n_groups = o * gpr * stride
    sfx = _SUFFIX[w.dtype]
    grid = math.ceil(n_groups / THREADS)
    if m in (4, 8):
        args = (_arg(w), _arg(out), np.int64(n_groups), np.int32(n), np.int64(gpr), np.int64(stride))
        _launch("nm_mask.cu", f"nm_mask_m{m}_{sfx}", w.device, grid, args)
    else:
        args = (_arg(w), _arg(out), np.int64(n_groups), np.int32(n), np.int32(m), np.int64(gpr), np.int64(stride))
        _launch("nm_mask.cu", f"nm_mask_any_{sfx}", w.device, grid, args)
    return out


# ----------------------------------------------------------------------------- masked SGD (masked_sgd.cu)

def masked_sgd(w_in, w_out, g, masks, buf_in, buf_out, *, lr, momentum, weight_decay, dampening, nesterov,
               mask_grad: bool) -> None:
    """One launch over lists of same-dtype tensors (masks / buf_in entries may be None; buf_out
    entries are None exactly when momentum == 0). See masked_sgd.cu for the arithmetic."""
    if not w_in:
        return
    dtype = w_in[0].dtype
    hp = (_scalar(lr, dtype), _scalar(momentum, dtype), _scalar(weight_decay, dtype), _scalar(1 - dampening, dtype))
    _multi_tensor_launch("masked_sgd.cu", f"masked_sgd_{_SUFFIX[dtype]}", (w_in, w_out, g, masks, buf_in, buf_out),
                         (*hp, np.int32(bool(nesterov)), np.int32(bool(mask_grad))))


def _sgd_inputs_ok(w, g, mask, buf) -> bool:
    return (mask.dtype == torch.bool and g.dtype == w.dtype and (buf is None or buf.dtype == w.dtype)
            and usable(w, g, mask, buf))


def masked_sgd_step(w, g, mask, buf=None, *, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
    """Functional form (new tensors; inputs untouched), or None when the kernel cannot take these
    inputs (the caller then runs torch)."""
    return masked_sgd_step_all({"w": w}, {"w": g}, {"w": mask}, {"w": buf}, lr=lr, momentum=momentum,
                               weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, single=True)


def masked_sgd_step_all(weights, grads, masks, bufs, *, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
                        nesterov=False, single=False):
    """Whole dict in one launch per dtype; returns (new weights, new bufs) like the torch twin (or
    a (new_w, new_buf) pair when ``single``), or None when some input cannot go to the kernel."""
    names = list(weights)
    if not all(_sgd_inputs_ok(weights[n], grads[n], masks[n], bufs.get(n)) for n in names):
        return None
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    weights, grads = {n: c(weights[n]) for n in names}, {n: c(grads[n]) for n in names}
    masks, bufs = {n: c(masks[n]) for n in names}, {n: c(bufs.get(n)) for n in names}
    new = lambda n: torch.empty(weights[n].shape, dtype=weights[n].dtype, device=weights[n].device)  # noqa: E731
    out_w = {n: new(n) for n in names}
    out_b = {n: (new(n) if momentum != 0 else None) for n in names}
    for dtype in {weights[n].dtype for n in names}:
        sel = [n for n in names if weights[n].dtype == dtype]
        masked_sgd([weights[n] for n in sel], [out_w[n] for n in sel], [grads[n] for n in sel],
                   [masks[n] for n in sel], [bufs.get(n) if momentum != 0 else None for n in sel],
                   [out_b[n] for n in sel], lr=lr, momentum=momentum, weight_decay=weight_decay,
                   dampening=dampening, nesterov=nesterov, mask_grad=False)
    if single:
        return out_w["w"], out_b["w"]
    return out_w, out_b


def sgd_optimizer_step(optimizer, masks_by_param: dict, mask_grad: bool = True) -> bool:
    """Do ``optimizer.step()`` of a plain ``torch.optim.SGD`` with the masks applied, fused: one
    launch per (param group, dtype) instead of the gradient masking + foreach SGD launches.

    ``masks_by_param`` maps id(param) -> bool mask (params without one are dense). Same result
    as masking the gradients in place and calling ``optimizer.step()``: weights, momentum buffers
    (created on the first step as PyTorch does) and, with ``mask_grad``, the masked gradients.
    Returns False, having changed nothing, when anything is outside what the kernel reproduces
    (another optimizer class, maximize, differentiable, a tensor lr, step hooks, sparse gradients,
    CPU tensors, other dtypes); the caller then runs the torch path."""
    if type(optimizer) is not torch.optim.SGD or not available():
        return False
    from torch.optim import optimizer as _opt
    if (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
            or _opt._global_optimizer_pre_hooks or _opt._global_optimizer_post_hooks):
        return False
    work = []
    for group in optimizer.param_groups:
        if group.get("maximize") or group.get("differentiable") or isinstance(group["lr"], torch.Tensor):
            return False
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            m = masks_by_param.get(id(p))
            g = p.grad
            if g.is_sparse or g.dtype != p.dtype or g.shape != p.shape:
                return False
            if m is not None and (m.dtype != torch.bool or m.shape != p.shape or m.device != p.device):
                return False
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None and (buf.dtype != p.dtype or buf.shape != p.shape):
                return False
            if not usable(p, g, m, buf) or not all(t is None or t.is_contiguous() for t in (p, g, m, buf)):
                return False
        if params:
            work.append((group, params))
    with torch.no_grad():
        for group, params in work:
            momentum = group["momentum"]
            for dtype in {p.dtype for p in params}:
                ps = [p for p in params if p.dtype == dtype]
                bufs_in = [optimizer.state[p].get("momentum_buffer") if momentum != 0 else None for p in ps]
                bufs_out = [(b if b is not None else torch.empty_like(p)) if momentum != 0 else None
                            for p, b in zip(ps, bufs_in)]
                masked_sgd([p.data for p in ps], [p.data for p in ps], [p.grad for p in ps],
                           [masks_by_param.get(id(p)) for p in ps], bufs_in, bufs_out,
                           lr=group["lr"], momentum=momentum, weight_decay=group["weight_decay"],
                           dampening=group["dampening"], nesterov=group["nesterov"], mask_grad=mask_grad)
                if momentum != 0:
                    for p, b in zip(ps, bufs_out):
                        optimizer.state[p]["momentum_buffer"] = b
    if getattr(optimizer.step, "_wrapped_by_lr_sched", False):
        optimizer._opt_called = True        # what the LR scheduler's wrapper of step() records
    return True


# ----------------------------------------------------------------------------- DST-EE (dst.cu)

def dst_ee_scores(grads: dict, counters: dict, t: int, c: float, eps: float, form: str):
    """Validated inputs: the [EE] Eq. 1 scores for every layer in one launch per dtype, or None
    when some input cannot go to the kernel."""
    names = list(grads)
    if not all(counters[n].dtype == torch.int64 and counters[n].device == grads[n].device and usable(grads[n])
               for n in names):
        return None
    grads = {n: grads[n].contiguous() for n in names}
    counters = {n: counters[n].contiguous() for n in names}
    out = {n: torch.empty(grads[n].shape, dtype=grads[n].dtype, device=grads[n].device) for n in names}
    for dtype in {grads[n].dtype for n in names}:
        sel = [n for n in names if grads[n].dtype == dtype]
        _multi_tensor_launch("dst.cu", f"dst_ee_scores_{_SUFFIX[dtype]}",
                             [[d[n] for n in sel] for d in (grads, counters, out)],
                             (_scalar(c, dtype), _scalar(math.log(t), dtype), _scalar(eps, dtype),
                              np.int32(0 if form == "eq1" else 1)))
    return out


# ----------------------------------------------------------------------------- merge (merge.cu)

def superpose_cia(avg: dict, ticket: dict, t: int):
    """Validated, alike dicts: ((t - 1) avg + ticket) / t for every tensor, one launch per dtype;
    None when some tensor cannot go to the kernel (integer tensors, dtype mismatch)."""
    names = list(avg)
    if not all(avg[n].dtype == ticket[n].dtype and usable(avg[n], ticket[n]) for n in names):
        return None
    avg = {n: avg[n].contiguous() for n in names}
    ticket = {n: ticket[n].contiguous() for n in names}
    out = {n: torch.empty(avg[n].shape, dtype=avg[n].dtype, device=avg[n].device) for n in names}
    for dtype in {avg[n].dtype for n in names}:
        sel = [n for n in names if avg[n].dtype == dtype]
        _multi_tensor_launch("merge.cu", f"superpose_cia_{_SUFFIX[dtype]}",
                             [[d[n] for n in sel] for d in (avg, ticket, out)],
                             (_scalar(t - 1, dtype), _scalar(t, dtype)))
    return out


def umg_channel_scores(w: torch.Tensor, mask_u: torch.Tensor, mask_nm: Optional[torch.Tensor], beta: float):
    """Validated inputs: the UMG score per output channel, or None when the kernel cannot take them."""
    if not usable(w, mask_u, mask_nm):
        return None
    o = w.shape[0]
    score = torch.empty(o, dtype=w.dtype, device=w.device)
    if o == 0:
        return score
    w, mask_u = w.contiguous(), mask_u.contiguous()
    mask_nm = None if mask_nm is None else mask_nm.contiguous()
    row = w.numel() // o
    args = (_arg(w), _arg(mask_u), _arg(mask_nm), _arg(score), np.int64(o), np.int64(row),
            _scalar(beta, w.dtype), _scalar(1.0 - beta, w.dtype))
    _launch("merge.cu", f"umg_channel_scores_{_SUFFIX[w.dtype]}", w.device, o, args)
    return score
