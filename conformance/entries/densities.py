"""Global-magnitude density split (docs/methods.md §1.3). The shape-based distributions (uniform, ER,
ERK) are scalar logic written once in reference and imported by accel, so they have no twin."""
from hypothesis import strategies as st

import twinsparse.accel.densities as A
import twinsparse.reference.densities as R
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import layer_dict


@st.composite
def _args(draw, dtype):
    return (draw(layer_dict(dtype, ranks=(2, 3, 4, 5))), draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1)))), {}


register("global_magnitude_densities", R.global_magnitude_densities, A.global_magnitude_densities, _args)
