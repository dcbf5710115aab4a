"""D²-Sparse (reference/d2sparse.py and its engines): schedules, choices, views, invariants of a
whole run, and bad input."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import twinsparse.accel.ops as A
import twinsparse.reference.ops as R
from twinsparse.accel.runner import load_split
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.accel.backends import run_procedure
from twinsparse.reference.d2sparse import Views, best_alpha, derive_seed, masked, state_densities, total_epochs

TINY = dict(method="rigl", density=0.1, train_budget=60, hidden=[24, 12], batch_size=16, delta_t=3,
            d2_warmup_epochs=1, d2_state_epochs=2, d2_finetune_epochs=1, d2_baseline_epochs=2, d2_view_pool=1,
            test_per_class=20)


# ----------------------------------------------------------------------------- scalar logic

def test_geometric_schedule_matches_spec_example():
    d = state_densities(0.05, 10)  # docs/methods.md §5.1 lists 0.068 for d_9; 0.05 ** 0.9 = 0.06746
    assert d == pytest.approx([0.741, 0.549, 0.407, 0.302, 0.224, 0.166, 0.123, 0.091, 0.0675, 0.05], abs=6e-4)
    assert d[-1] == 0.05
    assert all(a > b for a, b in zip(d, d[1:]))


def test_linear_schedule_and_one_shot():
    assert state_densities(0.2, 4, "linear") == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert state_densities(0.05, 1) == [0.05]  # the 1-shot variant: one state at the final density


@pytest.mark.parametrize("args,msg", [((0.05, 0), "k=0"), ((0.0, 3), "final_density"), ((1.5, 3), "final_density"),
                                      ((0.1, 3, "cubic"), "schedule='cubic'")])
def test_schedule_bad_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        state_densities(*args)


def test_best_alpha_takes_first_on_ties_and_checks_lengths():
    assert best_alpha([0.1, 0.25, 0.5], [0.7, 0.9, 0.9]) == (0.25, 1)
    assert best_alpha([0.1, 0.25], [0.5, 0.5]) == (0.1, 0)
    with pytest.raises(ValueError, match="one score per alpha"):
        best_alpha([0.1, 0.2], [0.5])
    with pytest.raises(ValueError, match="one score per alpha"):
        best_alpha([], [])


def test_derive_seed_is_a_pure_function_of_its_keys():
    assert derive_seed(3, 1, 2) == derive_seed(3, 1, 2)
    assert len({derive_seed(3, i, b) for i in range(5) for b in range(3)}) == 15
    assert derive_seed(3, 1, 2) != derive_seed(4, 1, 2)


def test_total_epochs():
    cfg = RunConfig(procedure="d2sparse", method="rigl", density=0.05).validate()
    assert total_epochs(cfg) == 25 + 10 * (2 * 50 + 5)
    assert total_epochs(cfg.replace(procedure="d2_baseline")) == 25 + 10 * 55


# ----------------------------------------------------------------------------- views

def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 784)).astype(np.float32), np.repeat(np.arange(10), n // 10).astype(np.int64)


def test_views_read_the_same_indices_from_every_view():
    x, y = _data()
    v = Views(x, y, ["augmix_weak", "augmix_strong", "none"], seed=1, pool=2, batch_size=16)
    batches = list(v.batches((0, 1, 2), (1, 1), seed=5)(0))
    assert [len(b[0][0]) for b in batches] == [16, 16, 8]
    seen = np.concatenate([b[2][1] for b in batches])  # 'none' gives the int labels in batch order
    for parts in batches:
        (x0, y0), (x1, y1), (x2, y2) = parts
        assert y2.dtype.kind == "i" and y0.shape == (len(y2), 10)
        assert np.array_equal(y0.argmax(1), y2) and np.array_equal(y1.argmax(1), y2)  # AugMix keeps labels
        assert not np.array_equal(x0, x2) and not np.array_equal(x0, x1)
    assert sorted(seen.tolist()) == sorted(y.tolist())


def test_views_pool_reuses_copies_and_fresh_mode_does_not():
    x, y = _data()
    pooled = Views(x, y, ["augmix_weak"], seed=1, pool=2, batch_size=16)
    assert pooled.copy(0, (1, 1), 0) is pooled.copy(0, (2, 3), 2)  # epoch 2 = epoch 0 mod 2
    assert not np.array_equal(pooled.copy(0, (1, 1), 1)[0], pooled.copy(0, (1, 1), 0)[0])
    fresh = Views(x, y, ["augmix_weak"], seed=1, pool=0, batch_size=16)
    assert not np.array_equal(fresh.copy(0, (1, 1), 0)[0], fresh.copy(0, (2, 1), 0)[0])
    again = Views(x, y, ["augmix_weak"], seed=1, pool=0, batch_size=16)
    assert np.array_equal(fresh.copy(0, (2, 1), 0)[0], again.copy(0, (2, 1), 0)[0])  # deterministic


def test_cutmix_view_gives_soft_labels_summing_to_one():
    x, y = _data()
    xa, ya = Views(x, y, ["cutmix"], seed=0, pool=1, batch_size=16).copy(0, (1, 1), 0)
    assert ya.shape == (40, 10) and np.allclose(ya.sum(1), 1) and (ya.max(1) < 1).any()


# ----------------------------------------------------------------------------- merge + SNIP invariant

@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=3),
       density=st.floats(0.01, 1.0), alpha=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.95, 1.0]),
       seed=st.integers(0, 2 ** 16))
def test_merge_then_snip_is_exactly_at_the_state_density(shapes, density, alpha, seed):
    """P(.) = alpha theta_1 + (1 - alpha) theta_2 of two independently masked nets, then SNIP back to
    the state density: exactly floor(d N + 0.5) weights survive, on both backends identically."""
    rng = np.random.default_rng(seed)
    names = [f"fc.{i}.weight" for i in range(len(shapes))]
    nets = [{n: rng.normal(size=s) * (rng.random(s) < 0.5) for n, s in zip(names, shapes)} for _ in range(2)]
    grads = {n: rng.normal(size=s) for n, s in zip(names, shapes)}
    merged = R.interpolate(nets[0], nets[1], alpha)
    ms = R.snip_masks(merged, grads, density)
    total = sum(int(np.prod(s)) for s in shapes)
    assert sum(int(m.sum()) for m in ms.values()) == math.floor(density * total + 0.5)
    t = lambda d: {n: torch.from_numpy(v) for n, v in d.items()}  # noqa: E731
    ma = A.snip_masks(A.interpolate(t(nets[0]), t(nets[1]), alpha), t(grads), density)
    assert all(np.array_equal(ms[n], ma[n].numpy()) for n in names)
    out = masked(merged, ms)
    assert all(np.all(out[n][~ms[n]] == 0) for n in names)


# ----------------------------------------------------------------------------- whole runs

@pytest.mark.parametrize("procedure", ["d2sparse", "d2_baseline", "d2_baseline_lb"])
def test_run_invariants(procedure):
    cfg = RunConfig(**TINY, procedure=procedure, d2_states=2).validate()
    out = run_procedure(cfg, load_split(cfg))
    recs = out["records"]
    assert [r["state"] for r in recs] == [0, 1, 2] and recs[0]["phase"] == "warmup"
    targets = state_densities(0.1, 2)
    n = sum(m.numel() for m in out["masks"].values())
    for r, d in zip(recs[1:], targets):
        assert r["target_density"] == d
        if procedure == "d2sparse":  # SNIP is one global selection: the exact count
            assert r["density"] == math.floor(d * n + 0.5) / n
        else:  # random ERK masks: each layer at its exact count, so at most one weight per layer off
            assert abs(r["density"] - d) <= len(out["masks"]) / n
        assert all(math.isfinite(r[k]) for k in ("test_acc", "test_nll", "test_ece"))
        if procedure == "d2sparse":
            assert r["alpha"] in cfg.d2_alphas and set(r["alpha_scores"]) == {str(a) for a in cfg.d2_alphas}
            assert r["alpha_scores"][str(r["alpha"])] == max(r["alpha_scores"].values())
            assert 0 < r["hamming"] <= 1 and r["hamming_count"] > 0
        else:
            assert "alpha" not in r
    net, masks = out["net"], out["masks"]
    assert all(torch.all(net[k][~m] == 0) for k, m in masks.items())  # pruned weights are exactly 0
    assert {u["phase"][0] for u in out["updates"]} <= {1, 2}


def test_reference_backend_runs_the_same_procedure():
    cfg = RunConfig(**TINY, procedure="d2sparse", d2_states=1, backend="reference").validate()
    out = run_procedure(cfg, load_split(cfg))
    assert out["records"][-1]["density"] == pytest.approx(0.1, abs=1e-3)
    assert out["records"][-1]["alpha"] in cfg.d2_alphas


def test_one_shot_is_a_single_state_at_the_final_density():
    cfg = RunConfig(**TINY, procedure="d2sparse", d2_states=1).validate()
    out = run_procedure(cfg, load_split(cfg))
    assert [r["state"] for r in out["records"]] == [0, 1]
    assert out["records"][1]["target_density"] == 0.1


def test_cli_runs_d2sparse_and_logs_one_record_per_state(tmp_path):
    from twinsparse.accel.cli import main
    args = ["train", "--procedure", "d2sparse", "--method", "rigl", "--density", "0.1", "--train-budget", "60",
            "--hidden", "24", "12", "--batch-size", "16", "--d2-states", "2", "--d2-warmup-epochs", "1",
            "--d2-state-epochs", "1", "--d2-finetune-epochs", "1", "--d2-view-pool", "1", "--test-per-class", "20",
            "--d2-alphas", "0.25", "0.75", "--delta-t", "2", "--output", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    lines = [json.loads(s) for s in open(tmp_path / "run_seed0.jsonl")]
    states = [r for r in lines if "state" in r]
    assert [r["state"] for r in states] == [0, 1, 2]
    assert all(r["alpha"] in (0.25, 0.75) for r in states[1:])
    assert any("mask_update" in r for r in lines)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("changes,msg", [
    (dict(d2_alphas=[0.5, 1.2]), r"d2_alphas entry=1.2 is outside the allowed range \[0.0, 1.0\]"),
    (dict(d2_alphas=[-0.1]), "d2_alphas entry=-0.1"),
    (dict(d2_alphas=[]), "d2_alphas"),
    (dict(train_budget=255), "train_budget=255 is not divisible across the 10 classes"),
    (dict(train_budget=3510), r"train_budget=3510 is larger than the training set \(3500"),
    (dict(method="dense", density=1.0), "trains sparse states"),
    (dict(d2_views=["augmix_weak"]), "exactly two views"),
    (dict(d2_views=["augmix_weak", "mixup"]), "d2_views entry='mixup'"),
    (dict(d2_states=0), "d2_states=0"),
    (dict(suptickets=True), "cannot be combined with suptickets"),
    (dict(d2_bn_merge="average"), "d2_bn_merge='average'"),
])
def test_bad_config_is_rejected_before_anything_runs(changes, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**{**TINY, "train_budget": 100, "test_per_class": 100, **changes}, procedure="d2sparse").validate()


def test_interpolate_rejects_alpha_outside_unit_interval_on_both_backends():
    a = {"w": np.ones(3)}
    for alpha in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="outside the allowed range"):
            R.interpolate(a, a, alpha)
        with pytest.raises(ValueError, match="outside the allowed range"):
            A.interpolate({"w": torch.ones(3)}, {"w": torch.ones(3)}, alpha)
