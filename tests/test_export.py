"""Export (issue 7): channel slimming equals the masked model, 2:4 semi-structured export (clear
errors without a supported GPU; the real conversion under -m gpu), the mask bank file, and the
``twinsparse export`` command."""
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from twinsparse.accel import checkpoint as ack
from twinsparse.accel.cli import main
from twinsparse.accel.export import (MaskBankError, UnknownMaskSetError, apply_masks, check_export_accuracy,
                          export_semi_structured, is_two_four, load_exported, load_mask_bank, param_count,
                          save_mask_bank, semi_structured_supported, slim_channels)
from twinsparse.accel.masks import channel_masks, nm_masks, random_masks, random_scores
from twinsparse.accel.models import MLP, ResNet18, SmallCNN, VGG16
from twinsparse.accel.prunable import discover_prunable

F64 = torch.float64


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random biases and BN statistics, so that pruned units have constants of both signs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
            elif isinstance(mod, nn.Linear):
                mod.bias.copy_(torch.rand(mod.out_features, generator=g) * 2 - 1)
    return model


def _hidden_weights(model):
    """Prunable weights except the classifier (whose outputs are never slimmed)."""
    ws = {n: p.detach() for n, p in discover_prunable(model).items()}
    ws.pop(list(ws)[-1])
    return ws


def _masked(model, masks):
    return apply_masks(copy.deepcopy(model), masks).eval()


def _assert_same_outputs(a, b, x):
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, rtol=0, atol=1e-12), (ya - yb).abs().max()


CASES = {
    "mlp": (lambda: MLP((30, 24, 16, 5)), (9, 30)),
    "mlp-bn": (lambda: MLP((30, 24, 16, 5), batchnorm=True), (9, 30)),
    "cnn": (lambda: SmallCNN(width=8), (3, 1, 28, 28)),
    "vgg16": (lambda: VGG16(width=8), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_slim_channels_equals_masked_model_with_channel_masks(case):
    build, xshape = CASES[case]
    torch.manual_seed(0)
    model = _randomize(build().to(F64))
    before = copy.deepcopy(model.state_dict())
    ws = _hidden_weights(model)
    masks = channel_masks(ws, {n: 0.5 for n in ws})
    slim = slim_channels(model, masks)
    x = torch.randn(*xshape, dtype=F64)
    _assert_same_outputs(_masked(model, masks), slim, x)
    assert param_count(slim) < param_count(model)
    assert type(slim) is type(model) and not slim.training
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    rep = slim.slim_report
    assert rep.params_before == param_count(model) and rep.params_after == param_count(slim)
    for r in rep.layers[:-1]:
        pruned = int((~masks[r["layer"] + ".weight"].reshape(r["before"], -1).any(1)).sum())
        # every channel the mask prunes is removed, except conv channels with a non-zero constant
        # that feed another conv (not foldable at zero-padded borders)
        assert r["before"] - r["after"] == r["removed_zero"] + r["removed_folded"] + r["removed_unused"]
        assert r["removed_zero"] + r["removed_folded"] + r["kept_constant"] == pruned
        if r["kind"] == "Linear" or r is rep.layers[-2]:      # feeds a Linear: everything pruned goes
            assert r["kept_constant"] == 0
    assert rep.layers[-1]["after"] == rep.layers[-1]["before"]       # the classifier keeps its outputs
    if case.startswith("mlp"):
        assert sum(r["removed_folded"] for r in rep.layers) > 0    # non-zero constants were folded
    else:
        assert sum(r["kept_constant"] for r in rep.layers) > 0     # and some conv constants were kept
        assert "kept const" in str(rep)


@pytest.mark.parametrize("case", ["mlp-bn", "cnn"])
def test_unstructured_masks_leave_the_architecture_unchanged(case):
    build, xshape = CASES[case]
    torch.manual_seed(1)
    model = _randomize(build().to(F64))
    ws = {n: p.detach() for n, p in discover_prunable(model).items()}
    masks = random_masks(random_scores({n: tuple(w.shape) for n, w in ws.items()}, seed=3), {n: 0.5 for n in ws})
    slim = slim_channels(model, masks)
    assert param_count(slim) == param_count(model)
    assert [tuple(p.shape) for p in slim.parameters()] == [tuple(p.shape) for p in model.parameters()]
    _assert_same_outputs(_masked(model, masks), slim, torch.randn(*xshape, dtype=F64))


def test_weights_zeros_unused_units_and_a_fully_dead_layer():
    torch.manual_seed(2)
    model = _randomize(MLP((12, 10, 8, 3), batchnorm=True).to(F64))
    with torch.no_grad():
        model.fc[0].weight[[1, 4]] = 0          # masks=None: the weights' own zeros count
        model.fc[1].weight[:, 7] = 0            # unit 7 of fc.0 feeds nothing: removed though alive
    slim = slim_channels(model)
    assert slim.fc[0].out_features == 7 and slim.fc[1].in_features == 7
    assert slim.slim_report.layers[0]["removed_unused"] == 1
    _assert_same_outputs(model, slim, torch.randn(5, 12, dtype=F64))
    with torch.no_grad():
        model.fc[1].weight.zero_()              # every unit of fc.1 is constant: one is kept
    slim = slim_channels(model)
    assert slim.fc[1].out_features == 1 and slim.sizes == (12, 1, 1, 3)
    _assert_same_outputs(model, slim, torch.randn(5, 12, dtype=F64))


def test_slim_channels_rejects_unsupported_models_and_bad_masks():
    with pytest.raises(TypeError, match="supports accel.models MLP, SmallCNN and VGG16"):
        slim_channels(ResNet18(width=4))
    m = MLP((6, 4, 2))
    with pytest.raises(ValueError, match=r"mask 'fc.0.weight' has shape \(4, 5\).*\(4, 6\)"):
        slim_channels(m, {"fc.0.weight": torch.ones(4, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not have"):
        slim_channels(m, {"fc.9.weight": torch.ones(4, 6, dtype=torch.bool)})


# ----------------------------------------------------------------------------- 2:4
def test_two_four_pattern_check():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]])
    assert is_two_four(w)
    assert not is_two_four(torch.ones(1, 8)) and not is_two_four(torch.zeros(1, 6))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error path of a machine without CUDA")
def test_semi_structured_without_cuda_is_a_clear_error():
    ok, reason = semi_structured_supported()
    assert not ok and "no CUDA device" in reason and "8.0" in reason
    model = MLP((64, 32, 10)).half()
    masks, _ = nm_masks({n: p.detach().float() for n, p in discover_prunable(model).items()}, 2, 4)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="2:4 semi-structured export is not possible here: no CUDA device"):
        export_semi_structured(model, masks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_export_accuracy_reports_differences():
    torch.manual_seed(0)
    model = MLP((20, 8, 4)).to(F64)
    other = copy.deepcopy(model)
    x = torch.randn(16, 20, dtype=F64)
    assert check_export_accuracy(model, other, x) == pytest.approx(
        {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_abs_ref": check_export_accuracy(model, other, x)["max_abs_ref"],
         "argmax_agreement": 1.0, "n": 16})
    with torch.no_grad():
        other.fc[1].bias.add_(0.5)
    assert check_export_accuracy(model, other, x)["max_abs_diff"] == pytest.approx(0.5)


@pytest.mark.gpu
def test_semi_structured_on_gpu_matches_masked_model():
    ok, reason = semi_structured_supported()
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = MLP((256, 128, 64, 10)).cuda().half()
    ws = {n: p.detach() for n, p in discover_prunable(model).items()}
    masks, _ = nm_masks(ws, 2, 4)
    masked = _masked(model, masks)
    exported = export_semi_structured(model, masks)
    assert exported.semi_structured_report["converted"] == ["fc.0", "fc.1"]
    assert "fc.2" in exported.semi_structured_report["dense"]      # 10 rows: below the kernel's block
    x = torch.randn(512, 256, device="cuda", dtype=torch.float16)
    acc = check_export_accuracy(masked, exported, x)
    assert acc["max_abs_diff"] <= 1e-2 * max(1.0, acc["max_abs_ref"])
    assert acc["argmax_agreement"] >= 0.99


# ----------------------------------------------------------------------------- mask bank
def _bank(model):
    ws = {n: p.detach() for n, p in discover_prunable(model).items()}
    shapes = {n: tuple(w.shape) for n, w in ws.items()}
    return {"unstructured/0.2": random_masks(random_scores(shapes, 0), {n: 0.2 for n in ws}),
            "nm/2:4": nm_masks(ws, 2, 4)[0],
            "channel/0.1": channel_masks(ws, {n: 0.1 for n in ws})}


def test_mask_bank_round_trip_is_compact_and_applies(tmp_path):
    torch.manual_seed(0)
    model = MLP((784, 300, 100, 12))
    bank = _bank(model)
    path = str(tmp_path / "bank.npz")
    save_mask_bank(path, bank, meta={"model": "mlp", "source": "test"})
    assert os.listdir(tmp_path) == ["bank.npz"]                     # no temp file left behind
    n_bits = sum(m.numel() for masks in bank.values() for m in masks.values())
    assert os.path.getsize(path) < n_bits / 8 + 4096                # bit-packed (and compressed)
    mb = load_mask_bank(path)
    assert mb.names() == list(bank) and mb.meta == {"model": "mlp", "source": "test"} and "nm/2:4" in mb
    for name, masks in bank.items():
        got = mb.masks(name)
        assert list(got) == list(masks)
        assert all(got[n].dtype == torch.bool and torch.equal(got[n], masks[n]) for n in masks)
    assert mb.density("unstructured/0.2") == pytest.approx(0.2, abs=1e-3)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    applied = mb.apply(model, "nm/2:4")
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), w[n] * applied[n]) if n in applied else torch.equal(p.detach(), w[n])


def test_mask_bank_errors(tmp_path):
    model = MLP((16, 8, 4))
    path = str(tmp_path / "b.npz")
    save_mask_bank(path, _bank(model))
    mb = load_mask_bank(path)
    with pytest.raises(UnknownMaskSetError, match=r"no mask set 'nm/1:4'; available: \['unstructured/0.2', 'nm/2:4'"):
        mb.masks("nm/1:4")
    with pytest.raises(KeyError):           # also a KeyError, as for a dict
        mb.apply(model, "dense")
    other = MLP((16, 6, 4))                 # fc.1 fits, fc.0 does not: nothing may be applied
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(MaskBankError, match=r"'fc.0.weight' has shape \(8, 16\) in the bank but \(6, 16\) in the model"):
        mb.apply(other, "channel/0.1")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    data = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskBankError, match="truncated or corrupt"):
        load_mask_bank(str(tmp_path / "t.npz"))
    np.savez(str(tmp_path / "plain.npz"), a=np.zeros(3))
    with pytest.raises(MaskBankError, match="not a mask bank file"):
        load_mask_bank(str(tmp_path / "plain.npz"))
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(MaskBankError, match="not a mask bank file"):
        load_mask_bank(str(tmp_path / "text.txt"))
    with pytest.raises(ValueError, match="boolean or 0/1"):
        save_mask_bank(str(tmp_path / "x.npz"), {"a": {"fc.0.weight": torch.full((2, 2), 0.5)}})
    with pytest.raises(TypeError, match="JSON"):
        save_mask_bank(str(tmp_path / "x.npz"), {"a": {"w": torch.ones(2, dtype=torch.bool)}}, meta={"f": object()})
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def channel_checkpoint(tmp_path_factory):
    """A real (tiny) training checkpoint whose masks were replaced by channel masks."""
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.train import train_accel
    from twinsparse.reference.config import RunConfig
    cfg = RunConfig(hidden=[24, 16], batchnorm=True, epochs=1, batch_size=50, train_budget=100, method="static",
                    density=0.5, dtype="float64", seed=1).validate()
    split = load_split(cfg)
    path = str(tmp_path_factory.mktemp("ck") / "run.ckpt")
    train_accel(cfg, split, checkpoint=path)
    payload = ack.load(path)
    ws = {n: payload["model"][n] for n in payload["sparsifier"]["masks"]}
    masks = channel_masks(ws, {n: (1.0 if n == "fc.2.weight" else 0.5) for n in ws})
    payload["sparsifier"]["masks"] = masks
    for n, m in masks.items():
        payload["model"][n] = payload["model"][n] * m
    ack.save(path, payload)
    model = MLP((784, 24, 16, 10), batchnorm=True).to(F64)
    model.load_state_dict(payload["model"])
    return path, model.eval(), torch.from_numpy(split.x_test[:64]).to(F64)


def test_cli_export_dense_and_slim(tmp_path, capsys, channel_checkpoint):
    path, masked, x = channel_checkpoint
    out = str(tmp_path / "slim.pt")
    assert main(["export", path, "--format", "slim", "--out", out]) == 0
    text = capsys.readouterr().out
    assert f"params before: {param_count(masked)}, after: {param_count(masked) - 12 * (784 + 1 + 2 + 16) - 8 * (12 + 1 + 2 + 10)}" in text
    assert "fc.0" in text
    slim = load_exported(out)
    assert param_count(slim) < param_count(masked) and slim.fc[0].out_features == 12
    _assert_same_outputs(masked, slim, x)
    out = str(tmp_path / "dense.pt")
    assert main(["export", path, "--format", "dense", "--out", out]) == 0
    dense = load_exported(out)
    assert param_count(dense) == param_count(masked)
    with torch.no_grad():
        assert torch.equal(dense(x), masked(x))


def test_cli_export_errors(tmp_path, capsys, channel_checkpoint):
    path = channel_checkpoint[0]
    out = tmp_path / "x.pt"
    if not semi_structured_supported()[0]:
        assert main(["export", path, "--format", "2:4", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--format 2:4 cannot run here:" in err and "compute capability >= 8.0" in err and not out.exists()
    data = Path(path).read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 3])
    assert main(["export", str(bad), "--format", "slim", "--out", str(out)]) == 2
    assert "unreadable or truncated" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["export", path, "--format", "3:4", "--out", str(out)])
