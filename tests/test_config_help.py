"""One source of help: every RunConfig field carries its help text as metadata, shown by
``twinsparse train --help`` and in docs/config.md; keys of a procedure a run does not select are
rejected with the name of their owner."""
import os
import re
from dataclasses import fields

import pytest

from twinsparse.accel.cli import _parser, main
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.config_keys import config_reference, key_owner
from twinsparse.reference.experiment_file import parse_experiment

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "config.md")


def _squash(text: str) -> str:
    return "".join(text.split())            # argparse re-wraps help text


def test_every_train_flag_shows_the_field_help_and_default():
    text = _parser()._subparsers._group_actions[0].choices["train"].format_help()
    flat = _squash(text)
    defaults = RunConfig()
    for f in fields(RunConfig):
        h = f.metadata.get("help", "")
        assert len(h) > 12, f"{f.name} has no real help text"
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"^\s+{re.escape(flag)}\b", text, re.M), f"{flag} is not in `twinsparse train --help`"
        d = getattr(defaults, f.name)
        shown = "unset" if d is None else str(d).lower() if isinstance(d, bool) else str(d)
        assert _squash(f"{h} (default: {shown})") in flat, f.name
    assert "(default X)" not in text


def test_docs_config_md_is_the_generated_reference():
    with open(DOCS, encoding="utf-8") as fh:
        assert fh.read() == config_reference(), "docs/config.md is stale: regenerate it with config_reference()"
    for f in fields(RunConfig):
        assert f"| `{f.name}` |" in config_reference()


def test_keys_of_unselected_procedures_are_rejected_with_their_owner(capsys):
    assert main(["train", "--cram-rho", "0.1", "--dry-run"]) == 2
    assert "--cram-rho 0.1 in the command line belongs to procedure = 'cram'" in capsys.readouterr().err
    assert main(["train", "--d2-states", "3", "--dry-run"]) == 2
    assert "procedure = 'd2sparse'" in capsys.readouterr().err
    assert main(["train", "--procedure", "cram", "--cram-rho", "0.1", "--epochs", "6", "--dry-run"]) == 0
    toml = '[experiment]\nname="t"\n[[run]]\nlabel="a"\nmethod="rigl"\ndensity=0.1\n{extra}\n'
    with pytest.raises(ConfigError, match=r"st_beta=0.5 in \[\[run\]\] #1 \(a\).*suptickets = true"):
        parse_experiment(toml.format(extra="st_beta=0.5"))
    with pytest.raises(ConfigError, match=r"counter_init='zeros'.*method = 'dst_ee'"):
        parse_experiment(toml.format(extra='counter_init="zeros"'))
    ok = parse_experiment('[experiment]\nname="t"\n[defaults]\nc=0.01\ncounter_init="zeros"\n[[run]]\nlabel="a"\n'
                          'method="dst_ee"\ndensity=0.1\n[[run]]\nlabel="b"\nmethod="rigl"\ndensity=0.1\n')
    assert [r.counter_init for r in ok.runs] == ["zeros", "zeros"]     # [defaults]: read by at least one run
    with pytest.raises(ConfigError, match=r"imp_rate=0.3 in \[defaults\].*no run of the experiment selects"):
        parse_experiment('[experiment]\nname="t"\n[defaults]\nimp_rate=0.3\n[[run]]\nlabel="a"\n')
    assert key_owner("synthetic_shape")[0] == "dataset = 'synthetic'" and key_owner("lr") is None


# ------------------------------------------------------------------ sub-tables of a run
SECTIONED = '''[experiment]
name = "t"
[defaults]
density = 0.1
[defaults.method]
name = "dst_ee"
delta_t = 10
c = 0.01
form = "text"
[defaults.suptickets]
beta = 0.5
[defaults.procedure]
states = 2
[[run]]
label = "a"
[[run]]
label = "b"
[run.method]
name = "rigl"
[run.suptickets]
enabled = true
averaging = "cima"
[[run]]
label = "c"
[run.procedure]
name = "d2sparse"
state_epochs = 3
'''
FLAT = '''[experiment]
name = "t"
[defaults]
density = 0.1
method = "dst_ee"
delta_t = 10
c = 0.01
exploration_form = "text"
st_beta = 0.5
[[run]]
label = "a"
[[run]]
label = "b"
method = "rigl"
suptickets = true
st_averaging = "cima"
[[run]]
label = "c"
procedure = "d2sparse"
d2_states = 2
d2_state_epochs = 3
'''


def test_sub_tables_read_into_the_same_runs_as_flat_keys_which_warn():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = parse_experiment(SECTIONED, "s.toml")
    with pytest.warns(FutureWarning, match=r"f.toml: .*exploration_form -> \[defaults.method\] form.*"
                                           r"st_beta -> \[defaults.suptickets\] beta"):
        old = parse_experiment(FLAT, "f.toml")
    assert new.runs == old.runs
    a, b, c = new.runs
    assert (a.method, a.c, a.exploration_form, a.delta_t, a.suptickets) == ("dst_ee", 0.01, "text", 10, False)
    assert (b.method, b.suptickets, b.st_averaging, b.st_beta) == ("rigl", True, "cima", 0.5)
    assert (c.procedure, c.d2_states, c.d2_state_epochs) == ("d2sparse", 2, 3)
    assert a.d2_states == RunConfig().d2_states      # [defaults.procedure] reaches only runs of that procedure


@pytest.mark.parametrize("text, message", [
    ('[[run]]\nlabel="a"\n[run.method]\nname="rigl"\ncc=1\n', r"unknown key 'cc' in \[run.method\] of \[\[run\]\] #1.*allowed: .*'c'"),
    ('[[run]]\nlabel="a"\n[run.methods]\nname="rigl"\n', r"unknown sub-table \[run.methods\].*allowed: \['run.method', 'run.suptickets', 'run.procedure'\]"),
    ('[[run]]\nlabel="a"\ndensity=0.1\n[run.method]\nname="rigl"\nc=0.1\n', r"\[run.method\] c = 0.1 in \[\[run\]\] #1 \(a\).*belongs to method = 'dst_ee'"),
    ('[[run]]\nlabel="a"\n[run.procedure]\nname="imp"\nstates=3\n', r"unknown key 'states' in \[run.procedure\].*\(procedure 'imp'\); allowed: \['iterations', 'name', 'rate', 'rewind_epoch', 'scope'\]"),
    ('[[run]]\nlabel="a"\n[run.procedure]\nrate=0.3\n', r"\[run.procedure\] .* sets \['rate'\], but procedure='train' has no settings of its own"),
    ('[[run]]\nlabel="a"\ndelta_t=5\n[run.method]\nname="rigl"\ndelta_t=6\n', r"delta_t is given twice in \[\[run\]\] #1 of x.toml: as delta_t and as \[run.method\] delta_t"),
    ('[[run]]\nlabel="a"\nmethod="rigl"\n[run.method]\ndelta_t=6\n', r"not valid TOML.*write the method's name inside the sub-table as name"),
    ('[defaults.procedure]\nrate=0.3\n[[run]]\nlabel="a"\n', r"\[defaults.procedure\] of x.toml sets \['rate'\], which no run's procedure \(\['train'\]\) has"),
    ('[defaults.suptickets]\nbeta=0.3\n[[run]]\nlabel="a"\n', r"\[defaults.suptickets\] beta = 0.3 in \[defaults\].*no run of the experiment selects"),
    ('[[run]]\nlabel="a"\n[run.suptickets]\nbeta="x"\n', r"\[run.suptickets\] beta='x' in \[\[run\]\] #1 of x.toml must be a number"),
])
def test_sub_table_mistakes_name_the_key_as_written(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_experiment(text, "x.toml")


def test_committed_configs_use_the_sub_tables():
    import warnings
    from pathlib import Path

    from twinsparse.reference.experiment_file import load_experiment
    root = Path(__file__).resolve().parents[1]
    paths = sorted((root / "experiments").rglob("*.toml"))
    assert len(paths) >= 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in paths:
            load_experiment(str(p))


def test_the_readmes_toml_examples_parse_without_warnings():
    import re
    import warnings
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert blocks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in blocks:
            assert parse_experiment(block, "README.md").runs
