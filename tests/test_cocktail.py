"""Sparse Cocktail (reference/cocktail_procedure.py, accel/cocktail_bank.py): nested masks with exact counts, N:M and
channel structure, the subnetwork bank (24 at N = 10), selection errors, bank round trip, the hold-out
kept out of training, the co-training step, the ablation switches and config validation."""
import math

import numpy as np
import pytest
import torch

import twinsparse.reference.cocktail_procedure as RC
from twinsparse.accel.cocktail_bank import Cocktail, UnknownSubnetworkError
from twinsparse.accel.cocktail_step import cotrain_sgd_step as acc_step
from twinsparse.accel.describe import describe_run
from twinsparse.accel.runner import load_split
from twinsparse.accel.train import build_model_for
from twinsparse.reference.cocktail_step import cotrain_sgd_step as ref_step
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.engine import ReferenceEngine

TINY = dict(procedure="cocktail", dtype="float64", hidden=[32, 32, 16], batchnorm=True, epochs=2, batch_size=32,
            cocktail_rewind_epoch=1, train_budget=400, test_per_class=20)
N = 8


def _np(m):
    return m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m)


@pytest.fixture(scope="module")
def run():
    cfg = RunConfig(**TINY, cocktail_iterations=N).validate()
    return cfg, RC.run_cocktail(ReferenceEngine(cfg, load_split(cfg)), cfg)


def test_bank_names_and_the_24_subnetworks_at_n10():
    names = RC.subnetwork_names(10)
    assert len(names) == 24 == 1 + 10 + 10 + 3              # [SC] §4 "24 networks at once"
    assert names[0] == "dense" and names[-3:] == ["nm-1:2", "nm-2:4", "nm-4:8"]
    assert RC.subnetwork_names(4)[-1] == "nm-1:2" and len(RC.subnetwork_names(1)) == 3


def test_masks_are_nested_with_exact_counts(run):
    cfg, out = run
    its, rng = out["iterations"], out["range"]
    assert rng == ["fc.1.weight", "fc.2.weight"]             # 'paper': neither the first nor the classifier
    n_u = sum(_np(out["masks"]["dense"][n]).size for n in rng)
    prev_u = prev_c = None
    for k, it in enumerate(its, start=1):
        u = {n: _np(m) for n, m in it["unstructured"].items()}
        c = {n: _np(m) for n, m in it["channel"].items()}
        n_u = int(math.floor(0.8 * n_u + 0.5))               # 0.2 of the remaining, nested
        assert sum(int(m.sum()) for m in u.values()) == n_u
        for n, m in c.items():                              # channel masks: whole rows, round(0.9^k O)
            rows = m.reshape(m.shape[0], -1)
            assert np.array_equal(rows.all(axis=1), rows.any(axis=1))
            assert int(rows[:, 0].sum()) == int(math.floor(0.9 ** k * m.shape[0] + 0.5))
        if prev_u is not None:
            assert all(not np.any(u[n] & ~prev_u[n]) for n in u)
            assert all(not np.any(c[n] & ~prev_c[n]) for n in c)
        prev_u, prev_c = u, c


def test_nm_masks_follow_the_schedule_and_hold_the_pattern(run):
    cfg, out = run
    its = out["iterations"]
    assert its[0]["nm"] is None
    for k, it in enumerate(its[1:], start=2):
        n, m = {2: (1, 2), 5: (2, 4), 8: (4, 8)}[max(s for s in (2, 5, 8) if s <= k)]
        for name, mask in it["nm"].items():
            groups = _np(mask).reshape(-1, m)                # Linear [O, I]: m consecutive inputs per row
            assert np.all(groups.sum(axis=1) == n)
        if k not in (2, 5, 8):                               # "keep them unchanged elsewhere"
            assert all(np.array_equal(_np(it["nm"][x]), _np(its[k - 2]["nm"][x])) for x in it["nm"])
    assert list(out["masks"])[-3:] == ["nm-1:2", "nm-2:4", "nm-4:8"]
    assert len(out["masks"]) == len(out["bn"]) == 1 + 2 * N + 3


def test_result_records_and_subnetwork_selection(run):
    cfg, out = run
    recs = out["records"]
    assert [r["state"] for r in recs] == list(range(N + 2))
    final = recs[-1]
    assert len(final["alphas"]) == N - 1 and all(a in RC.CANDIDATE_POOL for a in final["alphas"])
    assert set(final["subnetworks"]) == set(out["masks"]) and final["n_subnetworks"] == len(out["masks"])
    net = RC.subnetwork(out, "nm", "2:4")
    w, m = out["net"]["fc.1.weight"], out["masks"]["nm-2:4"]["fc.1.weight"]
    assert np.array_equal(net["fc.1.weight"], w * m)
    assert np.array_equal(net["bn.1.running_mean"], out["bn"]["nm-2:4"]["bn.1.running_mean"])
    for bad in [("nm", "3:4"), ("unstructured", N + 1), ("channel", 0), ("bogus", None), ("dense", 1)]:
        with pytest.raises(UnknownSubnetworkError, match="available subnetworks: .*'dense'"):
            RC.subnetwork(out, *bad)


def test_holdout_is_last_per_class_and_never_trained_on(monkeypatch):
    y = np.repeat(np.arange(3), [20, 40, 10])
    tr, ho = RC.holdout_rows(y, 0.1)
    assert set(tr).isdisjoint(ho) and len(tr) + len(ho) == y.size
    assert list(ho) == [18, 19, 56, 57, 58, 59, 69]
    with pytest.raises(ValueError, match="no hold-out sample"):
        RC.holdout_rows(y, 0.01)
    cfg = RunConfig(**TINY, cocktail_iterations=2).validate()
    split = load_split(cfg)
    _, hold = RC.holdout_rows(split.y_train, cfg.cocktail_holdout_fraction)
    banned = {r.tobytes() for r in split.x_train[hold].astype(np.float64)}
    seen = {"train": 0, "bn": 0}

    def spy(orig, key):
        def f(x, *a, **kw):
            for xb, yb in orig(x, *a, **kw):
                assert not any(r.tobytes() in banned for r in np.asarray(xb, np.float64)), "hold-out row in training"
                seen[key] += 1
                yield xb, yb
        return f
    import twinsparse.reference.train as RT
    monkeypatch.setattr(RC, "iterate_batches", spy(RC.iterate_batches, "train"))
    monkeypatch.setattr(RT, "iterate_batches", spy(RT.iterate_batches, "train"))
    orig_bn = ReferenceEngine.bn_recalibrate

    def bn_spy(self, net, x):
        assert not any(r.tobytes() in banned for r in np.asarray(x, np.float64)), "hold-out row in BnUpdate"
        seen["bn"] += 1
        return orig_bn(self, net, x)
    monkeypatch.setattr(ReferenceEngine, "bn_recalibrate", bn_spy)
    RC.run_cocktail(ReferenceEngine(cfg, split), cfg)
    assert seen["train"] > 0 and seen["bn"] > 0


def test_cotrain_step_moves_only_the_mask_and_matches_its_twin():
    rng = np.random.default_rng(0)
    w, g, b = (rng.normal(size=(6, 8)) for _ in range(3))
    mask = rng.random((6, 8)) < 0.5
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    for m in (None, mask):
        nw, nb = ref_step(w, g, m, b, **hp)
        tw, tb = acc_step(*(torch.from_numpy(a) for a in (w, g)), None if m is None else torch.from_numpy(m),
                          torch.from_numpy(b), **hp)
        np.testing.assert_allclose(tw.numpy(), nw, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(tb.numpy(), nb, rtol=1e-12, atol=1e-14)
    assert np.array_equal(nw[~mask], w[~mask]) and np.array_equal(nb[~mask], b[~mask])
    assert not np.any(nw[mask] == w[mask])


def test_bank_round_trip_and_select_on_torch(run, tmp_path):
    cfg, out = run
    model = build_model_for(cfg, 784, 10)
    ck = Cocktail(model, {n: torch.from_numpy(np.asarray(v)) for n, v in out["net"].items()}, out["masks"], out["bn"])
    assert ck.names() == list(out["masks"]) and len(ck) == 1 + 2 * N + 3
    ck.save(str(tmp_path))
    ck2 = Cocktail.load(str(tmp_path), build_model_for(cfg, 784, 10))
    assert ck2.names() == ck.names()
    for name in ck.names():
        assert all(torch.equal(ck.masks[name][p], ck2.masks[name][p]) for p in ck.masks[name])
    m = ck2.select("channel", 3)
    sd = m.state_dict()
    ref = RC.subnetwork(out, "channel", 3)
    for n, v in ref.items():
        np.testing.assert_array_equal(sd[n].numpy(), np.asarray(v))
    assert ck2.current == "channel-3" and ck2.density("nm", "1:2") == 0.5
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(UnknownSubnetworkError, match="'nm-3:4'.*available subnetworks"):
        ck2.select("nm", "3:4")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())   # nothing half-applied
    ck2.select("dense")
    np.testing.assert_array_equal(m.state_dict()["fc.1.weight"].numpy(), out["net"]["fc.1.weight"])


@pytest.mark.parametrize("flag", ["cocktail_rewind", "cocktail_interpolate", "cocktail_pivot", "cocktail_umg"])
def test_ablations_run(flag):
    cfg = RunConfig(**TINY, cocktail_iterations=2, **{flag: False}).validate()
    out = RC.run_cocktail(ReferenceEngine(cfg, load_split(cfg)), cfg)
    assert len(out["masks"]) == 6 and out["records"][-1]["phase"] == "cocktail"
    if flag == "cocktail_interpolate":
        assert out["alphas"] == [] and all(np.array_equal(out["net"][n], out["nets"][-1][n]) for n in out["net"])
    if flag == "cocktail_umg":     # channel-1: plain L1 of the rows of D_0 (no unstructured / N:M masks)
        from twinsparse.reference.topk import topk_mask
        score = np.abs(out["pretrained"]["fc.1.weight"]).sum(axis=1)
        c = out["iterations"][0]["channel"]["fc.1.weight"]
        assert np.array_equal(c[:, 0], topk_mask(score, 29))      # round(0.9 * 32) rows


def test_accel_engine_runs_the_same_procedure_and_builds_a_cocktail():
    from twinsparse.accel.cocktail_bank import train_cocktail
    cfg = RunConfig(**TINY, cocktail_iterations=2, backend="accel").validate()
    ck = train_cocktail(cfg)
    assert ck.names() == RC.subnetwork_names(2)
    model = ck.select("unstructured", 2)
    assert int((model.fc[1].weight == 0).sum()) >= int((~ck.masks["unstructured-2"]["fc.1.weight"]).sum())


@pytest.mark.parametrize("bad, match", [
    (dict(cocktail_beta=1.5), r"cocktail_beta=1.5 is outside the allowed range \[0.0, 1.0\]"),
    (dict(cocktail_beta=-0.1), r"cocktail_beta=-0.1"),
    (dict(cocktail_holdout_fraction=0.01), r"cocktail_holdout_fraction=0.01 of 40 training samples per class gives 0"),
    (dict(cocktail_holdout_fraction=0.6), r"cocktail_holdout_fraction=0.6"),
    (dict(hidden=[32]), r"cocktail_range='paper'.*hidden=\[32\]"),
    (dict(method="static", density=0.5), r"procedure='cocktail' makes its own masks"),
    (dict(cocktail_rewind_epoch=2), r"cocktail_rewind_epoch=2 must be below epochs=2"),
    (dict(cocktail_range="all"), r"cocktail_range='all' is not allowed"),
])
def test_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**{**TINY, **bad}).validate()


def test_dry_run_describes_the_schedule():
    text = describe_run(RunConfig(**{**TINY, "cocktail_iterations": 10, "backend": "accel"}).validate())
    assert "procedure cocktail: 10 IMP iteration(s), 24 subnetworks" in text and " 0.893 " in text and "4:8*" in text
