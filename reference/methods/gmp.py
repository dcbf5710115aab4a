"""Gradual magnitude pruning (GMP) on the cubic schedule: the baseline of [TH] §2.2.2 / Table 3.9
(docs/methods.md §2.4; Zhu & Gupta 2017 form, EXTERNAL).

Starts dense. Every ``delta_t`` iterations in [prune_start, prune_end] (and at prune_end itself)
the target density is d_t = gmp_density_at(t, 1, final_density, prune_start, prune_end) and the
smallest |w| among the active weights are pruned: over all layers together (scope 'global',
docs/methods.md §1.3) or each layer to d_t of its own size (scope 'layer', uniform). Masks only shrink
(nested); pruned weights and their optimizer state become 0 and never return. The optimizer step
runs on update iterations too, on the pruned weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .._checks import count_for_density
from ..masks import SCOPES
from ..schedules import gmp_density_at
from .base import InitContext, Method, Update



@dataclass
class GMP(Method):
    final_density: float = 0.1
    delta_t: int = 100
    prune_start: int = 0
    prune_end: Optional[int] = None
    scope: str = "global"
    name = "gmp"

    def __post_init__(self):
        if not 0.0 < self.final_density <= 1.0:
            raise ValueError(f"final_density={self.final_density!r} is outside the allowed range (0, 1]")
        if isinstance(self.delta_t, bool) or not isinstance(self.delta_t, int) or self.delta_t < 1:
            raise ValueError(f"delta_t={self.delta_t!r} must be an integer >= 1")
        if self.prune_end is None or not 0 <= self.prune_start < self.prune_end:
            raise ValueError(f"gmp: need 0 <= prune_start < prune_end, got prune_start={self.prune_start}, "
                             f"prune_end={self.prune_end}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is not allowed; choose one of {list(SCOPES)}")

    def init_masks(self, ops, ctx: InitContext) -> dict:
        return ops.ones_like_masks(ctx.weights)

    def due(self, t: int) -> bool:
        return self.prune_start <= t <= self.prune_end and (t % self.delta_t == 0 or t == self.prune_end)

    def density_at(self, t: int) -> float:
        return gmp_density_at(t, 1.0, self.final_density, self.prune_start, self.prune_end)

    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        d = self.density_at(t)
        scores, active = ops.abs_all(weights), ops.count_active(masks)
        if self.scope == "global":
            n_keep = min(count_for_density(d, sum(ops.sizes(masks).values())), sum(active.values()))
            new = ops.prune_to_count(masks, scores, n_keep)
        else:  # each layer keeps min(round(d n_l), active_l) of its active weights: drop the rest
            sizes = ops.sizes(masks)
            new = ops.drop(masks, scores, {n: active[n] - min(count_for_density(d, sizes[n]), active[n]) for n in masks})
        return Update(masks=new, survivors=new, state=state, info={"target_density": d})
