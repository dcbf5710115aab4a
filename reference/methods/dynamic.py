"""The shared drop-and-grow machinery of dynamic sparse training (docs/methods.md §2.1, [ST] §3.1 Eq. 1-2).

Every ``delta_t`` iterations in [t_start, t_end) (RigL / DST-EE Alg. 1), per layer:
drop k = floor(f_t * n_active) active weights with the smallest drop score (|w|), then grow k
positions among those inactive *after* the drop by the method's grow score (just-dropped weights
may regrow). Grown weights start at 0 with zeroed optimizer state. f_t follows the drop-fraction
schedule (constant, cosine as in RigL, linear). Per-layer densities stay exactly as initialised,
checked after every update. A method overrides ``grow_scores`` (and, for state, the state hooks).

``step_on_update=False`` is Alg. 1 literally (the update iteration takes no optimizer step);
True also steps with the new masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..schedules import check_update_schedule, drop_fraction_at, update_due
from .base import InitContext, Method, Update, check_init, initial_masks


@dataclass
class DropGrow(Method):
    delta_t: int = 100
    drop_fraction: float = 0.3
    fraction_schedule: str = "cosine"
    t_start: int = 0
    t_end: Optional[int] = None
    init: str = "random"
    step_on_update: bool = False
    name = "drop_grow"

    def __post_init__(self):
        if self.t_end is None:
            raise ValueError(f"{self.name}: t_end is required (the iteration at which mask updates stop)")
        check_update_schedule(self.delta_t, self.t_start, self.t_end, self.drop_fraction, self.fraction_schedule)
        check_init(self.init)
        if not isinstance(self.step_on_update, bool):
            raise ValueError(f"step_on_update={self.step_on_update!r} must be True or False")

    # ----------------------------------------------------------------- hooks
    def init_masks(self, ops, ctx: InitContext) -> dict:
        return initial_masks(ops, ctx, self.init)

    def due(self, t: int) -> bool:
        return update_due(t, self.delta_t, self.t_start, self.t_end)

    def fraction(self, t: int) -> float:
        return drop_fraction_at(t, self.drop_fraction, self.fraction_schedule, self.t_start, self.t_end)

    def grow_scores(self, ops, t, weights, grads, kept, state, seed) -> dict:
        raise NotImplementedError

    def grow_counts(self, ops, drop_counts, kept, state) -> dict:
        """Per-layer growth equals per-layer drop (densities preserved); SNFS may redistribute."""
        return drop_counts

    def expected_counts(self, ops, masks, drop_counts, grow_counts) -> dict:
        """The per-layer active counts the update must end with: unchanged (densities preserved)."""
        return ops.count_active(masks)

    def after_update(self, ops, state, masks) -> dict:
        return state

    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        f = self.fraction(t)
        counts = ops.swap_counts(masks, f)
        kept = ops.drop(masks, ops.abs_all(weights), counts)
        grow_counts = self.grow_counts(ops, counts, kept, state)
        new = ops.grow(kept, self.grow_scores(ops, t, weights, grads, kept, state, seed), grow_counts)
        ops.require_counts(new, self.expected_counts(ops, masks, counts, grow_counts), self.name)
        return Update(new, kept, self.after_update(ops, state, new),
                      {"fraction": f, "dropped": ops.total(counts), "grown": ops.total(grow_counts)})
