"""Trajectory check of Sparse Cocktail (reference/cocktail_procedure.py, written once) on both engines: a tiny
float64 MLP with BatchNorm, dense stage + 2 IMP iterations (so P_2 makes the 1:2 mask and Alg. 1
chooses alpha_2 over the 12 candidates) + BnUpdate per subnetwork. Masks and the chosen alphas must
be identical, every hold-out objective value (a sum of accuracies) within the derived tolerance, the
test accuracies (count / n, and their means) equal, every weight and BN set within the float64
tolerance, and the test NLL / ECE within the derived tolerance (conformance/tolerances.py)."""
import numpy as np
import pytest
import torch

from twinsparse.accel.engine import AccelEngine
from twinsparse.accel.runner import load_split
from twinsparse.conformance.tolerances import assert_derived_close, tolerance
from twinsparse.reference.cocktail_procedure import run_cocktail
from twinsparse.reference.config import RunConfig
from twinsparse.reference.engine import ReferenceEngine

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _np(v):
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pivot", [True, False])
def test_cocktail_iteration_with_interpolation_matches(device, pivot):
    cfg = RunConfig(procedure="cocktail", dtype="float64", hidden=[32, 32, 16], batchnorm=True, epochs=2,
                    batch_size=32, cocktail_iterations=2, cocktail_rewind_epoch=1, train_budget=400,
                    test_per_class=20, seed=5, cocktail_pivot=pivot, device=device, nesterov=True).validate()
    split = load_split(cfg)
    ref = run_cocktail(ReferenceEngine(cfg, split), cfg)
    acc = run_cocktail(AccelEngine(cfg, split), cfg)
    tol = tolerance(np.float64)
    assert list(ref["masks"]) == list(acc["masks"])
    for name in ref["masks"]:
        for p, m in ref["masks"][name].items():
            assert np.array_equal(m, _np(acc["masks"][name][p])), f"mask {name}/{p} differs"
    assert ref["alphas"] == acc["alphas"] and len(ref["alphas"]) == 1
    table = ref["records"][-1]["interpolation"]
    assert list(table) == ["2"] and len(table["2"]) == 12
    assert_derived_close(table, acc["records"][-1]["interpolation"], "interpolation")
    for a, b in zip(ref["nets"] + [ref["net"]], acc["nets"] + [acc["net"]]):
        for n, v in a.items():
            np.testing.assert_allclose(_np(b[n]), v, **tol, err_msg=n)
    for name, bn in ref["bn"].items():
        assert set(bn) == set(acc["bn"][name]) and bn
        for n, v in bn.items():
            np.testing.assert_allclose(_np(acc["bn"][name][n]), v, **tol, err_msg=f"{name}/{n}")
    assert len(ref["records"]) == len(acc["records"]) == 4          # dense, 2 iterations, cocktail
    for ra, rb in zip(ref["records"], acc["records"]):
        assert ra["state"] == rb["state"]
        assert ra["test_acc"] == rb["test_acc"]
        assert ra.get("subnetworks") == rb.get("subnetworks")     # accuracies, before / after interpolation
        assert_derived_close(ra["test_nll"], rb["test_nll"], "test_nll")
        assert_derived_close(ra["test_ece"], rb["test_ece"], "test_ece")
