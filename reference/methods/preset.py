"""Any method started from given masks instead of its own initialisation.

D²-Sparse ([D2] §3, docs/methods.md §5.1) starts every branch from a random ERK mask drawn by the procedure
and the post-merge fine-tune from the SNIP mask of the merged network; the base method (RigL by
default) then evolves those masks as usual. ``Preset(base, masks)`` is that: ``init_masks``
returns ``masks`` (on the caller's backend), every other hook is the base method's.
"""
from __future__ import annotations

from .base import InitContext, Method, Update


class Preset(Method):
    def __init__(self, base: Method, masks: dict):
        if not isinstance(base, Method) or base.is_dense:
            raise ValueError(f"Preset needs a sparse base method, got {base!r}")
        if not isinstance(masks, dict) or not masks:
            raise ValueError("Preset needs a non-empty dict layer name -> mask")
        self.base, self.masks = base, dict(masks)
        self.name = base.name
        self.observes_grads = base.observes_grads
        self.step_on_update = base.step_on_update

    @property
    def needs_init_grads(self) -> bool:
        return False

    def init_masks(self, ops, ctx: InitContext) -> dict:
        if list(ctx.weights) != list(self.masks):
            raise ValueError(f"preset masks name {list(self.masks)} but the prunable weights are {list(ctx.weights)}")
        return dict(self.masks)

    def init_state(self, ops, masks: dict) -> dict:
        return self.base.init_state(ops, masks)

    def observe(self, ops, state, t, grads):
        return self.base.observe(ops, state, t, grads)

    def due(self, t: int) -> bool:
        return self.base.due(t)

    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        return self.base.update(ops, t, weights, grads, masks, state, seed)

    def update_after_step(self, t: int) -> bool:
        return self.base.update_after_step(t)

    def collects(self, t: int) -> bool:
        return self.base.collects(t)

    def collect(self, ops, t, net, masks, state):
        return self.base.collect(ops, t, net, masks, state)

    def lr_override(self, t: int):
        return self.base.lr_override(t)

    def config(self) -> dict:
        return {**self.base.config(), "preset_masks": True}
