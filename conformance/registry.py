"""The operator registry, in the shape of PyTorch's OpInfo (docs/methods.md §1.15).

Each entry names the reference function, its accel twin, a hypothesis strategy that draws
inputs for a given float dtype, and the comparison rule. Adding an operator means adding one
``register(...)`` call in a module under ``conformance/entries/``; one generic test
(``test_registry.py``) walks every entry on every available accel device.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .tolerances import tolerance


@dataclass(frozen=True)
class Entry:
    name: str
    ref: Callable
    acc: Callable
    # strategy(dtype) -> hypothesis strategy drawing (args, kwargs) of NumPy inputs
    strategy: Callable
    # compare(ref_out, acc_out, dtype) raises AssertionError on a mismatch; default: compare_default,
    # compare_exact for results that must be the same bits on every backend and device
    compare: Optional[Callable] = None
    dtypes: tuple = (np.float64, np.float32)
    notes: str = ""
    tags: tuple = field(default_factory=tuple)


REGISTRY: dict[str, Entry] = {}


def register(name: str, ref: Callable, acc: Callable, strategy: Callable, **kw) -> Entry:
    if name in REGISTRY:
        raise ValueError(f"conformance entry {name!r} is registered twice")
    entry = Entry(name=name, ref=ref, acc=acc, strategy=strategy, **kw)
    REGISTRY[name] = entry
    return entry


def load_all() -> dict[str, Entry]:
    """Import every module under conformance/entries so their register() calls run."""
    from . import entries

    for mod in pkgutil.iter_modules(entries.__path__):
        importlib.import_module(f"{entries.__name__}.{mod.name}")
    return REGISTRY


def compare_default(ref_out, acc_out, dtype, path: str = "out") -> None:
    """Bool and integer arrays must be identical; floats close within the dtype tolerance."""
    if isinstance(ref_out, dict):
        assert isinstance(acc_out, dict), f"{path}: reference gave a dict, accel gave {type(acc_out).__name__}"
        assert list(ref_out) == list(acc_out), f"{path}: keys differ {list(ref_out)} vs {list(acc_out)}"
        for k in ref_out:
            compare_default(ref_out[k], acc_out[k], dtype, f"{path}[{k!r}]")
        return
    if isinstance(ref_out, (list, tuple)):
        assert len(ref_out) == len(acc_out), f"{path}: lengths differ {len(ref_out)} vs {len(acc_out)}"
        for i, (r, a) in enumerate(zip(ref_out, acc_out)):
            compare_default(r, a, dtype, f"{path}[{i}]")
        return
    if ref_out is None or isinstance(ref_out, (str, bool)):
        assert ref_out == acc_out, f"{path}: {ref_out!r} != {acc_out!r}"
        return
    r, a = np.asarray(ref_out), np.asarray(acc_out)
    assert r.shape == a.shape, f"{path}: shapes differ {r.shape} vs {a.shape}"
    if r.dtype.kind in "biu" or r.dtype == bool:
        assert a.dtype.kind == r.dtype.kind or (r.dtype.kind in "iu" and a.dtype.kind in "iu"), \
            f"{path}: dtype kinds differ {r.dtype} vs {a.dtype}"
        diff = np.flatnonzero(r.reshape(-1) != a.reshape(-1))
        assert diff.size == 0, f"{path}: {diff.size} entries differ (exact comparison), first at flat index {diff[:5]}"
        return
    tol = tolerance(dtype)
    np.testing.assert_allclose(a.astype(np.float64), r.astype(np.float64), err_msg=path, **tol)


def compare_exact(ref_out, acc_out, dtype, path: str = "out") -> None:
    """Every value identical, floats bit for bit (sign of zero included): for results that are
    correctly rounded operations on exact inputs -- a count divided by n, a quantization grid --
    which no backend or device may round differently. ``dtype`` is not used (no tolerance)."""
    if isinstance(ref_out, dict):
        assert isinstance(acc_out, dict), f"{path}: reference gave a dict, accel gave {type(acc_out).__name__}"
        assert list(ref_out) == list(acc_out), f"{path}: keys differ {list(ref_out)} vs {list(acc_out)}"
        for k in ref_out:
            compare_exact(ref_out[k], acc_out[k], dtype, f"{path}[{k!r}]")
        return
    if isinstance(ref_out, (list, tuple)):
        assert isinstance(acc_out, (list, tuple)) and len(ref_out) == len(acc_out), \
            f"{path}: reference gave {len(ref_out)} items, accel gave {acc_out!r}"
        for i, (r, a) in enumerate(zip(ref_out, acc_out)):
            compare_exact(r, a, dtype, f"{path}[{i}]")
        return
    if ref_out is None or isinstance(ref_out, (str, bool)):
        assert ref_out == acc_out, f"{path}: {ref_out!r} != {acc_out!r}"
        return
    r, a = np.asarray(ref_out), np.asarray(acc_out)
    assert r.shape == a.shape, f"{path}: shapes differ {r.shape} vs {a.shape}"
    assert r.dtype.kind == a.dtype.kind, f"{path}: dtype kinds differ {r.dtype} vs {a.dtype}"
    same = (r == a) | ((r != r) & (a != a)) if r.dtype.kind == "f" else (r == a)
    if r.dtype.kind == "f":
        same &= np.signbit(r) == np.signbit(a)
    bad = np.flatnonzero(~np.asarray(same).reshape(-1))
    assert bad.size == 0, (f"{path}: {bad.size} entries differ (bitwise comparison), first at flat index "
                           f"{bad[:5]}: {r.reshape(-1)[bad[:3]].tolist()} vs {a.reshape(-1)[bad[:3]].tolist()}")
