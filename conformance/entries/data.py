"""Input augmentation: the CIFAR crop + flip (reference.datasets.crop_flip / accel.data.crop_flip).

An exact gather (every output value is an input value or the pad value), so the twins must agree
bit for bit; the host pipeline uses the reference and the GPU pipeline the twin, and resumed runs
depend on both giving the same batches."""
import numpy as np
from hypothesis import strategies as st

import twinsparse.accel.data as A
import twinsparse.reference.datasets as R
from twinsparse.conformance.registry import compare_exact, register
from twinsparse.conformance.strategies import scores


@st.composite
def _crop_flip_args(draw, dtype):
    b, c = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    pad = draw(st.integers(0, 3))
    x = draw(scores((b, c, h, w), dtype))
    offs = st.lists(st.integers(0, 2 * pad), min_size=b, max_size=b).map(lambda v: np.array(v, np.int64))
    flip = st.lists(st.booleans(), min_size=b, max_size=b).map(np.array)
    pad_value = np.array(draw(st.lists(st.sampled_from([0.0, -1.5, 2.25]), min_size=c, max_size=c)), dtype)
    return (x, draw(offs), draw(offs), draw(flip), pad, pad_value), {}


register("crop_flip", R.crop_flip, A.crop_flip, _crop_flip_args, compare=compare_exact)
