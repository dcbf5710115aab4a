"""A SIMT emulator that runs the CUDA sources of accel/kernels on the CPU, for machines without a GPU.

The ``.cu`` files are compiled unchanged by the host C++ compiler against ``simt.h`` (the device
vocabulary they use) and linked with ``runtime.cpp`` (a scheduler that runs every CUDA thread of a
block as a coroutine, with real ``__syncthreads`` barriers and warp collectives); see simt.h for
the execution model and what is checked. ``SimtBackend`` plugs into ``accel.kernels.use_backend``,
so the kernels are driven by the loader's own host code (chunk tables, pointer tables, radix
passes, scalar rounding, argument order) and reached through the accel operators' own dispatch,
with CPU tensors standing in for device memory::

    from twinsparse.accel import kernels
    from twinsparse.accel.kernels.simt import SimtBackend
    with kernels.use_backend(SimtBackend(seed=1)):
        mask = accel.topk.topk_mask(scores, k)     # ran topk.cu's kernels, emulated

``Emulator(dir, {file: [kernel, ...]})`` builds any other set of sources (tests build mutated
kernels and probes with it) and launches kernels directly.

What this proves: the kernels' logic, their tie handling, their block / warp cooperation under
any thread and block order (``seed``), grid-stride loops (``max_blocks``), and that every argument
the loader passes has the size and kind of the kernel's parameter (checked per launch against the
signature recorded from the C++ declaration: CuPy would pass a wrong-width scalar on silently).
What it cannot: NVRTC compilation (``tests/test_kernels_compile.py`` compiles with nvcc instead),
device memory bounds (compute-sanitizer), the GPU memory model, timing.

The shared library is built on first use with ``c++`` (``$CXX``) into a cache directory keyed by
the hash of every source, so an edited kernel is rebuilt. ``unavailable_reason()`` says why it
cannot be built (no compiler, a compile error).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from twinsparse.accel import kernels

HERE = Path(__file__).resolve().parent
CXXFLAGS = ["-std=c++17", "-O1", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wno-unknown-pragmas",
            "-Wno-unused-function"]
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]
SANITIZE_ENV = "TWINSPARSE_SIMT_SANITIZE"     # =address: kernels built with AddressSanitizer (see asan_command)
_lock = threading.Lock()
_lib = None
_error: Optional[str] = None

# the NumPy scalar type the loader must pass for each parameter kind of a kernel signature
_SCALARS = {"i4": (np.int32, ctypes.c_int32), "i8": (np.int64, ctypes.c_int64),
            "f4": (np.float32, ctypes.c_float), "f8": (np.float64, ctypes.c_double)}


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _units(kernel_dir: Path, by_file: dict) -> dict[str, str]:
    """Translation units: the runtime, and one wrapper per kernel source that includes the .cu file
    unchanged and registers the kernels named for it."""
    units = {"runtime.cpp": (HERE / "runtime.cpp").read_text()}
    for file, names in by_file.items():
        lines = [f"// generated: {file} for the SIMT emulator", '#include "registry.h"',
                 f'#include "{Path(kernel_dir, file)}"']
        lines += [f"SIMT_KERNEL({n})" for n in names]
        units[f"wrap_{Path(file).stem}.cpp"] = "\n".join(lines) + "\n"
    return units


def _flags(unit: str, sanitize: bool) -> list[str]:
    # AddressSanitizer instruments the kernels only; the runtime's coroutine switching stays plain
    return CXXFLAGS + (ASAN_FLAGS if sanitize and unit != "runtime.cpp" else [])


def _build(kernel_dir: Path, by_file: dict, sanitize: bool = False) -> Path:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++): the SIMT emulator cannot be built")
    units = _units(kernel_dir, by_file)
    h = hashlib.sha256()
    for part in [cxx, *CXXFLAGS, *(ASAN_FLAGS if sanitize else []),
                 *((HERE / f).read_text() for f in ("simt.h", "registry.h", "shared.ld"))]:
        h.update(part.encode())
    for name in sorted(units):
        h.update(name.encode() + units[name].encode())
    for file in sorted(by_file) + sorted(p.name for p in Path(kernel_dir).glob("*.cuh")):   # + included headers
        h.update(Path(kernel_dir, file).read_bytes())
    out_dir = Path(tempfile.gettempdir()) / f"twinsparse-simt-{os.getuid()}"
    lib = out_dir / f"libsimt-{h.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        objs, procs = [], []
        for name, text in units.items():
            src = Path(tmp, name)
            src.write_text(text)
            obj = src.with_suffix(".o")
            objs.append(str(obj))
            procs.append((name, subprocess.Popen([cxx, *_flags(name, sanitize), "-I", str(HERE), "-c", str(src), "-o", str(obj)],
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        for name, p in procs:
            log, _ = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"the SIMT emulator failed to compile {name}:\n{log}")
        tmp_lib = Path(tmp, lib.name)
        link = [cxx, "-shared", "-o", str(tmp_lib), *objs]
        r = subprocess.run([*link, f"-Wl,-T,{HERE / 'shared.ld'}"], capture_output=True, text=True)
        if r.returncode != 0:     # not GNU ld: shared memory poisoning then misses template statics
            r = subprocess.run(link, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"the SIMT emulator failed to link:\n{r.stdout}{r.stderr}")
        os.replace(tmp_lib, lib)             # atomic: a concurrent builder sees all or nothing
    return lib


class Emulator:
    """The emulator built for the kernel sources ``by_file`` ({file name: kernel names}) found in
    ``kernel_dir``, loaded. Each distinct set of sources is its own shared library with its own
    runtime state (instances built from identical sources share one, as dlopen does)."""

    def __init__(self, kernel_dir: Path, by_file: dict, sanitize: Optional[bool] = None):
        if sanitize is None:
            sanitize = os.environ.get(SANITIZE_ENV, "") == "address"
        self.sanitize = sanitize
        lib = ctypes.CDLL(str(_build(Path(kernel_dir).resolve(), by_file, sanitize)))
        lib.simt_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                    ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint64]
        lib.simt_launch.restype = ctypes.c_int
        for fn in (lib.simt_error, lib.simt_kernel_names):
            fn.restype = ctypes.c_char_p
        lib.simt_signature.argtypes = [ctypes.c_char_p]
        lib.simt_signature.restype = ctypes.c_char_p
        self.lib = lib

    def signature(self, kernel: str) -> list[str]:
        sig = self.lib.simt_signature(kernel.encode())
        if sig is None:
            raise KeyError(f"the emulator has no kernel {kernel!r}")
        return sig.decode().split(",") if sig else []

    def kernel_names(self) -> list[str]:
        return self.lib.simt_kernel_names().decode().split(",")

    def launch(self, kernel: str, grid: int, block: int, args: tuple, seed: int = 0) -> None:
        """Run ``kernel`` on ``args`` (contiguous CPU tensors or np.uint64(0) for pointers, NumPy
        scalars of the parameter's exact type otherwise); raises LaunchError on any failure."""
        sig = self.signature(kernel)
        if len(args) != len(sig):
            raise LaunchError(f"{kernel} takes {len(sig)} parameters ({','.join(sig)}); the loader passed {len(args)}")
        values = []
        for i, (kind, a) in enumerate(zip(sig, args)):
            if kind == "p":
                if isinstance(a, torch.Tensor):
                    if a.device.type != "cpu" or not a.is_contiguous():
                        raise LaunchError(f"{kernel} parameter {i}: tensor on {a.device}, contiguous="
                                          f"{a.is_contiguous()}; the emulator needs contiguous CPU tensors")
                    values.append(ctypes.c_void_p(a.data_ptr()))
                elif isinstance(a, np.uint64) and int(a) == 0:
                    values.append(ctypes.c_void_p(None))
                else:
                    raise LaunchError(f"{kernel} parameter {i} is a pointer; the loader passed {type(a).__name__}")
            else:
                want, ctype = _SCALARS[kind]
                if type(a) is not want:
                    raise LaunchError(f"{kernel} parameter {i} is {kind} ({want.__name__}); the loader passed "
                                      f"{type(a).__name__} {a!r}, which CuPy would pass with the wrong width or kind")
                values.append(ctype(a.item()))
        params = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        if self.lib.simt_launch(kernel.encode(), int(grid), int(block), params, int(seed)) != 0:
            raise LaunchError(self.lib.simt_error().decode())


def emulator() -> Emulator:
    """The emulator of accel/kernels (built on first use); raises RuntimeError saying why it cannot be."""
    global _lib, _error
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = Emulator(kernels.KERNEL_DIR, kernels.KERNELS)
            except (RuntimeError, OSError) as e:
                _error = str(e)
        if _lib is None:
            raise RuntimeError(_error)
        return _lib


def unavailable_reason() -> Optional[str]:
    try:
        emulator()
        return None
    except RuntimeError as e:
        return str(e)


def asan_environment() -> dict:
    """Environment variables that make a fresh Python process run the emulated kernels under
    AddressSanitizer (the CPU stand-in for compute-sanitizer's memcheck): every load and store of
    kernel code is checked against torch's CPU allocations, the shared-memory arrays and the
    threads' stacks, and the process aborts with a report at the first out-of-bounds access::

        env $(python -c "from twinsparse.accel.kernels import simt; print(simt.asan_command())") \\
            python -m pytest tests/test_kernels_simt.py conformance/test_registry.py -k simt

    Raises RuntimeError when the compiler has no AddressSanitizer runtime."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found: no AddressSanitizer runtime to preload")
    r = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    lib = r.stdout.strip()
    if r.returncode != 0 or not Path(lib).is_file():
        raise RuntimeError(f"{cxx} has no AddressSanitizer runtime (libasan.so not found)")
    return {"LD_PRELOAD": str(Path(lib).resolve()), "ASAN_OPTIONS": "detect_leaks=0",
            SANITIZE_ENV: "address"}


def asan_command() -> str:
    """``asan_environment()`` as ``NAME=value`` words for ``env``."""
    return " ".join(f"{k}={v}" for k, v in asan_environment().items())


class LaunchError(RuntimeError):
    """A kernel failed under the emulator (deadlock, divergent barrier, bad arguments)."""


class SimtBackend:
    """``accel.kernels`` backend that runs the kernels on CPU tensors under the emulator.

    ``seed`` (0: in order) shuffles the order of blocks, of warps and of the threads of a warp
    between synchronisation points; ``max_blocks`` caps the grid (the kernels are grid-stride
    loops: a small grid makes each block walk many chunks). ``sm_count`` is the multiprocessor
    count reported to kernels with a persistent grid (a few blocks per multiprocessor), small by
    default so that their blocks each take several chunks and segments."""

    device_desc = "the CPU (SIMT emulator)"

    def __init__(self, seed: int = 0, max_blocks: Optional[int] = None, emu: Optional[Emulator] = None,
                 sm_count: int = 2):
        self.seed, self.max_blocks, self._emu = int(seed), max_blocks, emu
        self._sm_count = int(sm_count)
        self.log: list[tuple[str, int]] = []         # (kernel, grid) of every launch, for tests

    @property
    def emu(self) -> Emulator:
        return self._emu if self._emu is not None else emulator()

    def unavailable_reason(self) -> Optional[str]:
        return None if self._emu is not None else unavailable_reason()

    def on_device(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu"

    def stream_key(self, device: torch.device):
        return 0

    def sm_count(self, device: torch.device) -> int:
        return self._sm_count

    def arg(self, t: torch.Tensor):
        return t

    def launch(self, file: str, kernel: str, device: torch.device, grid: int, block: int, args: tuple) -> None:
        grid = int(grid if self.max_blocks is None else max(1, min(grid, self.max_blocks)))
        self.log.append((kernel, grid))
        self.emu.launch(kernel, grid, block, args, self.seed)
