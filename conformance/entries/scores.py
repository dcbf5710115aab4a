"""Per-weight scores (docs/methods.md §1.3, §1.10, §2.1) and SNIP's global selection.

|w * g| is one correctly rounded multiplication, bit-identical on both backends, so snip_masks
needs no margin. The normalized SNIP score divides by a sum (order-dependent rounding) and is
compared with the float tolerance; its inputs avoid subnormals and a zero sum (an error).
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.scores as A
import twinsparse.reference.scores as R
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import layer_dict, scores, shapes, tied_scores


def _floats(shape, dtype):
    el = st.floats(-4, 4, width=np.dtype(dtype).itemsize * 8, allow_nan=False, allow_infinity=False,
                   allow_subnormal=False)
    return st.one_of(hnp.arrays(dtype, shape, elements=el), tied_scores(shape, dtype))


@st.composite
def _one_arg(draw, dtype):
    return (draw(scores(draw(shapes()), dtype)),), {}


@st.composite
def _snip_scores_args(draw, dtype):
    shp = draw(shapes())
    w, g = draw(_floats(shp, dtype)), draw(_floats(shp, dtype))
    normalize = draw(st.booleans())
    if normalize and not np.abs(w.astype(np.float64) * g).sum() > 1e-3:
        normalize = False                              # a zero sum is an error, tested in tests/
    return (w, g), {"normalize": normalize}


@st.composite
def _snip_masks_args(draw, dtype):
    ws = draw(layer_dict(dtype, draw_array=_floats))
    gs = {k: draw(_floats(v.shape, dtype)) for k, v in ws.items()}
    return (ws, gs, draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1)))), {}


register("magnitude_scores", R.magnitude_scores, A.magnitude_scores, _one_arg)
register("gradient_scores", R.gradient_scores, A.gradient_scores, _one_arg)
register("snip_scores", R.snip_scores, A.snip_scores, _snip_scores_args)
register("snip_masks", R.snip_masks, A.snip_masks, _snip_masks_args)
