"""The ``ops`` helpers the methods call besides the named operators: |w| of every layer, a copy
of a network, masks of all ones, per-layer active counts, their total, and an update's count
invariant. In accel these work on one flat buffer for the whole model (``accel.flat``), so they
are twins like any other operator. (``sizes``, ``random_scores_like`` and ``from_numpy_like`` only
read shapes or copy NumPy arrays to the device: no arithmetic to compare.)"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.ops as A
import twinsparse.reference.ops as R
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import layer_dict

DTYPE_FREE = (np.float64,)


@st.composite
def _weights(draw, dtype):
    return (draw(layer_dict(dtype, ranks=(2, 3, 4))),), {}


@st.composite
def _masks(draw, dtype):
    layers = draw(layer_dict(dtype))
    return ({n: draw(hnp.arrays(np.bool_, v.shape)) for n, v in layers.items()},), {}


@st.composite
def _counts(draw, dtype):
    layers = draw(layer_dict(dtype))
    return ({n: draw(st.integers(0, v.size)) for n, v in layers.items()},), {}


@st.composite
def _require_counts_args(draw, dtype):
    (masks,), _ = draw(_masks(dtype))
    actual = {n: int(m.sum()) for n, m in masks.items()}
    expected = dict(actual) if draw(st.booleans()) else {n: c + draw(st.integers(0, 1)) for n, c in actual.items()}
    return (masks, expected, "update"), {}


def _raises_same(ref_fn, acc_fn):
    """Both return the same value, or both raise the same exception type with the same message."""
    def wrap(fn):
        def run(*a, **k):
            try:
                return ("ok", fn(*a, **k))
            except RuntimeError as e:
                return ("raised", str(e))
        run.__name__ = getattr(fn, "__name__", "op")
        return run
    return wrap(ref_fn), wrap(acc_fn)


register("ops.abs_all", R.abs_all, A.abs_all, _weights, notes="|w| of every layer (accel: one flat buffer)")
register("ops.clone_all", R.clone_all, A.clone_all, _weights, notes="a copy of every tensor (accel: one per dtype)")
register("ops.ones_like_masks", R.ones_like_masks, A.ones_like_masks, _weights, dtypes=DTYPE_FREE)
register("ops.count_active", R.count_active, A.count_active, _masks, dtypes=DTYPE_FREE)
register("ops.total", R.total, A.total, _counts, dtypes=DTYPE_FREE)
register("ops.require_counts", *_raises_same(R.require_counts, A.require_counts), _require_counts_args,
         dtypes=DTYPE_FREE, notes="the invariant holds (None) or both raise the same message")
