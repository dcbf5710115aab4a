"""Dynamic sparse training operators, both twins: hand-checked drop/grow, DST-EE scores, counters,
SNFS/GraNet/ITOP helpers, and bad input (docs/methods.md §2.1, §3.2)."""
import copy
import math

import numpy as np
import pytest
import torch

import twinsparse.accel.dst as A
import twinsparse.accel.topk as AT
import twinsparse.reference.dst as R
import twinsparse.reference.topk as RT

IMPLS = pytest.mark.parametrize("impl", [R, A], ids=["reference", "accel"])


def _in(impl, obj):
    """NumPy inputs as the backend wants them (dicts/arrays -> torch for accel)."""
    if impl is R:
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict) and obj and isinstance(next(iter(obj.values())), np.ndarray):
        return {k: torch.from_numpy(v.copy()) for k, v in obj.items()}
    return obj


def _np(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _np(v) for k, v in obj.items()}
    return obj


def call(impl, fn, *args, **kwargs):
    out = getattr(impl, fn)(*[_in(impl, a) for a in args], **{k: _in(impl, v) for k, v in kwargs.items()})
    return _np(out)


# ----------------------------------------------------------------------------- drop / grow

MASK = {"a": np.array([[True, True, True, False], [True, False, True, False]])}
W_ABS = {"a": np.array([[0.5, 0.1, 0.1, 9.0], [0.1, 9.0, 2.0, 0.0]])}


@IMPLS
def test_drop_removes_smallest_active_with_ties_to_the_lower_index(impl):
    # active |w| (flat index): 0.5@0, 0.1@1, 0.1@2, 0.1@4, 2.0@6; dropping 2 keeps the top 3 by
    # (-score, index) = 2.0@6, 0.5@0, 0.1@1 -> the tied 0.1s at 2 and 4 are dropped
    out = call(impl, "drop", MASK, W_ABS, {"a": 2})["a"]
    assert out.tolist() == [[True, True, False, False], [False, False, True, False]]
    assert out.sum() == MASK["a"].sum() - 2


@IMPLS
def test_drop_never_touches_inactive_positions(impl):
    out = call(impl, "drop", MASK, W_ABS, {"a": 5})["a"]
    assert not out.any()
    out = call(impl, "drop", MASK, W_ABS, {"a": 0})["a"]
    assert np.array_equal(out, MASK["a"])


@IMPLS
def test_grow_picks_highest_scores_among_inactive(impl):
    g = {"a": np.array([[100.0, 100.0, 100.0, 1.0], [100.0, 3.0, 100.0, 3.0]])}
    out = call(impl, "grow", MASK, g, {"a": 2})["a"]
    # inactive: i3 (1.0), i5 (3.0), i7 (3.0) -> grow i5 and i7, never the active 100s
    assert out.tolist() == [[True, True, True, False], [True, True, True, True]]
    out1 = call(impl, "grow", MASK, g, {"a": 1})["a"]
    assert out1.reshape(-1)[5] and not out1.reshape(-1)[7]      # tie 3.0 -> lower index


@IMPLS
def test_drop_and_grow_regrows_just_dropped_and_keeps_the_count(impl):
    masks = {"a": np.array([True, True, False, False]), "b": np.array([[True, False], [True, True]])}
    drop_s = {"a": np.array([1.0, 5.0, 0.0, 0.0]), "b": np.array([[2.0, 0.0], [1.0, 3.0]])}
    grow_s = {"a": np.array([9.0, 0.0, 1.0, 2.0]), "b": np.array([[0.0, 0.5], [7.0, 0.0]])}
    out = call(impl, "drop_and_grow", masks, drop_s, grow_s, {"a": 1, "b": 1})
    # a: drop index 0 (score 1), grow among {0, 2, 3}: index 0 (9.0) regrows
    assert out["a"].tolist() == [True, True, False, False]
    # b: drop [1,0] (score 1), grow among {[0,1], [1,0]}: [1,0] (7.0) regrows
    assert out["b"].tolist() == [[True, False], [True, True]]
    out = call(impl, "drop_and_grow", masks, drop_s, {"a": np.array([0.0, 0.0, 1.0, 2.0]), "b": grow_s["b"]},
               {"a": 1, "b": 0})
    assert out["a"].tolist() == [False, True, False, True]
    for n in masks:
        assert out[n].sum() == masks[n].sum()


@IMPLS
def test_drop_and_grow_keeps_active_count_on_random_layers(impl):
    rng = np.random.default_rng(3)
    masks = {f"l{i}": rng.random((5, 7)) < d for i, d in enumerate([0.0, 0.3, 0.8, 1.0])}
    ds = {n: rng.integers(0, 3, m.shape).astype(float) for n, m in masks.items()}
    gs = {n: rng.integers(0, 3, m.shape).astype(float) for n, m in masks.items()}
    counts = call(impl, "swap_counts", masks, 0.5)
    out = call(impl, "drop_and_grow", masks, ds, gs, counts)
    assert {n: int(o.sum()) for n, o in out.items()} == {n: int(m.sum()) for n, m in masks.items()}


@IMPLS
def test_growth_larger_than_pool_and_drop_larger_than_active_raise(impl):
    with pytest.raises(ValueError, match="larger than the inactive pool"):
        call(impl, "grow", MASK, W_ABS, {"a": 4})               # pool is 3
    with pytest.raises(ValueError, match="cannot drop 6 weights, only 5 are active"):
        call(impl, "drop", MASK, W_ABS, {"a": 6})
    with pytest.raises(ValueError, match="larger than the inactive pool"):
        call(impl, "drop_and_grow", MASK, W_ABS, W_ABS, {"a": 1}, grow_counts={"a": 5})  # pool 3 + 1
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        call(impl, "drop", MASK, W_ABS, {"a": -1})
    with pytest.raises(ValueError, match="missing"):
        call(impl, "drop", MASK, W_ABS, {"b": 1})


@IMPLS
def test_bad_scores_and_masks_raise(impl):
    bad = {"a": W_ABS["a"].copy()}
    bad["a"][0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        call(impl, "drop", MASK, bad, {"a": 1})
    with pytest.raises(ValueError, match="non-finite"):
        call(impl, "drop_and_grow", MASK, W_ABS, bad, {"a": 1})
    with pytest.raises(ValueError, match="shape mismatch"):
        call(impl, "grow", MASK, {"a": np.zeros((2, 3))}, {"a": 1})
    with pytest.raises(TypeError, match="boolean mask"):
        call(impl, "drop", {"a": MASK["a"].astype(np.float64)}, W_ABS, {"a": 1})


@IMPLS
def test_swap_counts_floor_and_fraction_range(impl):
    masks = {"a": np.array([True] * 7 + [False] * 3), "b": np.zeros(4, bool)}
    assert call(impl, "swap_counts", masks, 0.3) == {"a": 2, "b": 0}     # floor(2.1)
    assert call(impl, "swap_counts", masks, 1.0) == {"a": 7, "b": 0}
    assert call(impl, "swap_counts", masks, 0) == {"a": 0, "b": 0}
    for f in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="outside the allowed range"):
            call(impl, "swap_counts", masks, f)


@IMPLS
def test_inputs_are_not_mutated(impl):
    masks = {"a": np.array([True, False, True, False])}
    s = {"a": np.array([1.0, 2.0, 0.0, 3.0])}
    m_in, s_in = _in(impl, masks), _in(impl, s)
    before_m, before_s = copy.deepcopy(m_in), copy.deepcopy(s_in)
    impl.drop_and_grow(m_in, s_in, s_in, {"a": 1})
    impl.explored_union(m_in, m_in)
    impl.init_counters(m_in)
    for got, want in ((m_in, before_m), (s_in, before_s)):
        assert np.array_equal(_np(got["a"]), _np(want["a"]))


# ----------------------------------------------------------------------------- counters, DST-EE

@IMPLS
def test_counters_init_and_increment(impl):
    masks = {"a": np.array([[True, False], [False, True]])}
    n0 = call(impl, "init_counters", masks)
    assert n0["a"].tolist() == [[1, 0], [0, 1]] and n0["a"].dtype == np.int64
    z = call(impl, "init_counters", masks, init="zeros")
    assert z["a"].tolist() == [[0, 0], [0, 0]] and z["a"].dtype == np.int64
    n1 = call(impl, "increment_counters", n0, {"a": np.array([[True, True], [False, True]])})
    assert n1["a"].tolist() == [[2, 1], [0, 2]]
    with pytest.raises(ValueError, match="'ones' is not allowed"):
        call(impl, "init_counters", masks, init="ones")


@IMPLS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dst_ee_scores_hand_values(impl, dtype):
    g = {"a": np.array([0.5, -0.5], dtype=dtype)}
    N = {"a": np.array([2, 0], dtype=np.int64)}
    t = 7   # ln 7
    c, eps = 3.0, 1e-3
    eq1 = call(impl, "dst_ee_scores", g, N, t, c, eps)["a"]
    assert eq1.dtype == dtype
    want = [0.5 + c * math.log(t) / (2 + eps), 0.5 + c * math.log(t) / eps]
    np.testing.assert_allclose(eq1, want, rtol=1e-6)
    text = call(impl, "dst_ee_scores", g, N, t, c, eps, form="text")["a"]
    np.testing.assert_allclose(text, [0.5 + math.log(t) / (2 + c), 0.5 + math.log(t) / c], rtol=1e-6)
    t1 = call(impl, "dst_ee_scores", g, N, 1, c, eps)["a"]          # ln 1 = 0: pure exploitation
    np.testing.assert_allclose(t1, [0.5, 0.5])


@IMPLS
def test_dst_ee_scores_closed_form_for_several_c(impl):
    # g = 0.5, N = 2, eps = 1, t = 8 (t is an integer iteration, so ln t = 2 exactly is impossible)
    g, N = {"a": np.array([0.5])}, {"a": np.array([2])}
    for c in (0.0, 1.0, 10.0):
        got = call(impl, "dst_ee_scores", g, N, 8, c, 1.0)["a"][0]
        assert got == pytest.approx(0.5 + c * math.log(8) / 3.0, rel=1e-12)


@IMPLS
def test_dst_ee_scores_bad_input(impl):
    g, N = {"a": np.array([0.5])}, {"a": np.array([2])}
    with pytest.raises(ValueError, match="c=-1"):
        call(impl, "dst_ee_scores", g, N, 5, -1.0, 1e-3)
    for eps in (0.0, -1e-3):
        with pytest.raises(ValueError, match=f"eps={eps!r}"):
            call(impl, "dst_ee_scores", g, N, 5, 1.0, eps)
    for t in (0, -3, 1.5):
        with pytest.raises(ValueError, match=f"t={t!r}"):
            call(impl, "dst_ee_scores", g, N, t, 1.0, 1e-3)
    with pytest.raises(ValueError, match="needs c > 0"):
        call(impl, "dst_ee_scores", g, N, 5, 0.0, 1e-3, form="text")
    with pytest.raises(ValueError, match="'eq2' is not allowed"):
        call(impl, "dst_ee_scores", g, N, 5, 1.0, 1e-3, form="eq2")
    with pytest.raises(ValueError, match="non-finite"):
        call(impl, "dst_ee_scores", {"a": np.array([np.nan])}, N, 5, 1.0, 1e-3)
    with pytest.raises(ValueError, match="shape mismatch"):
        call(impl, "dst_ee_scores", g, {"a": np.array([1, 2])}, 5, 1.0, 1e-3)


def test_check_exploration_is_the_reference_one():
    assert A.check_exploration is R.check_exploration
    assert A.COUNTER_INITS == R.COUNTER_INITS and A.EXPLORATION_FORMS == R.EXPLORATION_FORMS


# ----------------------------------------------------------------------------- SNFS / GraNet / ITOP

@IMPLS
def test_ema_update(impl):
    g = {"a": np.array([1.0, -2.0])}
    m1 = call(impl, "ema_update", None, g, 0.9)
    np.testing.assert_allclose(m1["a"], [0.1, -0.2])
    m2 = call(impl, "ema_update", m1, {"a": np.array([0.0, 0.0])}, 0.5)
    np.testing.assert_allclose(m2["a"], [0.05, -0.1])
    for beta in (1.0, -0.1):
        with pytest.raises(ValueError, match="beta="):
            call(impl, "ema_update", None, g, beta)


@IMPLS
def test_mean_abs_over_mask_with_an_empty_layer(impl):
    v = {"a": np.array([1.0, -3.0, 100.0]), "b": np.array([5.0, 6.0])}
    m = {"a": np.array([True, True, False]), "b": np.array([False, False])}
    out = call(impl, "mean_abs_over_mask", v, m)
    assert out == {"a": 2.0, "b": 0.0}
    assert all(type(x) is float for x in out.values())


@IMPLS
def test_prune_to_count_is_global_with_ties(impl):
    masks = {"a": np.array([True, True, False]), "b": np.array([[True, True], [False, True]])}
    s = {"a": np.array([1.0, 2.0, 9.0]), "b": np.array([[2.0, 0.5], [9.0, 2.0]])}
    out = call(impl, "prune_to_count", masks, s, 2)
    # active: a0=1, a1=2, b00=2, b01=.5, b11=2; top 2 with ties -> a1 then b00 (concatenation order)
    assert out["a"].tolist() == [False, True, False]
    assert out["b"].tolist() == [[True, False], [False, False]]
    out = call(impl, "prune_to_count", masks, s, 5)
    assert all(np.array_equal(out[n], masks[n]) for n in masks)
    with pytest.raises(ValueError, match="n_keep=6"):
        call(impl, "prune_to_count", masks, s, 6)


@IMPLS
def test_explored_union(impl):
    b = {"a": np.array([True, False, False])}
    m = {"a": np.array([False, False, True])}
    assert call(impl, "explored_union", b, m)["a"].tolist() == [True, False, True]


# ----------------------------------------------------------------------------- top-k within

@pytest.mark.parametrize("impl", [RT, AT], ids=["reference", "accel"])
def test_topk_within(impl):
    s = np.array([[5.0, 1.0, 1.0], [1.0, 7.0, 1.0]])
    cand = np.array([[False, True, True], [True, False, True]])
    out = call(impl, "topk_within", s, cand, 2)
    assert out.tolist() == [[False, True, True], [False, False, False]]
    assert np.array_equal(call(impl, "topk_within", s, cand, 4), cand)
    assert not call(impl, "topk_within", s, cand, 0).any()
    with pytest.raises(ValueError, match="k=5"):
        call(impl, "topk_within", s, cand, 5)
    with pytest.raises(ValueError, match="candidates must be a boolean"):
        call(impl, "topk_within", s, cand.astype(np.int64), 1)
    with pytest.raises(ValueError, match="candidates must be a boolean"):
        call(impl, "topk_within", s, cand[:1], 1)
    with pytest.raises(ValueError, match="non-finite"):
        call(impl, "topk_within", np.array([np.inf, 0.0]), np.array([True, True]), 1)


def test_segmented_topk_within_by_hand_and_bad_input():
    s = torch.tensor([3.0, 3.0, 1.0, 2.0, 2.0, 2.0, 9.0])
    cand = torch.tensor([True, True, True, False, True, True, False])
    out = A.segmented_topk_within(s, cand, [3, 0, 4], [1, 0, 1])
    assert out.tolist() == [True, False, False, False, True, False, False]
    with pytest.raises(ValueError, match="k of segment 2=3"):
        A.segmented_topk_within(s, cand, [3, 0, 4], [1, 0, 3])
    with pytest.raises(ValueError, match="add up to 6"):
        A.segmented_topk_within(s, cand, [3, 3], [0, 0])
