"""TOML experiment configs and run validation: every bad key or value names itself."""
import pytest

from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.experiment_file import load_experiment, parse_experiment

GOOD = """
[experiment]
name = "x"
seeds = [0, 1]
[defaults]
epochs = 2
[[run]]
label = "dense"
method = "dense"
[[run]]
label = "s"
method = "static"
density = 0.1
"""


def test_quickstart_config_parses_and_expands():
    exp = load_experiment("experiments/quickstart.toml")
    assert [r.label for r in exp.runs] == ["dense", "static-erk-d0.1", "static-erk-d0.02"]
    assert exp.seeds == [0, 1, 2]
    assert len(exp.expand()) == 9
    assert {r.density for r in exp.runs} == {1.0, 0.1, 0.02}


def test_good_config():
    exp = parse_experiment(GOOD)
    cfgs = exp.expand()
    assert [(c.label, c.seed, c.epochs) for c in cfgs] == [("dense", 0, 2), ("dense", 1, 2), ("s", 0, 2), ("s", 1, 2)]


@pytest.mark.parametrize("text,needle", [
    (GOOD.replace("epochs = 2", "epoch = 2"), "unknown key 'epoch'"),
    (GOOD.replace("density = 0.1", "densty = 0.1"), "unknown key 'densty'"),
    (GOOD.replace("density = 0.1", "density = 1.5"), "density=1.5"),
    (GOOD.replace("density = 0.1", "density = -0.1"), "density=-0.1"),
    (GOOD.replace('method = "static"', 'method = "rigl-ish"'), "method='rigl-ish'"),
    (GOOD.replace('label = "s"', 'label = "s"\ndistribution = "erk2"'), "distribution='erk2'"),
    (GOOD.replace("epochs = 2", 'epochs = "2"'), "epochs='2'"),
    (GOOD.replace("epochs = 2", "epochs = 0"), "epochs=0"),
    (GOOD.replace("seeds = [0, 1]", "seeds = [0, 0]"), "repeats"),
    (GOOD.replace("seeds = [0, 1]", "seeds = []"), "seeds"),
    (GOOD.replace('label = "s"', 'label = "dense"'), "label 'dense'"),
    (GOOD.replace("[defaults]", "[defualts]"), "defualts"),
    (GOOD + "\n[[run]]\nlabel = 'z'\nseed = 3\n", "seed"),
    (GOOD.replace("[[run]]\nlabel = \"dense\"\nmethod = \"dense\"", "[[run]]\nlabel = \"dense\"\nmethod = \"dense\"\ndensity = 0.5"), "dense"),
    ("[experiment\nname='x'", "not valid TOML"),
    ("[experiment]\nname='x'", "at least one [[run]]"),
    (GOOD.replace("epochs = 2", "lr = -1.0"), "lr=-1.0"),
    (GOOD.replace("epochs = 2", "batchnorm = 1"), "batchnorm=1"),
    (GOOD.replace("epochs = 2", 'backend = "reference"\nmodel = "cnn"'), "model='mlp' only"),
])
def test_bad_configs_name_the_problem(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_experiment(text)
    assert needle in str(e.value)


def test_run_config_validation():
    RunConfig(method="static", density=0.5).validate()
    with pytest.raises(ConfigError, match="needs density < 1"):
        RunConfig(method="static", density=1.0).validate()
    with pytest.raises(ConfigError, match="hidden"):
        RunConfig(hidden=[0]).validate()
    with pytest.raises(ConfigError, match="nesterov"):
        RunConfig(nesterov=True, momentum=0.0).validate()


# ------------------------------------------------------------------ each option written once
def test_method_options_take_the_method_classes_defaults_and_reach_them():
    """A run field declared as a method's option has the class's default and is handed to it."""
    from dataclasses import fields as dc_fields

    from twinsparse.reference.config import RunConfig, method_options
    from twinsparse.reference.methods import DSTEE, GMP, SNFS, SupTickets, from_run_config
    owned = {f.name: f.metadata["option_of"] for f in dc_fields(RunConfig) if "option_of" in f.metadata}
    assert {cls for cls, _ in owned.values()} == {DSTEE, GMP, SNFS, SupTickets}
    defaults = RunConfig()
    for name, (cls, attr) in owned.items():
        assert getattr(defaults, name) == {f.name: f.default for f in dc_fields(cls)}[attr], name
    cfg = RunConfig(method="dst_ee", density=0.1, c=0.02, eps=2.0, counter_init="zeros", exploration_form="text",
                    suptickets=True, st_beta=0.5, st_averaging="cima", st_bn_avg="var").validate()
    m = from_run_config(cfg, total_steps=400, steps_per_epoch=20)
    assert isinstance(m, SupTickets) and (m.beta, m.averaging, m.bn_avg) == (0.5, "cima", "var")
    assert (m.base.c, m.base.eps, m.base.counter_init, m.base.form) == (0.02, 2.0, "zeros", "text")
    assert method_options(cfg, SNFS) == {"momentum": cfg.snfs_momentum, "redistribute": cfg.redistribute}


def test_every_closed_string_field_declares_its_choices_and_validate_checks_them():
    from dataclasses import fields as dc_fields

    from twinsparse.reference.config import ConfigError, RunConfig
    free_text = {"label", "data_root"}
    for f in dc_fields(RunConfig):
        if f.type in ("str", "Optional[str]") and f.name not in free_text:
            assert f.metadata.get("choices"), f"{f.name} has no choices on its field"
            with pytest.raises(ConfigError, match=f"{f.name}='not-a-choice' is not allowed; choose one of"):
                RunConfig(**{f.name: "not-a-choice"}).validate()


def test_no_tuple_of_choices_is_written_twice_in_the_library():
    import ast
    from collections import defaultdict
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    seen = defaultdict(list)
    for p in sorted([*(root / "reference").rglob("*.py"), *(root / "accel").rglob("*.py")]):
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) and len(node.value.elts) >= 2
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)):
                seen[frozenset(e.value for e in node.value.elts)].append(f"{p.relative_to(root)}:{node.lineno}")
    repeated = {tuple(sorted(k)): v for k, v in seen.items() if len(v) > 1}
    assert not repeated, repeated
