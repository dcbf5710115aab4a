"""Helpers shared by the entry modules (this module registers no entry of its own).

``quiet`` runs an operator with its UserWarnings silenced; the strategies draw boolean masks and
numbers in [0, 1] with their edges; the BatchNorm helpers give a seeded MLP non-trivial BN
parameters and running statistics and keep only inputs with a margin (``has_margin``).
"""
import warnings

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.reference.nn as RN

RELU_MARGIN = 1e-3    # every pre-ReLU value at least this far from 0: float32 rounding cannot flip a ReLU
VAR_MARGIN = 5e-2     # every BN batch variance at least this: 1/sqrt(var + eps) amplifies no rounding


def quiet(fn):
    """``fn`` with UserWarnings ignored: N:M leaves indivisible layers dense with a warning (the
    warning is tested in tests/, not here)."""
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*args, **kwargs)
    run.__name__ = fn.__name__
    return run


# ----------------------------------------------------------------------------- strategies

def bool_masks(shape):
    """Empty, full, or random masks (hypothesis' bool arrays cover all densities)."""
    return st.one_of(st.just(np.zeros(shape, bool)), st.just(np.ones(shape, bool)), hnp.arrays(np.bool_, shape))


def unit_floats(edges=(0.0, 1.0, 0.5)):
    """A number in [0, 1] (a density, a fraction, a rate), with ``edges`` drawn often."""
    return st.one_of(st.sampled_from(list(edges)), st.floats(0, 1))


def floats_of(dtype, *args, **kwargs):
    """``st.floats(*args, **kwargs)`` exactly representable in ``dtype``."""
    return st.floats(*args, width=np.dtype(dtype).itemsize * 8, **kwargs)


# ----------------------------------------------------------------------------- BatchNorm MLPs

def randomize_bn_affine(params: dict, rng) -> None:
    """Non-trivial BN affine parameters (in place): weights in [0.5, 1.5], biases N(0, 0.5)."""
    for k in params:
        if k.startswith("bn."):
            params[k] = rng.uniform(0.5, 1.5, params[k].shape) if k.endswith("weight") else rng.normal(0, 0.5, params[k].shape)


def randomize_bn_statistics(buffers: dict, rng, max_count: int = 100, dtype=None) -> None:
    """Stale BN statistics (in place): running means N(0, 0.5), running variances in [0.5, 2],
    num_batches_tracked in [0, max_count); the float ones cast to ``dtype`` when given."""
    for k in buffers:
        if k.endswith("running_mean"):
            v = rng.normal(0, 0.5, buffers[k].shape)
        elif k.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, buffers[k].shape)
        else:
            buffers[k] = np.array(rng.integers(0, max_count), dtype=np.int64)
            continue
        buffers[k] = v if dtype is None else v.astype(dtype)


def cast_floats(d: dict, dtype) -> dict:
    """The float arrays of ``d`` cast to ``dtype``; integer ones (num_batches_tracked) kept."""
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in d.items()}


def has_margin(params, buffers, x, train, relu_margin=RELU_MARGIN, var_margin=VAR_MARGIN) -> bool:
    """Re-run the float64 forward of the NumPy MLP: every pre-ReLU value at least ``relu_margin``
    away from 0 and (train mode) every BatchNorm batch variance at least ``var_margin``."""
    _, cache, _ = RN.mlp_forward(params, buffers, x, train)
    for i, rec in enumerate(cache["layers"][:-1]):
        pre = rec["input"] @ params[f"fc.{i}.weight"].T + params[f"fc.{i}.bias"]
        if "x_hat" in rec:
            if train and pre.var(axis=0).min() < var_margin:
                return False
            pre = params[f"bn.{i}.weight"] * rec["x_hat"] + params[f"bn.{i}.bias"]
        if np.abs(pre).min() < relu_margin:
            return False
    return True
