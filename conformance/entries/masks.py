"""Mask operators (docs/methods.md §1.2-§1.7): magnitude, N:M, channel and random masks.

Masks are compared exactly. Magnitude, N:M and random selections depend only on |w| or on the
given scores, which are identical on both backends. Channel selection depends on per-filter L1
sums, whose float32 rounding may differ; those strategies draw weights that are small multiples
of 1/2, so every sum is exact in either dtype (and ties between filters are frequent).
"""
import warnings

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import accel.masks as A
import reference.masks as R
from conformance.registry import register
from conformance.strategies import layer_dict, scores, shapes, tied_scores

NM_PATTERNS = [(1, 2), (2, 4), (4, 8), (0, 4), (4, 4), (3, 5), (1, 1), (0, 1), (2, 3), (1, 4)]


def densities_st():
    """Any density, with the edges k = 0 and k = n drawn often."""
    return st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1))


def _densities_for(draw, layers):
    return {k: draw(densities_st()) for k in layers}


# ----------------------------------------------------------------------------- magnitude

@st.composite
def _magnitude_mask_args(draw, dtype):
    w = draw(scores(draw(shapes()), dtype))
    return (w, draw(densities_st())), {}


@st.composite
def _magnitude_masks_args(draw, dtype):
    ws = draw(layer_dict(dtype))
    return (ws, _densities_for(draw, ws)), {}


@st.composite
def _global_args(draw, dtype):
    return (draw(layer_dict(dtype)), draw(densities_st())), {}


register("magnitude_mask", R.magnitude_mask, A.magnitude_mask, _magnitude_mask_args)
register("magnitude_masks", R.magnitude_masks, A.magnitude_masks, _magnitude_masks_args)
register("global_magnitude_masks", R.global_magnitude_masks, A.global_magnitude_masks, _global_args)


# ----------------------------------------------------------------------------- N:M

@st.composite
def _nm_shape(draw, m, axis):
    """A Linear or Conv shape whose group axis (I, or the row for axis='rows') divides by m."""
    o = draw(st.integers(1, 4))
    if draw(st.booleans()):
        return (o, m * draw(st.integers(1, 4)))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if axis == "rows" and draw(st.booleans()):        # row length divisible although I may not be
        return (o, draw(st.integers(1, 3)), m, kw)
    return (o, m * draw(st.integers(1, 3)), kh, kw)


@st.composite
def _nm_mask_args(draw, dtype):
    n, m = draw(st.sampled_from(NM_PATTERNS))
    axis = draw(st.sampled_from(R.NM_AXES))
    w = draw(scores(draw(_nm_shape(m, axis)), dtype))
    return (w, n, m), {"axis": axis}


@st.composite
def _nm_masks_args(draw, dtype):
    n, m = draw(st.sampled_from(NM_PATTERNS))
    axis = draw(st.sampled_from(R.NM_AXES))
    ws = {}
    for i in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            shp = draw(_nm_shape(m, axis))
        else:                                          # any shape: often indivisible -> left dense
            shp = draw(st.one_of(shapes(2, 2, 1, 9), shapes(4, 4, 1, 4)))
        ws[f"layer{i}.weight"] = draw(tied_scores(shp, dtype))
    return (ws, n, m), {"axis": axis}


def _quiet(fn):
    """nm_masks warns about layers left dense; the warning is tested in tests/, not here."""
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*args, **kwargs)
    run.__name__ = fn.__name__
    return run


register("nm_mask", R.nm_mask, A.nm_mask, _nm_mask_args)
register("nm_masks", _quiet(R.nm_masks), _quiet(A.nm_masks), _nm_masks_args)


# ----------------------------------------------------------------------------- channels

def exact_sum_weights(shape, dtype):
    """Multiples of 1/2 in [-3, 3]: filter L1 sums are exact in float32 and float64, ties common."""
    return hnp.arrays(np.int8, shape, elements=st.integers(-6, 6)).map(lambda a: (a / 2).astype(dtype))


def _channel_shape():
    return st.one_of(shapes(2, 2, 1, 9), shapes(4, 4, 1, 4))


@st.composite
def _channel_scores_args(draw, dtype):
    shp = draw(_channel_shape())
    w = draw(st.one_of(scores(shp, dtype), exact_sum_weights(shp, dtype)))
    return (w,), {}


@st.composite
def _channel_mask_args(draw, dtype):
    w = draw(exact_sum_weights(draw(_channel_shape()), dtype))
    return (w, draw(densities_st())), {}


@st.composite
def _channel_masks_args(draw, dtype):
    ws = draw(layer_dict(dtype, draw_array=exact_sum_weights))
    return (ws, _densities_for(draw, ws)), {}


register("channel_scores", R.channel_scores, A.channel_scores, _channel_scores_args)
register("channel_mask", R.channel_mask, A.channel_mask, _channel_mask_args)
register("channel_masks", R.channel_masks, A.channel_masks, _channel_masks_args)


# ----------------------------------------------------------------------------- random

def _drawn_random_scores(shape, dtype):
    """Scores as random_scores draws them (seeded NumPy uniform), or tied ones (adversarial)."""
    uniform = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).random(shape).astype(dtype))
    return st.one_of(uniform, tied_scores(shape, dtype))


@st.composite
def _random_mask_args(draw, dtype):
    return (draw(_drawn_random_scores(draw(shapes()), dtype)), draw(densities_st())), {}


@st.composite
def _random_masks_args(draw, dtype):
    rs = draw(layer_dict(dtype, draw_array=_drawn_random_scores))
    return (rs, _densities_for(draw, rs)), {}


@st.composite
def _random_scores_args(draw, dtype):
    shp = {f"layer{i}.weight": draw(shapes(0, 4, 1, 5)) for i in range(draw(st.integers(1, 3)))}
    return (shp, draw(st.integers(0, 2**32 - 1))), {}


def _compare_exact(ref_out, acc_out, dtype):
    """random_scores is a copy of the reference draw: it must be bit-identical."""
    assert list(ref_out) == list(acc_out)
    for k in ref_out:
        np.testing.assert_array_equal(np.asarray(acc_out[k]), ref_out[k], err_msg=k)
        assert np.asarray(acc_out[k]).dtype == np.float64


register("random_mask", R.random_mask, A.random_mask, _random_mask_args)
register("random_masks", R.random_masks, A.random_masks, _random_masks_args)
register("random_scores", R.random_scores, A.random_scores, _random_scores_args,
         compare=_compare_exact, dtypes=(np.float64,))
