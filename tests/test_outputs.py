"""Outputs people read: events in time order (mask updates and logged steps between the epoch
records), CSV files always, TensorBoard scalars when tensorboard is installed, a resumed run's
outputs equal to the uninterrupted run's, and plots with a distinct style per run, the legend
outside and density curves averaged over seeds."""
import csv
import json

import pytest

import twinsparse.accel.events as EV
import twinsparse.accel.runner as R
from twinsparse.accel.rundir import canonical
from twinsparse.reference.config import RunConfig
from twinsparse.reference.experiment_file import ExperimentConfig

BASE = dict(hidden=[16], epochs=3, batch_size=50, train_budget=200, method="rigl", density=0.2, delta_t=3,
            log_every=2, t_end_fraction=1.0)


def _exp(**kw):
    return ExperimentConfig(name="t", output="unused", seeds=[0], runs=[RunConfig(**{**BASE, **kw}).validate()])


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _due(cfg):
    """The iterations at which the method updates its masks (4 iterations per epoch)."""
    from twinsparse.reference.methods import from_run_config
    m = from_run_config(cfg, 12, 4)
    return [t for t in range(1, 13) if m.due(t)]


def _time(rec):
    if "mask_update" in rec:
        return rec["mask_update"]["t"]
    if "train_step" in rec:
        return rec["train_step"]["t"]
    return rec["step"]


@pytest.mark.parametrize("backend", ["accel", "reference"])
def test_events_are_written_in_time_order_with_csv_files(tmp_path, backend):
    out = tmp_path / "o"
    R.run_experiment(_exp(backend=backend), output=str(out), progress=False)
    recs = _lines(out / "run_seed0.jsonl")[1:]
    kinds = ["u" if "mask_update" in r else "s" if "train_step" in r else "e" for r in recs]
    due = _due(_exp().runs[0])
    assert kinds.count("e") == 3 and kinds.count("s") == 12 // 2 and kinds.count("u") == len(due) >= 3
    times = [_time(r) for r in recs]
    assert times == sorted(times), "records out of time order"
    assert kinds[:4] == ["s", "u", "s", "e"]          # t = 2, 3, 4, then epoch 1 (t = 4)
    epochs = list(csv.DictReader(open(out / "run_seed0.csv")))
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    logged = [r for r in recs if "epoch" in r and "step" in r]
    assert [float(r["test_acc"]) for r in epochs] == [r["test_acc"] for r in logged]
    assert "layer_density/fc.0.weight" in epochs[0]
    steps = list(csv.DictReader(open(out / "run_seed0.steps.csv")))
    assert [int(r["t"]) for r in steps] == [2, 4, 6, 8, 10, 12]
    assert [float(r["loss"]) for r in steps] == [r["train_step"]["loss"] for r in recs if "train_step" in r]
    updates = list(csv.DictReader(open(out / "run_seed0.updates.csv")))
    assert [int(r["t"]) for r in updates] == due


def test_a_resumed_run_writes_the_uninterrupted_runs_log_and_csv(tmp_path):
    full = tmp_path / "full"
    R.run_experiment(_exp(), output=str(full), progress=False)

    class Stop(Exception):
        pass
    real = R.RunLog.write

    def write(self, *recs):
        real(self, *recs)
        if any(r.get("epoch") == 2 for r in recs):
            raise Stop
    cut = tmp_path / "cut"
    R.RunLog.write = write
    try:
        with pytest.raises(Stop):
            R.run_experiment(_exp(), output=str(cut), progress=False, checkpoint=True)
    finally:
        R.RunLog.write = real
    R.run_experiment(_exp(), output=str(cut), progress=False, checkpoint=True, resume=True)
    a, b = _lines(full / "run_seed0.jsonl"), _lines(cut / "run_seed0.jsonl")
    assert [canonical(r) for r in a] == [canonical(r) for r in b]
    for name in ("run_seed0.steps.csv", "run_seed0.updates.csv"):
        assert (full / name).read_text() == (cut / name).read_text()
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]  # noqa: E731
    assert drop_time(csv.DictReader(open(full / "run_seed0.csv"))) == \
        drop_time(csv.DictReader(open(cut / "run_seed0.csv")))


def test_a_fresh_run_refuses_an_earlier_runs_csv(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run_seed0.csv").write_text("epoch\n1\n")
    with pytest.raises(R.RunDirectoryError, match=r"run_seed0.csv already exists"):
        R.run_experiment(_exp(), output=str(out), progress=False)
    R.run_experiment(_exp(), output=str(out), progress=False, overwrite=True)
    assert len(list(csv.DictReader(open(out / "run_seed0.csv")))) == 3


class FakeWriter:
    made = []

    def __init__(self, logdir):
        self.logdir, self.scalars, self.closed = logdir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_scalars_when_tensorboard_is_installed(tmp_path, monkeypatch):
    FakeWriter.made = []
    monkeypatch.setattr(EV, "_summary_writer", FakeWriter)
    out = tmp_path / "o"
    R.run_experiment(_exp(), output=str(out), progress=False)
    (w,) = FakeWriter.made
    assert w.logdir == str(out / "tensorboard" / "run_seed0") and w.closed
    tags = {t for t, _, _ in w.scalars}
    assert {"epoch/test_acc", "epoch/density", "step/loss", "step/lr", "mask_update/t"} <= tags
    acc = [(s, v) for t, v, s in w.scalars if t == "epoch/test_acc"]
    logged = [r for r in _lines(out / "run_seed0.jsonl") if "test_acc" in r]
    assert acc == [(r["step"], r["test_acc"]) for r in logged]


def test_without_tensorboard_there_is_no_writer():
    try:
        import torch.utils.tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        assert EV._summary_writer("/nonexistent") is None


# ----------------------------------------------------------------------------- plots

def _hist(acc, dens):
    return [{"epoch": i + 1, "test_acc": a, "density": d} for i, (a, d) in enumerate(zip(acc, dens))]


def test_every_run_gets_its_own_style_and_runs_of_a_method_share_a_colour():
    from twinsparse.accel.plots import styles
    methods = ["dense", "static", "set", "rigl", "snfs", "granet", "dst_ee"]
    labels = ["dense"] + [f"{m}-s{s}" for s in (90, 95, 98) for m in methods[1:]]
    st = styles(labels, {lb: lb.split("-")[0] for lb in labels})
    keys = [(v["color"], v["linestyle"], v["marker"]) for v in st.values()]
    assert len(set(keys)) == len(labels) == 19
    for m in methods[1:]:
        assert len({st[f"{m}-s{s}"]["color"] for s in (90, 95, 98)}) == 1
    assert len({st[f"{m}-s90"]["color"] for m in methods[1:]} | {st["dense"]["color"]}) == 7
    many = styles([f"r{i}" for i in range(25)])            # more runs than colours: still all distinct
    assert len({(v["color"], v["linestyle"], v["marker"]) for v in many.values()}) == 25


def test_density_is_averaged_over_seeds_and_the_legend_sits_outside_the_axes():
    from collections import OrderedDict

    import matplotlib.pyplot as plt

    from twinsparse.accel.plots import figure, series
    res = OrderedDict(granet=[_hist([0.1, 0.5], [0.4, 0.1]), _hist([0.3, 0.7], [0.2, 0.1])],
                      dense=[_hist([0.2, 0.6], [1.0, 1.0])])
    s = series(res["granet"])
    assert s["density"] == pytest.approx([0.3, 0.1]) and s["acc"] == pytest.approx([20, 60])
    assert s["acc_lo"] == pytest.approx([10, 50]) and s["acc_hi"] == pytest.approx([30, 70])
    fig = figure(res, "t", {"granet": "granet", "dense": "dense"})
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    (leg,) = fig.legends
    right = max(ax.get_window_extent(r).x1 for ax in fig.axes)
    assert leg.get_window_extent(r).x0 >= right
    for ax in fig.axes:
        assert not leg.get_window_extent(r).overlaps(ax.title.get_window_extent(r))
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([0.3, 0.1])
    plt.close(fig)


def test_twinsparse_plot_redraws_curves_from_the_logs(tmp_path):
    from twinsparse.accel.cli import main
    from twinsparse.accel.plots import results_from_logs
    out = tmp_path / "o"
    R.run_experiment(ExperimentConfig(name="t", output="unused", seeds=[0, 1], runs=[
        RunConfig(**{**BASE, "label": "a"}).validate(), RunConfig(**{**BASE, "label": "b", "method": "set"}).validate()]),
        output=str(out), progress=False)
    (out / "curves.png").unlink()
    assert main(["plot", str(out)]) == 0 and (out / "curves.png").stat().st_size > 1000
    res, groups, name = results_from_logs(str(out))
    assert list(res) == ["a", "b"] and [len(v) for v in res.values()] == [2, 2] and groups == {"a": "rigl", "b": "set"}
