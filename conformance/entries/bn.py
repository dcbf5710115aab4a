"""BatchNorm recalibration (docs/methods.md §1.13 BNT / BnUpdate): NumPy MLP against the torch MLP with
``momentum=None`` BatchNorm modules.

A small MLP with BatchNorm gets 1-4 batches of 2-8 samples. Examples are kept only with a margin
in every batch (float64 train-mode forward, ``conformance.entries.common.has_margin``): each BN layer's
batch variance and every post-BN value away from 0, so float32 rounding can
neither be amplified by 1/sqrt(var + eps) nor flip a ReLU feeding the next BN layer.
num_batches_tracked is compared exactly.
"""
import numpy as np
from hypothesis import assume, strategies as st

import twinsparse.accel.bn as A
import twinsparse.reference.bn as R
import twinsparse.reference.nn as RN
from twinsparse.conformance.entries.common import cast_floats, has_margin, randomize_bn_affine, randomize_bn_statistics
from twinsparse.conformance.registry import register

@st.composite
def _mlp_bn_recalibrate_args(draw, dtype):
    n_linear = draw(st.integers(2, 3))
    sizes = tuple(draw(st.integers(1, 6)) for _ in range(n_linear)) + (draw(st.integers(2, 4)),)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params, buffers = RN.init_mlp(sizes, batchnorm=True, seed=seed)
    randomize_bn_affine(params, rng)                       # non-trivial BN affine parameters
    randomize_bn_statistics(buffers, rng)                  # stale statistics, to be reset
    batches = [rng.standard_normal((draw(st.integers(2, 8)), sizes[0])) * 2 for _ in range(draw(st.integers(1, 4)))]
    assume(all(has_margin(params, buffers, x, True) for x in batches))
    return (cast_floats(params, dtype), cast_floats(buffers, dtype), [x.astype(dtype) for x in batches]), {}


register("mlp_bn_recalibrate", R.bn_recalibrate, A.mlp_bn_recalibrate, _mlp_bn_recalibrate_args,
         notes="reset + cumulative-average train-mode passes (momentum=None); buffers compared")
