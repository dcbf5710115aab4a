"""An experiment file: a TOML with ``[experiment]`` (name, output folder, seeds), ``[defaults]`` and
one ``[[run]]`` table per run, read into validated ``RunConfig`` objects. Scalar logic, imported by
accel (``twinsparse run``)."""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .config import ConfigError, RunConfig, check_name
from .config_keys import (METHOD_KEYS, SECTIONS, SUPTICKETS_KEYS, check_selected_keys, coerce_run_fields, procedure_keys,
                          section_of)


@dataclass
class ExperimentConfig:
    name: str
    output: str
    seeds: list
    runs: list  # list[RunConfig] (without seed applied)

    def expand(self) -> list:
        """Every (run, seed) pair as a validated RunConfig."""
        return [r.replace(seed=s) for r in self.runs for s in self.seeds]


EXPERIMENT_KEYS = {"name", "output", "seeds"}
TOP_KEYS = {"experiment", "defaults", "run"}


class _Table:
    """One [defaults] or [[run]] table: its own keys and its sub-tables, read into RunConfig fields.

    ``flat``: fields given as keys of the table; ``sections``: section name -> {key: value} as
    written; ``written``: field -> how the user wrote it, for messages ("[run.suptickets] beta")."""

    def __init__(self, raw, where: str, kind: str):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        self.where, self.kind = where, kind
        self.sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
        for name, table in self.sections.items():
            if name not in SECTIONS:
                raise ConfigError(f"unknown sub-table [{kind}.{name}] in {where}; allowed: "
                                  f"{[f'{kind}.{n}' for n in SECTIONS]}")
        self.flat = coerce_run_fields({k: v for k, v in raw.items() if k not in self.sections}, where)
        self.written: dict = {}
        self.fields = dict(self.flat)
        for name, table in (("method", METHOD_KEYS), ("suptickets", SUPTICKETS_KEYS)):
            self.add(*self._place(name, table, self.sections.get(name, {}), strict=True))
        procedure = self.sections.get("procedure", {})
        if "name" in procedure:        # read first: it decides which other keys the sub-table may hold
            self.add(*self._place("procedure", {"name": "procedure"}, {"name": procedure["name"]}, strict=True))

    def _place(self, name: str, table: dict, given: dict, strict: bool, what: str = "") -> tuple[dict, dict]:
        """The fields of sub-table ``name`` (key -> field: ``table``) as (fields, how each was
        written), checked against this table's own fields but not yet added to them. Not ``strict``:
        keys ``table`` does not know are skipped instead of rejected."""
        placed, written = {}, {}
        for key, value in given.items():
            if key not in table:
                if not strict:
                    continue
                raise ConfigError(f"unknown key {key!r} in [{self.kind}.{name}] of {self.where}{what}; allowed: "
                                  f"{sorted(table)}")
            field_name, shown = table[key], f"[{self.kind}.{name}] {key}"
            if field_name in self.fields:
                raise ConfigError(f"{field_name} is given twice in {self.where}: as {self.written.get(field_name, field_name)}"
                                  f" and as {shown}; keep one")
            placed.update(coerce_run_fields({field_name: value}, f"{self.where}", {field_name: shown}))
            written[field_name] = shown
        return placed, written

    def add(self, placed: dict, written: dict) -> None:
        self.fields.update(placed)
        self.written.update(written)

    def procedure_fields(self, procedure: str, strict: bool) -> tuple[dict, dict]:
        """The [procedure] sub-table's keys (its name already read) as the fields of ``procedure``:
        a run's own sub-table strictly, [defaults.procedure] for each run with the keys its
        procedure has."""
        given = {k: v for k, v in self.sections.get("procedure", {}).items() if k != "name"}
        if given and strict and set(procedure_keys(procedure)) == {"name"}:
            raise ConfigError(f"[{self.kind}.procedure] in {self.where} sets {sorted(given)}, but procedure="
                              f"{procedure!r} has no settings of its own; select a multi-phase procedure or remove it")
        return self._place("procedure", procedure_keys(procedure), given, strict, f" (procedure {procedure!r})")

    def shown(self, key, value) -> str:
        return f"{self.written[key]} = {value!r}" if key in self.written else f"{key}={value!r}"


def _warn_flat_section_keys(tables, source: str) -> None:
    """A key of the method / Sup-tickets / a procedure written in the run table itself (the layout of
    earlier releases) still works, with one warning per file saying where it goes now."""
    moved = sorted({f"{k} -> [{t.kind}.{section_of(k)[0]}] {section_of(k)[1]}" for t in tables for k in t.flat
                    if section_of(k) is not None})
    if moved:
        warnings.warn(f"{source}: keys of the method, Sup-tickets or the procedure written in the run table "
                      f"itself; write them in the sub-tables instead (flat keys in files will stop working in "
                      f"0.2): {', '.join(moved)}", FutureWarning, stacklevel=3)


def parse_experiment(text: str, source: str = "<config>") -> ExperimentConfig:
    """Parse and validate an experiment TOML: [experiment], [defaults] and one or more [[run]] tables,
    each with optional [run.method], [run.suptickets] and [run.procedure] sub-tables."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        hint = (" (a table cannot hold both a key such as method = \"rigl\" and a [run.method] sub-table: write "
                "the method's name inside the sub-table as name = \"rigl\"; the same for procedure and suptickets "
                "(enabled = true))" if "overwrite" in str(e) else "")
        raise ConfigError(f"{source} is not valid TOML: {e}{hint}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)} in {source}; allowed: {sorted(TOP_KEYS)}")
    exp = data.get("experiment", {})
    if not isinstance(exp, dict):
        raise ConfigError(f"[experiment] in {source} must be a table")
    bad = set(exp) - EXPERIMENT_KEYS
    if bad:
        raise ConfigError(f"unknown key(s) {sorted(bad)} in [experiment] of {source}; allowed: {sorted(EXPERIMENT_KEYS)}")
    name = check_name("name", exp.get("name", "experiment"), f" in [experiment] of {source}")
    seeds = exp.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"seeds={seeds!r} in [experiment] of {source} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds!r} in {source} repeats a seed")
    defaults = _Table(data.get("defaults", {}), f"[defaults] of {source}", "defaults")
    runs_raw = data.get("run", [])
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ConfigError(f"{source} needs at least one [[run]] table")
    runs, labels, tables, default_procedure_keys_used = [], set(), [defaults], set()
    default_procedure = defaults.sections.get("procedure", {})
    for i, r in enumerate(runs_raw):
        own = _Table(r, f"[[run]] #{i + 1} of {source}", "run")
        procedure = own.fields.get("procedure", defaults.fields.get("procedure", "train"))
        own.add(*own.procedure_fields(procedure, strict=True))
        shared, _ = defaults.procedure_fields(procedure, strict=False)       # [defaults.procedure] for this run
        default_procedure_keys_used |= set(default_procedure) & set(procedure_keys(procedure))
        fields_ = {**defaults.fields, **shared, **own.fields}
        if "seed" in fields_:
            raise ConfigError(f"'seed' in {source}: set seeds in [experiment] seeds = [...]")
        try:
            rc = RunConfig(**fields_).validate()
        except ConfigError as e:
            raise ConfigError(f"[[run]] #{i + 1} ({fields_.get('label', 'run')}) of {source}: {e}") from None
        check_selected_keys(own.fields, rc, f"[[run]] #{i + 1} ({rc.label}) of {source}", shown=own.shown)
        if rc.label in labels:
            raise ConfigError(f"label {rc.label!r} is used by two [[run]] tables in {source}")
        labels.add(rc.label)
        runs.append(rc)
        tables.append(own)
    unused = sorted(set(default_procedure) - default_procedure_keys_used - {"name"})
    if unused:
        procs = sorted({r.procedure for r in runs})
        raise ConfigError(f"[defaults.procedure] of {source} sets {unused}, which no run's procedure ({procs}) has")
    check_selected_keys(defaults.fields, runs, f"[defaults] of {source}", any_run=True, shown=defaults.shown)
    _warn_flat_section_keys(tables, source)
    output = exp.get("output", f"runs/{name}")
    if not isinstance(output, str):
        raise ConfigError(f"output={output!r} in [experiment] of {source} must be a string path")
    return ExperimentConfig(name=name, output=output, seeds=seeds, runs=runs)


def load_experiment(path: str) -> ExperimentConfig:
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a TOML text file: byte {e.start} ({data[e.start:e.start + 1]!r}) is not "
                          f"UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"{path} is not a TOML text file: it contains NUL bytes (a binary file?)")
    return parse_experiment(text, source=str(path))
