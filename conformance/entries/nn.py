"""The NumPy MLP (hand-written backward) against torch autograd, and the cross-entropy twins.

Inputs are drawn from a seeded generator (hypothesis draws sizes, batch, flags and the seed),
and examples are kept only with a margin (``common.has_margin``): every pre-ReLU value at least
``common.RELU_MARGIN`` away from 0 (so float32 rounding cannot flip a ReLU) and every BatchNorm batch
variance at least ``common.VAR_MARGIN`` (so 1/sqrt(var + eps) does not amplify rounding beyond the
dtype tolerance).
"""
import numpy as np
from hypothesis import assume, strategies as st

import twinsparse.accel.losses as AL
import twinsparse.accel.models as AM
import twinsparse.reference.nn as R
from twinsparse.conformance.entries.common import cast_floats, has_margin, randomize_bn_affine, randomize_bn_statistics
from twinsparse.conformance.registry import register


def _labels(rng, B, K, soft):
    if soft:
        return rng.dirichlet(np.ones(K), size=B)
    return rng.integers(0, K, size=B, dtype=np.int64)


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
    randomize_bn_affine(params, rng)        # non-trivial BN affine parameters and running statistics
    randomize_bn_statistics(buffers, rng)
    x = rng.standard_normal((B, sizes[0])) * 2
    y = _labels(rng, B, sizes[-1], soft)
    assume(has_margin(params, buffers, x, train))
    return (cast_floats(params, dtype), cast_floats(buffers, dtype), x.astype(dtype), y.astype(dtype) if soft else y), \
        {"train": train}


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
