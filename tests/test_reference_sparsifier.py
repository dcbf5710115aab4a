"""reference.Sparsifier: the NumPy step protocol (the trajectory checks compare it with the accel
Sparsifier over whole runs; here its own rules)."""
import numpy as np
import pytest

from twinsparse.reference.methods import RigL, Static
from twinsparse.reference.nn import init_mlp, mlp_loss_and_grads
from twinsparse.reference.sparsifier import Sparsifier


def _setup(method, nonfinite="raise"):
    params, buffers = init_mlp((6, 8, 3), seed=0)
    prunable = ["fc.0.weight", "fc.1.weight"]
    sp = Sparsifier(params, prunable, {n: 0.5 for n in prunable}, method, seed=0, momentum=0.9, nonfinite=nonfinite)
    return sp, buffers


def _grads(sp, buffers, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((5, 6)), rng.integers(0, 3, 5)
    _, g, buffers, _ = mlp_loss_and_grads(sp.params, buffers, x, y)
    return g, buffers


def test_a_run_keeps_pruned_weights_zero_and_updates_on_schedule():
    sp, buffers = _setup(RigL(delta_t=2, t_end=7))
    for i in range(8):
        g, buffers = _grads(sp, buffers, i)
        assert sp.step(g, 0.1, buffers)
        for n in sp.names:
            assert not sp.params[n][~sp.masks[n]].any()
    assert sp.step_count == 8 and [u["t"] for u in sp.updates] == [2, 4, 6]


def test_non_finite_gradients_count_the_iteration_and_change_nothing_or_raise():
    sp, buffers = _setup(Static(), nonfinite="skip")
    g, buffers = _grads(sp, buffers, 0)
    sp.step(g, 0.1, buffers)
    g, _ = _grads(sp, buffers, 1)
    g["fc.1.bias"] = g["fc.1.bias"] * np.nan
    before = {n: p.copy() for n, p in sp.params.items()}
    assert sp.step(g, 0.1, buffers) is False
    assert sp.step_count == 2 and sp.skipped_steps == 1
    assert all(np.array_equal(before[n], sp.params[n]) for n in before)
    sp.nonfinite = "raise"
    with pytest.raises(ValueError, match="gradients at iteration 3 contain non-finite"):
        sp.step(g, 0.1, buffers)


def test_state_dict_roundtrip_and_bad_inputs():
    sp, buffers = _setup(RigL(delta_t=2, t_end=7))
    for i in range(3):
        g, buffers = _grads(sp, buffers, i)
        sp.step(g, 0.1, buffers)
    other, _ = _setup(RigL(delta_t=2, t_end=7))
    other.load_state_dict(sp.state_dict())
    assert other.step_count == 3 and all(np.array_equal(other.masks[n], sp.masks[n]) for n in sp.masks)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"params": {}})
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        _setup(Static(), nonfinite="ignore")
    with pytest.raises(ValueError, match=r"prunable weight\(s\) \['fc.9.weight'\]"):
        Sparsifier(init_mlp((6, 8, 3), seed=0)[0], ["fc.9.weight"], {"fc.9.weight": 0.5}, Static(), seed=0)
