"""GraNet as Sup-tickets uses it ([ST] §4 base method): gradual magnitude pruning from the initial
density to ``final_density`` on the cubic schedule (docs/methods.md §2.4, Zhu & Gupta form), combined with
RigL-style regrowth (magnitude drop and |gradient| growth at the drop fraction) at every update.

At each update t: target density d_t = gmp_density_at(t, d_init, final_density, prune_start,
prune_end); if fewer weights should be active, the smallest |w| over all layers are pruned
(global magnitude, GraNet's choice); then the drop-and-grow round runs on the pruned masks.
The total active count equals the schedule's target after every update (checked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .._checks import count_for_density
from ..schedules import gmp_density_at
from .base import Update
from .dynamic import DropGrow


@dataclass
class GraNet(DropGrow):
    final_density: float = 0.1
    prune_start: int = 0
    prune_end: Optional[int] = None
    name = "granet"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.final_density <= 1.0:
            raise ValueError(f"final_density={self.final_density!r} is outside the allowed range (0, 1]")
        if self.prune_end is None:
            raise ValueError("granet: prune_end is required (the iteration where the final density is reached)")
        if not 0 <= self.prune_start < self.prune_end:
            raise ValueError(f"prune_start={self.prune_start} must be >= 0 and before prune_end={self.prune_end}")
        first_after = -(-max(self.prune_end, self.t_start) // self.delta_t) * self.delta_t
        if first_after >= self.t_end:
            raise ValueError(f"granet: no mask update happens at or after prune_end={self.prune_end} before "
                             f"t_end={self.t_end} (delta_t={self.delta_t}), so the final density would never be reached")

    def init_state(self, ops, masks):
        sizes, active = ops.sizes(masks), ops.count_active(masks)
        d_init = sum(active.values()) / sum(sizes.values())
        rounding = len(sizes) / sum(sizes.values())  # per-layer counts round by at most one weight each
        if self.final_density > d_init + rounding:
            raise ValueError(f"granet: final_density={self.final_density} is above the initial density {d_init:.6g}; "
                             f"gradual pruning only removes weights")
        return {"d_init": d_init}

    def target_count(self, ops, t, masks, state) -> int:
        d = gmp_density_at(t, state["d_init"], self.final_density, self.prune_start, self.prune_end)
        return count_for_density(d, sum(ops.sizes(masks).values()))

    def grow_scores(self, ops, t, weights, grads, kept, state, seed):
        return ops.abs_all(grads)

    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        n_keep = min(self.target_count(ops, t, masks, state), sum(ops.count_active(masks).values()))
        pruned = ops.prune_to_count(masks, ops.abs_all(weights), n_keep)
        up = super().update(ops, t, weights, grads, pruned, state, seed)
        up.info.update({"target_active": n_keep})
        return up
