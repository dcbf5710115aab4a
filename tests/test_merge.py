"""Merge operators (docs/methods.md §4.3, §5.3): hand-checked values, exact re-pruning counts, bad inputs,
inputs never mutated. Every behavioural test runs on both twins (reference NumPy, accel torch).
"""
import copy

import numpy as np
import pytest
import torch

import twinsparse.accel.merge as A
import twinsparse.reference.merge as R


def np_in(x):
    if isinstance(x, dict):
        return {k: np_in(v) for k, v in x.items()}
    if isinstance(x, list) and x and isinstance(x[0], dict):   # a list of networks
        return [np_in(v) for v in x]
    return None if x is None else np.asarray(x)


def torch_in(x):
    if isinstance(x, dict):
        return {k: torch_in(v) for k, v in x.items()}
    if isinstance(x, list) and x and isinstance(x[0], dict):   # a list of networks
        return [torch_in(v) for v in x]
    return None if x is None else torch.as_tensor(np.asarray(x))


def out_np(x):
    if isinstance(x, dict):
        return {k: out_np(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(out_np(v) for v in x)
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


BACKENDS = [pytest.param((R, np_in), id="reference"), pytest.param((A, torch_in), id="accel")]


@pytest.fixture(params=BACKENDS)
def be(request):
    return request.param


def tickets3():
    return [{"w": [[1.0, 0.0], [3.0, -2.0]], "b": [0.5]},
            {"w": [[0.0, 2.0], [0.0, 4.0]], "b": [1.5]},
            {"w": [[4.0, 0.0], [6.0, 1.0]], "b": [-0.5]}]


def snapshot(x):
    return copy.deepcopy(out_np(x))


def assert_same(a, b):
    a, b = out_np(a), out_np(b)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------- hand values

def test_cia_of_three_is_plain_mean(be):
    M, inp = be
    tk = inp(tickets3())
    before = snapshot(tk)
    out = out_np(M.cia(tk))
    np.testing.assert_allclose(out["w"], [[5 / 3, 2 / 3], [3.0, 1.0]])
    np.testing.assert_allclose(out["b"], [0.5])
    for t, b in zip(tk, before):
        assert_same(t, b)


def test_running_cia_over_four_equals_cia(be):
    M, inp = be
    rng = np.random.default_rng(0)
    tks = [{"w": rng.standard_normal((3, 4)), "c": rng.standard_normal((2, 1, 3, 3))} for _ in range(4)]
    avg = None
    for t, tk in enumerate(inp(tks), start=1):
        avg = M.superpose_cia(avg, tk, t)
    want = out_np(M.cia(inp(tks)))
    got = out_np(avg)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
        np.testing.assert_allclose(got[k], np.mean([t[k] for t in tks], axis=0), rtol=1e-12)


def test_superpose_cia_first_ticket_is_a_copy(be):
    M, inp = be
    tk = inp({"w": [1.0, 2.0]})
    out = M.superpose_cia(None, tk, 1)
    out["w"][0] = 99.0
    assert float(tk["w"][0]) == 1.0


def test_caa_hand_values(be):
    M, inp = be
    tk = tickets3()
    masks = [{"w": np.asarray(t["w"]) != 0} for t in tk]
    masks[1]["w"][0, 0] = False
    out = out_np(M.caa(inp(tk), inp(masks)))
    # [0,0]: active in tickets 0, 2 -> (1+4)/2; [0,1]: active only in ticket 1 -> its value 2;
    # [1,0]: active in 0, 2 -> (3+6)/2; [1,1]: all three -> 1; "b" has no mask -> plain mean
    np.testing.assert_allclose(out["w"], [[2.5, 2.0], [4.5, 1.0]])
    np.testing.assert_allclose(out["b"], [0.5])


def test_caa_never_active_is_zero(be):
    M, inp = be
    tk = [{"w": [0.0, 1.0]}, {"w": [0.0, 3.0]}]
    masks = [{"w": [False, True]}, {"w": [False, True]}]
    out = out_np(M.caa(inp(tk), inp(masks)))
    np.testing.assert_array_equal(out["w"], [0.0, 2.0])
    assert np.all(np.isfinite(out["w"]))


def test_cima_beta_08_by_hand(be):
    M, inp = be
    first, second = inp({"w": [1.0, -2.0]}), inp({"w": [3.0, 4.0]})
    avg = M.superpose_cima(None, first, 0.8)
    np.testing.assert_allclose(out_np(avg)["w"], [1.0, -2.0])
    avg = M.superpose_cima(avg, second, 0.8)
    np.testing.assert_allclose(out_np(avg)["w"], [0.8 * 1 + 0.2 * 3, 0.8 * -2 + 0.2 * 4])


@pytest.mark.parametrize("alpha,pick", [(0.0, "b"), (1.0, "a")])
def test_interpolate_edges(be, alpha, pick):
    M, inp = be
    a = {"w": np.array([[1.5, -2.0]]), "n": np.array(7, dtype=np.int64)}
    b = {"w": np.array([[4.0, 0.25]]), "n": np.array(3, dtype=np.int64)}
    out = out_np(M.interpolate(inp(a), inp(b), alpha))
    np.testing.assert_array_equal(out["w"], (a if pick == "a" else b)["w"])
    assert out["n"] == 7 and out["n"].dtype == np.int64 and out["n"].shape == ()


def test_interpolate_midpoint(be):
    M, inp = be
    out = out_np(M.interpolate(inp({"w": [2.0, 0.0]}), inp({"w": [0.0, 4.0]}), 0.25))
    np.testing.assert_allclose(out["w"], [0.5, 3.0])


def test_merged_masks(be):
    M, inp = be
    out = out_np(M.merged_masks(inp({"w": [[0.0, 1.0], [-0.0, -2.0]]})))
    np.testing.assert_array_equal(out["w"], [[False, True], [False, True]])


def test_reprune_per_layer_exact_counts(be):
    M, inp = be
    rng = np.random.default_rng(1)
    w = {"a": np.round(rng.standard_normal((10, 10)), 1), "b": rng.standard_normal((4, 3, 3, 3))}
    dens = {"a": 0.3, "b": 0.05}
    pruned, masks = M.reprune(inp(w), densities=dens)
    pruned, masks = out_np(pruned), out_np(masks)
    assert masks["a"].sum() == 30 and masks["b"].sum() == int(np.floor(0.05 * 108 + 0.5))
    for k in w:
        np.testing.assert_array_equal(pruned[k], np.where(masks[k], w[k], 0.0))
        kept, dropped = np.abs(w[k][masks[k]]), np.abs(w[k][~masks[k]])
        assert kept.min() >= dropped.max()


def test_reprune_global_exact_count_and_ties(be):
    M, inp = be
    w = {"a": np.array([[1.0, 1.0], [2.0, 0.5]]), "b": np.array([1.0, -1.0, 3.0])}
    _, masks = M.reprune(inp(w), density=0.5)              # k = floor(0.5*7 + 0.5) = 4
    masks = out_np(masks)
    assert sum(int(m.sum()) for m in masks.values()) == 4
    # 3 and 2 win; of the four 1.0 ties the two with the smaller global flat index win
    np.testing.assert_array_equal(masks["a"], [[True, True], [True, False]])
    np.testing.assert_array_equal(masks["b"], [False, False, True])


def test_bn_average_std_and_var_modes(be):
    M, inp = be
    m1, v1 = inp(np.array([0.0, 2.0])), inp(np.array([1.0, 1.0]))
    m2, v2 = inp(np.array([2.0, 4.0])), inp(np.array([4.0, 1.0]))
    am, av = M.average_bn_stats(None, None, m1, v1, 1)
    mean, var = out_np(M.average_bn_stats(am, av, m2, v2, 2, mode="std"))
    np.testing.assert_allclose(mean, [1.0, 3.0])
    np.testing.assert_allclose(var, [2.25, 1.0])            # ((1 + 2) / 2)^2
    _, var = out_np(M.average_bn_stats(am, av, m2, v2, 2, mode="var"))
    np.testing.assert_allclose(var, [2.5, 1.0])


def test_inputs_never_mutated(be):
    M, inp = be
    tk = inp(tickets3())
    masks = inp([{"w": np.asarray(t["w"]) != 0} for t in tickets3()])
    before, before_m = snapshot(tk), snapshot(masks)
    M.superpose_cia(tk[0], tk[1], 2)
    M.superpose_cima(tk[0], tk[1], 0.3)
    M.caa(tk, masks)
    M.interpolate(tk[0], tk[1], 0.4)
    M.reprune(tk[2], density=0.3)
    M.reprune(tk[2], densities={"w": 0.5, "b": 0.0})
    M.average_bn_stats(tk[0]["b"], inp(np.array([1.0])), tk[1]["b"], inp(np.array([4.0])), 2)
    for t, b in zip(tk, before):
        assert_same(t, b)
    for t, b in zip(masks, before_m):
        assert_same(t, b)


# ----------------------------------------------------------------------------- bad inputs

def test_empty_ticket_list(be):
    M, _ = be
    with pytest.raises(ValueError, match="list of tickets is empty"):
        M.cia([])
    with pytest.raises(ValueError, match="list of tickets is empty"):
        M.caa([], [])


def test_tickets_with_different_names(be):
    M, inp = be
    with pytest.raises(ValueError, match=r"tickets\[1\] names \['v'\]"):
        M.cia(inp([{"w": [1.0]}, {"v": [1.0]}]))
    with pytest.raises(ValueError, match="names"):
        M.superpose_cia(inp({"w": [1.0]}), inp({"v": [1.0]}), 2)


def test_tickets_with_different_shapes(be):
    M, inp = be
    with pytest.raises(ValueError, match=r"shape \(2,\) but .* shape \(1,\)"):
        M.cia(inp([{"w": [1.0]}, {"w": [1.0, 2.0]}]))
    with pytest.raises(ValueError, match="shape"):
        M.interpolate(inp({"w": [1.0]}), inp({"w": [[1.0]]}), 0.5)


def test_caa_mask_mismatch(be):
    M, inp = be
    tk = inp([{"w": [1.0, 2.0]}, {"w": [1.0, 2.0]}])
    with pytest.raises(ValueError, match="one mask dict per ticket"):
        M.caa(tk, inp([{"w": [True, True]}]))
    with pytest.raises(ValueError, match="mask 'x' does not match"):
        M.caa(tk, inp([{"x": [True, True]}, {"x": [True, True]}]))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf")])
def test_alpha_outside_unit_interval(be, alpha):
    M, inp = be
    with pytest.raises(ValueError, match=r"alpha=.* outside the allowed range \[0, 1\]"):
        M.interpolate(inp({"w": [1.0]}), inp({"w": [2.0]}), alpha)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_beta_outside_unit_interval(be, beta):
    M, inp = be
    with pytest.raises(ValueError, match=r"beta=.* outside the allowed range \[0, 1\]"):
        M.superpose_cima(inp({"w": [1.0]}), inp({"w": [2.0]}), beta)


@pytest.mark.parametrize("t", [0, -1, 1.5, True])
def test_t_must_be_positive_int(be, t):
    M, inp = be
    with pytest.raises(ValueError, match=r"t=.* must be the 1-based index"):
        M.superpose_cia(inp({"w": [1.0]}), inp({"w": [2.0]}), t)
    with pytest.raises(ValueError, match=r"t=.* must be the 1-based index"):
        M.average_bn_stats(None, None, inp(np.array([0.0])), inp(np.array([1.0])), t)


def test_t_above_one_without_average(be):
    M, inp = be
    with pytest.raises(ValueError, match="running average is missing but t=3"):
        M.superpose_cia(None, inp({"w": [1.0]}), 3)
    with pytest.raises(TypeError, match="averaged mean"):
        M.average_bn_stats(None, None, inp(np.array([0.0])), inp(np.array([1.0])), 2)


def test_negative_variance(be):
    M, inp = be
    with pytest.raises(ValueError, match="running variance has negative entries"):
        M.average_bn_stats(inp(np.array([0.0])), inp(np.array([1.0])), inp(np.array([0.0])), inp(np.array([-1.0])), 2)


def test_unknown_bn_mode(be):
    M, inp = be
    with pytest.raises(ValueError, match="mode 'sd' is not allowed"):
        M.average_bn_stats(None, None, inp(np.array([0.0])), inp(np.array([1.0])), 1, mode="sd")


def test_reprune_needs_exactly_one_target(be):
    M, inp = be
    w = inp({"w": [1.0, 2.0]})
    with pytest.raises(ValueError, match="exactly one of densities="):
        M.reprune(w)
    with pytest.raises(ValueError, match="exactly one of densities="):
        M.reprune(w, densities={"w": 0.5}, density=0.5)
    with pytest.raises(ValueError, match=r"density=1.5 is outside"):
        M.reprune(w, density=1.5)


def test_nonfinite_ticket(be):
    M, inp = be
    with pytest.raises(ValueError, match="non-finite"):
        M.cia(inp([{"w": [1.0]}, {"w": [float("nan")]}]))


# ----------------------------------------------------------------------------- accel specifics

def test_accel_float32_scalars_rounded_like_reference():
    a = {"w": np.array([0.1, 3.0], np.float32)}
    b = {"w": np.array([7.0, -1.3], np.float32)}
    for beta in (0.8, 0.3):
        r = R.superpose_cima(a, b, beta)["w"]
        t = A.superpose_cima(torch_in(a), torch_in(b), beta)["w"]
        assert t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), r)


def test_accel_rejects_numpy_inputs():
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.cia([{"w": np.ones(2)}])


def test_accel_average_bn_rejects_negative_average_variance():
    with pytest.raises(ValueError, match="averaged variance has negative"):
        A.average_bn_stats(torch.zeros(1), -torch.ones(1), torch.zeros(1), torch.ones(1), 2)
