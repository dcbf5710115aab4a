"""Trajectory check of D²-Sparse: one state (plus the warm-up) of the same procedure on both
backends, and two states of each baseline.

float64, tiny MLP (BatchNorm only in the short BN-recompute case), the same views and batches. Every training phase must start
and end with identical masks, every network within the float64 tolerance, and the procedure must
make the same choices: the same alpha (with the same accuracy per grid point), the same SNIP mask,
the same Hamming distance between the branches.

(Why no BatchNorm here: with BN after the first layer, the gradient of a weight that reads a
constant input pixel is analytically 0 -- BN removes the batch mean -- so numerically it is rounding
noise, different on each backend; after some training those near-zero weights reach RigL's drop
threshold in a different order. The masks then differ legitimately. Short BN runs agree; see
conformance/test_trajectory.py.)
"""
import numpy as np
import pytest
import torch

from twinsparse.accel.engine import AccelEngine
from twinsparse.accel.runner import load_split
from twinsparse.conformance.tolerances import tolerance
from twinsparse.reference.config import RunConfig
from twinsparse.reference.engine import ReferenceEngine
from twinsparse.reference.d2sparse import run_d2

BASE = dict(method="rigl", density=0.1, train_budget=60, hidden=[24, 12], batch_size=16, delta_t=3,
            drop_fraction=0.4, d2_warmup_epochs=1, d2_state_epochs=3, d2_finetune_epochs=2, d2_baseline_epochs=3,
            d2_view_pool=2, dtype="float64", test_per_class=20)
CASES = {
    "d2sparse-one-state": dict(procedure="d2sparse", d2_states=1),
    "d2sparse-cutmix-recompute": dict(procedure="d2sparse", d2_states=1, d2_views=["cutmix", "augmix_strong"],
                                      d2_bn_merge="recompute", batchnorm=True),
    "baseline-two-states": dict(procedure="d2_baseline", d2_states=2),
    "baseline_lb-two-states": dict(procedure="d2_baseline_lb", d2_states=2, d2_lb_view="augmix_weak"),
}


def _recording(engine_cls, log):
    class Recording(engine_cls):
        def train(self, pcfg, net, masks, batches):
            out = super().train(pcfg, net, masks, batches)
            log.append((net, masks, out))
            return out
    return Recording


def _np(d):
    return None if d is None else {n: (v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                                   for n, v in d.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_d2sparse_state_matches_across_backends(case):
    cfg = RunConfig(**BASE, **CASES[case]).validate()
    split = load_split(cfg)
    logs, outs = {}, {}
    for key, cls in (("ref", ReferenceEngine), ("acc", AccelEngine)):
        logs[key] = []
        eng = _recording(cls, logs[key])(cfg, split)
        outs[key] = run_d2(eng, cfg)
    tol = tolerance("float64")
    assert len(logs["ref"]) == len(logs["acc"]) == (1 + (3 if cfg.procedure == "d2sparse" else 1) * cfg.d2_states)
    for i, (r, a) in enumerate(zip(logs["ref"], logs["acc"])):
        for what, rd, ad in (("start net", r[0], _np(a[0])), ("end net", r[2]["net"], _np(a[2]["net"]))):
            for n in rd:
                np.testing.assert_allclose(ad[n], rd[n], **tol, err_msg=f"phase {i} {what} {n}")
        for what, rm, am in (("start masks", r[1], _np(a[1])), ("end masks", r[2]["masks"], _np(a[2]["masks"]))):
            assert (rm is None) == (am is None)
            for n in (rm or {}):
                assert np.array_equal(rm[n], am[n]), f"phase {i} {what} {n}"
        assert len(r[2]["updates"]) == len(a[2]["updates"])
    for rr, ra in zip(outs["ref"]["records"], outs["acc"]["records"]):
        for k in ("state", "alpha", "alpha_scores", "hamming", "hamming_count", "density", "test_acc"):
            assert rr.get(k) == ra.get(k), (k, rr.get(k), ra.get(k))
    if cfg.procedure == "d2sparse":
        assert outs["ref"]["records"][-1]["alpha"] in cfg.d2_alphas
        assert outs["ref"]["records"][-1]["hamming"] > 0  # independent branch masks
