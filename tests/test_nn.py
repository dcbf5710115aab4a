"""Unit tests of reference.nn (hand-written MLP backward) and accel.models."""
import numpy as np
import pytest
import torch

import twinsparse.reference.nn as R
from twinsparse.accel.models import MLP, MODEL_NAMES, ResNet18, VGG16, build_model, mlp_from_reference, mlp_to_reference

SIZES = (6, 5, 4, 3)


def _data(B=5, sizes=SIZES, seed=1, soft=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, sizes[0]))
    y = rng.dirichlet(np.ones(sizes[-1]), size=B) if soft else rng.integers(0, sizes[-1], B)
    return x, y


def _perturbed(batchnorm, seed=0):
    """init_mlp with non-trivial BN affine parameters."""
    params, buffers = R.init_mlp(SIZES, batchnorm, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for k in params:
        if k.startswith("bn."):
            params[k] = params[k] + rng.normal(0, 0.3, params[k].shape)
    return params, buffers


# ----------------------------------------------------------------------------- reference backward
@pytest.mark.parametrize("batchnorm,train,soft", [(False, True, False), (True, True, False),
                                                  (True, True, True), (True, False, False)])
def test_backward_matches_finite_differences(batchnorm, train, soft):
    params, buffers = _perturbed(batchnorm)
    x, y = _data(soft=soft)
    _, grads, _, _ = R.mlp_loss_and_grads(params, buffers, x, y, train=train)
    assert list(grads) == list(params)
    h = 1e-6
    for k, p in params.items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            plus, minus = dict(params), dict(params)
            plus[k], minus[k] = p.copy(), p.copy()
            plus[k][idx] += h
            minus[k][idx] -= h
            lp = R.mlp_loss_and_grads(plus, buffers, x, y, train=train)[0]
            lm = R.mlp_loss_and_grads(minus, buffers, x, y, train=train)[0]
            num[idx] = (lp - lm) / (2 * h)
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-8, err_msg=k)
        assert grads[k].shape == p.shape


def test_softmax_cross_entropy_values_and_stability():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, d = R.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    np.testing.assert_allclose(loss, np.log(3) / 2, rtol=1e-12)
    np.testing.assert_allclose(d, [[0, 0, 0], [1 / 6, 1 / 6, -1 / 3]], atol=1e-12)
    np.testing.assert_allclose(R.softmax(logits).sum(axis=1), 1.0)
    assert R.log_softmax(logits)[0, 2] == pytest.approx(-2000.0)
    # a one-hot soft label is the same as the int label
    loss_soft, d_soft = R.softmax_cross_entropy(logits, np.eye(3)[[0, 2]])
    assert loss_soft == pytest.approx(loss) and np.allclose(d_soft, d)


def test_float32_in_float32_out():
    params, buffers = R.init_mlp(SIZES, batchnorm=True, dtype=np.float32)
    x, y = _data()
    loss, grads, nb, logits = R.mlp_loss_and_grads(params, buffers, x.astype(np.float32), y)
    assert loss.dtype == np.float32 and logits.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert nb["bn.0.running_var"].dtype == np.float32 and nb["bn.0.num_batches_tracked"].dtype == np.int64


# ----------------------------------------------------------------------------- twin with torch
def test_init_matches_torch_layout_and_distribution():
    params, buffers = R.init_mlp((784, 300, 100, 10), batchnorm=True, seed=3)
    model = MLP((784, 300, 100, 10), batchnorm=True)
    assert list(params) == [k for k, _ in model.named_parameters()]
    assert list(buffers) == [k for k, _ in model.named_buffers()]
    assert all(params[k].shape == tuple(p.shape) for k, p in model.named_parameters())
    w = params["fc.0.weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(784) and np.abs(w).max() > 0.9 / np.sqrt(784)
    assert abs(w.mean()) < 1e-3  # U(-b, b) is centred
    again, _ = R.init_mlp((784, 300, 100, 10), batchnorm=True, seed=3)
    other, _ = R.init_mlp((784, 300, 100, 10), batchnorm=True, seed=4)
    assert np.array_equal(w, again["fc.0.weight"]) and not np.array_equal(w, other["fc.0.weight"])
    assert buffers["bn.0.num_batches_tracked"].shape == () and buffers["bn.0.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_forward_equals_torch_and_round_trip(dtype, batchnorm):
    params, buffers = _perturbed(batchnorm)
    params = {k: v.astype(dtype) for k, v in params.items()}
    buffers = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in buffers.items()}
    x, _ = _data()
    x = x.astype(dtype)
    for train in (True, False):
        logits, _, _ = R.mlp_forward(params, buffers, x, train=train)
        model = mlp_from_reference(params, buffers, SIZES, batchnorm).train(train)
        with torch.no_grad():
            got = model(torch.from_numpy(x)).numpy()
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(got, logits, rtol=tol, atol=tol)
    p2, b2 = mlp_to_reference(mlp_from_reference(params, buffers))
    assert list(p2) == list(params) and list(b2) == list(buffers)
    for k in params:
        assert p2[k].dtype == np.dtype(dtype) and np.array_equal(p2[k], params[k])
    for k in buffers:
        assert b2[k].dtype == buffers[k].dtype and np.array_equal(b2[k], buffers[k])


def test_running_stats_update_matches_torch():
    params, buffers = _perturbed(True)
    model = mlp_from_reference(params, buffers).train()
    for step in range(3):
        x, _ = _data(B=4 + step, seed=step)
        _, _, buffers = R.mlp_forward(params, buffers, x, train=True)
        model(torch.from_numpy(x))
    _, tb = mlp_to_reference(model)
    assert int(buffers["bn.0.num_batches_tracked"]) == 3 == int(tb["bn.0.num_batches_tracked"])
    for k in buffers:
        np.testing.assert_allclose(buffers[k], tb[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert not np.allclose(buffers["bn.0.running_var"], 1.0)  # the stats moved


def test_eval_mode_leaves_buffers_and_inputs_unchanged():
    params, buffers = _perturbed(True)
    snapshot = {k: v.copy() for k, v in buffers.items()}
    x, y = _data()
    _, _, nb, _ = R.mlp_loss_and_grads(params, buffers, x, y, train=False)
    for k in buffers:
        assert np.array_equal(nb[k], snapshot[k]) and np.array_equal(buffers[k], snapshot[k])
        assert nb[k] is not buffers[k]
    _, _, nb, _ = R.mlp_loss_and_grads(params, buffers, x, y, train=True)
    assert all(np.array_equal(buffers[k], snapshot[k]) for k in buffers)  # train returns new dict only
    assert int(nb["bn.1.num_batches_tracked"]) == 1


def test_image_input_is_flattened():
    params, buffers = R.init_mlp((784, 8, 10))
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    a, _, _ = R.mlp_forward(params, buffers, x, train=False)
    b, _, _ = R.mlp_forward(params, buffers, x.reshape(2, 784), train=False)
    assert a.shape == (2, 10) and np.array_equal(a, b)


# ----------------------------------------------------------------------------- model zoo
def _fwd_bwd(model, x):
    out = model(x)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_runs_on_mnist_shape(name):
    torch.manual_seed(0)
    kw = {} if name in ("mlp", "cnn") else {"in_channels": 1, "width": 8, "num_classes": 10}
    if name == "vit":                        # a transformer: embedding width and the image size it patches
        kw = {"in_channels": 1, "dim": 16, "image_size": 28, "num_classes": 10}
    model = build_model(name, **kw)
    assert _fwd_bwd(model, torch.randn(2, 1, 28, 28)).shape == (2, 10)
    model.zero_grad()
    assert _fwd_bwd(model, torch.randn(2, 784)).shape == (2, 10)


@pytest.mark.parametrize("cls", [ResNet18, VGG16])
def test_cifar_models_full_width(cls):
    torch.manual_seed(0)
    model = cls(in_channels=3, num_classes=10)
    assert _fwd_bwd(model, torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_has_eighteen_weight_layers():
    m = ResNet18(width=4)
    convs = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(convs) + len(linears) == 18


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise():
    params, buffers = R.init_mlp(SIZES, batchnorm=True)
    x, y = _data()
    with pytest.raises(ValueError, match="allowed names: mlp, cnn, resnet18, resnet50, vgg16"):
        build_model("resnet51")
    with pytest.raises(ValueError, match="expects 6"):
        R.mlp_forward(params, buffers, x[:, :5], train=True)
    with pytest.raises(ValueError, match="expects 6"):
        MLP(SIZES)(torch.zeros(2, 5))
    x_nan = x.copy()
    x_nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        R.mlp_forward(params, buffers, x_nan, train=True)
    bad = dict(params, **{"fc.1.weight": np.full((4, 5), np.inf)})
    with pytest.raises(ValueError, match="fc.1.weight"):
        R.mlp_forward(bad, buffers, x, train=True)
    with pytest.raises(ValueError, match="fc.1.weight has shape"):
        R.mlp_forward(dict(params, **{"fc.1.weight": np.zeros((4, 3))}), buffers, x, train=True)
    with pytest.raises(ValueError, match="at least 2 samples"):
        R.mlp_forward(params, buffers, x[:1], train=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        R.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="rows summing to 1"):
        R.softmax_cross_entropy(np.zeros((2, 3)), np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="positive int"):
        R.init_mlp((784, 0, 10))
    with pytest.raises(TypeError, match="float32 or float64"):
        R.init_mlp(SIZES, dtype=np.int32)
    with pytest.raises(ValueError, match="do not match"):
        R.mlp_forward(params, {}, x, train=True)
