"""SNFS, sparse momentum ([EE]: "exponentially smoothed momentum to find the important weights and
layers, and redistributed pruned weights based on the mean momentum magnitude per layer";
[TH] §3.2: regrowth "with the highest gradient momentum").

The momentum is an exponentially smoothed *dense* gradient, m <- beta m + (1 - beta) g, kept by
the method (the optimizer's own buffer is zero off the mask, so it cannot rank inactive weights).
Growth picks the largest |m| among inactive positions. With ``redistribute=True`` the total number
of dropped weights is regrown across layers in proportion to each layer's mean |m| over its
surviving weights (capped by its inactive pool; largest remainder, ties to the earlier layer), so
per-layer densities move and only the total is preserved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .dynamic import DropGrow


def allocate_proportional(total: int, weights: dict, caps: dict) -> dict:
    """Split ``total`` integer units over layers in proportion to ``weights`` with per-layer caps."""
    if total > sum(caps.values()):
        raise ValueError(f"cannot place {total} weights: the layers hold only {sum(caps.values())} free positions")
    alloc = {n: 0 for n in caps}
    open_ = [n for n in caps if caps[n] > 0]
    remaining = total
    while remaining > 0:
        wsum = sum(max(weights[n], 0.0) for n in open_)
        share = {n: (max(weights[n], 0.0) / wsum if wsum > 0 else 1.0 / len(open_)) * remaining for n in open_}
        full = [n for n in open_ if share[n] >= caps[n] - alloc[n]]
        if full:  # saturate, then re-split what is left among the others
            for n in full:
                remaining -= caps[n] - alloc[n]
                alloc[n] = caps[n]
            open_ = [n for n in open_ if n not in full]
            continue
        base = {n: math.floor(share[n]) for n in open_}
        for n in open_:
            alloc[n] += base[n]
        left = remaining - sum(base.values())
        order = sorted(open_, key=lambda n: (-(share[n] - base[n]), open_.index(n)))
        for n in order[:left]:
            alloc[n] += 1
        remaining = 0
    return alloc


@dataclass
class SNFS(DropGrow):
    momentum: float = 0.9
    redistribute: bool = False
    name = "snfs"
    observes_grads = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum!r} is outside the allowed range [0, 1)")

    def init_state(self, ops, masks):
        return {"ema": None}

    def observe(self, ops, state, t, grads):
        return {"ema": ops.ema_update(state["ema"], grads, self.momentum)}

    def grow_scores(self, ops, t, weights, grads, kept, state, seed):
        return ops.abs_all(state["ema"])

    def grow_counts(self, ops, drop_counts, kept, state):
        if not self.redistribute:
            return drop_counts
        sizes, active = ops.sizes(kept), ops.count_active(kept)
        caps = {n: sizes[n] - active[n] for n in sizes}
        return allocate_proportional(ops.total(drop_counts), ops.mean_abs_over_mask(state["ema"], kept), caps)

    def expected_counts(self, ops, masks, drop_counts, grow_counts):
        """With redistribution each layer ends with active - dropped + grown; the allocation regrows
        exactly the dropped total, so the total is preserved."""
        if not self.redistribute:
            return super().expected_counts(ops, masks, drop_counts, grow_counts)
        active = ops.count_active(masks)
        return {n: active[n] - drop_counts[n] + grow_counts[n] for n in active}
