"""``twinsparse export`` writes a plain state_dict (safetensors when installed) and a JSON of the
architecture and masks: loadable with ``torch.load(weights_only=True)``, rebuilt into the module."""
import json

import pytest
import torch

from twinsparse.accel import checkpoint as ack
from twinsparse.accel.cli import main
from twinsparse.accel.export import load_exported
from twinsparse.accel.export.files import unpack_mask
from twinsparse.accel.runner import load_split
from twinsparse.accel.train import train_accel
from twinsparse.reference.config import RunConfig


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory):
    """A tiny trained CNN on CIFAR-format files (3 input channels: the export must rebuild that)."""
    from test_datasets import write_cifar
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, n=10)
    cfg = RunConfig(dataset="cifar10", data_root=str(root), holdout_per_class=0, model="cnn", method="rigl",
                    density=0.3, epochs=1, batch_size=10, delta_t=1).validate()
    path = str(tmp_path_factory.mktemp("ck") / "run.ckpt")
    out = train_accel(cfg, load_split(cfg), checkpoint=path)
    return path, out["model"].eval(), out["sparsifier"]


@pytest.mark.parametrize("fmt", ["dense", "slim"])
def test_export_is_a_plain_state_dict_and_a_json(tmp_path, capsys, cnn_checkpoint, fmt):
    path, model, sp = cnn_checkpoint
    out = tmp_path / "model.pt"
    assert main(["export", path, "--format", fmt, "--out", str(out)]) == 0
    assert "model.json (architecture, masks)" in capsys.readouterr().out
    sd = torch.load(out, weights_only=True)                     # no pickled code in the file
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["input_shape"] == [3, 32, 32] and meta["num_classes"] == 10 and meta["model"] == "cnn"
    assert meta["weights_format"] == "torch" and meta["export"] == fmt
    for n, m in sp.masks.items():
        assert torch.equal(unpack_mask(meta["masks"][n]), m.cpu()), n
    rebuilt = load_exported(str(out))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        got = rebuilt(x)
    if fmt == "dense":
        assert torch.equal(got, want) and all(torch.equal(sd[k], v) for k, v in rebuilt.state_dict().items())
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert meta["layers"]["classifier"]["shape"] == list(rebuilt.classifier.weight.shape)


def test_safetensors_when_installed(tmp_path, cnn_checkpoint):
    st = pytest.importorskip("safetensors.torch")
    path, model, _ = cnn_checkpoint
    out = tmp_path / "model.safetensors"
    assert main(["export", path, "--format", "dense", "--out", str(out)]) == 0
    sd = st.load_file(str(out))
    assert json.loads((tmp_path / "model.json").read_text())["weights_format"] == "safetensors"
    rebuilt = load_exported(str(out))
    assert all(torch.equal(sd[k], v) for k, v in rebuilt.state_dict().items())


def test_export_errors_name_the_file(tmp_path, cnn_checkpoint, capsys):
    path = cnn_checkpoint[0]
    assert main(["export", path, "--format", "dense", "--out", str(tmp_path / "m.json")]) == 2
    assert "would be overwritten by the export's own JSON" in capsys.readouterr().err
    out = tmp_path / "m.pt"
    assert main(["export", path, "--format", "dense", "--out", str(out)]) == 0
    (tmp_path / "m.json").unlink()
    from twinsparse.reference.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=r"architecture and masks in m.json beside it, which is missing"):
        load_exported(str(out))
    assert main(["export", path, "--format", "dense", "--out", str(out)]) == 0
    out.write_bytes(out.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"m.pt are unreadable or truncated"):
        load_exported(str(out))
    payload = ack.load(path)
    assert payload["input_shape"] == [3, 32, 32] and payload["num_classes"] == 10
