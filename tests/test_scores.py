"""Per-weight scores and SNIP (docs/methods.md §1.3, §1.10, §2.1) on both twins."""
import math

import numpy as np
import pytest
import torch

import twinsparse.accel.scores as A
import twinsparse.reference.scores as R


def out_np(x):
    if isinstance(x, dict):
        return {k: out_np(v) for k, v in x.items()}
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def torch_in(x):
    if isinstance(x, dict):
        return {k: torch_in(v) for k, v in x.items()}
    return torch.as_tensor(np.asarray(x))


@pytest.fixture(params=[(R, lambda x: x), (A, torch_in)], ids=["reference", "accel"])
def be(request):
    return request.param


W = np.array([[1.0, -2.0, 0.0], [0.5, -0.25, 3.0]])
G = np.array([[-1.0, 0.5, 7.0], [2.0, 4.0, 0.0]])


def test_magnitude_and_gradient_scores(be):
    S, conv = be
    assert out_np(S.magnitude_scores(conv(W))).tolist() == [[1.0, 2.0, 0.0], [0.5, 0.25, 3.0]]
    assert out_np(S.gradient_scores(conv(G))).tolist() == [[1.0, 0.5, 7.0], [2.0, 4.0, 0.0]]


def test_snip_scores(be):
    S, conv = be
    assert out_np(S.snip_scores(conv(W), conv(G))).tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    norm = out_np(S.snip_scores(conv(W), conv(G), normalize=True))
    assert norm.sum() == pytest.approx(1.0) and norm[0, 0] == pytest.approx(0.25)


def test_snip_scores_errors(be):
    S, conv = be
    with pytest.raises(ValueError, match=r"shape mismatch.*\(2, 3\).*\(3, 2\)"):
        S.snip_scores(conv(W), conv(G.T.copy()))
    with pytest.raises(ValueError, match="sum"):
        S.snip_scores(conv(W), conv(np.zeros_like(W)), normalize=True)
    with pytest.raises(TypeError, match="normalize"):
        S.snip_scores(conv(W), conv(G), normalize="yes")
    for bad in (np.nan, np.inf, -np.inf):
        w = W.copy()
        w[1, 1] = bad
        with pytest.raises(ValueError, match="weight.*non-finite"):
            S.snip_scores(conv(w), conv(G))
        with pytest.raises(ValueError, match="gradient.*non-finite"):
            S.snip_scores(conv(G), conv(w))
        with pytest.raises(ValueError, match="non-finite"):
            S.magnitude_scores(conv(w))
        with pytest.raises(ValueError, match="non-finite"):
            S.gradient_scores(conv(w))


def test_snip_masks_global_hand_example(be):
    S, conv = be
    ws = {"a": np.array([[1.0, 2.0], [0.0, 3.0]]), "b": np.array([4.0, -1.0, 0.5])}
    gs = {"a": np.array([[1.0, 1.0], [9.0, -1.0]]), "b": np.array([1.0, 3.0, 2.0])}
    # |w*g| = a: [1, 2, 0, 3], b: [4, 3, 1]; k = floor(2/7*7+0.5) = 2 -> 4 (b), then 3 (a) beats 3 (b)
    out = out_np(S.snip_masks(conv(ws), conv(gs), 2 / 7))
    assert out["a"].tolist() == [[False, False], [False, True]]
    assert out["b"].tolist() == [True, False, False]
    out = out_np(S.snip_masks(conv(ws), conv(gs), 6 / 7))    # the already-zero weight goes first
    assert out["a"][1, 0] == False and sum(m.sum() for m in out.values()) == 6  # noqa: E712


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_snip_masks_exact_count(be, density):
    S, conv = be
    rng = np.random.default_rng(0)
    ws = {"c": rng.standard_normal((4, 3, 3, 3)), "fc": rng.standard_normal((10, 12))}
    gs = {k: rng.standard_normal(v.shape) for k, v in ws.items()}
    out = out_np(S.snip_masks(conv(ws), conv(gs), density))
    assert sum(m.sum() for m in out.values()) == math.floor(density * 228 + 0.5)


def test_snip_masks_errors(be):
    S, conv = be
    ws, gs = {"a": W}, {"a": G}
    with pytest.raises(ValueError, match="same layers"):
        S.snip_masks(conv(ws), conv({"b": G}), 0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        S.snip_masks(conv(ws), conv({"a": G[:, :2].copy()}), 0.5)
    with pytest.raises(ValueError, match="density"):
        S.snip_masks(conv(ws), conv(gs), 1.5)
    with pytest.raises(ValueError, match="empty"):
        S.snip_masks({}, {}, 0.5)
    with pytest.raises(ValueError, match="gradient 'a'.*non-finite"):
        S.snip_masks(conv(ws), conv({"a": np.full_like(G, np.nan)}), 0.5)


def test_accel_rejects_numpy_and_inputs_not_mutated():
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.snip_scores(W, torch.tensor(G))
    w, g = torch.tensor(W), torch.tensor(G)
    A.snip_scores(w, g, normalize=True)
    A.snip_masks({"a": w}, {"a": g}, 0.5)
    assert np.array_equal(w.numpy(), W) and np.array_equal(g.numpy(), G)
    w2, g2 = W.copy(), G.copy()
    R.snip_scores(w2, g2, normalize=True)
    R.snip_masks({"a": w2}, {"a": g2}, 0.5)
    assert np.array_equal(w2, W) and np.array_equal(g2, G)
