"""Dynamic sparse training operators (docs/methods.md §2.1, §3.2): prune-and-grow, DST-EE, SNFS/GraNet helpers.

Masks from drop / grow / drop_and_grow / prune_to_count / topk_within are compared exactly: their
scores are inputs (drawn with adversarial ties), never arithmetic, so both twins rank identical
values. ``dst_ee_scores`` is compared as arithmetic (dtype tolerance); the selection on its float32
scores is not compared here. ``dst.segmented_topk_within`` (accel-internal, the whole-model
selection) is checked against a per-segment loop of the reference ``topk_within``.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.dst as A
import twinsparse.accel.topk as AT
import twinsparse.reference.dst as R
import twinsparse.reference.topk as RT
from twinsparse.conformance.entries.common import bool_masks, unit_floats
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import layer_dict, scores, shapes, tied_scores

DTYPE_FREE = (np.float64,)          # ops whose inputs/outputs do not depend on the float dtype


def _tied_or_any(shape, dtype):
    return st.one_of(tied_scores(shape, dtype), scores(shape, dtype))


def _masks_like(draw, layers):
    return {n: draw(bool_masks(v.shape)) for n, v in layers.items()}


def _scores_like(draw, layers, dtype):
    return {n: draw(_tied_or_any(v.shape, dtype)) for n, v in layers.items()}


def _t():
    return st.one_of(st.sampled_from([1, 2, 10, 10**6]), st.integers(1, 10**6))


# ----------------------------------------------------------------------------- top-k within

@st.composite
def _topk_within_args(draw, dtype):
    s = draw(_tied_or_any(draw(shapes()), dtype))
    cand = draw(bool_masks(s.shape))
    return (s, cand, draw(st.integers(0, int(cand.sum())))), {}


def ref_segmented_topk_within(flat_scores, flat_candidates, segment_sizes, ks):
    """Reference composition: ``reference.topk.topk_within`` on every segment, concatenated."""
    out, start = [], 0
    for size, k in zip(segment_sizes, ks):
        out.append(RT.topk_within(flat_scores[start:start + size], flat_candidates[start:start + size], k))
        start += size
    return np.concatenate(out) if out else np.zeros(0, bool)


@st.composite
def _segmented_args(draw, dtype):
    sizes = draw(st.lists(st.integers(0, 12), min_size=1, max_size=5))
    n = sum(sizes)
    s = draw(tied_scores((n,), dtype)) if n else np.zeros(0, dtype)
    cand = draw(bool_masks((n,)))
    ks, start = [], 0
    for size in sizes:
        ks.append(draw(st.integers(0, int(cand[start:start + size].sum()))))
        start += size
    return (s, cand, sizes, ks), {}


register("topk_within", RT.topk_within, AT.topk_within, _topk_within_args)
register("dst.segmented_topk_within", ref_segmented_topk_within, A.segmented_topk_within, _segmented_args)
# both selection strategies, whatever the device picks by default (CPU: per-segment kthvalue; CUDA: sorts)
for _strategy in ("sort", "loop"):
    register(f"dst.segmented_topk_within[{_strategy}]", ref_segmented_topk_within,
             lambda *a, _s=_strategy, **k: A.segmented_topk_within(*a, strategy=_s, **k), _segmented_args)


# ----------------------------------------------------------------------------- prune and grow

@st.composite
def _swap_counts_args(draw, dtype):
    return (_masks_like(draw, draw(layer_dict(dtype))), draw(unit_floats())), {}


@st.composite
def _drop_args(draw, dtype):
    layers = draw(layer_dict(dtype, draw_array=_tied_or_any))
    masks = _masks_like(draw, layers)
    counts = {n: draw(st.integers(0, int(m.sum()))) for n, m in masks.items()}
    return (masks, layers, counts), {}


@st.composite
def _grow_args(draw, dtype):
    layers = draw(layer_dict(dtype, draw_array=_tied_or_any))
    masks = _masks_like(draw, layers)
    counts = {n: draw(st.integers(0, int((~m).sum()))) for n, m in masks.items()}
    return (masks, layers, counts), {}


@st.composite
def _drop_and_grow_args(draw, dtype):
    layers = draw(layer_dict(dtype, draw_array=_tied_or_any))
    masks = _masks_like(draw, layers)
    grow_scores = _scores_like(draw, layers, dtype)
    dcounts = {n: draw(st.integers(0, int(m.sum()))) for n, m in masks.items()}
    kwargs = {}
    if draw(st.booleans()):   # explicit grow counts up to the pool after the drop
        kwargs["grow_counts"] = {n: draw(st.integers(0, int((~m).sum()) + dcounts[n])) for n, m in masks.items()}
    return (masks, layers, grow_scores, dcounts), kwargs


register("dst.swap_counts", R.swap_counts, A.swap_counts, _swap_counts_args, dtypes=DTYPE_FREE)
register("dst.drop", R.drop, A.drop, _drop_args)
register("dst.grow", R.grow, A.grow, _grow_args)
register("dst.drop_and_grow", R.drop_and_grow, A.drop_and_grow, _drop_and_grow_args)


# ----------------------------------------------------------------------------- DST-EE

def _counters_like(draw, layers):
    return {n: draw(hnp.arrays(np.int64, v.shape, elements=st.integers(0, 6))) for n, v in layers.items()}


@st.composite
def _init_counters_args(draw, dtype):
    masks = _masks_like(draw, draw(layer_dict(dtype)))
    return (masks,), {"init": draw(st.sampled_from(R.COUNTER_INITS))}


@st.composite
def _increment_args(draw, dtype):
    layers = draw(layer_dict(dtype))
    return (_counters_like(draw, layers), _masks_like(draw, layers)), {}


@st.composite
def _dst_ee_args(draw, dtype):
    grads = draw(layer_dict(dtype))
    counters = _counters_like(draw, grads)
    c = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0, 10.0]))
    eps = draw(st.sampled_from([1e-8, 1e-3, 1.0]))
    form = draw(st.sampled_from(R.EXPLORATION_FORMS)) if c > 0 else "eq1"
    return (grads, counters, draw(_t()), c, eps), {"form": form}


register("dst.init_counters", R.init_counters, A.init_counters, _init_counters_args, dtypes=DTYPE_FREE)
register("dst.increment_counters", R.increment_counters, A.increment_counters, _increment_args,
         dtypes=DTYPE_FREE)
register("dst.dst_ee_scores", R.dst_ee_scores, A.dst_ee_scores, _dst_ee_args)


# ----------------------------------------------------------------------------- SNFS / GraNet / ITOP

@st.composite
def _ema_args(draw, dtype):
    grads = draw(layer_dict(dtype))
    ema = None if draw(st.booleans()) else {n: draw(scores(g.shape, dtype)) for n, g in grads.items()}
    beta = draw(st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99]), st.floats(0, 1, exclude_max=True)))
    return (ema, grads, beta), {}


@st.composite
def _mean_abs_args(draw, dtype):
    values = draw(layer_dict(dtype))
    return (values, _masks_like(draw, values)), {}


@st.composite
def _prune_to_count_args(draw, dtype):
    layers = draw(layer_dict(dtype, draw_array=_tied_or_any))
    masks = _masks_like(draw, layers)
    total = sum(int(m.sum()) for m in masks.values())
    return (masks, layers, draw(st.integers(0, total))), {}


@st.composite
def _explored_args(draw, dtype):
    layers = draw(layer_dict(dtype))
    return (_masks_like(draw, layers), _masks_like(draw, layers)), {}


register("dst.ema_update", R.ema_update, A.ema_update, _ema_args)
register("dst.mean_abs_over_mask", R.mean_abs_over_mask, A.mean_abs_over_mask, _mean_abs_args)
register("dst.prune_to_count", R.prune_to_count, A.prune_to_count, _prune_to_count_args)
register("dst.explored_union", R.explored_union, A.explored_union, _explored_args, dtypes=DTYPE_FREE)
