"""The twinsparse command line, end to end on tiny runs."""
import json
import pytest

from twinsparse.accel.cli import main


def test_train_writes_log_table_and_plot(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--method", "static", "--density", "0.1", "--epochs", "1", "--hidden", "32",
               "--train-budget", "200", "--output", str(out), "--no-progress", "--seed", "1"])
    assert rc == 0
    assert (out / "results.md").exists() and (out / "curves.png").stat().st_size > 1000
    lines = (out / "run_seed1.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["config"]["density"] == 0.1
    rec = json.loads(lines[1])
    assert rec["epoch"] == 1 and 0.0 <= rec["test_acc"] <= 1.0 and abs(rec["density"] - 0.1) < 0.01
    assert "test acc" in capsys.readouterr().out


def test_run_both_backends(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[experiment]\nname="t"\nseeds=[0]\n[defaults]\nepochs=1\nhidden=[16]\ntrain_budget=100\n'
                   '[[run]]\nlabel="d"\nmethod="dense"\n[[run]]\nlabel="s"\nmethod="static"\ndensity=0.2\n')
    for backend in ("accel", "reference"):
        out = tmp_path / backend
        assert main(["run", str(cfg), "--backend", backend, "--output", str(out), "--no-progress"]) == 0
        rows = json.loads((out / "results.json").read_text())["rows"]
        assert [r["label"] for r in rows] == ["d", "s"]
    a = json.loads((tmp_path / "accel" / "results.json").read_text())["rows"]
    r = json.loads((tmp_path / "reference" / "results.json").read_text())["rows"]
    assert a[1]["density"] == r[1]["density"]


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[experiment]\nname="t"\n[[run]]\nlabel="s"\nmethod="static"\ndensity=2.0\n')
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "density=2.0" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


def test_bad_flag_values_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--method", "nope"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["train", "--method", "static", "--density", "1.5", "--no-progress"]) == 2
    assert "density=1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--backend", "jax"])


@pytest.mark.parametrize("method,extra", [("set", []), ("rigl", ["--fraction-schedule", "linear"]),
                                          ("snfs", ["--redistribute"]), ("granet", ["--init-density", "0.4"]),
                                          ("dst_ee", ["--c", "1e-3", "--eps", "0.5", "--counter-init", "zeros"])])
def test_every_dst_method_trains_from_the_cli_on_both_backends(tmp_path, method, extra):
    rows = {}
    for backend in ("accel", "reference"):
        out = tmp_path / backend
        argv = ["train", "--method", method, "--density", "0.1", "--epochs", "2", "--hidden", "24",
                "--train-budget", "200", "--batch-size", "32", "--delta-t", "2", "--backend", backend, "--dtype", "float64",
                "--output", str(out), "--no-progress", *extra]
        assert main(argv) == 0
        lines = [json.loads(x) for x in (out / "run_seed0.jsonl").read_text().splitlines()]
        updates = [x["mask_update"] for x in lines if "mask_update" in x]
        assert len(updates) >= 3
        rows[backend] = (updates, json.loads((out / "results.json").read_text())["rows"][0])
    acc_updates, ref_updates = rows["accel"][0], rows["reference"][0]  # same updates, same statistics
    assert len(acc_updates) == len(ref_updates)
    for a, r in zip(acc_updates, ref_updates):
        assert a.keys() == r.keys()
        for k in a:
            assert a[k] == pytest.approx(r[k]), (k, a, r)
    assert rows["accel"][1]["test_acc"][0] == pytest.approx(rows["reference"][1]["test_acc"][0])


def test_dry_run_prints_layers_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--method", "rigl", "--density", "0.1", "--exclude", "first", "--dry-run",
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fc.1.weight" in text and "fc.0.weight" not in text.split("sparsity", 1)[1]
    assert "total (prunable set)" in text and not out.exists()
    assert main(["run", "experiments/quickstart.toml", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("total (prunable set)") == 3
