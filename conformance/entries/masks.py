"""Mask operators (docs/methods.md §1.2-§1.7): magnitude, N:M, channel and random masks.

Masks are compared exactly. Magnitude, N:M and random selections depend only on |w| or on the
given scores, which are identical on both backends. Channel selection depends on per-filter L1
sums, whose float32 rounding may differ; those strategies draw weights that are small multiples
of 1/2, so every sum is exact in either dtype (and ties between filters are frequent).
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.masks as A
import twinsparse.reference.masks as R
from twinsparse.conformance.entries.common import quiet, unit_floats
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import layer_dict, scores, shapes, tied_scores

NM_PATTERNS = [(1, 2), (2, 4), (4, 8), (0, 4), (4, 4), (3, 5), (1, 1), (0, 1), (2, 3), (1, 4)]


def _densities_for(draw, layers):
    """A density per layer, the edges k = 0 and k = n drawn often."""
    return {k: draw(unit_floats()) for k in layers}


# ----------------------------------------------------------------------------- magnitude

@st.composite
def _magnitude_mask_args(draw, dtype):
    w = draw(scores(draw(shapes()), dtype))
    return (w, draw(unit_floats())), {}


@st.composite
def _magnitude_masks_args(draw, dtype):
    ws = draw(layer_dict(dtype, ranks=(2, 3, 4, 5)))
    return (ws, _densities_for(draw, ws)), {}


@st.composite
def _global_args(draw, dtype):
    return (draw(layer_dict(dtype, ranks=(2, 3, 4, 5))), draw(unit_floats())), {}


register("magnitude_mask", R.magnitude_mask, A.magnitude_mask, _magnitude_mask_args)
register("magnitude_masks", R.magnitude_masks, A.magnitude_masks, _magnitude_masks_args)
register("global_magnitude_masks", R.global_magnitude_masks, A.global_magnitude_masks, _global_args)


# ----------------------------------------------------------------------------- N:M

@st.composite
def _nm_shape(draw, m, axis):
    """A weight shape of rank 2 to 5 whose group axis (dim 1, the given dim, or the row for
    axis='rows') divides by m: Linear, Conv1d/2d/3d and ConvTranspose-like layouts."""
    rank = draw(st.sampled_from([2, 2, 3, 4, 4, 5]))
    shp = [draw(st.integers(1, 4))] + [draw(st.integers(1, 3)) for _ in range(rank - 1)]
    if axis == "rows":
        if draw(st.booleans()):                        # row length divisible although dim 1 may not be
            shp[-1] = m
        else:
            shp[1] = m * draw(st.integers(1, 3))
        return tuple(shp)
    d = 1 if axis == "reduction" else axis % rank
    shp[d] = m * draw(st.integers(1, 3))
    return tuple(shp)


def _axis_st(rank_hint=None):
    """A named axis, or an explicit dimension 0 or 1 (ConvTranspose sums over dim 0), or -1."""
    return st.sampled_from([*R.NM_AXES, 0, 1, -1])


@st.composite
def _nm_mask_args(draw, dtype):
    n, m = draw(st.sampled_from(NM_PATTERNS))
    axis = draw(_axis_st())
    w = draw(scores(draw(_nm_shape(m, axis)), dtype))
    return (w, n, m), {"axis": axis}


@st.composite
def _nm_masks_args(draw, dtype):
    n, m = draw(st.sampled_from(NM_PATTERNS))
    per_layer = draw(st.booleans())                    # one axis, or a dict layer -> axis (reduction_dims)
    axis = draw(_axis_st())
    ws, axes = {}, {}
    for i in range(draw(st.integers(1, 4))):
        ax = draw(_axis_st()) if per_layer else axis
        if draw(st.booleans()):
            shp = draw(_nm_shape(m, ax))
        else:                                          # any shape: often indivisible -> left dense
            shp = draw(st.one_of(shapes(2, 2, 1, 9), shapes(3, 5, 1, 4)))
        ws[f"layer{i}.weight"] = draw(tied_scores(shp, dtype))
        axes[f"layer{i}.weight"] = ax
    return (ws, n, m), {"axis": axes if per_layer else axis}


register("nm_mask", R.nm_mask, A.nm_mask, _nm_mask_args)
register("nm_masks", quiet(R.nm_masks), quiet(A.nm_masks), _nm_masks_args)


# ----------------------------------------------------------------------------- channels

def exact_sum_weights(shape, dtype):
    """Multiples of 1/2 in [-3, 3]: filter L1 sums are exact in float32 and float64, ties common."""
    return hnp.arrays(np.int8, shape, elements=st.integers(-6, 6)).map(lambda a: (a / 2).astype(dtype))


def _channel_shape():
    return st.one_of(shapes(2, 2, 1, 9), shapes(3, 5, 1, 4))


@st.composite
def _channel_dim(draw, shp):
    """The output dim: 0 (PyTorch weights), 1 (ConvTranspose) or a negative index."""
    return draw(st.sampled_from([0, 1, -len(shp)]))


@st.composite
def _channel_scores_args(draw, dtype):
    shp = draw(_channel_shape())
    w = draw(st.one_of(scores(shp, dtype), exact_sum_weights(shp, dtype)))
    return (w,), {"dim": draw(_channel_dim(shp))}


@st.composite
def _channel_mask_args(draw, dtype):
    shp = draw(_channel_shape())
    w = draw(exact_sum_weights(shp, dtype))
    return (w, draw(unit_floats())), {"dim": draw(_channel_dim(shp))}


@st.composite
def _channel_masks_args(draw, dtype):
    ws = draw(layer_dict(dtype, draw_array=exact_sum_weights, ranks=(2, 3, 4, 5)))
    dims = {n: draw(_channel_dim(w.shape)) for n, w in ws.items()} if draw(st.booleans()) else None
    return (ws, _densities_for(draw, ws)), ({"dims": dims} if dims is not None else {})


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
    return (draw(_drawn_random_scores(draw(shapes()), dtype)), draw(unit_floats())), {}


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
