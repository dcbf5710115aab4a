"""Sparse Cocktail operators ([SC] §3.4-3.5; docs/methods.md §1.7, §8.2, §8.1): UMG channel scores and masks,
the nested IMP unstructured step, and the dense-pivot distillation loss (Eq. 1).

UMG selections rank per-channel sums; weights are halves in [-3, 3] so every sum is exact in either
dtype and order, and beta * s_u + (1 - beta) * s_nm is then the same two rounded products on both
backends: masks are identical, ties between channels (frequent) included. The IMP step ranks |w|
(no arithmetic), so any weights are drawn. Eq. 1 is compared as arithmetic (dtype tolerance).
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.cocktail_ops as A
import twinsparse.reference.cocktail_ops as R
from twinsparse.conformance.entries.common import bool_masks, unit_floats
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import scores, shapes
from twinsparse.conformance.entries.masks import exact_sum_weights


def _beta():
    return unit_floats((0.8, 0.0, 1.0, 0.5))


def _channel_shape():
    return st.one_of(shapes(2, 2, 1, 8), shapes(4, 4, 1, 4))


@st.composite
def _umg_layer(draw, dtype):
    w = draw(exact_sum_weights(draw(_channel_shape()), dtype))
    mask_nm = None if draw(st.integers(0, 3)) == 0 else draw(bool_masks(w.shape))    # None: IMP iteration 1
    return w, draw(bool_masks(w.shape)), mask_nm


@st.composite
def _alive_and_density(draw, o, shape):
    """(alive or None, channel density) with k = round(d * O) <= number of alive channels."""
    alive = None
    if draw(st.booleans()):
        vec = draw(hnp.arrays(np.bool_, (o,)))
        alive = vec if draw(st.booleans()) else np.broadcast_to(vec.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
        k = draw(st.integers(0, int(vec.sum())))
        return alive, k / o
    return alive, draw(st.one_of(st.sampled_from([0.0, 1.0, 0.9, 0.5]), st.floats(0, 1)))


@st.composite
def _scores_args(draw, dtype):
    w, mu, mnm = draw(_umg_layer(dtype))
    return (w, mu, mnm), {"beta": draw(_beta())}


@st.composite
def _mask_args(draw, dtype):
    w, mu, mnm = draw(_umg_layer(dtype))
    alive, d = draw(_alive_and_density(w.shape[0], w.shape))
    return (w, mu, mnm, d), {"beta": draw(_beta()), "alive": alive}


@st.composite
def _masks_args(draw, dtype):
    layers = [draw(_umg_layer(dtype)) for _ in range(draw(st.integers(1, 3)))]
    names = [f"conv{i}.weight" for i in range(len(layers))]
    weights = {n: l[0] for n, l in zip(names, layers)}
    mu = {n: l[1] for n, l in zip(names, layers)}
    with_nm = draw(st.booleans())
    mnm = {n: (l[2] if l[2] is not None else np.ones(l[0].shape, bool)) for n, l in zip(names, layers)} if with_nm else None
    d = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.9, 0.729]), st.floats(0, 1)))
    return (weights, mu, mnm, d), {"beta": draw(_beta())}


@st.composite
def _imp_args(draw, dtype):
    n = draw(st.integers(1, 3))
    weights = {f"conv{i}.weight": draw(scores(draw(_channel_shape()), dtype)) for i in range(n)}
    prev = {k: draw(bool_masks(v.shape)) for k, v in weights.items()}
    rate = draw(st.one_of(st.sampled_from([0.2, 0.1, 0.0]), st.floats(0, 1, exclude_max=True)))
    return (weights, prev), {"rate": rate}


@st.composite
def _pivot_args(draw, dtype):
    B, K = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    s = (rng.standard_normal((B, K)) * scale).astype(dtype)
    d = s.copy() if draw(st.integers(0, 4)) == 0 else (rng.standard_normal((B, K)) * scale).astype(dtype)
    y = rng.integers(0, K, size=B, dtype=np.int64)
    return (s, d, y), {"temperature": draw(st.sampled_from([1.0, 1.0, 2.0, 0.5, 4.0]))}


register("cocktail.umg_channel_scores", R.umg_channel_scores, A.umg_channel_scores, _scores_args,
         notes="[SC] §3.4 score; mask_nm None (iteration 1) = all-ones")
register("cocktail.umg_channel_mask", R.umg_channel_mask, A.umg_channel_mask, _mask_args,
         notes="top round(d O) channels, nested among alive channels ([O] or full-shape alive mask)")
register("cocktail.umg_channel_masks", R.umg_channel_masks, A.umg_channel_masks, _masks_args)
register("cocktail.imp_unstructured_masks", R.imp_unstructured_masks, A.imp_unstructured_masks, _imp_args,
         notes="nested global magnitude step of IMP, tied weights, empty/full/random previous masks")
register("cocktail.dense_pivot_loss", R.dense_pivot_loss, A.dense_pivot_loss, _pivot_args,
         notes="Eq. 1 value and d/d sparse logits; closed form (NumPy) vs autograd with detached dense logits")
