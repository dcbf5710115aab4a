"""The generic twin test: every registry entry, every available accel device, every dtype."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from conformance.convert import to_numpy, to_torch
from conformance.registry import compare_default, load_all

REG = load_all()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(name, np.dtype(dt).name, dev) for name, e in REG.items() for dt in e.dtypes for dev in DEVICES]


def test_registry_is_populated():
    assert len(REG) >= 20, f"only {len(REG)} conformance entries registered"


@pytest.mark.parametrize("name,dtype,device", CASES, ids=[f"{n}-{d}-{v}" for n, d, v in CASES])
def test_twin_agrees(name, dtype, device):
    entry = REG[name]

    @given(st.data())
    def check(data):
        args, kwargs = data.draw(entry.strategy(np.dtype(dtype)))
        ref_out = entry.ref(*args, **kwargs)
        acc_out = to_numpy(entry.acc(*to_torch(args, device), **to_torch(kwargs, device)))
        (entry.compare or compare_default)(ref_out, acc_out, np.dtype(dtype))

    check()
