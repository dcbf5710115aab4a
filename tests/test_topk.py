"""Top-k with the tie rule, both twins: hand-checked ties, exact counts, bad input."""
import numpy as np
import pytest
import torch

import twinsparse.accel.topk as A
import twinsparse.reference.topk as R


def _both(fn_name, *args):
    ref = getattr(R, fn_name)(*args)
    acc = getattr(A, fn_name)(*[{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in a.items()}
                                if isinstance(a, dict) else torch.from_numpy(a) if isinstance(a, np.ndarray) else a
                                for a in args])
    return ref, acc


def test_ties_go_to_the_smaller_flat_index():
    s = np.array([[1.0, 3.0, 3.0], [3.0, 0.0, 3.0]])
    ref, acc = _both("topk_mask", s, 2)
    expected = np.array([[False, True, True], [False, False, False]])
    assert np.array_equal(ref, expected) and np.array_equal(acc.numpy(), expected)


def test_all_equal_scores_keep_the_first_k():
    ref, acc = _both("topk_mask", np.zeros(10), 4)
    assert np.array_equal(ref, np.arange(10) < 4) and np.array_equal(acc.numpy(), ref)


@pytest.mark.parametrize("k", [0, 1, 5, 6])
def test_exact_count(k):
    ref, acc = _both("topk_mask", np.array([0.5, -1.0, 2.0, 0.5, 0.5, 7.0]), k)
    assert ref.sum() == k and acc.sum().item() == k


def test_global_ties_break_by_index_in_the_concatenation():
    scores = {"a": np.array([1.0, 2.0]), "b": np.array([[2.0, 2.0]])}
    ref, acc = _both("topk_masks_global", scores, 2)
    assert ref["a"].tolist() == [False, True] and ref["b"].tolist() == [[True, False]]
    assert acc["a"].tolist() == [False, True] and acc["b"].tolist() == [[True, False]]


def test_per_layer_rounding_is_half_up():
    scores = {"a": np.arange(10.0), "b": np.arange(5.0)}
    ref, acc = _both("topk_masks_per_layer", scores, {"a": 0.25, "b": 0.5})  # 2.5 -> 3, 2.5 -> 3
    assert ref["a"].sum() == 3 and ref["b"].sum() == 3
    assert acc["a"].sum() == 3 and acc["b"].sum() == 3


@pytest.mark.parametrize("impl", [R, A])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_an_error(impl, bad):
    s = np.array([1.0, bad, 0.0])
    arg = torch.from_numpy(s) if impl is A else s
    with pytest.raises(ValueError, match="non-finite"):
        impl.topk_mask(arg, 1)


@pytest.mark.parametrize("impl", [R, A])
def test_k_out_of_range_and_bad_types(impl):
    s = np.zeros(4)
    arg = torch.from_numpy(s) if impl is A else s
    with pytest.raises(ValueError, match=r"k=5 is outside the allowed range \[0, 4\]"):
        impl.topk_mask(arg, 5)
    with pytest.raises(ValueError, match="k=-1"):
        impl.topk_mask(arg, -1)
    with pytest.raises(TypeError, match="integer"):
        impl.topk_mask(arg, 1.5)
    with pytest.raises(ValueError, match="empty"):
        impl.topk_masks_global({}, 0)
    with pytest.raises(ValueError, match="no density given"):
        impl.topk_masks_per_layer({"a": arg}, {})


def test_auto_selection_on_a_cpu_takes_the_per_layer_loop_and_agrees_with_the_sorts(monkeypatch):
    """On a CPU "auto" selects layer by layer (host reads are free there); the sort path CUDA runs
    without CuPy gives the same masks, ties included."""
    import twinsparse.accel.topk as AT
    from twinsparse.accel.flat import layout_of
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randint(0, 4, (6, 5), generator=g).float(), "b": torch.randint(0, 3, (40,), generator=g).float()}
    lay = layout_of(scores)
    flat = lay.flatten(scores)
    cand = torch.rand(flat.numel(), generator=g) < 0.7
    ks = [5, 11]
    calls = []
    real = AT._select_loop
    monkeypatch.setattr(AT, "_select_loop", lambda *a: calls.append(1) or real(*a))
    auto = AT.select_segments(flat, cand, lay, ks)
    assert calls, "auto on a CPU did not take the per-layer loop"
    sort = AT.select_segments(flat, cand, lay, ks, strategy="sort")
    assert torch.equal(auto, sort)
    assert [int(auto[o:o + n].sum()) for o, n in zip(lay.offsets, lay.sizes)] == ks


@pytest.mark.parametrize("cpu_paths", [True, False])
@pytest.mark.parametrize("frac", [0.05, 0.5, 0.95])
def test_select_within_cpu_paths_keep_the_tie_rule(monkeypatch, cpu_paths, frac):
    """The CPU shortcuts (select among few candidates only; skip the running count when every tie
    fits) pick the same positions as the reference, heavy ties included."""
    import twinsparse.accel.flat as AF
    monkeypatch.setattr(AF, "CPU_PATHS", cpu_paths)
    rng = np.random.default_rng(3)
    for trial in range(20):
        s = rng.integers(0, 5, size=400).astype(np.float64)
        cand = rng.random(400) < frac
        c = int(cand.sum())
        for k in {0, 1, c // 3, c // 2, c}:
            want = R.topk_within(s, cand, k)
            got = A.select_within(torch.from_numpy(s), torch.from_numpy(cand), k, n_cand=c)
            assert np.array_equal(got.numpy(), want), (trial, k)
