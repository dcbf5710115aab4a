"""Evaluation metrics and mask statistics (docs/methods.md §1.14, §1.1).

Both twins upcast logits to float64 before the softmax, so float32 entries agree to float64
rounding and the ECE bin of a confidence lying exactly on a bin edge is the same in both.
Fractions of counts (accuracies, agreement, densities, Hamming and mask-change ratios, exploration
degree, zero fraction) are an integer count divided by an integer on both sides, so they are compared
bit for bit (``compare_exact``), also under CUDA's arithmetic (device ``cuda-arith``).

Adversarial inputs:
- "tied" rows draw logits from three integer levels: argmax ties (lowest index must win);
- "edge" rows put m of the K classes at one value and the rest 1000 below, so the max softmax is
  exactly 1/m (m = 1 gives exactly 1.0); with n_bins a multiple of m, conf * n_bins is an integer,
  i.e. the confidence sits exactly on a bin edge;
- pairs of logits are copies, small perturbations (predictions flip at ties) or independent;
- mask pairs are equal, a few flips apart, or independent; counters and weights have many zeros.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.metrics as A
import twinsparse.reference.metrics as R
from twinsparse.conformance.registry import compare_exact, register
from twinsparse.conformance.strategies import layer_dict

_SEEDS = st.integers(0, 2**32 - 1)
_N_BINS = st.one_of(st.just(15), st.integers(1, 24), st.sampled_from([2, 4, 6, 10, 12, 20, 30, 60]))


@st.composite
def _logits(draw, dtype, shape=None):
    b, k = shape if shape is not None else (draw(st.integers(1, 40)), draw(st.integers(2, 10)))
    rng = np.random.default_rng(draw(_SEEDS))
    kinds = draw(st.lists(st.sampled_from(["random", "tied", "edge"]), min_size=b, max_size=b))
    rows = []
    for kind in kinds:
        if kind == "random":
            rows.append(rng.normal(size=k) * draw(st.sampled_from([0.1, 1.0, 5.0])))
        elif kind == "tied":
            rows.append(rng.integers(0, 3, size=k).astype(np.float64))
        else:
            m = draw(st.integers(1, k))
            row = np.full(k, -1000.0)
            row[rng.permutation(k)[:m]] = 0.0
            rows.append(row + draw(st.integers(-3, 3)))
    return np.array(rows, dtype=dtype)


def _labels_for(z, rng):
    """Labels: mostly the tie-rule prediction (so accuracy is not trivial), the rest random."""
    pred = np.argmax(z, axis=1)
    rand = rng.integers(0, z.shape[1], size=z.shape[0])
    return np.where(rng.random(z.shape[0]) < 0.6, pred, rand).astype(np.int64)


@st.composite
def _logits_labels(draw, dtype, with_bins=False):
    z = draw(_logits(dtype))
    y = _labels_for(z, np.random.default_rng(draw(_SEEDS)))
    return ((z, y), {"n_bins": draw(_N_BINS)}) if with_bins else ((z, y), {})


@st.composite
def _logit_pair(draw, dtype, kw=None):
    a = draw(_logits(dtype))
    how = draw(st.sampled_from(["copy", "perturb", "independent"]))
    if how == "copy":
        b = a.copy()
    elif how == "perturb":
        noise = np.random.default_rng(draw(_SEEDS)).normal(scale=0.3, size=a.shape)
        b = (a.astype(np.float64) + noise).astype(dtype)
    else:
        b = draw(_logits(dtype, a.shape))
    kwargs = {kw: draw(st.booleans())} if kw else {}
    return (a, b), kwargs


def _bool_array(shape, dtype):
    return hnp.arrays(np.bool_, shape)


@st.composite
def _mask_pair(draw, dtype, kw=None, keep_prev=False):
    a = draw(layer_dict(dtype, draw_array=_bool_array))
    if keep_prev and not any(m.any() for m in a.values()):
        first = next(iter(a))
        a[first].flat[0] = True
    how = draw(st.sampled_from(["equal", "flips", "independent"]))
    rng = np.random.default_rng(draw(_SEEDS))
    if how == "equal":
        b = {n: m.copy() for n, m in a.items()}
    elif how == "flips":
        b = {n: m ^ (rng.random(m.shape) < 0.1) for n, m in a.items()}
    else:
        b = {n: rng.random(m.shape) < 0.5 for n, m in a.items()}
    kwargs = {kw: draw(st.booleans())} if kw else {}
    return (a, b), kwargs


@st.composite
def _masks(draw, dtype):
    return (draw(layer_dict(dtype, draw_array=_bool_array)),), {}


def _counter_array(shape, dtype):
    elems = st.sampled_from([0, 0, 1, 2, 7])
    return st.one_of(hnp.arrays(np.int64, shape, elements=elems), hnp.arrays(dtype, shape, elements=elems))


@st.composite
def _counters(draw, dtype):
    return (draw(layer_dict(dtype, draw_array=_counter_array)),), {}


def _sparse_weights(shape, dtype):
    return hnp.arrays(dtype, shape, elements=st.sampled_from([0.0, 0.0, -0.0, 1.5, -2.25]))


@st.composite
def _weights(draw, dtype):
    d = draw(layer_dict(dtype, draw_array=_sparse_weights))
    return ((d,) if draw(st.booleans()) else (next(iter(d.values())),)), {}


register("metrics.predictions", R.predictions, A.predictions, lambda dt: _logits(dt).map(lambda z: ((z,), {})))
register("metrics.accuracy", R.accuracy, A.accuracy, _logits_labels, compare=compare_exact)
register("metrics.mean_per_class_accuracy", R.mean_per_class_accuracy, A.mean_per_class_accuracy, _logits_labels,
         compare=compare_exact)
register("metrics.nll", R.nll, A.nll, _logits_labels)
register("metrics.ece", R.ece, A.ece, lambda dt: _logits_labels(dt, with_bins=True))
register("metrics.disagreement", R.disagreement, A.disagreement, _logit_pair, compare=compare_exact)
register("metrics.sample_agreement", R.sample_agreement, A.sample_agreement, _logit_pair, compare=compare_exact)
register("metrics.kl_divergence", R.kl_divergence, A.kl_divergence, lambda dt: _logit_pair(dt, kw="symmetric"))
register("metrics.prediction_cross_entropy", R.prediction_cross_entropy, A.prediction_cross_entropy, _logit_pair)
register("metrics.hamming_distance", R.hamming_distance, A.hamming_distance,
         lambda dt: _mask_pair(dt, kw="normalized"), dtypes=(np.float64,), compare=compare_exact)
register("metrics.mask_change", R.mask_change, A.mask_change,
         lambda dt: _mask_pair(dt, keep_prev=True), dtypes=(np.float64,), compare=compare_exact)
register("metrics.layer_densities", R.layer_densities, A.layer_densities, _masks, dtypes=(np.float64,),
         compare=compare_exact)
register("metrics.total_density", R.total_density, A.total_density, _masks, dtypes=(np.float64,),
         compare=compare_exact)
register("metrics.exploration_degree", R.exploration_degree, A.exploration_degree, _counters, compare=compare_exact)
register("metrics.zero_fraction", R.zero_fraction, A.zero_fraction, _weights, compare=compare_exact)
