"""Sparse Cocktail operators ([SC] §3.4-3.6, Eq. 1, App. C Alg. 1; docs/methods.md §1.7, §8.2, §8.1, §8.3):
UMG channel scores / masks, nested IMP masks, the dense-pivot loss, greedy interpolation and the IMP
schedules. Hand-checked values, invariants, bad input with clear errors. Array operators run on both
twins (reference NumPy, accel torch).
"""
import math

import numpy as np
import pytest
import torch

import twinsparse.accel.cocktail_ops as A
import twinsparse.reference.cocktail_ops as R
from twinsparse.reference.schedules import gmp_density_at


def to_np(x):
    return x


def to_torch(x):
    if isinstance(x, dict):
        return {k: to_torch(v) for k, v in x.items()}
    return None if x is None else torch.as_tensor(np.asarray(x))


def out_np(x):
    if isinstance(x, dict):
        return {k: out_np(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(out_np(v) for v in x)
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


BACKENDS = [pytest.param((R, to_np), id="reference"), pytest.param((A, to_torch), id="accel")]


@pytest.fixture(params=BACKENDS)
def be(request):
    return request.param


# ============================================================================ UMG

W = np.array([[[1.0, -2.0], [3.0, 0.0]],        # channel 0
              [[4.0, 4.0], [0.0, 0.0]],         # channel 1
              [[0.0, 1.0], [1.0, -1.0]]])       # channel 2  (shape [O=3, I=2, 2] treated as [O, -1])
MU = np.array([[[True, False], [True, False]], [[True, False], [False, False]], [[True, True], [True, True]]])
MNM = np.array([[[False, True], [True, False]], [[True, True], [False, False]], [[False, True], [False, True]]])


def test_umg_scores_hand_checked(be):
    mod, conv = be
    s = out_np(mod.umg_channel_scores(conv(W), conv(MU), conv(MNM), beta=0.8))
    # channel 0: 0.8 * (1 + 3) + 0.2 * (2 + 3); channel 1: 0.8 * 4 + 0.2 * 8; channel 2: 0.8 * 3 + 0.2 * 2
    np.testing.assert_allclose(s, [0.8 * 4 + 0.2 * 5, 0.8 * 4 + 0.2 * 8, 0.8 * 3 + 0.2 * 2])
    dense = out_np(mod.umg_channel_scores(conv(W), conv(MU), None, beta=0.8))
    np.testing.assert_allclose(dense, out_np(mod.umg_channel_scores(conv(W), conv(MU), conv(np.ones_like(MU)), 0.8)))
    np.testing.assert_allclose(out_np(mod.umg_channel_scores(conv(W), conv(MU), conv(MNM), beta=1.0)), [4, 4, 3])


def test_umg_mask_exact_count_broadcast_and_ties(be):
    mod, conv = be
    w = np.ones((6, 2, 3, 3))                                       # all channels tie: lower index wins
    m = out_np(mod.umg_channel_mask(conv(w), conv(w > 0), None, 0.5))
    assert m.shape == w.shape and m.dtype == bool
    keep = m.reshape(6, -1)
    assert (keep.all(axis=1) | ~keep.any(axis=1)).all()             # whole channels
    np.testing.assert_array_equal(keep[:, 0], [True, True, True, False, False, False])
    for d in (0.0, 0.1, 0.9, 1.0):
        assert out_np(mod.umg_channel_mask(conv(w), conv(w > 0), None, d))[:, 0, 0, 0].sum() == math.floor(d * 6 + 0.5)


def test_umg_mask_nested_alive(be):
    mod, conv = be
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4))
    alive = np.array([True, False, True, True, False, True, True, False])
    for form in (alive, np.broadcast_to(alive[:, None], w.shape).copy()):
        m = out_np(mod.umg_channel_mask(conv(w), conv(w != 0), None, 0.5, alive=conv(form)))[:, 0]
        assert m.sum() == 4 and not (m & ~alive).any()
    with pytest.raises(ValueError, match="keeps 6 of 8 channels but only 5 are alive"):
        mod.umg_channel_mask(conv(w), conv(w != 0), None, 0.75, alive=conv(alive))
    ragged = np.ones(w.shape, bool)
    ragged[0, 0] = False
    with pytest.raises(ValueError, match="every output channel all-True or all-False"):
        mod.umg_channel_mask(conv(w), conv(w != 0), None, 0.5, alive=conv(ragged))


def test_umg_masks_per_layer_same_ratio(be):
    mod, conv = be
    rng = np.random.default_rng(1)
    ws = {"conv1": rng.normal(size=(10, 3, 3, 3)), "conv2": rng.normal(size=(20, 10, 3, 3))}
    mu = {k: np.abs(v) > 0.5 for k, v in ws.items()}
    masks = out_np(mod.umg_channel_masks(conv(ws), conv(mu), None, 1 - R.channel_sparsity_at(3)))
    assert masks["conv1"][:, 0, 0, 0].sum() == 7 and masks["conv2"][:, 0, 0, 0].sum() == 15   # 0.729 * O


def test_umg_bad_input(be):
    mod, conv = be
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta=.* is outside the allowed range \[0, 1\]"):
            mod.umg_channel_scores(conv(W), conv(MU), None, beta=beta)
    with pytest.raises(TypeError, match="beta must be a number"):
        mod.umg_channel_scores(conv(W), conv(MU), None, beta=True)
    with pytest.raises(ValueError, match=r"channel_density=1\.2 is outside the allowed range \[0, 1\]"):
        mod.umg_channel_mask(conv(W), conv(MU), None, 1.2)
    with pytest.raises(ValueError, match="mask_u must be a boolean mask"):
        mod.umg_channel_scores(conv(W), conv(MU.astype(np.float64)), None)
    with pytest.raises(ValueError, match="Linear .* or Conv"):
        mod.umg_channel_scores(conv(np.ones(3)), conv(np.ones(3, bool)), None)
    with pytest.raises(ValueError, match="masks_u must name exactly the layers"):
        mod.umg_channel_masks(conv({"a": W}), conv({"b": MU}), None, 0.5)


# ============================================================================ IMP

def test_imp_unstructured_nested_counts(be):
    mod, conv = be
    rng = np.random.default_rng(2)
    ws = {"a": rng.normal(size=(6, 5)), "b": rng.normal(size=(4, 3, 3, 3))}
    prev = {k: np.ones(v.shape, bool) for k, v in ws.items()}
    total = sum(v.size for v in ws.values())
    for _ in range(10):
        n_prev = sum(v.sum() for v in prev.values())
        new = out_np(mod.imp_unstructured_masks(conv(ws), conv(prev), 0.2))
        assert sum(v.sum() for v in new.values()) == n_prev - math.floor(0.2 * n_prev + 0.5)  # 0.2 of the remaining go
        assert all(not (new[k] & ~prev[k]).any() for k in ws)           # nested
        prev = new
    assert abs(sum(v.sum() for v in prev.values()) / total - 0.8 ** 10) < 0.01


def test_imp_bad_input(be):
    mod, conv = be
    ws = {"a": np.ones((2, 2))}
    with pytest.raises(ValueError, match=r"rate=1\.0 is outside the allowed range \[0, 1\)"):
        mod.imp_unstructured_masks(conv(ws), conv({"a": np.ones((2, 2), bool)}), 1.0)
    with pytest.raises(TypeError, match="must be a boolean mask"):
        mod.imp_unstructured_masks(conv(ws), conv({"a": np.ones((2, 2))}), 0.2)


# ============================================================================ Eq. 1

def test_dense_pivot_loss_value_and_gradient():
    rng = np.random.default_rng(3)
    s, d = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    y = rng.integers(0, 5, size=4)
    for T in (1.0, 2.0):
        loss, g = R.dense_pivot_loss(s, d, y, T)
        ls = s - s.max(1, keepdims=True)
        logp = ls - np.log(np.exp(ls).sum(1, keepdims=True))
        q = np.exp(d / T) / np.exp(d / T).sum(1, keepdims=True)
        zs = s / T - (s / T).max(1, keepdims=True)
        logq = zs - np.log(np.exp(zs).sum(1, keepdims=True))
        expect = 0.5 * (-logp[np.arange(4), y].mean() - (q * logq).sum(1).mean())
        assert loss == pytest.approx(expect, rel=1e-12)
        eps = 1e-6                                                  # central finite differences
        num = np.zeros_like(s)
        for i in range(4):
            for j in range(5):
                e = np.zeros_like(s)
                e[i, j] = eps
                num[i, j] = (R.dense_pivot_loss(s + e, d, y, T)[0] - R.dense_pivot_loss(s - e, d, y, T)[0]) / (2 * eps)
        np.testing.assert_allclose(g, num, atol=1e-8)


def test_dense_logits_are_a_constant():
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    d = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    A.dense_pivot_criterion(s, d, torch.tensor([0, 1, 2])).backward()
    assert s.grad is not None and d.grad is None                    # stop gradient on D(X)


def test_dense_pivot_bad_input(be):
    mod, conv = be
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"temperature=0\.0 is outside the allowed range \(0, inf\)"):
        mod.dense_pivot_loss(conv(s), conv(s), conv(np.array([0, 1])), 0.0)
    with pytest.raises(ValueError, match="same float dtype and shape"):
        mod.dense_pivot_loss(conv(s), conv(np.zeros((2, 4))), conv(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        mod.dense_pivot_loss(conv(s), conv(s), conv(np.array([0, 3])))


def test_pivot_step_order():
    assert [R.pivot_step(i, ["u", "c", "nm"]) for i in range(1, 9)] == \
        ["dense", "u", "dense", "c", "dense", "nm", "dense", "u"]
    with pytest.raises(ValueError, match="list of sparse patterns is empty"):
        R.pivot_step(2, [])
    with pytest.raises(ValueError, match="i=0"):
        R.pivot_step(0, ["u"])


# ============================================================================ greedy interpolation

def test_greedy_argmax_and_tie_to_largest_alpha():
    table = {2: {a: 0.5 for a in R.CANDIDATE_POOL}, 3: {a: a * (1 - a) for a in R.CANDIDATE_POOL}}
    table[2][0.3] = 0.9
    assert R.greedy_interpolation_table(table) == [0.3, 0.5]
    flat = {2: {a: 1.0 for a in R.CANDIDATE_POOL}}
    assert R.greedy_interpolation_table(flat) == [1.0]             # all tied: keep D_best (alpha = 1)
    assert R.choose_alpha({0.2: 0.7, 0.9: 0.7, 0.5: 0.1}) == 0.9
    assert A.greedy_interpolation is R.greedy_interpolation


def test_greedy_objective_sees_previous_choices():
    seen = []

    def objective(k, alpha, prev):
        seen.append((k, prev))
        return -abs(alpha - (0.8 if k == 2 else 0.4))

    assert R.greedy_interpolation(4, objective) == [0.8, 0.4, 0.4]
    assert {s for s in seen} == {(2, ()), (3, (0.8,)), (4, (0.8, 0.4))}
    assert R.greedy_interpolation(1, objective) == []


def test_interpolation_coefficients_fold():
    alphas = [0.5, 0.8, 0.95]
    nets = [1.0, 10.0, 100.0, 1000.0]
    best = nets[0]
    for a, dk in zip(alphas, nets[1:]):
        best = a * best + (1 - a) * dk
    c = R.interpolation_coefficients(alphas)
    assert sum(c) == pytest.approx(1.0) and np.dot(c, nets) == pytest.approx(best)


def test_greedy_bad_input():
    with pytest.raises(ValueError, match="candidate pool of interpolation factors is empty"):
        R.greedy_interpolation(3, lambda k, a, p: 0.0, pool=[])
    with pytest.raises(ValueError, match=r"\[1\.5\] are outside the allowed range \[0, 1\]"):
        R.greedy_interpolation(3, lambda k, a, p: 0.0, pool=[0.5, 1.5])
    with pytest.raises(ValueError, match="repeated values"):
        R.greedy_interpolation(3, lambda k, a, p: 0.0, pool=[0.5, 0.5])
    with pytest.raises(ValueError, match="not finite"):
        R.greedy_interpolation(3, lambda k, a, p: float("nan"))
    with pytest.raises(ValueError, match="rows k = 2..N"):
        R.greedy_interpolation_table({3: {}})
    with pytest.raises(ValueError, match=r"table\[2\] has no value for alpha"):
        R.greedy_interpolation_table({2: {0.5: 1.0}})


# ============================================================================ schedules

def test_imp_schedule_matches_spec_table():
    rows = R.imp_schedule()
    assert [round(r["unstructured"], 3) for r in rows] == [0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.79, 0.832, 0.866, 0.893]
    assert [round(r["channel"], 3) for r in rows] == [0.1, 0.19, 0.271, 0.344, 0.41, 0.469, 0.522, 0.57, 0.613, 0.651]
    assert [r["nm"] for r in rows] == [None] + [(1, 2)] * 3 + [(2, 4)] * 3 + [(4, 8)] * 3
    assert [r["k"] for r in rows if r["nm_new"]] == [2, 5, 8]
    # [SC] Table 2 columns 0.20 / 0.49 / 0.74 / 0.87 and 0.10 / 0.27 / 0.47 / 0.61 are k = 1, 3, 6, 9
    assert [round(R.unstructured_sparsity_at(k), 2) for k in (1, 3, 6, 9)] == [0.2, 0.49, 0.74, 0.87]
    assert [round(R.channel_sparsity_at(k), 2) for k in (1, 3, 6, 9)] == [0.1, 0.27, 0.47, 0.61]


def test_schedule_bad_input_and_gmp_reuse():
    with pytest.raises(ValueError, match="IMP iteration k=0"):
        R.unstructured_sparsity_at(0)
    with pytest.raises(ValueError, match=r"channel rate=1\.0 is outside the allowed range \[0, 1\)"):
        R.channel_sparsity_at(2, rate=1.0)
    assert gmp_density_at(0, 1.0, 0.1, 0, 10) == 1.0 and gmp_density_at(10, 1.0, 0.1, 0, 10) == pytest.approx(0.1)
