"""Real data: the CIFAR-format reader on tiny synthetic files, synthetic and .npz datasets, the crop +
flip augmentation and both input pipelines (same batches, a function of (seed, epoch)), models built
for the data's shape (``--model resnet18`` on MNIST-5k and on CIFAR), a user's own DataLoader."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from twinsparse.accel import data as AD
from twinsparse.accel.cli import main
from twinsparse.accel.runner import load_split
from twinsparse.accel.train import build_model_for, train_accel, train_on_loader
from twinsparse.reference import datasets as RD
from twinsparse.reference.config import ConfigError, RunConfig


def write_cifar(root, name="cifar10", n=6, seed=0):
    """Files in the CIFAR Python format with known random content; returns what they hold."""
    folder, train, test, key, k, *_ = RD.CIFAR[name]
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    rng = np.random.default_rng(seed)
    held = {}
    for f in (*train, test):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(n) % k)]
        with open(os.path.join(root, folder, f), "wb") as fh:
            pickle.dump({b"data": data, key: labels, b"batch_label": f.encode(), b"filenames": [b"a.png"] * n}, fh,
                        protocol=2)
        held[f] = (data, np.array(labels))
    return held


# ----------------------------------------------------------------------------- CIFAR reader

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_returns_the_files_content_as_images(tmp_path, name):
    held = write_cifar(tmp_path, name)
    folder, train, test, *_ = RD.CIFAR[name]
    x, y, xt, yt = RD.load_cifar(name, str(tmp_path))
    rows = np.concatenate([held[f][0] for f in train])
    assert x.shape == (rows.shape[0], 3, 32, 32) and x.dtype == np.uint8
    for r, c, i, j in [(0, 0, 0, 0), (1, 2, 31, 5), (rows.shape[0] - 1, 1, 7, 31)]:
        assert x[r, c, i, j] == rows[r, c * 1024 + i * 32 + j]     # R, G, B planes of 32 rows of 32
    assert np.array_equal(y, np.concatenate([held[f][1] for f in train]))
    assert np.array_equal(xt.reshape(len(xt), -1), held[test][0]) and np.array_equal(yt, held[test][1])
    assert np.array_equal(RD.load_cifar(name, str(tmp_path / folder))[0], x)   # the folder itself works too


def test_cifar_split_normalizes_per_channel_and_holds_out_per_class(tmp_path):
    write_cifar(tmp_path, n=30)
    cfg = RunConfig(dataset="cifar10", data_root=str(tmp_path), holdout_per_class=2)
    s = load_split(cfg)
    x, y, xt, _ = RD.load_cifar("cifar10", str(tmp_path))
    assert len(s.y_holdout) == 20 and len(s.y_train) == len(y) - 20 and np.bincount(s.y_holdout).tolist() == [2] * 10
    mean, std = RD.CIFAR["cifar10"][5:]
    want = ((xt[3, 1].astype(np.float64) / 255 - mean[1]) / std[1]).astype(np.float32)
    assert s.x_test.dtype == np.float32 and np.array_equal(s.x_test[3, 1], want)
    assert cfg.n_train() == 50000 - 20        # the size of the real dataset (a config-level count)


def test_missing_cifar_files_name_what_is_expected(tmp_path):
    with pytest.raises(RD.DatasetError, match=r"lacks \['data_batch_1'.*'test_batch'\].*Nothing is downloaded"):
        RD.load_cifar("cifar10", str(tmp_path))
    write_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(RD.DatasetError, match=r"lacks \['data_batch_3'\]"):
        RD.load_cifar("cifar10", str(tmp_path))
    with pytest.raises(ConfigError, match="needs data_root"):
        RunConfig(dataset="cifar100").validate()


def test_cifar_reader_refuses_files_that_would_run_code(tmp_path):
    write_cifar(tmp_path)
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(evil, "wb") as fh:
        pickle.dump({b"data": os.getcwd, b"labels": []}, fh, protocol=2)    # a global: posix.getcwd
    with pytest.raises(RD.DatasetError, match=r"posix.getcwd is not allowed|getcwd is not allowed"):
        RD.load_cifar("cifar10", str(tmp_path))
    evil.write_bytes(b"not a pickle")
    with pytest.raises(RD.DatasetError, match="not a CIFAR batch file"):
        RD.load_cifar("cifar10", str(tmp_path))


# ----------------------------------------------------------------------------- other datasets

def test_synthetic_and_npz_datasets(tmp_path):
    cfg = RunConfig(dataset="synthetic", synthetic_shape=[2, 5], synthetic_classes=3, synthetic_train=30,
                    synthetic_test=9, holdout_per_class=1)
    s = load_split(cfg)
    assert s.x_train.shape == (30, 2, 5) and s.x_test.shape == (9, 2, 5) and len(s.y_holdout) == 3
    assert np.array_equal(load_split(cfg).x_train, s.x_train)                   # deterministic in split_seed
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.arange(24, dtype=np.uint8).reshape(6, 4), y_train=np.array([0, 1, 2, 0, 1, 2]),
             x_test=np.ones((2, 4), np.float32), y_test=np.array([1, 2]))
    t = load_split(RunConfig(dataset="tensors", data_root=str(path), batch_size=2))
    assert np.array_equal(t.x_train, (np.arange(24).reshape(6, 4) / 255).astype(np.float32)) and len(t.y_holdout) == 0
    assert RunConfig(dataset="tensors", data_root=str(path), batch_size=2).n_train() == 6
    assert AD.data_info(RunConfig(dataset="tensors", data_root=str(path))) == ((4,), 3)
    np.savez(path, x_train=np.ones((2, 4), np.float32), y_train=np.array([0, 1]))
    with pytest.raises(RD.DatasetError, match=r"lacks \['x_test', 'y_test'\]"):
        load_split(RunConfig(dataset="tensors", data_root=str(path), batch_size=2))


@pytest.mark.parametrize("bad, match", [
    (dict(dataset="imagenet"), r"dataset='imagenet' is not allowed"),
    (dict(dataset="mnist5k", data_root="/x"), "not read by dataset='mnist5k'"),
    (dict(dataset="synthetic", synthetic_shape=[3, 0]), r"synthetic_shape=\[3, 0\]"),
    (dict(augment="mixup"), r"augment='mixup' is not allowed"),
])
def test_bad_data_settings_are_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**bad).validate()


def test_imagefolder_without_torchvision_is_a_clear_error(tmp_path):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a.png").write_bytes(b"")
    (tmp_path / "val").mkdir()
    with pytest.raises(RD.DatasetError, match="torchvision, which is not installed"):
        load_split(RunConfig(dataset="imagefolder", data_root=str(tmp_path), batch_size=1, holdout_per_class=0))


def test_imagefolder_with_torchvision(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image
    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            (tmp_path / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / part / c / f"{i}.png")
    cfg = RunConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=8, holdout_per_class=1, batch_size=2)
    s = load_split(cfg)
    assert s.x_train.shape == (4, 3, 8, 8) and s.x_test.shape == (2, 3, 8, 8) and len(s.y_holdout) == 2
    assert sorted(s.y_test.tolist()) == [0, 1] and cfg.n_train() == 4
    assert AD.data_info(cfg) == ((3, 8, 8), 2)


# ----------------------------------------------------------------------------- augmentation and pipelines

def test_crop_flip_by_hand():
    x = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    pv = np.array([-1.0], np.float32)
    same = RD.crop_flip(x, np.array([1, 1]), np.array([1, 1]), np.array([False, False]), 1, pv)
    assert np.array_equal(same, x)                                              # centered crop = identity
    flipped = RD.crop_flip(x, np.array([1, 1]), np.array([1, 1]), np.array([True, False]), 1, pv)
    assert np.array_equal(flipped[0], x[0, :, :, ::-1]) and np.array_equal(flipped[1], x[1])
    shifted = RD.crop_flip(x, np.array([0, 2]), np.array([0, 2]), np.array([False, False]), 1, pv)
    assert shifted[0, 0].tolist() == [[-1, -1, -1], [-1, 0, 1], [-1, 3, 4]]     # top-left of the padded image
    assert shifted[1, 0].tolist() == [[13, 14, -1], [16, 17, -1], [-1, -1, -1]]


def _cifar_cfg(tmp_path, **kw):
    write_cifar(tmp_path, n=12)
    return RunConfig(**{**dict(dataset="cifar10", data_root=str(tmp_path), holdout_per_class=0, batch_size=16,
                                model="cnn"), **kw}).validate()


def test_host_and_device_pipelines_give_the_same_augmented_batches(tmp_path):
    cfg = _cifar_cfg(tmp_path)
    s = load_split(cfg)
    host, dev = AD.host_batches(cfg, s.x_train, s.y_train), AD.device_batches(cfg, s.x_train, s.y_train)
    for epoch in (0, 1):
        h, d = [p[0] for p in host(epoch)], [p[0] for p in dev(epoch)]
        assert len(h) == len(d) == 4
        for (hx, hy), (dx, dy) in zip(h, d):
            assert torch.equal(torch.from_numpy(hx), dx) and torch.equal(torch.from_numpy(hy), dy)
    e0, e0b, e1 = ([p[0][0] for p in host(e)] for e in (0, 0, 1))
    assert all(np.array_equal(a, b) for a, b in zip(e0, e0b))                  # a function of (seed, epoch)
    assert not all(np.array_equal(a, b) for a, b in zip(e0, e1))
    none = RunConfig(**{**cfg.__dict__, "augment": "none"})
    plain = np.concatenate([p[0][0] for p in AD.host_batches(none, s.x_train, s.y_train)(0)])
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(s.y_train))
    assert np.array_equal(plain, s.x_train[order])                             # augment='none': the samples
    aug = np.concatenate(e0)
    assert not np.array_equal(aug, plain)
    dy, dx, flip = RD.augment_params(cfg.seed, 0, len(s.y_train))
    black = RD.pad_values(cfg, 3)
    assert np.allclose(black, (0 - np.array(RD.CIFAR["cifar10"][5])) / RD.CIFAR["cifar10"][6])
    for pos, i in enumerate(order):        # a crop at the top of the padded image starts with pad rows
        if dy[i] == 0:
            assert (aug[pos, :, :4] == black[:, None, None]).all()
        if dy[i] == 4 and dx[i] == 4:      # the centered crop is the image itself (maybe flipped)
            want = s.x_train[i, :, :, ::-1] if flip[i] else s.x_train[i]
            assert np.array_equal(aug[pos], want)


def test_resumed_cifar_run_with_augmentation_equals_the_uninterrupted_one(tmp_path):
    cfg = _cifar_cfg(tmp_path, epochs=3, method="set", density=0.3, delta_t=2, batch_size=32)
    split = load_split(cfg)
    full = train_accel(cfg, split)["model"].state_dict()

    class Stop(Exception):
        pass

    def stop(rec):
        if rec["epoch"] == 2:
            raise Stop
    ck = str(tmp_path / "r.ckpt")
    with pytest.raises(Stop):
        train_accel(cfg, split, checkpoint=ck, on_epoch=stop)
    resumed = train_accel(cfg, split, checkpoint=ck, resume=True)["model"].state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


# ----------------------------------------------------------------------------- models for the data

@pytest.mark.parametrize("model", ["cnn", "resnet18", "vgg16", "vit", "resnet50", "mlp"])
def test_models_take_channels_and_size_from_the_data(model):
    cfg = RunConfig(model=model)
    for shape in [(784,), (3, 32, 32), (1, 16, 16)]:
        if model == "resnet50" and shape != (3, 32, 32):
            continue
        m = build_model_for(cfg, shape, 7)
        assert m(torch.randn(2, *shape)).shape == (2, 7)


def test_vit_attention_projections_are_prunable_and_stay_zero():
    from twinsparse.accel.prunable import discover_prunable
    from twinsparse.accel.sparsifier import Sparsifier
    m = build_model_for(RunConfig(model="vit"), (3, 8, 8), 4)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sp = Sparsifier(m, opt, density=0.5, method="rigl", total_steps=4)
    assert any(n.endswith("attn.in_proj_weight") for n in discover_prunable(m))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
        sp.step()
    for n, p in sp.params.items():
        assert not p[~sp.masks[n]].any(), n


def test_cli_resnet18_on_mnist5k_and_on_cifar(tmp_path):
    common = ["--model", "resnet18", "--method", "static", "--density", "0.2", "--epochs", "1", "--no-progress",
              "--batch-size", "10"]
    assert main(["train", *common, "--train-budget", "20", "--test-per-class", "1", "--output",
                 str(tmp_path / "m")]) == 0
    write_cifar(tmp_path / "c", n=4)
    assert main(["train", *common, "--dataset", "cifar10", "--data-root", str(tmp_path / "c"), "--train-budget",
                 "10", "--holdout-per-class", "0", "--output", str(tmp_path / "o")]) == 0
    for out in ("m", "o"):
        rec = json.loads((tmp_path / out / "run_seed0.jsonl").read_text().splitlines()[1])
        assert rec["epoch"] == 1 and abs(rec["density"] - 0.2) < 0.01


# ----------------------------------------------------------------------------- your own DataLoader

def test_train_on_your_own_dataloader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, generator=g)
    test = torch.utils.data.DataLoader(ds, batch_size=32)
    cfg = RunConfig(model="cnn", method="rigl", density=0.3, epochs=2, delta_t=2, lr=0.05)
    out = train_on_loader(cfg, train, test, num_classes=2)
    assert [r["epoch"] for r in out["history"]] == [1, 2] and out["history"][-1]["step"] == 8
    assert 0.0 <= out["history"][-1]["test_acc"] <= 1.0
    sp = out["sparsifier"]
    assert abs(sp.total_density() - 0.3) < 0.01 and len(sp.updates) >= 1
    mine = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    out = train_on_loader(cfg, train, None, model=mine)
    assert out["model"] is mine and "test_acc" not in out["history"][0]
