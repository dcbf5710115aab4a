"""BatchNorm recalibration (docs/methods.md §1.13): reference vs torch, cumulative averages by hand, state
restored, bad inputs, and the BNT / BnUpdate batch lists."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import twinsparse.accel.bn as A
import twinsparse.reference.bn as R
import twinsparse.reference.nn as RN
from twinsparse.accel.models import MLP, SmallCNN, mlp_from_reference, mlp_to_reference


def stale_mlp(sizes=(5, 6, 4, 3), seed=0):
    params, buffers = RN.init_mlp(sizes, batchnorm=True, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for k in buffers:
        if k.endswith("running_mean"):
            buffers[k] = rng.normal(0, 1, buffers[k].shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 3, buffers[k].shape)
        else:
            buffers[k] = np.array(42, dtype=np.int64)
    return params, buffers


def batches(sizes, n=3, b=6, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b + i, sizes[0])) for i in range(n)]


# ----------------------------------------------------------------------------- reference

def test_reference_equals_torch_mlp():
    params, buffers = stale_mlp()
    xs = batches((5,))
    want = R.bn_recalibrate(params, buffers, xs)
    model = mlp_from_reference(params, buffers)
    A.bn_recalibrate(model, [torch.from_numpy(x) for x in xs])
    _, got = mlp_to_reference(model)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert int(want["bn.0.num_batches_tracked"]) == 3


def test_reference_cumulative_average_by_hand():
    params, buffers = stale_mlp()
    xs = batches((5,), n=2)
    out = R.bn_recalibrate(params, buffers, xs)
    z = [x @ params["fc.0.weight"].T + params["fc.0.bias"] for x in xs]
    np.testing.assert_allclose(out["bn.0.running_mean"], (z[0].mean(0) + z[1].mean(0)) / 2, rtol=1e-12)
    np.testing.assert_allclose(out["bn.0.running_var"], (z[0].var(0, ddof=1) + z[1].var(0, ddof=1)) / 2, rtol=1e-12)


def test_reference_pure_and_params_unchanged():
    params, buffers = stale_mlp()
    p0 = {k: v.copy() for k, v in params.items()}
    b0 = {k: v.copy() for k, v in buffers.items()}
    out = R.bn_recalibrate(params, buffers, batches((5,)))
    for k in p0:
        np.testing.assert_array_equal(params[k], p0[k])
    for k in b0:
        np.testing.assert_array_equal(buffers[k], b0[k])
    assert not np.allclose(out["bn.0.running_mean"], b0["bn.0.running_mean"])


def test_mlp_forward_momentum_none_matches_torch_over_steps():
    params, buffers = stale_mlp()
    model = mlp_from_reference(params, buffers, bn_momentum=None).train()
    for x in batches((5,), n=4):
        _, _, buffers = RN.mlp_forward(params, buffers, x, True, bn_momentum=None)
        with torch.no_grad():
            model(torch.from_numpy(x))
    _, got = mlp_to_reference(model)
    for k in buffers:
        np.testing.assert_allclose(got[k], buffers[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert int(buffers["bn.0.num_batches_tracked"]) == 46


def test_reference_errors():
    params, buffers = stale_mlp()
    with pytest.raises(ValueError, match="batches is empty"):
        R.bn_recalibrate(params, buffers, [])
    with pytest.raises(ValueError, match=r"batches\[1\] has B=1 sample"):
        R.bn_recalibrate(params, buffers, [np.zeros((3, 5)), np.zeros((1, 5))])
    with pytest.raises(ValueError, match="expects 5"):
        R.bn_recalibrate(params, buffers, [np.zeros((3, 4))])
    p, b = RN.init_mlp((5, 4, 3), batchnorm=False)
    with pytest.raises(ValueError, match="no 'bn"):
        R.bn_recalibrate(p, b, [np.zeros((3, 5))])
    with pytest.raises(ValueError, match=r"bn_momentum=1.5 is outside"):
        RN.mlp_forward(params, buffers, np.zeros((3, 5)), True, bn_momentum=1.5)


# ----------------------------------------------------------------------------- accel

def test_single_big_batch_gives_its_mean_and_unbiased_var():
    torch.manual_seed(0)
    model = MLP((4, 8, 3), batchnorm=True, bn_momentum=0.3).eval()
    model.bn[0].running_mean.fill_(5.0)
    x = torch.randn(512, 4, dtype=torch.float32)
    params0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    A.bn_recalibrate(model, [x])
    with torch.no_grad():
        z = model.fc[0](x)
    torch.testing.assert_close(model.bn[0].running_mean, z.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn[0].running_var, z.var(0, unbiased=True), rtol=1e-5, atol=1e-6)
    assert int(model.bn[0].num_batches_tracked) == 1
    assert model.bn[0].momentum == 0.3 and not model.training
    for k, p in model.named_parameters():
        assert torch.equal(p, params0[k]), k


def test_conv_model_and_training_flag_restored():
    torch.manual_seed(1)
    model = SmallCNN(in_channels=1, width=4).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    xs = [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)) for _ in range(2)]   # (x, y) pairs
    A.bn_recalibrate(model, xs)
    assert model.training and all(m.momentum == 0.1 for m in bns)
    assert all(int(m.num_batches_tracked) == 2 for m in bns)
    with torch.no_grad():
        z = [model.features[0](x) for x, _ in xs]
    want = (z[0].mean((0, 2, 3)) + z[1].mean((0, 2, 3))) / 2
    torch.testing.assert_close(bns[0].running_mean, want, rtol=1e-5, atol=1e-6)


def test_failure_restores_everything():
    model = MLP((4, 6, 3), batchnorm=True, bn_momentum=0.2).eval()
    model.bn[0].running_mean.fill_(2.0)
    before = {k: v.clone() for k, v in model.named_buffers()}

    def gen():                                   # not a Sequence: validated only while running
        yield torch.randn(5, 4)
        yield torch.randn(1, 4)

    with pytest.raises(ValueError, match=r"batches\[1\] has shape \(1, 4\)"):
        A.bn_recalibrate(model, gen())
    assert model.bn[0].momentum == 0.2 and not model.training
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k


def test_accel_errors_before_anything_changes():
    model = MLP((4, 6, 3), batchnorm=True).eval()
    before = {k: v.clone() for k, v in model.named_buffers()}
    with pytest.raises(ValueError, match="batches is empty"):
        A.bn_recalibrate(model, [])
    with pytest.raises(ValueError, match="batches is empty"):
        A.bn_recalibrate(model, iter([]))
    with pytest.raises(ValueError, match=r"batches\[1\].*B >= 2"):
        A.bn_recalibrate(model, [torch.randn(3, 4), torch.randn(1, 4)])
    with pytest.raises(TypeError, match="iterable of input tensors"):
        A.bn_recalibrate(model, torch.randn(3, 4))
    with pytest.raises(ValueError, match="no BatchNorm|has none"):
        A.bn_recalibrate(MLP((4, 6, 3), batchnorm=False), [torch.randn(3, 4)])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        A.bn_recalibrate("model", [torch.randn(3, 4)])
    with pytest.raises(ValueError, match="track_running_stats=False"):
        A.bn_recalibrate(nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)), [torch.randn(3, 4)])
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k
    assert not model.training


def test_mlp_twin_float32_and_order():
    params, buffers = stale_mlp()
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    b32 = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in buffers.items()}
    xs = [x.astype(np.float32) for x in batches((5,))]
    want = R.bn_recalibrate(p32, b32, xs)
    got = A.mlp_bn_recalibrate({k: torch.from_numpy(v) for k, v in p32.items()},
                               {k: torch.from_numpy(np.asarray(v)) for k, v in b32.items()},
                               [torch.from_numpy(x) for x in xs])
    assert list(got) == list(want)
    assert got["bn.0.running_mean"].dtype == torch.float32
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=2e-5, atol=2e-6, err_msg=k)
    with pytest.raises(ValueError, match="no 'bn"):
        A.mlp_bn_recalibrate(*RN.init_mlp((5, 4, 3)), xs)


# ----------------------------------------------------------------------------- batch lists

def test_bnt_batches_shapes_determinism_and_replacement():
    bs = R.bnt_batches(5000, n_samples=1000, n_batches=100, batch_size=128, seed=7)
    assert len(bs) == 100 and all(b.shape == (128,) and b.dtype == np.int64 for b in bs)
    again = R.bnt_batches(5000, n_samples=1000, n_batches=100, batch_size=128, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(bs, again))
    other = R.bnt_batches(5000, n_samples=1000, n_batches=100, batch_size=128, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(bs, other))
    used = np.unique(np.concatenate(bs))
    assert used.size <= 1000 and used.min() >= 0 and used.max() < 5000
    # with replacement from a fixed 1000-sample subset: 12,800 draws cover almost all of it
    assert used.size > 990
    small = R.bnt_batches(10, n_samples=3, n_batches=50, batch_size=8, seed=0)
    assert np.unique(np.concatenate(small)).size == 3        # the subset, drawn with replacement
    assert any(np.unique(b).size < b.size for b in small)
    assert A.bnt_batches is R.bnt_batches


def test_bnt_batches_clips_and_errors():
    bs = R.bnt_batches(20, n_samples=1000, n_batches=10, batch_size=64, seed=0)
    assert np.unique(np.concatenate(bs)).size == 20
    with pytest.raises(ValueError, match="n_train=1"):
        R.bnt_batches(1)
    with pytest.raises(ValueError, match="batch_size=1"):
        R.bnt_batches(100, batch_size=1)
    with pytest.raises(ValueError, match="n_batches=0"):
        R.bnt_batches(100, n_batches=0)
    with pytest.raises(TypeError, match="n_samples"):
        R.bnt_batches(100, n_samples=2.5)


def test_bnupdate_batches_one_pass_in_order():
    bs = R.bnupdate_batches(300, batch_size=128)
    assert [len(b) for b in bs] == [128, 128, 44]
    np.testing.assert_array_equal(np.concatenate(bs), np.arange(300))
    bs = R.bnupdate_batches(257, batch_size=128)             # a lone last sample joins the previous batch
    assert [len(b) for b in bs] == [128, 129]
    np.testing.assert_array_equal(np.concatenate(bs), np.arange(257))
    assert [len(b) for b in R.bnupdate_batches(5, batch_size=128)] == [5]
    with pytest.raises(ValueError, match="n_train=1"):
        R.bnupdate_batches(1)
    assert A.bnupdate_batches is R.bnupdate_batches
