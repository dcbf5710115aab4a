"""Data-parallel training on CPU with gloo and 2 processes.

- every rank ends with the same masks (checked in-run by ddp_verify_masks after every update);
- those masks equal a single-process run with the same global batch, and the weights agree;
- a rank that dies makes the other fail with a clear error within the timeout, not hang.
"""
import json
import multiprocessing as mp
import os
import socket
import time

import numpy as np
import pytest
import torch

from twinsparse.accel.runner import load_split
from twinsparse.accel.train import train_accel
from twinsparse.reference.config import RunConfig

CFG = dict(hidden=[32], epochs=2, batch_size=32, train_budget=320, delta_t=2, dtype="float64", seed=1,
           ddp_verify_masks=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg_kw, out_dir, die_at, timeout_s):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from twinsparse.accel import distributed as ddp
    result = {"rank": rank}
    try:
        ddp.init_from_env(timeout_s=timeout_s)
        cfg = RunConfig(**cfg_kw).validate()

        def on_step(t, model, sp):
            if die_at is not None and rank == 1 and t == die_at:
                os._exit(3)  # a crash: no clean shutdown, no goodbye to the peers
        out = train_accel(cfg, load_split(cfg), on_step=on_step)
        torch.save({"masks": out["sparsifier"].masks, "params": dict(out["model"].named_parameters()),
                    "updates": out["updates"]}, os.path.join(out_dir, f"rank{rank}.pt"))
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _procedure_worker(rank, world, port, cfg_kw, out_dir, stop_at_record, timeout_s):
    """A procedure with its stage checkpoint in ``out_dir``: resumed when one is there; every rank
    stops dead (a preempted job) when record ``stop_at_record`` is emitted."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from twinsparse.accel import distributed as ddp
    from twinsparse.accel.backends import run_procedure
    ddp.init_from_env(timeout_s=timeout_s)
    cfg = RunConfig(**cfg_kw).validate()
    records = []

    def on_record(rec):
        records.append(rec)
        if len(records) == stop_at_record:
            os._exit(0)
    path = os.path.join(out_dir, "proc.ckpt")
    out = run_procedure(cfg, load_split(cfg), on_record=on_record, checkpoint=path, resume=True, writer=rank == 0)
    torch.save({"masks": out["masks"], "net": out["net"], "records": [r["state"] for r in records]},
               os.path.join(out_dir, f"proc_rank{rank}.pt"))


def _launch(tmp_path, cfg_kw, die_at=None, timeout_s=30.0, target=None):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=target or _worker, args=(r, 2, port, cfg_kw, str(tmp_path), die_at, timeout_s))
             for r in range(2)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout_s + 60)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung"
    return time.perf_counter() - t0


@pytest.mark.parametrize("method", [dict(method="rigl", density=0.2), dict(method="set", density=0.2),
                                    dict(method="dst_ee", density=0.2, c=1e-2)])
def test_ranks_agree_and_match_a_single_process_run(tmp_path, method):
    cfg_kw = {**CFG, **method}
    _launch(tmp_path, cfg_kw)
    res = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert all(r.get("ok") for r in res), res
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    cfg = RunConfig(**{k: v for k, v in cfg_kw.items()}).validate()
    single = train_accel(cfg, load_split(cfg))
    assert len(single["updates"]) >= 5 and r0["updates"] == r1["updates"]
    for n, m in single["sparsifier"].masks.items():
        assert torch.equal(r0["masks"][n], r1["masks"][n]), f"ranks disagree on {n}"
        assert torch.equal(r0["masks"][n], m), f"{n}: DDP masks differ from the single-process run"
    for n, p in single["model"].named_parameters():
        assert torch.equal(r0["params"][n], r1["params"][n])
        np.testing.assert_allclose(r0["params"][n].detach().numpy(), p.detach().numpy(), rtol=1e-9, atol=1e-11)


def test_a_dead_rank_fails_the_other_with_a_clear_error(tmp_path):
    elapsed = _launch(tmp_path, {**CFG, "method": "rigl", "density": 0.2}, die_at=4, timeout_s=10.0)
    res = json.load(open(tmp_path / "rank0.json"))
    assert "error" in res, res
    assert "a peer process died or a collective timed out" in res["error"]
    assert not (tmp_path / "rank1.json").exists()
    assert elapsed < 80


def test_a_preempted_procedure_resumes_on_every_rank(tmp_path):
    """IMP under DDP, all ranks stopped after iteration 1's record, relaunched with resume: every
    rank restores from rank 0's checkpoint and ends with the masks of a single-process run."""
    from twinsparse.accel.backends import run_procedure
    cfg_kw = {**CFG, "procedure": "imp", "method": "dense", "density": 1.0, "epochs": 2, "imp_iterations": 2,
              "imp_rate": 0.5, "imp_rewind_epoch": 1}
    _launch(tmp_path, cfg_kw, die_at=2, target=_procedure_worker)
    assert not (tmp_path / "proc_rank0.pt").exists() and (tmp_path / "proc.ckpt").exists()
    _launch(tmp_path, cfg_kw, die_at=None, target=_procedure_worker)
    r0, r1 = (torch.load(tmp_path / f"proc_rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["records"] == r1["records"] == [0, 1, 2]  # the replayed records and the new one
    cfg = RunConfig(**cfg_kw).validate()
    single = run_procedure(cfg, load_split(cfg))
    for n, m in single["masks"].items():
        assert torch.equal(r0["masks"][n], r1["masks"][n]) and torch.equal(r0["masks"][n], m), n
    for n, p in single["net"].items():
        assert torch.equal(r0["net"][n], r1["net"][n])
        np.testing.assert_allclose(r0["net"][n].numpy(), p.numpy(), rtol=1e-9, atol=1e-11)
