"""BatchNorm recalibration (docs/methods.md §1.13 BNT / BnUpdate): NumPy MLP against the torch MLP with
``momentum=None`` BatchNorm modules.

A small MLP with BatchNorm gets 1-4 batches of 2-8 samples. Examples are kept only with a margin
in every batch (float64 train-mode forward, ``conformance.entries.nn.has_margin``): each BN layer's
batch variance and every post-BN value away from 0, so float32 rounding can
neither be amplified by 1/sqrt(var + eps) nor flip a ReLU feeding the next BN layer.
num_batches_tracked is compared exactly.
"""
import numpy as np
from hypothesis import assume, strategies as st

import twinsparse.accel.bn as A
import twinsparse.reference.bn as R
import twinsparse.reference.nn as RN
from twinsparse.conformance.entries.nn import has_margin
from twinsparse.conformance.registry import register

@st.composite
def _mlp_bn_recalibrate_args(draw, dtype):
    n_linear = draw(st.integers(2, 3))
    sizes = tuple(draw(st.integers(1, 6)) for _ in range(n_linear)) + (draw(st.integers(2, 4)),)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params, buffers = RN.init_mlp(sizes, batchnorm=True, seed=seed)
    for k in params:                                       # non-trivial BN affine parameters
        if k.startswith("bn."):
            params[k] = rng.uniform(0.5, 1.5, params[k].shape) if k.endswith("weight") else rng.normal(0, 0.5, params[k].shape)
    for k in buffers:                                      # stale statistics, to be reset
        if k.endswith("running_mean"):
            buffers[k] = rng.normal(0, 0.5, buffers[k].shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2.0, buffers[k].shape)
        else:
            buffers[k] = np.array(rng.integers(0, 100), dtype=np.int64)
    batches = [rng.standard_normal((draw(st.integers(2, 8)), sizes[0])) * 2 for _ in range(draw(st.integers(1, 4)))]
    assume(all(has_margin(params, buffers, x, True) for x in batches))
    cast = lambda d: {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in d.items()}
    return (cast(params), cast(buffers), [x.astype(dtype) for x in batches]), {}


register("mlp_bn_recalibrate", R.bn_recalibrate, A.mlp_bn_recalibrate, _mlp_bn_recalibrate_args,
         notes="reset + cumulative-average train-mode passes (momentum=None); buffers compared")
