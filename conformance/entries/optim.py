"""Masked SGD step (docs/methods.md §1.9)."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.optim as A
import twinsparse.reference.optim as R
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import shapes

_vals = dict(min_value=-3, max_value=3, allow_nan=False, allow_infinity=False)


@st.composite
def _sgd_args(draw, dtype):
    shp = draw(shapes(1, 4, 1, 6))
    el = st.floats(width=np.dtype(dtype).itemsize * 8, **_vals)
    mask = draw(hnp.arrays(bool, shp))
    w = draw(hnp.arrays(dtype, shp, elements=el)) * mask  # weights are masked between steps
    g = draw(hnp.arrays(dtype, shp, elements=el))
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov or momentum == 0 else draw(st.sampled_from([0.0, 0.1]))
    buf = None
    if momentum and draw(st.booleans()):
        buf = draw(hnp.arrays(dtype, shp, elements=el)) * mask
    hp = dict(lr=draw(st.sampled_from([0.0, 0.01, 0.1])), momentum=momentum,
              weight_decay=draw(st.sampled_from([0.0, 5e-4, 0.1])), dampening=dampening, nesterov=nesterov)
    return (w.astype(dtype), g, mask, None if buf is None else buf.astype(dtype)), hp


def _compare_with_off_mask_zero(ref_out, acc_out, dtype):
    from twinsparse.conformance.registry import compare_default
    compare_default(ref_out, acc_out, dtype)
    assert np.all(np.asarray(acc_out[0])[np.asarray(ref_out[0]) == 0] == 0)


register("masked_sgd_step", R.masked_sgd_step, A.masked_sgd_step, _sgd_args, compare=_compare_with_off_mask_zero)


@st.composite
def _sgd_all_args(draw, dtype):
    names = [f"l{i}.weight" for i in range(draw(st.integers(1, 3)))]
    parts = [draw(_sgd_args(dtype)) for _ in names]
    hp = parts[0][1]
    ws, gs, ms, bs = ({n: p[0][i] for n, p in zip(names, parts)} for i in range(4))
    if hp["momentum"] == 0:
        bs = {n: None for n in names}
    return (ws, gs, ms, bs), hp


register("masked_sgd_step_all", R.masked_sgd_step_all, A.masked_sgd_step_all, _sgd_all_args)


@st.composite
def _adam_args(draw, dtype):
    shp = draw(shapes(1, 4, 1, 6))
    width = np.dtype(dtype).itemsize * 8
    el = st.floats(width=width, **_vals)
    mask = draw(hnp.arrays(bool, shp))
    w = draw(hnp.arrays(dtype, shp, elements=el)) * mask
    g = draw(hnp.arrays(dtype, shp, elements=el))
    amsgrad = draw(st.booleans())
    step = draw(st.sampled_from([0, 1, 7]))
    moment = lambda lo: draw(hnp.arrays(dtype, shp, elements=st.floats(lo, 3, width=width))) * mask  # noqa: E731
    ea = moment(-3) if step else np.zeros(shp, dtype)
    es = moment(0) if step else np.zeros(shp, dtype)
    mx = (np.maximum(es, moment(0)) if step else np.zeros(shp, dtype)) if amsgrad else None
    hp = dict(lr=draw(st.sampled_from([0.0, 1e-3, 0.1])), beta1=draw(st.sampled_from([0.0, 0.9])),
              beta2=draw(st.sampled_from([0.5, 0.999])), eps=draw(st.sampled_from([1e-8, 1e-3])),
              weight_decay=draw(st.sampled_from([0.0, 1e-2])), amsgrad=amsgrad, decoupled=draw(st.booleans()))
    return (w.astype(dtype), g, mask, ea.astype(dtype), es.astype(dtype),
            None if mx is None else mx.astype(dtype), step), hp


def _compare_adam(ref_out, acc_out, dtype):
    from twinsparse.conformance.registry import compare_default
    compare_default(ref_out, acc_out, dtype)
    for r, a in zip(ref_out[:4], acc_out[:4]):         # off the mask: exactly 0 in weights and every moment
        if r is not None:
            assert np.all(np.asarray(a)[np.asarray(r) == 0][np.asarray(ref_out[0]) [np.asarray(r) == 0] == 0] == 0)


register("masked_adam_step", R.masked_adam_step, A.masked_adam_step, _adam_args, compare=_compare_adam,
         notes="Adam (L2) and AdamW (decoupled), amsgrad, first and later steps; state zero off the mask")
