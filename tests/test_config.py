"""TOML experiment configs and run validation: every bad key or value names itself."""
import pytest

from twinsparse.reference.config import ConfigError, RunConfig, load_experiment, parse_experiment

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
