"""Trajectory checks: the same static-sparse MLP training run on both backends.

float64, same init (reference.nn.init_mlp), same NumPy batches, 60 optimizer steps: the masks must
be identical and every parameter within the float64 tolerance after every single step.
"""
import numpy as np
import pytest
import torch

from accel.runner import load_split
from accel.train import train_accel
from conformance.tolerances import tolerance
from reference.config import RunConfig
from reference.train import train_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = {
    "static-erk-random": dict(method="static", density=0.1, distribution="erk", mask_init="random"),
    "static-uniform-magnitude-bn": dict(method="static", density=0.2, distribution="uniform",
                                        mask_init="magnitude", batchnorm=True, nesterov=True),
    "static-snip-global": dict(method="static", density=0.15, distribution="erk", mask_init="snip"),
    "dense-bn": dict(method="dense", batchnorm=True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_static_training_trajectory_matches(case, device):
    cfg = RunConfig(label=case, dtype="float64", hidden=[48, 24], epochs=3, batch_size=32, train_budget=640,
                    lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", device=device,
                    seed=3, **CASES[case]).validate()
    split = load_split(cfg)
    ref_steps = []
    ref = train_reference(cfg, split, on_step=lambda s, params, masks: ref_steps.append(
        ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in masks.items()})))
    acc_steps = []
    acc = train_accel(cfg, split, on_step=lambda s, model, sp: acc_steps.append(
        ({k: v.detach().cpu().numpy().copy() for k, v in model.named_parameters()},
         {k: v.cpu().numpy().copy() for k, v in sp.masks.items()})))
    assert len(ref_steps) == len(acc_steps) == 60
    tol = tolerance(np.float64)
    for step, ((rp, rm), (ap, am)) in enumerate(zip(ref_steps, acc_steps), start=1):
        assert list(rm) == list(am)
        for name in rm:
            assert np.array_equal(rm[name], am[name]), f"step {step}: mask {name} differs"
        assert list(rp) == list(ap)
        for name in rp:
            np.testing.assert_allclose(ap[name], rp[name], err_msg=f"step {step}: {name}", **tol)
            if name in rm:
                assert np.all(ap[name][~am[name]] == 0), f"step {step}: pruned weights of {name} revived"
    # the evaluation numbers of both backends agree too
    for r, a in zip(ref["history"], acc["history"]):
        assert r["density"] == pytest.approx(a["density"], abs=0)
        assert r["test_acc"] == pytest.approx(a["test_acc"], abs=0)
        assert r["test_nll"] == pytest.approx(a["test_nll"], rel=1e-9)
