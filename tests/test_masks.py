"""Mask operators (docs/methods.md §1.2-§1.7): exact counts, hand-checked N:M and channel cases, errors.

Each behavioural test runs on both twins: ``reference.masks`` (NumPy) and ``accel.masks`` (torch).
"""
import math
import warnings

import numpy as np
import pytest
import torch

import twinsparse.accel.masks as A
import twinsparse.reference.masks as R


def np_in(x):
    return x


def torch_in(x):
    if isinstance(x, dict):
        return {k: torch_in(v) for k, v in x.items()}
    return torch.as_tensor(np.asarray(x))


def out_np(x):
    if isinstance(x, dict):
        return {k: out_np(v) for k, v in x.items()}
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


BACKENDS = [pytest.param((R, np_in), id="reference"), pytest.param((A, torch_in), id="accel")]


@pytest.fixture(params=BACKENDS)
def be(request):
    return request.param


def rng_w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------- magnitude

@pytest.mark.parametrize("density", [0.0, 0.1, 0.25, 0.5, 0.99, 1.0])
def test_magnitude_mask_exact_count(be, density):
    M, conv = be
    w = rng_w(7, 3, 3, 3)
    mask = out_np(M.magnitude_mask(conv(w), density))
    assert mask.dtype == bool and mask.shape == w.shape
    assert mask.sum() == math.floor(density * w.size + 0.5)
    if 0 < mask.sum() < w.size:
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_magnitude_mask_ties_lower_index(be):
    M, conv = be
    w = np.array([[1.0, -2.0, 2.0, 1.0, -2.0]])
    assert out_np(M.magnitude_mask(conv(w), 0.4)).tolist() == [[False, True, True, False, False]]
    assert out_np(M.magnitude_mask(conv(np.ones((2, 3))), 0.5)).tolist() == [[True, True, True], [False] * 3]


def test_magnitude_masks_per_layer(be):
    M, conv = be
    ws = {"a": rng_w(5, 4), "b": rng_w(3, 2, 2, 2, seed=1)}
    out = out_np(M.magnitude_masks(conv(ws), {"a": 0.5, "b": 0.1}))
    assert list(out) == ["a", "b"]
    assert out["a"].sum() == 10 and out["b"].sum() == 2


def test_global_magnitude_masks_hand_example(be):
    M, conv = be
    ws = {"a": np.array([[1.0, 5.0], [-4.0, 0.0]]), "b": np.array([[4.0, -3.0, 4.0]])}
    out = out_np(M.global_magnitude_masks(conv(ws), 3 / 7))          # k = 3: 5, then |-4| in a beats 4 in b
    assert out["a"].tolist() == [[False, True], [True, False]]
    assert out["b"].tolist() == [[True, False, False]]
    out = out_np(M.global_magnitude_masks(conv(ws), 0.0))
    assert sum(m.sum() for m in out.values()) == 0


# ----------------------------------------------------------------------------- N:M

def test_nm_linear_hand_checked(be):
    M, conv = be
    w = np.array([[1.0, -3.0, 2.0, 0.5, 4.0, 4.0, 1.0, -4.0],
                  [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
    mask = out_np(M.nm_mask(conv(w), 2, 4))
    assert mask.tolist() == [[False, True, True, False, True, True, False, False],
                             [True, True, False, False, False, False, True, True]]


def test_nm_conv_groups_along_input_channels(be):
    """Conv [O=1, I=4, kh=1, kw=2]: groups are the 4 input channels at each kernel position."""
    M, conv = be
    w = np.zeros((1, 4, 1, 2))
    w[0, :, 0, 0] = [1.0, 2.0, 3.0, 4.0]          # keep channels 2, 3
    w[0, :, 0, 1] = [4.0, -3.0, 2.0, 1.0]         # keep channels 0, 1
    mask = out_np(M.nm_mask(conv(w), 2, 4))
    assert mask[0, :, 0, 0].tolist() == [False, False, True, True]
    assert mask[0, :, 0, 1].tolist() == [True, True, False, False]
    # row-major grouping reads [1, 4, 2, -3 | 3, 2, 4, 1]: a different mask
    rows = out_np(M.nm_mask(conv(w), 2, 4, axis="rows"))
    assert rows.reshape(-1).tolist() == [False, True, False, True, True, False, True, False]


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (4, 8), (0, 4), (4, 4), (3, 5)])
def test_nm_exactly_n_per_group(be, n, m):
    M, conv = be
    w = rng_w(6, 2 * m, 3, 2, seed=n + m)
    mask = out_np(M.nm_mask(conv(w), n, m))
    groups = mask.transpose(0, 2, 3, 1).reshape(-1, m)
    assert (groups.sum(axis=1) == n).all()
    lin = out_np(M.nm_mask(conv(rng_w(3, 3 * m)), n, m))
    assert (lin.reshape(-1, m).sum(axis=1) == n).all()


def test_nm_ties_lower_index_within_group(be):
    M, conv = be
    mask = out_np(M.nm_mask(conv(np.ones((2, 8))), 2, 4))
    assert mask.tolist() == [[True, True, False, False] * 2] * 2


@pytest.mark.parametrize("n,m,exc,pattern", [
    (5, 4, ValueError, "n=5"), (-1, 4, ValueError, "n=-1"), (0, 0, ValueError, "m=0"),
    (1.0, 2, TypeError, "n"), (1, True, TypeError, "m"),
])
def test_nm_bad_n_m(be, n, m, exc, pattern):
    M, conv = be
    with pytest.raises(exc, match=pattern):
        M.nm_mask(conv(np.ones((2, 4))), n, m)
    with pytest.raises(exc, match=pattern):
        M.nm_masks({"a": conv(np.ones((2, 4)))}, n, m)


def test_nm_bad_shapes_and_axis(be):
    M, conv = be
    with pytest.raises(ValueError, match=r"rank >= 2.*\(8,\)"):
        M.nm_mask(conv(np.ones((8,))), 2, 4)
    with pytest.raises(ValueError, match=r"axis=3 is not a dimension.*\(2, 4, 4\)"):
        M.nm_mask(conv(np.ones((2, 4, 4))), 2, 4, axis=3)
    # reduction size I = 6 does not divide by 4: message names the shape, m and I, never pads
    with pytest.raises(ValueError, match=r"m=4.*\(3, 6\).*I=6"):
        M.nm_mask(conv(np.ones((3, 6))), 2, 4)
    # conv with I = 3: I*kh*kw = 12 divides by 4, but groups run along I
    with pytest.raises(ValueError, match=r"m=4.*\(2, 3, 2, 2\).*I=3"):
        M.nm_mask(conv(np.ones((2, 3, 2, 2))), 2, 4)
    assert out_np(M.nm_mask(conv(rng_w(2, 3, 2, 2)), 2, 4, axis="rows")).sum() == 12
    with pytest.raises(ValueError, match="axis='cols'"):
        M.nm_mask(conv(np.ones((2, 4))), 2, 4, axis="cols")
    with pytest.raises(ValueError, match="non-finite"):
        M.nm_mask(conv(np.array([[1.0, np.nan, 0.0, 1.0]])), 2, 4)


def test_nm_masks_leaves_indivisible_layers_dense(be):
    M, conv = be
    ws = {"conv1": rng_w(8, 3, 3, 3), "fc1": rng_w(4, 8), "fc2": rng_w(2, 6)}
    with pytest.warns(UserWarning, match=r"2 layer\(s\) dense.*conv1.*\(8, 3, 3, 3\).*fc2"):
        masks, dense = M.nm_masks(conv(ws), 2, 4)
    masks = out_np(masks)
    assert dense == ["conv1", "fc2"]
    assert masks["conv1"].all() and masks["fc2"].all()
    assert (masks["fc1"].reshape(-1, 4).sum(axis=1) == 2).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # nothing dense -> no warning
        _, dense = M.nm_masks(conv({"fc1": ws["fc1"]}), 2, 4)
    assert dense == []
    with pytest.raises(ValueError, match=r"rank >= 2.*\(3,\)"):        # checked before anything is computed
        M.nm_masks(conv({"ok": ws["fc1"], "bad": np.ones((3,))}), 2, 4)


# ----------------------------------------------------------------------------- channels

def test_channel_scores_hand_example(be):
    M, conv = be
    w = np.array([[1.0, -2.0], [0.5, 0.5], [-3.0, 0.0]])
    assert out_np(M.channel_scores(conv(w))).tolist() == [3.0, 1.0, 3.0]
    w4 = np.arange(16.0).reshape(2, 2, 2, 2) - 8
    np.testing.assert_allclose(out_np(M.channel_scores(conv(w4))), [36.0, 28.0])


@pytest.mark.parametrize("density", [0.0, 0.3, 0.5, 1.0])
def test_channel_mask_keeps_whole_filters(be, density):
    M, conv = be
    w = rng_w(10, 4, 3, 3)
    mask = out_np(M.channel_mask(conv(w), density))
    per_filter = mask.reshape(10, -1)
    assert (per_filter.all(axis=1) | ~per_filter.any(axis=1)).all()
    kept = per_filter.all(axis=1)
    assert kept.sum() == math.floor(density * 10 + 0.5)
    scores = np.abs(w).reshape(10, -1).sum(axis=1)
    if 0 < kept.sum() < 10:
        assert scores[kept].min() >= scores[~kept].max()


def test_channel_mask_ties_lower_channel(be):
    M, conv = be
    w = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, -2.0], [0.5, 0.5]])   # scores 2, 2, 2, 1
    assert out_np(M.channel_mask(conv(w), 0.5)).tolist() == [[True, True], [True, True], [False, False], [False, False]]


def test_channel_masks_and_errors(be):
    M, conv = be
    ws = {"c": rng_w(8, 2, 3, 3), "fc": rng_w(5, 8)}
    out = out_np(M.channel_masks(conv(ws), {"c": 0.25, "fc": 0.6}))
    assert out["c"].reshape(8, -1).all(axis=1).sum() == 2 and out["fc"].all(axis=1).sum() == 3
    with pytest.raises(ValueError, match=r"\(5,\)"):
        M.channel_mask(conv(np.ones(5)), 0.5)
    with pytest.raises(ValueError, match="density"):
        M.channel_mask(conv(ws["fc"]), 1.5)
    with pytest.raises(ValueError, match="unknown.*'x'"):
        M.channel_masks(conv(ws), {"c": 0.5, "fc": 0.5, "x": 0.5})


# ----------------------------------------------------------------------------- random

def test_random_scores_explicit_and_shared():
    shapes = {"a": (3, 4), "b": (2, 2, 1, 1)}
    s1, s2 = R.random_scores(shapes, 7), R.random_scores(shapes, 7)
    assert list(s1) == ["a", "b"] and s1["a"].dtype == np.float64 and s1["b"].shape == (2, 2, 1, 1)
    assert all(np.array_equal(s1[k], s2[k]) for k in shapes)
    assert all(((v >= 0) & (v < 1)).all() for v in s1.values())
    rng = np.random.default_rng(7)                     # drawn in dict order from one generator
    assert np.array_equal(s1["a"], rng.random((3, 4))) and np.array_equal(s1["b"], rng.random((2, 2, 1, 1)))
    assert not np.array_equal(R.random_scores(shapes, 8)["a"], s1["a"])
    t = A.random_scores(shapes, 7, device="cpu")
    assert t["a"].dtype == torch.float64 and all(np.array_equal(t[k].numpy(), s1[k]) for k in shapes)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), (None, TypeError), (True, TypeError)])
def test_random_scores_bad_seed(bad, exc):
    with pytest.raises(exc, match="seed"):
        R.random_scores({"a": (2, 2)}, bad)
    with pytest.raises(exc, match="seed"):
        A.random_scores({"a": (2, 2)}, bad)


def test_random_scores_bad_shapes():
    with pytest.raises(ValueError, match="'a'"):
        R.random_scores({"a": (2, -1)}, 0)
    with pytest.raises(ValueError, match="empty"):
        R.random_scores({}, 0)
    with pytest.raises(TypeError):
        R.random_scores([(2, 2)], 0)


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 0.77, 1.0])
def test_random_mask_exact_count_and_twins_agree(density):
    s = R.random_scores({"w": (9, 7), "v": (1,)}, 3)
    ref = R.random_masks(s, {"w": density, "v": density})
    acc = A.random_masks(A.random_scores({"w": (9, 7), "v": (1,)}, 3), {"w": density, "v": density})
    assert ref["w"].sum() == math.floor(density * 63 + 0.5)
    assert ref["v"].sum() == math.floor(density + 0.5)
    assert all(np.array_equal(ref[k], acc[k].numpy()) for k in ref)
    assert np.array_equal(R.random_mask(s["w"], density), ref["w"])


# ----------------------------------------------------------------------------- common errors / purity

def test_dict_and_density_errors(be):
    M, conv = be
    ws = conv({"a": np.ones((2, 2))})
    with pytest.raises(ValueError, match="missing.*'a'"):
        M.magnitude_masks(ws, {})
    with pytest.raises(ValueError, match="unknown.*'b'"):
        M.random_masks(ws, {"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="empty"):
        M.global_magnitude_masks({}, 0.5)
    with pytest.raises(TypeError, match="dict"):
        M.global_magnitude_masks([ws["a"]], 0.5)
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="density"):
            M.magnitude_mask(ws["a"], bad)
        with pytest.raises(ValueError, match="density"):
            M.global_magnitude_masks(ws, bad)
        with pytest.raises(ValueError, match="density"):
            M.random_mask(ws["a"], bad)
    with pytest.raises(ValueError, match=r"weight 'a'.*non-finite"):
        M.global_magnitude_masks(conv({"a": np.array([1.0, np.inf])}), 0.5)


def test_accel_rejects_numpy():
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.magnitude_mask(np.ones(3), 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.nm_mask(np.ones((2, 4)), 2, 4)


def test_inputs_not_mutated(be):
    M, conv = be
    ws = conv({"c": rng_w(4, 4, 3, 3), "fc": rng_w(3, 8)})
    dens = {"c": 0.5, "fc": 0.3}
    before = {k: out_np(v).copy() for k, v in ws.items()}, dict(dens)
    M.magnitude_masks(ws, dens)
    M.global_magnitude_masks(ws, 0.4)
    M.nm_masks(ws, 2, 4)
    M.channel_masks(ws, dens)
    M.random_masks(ws, dens)
    M.nm_mask(ws["c"], 1, 2)
    assert all(np.array_equal(out_np(ws[k]), before[0][k]) for k in ws) and dens == before[1]
