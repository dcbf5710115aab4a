"""Checkpoint and resume: an interrupted-and-resumed run equals the uninterrupted one (bitwise, CPU),
on both backends; corrupt or foreign checkpoints are clear errors; writes are atomic."""
import os

import numpy as np
import pytest
import torch

from twinsparse.accel import checkpoint as ack
from twinsparse.accel.runner import load_split
from twinsparse.accel.train import train_accel
from twinsparse.reference import checkpoint as rck
from twinsparse.reference.config import RunConfig
from twinsparse.reference.train import train_reference

BASE = dict(hidden=[24], epochs=4, batch_size=32, train_budget=320, delta_t=3, lr=0.05, seed=2)
CASES = {
    "dense": dict(method="dense"),
    "rigl": dict(method="rigl", density=0.2),
    "dst_ee": dict(method="dst_ee", density=0.2, c=1e-2),
    "suptickets-mid-stage": dict(method="rigl", density=0.2, batchnorm=True, suptickets=True, st_n_tickets=4,
                                 st_cycle_epochs=0.5),
}


class _Stop(Exception):
    pass


def _interrupt_after(n):
    def cb(rec):
        if rec["epoch"] == n:
            raise _Stop
    return cb


def _final(backend, out):
    if backend == "reference":
        return {**out["params"], **{f"mask:{k}": v for k, v in out["masks"].items()}}, out["history"], out["updates"]
    net = {k: v.detach().numpy() for k, v in out["model"].state_dict().items()}
    net.update({f"mask:{k}": v.numpy() for k, v in out["sparsifier"].masks.items()})
    return net, out["history"], out["updates"]


@pytest.mark.parametrize("backend", ["accel", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_resume_equals_uninterrupted(tmp_path, backend, case):
    cfg = RunConfig(backend=backend, **BASE, **CASES[case]).validate()
    split = load_split(cfg)
    train = train_reference if backend == "reference" else train_accel
    full = _final(backend, train(cfg, split))
    ck = str(tmp_path / "run.ckpt")
    stop_at = 3 if case == "suptickets-mid-stage" else 2
    with pytest.raises(_Stop):
        train(cfg, split, checkpoint=ck, on_epoch=_interrupt_after(stop_at))
    assert os.path.exists(ck)
    resumed = _final(backend, train(cfg, split, checkpoint=ck, resume=True))
    assert list(full[0]) == list(resumed[0])
    for k in full[0]:
        assert np.array_equal(full[0][k], resumed[0][k]), f"{k} differs after resume"
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_time"} for r in h]  # noqa: E731
    assert strip(full[1]) == strip(resumed[1])
    assert full[2] == resumed[2]


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    cfg = RunConfig(**{**BASE, "epochs": 1}, method="rigl", density=0.2).validate()
    split = load_split(cfg)
    ck = str(tmp_path / "a.ckpt")
    train_accel(cfg, split, checkpoint=ck)
    data = open(ck, "rb").read()
    with open(ck, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(rck.CheckpointError, match="unreadable or truncated"):
        train_accel(cfg.replace(epochs=2), split, checkpoint=ck, resume=True)
    train_accel(cfg, split, checkpoint=ck)
    with pytest.raises(rck.CheckpointError, match="from another run.*density"):
        train_accel(cfg.replace(density=0.3), split, checkpoint=ck, resume=True)
    with pytest.raises(rck.CheckpointError, match="not a twinsparse reference checkpoint"):
        train_reference(cfg.replace(backend="reference"), split, checkpoint=ck, resume=True)
    rc = str(tmp_path / "r.ckpt")
    train_reference(cfg.replace(backend="reference"), split, checkpoint=rc)
    open(rc, "wb").write(open(rc, "rb").read()[:100])
    with pytest.raises(rck.CheckpointError, match="unreadable or truncated"):
        train_reference(cfg.replace(backend="reference", epochs=2), split, checkpoint=rc, resume=True)
    torch.save({"something": 1}, str(tmp_path / "x.ckpt"))
    with pytest.raises(rck.CheckpointError, match="not a twinsparse accel checkpoint"):
        ack.load(str(tmp_path / "x.ckpt"))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.ckpt")
    rck.write_atomic(path, b"good")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        rck.write_atomic(path, b"half-written")
    assert open(path, "rb").read() == b"good"
    assert os.listdir(tmp_path) == ["c.ckpt"]
