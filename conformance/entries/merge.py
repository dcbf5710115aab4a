"""Merge operators (docs/methods.md §4.3, §5.3, §1.12): Sup-tickets CIA / CAA / CIMA, D²-Sparse interpolation,
merged masks, magnitude re-pruning and BN-statistics averaging.

Networks are dicts of 1-3 tensors with 1-D, 2-D or 4-D shapes. Averages are compared within the
dtype tolerance; masks exactly. ``reprune`` selects by |w| of the given weights, identical on both
backends, so tied weights (drawn often) must give identical masks.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.merge as A
import twinsparse.reference.merge as R
from twinsparse.conformance.entries.common import floats_of, unit_floats
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import scores, shapes, tied_scores


def _net_shapes():
    """1-3 named shapes: biases / BN params (1-D), Linear (2-D), Conv (4-D)."""
    one = st.one_of(shapes(1, 1, 1, 9), shapes(2, 2, 1, 9), shapes(4, 4, 1, 4))
    return st.lists(one, min_size=1, max_size=3).map(lambda ss: {f"layer{i}.weight": s for i, s in enumerate(ss)})


def _net(draw, shp, dtype, draw_array=scores):
    return {n: draw(draw_array(s, dtype)) for n, s in shp.items()}


def _t():
    return st.one_of(st.just(1), st.integers(2, 4), st.integers(5, 1000))


# ----------------------------------------------------------------------------- Sup-tickets

@st.composite
def _superpose_cia_args(draw, dtype):
    shp = draw(_net_shapes())
    ticket = _net(draw, shp, dtype)
    if draw(st.booleans()):
        return (None, ticket, 1), {}
    return (_net(draw, shp, dtype), ticket, draw(_t())), {}


@st.composite
def _cia_args(draw, dtype):
    shp = draw(_net_shapes())
    return ([_net(draw, shp, dtype) for _ in range(draw(st.integers(1, 5)))],), {}


@st.composite
def _caa_args(draw, dtype):
    shp = draw(_net_shapes())
    m = draw(st.integers(1, 4))
    masked = [n for n in shp if draw(st.booleans())] or [next(iter(shp))]   # the others are dense (N = M)
    masks = [{n: draw(hnp.arrays(np.bool_, shp[n])) for n in masked} for _ in range(m)]
    never = {n: draw(hnp.arrays(np.bool_, shp[n])) for n in masked}          # forced off in every ticket
    for mk in masks:
        for n in masked:
            mk[n] &= ~never[n]
    tickets = []
    for mk in masks:
        tk = _net(draw, shp, dtype)
        for n in masked:
            tk[n] = np.where(mk[n], tk[n], dtype.type(0)).astype(dtype)      # zeros at inactive positions
        tickets.append(tk)
    return (tickets, masks), {}


@st.composite
def _superpose_cima_args(draw, dtype):
    shp = draw(_net_shapes())
    ticket = _net(draw, shp, dtype)
    avg = None if draw(st.integers(0, 4)) == 0 else _net(draw, shp, dtype)
    return (avg, ticket, draw(unit_floats((0.0, 1.0, 0.5, 0.8)))), {}


register("superpose_cia", R.superpose_cia, A.superpose_cia, _superpose_cia_args,
         notes="running CIA ([ST] Eq. 4), t = 1 with None and t > 1")
register("cia", R.cia, A.cia, _cia_args)
register("caa", R.caa, A.caa, _caa_args,
         notes="random masks with never-active entries (0/0 := 0) and unmasked dense tensors")
register("superpose_cima", R.superpose_cima, A.superpose_cima, _superpose_cima_args)


# ----------------------------------------------------------------------------- D²-Sparse

@st.composite
def _interpolate_args(draw, dtype):
    shp = draw(_net_shapes())
    a, b = _net(draw, shp, dtype), _net(draw, shp, dtype)
    if draw(st.booleans()):                                  # a BN num_batches_tracked-like 0-d buffer
        a["bn.num_batches_tracked"] = np.array(draw(st.integers(0, 10**6)), dtype=np.int64)
        b["bn.num_batches_tracked"] = np.array(draw(st.integers(0, 10**6)), dtype=np.int64)
    return (a, b, draw(unit_floats((0.0, 1.0, 0.1, 0.25, 0.5, 0.75, 0.95)))), {}


@st.composite
def _merged_masks_args(draw, dtype):
    shp = draw(_net_shapes())
    return (_net(draw, shp, dtype, tied_scores),), {}


@st.composite
def _reprune_args(draw, dtype):
    shp = draw(_net_shapes())
    w = _net(draw, shp, dtype, lambda s, d: st.one_of(tied_scores(s, d), scores(s, d)))
    if draw(st.booleans()):
        return (w,), {"densities": {n: draw(unit_floats()) for n in w}}
    return (w,), {"density": draw(unit_floats())}


register("interpolate", R.interpolate, A.interpolate, _interpolate_args,
         notes="alpha incl. 0 and 1; integer 0-d buffers take the max (compared exactly)")
register("merged_masks", R.merged_masks, A.merged_masks, _merged_masks_args)
register("reprune", R.reprune, A.reprune, _reprune_args,
         notes="per-layer densities and global density; tied weights, masks identical")


# ----------------------------------------------------------------------------- BN statistics

def _bn_means(dtype, c):
    return hnp.arrays(dtype, c, elements=floats_of(dtype, -4, 4))


def _bn_vars(dtype, c):
    """Running variances of c channels, exact zeros included."""
    return hnp.arrays(dtype, c, elements=st.one_of(st.just(0.0), floats_of(dtype, 0, 9)))


@st.composite
def _average_bn_stats_args(draw, dtype):
    c = draw(st.integers(1, 9))
    mean = lambda: draw(_bn_means(dtype, c))  # noqa: E731
    var = lambda: draw(_bn_vars(dtype, c))  # noqa: E731
    t = draw(_t())
    mode = draw(st.sampled_from(R.BN_AVG_MODES))
    if t == 1:
        return (None, None, mean(), var(), 1), {"mode": mode}
    return (mean(), var(), mean(), var(), t), {"mode": mode}


register("average_bn_stats", R.average_bn_stats, A.average_bn_stats, _average_bn_stats_args,
         notes="[ST] §5 BN averaging, modes std and var, t = 1 and t > 1")


@st.composite
def _average_bn_stats_all_args(draw, dtype):
    """Several BN layers of different widths, averaged at once (Sup-tickets' collection)."""
    layers = draw(st.integers(1, 4))
    t = draw(_t())
    ticket, avg, pairs = {}, ({} if t > 1 else None), []
    for i in range(layers):
        c = draw(st.integers(1, 7))
        m, v = f"bn{i}.running_mean", f"bn{i}.running_var"
        pairs.append((m, v))
        for net in ([ticket] + ([avg] if avg is not None else [])):
            net[m] = draw(_bn_means(dtype, c))
            net[v] = draw(_bn_vars(dtype, c))
    return (avg, ticket, pairs, t), {"mode": draw(st.sampled_from(R.BN_AVG_MODES))}


register("average_bn_stats_all", R.average_bn_stats_all, A.average_bn_stats_all, _average_bn_stats_all_args,
         notes="every BN layer of a network at once: the concatenated statistics, element by element")
