"""The rules that keep the house in order (docs/architecture.md), read from the source:

* ``reference/`` never imports ``accel/`` or ``conformance/`` (the NumPy ground floor stands alone);
* ``accel/`` takes no private name from ``reference/`` (what it shares is public there);
* the two ``ops`` namespaces offer the same names, and each is a registered twin or a named
  shape / copy helper;
* no file points a reader at notes that are not in this repository.
"""
import ast
import importlib
import inspect
from pathlib import Path

import accel.ops as AO
import reference.ops as RO
from conformance.registry import load_all

ROOT = Path(__file__).resolve().parents[1]
TRIVIAL_OPS = {"sizes": "reads shapes", "random_scores_like": "copies NumPy's stream to the device",
               "from_numpy_like": "copies NumPy arrays to the device"}


def _imports(path: Path):
    """(module, names) of every import in ``path``, and the strings given to import_module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            yield mod, [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.value, []
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
    backends = importlib.import_module("accel.backends")
    from reference.config import RunConfig
    from reference.data import split_mnist5k
    split = split_mnist5k(test_per_class=2, holdout_per_class=0, seed=0)
    assert type(backends.backend_for(RunConfig(backend="reference").validate(), split)).__name__ == "ReferenceEngine"
    assert type(backends.backend_for(RunConfig(backend="accel").validate(), split)).__name__ == "AccelEngine"
