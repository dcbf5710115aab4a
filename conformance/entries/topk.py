"""Top-k selection with the tie rule (docs/methods.md §1.2)."""
from hypothesis import strategies as st

import twinsparse.accel.topk as A
import twinsparse.reference.topk as R
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import layer_dict, scores, shapes


@st.composite
def _topk_args(draw, dtype):
    s = draw(scores(draw(shapes()), dtype))
    k = draw(st.integers(0, s.size))
    return (s, k), {}


@st.composite
def _global_args(draw, dtype):
    d = draw(layer_dict(dtype))
    n = sum(v.size for v in d.values())
    return (d, draw(st.integers(0, n))), {}


@st.composite
def _per_layer_args(draw, dtype):
    d = draw(layer_dict(dtype))
    dens = {k: draw(st.floats(0, 1)) for k in d}
    return (d, dens), {}


register("topk_mask", R.topk_mask, A.topk_mask, _topk_args)
register("topk_masks_global", R.topk_masks_global, A.topk_masks_global, _global_args)
register("topk_masks_per_layer", R.topk_masks_per_layer, A.topk_masks_per_layer, _per_layer_args)
