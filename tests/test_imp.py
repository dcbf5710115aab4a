"""IMP with weight rewinding (reference/imp.py) on both engines: nested masks with exact counts,
rewinding to the snapshot, the same masks and weights on both backends, bad input."""
import math

import numpy as np
import pytest
import torch

import twinsparse.accel.ops as A
import twinsparse.reference.ops as R
from twinsparse.accel.engine import AccelEngine
from twinsparse.accel.runner import load_split
from twinsparse.conformance.tolerances import tolerance
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.engine import ReferenceEngine
from twinsparse.reference.imp import prune_fraction_of_remaining, run_imp

TINY = dict(procedure="imp", epochs=3, imp_iterations=3, imp_rate=0.3, imp_rewind_epoch=1, train_budget=100,
            hidden=[24, 12], batch_size=20, test_per_class=20)


def _np(d):
    return {n: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for n, v in d.items()}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_fraction_of_remaining_is_nested_and_exact(scope):
    rng = np.random.default_rng(0)
    w = {"a": rng.normal(size=(7, 5)), "b": np.round(rng.normal(size=(3, 11)), 1)}  # ties in b
    m = {n: rng.random(v.shape) < 0.7 for n, v in w.items()}
    new = prune_fraction_of_remaining(R, m, w, 0.25, scope)
    assert all(not np.any(new[n] & ~m[n]) for n in m)
    if scope == "global":
        n = sum(int(x.sum()) for x in m.values())
        assert sum(int(x.sum()) for x in new.values()) == n - math.floor(0.25 * n + 0.5)
    else:
        assert all(int(new[k].sum()) == int(m[k].sum()) - math.floor(0.25 * int(m[k].sum()) + 0.5) for k in m)
    t = {n: torch.from_numpy(v) for n, v in w.items()}
    mt = {n: torch.from_numpy(v) for n, v in m.items()}
    assert all(np.array_equal(new[n], x.numpy()) for n, x in prune_fraction_of_remaining(A, mt, t, 0.25, scope).items())


def test_imp_run_matches_across_backends_and_keeps_its_invariants():
    cfg = RunConfig(**TINY, dtype="float64").validate()
    split = load_split(cfg)
    outs = {k: run_imp(E(cfg, split), cfg) for k, E in (("ref", ReferenceEngine), ("acc", AccelEngine))}
    ref, acc = outs["ref"], outs["acc"]
    tol = tolerance("float64")
    assert len(ref["masks_per_iteration"]) == 3
    prev = None
    for mr, ma in zip(ref["masks_per_iteration"], acc["masks_per_iteration"]):
        ma = _np(ma)
        assert all(np.array_equal(mr[n], ma[n]) for n in mr)
        if prev is not None:
            assert all(not np.any(mr[n] & ~prev[n]) for n in mr)  # nested
        prev = mr
    for n, v in _np(acc["net"]).items():
        np.testing.assert_allclose(v, ref["net"][n], **tol)
    n_total = sum(m.size for m in ref["masks"].values())
    kept = n_total
    for rec in ref["records"][1:]:
        kept -= math.floor(0.3 * kept + 0.5)
        assert rec["density"] == kept / n_total
    assert [r["test_acc"] for r in ref["records"]] == [r["test_acc"] for r in acc["records"]]
    # pruned weights stay 0 through retraining; survivors restarted from the rewind point
    assert all(np.all(ref["net"][n][~ref["masks"][n]] == 0) for n in ref["masks"])
    assert not all(np.array_equal(ref["rewind"][n], ref["net"][n]) for n in ref["masks"])


def test_rewind_epoch_zero_resets_to_the_initialisation():
    cfg = RunConfig(**{**TINY, "imp_rewind_epoch": 0, "imp_iterations": 1}).validate()
    eng = ReferenceEngine(cfg, load_split(cfg))
    out = run_imp(eng, cfg)
    init = eng.init_net(cfg, 784, 10)
    assert all(np.array_equal(out["rewind"][n], init[n]) for n in init)


@pytest.mark.parametrize("changes,msg", [
    (dict(imp_rate=1.0), "imp_rate=1.0"), (dict(imp_rate=0.0), "imp_rate=0.0"),
    (dict(imp_rewind_epoch=3), "imp_rewind_epoch=3 must be below epochs=3"),
    (dict(method="rigl", density=0.1), "procedure='imp' finds its own masks"),
    (dict(imp_iterations=0), "imp_iterations=0"), (dict(imp_scope="channel"), "imp_scope='channel'")])
def test_bad_imp_config(changes, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**{**TINY, **changes}).validate()


def test_prune_fraction_bad_input():
    m, w = {"a": np.ones((2, 2), bool)}, {"a": np.ones((2, 2))}
    with pytest.raises(ValueError, match=r"rate=1.5 is outside the allowed range \[0, 1\)"):
        prune_fraction_of_remaining(R, m, w, 1.5)
    with pytest.raises(ValueError, match="scope='rows'"):
        prune_fraction_of_remaining(R, m, w, 0.5, "rows")
