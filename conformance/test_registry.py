"""The generic twin test: every registry entry, every available accel device, every dtype.

The forced CUDA-kernel entries (tag ``cuda_kernel``) run on the CUDA device (marked ``gpu``) and,
on every machine, on ``simt``: CPU tensors with the kernels executed by the SIMT emulator
(accel/kernels/simt), reached through the accel operators' own dispatch. Same strategies, same
comparison rules; skipped with the reason when no C++ compiler can build the emulator.

Device ``cuda-arith`` runs the other entries on CPU tensors with CUDA's rewritten arithmetic in force
(conformance/cuda_arith.py: division by a scalar as a reciprocal multiplication, mean as sum * 1/n),
so a twin that only agrees with the reference because the CPU divides exactly fails on every machine,
not only on a GPU.
"""
import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from twinsparse.accel import kernels
from twinsparse.accel.kernels import simt
from twinsparse.conformance.convert import to_numpy, to_torch
from twinsparse.conformance.cuda_arith import cuda_arithmetic
from twinsparse.conformance.registry import compare_default, load_all

REG = load_all()
DEVICES = ["cpu", "cuda-arith"] + (["cuda"] if torch.cuda.is_available() else [])
KERNEL_TAG = "cuda_kernel"   # conformance/entries/kernels.py: forced CUDA kernels, on cuda (marked gpu) and simt
CASES = [pytest.param(name, np.dtype(dt).name, dev, id=f"{name}-{np.dtype(dt).name}-{dev}",
                      marks=[pytest.mark.gpu] if KERNEL_TAG in e.tags and dev == "cuda" else [])
         for name, e in REG.items() for dt in e.dtypes
         for dev in (["cuda", "simt"] if KERNEL_TAG in e.tags else DEVICES)]


def test_registry_is_populated():
    assert len(REG) >= 20, f"only {len(REG)} conformance entries registered"


@pytest.mark.parametrize("name,dtype,device", CASES)
def test_twin_agrees(name, dtype, device):
    entry = REG[name]
    backend, emulated = contextlib.nullcontext, None
    if device == "simt":
        if simt.unavailable_reason() is not None:
            pytest.skip(f"SIMT emulator: {simt.unavailable_reason()}")
        emulated = simt.SimtBackend(seed=1)
        backend, device = (lambda: kernels.use_backend(emulated)), "cpu"
    elif device == "cuda-arith":
        backend, device = cuda_arithmetic, "cpu"
    elif KERNEL_TAG in entry.tags and not kernels.available():
        pytest.skip(f"CUDA kernel entry: {kernels.unavailable_reason()}")

    @given(st.data())
    def check(data):
        args, kwargs = data.draw(entry.strategy(np.dtype(dtype)))
        ref_out = entry.ref(*args, **kwargs)
        with backend():
            acc_out = to_numpy(entry.acc(*to_torch(args, device), **to_torch(kwargs, device)))
        (entry.compare or compare_default)(ref_out, acc_out, np.dtype(dtype))

    check()
    if emulated is not None:
        assert emulated.log, f"{name}: no kernel was launched on the emulator"
