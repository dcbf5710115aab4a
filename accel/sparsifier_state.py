"""A Sparsifier's state for checkpoints and resume: ``state_dict()`` (masks, the method's state,
ITOP bookkeeping, the update records and counters as plain CPU tensors and Python values) and
``load_state_dict()``, which validates the whole state against this Sparsifier (keys, method name,
mask names and shapes, densities, the method's state keys) before anything changes.

``SparsifierState`` is a mixin of ``accel.sparsifier.Sparsifier``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from . import ops
from .kernels.tables import upload
from .nested import to_device

__all__ = ["SparsifierState"]


class SparsifierState:
    """``state_dict`` / ``load_state_dict`` of ``Sparsifier`` (see the module docstring)."""

    def state_dict(self) -> dict:
        """Masks, method state (counters, momentum, ...), ITOP bookkeeping and counters; plain
        CPU tensors and Python values, so ``torch.save`` / ``torch.load(weights_only=True)`` work."""
        skipped = self.check_nonfinite()
        return {
            "masks": None if self.masks is None else to_device(dict(self.masks), "cpu"),
            "densities": dict(self.densities),
            "step_count": self.step_count,
            "seed": self.seed,
            "method": {"name": self.method.name, "config": self.method.config(), "state": to_device(self.method_state, "cpu")},
            "explored": None if self.explored is None else to_device(dict(self.explored), "cpu"),
            "updates": [dict(u) for u in self.updates],
            "skipped_steps": skipped,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore masks, method state and bookkeeping; validated whole before anything changes."""
        expected = {"masks", "densities", "step_count", "seed", "method", "explored", "updates", "skipped_steps"}
        if not isinstance(state, Mapping) or set(state) != expected:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a Sparsifier state dict: expected keys {sorted(expected)}, got {got}")
        meth = state["method"]
        if not isinstance(meth, Mapping) or meth.get("name") != self.method.name:
            name = meth.get("name") if isinstance(meth, Mapping) else meth
            raise ValueError(f"state is for method {name!r}, this Sparsifier runs {self.method.name!r}")
        masks = None if state["masks"] is None else self._validate_masks(state["masks"])
        explored = None if state["explored"] is None else self._validate_masks(state["explored"])
        if list(state["densities"]) != list(self.params):
            raise ValueError(f"state densities name {list(state['densities'])}, prunable weights are {list(self.params)}")
        if masks is not None and set(meth["state"]) != set(self.method.init_state(ops, masks)):
            raise ValueError(f"method state keys {sorted(meth['state'])} do not match method {self.method.name!r} "
                             f"(expected {sorted(self.method.init_state(ops, masks))})")
        device = self._device()
        self.densities = dict(state["densities"])
        self.step_count = int(state["step_count"])
        self.seed = int(state["seed"])
        self.updates = [dict(u) for u in state["updates"]]
        self._restored_skips = int(state["skipped_steps"])
        self._bad_steps = 0
        if self._record is not None:
            self._record.copy_(upload(torch.tensor([0.0, 0.0, float(self.step_count)], dtype=torch.float64),
                                      self._record.device))
        self.method_state = to_device(meth["state"], device)
        self.explored = explored
        self._explored_count = 0 if explored is None else int(explored.flat.sum())
        self._engine.invalidate()
        if masks is not None:
            self._install(masks, None, counts=None)
        else:
            self.masks = None
