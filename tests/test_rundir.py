"""The output folder as a transaction, seen from the user's side: where a run writes by default,
that the README's first command works twice in a row next to the committed results, what
--resume / --overwrite do to an existing folder, what a resumed log looks like, and the explicit
way to ask for an empty layer."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from twinsparse.accel import densities as D
from twinsparse.accel.cli import main
from twinsparse.accel.models import MLP
from twinsparse.accel.rundir import RunLog, default_output
from twinsparse.accel.runner import run_experiment
from twinsparse.accel.sparsifier import Sparsifier
from twinsparse.reference.config import RunConfig
from twinsparse.reference.experiment_file import ExperimentConfig, load_experiment
from twinsparse.reference.train import Diverged

TINY = dict(hidden=[8], epochs=2, batch_size=50, train_budget=100, test_per_class=20, method="static", density=0.5)
ARGS = ["--hidden", "8", "--epochs", "1", "--batch-size", "50", "--train-budget", "100", "--test-per-class", "20",
        "--no-progress"]


def _exp(out, **kw):
    return ExperimentConfig(name="t", output=str(out), seeds=[0], runs=[RunConfig(label="a", **{**TINY, **kw}).validate()])


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_every_experiment_config_writes_outside_the_committed_results():
    """The README's first command must never find its own committed results in the way."""
    configs = sorted(Path("experiments").rglob("*.toml"))
    assert len(configs) >= 10
    for path in configs:
        exp = load_experiment(str(path))
        assert exp.output.startswith("runs/"), f"{path}: output {exp.output!r} is not under runs/"


def test_a_run_without_output_goes_to_a_fresh_folder_and_resume_finds_the_latest(tmp_path, capsys):
    committed = tmp_path / "results" / "quick"
    committed.mkdir(parents=True)
    (committed / "results.md").write_text("committed")
    before = _tree(committed)
    exp = _exp(committed)
    run_experiment(exp, progress=False)                  # twice in a row, next to an earlier run's results
    run_experiment(exp, progress=False)
    assert _tree(committed) == before
    assert (tmp_path / "results" / "quick-2" / "results.json").exists()
    assert (tmp_path / "results" / "quick-3" / "results.json").exists()
    assert "holds an earlier run; this one writes to" in capsys.readouterr().err
    assert default_output(str(committed), resume=True) == str(tmp_path / "results" / "quick-3")
    log = tmp_path / "results" / "quick-3" / "a_seed0.jsonl"
    data = log.read_bytes()
    run_experiment(exp, progress=False, resume=True)     # --resume without --output: the most recent folder
    assert log.read_bytes() == data                       # a finished run: nothing appended, nothing cut
    assert not (tmp_path / "results" / "quick-4").exists()


def test_the_cli_trains_twice_in_a_row_with_its_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *ARGS]) == 0
    assert main(["train", *ARGS]) == 0
    assert (tmp_path / "runs" / "train" / "run_seed0.jsonl").exists()
    assert (tmp_path / "runs" / "train-2" / "run_seed0.jsonl").exists()


def test_cli_refuses_an_earlier_run_and_overwrite_replaces_it(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["train", *ARGS, "--output", out, "--checkpoint"]) == 0
    before = _tree(out)
    assert main(["train", *ARGS, "--output", out, "--lr", "0.1"]) == 2
    assert "run_seed0.jsonl already exists" in capsys.readouterr().err and _tree(out) == before
    assert main(["train", *ARGS, "--output", out, "--lr", "0.1", "--overwrite"]) == 0
    header = json.loads(Path(out, "run_seed0.jsonl").read_text().splitlines()[0])
    assert header["config"]["lr"] == 0.1
    assert not Path(out, "run_seed0.ckpt").exists()      # the earlier run's checkpoint went with it


def test_a_resumed_log_keeps_its_records_and_appends(tmp_path):
    out = tmp_path / "o"

    class Stop(Exception):
        pass

    def stop_after_first_epoch(rec):
        if rec.get("epoch") == 1:
            raise Stop
    import twinsparse.accel.runner as R
    real = R.RunLog.write

    def write(self, *recs):
        real(self, *recs)
        for r in recs:
            stop_after_first_epoch(r)
    R.RunLog.write = write
    try:
        with pytest.raises(Stop):
            run_experiment(_exp(out), output=str(out), progress=False, checkpoint=True)
    finally:
        R.RunLog.write = real
    first = (out / "a_seed0.jsonl").read_bytes()
    assert len(first.splitlines()) == 2                  # the header and epoch 1
    run_experiment(_exp(out), output=str(out), progress=False, checkpoint=True, resume=True)
    after = (out / "a_seed0.jsonl").read_bytes()
    assert after.startswith(first)                        # epoch 1 kept byte for byte (its original time too)
    assert [json.loads(x).get("epoch") for x in after.splitlines()[1:]] == [1, 2]


def test_a_resumed_log_that_disagrees_is_kept_beside_the_new_one(tmp_path):
    path = str(tmp_path / "x.jsonl")
    log = RunLog(path)
    log.write({"config": {}}, {"epoch": 1, "acc": 0.5, "epoch_time": 1.0})
    log.close()
    log = RunLog(path, resume=True)
    with pytest.warns(RuntimeWarning, match="differs from the log's .*kept whole as"):
        log.write({"config": {}}, {"epoch": 1, "acc": 0.6, "epoch_time": 2.0})
    log.close()
    kept = [p for p in tmp_path.iterdir() if ".before-resume-" in p.name]
    assert len(kept) == 1 and b'"acc": 0.5' in kept[0].read_bytes()
    assert [json.loads(x) for x in Path(path).read_text().splitlines()] == [
        {"config": {}}, {"epoch": 1, "acc": 0.6, "epoch_time": 2.0}]


def test_a_diverged_run_logs_why_and_how_many_steps_were_skipped(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(Diverged) as err:
        run_experiment(_exp(out, method="dense", density=1.0, nonfinite="skip", lr=1e6), output=str(out),
                       progress=False)
    last = json.loads((out / "a_seed0.jsonl").read_text().splitlines()[-1])
    assert last["diverged"]["skipped_steps"] == err.value.info["skipped_steps"]
    assert last["error"] == str(err.value) and "nonfinite='skip'" in last["error"]
    assert not (out / "results.json").exists()


def test_skipped_iterations_are_reported_as_a_warning(tmp_path, monkeypatch):
    """nonfinite='skip' with some skipped iterations (but no divergence): a warning, and the running
    count is in every epoch record."""
    import twinsparse.accel.train as T
    real = T.build_sparsifier
    state = {"n": 0}

    def build(*a, **kw):
        sp = real(*a, **kw)
        step = sp.step

        def poisoned_step(*sa, **skw):
            state["n"] += 1
            if state["n"] in (2, 3):                      # a NaN gradient in the last iteration of epoch 1, first of 2
                next(iter(sp.params.values())).grad[0, 0] = float("nan")
            return step(*sa, **skw)
        sp.step = poisoned_step
        return sp
    monkeypatch.setattr(T, "build_sparsifier", build)
    out = tmp_path / "o"
    with pytest.warns(RuntimeWarning, match=r"run 'a' \(seed 0\): 2 iteration\(s\) were skipped"):
        run_experiment(_exp(out, nonfinite="skip"), output=str(out), progress=False)
    recs = [json.loads(x) for x in (out / "a_seed0.jsonl").read_text().splitlines()[1:]]
    assert [r["skipped_steps"] for r in recs if "epoch" in r] == [1, 2]


def test_an_empty_layer_is_allowed_only_when_asked_for():
    torch.manual_seed(0)
    model = MLP((12, 8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    spec = D.erk(0.5, overrides={"fc.1.weight": 0.0}, allow_empty=True)
    sp = Sparsifier(model, opt, density=spec, method="static")
    assert int(sp.masks["fc.1.weight"].sum()) == 0 and int(sp.masks["fc.0.weight"].sum()) > 0
    assert D.uniform(0.0, allow_empty=True).density == 0.0
    with pytest.raises(ValueError, match="keeps no weight"):
        D.uniform(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.erk(1e-9, allow_empty=True).resolve({n: p for n, p in sp.params.items()})


def test_a_label_may_hold_the_characters_of_the_committed_experiments():
    for label in ("rigl-s90+sup-cia", "static-erk-d0.02", "dst_ee-c1e-4", "a=1"):
        assert RunConfig(label=label).validate().label == label
