"""Checkpoint and resume of the multi-phase procedures (reference/stages.py): a run killed right
after its k-th checkpoint write (a stage boundary or an epoch inside a training phase), then
resumed -- once or twice -- ends with bitwise the same weights, masks, records and mask-update
log as the uninterrupted run, on both backends. Plus: the checkpoint holds only what a resume
needs, the runner's log is rewritten whole, and bad checkpoints give clear errors."""
import json
import os

import numpy as np
import pytest
import torch

import twinsparse.accel.checkpoint as ACK
import twinsparse.reference.checkpoint as RCK
from twinsparse.accel.runner import load_split, train_one
from twinsparse.reference.checkpoint import CheckpointError
from twinsparse.reference.config import RunConfig
from twinsparse.accel.backends import run_procedure
from twinsparse.reference.stages import Stages

TINY = dict(train_budget=100, hidden=[24, 12], batch_size=20, test_per_class=20, dtype="float64")
CASES = {
    "d2sparse": dict(procedure="d2sparse", method="rigl", density=0.3, d2_states=2, d2_warmup_epochs=1,
                     d2_state_epochs=2, d2_finetune_epochs=1, d2_views=["cutmix", "cutmix"], d2_bn_merge="recompute",
                     batchnorm=True, delta_t=2),
    "d2_baseline": dict(procedure="d2_baseline", method="rigl", density=0.3, d2_states=2, d2_warmup_epochs=1,
                        d2_baseline_epochs=2, d2_views=["cutmix", "cutmix"], delta_t=2),
    "imp": dict(procedure="imp", epochs=3, imp_iterations=2, imp_rate=0.3, imp_rewind_epoch=1),
    # tiny runs: AC/DC's scaled plan (the thesis plan needs >= 40 epochs) and no 5-epoch LR warm-up
    "acdc": dict(procedure="acdc", method="acdc", density=0.2, epochs=6, acdc_plan="scaled", lr_schedule="cosine"),
    "cram": dict(procedure="cram", epochs=3, cram_eval_sparsities=[0.5, 0.8], batchnorm=True, cram_tau=3,
                 lr_schedule="cosine"),
    "cocktail": dict(procedure="cocktail", epochs=3, cocktail_iterations=2, cocktail_rewind_epoch=1, batchnorm=True),
}


class Crash(Exception):
    pass


@pytest.fixture
def crash_after(monkeypatch):
    """``arm(k)``: the k-th checkpoint write completes, then the process 'dies' (None: never)."""
    state = {"left": None, "writes": 0}
    real = RCK.write_atomic

    def write(path, data):
        real(path, data)
        state["writes"] += 1
        if state["left"] is not None:
            state["left"] -= 1
            if state["left"] == 0:
                raise Crash(path)
    monkeypatch.setattr(RCK, "write_atomic", write)
    monkeypatch.setattr(ACK, "write_atomic", write)

    def arm(k):
        state["left"], state["writes"] = k, 0
        return state
    return arm


def _plain(x):
    """Arrays as NumPy, run times dropped (they are the only thing a resume may change)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if k not in ("time_s", "epoch_time")}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _same(a, b, where="out"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} vs {list(b) if isinstance(b, dict) else b}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), f"{where}: arrays differ"
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"


def _outcome(out, records):
    keep = ("net", "masks", "bn", "alphas", "masks_per_iteration", "rewind", "dense_net", "dense_snapshot")
    return _plain({"result": {k: out[k] for k in keep if k in out}, "records": list(records),
                   "updates": list(out["updates"])})


def _run(cfg, split, path=None, resume=False):
    records = []
    out = run_procedure(cfg, split, on_record=records.append, checkpoint=path, resume=resume)
    return _outcome(out, records)


@pytest.mark.parametrize("backend", ["reference", "accel"])
@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_and_resumed_equals_uninterrupted(case, backend, tmp_path, crash_after):
    cfg = RunConfig(**TINY, **CASES[case], backend=backend).validate()
    split = load_split(cfg)
    full = _run(cfg, split)
    writes = crash_after(None)
    _run(cfg, split, str(tmp_path / "count.ckpt"))
    n = writes["writes"]
    assert n >= 3, f"{case}: only {n} checkpoint writes"
    # killed early, in the middle, and just before the end; the middle one is killed twice
    for k, again in ((1, None), (n // 2, 2), (n - 1, None)):
        path = str(tmp_path / f"k{k}.ckpt")
        crash_after(k)
        with pytest.raises(Crash):
            _run(cfg, split, path)
        if again:
            crash_after(again)
            with pytest.raises(Crash):
                _run(cfg, split, path, resume=True)
        crash_after(None)
        _same(full, _run(cfg, split, path, resume=True), f"{case}/k={k}")
        assert not [f for f in os.listdir(tmp_path) if f.startswith(f"k{k}.ckpt.stage-")], "progress files left"


def test_checkpoint_holds_completed_top_level_stages_only(tmp_path):
    cfg = RunConfig(**TINY, **CASES["d2sparse"], backend="reference").validate()
    path = str(tmp_path / "run.ckpt")
    run_procedure(cfg, load_split(cfg), checkpoint=path)
    payload = RCK.load_reference(path)
    assert list(payload["stages"]) == [("warmup",), ("state1",), ("state2",)]  # children dropped
    assert os.listdir(tmp_path) == ["run.ckpt"]
    # a resumed finished run trains nothing: every stage is replayed
    records = []
    st = Stages(records.append, path=path, config=payload["config"], resume=True, io=RCK.IO)
    from twinsparse.reference.d2sparse import run_d2
    from twinsparse.reference.engine import ReferenceEngine
    run_d2(ReferenceEngine(cfg, load_split(cfg)), cfg, stages=st)
    assert st.resumed == [("warmup",), ("state1",), ("state2",)] and [r["state"] for r in records] == [0, 1, 2]


def test_runner_log_after_resume_equals_uninterrupted_log(tmp_path, crash_after):
    cfg = RunConfig(**TINY, **CASES["imp"], backend="accel").validate()

    def lines(path):
        with open(path, encoding="utf-8") as f:
            return [_plain(json.loads(line)) for line in f]
    train_one(cfg, str(tmp_path / "full.jsonl"), progress=False)
    crash_after(3)
    with pytest.raises(Crash):
        train_one(cfg, str(tmp_path / "cut.jsonl"), progress=False, checkpoint=True)
    crash_after(None)
    train_one(cfg, str(tmp_path / "cut.jsonl"), progress=False, checkpoint=True, resume=True)
    _same(lines(tmp_path / "full.jsonl"), lines(tmp_path / "cut.jsonl"), "log")


def test_bad_procedure_checkpoints_give_clear_errors(tmp_path):
    cfg = RunConfig(**TINY, **CASES["imp"], backend="reference").validate()
    split = load_split(cfg)
    train_cfg = RunConfig(**TINY, method="rigl", density=0.3, epochs=1, delta_t=2, backend="reference").validate()
    run_ck = str(tmp_path / "train.ckpt")
    train_one(train_cfg, str(tmp_path / "train.jsonl"), progress=False, checkpoint=True)
    with pytest.raises(CheckpointError, match="single training run"):
        run_procedure(cfg, split, checkpoint=run_ck, resume=True)
    path = str(tmp_path / "imp.ckpt")
    run_procedure(cfg, split, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"another run \(imp_rate: 0.3 in the checkpoint vs 0.5 now"):
        run_procedure(cfg.replace(imp_rate=0.5), split, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="written by procedure='imp', this run is procedure='train'"):
        train_one(train_cfg, None, progress=False, resume=True, ck_path=path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        run_procedure(cfg, split, checkpoint=path, resume=True)
    acc = cfg.replace(backend="accel")
    with pytest.raises(CheckpointError, match="not a twinsparse accel checkpoint"):
        run_procedure(acc, split, checkpoint=run_ck, resume=True)  # a reference file on the accel backend
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        run_procedure(acc, split, checkpoint=str(tmp_path / "train.jsonl"), resume=True)


def test_fresh_start_ignores_stale_progress_and_replaces_the_checkpoint(tmp_path, crash_after):
    cfg = RunConfig(**TINY, **CASES["acdc"], backend="reference").validate()
    split = load_split(cfg)
    path = str(tmp_path / "run.ckpt")
    crash_after(2)  # dies inside the AC/DC run: an epoch checkpoint of stage 'acdc' is left
    with pytest.raises(Crash):
        _run(cfg, split, path)
    assert os.path.exists(path + ".stage-acdc")
    crash_after(None)
    other = cfg.replace(seed=cfg.seed + 1)  # a different run in the same place, not resumed: starts afresh
    _same(_run(other, split), _run(other, split, path), "fresh start")
    assert os.listdir(tmp_path) == ["run.ckpt"]


def test_stage_names_and_nesting():
    st = Stages()
    with pytest.raises(ValueError, match="stage name 'a b'"):
        st.stage("a b", lambda: 1)
    assert st.stage("outer", lambda: st.stage("inner", lambda: st.emit({"x": 1}) or 5) + 1) == 6
    assert list(st._done) == [("outer",)] and st == [{"x": 1}]
    with pytest.raises(RuntimeError, match="inside a stage"):
        st.progress()
    with pytest.raises(ValueError, match="io="):
        Stages(path="x.ckpt")
