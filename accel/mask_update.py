"""What a Sparsifier iteration does beyond the optimizer's update, and where it reads the device
(the module docstring of ``accel.sparsifier`` says when):

* the non-finite guard: a device flag that makes the optimizer update skip itself and a device
  record of such steps (``_guard``), read only at a synchronisation point (``check_nonfinite``,
  ``skipped_steps``), where ``nonfinite='raise'`` raises for the first bad iteration;
* an iteration with a mask update and/or a collection (``_event``): the method's operators run on
  flat buffers with their checks deferred (``accel.deferred``), every check, the guard, the
  per-layer counts and the update's statistics are read in ONE host sync, and the new masks are
  installed (``_apply``, which appends the update's record to ``updates``) only if all of it holds;
* the first masks of a method that builds them from gradients (SNIP, ``_first_masks``) and a
  method's per-step observation without a sync (SNFS momentum, ``_observe``).

``MaskUpdates`` is a mixin of ``accel.sparsifier.Sparsifier``: it works on the Sparsifier's params,
masks, method, layout, step engine and ``_install``.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import deferred
from . import ops
from ._exact import true_div
from .kernels.tables import upload
from .loop_support import NonFiniteGradientError
from .nested import replace_tensors, select_where, tensors_in
from .step import nonfinite_guard

__all__ = ["MaskUpdates"]


class MaskUpdates:
    """The non-finite guard and the mask-update transaction of ``Sparsifier.step`` (see the module
    docstring); ``check_nonfinite()`` and ``skipped_steps`` are public ``Sparsifier`` API."""

    def _guard_tensors(self):
        dev = self._device()
        if self._found is None or self._found.device != dev:
            self._found = torch.zeros((), dtype=torch.float32, device=dev)
            self._record = upload(torch.tensor([0.0, 0.0, float(self.step_count)], dtype=torch.float64), dev)
            self._scratch = torch.zeros(1, dtype=torch.int32, device=dev)
            self._one = torch.ones((), dtype=torch.float32, device=dev)
        return self._found, self._record

    def _guard(self, grads: list, scaler_found: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if scaler_found is not None:                 # GradScaler checked every gradient already
            return scaler_found
        if not self.check_finite:
            return None
        found, record = self._guard_tensors()
        nonfinite_guard(grads, found, record, self._scratch, self._one)
        return found

    # ------------------------------------------------------------ iterations with a mask update or collection
    def _dense_grads(self, t: int, clone: bool) -> dict:
        missing = [n for n, p in self.params.items() if p.grad is None]
        if missing:
            raise RuntimeError(f"method {self.method.name!r} needs the dense gradients at iteration {t}, "
                               f"but {missing} have no .grad; call loss.backward() before step()")
        grads = {n: p.grad.detach() for n, p in self.params.items()}
        scale = getattr(self, "_grad_scale", None)
        if scale is not None:     # GradScaler's scaled gradients: the method sees the true ones
            lay = self._layout
            if len({g.dtype for g in grads.values()}) == 1:
                return lay.split(true_div(lay.flatten(grads), scale.to(lay.flatten(grads).dtype).reshape(1)))
            return {n: true_div(g, scale.to(g.dtype).reshape(1)) for n, g in grads.items()}
        if clone:            # a copy taken before the step masks them: one concatenation for every layer
            if len({g.dtype for g in grads.values()}) == 1:
                return self._layout.split(self._layout.flatten(grads))
            return {n: g.clone() for n, g in grads.items()}
        return grads

    def _first_masks(self, t: int) -> None:
        grads = self._dense_grads(t, clone=False)
        bad = [n for n, g in grads.items() if g.is_floating_point() and not bool(torch.isfinite(g).all())]
        if bad:
            raise NonFiniteGradientError(f"gradients at iteration {t} contain non-finite values (NaN or inf) in "
                                         f"{bad}; method {self.method.name!r} builds its masks from them")
        self._init_masks(self._weights(), grads)

    def _observe(self, t: int, found: Optional[torch.Tensor]) -> None:
        """The method's per-step observation (SNFS momentum) without a sync: its checks are the
        guard's (finite gradients), and an observation with a non-finite gradient is discarded."""
        grads = self._dense_grads(t, clone=False)
        with deferred.transaction():                 # checks dropped: the guard covers them
            new = self.method.observe(ops, self.method_state, t, grads)
        self.method_state = new if found is None else select_where(found > 0, self.method_state, new)

    def _event(self, t, found, grad_scale, due, after, collects, scaler) -> None:
        """An iteration with a mask update and/or a collection: one transaction, one host sync."""
        m = self.method
        needs_grads = due or m.observes_grads
        gdict = self._dense_grads(t, clone=after or collects) if needs_grads else None
        with deferred.transaction() as txn:
            state = m.observe(ops, self.method_state, t, gdict) if m.observes_grads else self.method_state
            staged = None
            if due and not after:
                staged = self._stage(m.update(ops, t, self._weights(), gdict, self.masks, state, self.seed), txn)
            else:
                self._engine.step(found, grad_scale, masked=not m.is_dense, remask=self.remask_weights)
                if collects:
                    net = {k: v.detach() for k, v in self.module.state_dict().items()}
                    state = m.collect(ops, t, net, self.masks, state)
                if after:
                    staged = self._stage(m.update(ops, t, self._weights(), gdict, self.masks, state, self.seed), txn)
            guard = self._fetch_guard(txn, found)
            txn.read()
        if not self._accept_guard(txn, guard, t, scaler):
            return                                   # this iteration's gradients were not finite: nothing changes
        txn.raise_failed()
        if staged is not None:
            self._apply(staged, txn, t)
        else:
            self.method_state = state
        if due and not after and m.step_on_update:
            self._engine.step(None, grad_scale, masked=not m.is_dense, remask=self.remask_weights)

    def _stage(self, up, txn) -> dict:
        """An update's masks and statistics, scheduled for the transaction's one read."""
        new = self._as_flat(up.masks)
        keep = None if up.survivors is up.masks else self._as_flat(up.survivors, "survivors")
        explored = self.explored.flat | new.flat
        info_tensors = [x for x in tensors_in(up.info, []) if x.dim() == 0]
        return {"up": up, "new": new, "keep": keep, "explored": explored,
                "h_counts": txn.fetch(new.device_counts()),
                "h_xor": txn.fetch((self.masks.flat ^ new.flat).sum()),
                "h_explored": txn.fetch(explored.sum()),
                "h_info": [(x, txn.fetch(x)) for x in info_tensors]}

    def _fetch_guard(self, txn, found) -> dict:
        h = {}
        if found is not None:
            h["found"] = txn.fetch(found)
        if self._record is not None:
            h["record"] = txn.fetch(self._record[0:2])
        return h

    def _accept_guard(self, txn, h, t: int, scaler: bool) -> bool:
        """Apply the non-finite policy with the values read at the commit; False: skip iteration t
        (its gradients were not finite, or GradScaler found an overflow: nothing changes)."""
        if "record" in h:
            self._report(*txn.value(h["record"]))
        return not ("found" in h and txn.value(h["found"]) != 0)

    def _apply(self, staged: dict, txn, t: int) -> None:
        up, new = staged["up"], staged["new"]
        counts = txn.value(staged["h_counts"])
        kept_old = sum(self.masks.counts)
        if kept_old == 0:
            raise ValueError("mask_prev keeps no weight, so the change relative to the kept weights is undefined")
        xor, n = txn.value(staged["h_xor"]), self._layout.numel
        info = replace_tensors(up.info, {id(x): txn.value(h) for x, h in staged["h_info"]})
        self._install(new, staged["keep"], counts)
        if up.reset_optimizer_state:
            self.reset_optimizer_state()
        self.method_state = up.state
        self.explored = self._layout.split(staged["explored"])
        self._explored_count = txn.value(staged["h_explored"])
        self.updates.append({"t": t, **info, "density": sum(counts) / n, "exploration_degree": self._explored_count / n,
                             "xor_over_kept": xor / kept_old, "xor_over_total": xor / n})
        if self.on_update is not None:
            self.on_update(t, self.masks)

    # ------------------------------------------------------------ non-finite reporting
    def _report(self, bad: int, first: int) -> None:
        """Take over the device record's new non-finite steps (then zero it) and, under
        ``nonfinite='raise'``, raise for them."""
        if bad <= 0:
            return
        self._bad_steps += int(bad)
        self._record[0:2].zero_()
        if self.nonfinite == "raise":
            raise NonFiniteGradientError(
                f"gradients at iteration {int(first)} contain non-finite values (NaN or inf); {int(bad)} step(s) with "
                f"non-finite gradients were skipped (nothing changed at them). Use nonfinite='skip' to keep "
                f"training and count them, or check_finite=False to turn the guard off")

    def check_nonfinite(self) -> int:
        """Read the guard's record (one host sync): raise for unreported non-finite steps under
        ``nonfinite='raise'``; returns the number of skipped steps."""
        if self._record is not None:
            bad, first = self._record[0:2].tolist()
            self._report(bad, first)
        return self._restored_skips + self._bad_steps

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (reads the device record: a host sync)."""
        return self.check_nonfinite()
