"""BatchNorm recalibration (docs/methods.md §1.13), NumPy reference for the MLP of ``reference.nn``.

BNT ([TH] §5.3.3) and BnUpdate ([SC] §3.6) are the same operator with different batch lists:
reset every BN layer's running statistics, then run forward passes in train mode with a
cumulative moving average (PyTorch ``momentum=None``), weights untouched. ``bnt_batches`` and
``bnupdate_batches`` produce those batch lists as index arrays; they are pure index logic, so
accel imports them (docs/methods.md §1.15: no twin, no drift).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .nn import _as_batch, _check_buffers, _layout, mlp_forward


def _check_batches(batches, width: int, dtype) -> list:
    if isinstance(batches, np.ndarray) or not isinstance(batches, Sequence):
        raise TypeError(f"batches must be a list of input arrays [B, ...], got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches is empty: BN recalibration needs at least one batch")
    for i, x in enumerate(batches):
        shape = np.shape(x)
        if len(shape) < 2:
            raise ValueError(f"batches[{i}] has shape {shape}; expected [B, ...] with B >= 2 samples")
        if shape[0] < 2:
            raise ValueError(f"batches[{i}] has B={shape[0]} sample(s); BatchNorm in train mode needs B >= 2")
        _as_batch(x, width, dtype)
    return list(batches)


def bn_recalibrate(params, buffers, batches, bn_eps: float = 1e-5) -> dict:
    """New BN buffers after recalibration on ``batches`` (docs/methods.md §1.13 BNT / BnUpdate).

    Every BN layer is reset (running_mean 0, running_var 1, num_batches_tracked 0), then each
    batch x runs ``mlp_forward(params, buffers, x, train=True, bn_momentum=None)``: after b
    batches the running mean is the mean of the b batch means and the running variance the mean
    of the b unbiased batch variances. Parameters are not changed; inputs are never mutated.
    """
    sizes, bn, dt = _layout(params)
    if not bn:
        raise ValueError("bn_recalibrate needs a network with BatchNorm layers; params have no 'bn.*' entries")
    _check_buffers(buffers, sizes, bn)
    batches = _check_batches(batches, sizes[0], dt)
    new = {}
    for k, v in buffers.items():
        if k.endswith("running_mean"):
            new[k] = np.zeros(np.shape(v), dt)
        elif k.endswith("running_var"):
            new[k] = np.ones(np.shape(v), dt)
        else:
            new[k] = np.array(0, dtype=np.int64)
    for x in batches:
        _, _, new = mlp_forward(params, new, x, train=True, bn_eps=bn_eps, bn_momentum=None)
    return new


# ----------------------------------------------------------------------------- batch lists

def _int(v, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{name}={int(v)} is not allowed; {name} must be >= {lo}")
    return int(v)


def bnt_batches(n_train: int, n_samples: int = 1000, n_batches: int = 100, batch_size: int = 128,
                seed: int = 0) -> list[np.ndarray]:
    """BNT batch indices (docs/methods.md §1.13 resolution): a fixed random subset of ``min(n_samples, n_train)``
    training indices (drawn without replacement, sorted), then ``n_batches`` batches of
    ``batch_size`` indices drawn with replacement from that subset, all from
    ``np.random.default_rng(seed)``. Returns a list of int64 arrays."""
    n_train = _int(n_train, "n_train", 2)
    n = min(_int(n_samples, "n_samples", 2), n_train)
    n_batches, batch_size = _int(n_batches, "n_batches", 1), _int(batch_size, "batch_size", 2)
    rng = np.random.default_rng(_int(seed, "seed", 0))
    subset = np.sort(rng.choice(n_train, size=n, replace=False)).astype(np.int64)
    return [subset[rng.integers(0, n, size=batch_size)] for _ in range(n_batches)]


def bnupdate_batches(n_train: int, batch_size: int = 128) -> list[np.ndarray]:
    """BnUpdate batch indices (docs/methods.md §1.13, §8.3): one pass over 0..n_train-1 in order, in
    batches of ``batch_size``; a last batch of a single sample is joined to the one before it
    (BatchNorm in train mode needs >= 2 samples). Returns a list of int64 arrays."""
    n_train = _int(n_train, "n_train", 2)
    batch_size = _int(batch_size, "batch_size", 2)
    starts = list(range(0, n_train, batch_size))
    if n_train - starts[-1] == 1 and len(starts) > 1:
        starts.pop()
    ends = starts[1:] + [n_train]
    return [np.arange(a, b, dtype=np.int64) for a, b in zip(starts, ends)]
