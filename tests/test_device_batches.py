"""The accel loop's device-resident pipeline yields the standard pipeline's batches, in its order
(what makes a CUDA run train on exactly the CPU run's data)."""
import numpy as np
import torch

from twinsparse.accel.train import device_batches
from twinsparse.reference.config import RunConfig
from twinsparse.reference.train import default_batches


def test_device_batches_equal_the_standard_pipeline():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((103, 784)).astype(np.float32)
    y = rng.integers(0, 10, 103)
    cfg = RunConfig(batch_size=16, seed=3, dtype="float32").validate()
    for epoch in (0, 1, 5):
        want = [parts[0] for parts in default_batches(cfg, x, y)(epoch)]
        got = [parts[0] for parts in device_batches(cfg, x, y)(epoch)]
        assert len(got) == len(want) == 7
        for (xg, yg), (xw, yw) in zip(got, want):
            assert isinstance(xg, torch.Tensor) and xg.dtype == torch.float32
            assert np.array_equal(xg.numpy(), xw) and np.array_equal(yg.numpy(), yw)
