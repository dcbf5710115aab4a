"""The NumPy MLP (hand-written backward) against torch autograd, and the cross-entropy twins.

Inputs are drawn from a seeded generator (hypothesis draws sizes, batch, flags and the seed),
and examples are kept only with a margin: every pre-ReLU value at least ``_RELU_MARGIN`` away
from 0 (so float32 rounding cannot flip a ReLU) and every BatchNorm batch variance at least
``_VAR_MARGIN`` (so 1/sqrt(var + eps) does not amplify rounding beyond the dtype tolerance).
"""
import numpy as np
from hypothesis import assume, strategies as st

import twinsparse.accel.losses as AL
import twinsparse.accel.models as AM
import twinsparse.reference.nn as R
from twinsparse.conformance.registry import register

_RELU_MARGIN = 1e-3
_VAR_MARGIN = 5e-2


def _labels(rng, B, K, soft):
    if soft:
        return rng.dirichlet(np.ones(K), size=B)
    return rng.integers(0, K, size=B, dtype=np.int64)


def has_margin(params, buffers, x, train):
    """Re-run the float64 forward and check the ReLU / BatchNorm margins described above."""
    _, cache, _ = R.mlp_forward(params, buffers, x, train)
    for i, rec in enumerate(cache["layers"][:-1]):
        pre = rec["input"] @ params[f"fc.{i}.weight"].T + params[f"fc.{i}.bias"]
        if "x_hat" in rec:
            if train and pre.var(axis=0).min() < _VAR_MARGIN:
                return False
            pre = params[f"bn.{i}.weight"] * rec["x_hat"] + params[f"bn.{i}.bias"]
        if np.abs(pre).min() < _RELU_MARGIN:
            return False
    return True


@st.composite
def _mlp_args(draw, dtype):
    n_linear = draw(st.integers(1, 3))
    sizes = tuple(draw(st.integers(1, 6)) for _ in range(n_linear)) + (draw(st.integers(2, 5)),)
    batchnorm = n_linear > 1 and draw(st.booleans())
    train, soft = draw(st.booleans()), draw(st.booleans())
    B = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params, buffers = R.init_mlp(sizes, batchnorm, seed=seed)
    for k in params:  # non-trivial BN affine parameters and running statistics
        if k.startswith("bn."):
            params[k] = rng.uniform(0.5, 1.5, params[k].shape) if k.endswith("weight") else rng.normal(0, 0.5, params[k].shape)
    for k in buffers:
        if k.endswith("running_mean"):
            buffers[k] = rng.normal(0, 0.5, buffers[k].shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2.0, buffers[k].shape)
        else:
            buffers[k] = np.array(rng.integers(0, 100), dtype=np.int64)
    x = rng.standard_normal((B, sizes[0])) * 2
    y = _labels(rng, B, sizes[-1], soft)
    assume(has_margin(params, buffers, x, train))
    cast = lambda d: {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in d.items()}
    return (cast(params), cast(buffers), x.astype(dtype), y.astype(dtype) if soft else y), {"train": train}


@st.composite
def _ce_args(draw, dtype):
    B, K = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = (rng.standard_normal((B, K)) * scale).astype(dtype)
    y = _labels(rng, B, K, draw(st.booleans()))
    return (logits, y.astype(dtype) if y.dtype.kind == "f" else y), {}


register("mlp_loss_and_grads", R.mlp_loss_and_grads, AM.mlp_loss_and_grads, _mlp_args,
         notes="forward, cross-entropy and backward of the MLP (with/without BatchNorm, train/eval, "
               "int/soft labels); num_batches_tracked compared exactly")
register("softmax_cross_entropy", R.softmax_cross_entropy, AL.softmax_cross_entropy, _ce_args)
