"""Fault injection on every file the runner writes: the log (<run>.jsonl), the checkpoint
(<run>.ckpt), a procedure's stage checkpoints (<run>.ckpt.stage-*), results.md, results.json,
curves.png and the folder's lock.

- a failing write (ENOSPC from write(2), EIO from fsync) is an OSError naming the file; the file
  keeps its earlier content (a log keeps its earlier lines, whole), no temporary file is left,
  and a later --resume finishes with the records of the uninterrupted run;
- a real SIGKILL in the middle of every single write (a forked child) leaves files that verify
  or are absent; the next start removes the temporary files and the lock, and --resume ends with
  the uninterrupted run's log and results;
- corrupt bytes in a file the resume reads are an error naming the file (and the damaged
  checkpoint entry or log line), and nothing in the folder changes;
- two writers at once: the second fails at once naming the folder and the first one's process.

Every write of the runner goes through ``reference.safeio.write_all`` and ``safeio.fsync``, which
the tests replace to inject the faults.
"""
import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from twinsparse.accel import checkpoint as ack
from twinsparse.accel.runner import run_experiment
from twinsparse.accel.rundir import LOCK_NAME, RunDirectoryError, RunLock
from twinsparse.reference import checkpoint as rck
from twinsparse.reference import safeio
from twinsparse.reference.config import RunConfig
from twinsparse.reference.experiment_file import ExperimentConfig

TINY = dict(hidden=[8], epochs=2, batch_size=50, train_budget=100, test_per_class=20, method="static", density=0.5)
TIME_KEYS = ("epoch_time", "time_s")
RESULTS = ("results.md", "results.json", "curves.png")


class Killed(BaseException):
    """A simulated kill that unwinds the stack (the in-process stand-in for SIGKILL)."""


def _exp(out, backend="accel", **kw):
    return ExperimentConfig(name="t", output=str(out), seeds=[0],
                            runs=[RunConfig(label="a", backend=backend, **{**TINY, **kw}).validate()])


def _run(exp, out, **kw):
    return run_experiment(exp, output=str(out), progress=False, checkpoint=True, **kw)


def _files(out) -> dict:
    """The run's files (the lock file of a live writer aside)."""
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.is_file() and p.name != LOCK_NAME}


def _records(path):
    out = []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in TIME_KEYS} if isinstance(rec, dict) else rec)
    return out


def _rows(out):
    rows = json.loads((Path(out) / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted runs every faulty one must end equal to: {kind: (log records, rows)}."""
    out = {}
    for kind, kw in (("train", {}), ("imp", dict(procedure="imp", method="dense", density=1.0, imp_iterations=1,
                                                 imp_rewind_epoch=1))):
        d = tmp_path_factory.mktemp(kind)
        _run(_exp(d / "o", **kw), d / "o")
        out[kind] = (_records(d / "o" / "a_seed0.jsonl"), _rows(d / "o"))
    return out


class Faults:
    """Replaces safeio.write_all / safeio.fsync: the ``nth`` write (or fsync) of the file named
    ``target`` (a suffix of its path) fails with ``exc``; ``count`` counts the writes per file."""

    def __init__(self, monkeypatch):
        self.real_write, self.real_fsync = safeio.write_all, safeio.fsync
        self.rules, self.count = [], {}
        monkeypatch.setattr(safeio, "write_all", self.write)
        monkeypatch.setattr(safeio, "fsync", self.fsync)

    def fail(self, target, exc, on="write", nth=1, half=True):
        self.rules.append(dict(target=target, exc=exc, on=on, nth=nth, half=half, seen=0))

    def _hit(self, path, on):
        for r in self.rules:
            if r["on"] == on and str(path).endswith(r["target"]):
                r["seen"] += 1
                if r["seen"] == r["nth"]:
                    return r
        return None

    def write(self, fd, data, path):
        self.count[os.path.basename(path)] = self.count.get(os.path.basename(path), 0) + 1
        r = self._hit(path, "write")
        if r is not None:
            if r["half"]:
                self.real_write(fd, bytes(data)[: len(data) // 2], path)
            raise r["exc"]
        self.real_write(fd, data, path)

    def fsync(self, fd, path):
        r = self._hit(path, "fsync")
        if r is not None:
            raise r["exc"]
        self.real_fsync(fd, path)


def _interrupted(out, faults, **kw):
    """A run killed just before its second checkpoint write: checkpoint and log hold epoch 1."""
    faults.fail("a_seed0.ckpt", Killed(), nth=2, half=False)
    with pytest.raises(Killed):
        _run(_exp(out, **kw), out)
    faults.rules.clear()


def _no_temps(out):
    return [n for n in os.listdir(out) if safeio.is_stale_temp(n) or n == LOCK_NAME]


ENOSPC = ("write", lambda: OSError(errno.ENOSPC, "No space left on device"), "No space left on device")
EIO = ("fsync", lambda: OSError(errno.EIO, "Input/output error"), "Input/output error")


@pytest.mark.parametrize("fault", [ENOSPC, EIO], ids=["ENOSPC-on-write", "EIO-on-fsync"])
@pytest.mark.parametrize("target", ["a_seed0.jsonl", "a_seed0.ckpt", "results.md", "results.json", "curves.png"])
def test_a_failing_write_names_the_file_and_keeps_the_earlier_state(tmp_path, monkeypatch, reference_run,
                                                                    target, fault):
    on, make, reason = fault
    out = tmp_path / "o"
    faults = Faults(monkeypatch)
    if target.startswith(("results", "curves")):
        _run(_exp(out), out)                       # a finished experiment; its resume rewrites the results
    else:
        _interrupted(out, faults)                  # epoch 1 saved; the resume writes epoch 2
    before = _files(out)
    faults.fail(target, make(), on=on)
    with pytest.raises(OSError, match=f"{target} failed: {reason}") as err:
        _run(_exp(out), out, resume=True)
    assert err.value.errno == make().errno
    after = _files(out)
    if target in before:                           # the earlier good state of the failed file is intact
        if target.endswith(".jsonl"):              # a log keeps its earlier lines (and only whole lines)
            assert after[target].startswith(before[target]) and after[target].endswith(b"\n")
        else:
            assert after[target] == before[target]
    else:
        assert target not in after                 # no half-written file
    if target.startswith(("results", "curves")):  # the result files are replaced together or not at all
        assert {n: after.get(n) for n in RESULTS} == {n: before.get(n) for n in RESULTS}
    assert not _no_temps(out), "temporary files or the lock were left behind"
    faults.rules.clear()
    _run(_exp(out), out, resume=True)              # and the run still ends as the uninterrupted one
    records, rows = reference_run["train"]
    assert _records(out / "a_seed0.jsonl") == records
    assert _rows(out) == rows


def test_a_failing_stage_checkpoint_write_keeps_the_procedure_resumable(tmp_path, monkeypatch, reference_run):
    out = tmp_path / "o"
    kw = dict(procedure="imp", method="dense", density=1.0, imp_iterations=1, imp_rewind_epoch=1)
    faults = Faults(monkeypatch)
    faults.fail("a_seed0.ckpt.stage-dense", OSError(errno.ENOSPC, "No space left on device"), nth=2)
    with pytest.raises(OSError, match=r"a_seed0\.ckpt\.stage-dense failed: No space left on device"):
        _run(_exp(out, **kw), out)
    assert ack.load(str(out / "a_seed0.ckpt.stage-dense"))["epoch"] == 1
    assert not _no_temps(out)
    faults.rules.clear()
    _run(_exp(out, **kw), out, resume=True)
    records, rows = reference_run["imp"]
    assert _records(out / "a_seed0.jsonl") == records and _rows(out) == rows


def _write_points(tmp_path, monkeypatch):
    """Every write of an uninterrupted checkpointed run, in order: [(file name, k-th write of it)]."""
    seq = []
    real = safeio.write_all

    def spy(fd, data, path):
        name = os.path.basename(path)
        seq.append((name, sum(1 for n, _ in seq if n == name) + 1))
        real(fd, data, path)
    monkeypatch.setattr(safeio, "write_all", spy)
    _run(_exp(tmp_path / "count"), tmp_path / "count")
    monkeypatch.setattr(safeio, "write_all", real)
    return seq


def _killed_child(fn):
    """Run ``fn`` in a forked child that is expected to SIGKILL itself; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            fn()
        finally:
            os._exit(17)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not finish")


def test_a_kill_in_the_middle_of_any_write_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, reference_run):
    points = _write_points(tmp_path, monkeypatch)
    names = {n for n, _ in points}
    assert {"a_seed0.jsonl", "a_seed0.ckpt", "results.md", "results.json", "curves.png", LOCK_NAME} <= names
    records, rows = reference_run["train"]
    for i, (name, k) in enumerate(points):
        out = tmp_path / f"kill{i}"

        def child():
            real = safeio.write_all
            seen = {"n": 0}

            def write(fd, data, path):
                if os.path.basename(path) == name:
                    seen["n"] += 1
                    if seen["n"] == k:           # half of this write reaches the file, then SIGKILL
                        real(fd, bytes(data)[: max(1, len(data) // 2)], path)
                        os.kill(os.getpid(), signal.SIGKILL)
                real(fd, data, path)
            safeio.write_all = write
            _run(_exp(out), out)
        status = _killed_child(child)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{name}#{k}: not killed"
        # what the kill left behind verifies: a checkpoint loads, result files are whole or absent
        if (out / "a_seed0.ckpt").exists():
            ack.load(str(out / "a_seed0.ckpt"))
        if (out / "results.json").exists():
            _rows(out)
        _run(_exp(out), out, resume=True)
        assert _records(out / "a_seed0.jsonl") == records, f"kill in write {name}#{k}: the log differs"
        assert _rows(out) == rows, f"kill in write {name}#{k}: the results differ"
        assert not _no_temps(out), f"kill in write {name}#{k}: {_no_temps(out)} left after the resume"


def _flip_tensor_bytes(path, tensor_bytes):
    data = bytearray(Path(path).read_bytes())
    at = data.find(tensor_bytes[:64])
    assert at >= 0, "the tensor's bytes are not stored verbatim"
    data[at + 5] ^= 0x40
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["accel", "reference"])
def test_flipped_bytes_in_a_checkpoint_weight_name_the_file_and_entry(tmp_path, monkeypatch, backend):
    out = tmp_path / "o"
    faults = Faults(monkeypatch)
    _interrupted(out, faults, backend=backend)
    ck = out / "a_seed0.ckpt"
    if backend == "accel":
        w, entry = ack.load(str(ck))["model"]["fc.0.weight"].numpy(), "model/fc.0.weight"
    else:
        w, entry = rck.load_reference(str(ck))["params"]["fc.0.weight"], "params/fc.0.weight"
    _flip_tensor_bytes(ck, w.tobytes())
    before = _files(out)
    with pytest.raises(rck.CheckpointError, match=f"checkpoint {ck} is corrupt: entry '{entry}' does not match"):
        _run(_exp(out, backend=backend), out, resume=True)
    assert _files(out) == before


def test_a_damaged_log_line_is_named_and_nothing_changes(tmp_path, monkeypatch):
    out = tmp_path / "o"
    _interrupted(out, Faults(monkeypatch))
    log = out / "a_seed0.jsonl"
    lines = log.read_bytes().split(b"\n")
    lines[1] = lines[1][:20] + b"\x00garbage" + lines[1][20:]
    log.write_bytes(b"\n".join(lines))
    before = _files(out)
    with pytest.raises(RunDirectoryError, match=f"log {log} is damaged at line 2"):
        _run(_exp(out), out, resume=True)
    assert _files(out) == before


def test_a_damaged_stage_checkpoint_is_named(tmp_path, monkeypatch):
    out = tmp_path / "o"
    kw = dict(procedure="imp", method="dense", density=1.0, imp_iterations=1, imp_rewind_epoch=1)
    faults = Faults(monkeypatch)
    faults.fail("a_seed0.ckpt.stage-dense", Killed(), nth=2, half=False)
    with pytest.raises(Killed):
        _run(_exp(out, **kw), out)
    stage = out / "a_seed0.ckpt.stage-dense"
    _flip_tensor_bytes(stage, ack.load(str(stage))["model"]["fc.0.weight"].numpy().tobytes())
    before = _files(out)
    with pytest.raises(rck.CheckpointError, match=f"checkpoint {stage} is corrupt: entry 'model/fc.0.weight'"):
        _run(_exp(out, **kw), out, resume=True)
    assert _files(out) == before


def test_a_second_writer_fails_at_once_naming_the_folder_and_the_first(tmp_path):
    out = tmp_path / "o"
    _run(_exp(out), out)
    before = _files(out)
    with RunLock(str(out)):                       # a writer in this process
        t0 = time.time()
        with pytest.raises(RunDirectoryError, match=f"output folder {out} is in use by another twinsparse process "
                                                    f"\\(pid {os.getpid()} on "):
            _run(_exp(out), out, resume=True)
        assert time.time() - t0 < 5
    assert _files(out) == before
    # a writer in another process: refused while it lives, and its lock is taken over once it is gone
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            RunLock(str(out)).acquire()
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.read(r, 1)
    with pytest.raises(RunDirectoryError, match=f"in use by another twinsparse process \\(pid {pid} on "):
        _run(_exp(out), out, resume=True)
    assert _files(out) == before
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with pytest.warns(RuntimeWarning, match=f"took over the stale lock of {out} \\(pid {pid} "):
        _run(_exp(out), out, resume=True)
    assert not (out / LOCK_NAME).exists()


def test_two_runs_racing_for_one_folder_never_share_a_log(tmp_path):
    """Two processes start the same fresh run in one folder: exactly one trains; the other fails
    with the lock error or, if it came second, the 'already exists' error; the log is one run's."""
    out = tmp_path / "o"
    pids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _run(_exp(out), out)
                code = 0
            except (RunDirectoryError, OSError):
                code = 3
            finally:
                os._exit(code)
        pids.append(pid)
    codes = sorted(os.WEXITSTATUS(os.waitpid(p, 0)[1]) for p in pids)
    assert codes == [0, 3], codes
    lines = (out / "a_seed0.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines[1:]] == [1, 2]  # one header, one record per epoch


def test_stale_temporary_files_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "o"
    _run(_exp(out), out)
    junk = [out / ".a_seed0.ckpt.k3j9x0ab.tmp", out / ".ckpt-abc123", out / ".results.json.zz99aa11.tmp"]
    for j in junk:
        j.write_bytes(b"x" * 1000)
    keep = out / "notes.tmp"
    keep.write_text("mine")
    with pytest.warns(RuntimeWarning, match="removed 3 temporary file"):
        _run(_exp(out), out, resume=True)
    assert not any(j.exists() for j in junk) and keep.read_text() == "mine"


def test_the_lock_file_with_garbage_is_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK_NAME).write_bytes(b"\x00\xffnot json")
    with pytest.warns(RuntimeWarning, match="stale lock .*unreadable"):
        _run(_exp(out), out)
    assert (out / "results.json").exists() and not (out / LOCK_NAME).exists()


def test_nonfinite_checkpoint_is_rejected_at_load(tmp_path):
    path = str(tmp_path / "x.ckpt")
    w = torch.zeros(3)
    w[1] = float("inf")
    ack.save(path, {"config": {}, "model": {"fc.0.weight": w}})
    with pytest.raises(rck.CheckpointError, match=r"holds 1 non-finite value\(s\) .* in entry 'model/fc.0.weight'"):
        ack.load(path)


def test_the_checksum_covers_every_kind_of_tensor_and_older_files_still_load(tmp_path):
    path = str(tmp_path / "x.ckpt")
    payload = {"sparse": torch.randn(3, 3).to_sparse(), "bf16": torch.tensor([0.5, -1.25, 2.0, 3.0], dtype=torch.bfloat16),
               "scalar": torch.tensor(1.5), "empty": torch.zeros(0), "mask": torch.ones(3, dtype=torch.bool),
               "history": [{"epoch": 1, "test_acc": 0.5}], "key": ("state1", "branch2")}
    ack.save(path, payload)
    loaded = ack.load(path)
    assert torch.equal(loaded["bf16"], payload["bf16"]) and loaded["key"] == ("state1", "branch2")
    raw = torch.load(path, weights_only=False)            # the same file with one bf16 value changed
    raw["bf16"][2] += 1
    torch.save(raw, path)
    with pytest.raises(rck.CheckpointError, match="entry 'bf16' does not match"):
        ack.load(path)
    raw["bf16"] = payload["bf16"].clone()               # restored exactly (bf16 +1 -1 may round)
    raw["history"][0]["test_acc"] = 0.75                  # a record, not a tensor
    torch.save(raw, path)
    with pytest.raises(rck.CheckpointError, match="entry 'history' does not match"):
        ack.load(path)
    del raw["checksum"]                                   # written before checksums existed
    torch.save(raw, path)
    with pytest.warns(RuntimeWarning, match="carries no checksum"):
        assert ack.load(path)["history"][0]["test_acc"] == 0.75
