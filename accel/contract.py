"""Counting what the host asks of the device: host synchronisations and kernel launches.

The engine's promise (docs/engine.md): a plain ``Sparsifier.step()`` never waits for the device,
a mask update waits at most once, and neither launches more kernels for a model with more
layers. ``count()`` measures both on any device, CPU included, so the promise is tested in CI:

    with contract.count() as c:
        sp.step()
    c.syncs, c.launches, c.sync_log

* **syncs**: operators whose result the host must wait for, seen at the ATen level through a
  ``TorchDispatchMode`` (``.item()`` / ``bool()`` / ``int()`` of a tensor, ``nonzero``,
  ``torch.equal``, boolean-mask indexing, ``repeat_interleave`` / ``bincount`` without a known
  output size, ...), plus the Python-level reads the dispatcher does not see on a CPU tensor
  (``tolist``, ``numpy``, ``cpu``), plus every copy of pageable host data to a device
  (``torch.tensor(..., device=)``, ``torch.as_tensor(..., device=)``, and ``.to(device)`` of a
  tensor made by ``torch.tensor`` / ``as_tensor`` / ``from_numpy``): on CUDA a non-pinned
  host-to-device copy waits for the stream. (On a CPU-only machine none of
  these actually waits; the count is what a GPU would do.)
* **launches**: every ATen operator that runs a kernel (views, metadata and allocation-only
  operators excluded), plus every custom CUDA kernel launch of ``accel.kernels``.

On a real GPU, ``torch.cuda.set_sync_debug_mode("error")`` proves the sync count directly; the
GPU tests do both.
"""
from __future__ import annotations

import contextlib
import traceback
import weakref
from collections import Counter as _Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import kernels

__all__ = ["count", "Counts"]

_ALWAYS_SYNC = {"_local_scalar_dense", "nonzero", "equal", "masked_select", "unique", "_unique", "_unique2",
                "unique_dim", "unique_consecutive", "allclose", "is_nonzero", "_assert_async", "bincount",
                "histc"}
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "detach", "alias", "lift_fresh", "lift_fresh_copy", "view",
              "_unsafe_view", "as_strided", "slice", "select", "unsqueeze", "squeeze", "expand", "permute", "t",
              "transpose", "split", "split_with_sizes", "unbind", "chunk", "reshape", "_reshape_alias", "view_as",
              "set_", "resize_", "_to_copy_noop", "record_stream", "new_empty", "new_empty_strided", "diagonal",
              "unfold", "narrow", "expand_as", "conj", "_conj", "_neg_view", "real", "imag", "is_pinned",
              "scalar_tensor"}


def _caller() -> str:
    """The innermost frame of the project's own code (where the sync was asked for)."""
    for fr in reversed(traceback.extract_stack()):
        f = fr.filename.replace("\\", "/")
        if "/torch/" in f or f.endswith("accel/contract.py") or "/site-packages/" in f:
            continue
        return f"{'/'.join(f.split('/')[-2:])}:{fr.lineno}"
    return "?"


def _name(func) -> str:
    return func._schema.name.split("::")[-1]


class Counts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = 0
        self.launches = 0
        self.ops: _Counter = _Counter()
        self.sync_log: list = []

    def _sync(self, what: str) -> None:
        self.syncs += 1
        self.sync_log.append(f"{what} at {_caller()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        out = func(*args, **kwargs)
        if name in _ALWAYS_SYNC:
            self._sync(f"aten.{name}")
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and self._bool_index(args):
            self._sync(f"aten.{name} with a boolean mask")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) > 1 \
                and isinstance(args[1], torch.Tensor):
            self._sync("aten.repeat_interleave without output_size")
        if name not in _NO_KERNEL and not getattr(func, "is_view", False):
            self.launches += 1
            self.ops[name] += 1
        return out

    @staticmethod
    def _bool_index(args) -> bool:
        idx = args[1] if len(args) > 1 else None
        if isinstance(idx, (list, tuple)):
            return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx)
        return False


def _device_arg(args, kwargs) -> bool:
    """Whether a ``.to(...)`` call names a device (the intent to copy there, whatever it is here)."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args)


@contextlib.contextmanager
def count():
    """Count syncs and launches of the code inside (see the module docstring)."""
    c = Counts()
    launches0 = kernels.launches["count"]
    T = torch.Tensor
    saved = {k: getattr(T, k) for k in ("tolist", "numpy", "cpu", "to")}
    saved_tensor, saved_as_tensor, saved_from_numpy = torch.tensor, torch.as_tensor, torch.from_numpy

    def wrap(key):
        orig = saved[key]

        def f(self, *a, **k):
            c._sync(f"Tensor.{key}")
            return orig(self, *a, **k)
        return f

    host_born = weakref.WeakValueDictionary()   # id -> tensor made from host data (its .to(device) copies)

    def to(self, *a, **k):
        if host_born.get(id(self)) is self and _device_arg(a, k):
            c._sync("host tensor .to(device) (pageable copy)")
        return saved["to"](self, *a, **k)

    def make(orig, label):
        def f(data, *a, **k):
            if k.get("device") is not None:
                c._sync(f"torch.{label}(..., device=) (pageable copy)")
                return orig(data, *a, **k)
            out = orig(data, *a, **k)
            if isinstance(out, torch.Tensor) and out is not data:
                host_born[id(out)] = out
            return out
        return f

    def from_numpy(a):
        out = saved_from_numpy(a)
        host_born[id(out)] = out
        return out

    try:
        for key in ("tolist", "numpy", "cpu"):
            setattr(T, key, wrap(key))
        T.to = to
        torch.tensor = make(saved_tensor, "tensor")
        torch.as_tensor = make(saved_as_tensor, "as_tensor")
        torch.from_numpy = from_numpy
        with c:
            yield c
    finally:
        for key, fn in saved.items():
            setattr(T, key, fn)
        torch.tensor, torch.as_tensor, torch.from_numpy = saved_tensor, saved_as_tensor, saved_from_numpy
        c.launches += kernels.launches["count"] - launches0
