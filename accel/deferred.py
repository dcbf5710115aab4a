"""Checks that wait on the device: one host synchronisation for a whole mask update.

An operator that must refuse bad input (a non-finite score, a count larger than its pool, an
invariant an update must keep) states the condition as a boolean device tensor::

    deferred.require(torch.isfinite(flat).all(), lambda: "grow scores contain NaN ...")

Outside a transaction (a user calling the operator directly) the condition is read at once and
a failed one raises, exactly as an eager check would. Inside ``with deferred.transaction() as
txn:`` (the Sparsifier wraps every mask update in one) nothing is read: the conditions, and any
scalar the caller wants back (``txn.fetch(t)``), are collected, and ``txn.commit()`` reads all
of them in ONE device-to-host copy. The first failed condition then raises with its message
(the message function runs only then, so it may inspect tensors freely), and the caller installs
nothing: the update is accepted or rejected as a whole.

``scalar(t)`` is the same idea for an operator that returns a number (``mask_change``,
``exploration_degree``): a Python float outside a transaction, the 0-d device tensor inside
(the Sparsifier turns those into numbers when it commits).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Optional

import torch

__all__ = ["require", "require_finite", "scalar", "active", "transaction", "Transaction", "materialize"]

_current: contextvars.ContextVar = contextvars.ContextVar("twinsparse_transaction", default=None)


class Transaction:
    def __init__(self):
        self.checks: list = []          # (0-d bool tensor, message function, exception class)
        self.fetches: list = []         # tensors to read back
        self.finite: list = []          # (tensor, message function): must hold no NaN / inf
        self.values: Optional[list] = None

    def require(self, ok: torch.Tensor, message: Callable[[], str], exc=ValueError) -> None:
        self.checks.append((ok.reshape(()), message, exc))

    def fetch(self, t: torch.Tensor) -> int:
        """Schedule a tensor to be read at ``read()``; returns the handle for ``value``."""
        self.fetches.append(t)
        return len(self.fetches) - 1

    def require_finite(self, t: torch.Tensor, message: Callable[[], str]) -> None:
        self.finite.append((t, message))

    def _finite_checks(self) -> None:
        """All finiteness checks of the transaction as one multi-tensor reduction per dtype: x * 0
        is 0 for a finite x and NaN otherwise, and a sum of those is 0 exactly when all are finite."""
        by: dict = {}
        for t, message in self.finite:
            by.setdefault((t.device, t.dtype), []).append((t, message))
        for group in by.values():
            sums = torch._foreach_norm(torch._foreach_mul([t for t, _ in group], 0.0), 1)
            ok = torch.stack(sums).eq(0)
            for i, (_, message) in enumerate(group):
                self.checks.append((ok[i], message, ValueError))
        self.finite = []

    def read(self) -> None:
        """Read every check and fetch with ONE device-to-host copy (the transaction's host sync)."""
        self._finite_checks()
        parts = [c.reshape(1) for c, _, _ in self.checks] + [f.detach().reshape(-1) for f in self.fetches]
        if not parts:
            self.ok, self.values = [], []
            return
        if len({p.device for p in parts}) > 1:
            parts = [p.to("cpu") for p in parts]
        # one concatenation (torch promotes bool / int64 / float64 to a common type: float64 holds
        # every count below 2^53 exactly) and one copy to the host: the transaction's one sync
        flat = torch.cat([p if p.dtype != torch.float32 else p.double() for p in parts]).tolist()
        self.ok = flat[:len(self.checks)]
        pos, self.values = len(self.checks), []
        for f in self.fetches:
            n = f.numel()
            vals = flat[pos:pos + n]
            pos += n
            if not (f.is_floating_point() or f.is_complex()):
                vals = [int(v) for v in vals]
            self.values.append(vals[0] if f.dim() == 0 else vals)

    def value(self, handle: int):
        return self.values[handle]

    def raise_failed(self) -> None:
        """Raise the first failed check (after ``read``): a bad input (ValueError: a NaN, a count out
        of range) before a broken invariant (RuntimeError), which the bad input may have caused."""
        failed = [(message, exc) for (_, message, exc), v in zip(self.checks, self.ok) if not v]
        for message, exc in sorted(failed, key=lambda f: not issubclass(f[1], ValueError)):
            raise exc(message())

    def commit(self) -> list:
        """``read`` then ``raise_failed``; returns the fetched values."""
        self.read()
        self.raise_failed()
        return self.values


def active() -> Optional[Transaction]:
    return _current.get()


def require(ok: torch.Tensor, message: Callable[[], str], exc=ValueError) -> None:
    """``ok`` (a boolean tensor, all of which must hold) or raise ``exc(message())``: now, or at the
    commit of the enclosing transaction."""
    txn = _current.get()
    if txn is None:
        if not bool(ok.all() if ok.dim() else ok):
            raise exc(message())
        return
    txn.require(ok.all() if ok.dim() else ok, message, exc)


def require_finite(t: torch.Tensor, message: Callable[[], str]) -> None:
    """Every entry of the floating tensor ``t`` finite, or ValueError(message()): now, or at the
    commit of the enclosing transaction (where all such checks share one reduction)."""
    if not t.is_floating_point():
        return
    txn = _current.get()
    if txn is None:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(message())
        return
    txn.require_finite(t, message)


def scalar(t: torch.Tensor):
    """A 0-d tensor as a Python number now, or the tensor itself inside a transaction."""
    if _current.get() is not None:
        return t
    return t.item() if t.is_floating_point() else int(t)


@contextlib.contextmanager
def transaction():
    txn = Transaction()
    token = _current.set(txn)
    try:
        yield txn
    finally:
        _current.reset(token)


def materialize(obj, values: dict):
    """``obj`` (a dict / list of numbers and 0-d tensors) with every tensor replaced by its value
    from ``values`` (id(tensor) -> number, as committed)."""
    if isinstance(obj, torch.Tensor) and obj.dim() == 0:
        return values[id(obj)]
    if isinstance(obj, dict):
        return {k: materialize(v, values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(v, values) for v in obj)
    return obj
