"""Metric values on hand-computed examples and error handling (docs/methods.md §1.14), for both twins."""
import math

import numpy as np
import pytest

import twinsparse.accel.metrics as A
import twinsparse.reference.metrics as R
from twinsparse.conformance.convert import to_torch

BACKENDS = [pytest.param((R, lambda v: v), id="reference"), pytest.param((A, lambda v: to_torch(v, "cpu")), id="accel")]
LN3 = math.log(3.0)


@pytest.fixture(params=BACKENDS)
def be(request):
    mod, conv = request.param
    return lambda name, *args, **kw: getattr(mod, name)(*conv(args), **kw)


def f(*rows):
    return np.array(rows, dtype=np.float64)


def i(*vals):
    return np.array(vals, dtype=np.int64)


def test_accuracy_with_argmax_tie(be):
    # predictions: row 0 -> 1, row 1 tie [3, 3] -> lowest index 0, row 2 -> 0
    z, y = f([1, 2], [3, 3], [0, -1]), i(1, 0, 1)
    assert be("accuracy", z, y) == pytest.approx(2 / 3)
    assert be("predictions", f([0, 5, 5, 1], [2, 2, 2, 2])).tolist() == [1, 0]
    # class 0: 1 of 1 correct; class 1: 1 of 2 correct -> (1 + 0.5) / 2
    assert be("mean_per_class_accuracy", z, y) == pytest.approx(0.75)


def test_nll_known_values(be):
    # softmax([0, 0]) = [1/2, 1/2]; softmax([0, ln 3]) = [1/4, 3/4]
    assert be("nll", f([0, 0]), i(0)) == pytest.approx(math.log(2))
    assert be("nll", f([0, 0], [0, LN3]), i(0, 1)) == pytest.approx((math.log(2) - math.log(0.75)) / 2)


def test_ece_two_samples_by_hand(be):
    # sample 1: logits [0, 0], y = 0: conf = 0.5 exactly, prediction 0 (tie) -> correct
    # sample 2: logits [ln 3, 0], y = 1: conf = 0.75, prediction 0 -> wrong
    # B = 2 bins (0, 0.5], (0.5, 1]: 0.5 sits on the edge and belongs to the FIRST bin, so
    #   ECE = 1/2 |1 - 0.5| + 1/2 |0 - 0.75| = 0.625
    # (had 0.5 gone to the second bin: |1/2 - 0.625| = 0.125)
    z, y = f([0, 0], [LN3, 0]), i(0, 1)
    assert be("ece", z, y, n_bins=2) == pytest.approx(0.625)
    # B = 1: one bin, acc = 0.5, conf = 0.625 -> 0.125
    assert be("ece", z, y, n_bins=1) == pytest.approx(0.125)
    # a perfectly confident correct prediction (conf exactly 1.0, last bin) is perfectly calibrated
    assert be("ece", f([0, -1000]), i(0)) == 0.0


def test_pairwise_diversity_metrics(be):
    a, b = f([1, 0], [0, 1]), f([1, 0], [1, 0])
    assert be("disagreement", a, b) == pytest.approx(0.5)
    assert be("sample_agreement", a, b) == pytest.approx(0.5)
    # p = [1/2, 1/2], q = [3/4, 1/4]
    p, q = f([0, 0]), f([LN3, 0])
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert be("kl_divergence", p, q) == pytest.approx(kl_pq)
    assert be("kl_divergence", p, q, symmetric=True) == pytest.approx((kl_pq + kl_qp) / 2)
    assert be("kl_divergence", p, p) == pytest.approx(0.0, abs=1e-15)
    assert be("prediction_cross_entropy", p, q) == pytest.approx(-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)))


MA = {"w": np.array([[True, False], [True, True]]), "v": np.array([False, False, True])}
MB = {"w": np.array([[True, True], [True, False]]), "v": np.array([False, False, True])}


def test_mask_statistics(be):
    assert be("hamming_distance", MA, MB) == 2
    assert be("hamming_distance", MA, MB, normalized=True) == pytest.approx(2 / 7)
    assert be("mask_change", MA, MB) == pytest.approx(dict(xor_over_kept=2 / 4, xor_over_total=2 / 7))
    assert be("layer_densities", MA) == pytest.approx({"w": 0.75, "v": 1 / 3})
    assert be("total_density", MA) == pytest.approx(4 / 7)


def test_exploration_degree_and_zero_fraction(be):
    counters = {"w": np.array([[0, 2], [1, 0]]), "v": np.array([0, 0, 0, 5])}
    assert be("exploration_degree", counters) == pytest.approx(3 / 8)
    weights = {"w": np.array([0.0, 1.5, -0.0, 2.0]), "b": np.array([0.0])}
    assert be("zero_fraction", weights) == pytest.approx(3 / 5)
    assert be("zero_fraction", np.array([[0.0, 1.0]])) == pytest.approx(0.5)


BAD = [
    ("accuracy", (f([np.nan, 0]), i(0)), {}, ValueError, "non-finite"),
    ("accuracy", (np.zeros((0, 3)), i()), {}, ValueError, "B >= 1"),
    ("accuracy", (f([0, 1]), i(0, 1)), {}, ValueError, "shape"),
    ("nll", (f([0, 1]), i(2)), {}, ValueError, r"\[0, 1\]"),
    ("nll", (f([0, 1]), np.array([0.0])), {}, TypeError, "integer"),
    ("ece", (f([0, 1]), i(0)), {"n_bins": 0}, ValueError, "n_bins"),
    ("ece", (f([0, 1]), i(0)), {"n_bins": 2.5}, TypeError, "n_bins"),
    ("disagreement", (f([0, 1]), f([0, 1, 2])), {}, ValueError, "shape mismatch"),
    ("kl_divergence", (f([0, 1]), f([np.inf, 1])), {}, ValueError, "logits_q"),
    ("hamming_distance", (MA, {"w": MB["w"]}), {}, ValueError, "same layers"),
    ("hamming_distance", (MA, {"w": MB["w"], "v": MB["v"][:2]}), {}, ValueError, "shape mismatch"),
    ("total_density", ({"w": np.array([1, 0])},), {}, TypeError, "boolean"),
    ("layer_densities", ({},), {}, ValueError, "empty"),
    ("mask_change", ({"w": np.zeros(3, bool)}, {"w": np.ones(3, bool)}), {}, ValueError, "keeps no weight"),
    ("exploration_degree", ({"w": np.array([1, -1])},), {}, ValueError, "negative"),
    ("zero_fraction", ({"w": np.array([np.nan])},), {}, ValueError, "non-finite"),
]


@pytest.mark.parametrize("name,args,kw,err,msg", BAD, ids=[f"{b[0]}-{k}" for k, b in enumerate(BAD)])
def test_bad_inputs_raise(be, name, args, kw, err, msg):
    with pytest.raises(err, match=msg):
        be(name, *args, **kw)


def test_accel_rejects_numpy_inputs():
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.accuracy(f([0, 1]), i(1))
