"""Trajectory checks for CrAM ([TH] Alg. 2; docs/methods.md §7.1, §7.2, §7.5): the same training run on both backends.

float64 tiny MLP, same init (reference.nn.init_mlp), same NumPy batches, 30 iterations of
``reference.cram_procedure.cram_step`` vs the ``accel.cram_optimizer.CrAM`` wrapper around torch SGD. After every
step: the same compression C was drawn, the same Top-K / N:M masks were used (exact) and refreshed at the
same steps (tau), every parameter and every BN running statistic is within the float64 tolerance, and
``num_batches_tracked`` equals the step count on both sides (exactly one BN update per step: the perturbed
pass leaves the running statistics alone). The 'cram' procedure's one-shot evaluation (global / uniform
Top-K, 2:4, before and after BNT) gives the same numbers on both backends.
"""
import numpy as np
import pytest
import torch

from twinsparse.accel.cram_procedure import train_cram_accel
from twinsparse.accel.runner import load_split
from twinsparse.conformance.tolerances import assert_derived_close, tolerance
from twinsparse.reference.config import RunConfig
from twinsparse.reference.cram_procedure import train_cram_reference
from twinsparse.accel.backends import run_procedure

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = {
    "cramplus-multi-sg-bn": dict(batchnorm=True, cram_compressions=["topk:0.5", "topk:0.7", "topk:0.9"]),
    "cram-k70-dense-grads": dict(cram_plus=False, cram_sparse_grad=False, cram_compressions=["topk:0.7"]),
    "cramplus-uniform-nm-quant-bn": dict(batchnorm=True, cram_compressions=["topk:0.6:uniform", "nm:2:4", "quant:4"],
                                         nesterov=True),
    "cramplus-tau5-bn": dict(batchnorm=True, cram_tau=5, cram_compressions=["topk:0.5", "topk:0.9"]),
    "topk-plus-rho0-bn": dict(batchnorm=True, cram_rho=0.0, cram_compressions=["topk:0.8"]),
    "sam-bn": dict(batchnorm=True, cram_mode="sam", cram_rho=0.1),
    "csam-sg-bn": dict(batchnorm=True, cram_mode="csam", cram_compressions=["topk:0.5", "topk:0.7"]),
    "sgd-bn": dict(batchnorm=True, cram_mode="sgd"),
}


def _cfg(case, device="cpu", **extra):
    base = dict(label=case, procedure="cram", dtype="float64", hidden=[48, 24], epochs=3, batch_size=32,
                train_budget=320, lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", device=device, seed=3)
    return RunConfig(**{**base, **CASES[case], **extra}).validate()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_cram_training_trajectory_matches(case, device):
    cfg = _cfg(case, device)
    split = load_split(cfg)
    ref_steps, acc_steps = [], []
    ref = train_cram_reference(cfg, split, on_step=lambda t, p, b, info: ref_steps.append(
        ({**p, **b}, info["compression"], info["masks"], info["refreshed"])))
    acc = train_cram_accel(cfg, split, on_step=lambda t, model, cram: acc_steps.append(
        ({k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}, cram.last["compression"],
         None if cram.last["masks"] is None else {k: v.cpu().numpy() for k, v in cram.last["masks"].items()},
         cram.last["refreshed"])))
    assert len(ref_steps) == len(acc_steps) == 30
    tol = tolerance(np.float64)
    refreshes = 0
    for step, ((rn, rc, rm, rr), (an, ac, am, ar)) in enumerate(zip(ref_steps, acc_steps), start=1):
        assert rc == ac, f"step {step}: compression {rc} vs {ac}"
        assert rr == ar, f"step {step}: mask refreshed {rr} vs {ar}"
        refreshes += rr
        assert (rm is None) == (am is None)
        if rm is not None:
            assert list(rm) == list(am)
            for name in rm:
                assert np.array_equal(rm[name], am[name]), f"step {step}: mask {name} differs"
        assert sorted(rn) == sorted(an)
        for name in rn:
            if name.endswith("num_batches_tracked"):
                assert int(rn[name]) == int(an[name]) == step, f"step {step}: {name} (one BN update per step)"
            else:
                np.testing.assert_allclose(an[name], rn[name], err_msg=f"step {step}: {name}", **tol)
    if cfg.cram_tau > 1:
        assert 0 < refreshes < 30
    assert len(ref["history"]) == len(acc["history"]) == cfg.epochs
    for r, a in zip(ref["history"], acc["history"]):
        assert r["test_acc"] == a["test_acc"]                     # count / n: exact on every device
        assert_derived_close(r["test_nll"], a["test_nll"], "test_nll")
        assert_derived_close(r["test_ece"], a["test_ece"], "test_ece")


def test_cram_procedure_one_shot_protocol_matches():
    cfg = _cfg("cramplus-multi-sg-bn", epochs=2, cram_bnt_batches=8, cram_bnt_samples=200,
               cram_eval_patterns=["global", "uniform", "nm:2:4", "quant:4"])
    split = load_split(cfg)
    outs = {b: run_procedure(cfg.replace(backend=b), split) for b in ("reference", "accel")}
    ref, acc = outs["reference"]["records"], outs["accel"]["records"]
    assert [r["state"] for r in ref] == [r["state"] for r in acc] == [1, 2]
    ro, ao = ref[-1]["oneshot"], acc[-1]["oneshot"]
    assert len(ro) == len(ao) == 5 + 5 + 1 + 1
    for r, a in zip(ro, ao):
        assert (r["pattern"], r["sparsity"]) == (a["pattern"], a["sparsity"])
        assert r["density"] == a["density"]
        for k in ("test_acc", "test_acc_bnt"):
            assert r[k] == a[k], (k, r, a)
        for k in ("test_nll", "test_nll_bnt"):
            assert_derived_close(r[k], a[k], k)
    assert [r["density"] for r in ro[:5]] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1], abs=1e-4)  # k = floor(dN + 0.5)
