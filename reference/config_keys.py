"""The keys of a run configuration as a user writes them: which method / procedure / dataset owns a
key, the help text of every key (the CLI's ``--help`` and docs/config.md), and the type checks of
keys read from TOML, the command line or a checkpoint. Scalar logic, imported by accel."""
from __future__ import annotations

from dataclasses import fields

from .config import BOOL_KEYS, FLOAT_KEYS, INT_KEYS, LIST_KEYS, RUN_KEYS, ConfigError, RunConfig


# ----------------------------------------------------------------------------- keys of a selection
# Keys that only a selected method / procedure / dataset reads, and what selects them. A key given
# for a run that does not select its owner is an error (it would be silently ignored).
OWNERS = (  # (key prefix or exact key, owner as the user selects it, test on the RunConfig)
    ("acdc_", "method = 'acdc'", lambda c: c.method == "acdc"),
    ("st_", "suptickets = true", lambda c: c.suptickets),
    ("d2_", "procedure = 'd2sparse', 'd2_baseline' or 'd2_baseline_lb'", lambda c: c.procedure.startswith("d2")),
    ("imp_", "procedure = 'imp'", lambda c: c.procedure == "imp"),
    ("cram_", "procedure = 'cram'", lambda c: c.procedure == "cram"),
    ("cocktail_", "procedure = 'cocktail'", lambda c: c.procedure == "cocktail"),
    ("synthetic_", "dataset = 'synthetic'", lambda c: c.dataset == "synthetic"),
    ("image_size", "dataset = 'imagefolder'", lambda c: c.dataset == "imagefolder"),
    ("snfs_momentum", "method = 'snfs'", lambda c: c.method == "snfs"),
    ("redistribute", "method = 'snfs'", lambda c: c.method == "snfs"),
    ("gmp_scope", "method = 'gmp'", lambda c: c.method == "gmp"),
    ("init_density", "method = 'granet'", lambda c: c.method == "granet"),
    ("counter_init", "method = 'dst_ee'", lambda c: c.method == "dst_ee"),
    ("c", "method = 'dst_ee'", lambda c: c.method == "dst_ee"),
    ("eps", "method = 'dst_ee'", lambda c: c.method == "dst_ee"),
    ("exploration_form", "method = 'dst_ee'", lambda c: c.method == "dst_ee"),
    ("ee_exploitation_degree", "method = 'dst_ee'", lambda c: c.method == "dst_ee"),
)


def key_owner(key: str):
    """(owner text, test) of a key that belongs to one method / procedure / dataset, else None."""
    for prefix, owner, test in OWNERS:
        if key == prefix or (prefix.endswith("_") and key.startswith(prefix)):
            return owner, test
    return None


def check_selected_keys(given, runs, where: str, any_run: bool = False, shown=None) -> None:
    """Every key in ``given`` that belongs to a method / procedure / dataset must be read by the run
    (``runs``: one RunConfig, or with ``any_run`` by at least one of several, for [defaults]).
    ``shown(key, value)`` writes the key as the user gave it (default ``key=value``)."""
    shown = shown or (lambda k, v: f"{k}={v!r}")
    runs = runs if isinstance(runs, (list, tuple)) else [runs]
    for key in given:
        found = key_owner(key)
        if found is None:
            continue
        owner, test = found
        if not any(test(r) for r in runs):
            whose = "no run of the experiment selects" if any_run else "this run does not select"
            raise ConfigError(f"{shown(key, given[key])} in {where} belongs to {owner}, which {whose}; remove it or "
                              f"select {owner}")


def field_help(name: str) -> str:
    """The help text of a RunConfig field (its metadata: the one source of the CLI and the docs)."""
    return RUN_KEYS[name].metadata["help"]


def config_reference() -> str:
    """docs/config.md: every run field with its type, default and help, grouped as RunConfig is."""
    lines = ["# Run configuration", "",
             "Every key of a `[[run]]` / `[defaults]` table and every `twinsparse train --flag` (underscores become "
             "dashes). Generated from the field metadata of `reference.config.RunConfig` by "
             "`reference.config_keys.config_reference()`; a test keeps this file equal to it.", "",
             "Keys of a method, procedure or dataset that a run does not select are an error.", "",
             "In an experiment file the keys of the sparse method, of Sup-tickets and of a multi-phase procedure "
             "go in the run's sub-tables `[run.method]`, `[run.suptickets]` and `[run.procedure]` (or "
             "`[defaults.method]`, ...), under the name in the column *in a file*; the others sit in the "
             "`[[run]]` / `[defaults]` table itself. The flat key (first column) is what `twinsparse train` takes "
             "as `--flag`; in a file it still works in this release, with a warning.", "",
             "| key | in a file | default | belongs to | meaning |", "|---|---|---|---|---|"]
    defaults = RunConfig()
    for f in fields(RunConfig):
        owner = key_owner(f.name)
        default = getattr(defaults, f.name)
        shown = "unset" if default is None else json_default(default)
        sec = section_of(f.name)
        where = f"`[{sec[0]}] {sec[1]}`" if sec else ""
        lines.append(f"| `{f.name}` | {where} | {shown} | {owner[0].replace('|', '/') if owner else ''} | "
                     f"{f.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def json_default(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'`"{v}"`'
    return f"`{v}`"


def coerce_run_fields(d: dict, where: str, written=None) -> dict:
    """Type-check a dict of run fields from TOML or the CLI; unknown keys are errors. ``written``
    maps a field to the name the user wrote it under (a section's own key), for the messages."""
    out = {}
    for key, value in d.items():
        if key not in RUN_KEYS:
            raise ConfigError(f"unknown key {key!r} in {where}; allowed keys: {sorted(RUN_KEYS)}")
        out[key] = _coerce(key, value, where, (written or {}).get(key, key))
    return out


def _coerce(key: str, value, where: str, name: str):
    """One value of field ``key`` (written ``name`` by the user), type-checked and ints widened to float."""
    if value is None and RUN_KEYS[key].default is None:   # an optional key left unset (its default)
        return value
    if key in FLOAT_KEYS and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key in BOOL_KEYS and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} in {where} must be true or false")
    if key in FLOAT_KEYS and not isinstance(value, float):
        raise ConfigError(f"{name}={value!r} in {where} must be a number")
    if key in INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} in {where} must be an integer")
    if key in LIST_KEYS and not isinstance(value, list):
        raise ConfigError(f"{name}={value!r} in {where} must be a list")
    if key not in FLOAT_KEYS | BOOL_KEYS | INT_KEYS | LIST_KEYS and not isinstance(value, str):
        raise ConfigError(f"{name}={value!r} in {where} must be a string")
    return value


# ----------------------------------------------------------------------------- sections of a run table
# In an experiment file a run's keys are grouped by what they configure: the loop's keys sit in the
# [[run]] / [defaults] table itself; the sparse method's in its [run.method] sub-table (name = the
# method, then the option names of the method class: c, eps, form, ...); Sup-tickets' in
# [run.suptickets] (enabled = true, then its options); a multi-phase procedure's in [run.procedure]
# (name = the procedure, then its keys without their prefix).
SECTIONS = ("method", "suptickets", "procedure")
PROCEDURE_PREFIXES = {"d2sparse": "d2_", "d2_baseline": "d2_", "d2_baseline_lb": "d2_", "imp": "imp_",
                      "cram": "cram_", "cocktail": "cocktail_"}
_METHOD_LOOP_KEYS = {"name": "method", "delta_t": "delta_t", "drop_fraction": "drop_fraction", "fraction_schedule": "fraction_schedule",
                     "t_start": "t_start", "t_end_fraction": "t_end_fraction", "step_on_update": "step_on_update",
                     "init": "mask_init", "init_density": "init_density", "prune_end_fraction": "prune_end_fraction",
                     "exploitation_degree": "ee_exploitation_degree"}


def _method_keys() -> dict:
    """[method] key -> RunConfig field: the drop-and-grow / pruning schedule, every field declared as a
    method class's option (under the class's own name) and AC/DC's acdc_* fields without the prefix."""
    from .methods import SupTickets
    keys = dict(_METHOD_LOOP_KEYS)
    for f in fields(RunConfig):
        cls, attr = f.metadata.get("option_of", (None, None))
        new = {attr: f.name} if cls is not None and cls is not SupTickets else \
            {f.name[len("acdc_"):]: f.name} if f.name.startswith("acdc_") else {}
        clash = set(new) & set(keys)
        assert not clash, f"two fields would be [method] {clash}"
        keys.update(new)
    return keys


METHOD_KEYS = _method_keys()
SUPTICKETS_KEYS = {"enabled": "suptickets",
                   **{f.name[len("st_"):]: f.name for f in fields(RunConfig) if f.name.startswith("st_")}}


def procedure_keys(procedure: str) -> dict:
    """[procedure] key -> RunConfig field for ``procedure`` (only ``name`` for 'train' and 'acdc')."""
    prefix = PROCEDURE_PREFIXES.get(procedure)
    own = {} if prefix is None else {f.name[len(prefix):]: f.name for f in fields(RunConfig) if f.name.startswith(prefix)}
    return {"name": "procedure", **own}


_SECTION_OF = {field_name: (section, key) for section, table in
               [("method", METHOD_KEYS), ("suptickets", SUPTICKETS_KEYS),
                *(("procedure", procedure_keys(p)) for p in PROCEDURE_PREFIXES)]
               for key, field_name in table.items()}


def section_of(name: str):
    """(section, key) a RunConfig field is written under in an experiment file, or None for a key of
    the run table itself."""
    return _SECTION_OF.get(name)
