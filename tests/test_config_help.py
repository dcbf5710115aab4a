"""One source of help: every RunConfig field carries its help text as metadata, shown by
``twinsparse train --help`` and in docs/config.md; keys of a procedure a run does not select are
rejected with the name of their owner."""
import os
import re
from dataclasses import fields

import pytest

from twinsparse.accel.cli import _parser, main
from twinsparse.reference.config import ConfigError, RunConfig, config_reference, key_owner, parse_experiment

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
