"""Sparsifier: masks, the masked step with every optimizer, state, squash, bad input."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinsparse.accel import Sparsifier, densities, methods
from twinsparse.accel.sparsifier import NonFiniteGradientError
from twinsparse.accel.models import MLP, SmallCNN


def _setup(opt_name="sgd", density=densities.erk(0.1), method="static", **kw):
    torch.manual_seed(0)
    model = MLP(sizes=(20, 16, 12, 4), batchnorm=True).double()
    opts = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-1),
        "amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    }
    opt = opts[opt_name](model.parameters())
    return model, opt, Sparsifier(model, opt, density=density, method=method, **kw)


def _train_steps(model, sp, opt, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 20, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sp.step()


def test_erk_masks_have_exact_counts():
    model, opt, sp = _setup()
    assert list(sp.masks) == ["fc.0.weight", "fc.1.weight", "fc.2.weight"]
    for name, m in sp.masks.items():
        n = m.numel()
        assert int(m.sum()) == int(sp.densities[name] * n + 0.5)
        assert torch.all(sp.params[name][~m] == 0)


@pytest.mark.parametrize("opt_name", ["sgd", "nesterov", "adam", "adamw", "amsgrad"])
def test_step_keeps_weights_grads_and_every_state_slot_zero(opt_name):
    model, opt, sp = _setup(opt_name)
    _train_steps(model, sp, opt, n=6)
    for name, p in sp.params.items():
        off = ~sp.masks[name]
        assert torch.all(p[off] == 0), f"{name}: pruned weight revived with {opt_name}"
        assert torch.all(p.grad[off] == 0), f"{name}: gradient not masked"
        state = opt.state[p]
        slots = [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == p.shape]
        assert slots, f"{opt_name} has no per-weight state slots to check"
        for v in slots:
            assert torch.all(v[off] == 0), f"{name}: optimizer slot revived with {opt_name}"
        assert torch.count_nonzero(p[sp.masks[name]]) > 0  # the kept weights do train


def test_masked_step_matches_dense_step_on_kept_weights():
    model, opt, sp = _setup("sgd")
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(8, 20, dtype=torch.float64), torch.randint(0, 4, (8,))
    for m_, o_ in ((model, opt), (ref, ref_opt)):
        o_.zero_grad()
        F.cross_entropy(m_(x), y).backward()
    for name, p in dict(ref.named_parameters()).items():  # emulate masking by hand
        if name in sp.masks:
            p.grad.mul_(sp.masks[name])
    sp.step()
    ref_opt.step()
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a, b)


def test_include_exclude_first_last_and_patterns():
    model, opt, sp = _setup(exclude=["first", "last"])
    assert list(sp.masks) == ["fc.1.weight"]
    model, opt, sp = _setup(include=["fc.0"], density=0.5)
    assert list(sp.masks) == ["fc.0.weight"]
    with pytest.raises(ValueError, match="fc.9"):
        _setup(exclude=["fc.9"])
    with pytest.raises(ValueError, match="empty"):
        _setup(exclude=["fc.*"])


def test_cnn_prunes_conv_and_linear_weights_only():
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = Sparsifier(model, opt, density=densities.erk(0.2))
    kinds = {type(model.get_submodule(n.rsplit(".", 1)[0])) for n in sp.masks}
    assert kinds == {nn.Conv2d, nn.Linear}
    assert abs(sp.total_density() - 0.2) < 0.01


def test_bad_inputs_raise_before_anything_changes():
    with pytest.raises(ValueError, match="density=1.5"):
        _setup(density=1.5)
    with pytest.raises(ValueError, match="density=0"):
        _setup(density=0.0)
    with pytest.raises(ValueError, match="unknown method 'rigl2'"):
        _setup(method="rigl2")
    with pytest.raises(ValueError, match="keeps every weight"):
        _setup(method="dense", density=0.5)
    with pytest.raises(ValueError, match="needs a density"):
        _setup(density=None)
    with pytest.raises(ValueError, match="missing"):
        _setup(density={"fc.0.weight": 0.5})
    model = MLP(sizes=(20, 16, 4))
    other = torch.optim.SGD(MLP(sizes=(20, 16, 4)).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not hold"):
        Sparsifier(model, other, density=0.5)
    with pytest.raises(ValueError, match="prunable set is empty"):
        Sparsifier(nn.Sequential(nn.ReLU()), torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), density=0.5)


def _bad_step(model, sp, opt, where, bad):
    opt.zero_grad()
    F.cross_entropy(model(torch.randn(8, 20, dtype=torch.float64)), torch.randint(0, 4, (8,))).backward()
    dict(model.named_parameters())[where].grad.view(-1)[0] = bad
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(opt.state_dict())
    sp.step()                                    # no error here: the step is skipped on the device
    for k, v in model.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):   # the forward ran
            assert torch.equal(v, before[k]), k
    assert str(opt.state_dict()) == str(state_before)


@pytest.mark.parametrize("where", ["fc.1.weight", "fc.1.bias", "fc.0.weight"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_changes_nothing_and_raises_at_the_next_sync(bad, where):
    """Any parameter the optimizer steps is guarded (a bias, an excluded first layer too)."""
    model, opt, sp = _setup("sgd", exclude=["first"])
    _train_steps(model, sp, opt, n=2)
    _bad_step(model, sp, opt, where, bad)
    assert sp.step_count == 3                    # the iteration counts, as under GradScaler
    with pytest.raises(NonFiniteGradientError, match=r"iteration 3 .*1 step\(s\)"):
        sp.check_nonfinite()
    assert sp.check_nonfinite() == 1             # reported once, still counted
    _train_steps(model, sp, opt, n=1)            # training goes on normally
    assert sp.skipped_steps == 1


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw", "amsgrad"])
def test_non_finite_step_is_skipped_with_every_fused_optimizer(opt_name):
    model, opt, sp = _setup(opt_name, nonfinite="skip")
    _train_steps(model, sp, opt, n=2)
    _bad_step(model, sp, opt, "fc.2.weight", float("nan"))
    assert sp.skipped_steps == 1 and sp.state_dict()["skipped_steps"] == 1


def test_non_finite_error_surfaces_at_state_dict_and_at_the_next_update():
    model, opt, sp = _setup("sgd")
    _train_steps(model, sp, opt, n=1)
    _bad_step(model, sp, opt, "fc.1.weight", float("inf"))
    with pytest.raises(NonFiniteGradientError):
        sp.state_dict()
    model, opt, sp = _setup("sgd", method=methods.RigL(delta_t=3, t_end=100))
    _train_steps(model, sp, opt, n=1)
    _bad_step(model, sp, opt, "fc.1.weight", float("nan"))
    masks = {n: m.clone() for n, m in sp.masks.items()}
    with pytest.raises(NonFiniteGradientError, match="iteration 2"):
        _train_steps(model, sp, opt, n=1)        # t = 3: the update reads the record first
    assert all(torch.equal(masks[n], sp.masks[n]) for n in masks) and not sp.updates


def test_state_dict_roundtrip_and_validation():
    model, opt, sp = _setup("sgd")
    _train_steps(model, sp, opt, n=3)
    state = sp.state_dict()
    model2, opt2, sp2 = _setup("sgd", method=methods.Static(init="magnitude"))
    with pytest.raises(ValueError, match="method"):
        sp2.load_state_dict({**state, "method": {**state["method"], "name": "dense"}})
    sp2.load_state_dict(state)
    for n in sp.masks:
        assert torch.equal(sp.masks[n], sp2.masks[n])
        assert torch.all(sp2.params[n][~sp2.masks[n]] == 0)
    assert sp2.step_count == 3
    bad = {**state, "masks": {**state["masks"], "fc.0.weight": torch.ones(3, 3, dtype=torch.bool)}}
    masks_before = {n: m.clone() for n, m in sp2.masks.items()}
    with pytest.raises(ValueError, match="shape"):
        sp2.load_state_dict(bad)
    assert all(torch.equal(masks_before[n], sp2.masks[n]) for n in masks_before)
    with pytest.raises(ValueError, match="not a Sparsifier state"):
        sp2.load_state_dict({"masks": {}})
    torch.save(state, "/tmp/_ts_state.pt")
    assert torch.equal(torch.load("/tmp/_ts_state.pt")["masks"]["fc.1.weight"], state["masks"]["fc.1.weight"])


def test_model_pickles_and_deepcopies_and_squash_detaches():
    model, opt, sp = _setup("sgd")
    _train_steps(model, sp, opt, n=2)
    clone = pickle.loads(pickle.dumps(model))
    for (n, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b)
    plain = sp.squash()
    assert plain is model
    for n, p in sp.params.items():
        assert torch.all(p[~sp.masks[n]] == 0)
    with pytest.raises(RuntimeError, match="squashed"):
        sp.step()


def test_snip_masks_are_built_at_first_step_from_the_gradients():
    model, opt, sp = _setup("sgd", method=methods.Static(init="snip"), density=densities.erk(0.2))
    assert sp.masks is None
    with pytest.raises(RuntimeError, match="backward"):
        sp.step()
    _train_steps(model, sp, opt, n=1)
    assert sp.masks is not None
    total = sum(m.numel() for m in sp.masks.values())
    kept = sum(int(m.sum()) for m in sp.masks.values())
    target = sum(sp.densities[n] * sp.params[n].numel() for n in sp.params)
    assert abs(kept - target) <= 1.0
    assert kept < total


def test_dense_method_is_plain_optimizer_step():
    model, opt, sp = _setup("sgd", method="dense", density=None)
    assert sp.total_density() == 1.0
    _train_steps(model, sp, opt, n=2)
    assert sp.step_count == 2


def test_nonfinite_skip_policy_counts_and_changes_nothing():
    model, opt, sp = _setup("sgd")
    sp.nonfinite = "skip"
    _train_steps(model, sp, opt, n=2)
    _bad_step(model, sp, opt, "fc.1.weight", float("nan"))
    assert sp.skipped_steps == 1 and sp.step_count == 3
    assert sp.state_dict()["skipped_steps"] == 1
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        _setup(nonfinite="ignore")


def test_a_density_dict_that_empties_a_layer_is_an_error():
    with pytest.raises(ValueError, match=r"the density dict would keep 0 weights in 1 of 3 layer\(s\): 'fc.1.weight'"):
        _setup(density={"fc.0.weight": 0.5, "fc.1.weight": 0.0, "fc.2.weight": 0.5})
