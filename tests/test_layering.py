"""The rules that keep the house in order (docs/architecture.md), read from the source:

* ``reference/`` never imports ``accel/`` or ``conformance/`` (the NumPy ground floor stands alone);
* ``accel/`` takes no private name from ``reference/`` (what it shares is public there);
* the two ``ops`` namespaces offer the same names, and each is a registered twin or a named
  shape / copy helper;
* no file points a reader at notes that are not in this repository;
* the code imports its parts as ``twinsparse.*`` and the install lists every package folder.
"""
import ast
import importlib

import pytest
import inspect
from pathlib import Path

import twinsparse.accel.ops as AO
import twinsparse.reference.ops as RO
from twinsparse.conformance.registry import load_all

ROOT = Path(__file__).resolve().parents[1]
TRIVIAL_OPS = {"sizes": "reads shapes", "random_scores_like": "copies NumPy's stream to the device",
               "from_numpy_like": "copies NumPy arrays to the device"}


def _local(module: str) -> str:
    """``twinsparse.accel.x`` -> ``accel.x``: the folder a module lives in, however it is imported."""
    return module[len("twinsparse."):] if module.startswith("twinsparse.") else module


def _imports(path: Path):
    """(module, names) of every import in ``path``, and the strings given to import_module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield _local(a.name), []
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            yield _local(mod), [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield _local(arg.value), []
                else:
                    yield "<computed import_module>", []


def test_reference_imports_neither_accel_nor_conformance():
    bad = []
    for path in sorted((ROOT / "reference").rglob("*.py")):
        for mod, _ in _imports(path):
            top = mod.split(".")[0]
            if top in ("accel", "conformance", "torch", "cupy") or mod == "<computed import_module>":
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, bad


def test_accel_takes_no_private_name_from_reference():
    bad = []
    for path in sorted((ROOT / "accel").rglob("*.py")):
        for mod, names in _imports(path):
            if mod.split(".")[0] == "reference":
                bad += [f"{path.relative_to(ROOT)}: {mod}.{n}" for n in names if n.startswith("_")]
    assert not bad, bad


def test_the_two_ops_namespaces_agree_and_are_twins():
    def public(mod):
        return {n for n, v in vars(mod).items() if not n.startswith("_") and callable(v)
                and not inspect.isclass(v) and n != "annotations"}
    assert public(AO) == public(RO), (sorted(public(AO) - public(RO)), sorted(public(RO) - public(AO)))
    registered = {e.name.split("[")[0].rsplit(".", 1)[-1] for e in load_all().values()}
    missing = sorted(n for n in public(AO) if n not in registered and n not in TRIVIAL_OPS)
    assert not missing, f"ops without a conformance entry: {missing}"


def test_no_file_cites_notes_outside_the_repository():
    bad = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if (not path.is_file() or rel.parts[0] in (".git", "experiments") and "results" in rel.parts
                or path.suffix not in (".py", ".md", ".cu", ".cuh", ".toml", ".h", ".cpp", ".sh")
                or "test_layering.py" in path.name):
            continue
        text = path.read_text(errors="ignore")
        for needle in ("SPEC.md", "DESIGN.md", "SPEC §", "../shared"):
            if needle in text:
                bad.append(f"{rel}: {needle}")
    assert not bad, bad


def test_the_backends_come_from_one_place():
    """The procedures take the engine they are given; accel.backends is the only chooser."""
    backends = importlib.import_module("twinsparse.accel.backends")
    from twinsparse.reference.config import RunConfig
    from twinsparse.reference.data import split_mnist5k
    split = split_mnist5k(test_per_class=2, holdout_per_class=0, seed=0)
    assert type(backends.backend_for(RunConfig(backend="reference").validate(), split)).__name__ == "ReferenceEngine"
    assert type(backends.backend_for(RunConfig(backend="accel").validate(), split)).__name__ == "AccelEngine"


def test_every_import_of_our_parts_goes_through_twinsparse():
    """A bare ``import accel`` works in a checkout but not in an install, where only ``twinsparse``
    is a top-level package."""
    bad = []
    for folder in ("reference", "accel", "conformance", "tests", "experiments", "twinsparse"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                        if n.split(".")[0] in ("reference", "accel", "conformance")]
    assert not bad, bad


def test_the_install_lists_every_package_folder():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(setup["packages"]), setup["package-dir"]
    found = {"twinsparse"}
    for part in ("reference", "accel", "conformance"):
        assert dirs[f"twinsparse.{part}"] == part
        found |= {"twinsparse." + ".".join(p.parent.relative_to(ROOT).parts)
                  for p in (ROOT / part).rglob("__init__.py")}
    assert listed == found, (sorted(found - listed), sorted(listed - found))


def test_importing_the_reference_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, twinsparse.reference.ops, twinsparse.reference.train; "
            "print(sorted(m for m in ('torch', 'twinsparse.accel') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_the_top_level_name_gives_the_public_api():
    import twinsparse
    from twinsparse.accel.sparsifier import Sparsifier
    assert twinsparse.Sparsifier is Sparsifier
    assert {"Sparsifier", "densities", "methods", "models", "CrAM"} <= set(dir(twinsparse))
    with pytest.raises(AttributeError, match="public API"):
        twinsparse.not_a_thing
