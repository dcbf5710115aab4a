"""Sup-tickets ([ST] Algorithm 1, §3.2, Eq. 3-4, §5; docs/methods.md §4.2, §4.3, §4.1) around any base method.

    for i in 1..T:
        i <= T0:  the base method's normal sparse training (its own mask updates included)
        i >  T0:  sparse training with the cyclical LR a(i - T0) (Eq. 3; ``lr_schedule`` 'fge' / 'swa':
                  the schedules of Table 7), base mask updates off (R)
                  every C iterations, at the cycle's lowest LR (after that iteration's optimizer step):
                      superpose the network as the t-th cheap ticket (CIA Eq. 4; CAA, CIMA options),
                      BN statistics: running average of mean and std (option: variance),
                      magnitude-prune the superposed ticket to the target (per layer, or global),
                      explore: drop p of the active weights by |w|, grow as many by the base
                      method's criterion (random for static / SET bases), new weights at 0
    return the ultimate ticket (the pruned superposition with averaged BN statistics)

T0 = floor(0.9 T) (Alg. 1) or T - M C when ``n_tickets`` M is given (docs/methods.md §4.1).
``explore_at_stage_start=True`` also explores at iteration T0 + 1, so every cycle starts with an
exploration, as the text of §3.2.1 says ("in each cycle, we first significantly change the
connectivity ..."); the default follows Alg. 1 (explore after each superposition only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..masks import SCOPES
from ..merge import BN_AVG_MODES
from ..schedules import STAGE_LR_SCHEDULES, stage_collects, stage_lr, step_seed
from .base import InitContext, Method, Update
from .dynamic import DropGrow

AVERAGING = ("cia", "caa", "cima")
PRUNE_SCOPES = SCOPES                # re-pruning the superposed weights per layer or globally
BN_AVERAGES = BN_AVG_MODES          # BN running statistics averaged as standard deviations or variances


def bn_stat_pairs(names) -> list:
    """(running_mean, running_var) key pairs of the BN layers of a network dict."""
    return [(n, n[: -len("running_mean")] + "running_var") for n in names
            if n.endswith("running_mean") and n[: -len("running_mean")] + "running_var" in names]


@dataclass
class SupTickets(Method):
    base: Method = None
    total_steps: int = 0
    cycle: int = 0
    n_tickets: Optional[int] = None
    explore_fraction: float = 0.3
    averaging: str = "cia"
    beta: float = 0.8
    prune_scope: str = "layer"
    prune_each_step: bool = True
    bn_avg: str = "std"
    lr_low: float = 0.001
    lr_high: float = 0.005
    explore_at_stage_start: bool = False
    lr_schedule: str = "eq3"
    keep_tickets: bool = True
    name = "suptickets"

    def __post_init__(self):
        if not isinstance(self.base, Method) or isinstance(self.base, SupTickets) or self.base.is_dense:
            raise ValueError(f"suptickets needs a sparse base method (static, set, rigl, snfs, granet, dst_ee), "
                             f"got {self.base!r}")
        for key in ("total_steps", "cycle"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key}={v!r} must be an integer >= 1 (iterations)")
        if self.n_tickets is not None and (not isinstance(self.n_tickets, int) or self.n_tickets < 1):
            raise ValueError(f"n_tickets={self.n_tickets!r} must be an integer >= 1 or None")
        stage = self.total_steps - self.stage_start
        if self.cycle > stage:
            raise ValueError(f"cycle length C={self.cycle} is longer than the superposing stage ({stage} iterations "
                             f"of {self.total_steps}): no cheap ticket would be collected")
        if self.stage_start < 0:
            raise ValueError(f"n_tickets={self.n_tickets} x cycle={self.cycle} is longer than training "
                             f"({self.total_steps} iterations)")
        if not 0.0 <= self.explore_fraction <= 1.0:
            raise ValueError(f"explore_fraction={self.explore_fraction!r} is outside the allowed range [0, 1]")
        if self.averaging not in AVERAGING:
            raise ValueError(f"averaging={self.averaging!r} is not allowed; choose one of {list(AVERAGING)}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta={self.beta!r} is outside the allowed range [0, 1]")
        if self.prune_scope not in PRUNE_SCOPES:
            raise ValueError(f"prune_scope={self.prune_scope!r} is not allowed; choose one of {list(PRUNE_SCOPES)}")
        if self.bn_avg not in BN_AVERAGES:
            raise ValueError(f"bn_avg={self.bn_avg!r} is not allowed; choose one of {list(BN_AVERAGES)}")
        if self.lr_schedule not in STAGE_LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is not allowed; choose one of {list(STAGE_LR_SCHEDULES)}")
        if not isinstance(self.explore_at_stage_start, bool):
            raise ValueError(f"explore_at_stage_start={self.explore_at_stage_start!r} must be True or False")
        if not 0 < self.lr_low <= self.lr_high:
            raise ValueError(f"need 0 < lr_low <= lr_high, got lr_low={self.lr_low}, lr_high={self.lr_high}")

    # ----------------------------------------------------------- schedule
    @property
    def stage_start(self) -> int:
        """T0: the last iteration of normal training."""
        if self.n_tickets is None:
            return math.floor(0.9 * self.total_steps)
        return self.total_steps - self.n_tickets * self.cycle

    @property
    def init(self):
        return getattr(self.base, "init", None)

    @property
    def observes_grads(self):
        return self.base.observes_grads

    @property
    def step_on_update(self):
        return self.base.step_on_update

    def _ticket_time(self, t: int) -> bool:
        i = t - self.stage_start
        return i > 0 and stage_collects(i, self.cycle, self.lr_schedule)

    def due(self, t: int) -> bool:
        if t <= self.stage_start:
            return self.base.due(t)
        if self.explore_at_stage_start and t == self.stage_start + 1:
            return True
        return self._ticket_time(t)

    def update_after_step(self, t: int) -> bool:
        return t > self.stage_start and self._ticket_time(t)

    def collects(self, t: int) -> bool:
        return t > self.stage_start and self._ticket_time(t)

    def lr_override(self, t: int):
        if t <= self.stage_start:
            return None
        return stage_lr(t - self.stage_start, self.cycle, self.lr_low, self.lr_high, self.lr_schedule)

    # -------------------------------------------------------------- state
    def init_masks(self, ops, ctx: InitContext) -> dict:
        return self.base.init_masks(ops, ctx)

    def init_state(self, ops, masks):
        return {"base": self.base.init_state(ops, masks), "t": 0, "avg": None, "tickets": [], "ticket_masks": [],
                "ultimate": None, "ultimate_masks": None}

    def observe(self, ops, state, t, grads):
        return {**state, "base": self.base.observe(ops, state["base"], t, grads)}

    # ------------------------------------------------------------- update
    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        if t <= self.stage_start:
            up = self.base.update(ops, t, weights, grads, masks, state["base"], seed)
            return Update(up.masks, up.survivors, {**state, "base": up.state}, up.info)
        counts = ops.swap_counts(masks, self.explore_fraction)  # parameter exploration, Eq. 1-2
        kept = ops.drop(masks, ops.abs_all(weights), counts)
        if isinstance(self.base, DropGrow) and not self.base.name == "set":
            scores = self.base.grow_scores(ops, t, weights, grads, kept, state["base"], seed)
        else:  # static (ERK / SNIP) and SET bases: random growth (docs/methods.md §4.1: NOT GIVEN, SET-style)
            scores = ops.random_scores_like(weights, step_seed(seed, t))
        new = ops.grow(kept, scores, counts)
        base_state = self.base.after_update(ops, state["base"], new) if isinstance(self.base, DropGrow) else state["base"]
        ops.require_counts(new, ops.count_active(masks), "suptickets exploration")
        dropped = ops.total(counts)
        return Update(new, kept, {**state, "base": base_state},
                      {"fraction": self.explore_fraction, "dropped": dropped, "grown": dropped, "exploration": True})

    def collect(self, ops, t, net, masks, state):
        """Superpose the network after iteration t as the next cheap ticket, then prune it."""
        k = state["t"] + 1
        ticket = ops.clone_all(net)
        pairs = bn_stat_pairs(list(net))
        stat_keys = {m for pair in pairs for m in pair} | {n for n in net if n.endswith("num_batches_tracked")}
        params = {n: v for n, v in ticket.items() if n not in stat_keys}
        prev = state["avg"]
        prev_params = None if prev is None else {n: prev[n] for n in params}
        tickets = state["tickets"] + [ticket] if (self.keep_tickets or self.averaging == "caa") else []
        tmasks = state["ticket_masks"] + [ops.clone_all(masks)] if (self.keep_tickets or self.averaging == "caa") else []
        if self.averaging == "cia":
            avg = ops.superpose_cia(prev_params, params, k)
        elif self.averaging == "cima":
            avg = ops.superpose_cima(prev_params, params, self.beta)
        else:
            avg = ops.caa([{n: tk[n] for n in params} for tk in tickets], tmasks)
        # BN statistics: running average of mean and std ([ST] §5), every BN layer at once
        avg.update(ops.average_bn_stats_all(prev, ticket, pairs, k, self.bn_avg))
        for n in net:
            if n.endswith("num_batches_tracked"):
                avg[n] = ticket[n]
        prunable = {n: avg[n] for n in masks}
        if self.prune_scope == "layer":
            active, sizes = ops.count_active(masks), ops.sizes(masks)
            pruned, pmasks = ops.reprune(prunable, densities={n: active[n] / sizes[n] for n in masks})
        else:
            active, sizes = ops.count_active(masks), ops.sizes(masks)
            pruned, pmasks = ops.reprune(prunable, density=sum(active.values()) / sum(sizes.values()))
        ultimate = {n: pruned.get(n, v) for n, v in avg.items()}
        ultimate = {n: ultimate[n] for n in net}  # network order
        running = ultimate if self.prune_each_step else {n: avg[n] for n in net}
        return {**state, "t": k, "avg": running, "tickets": tickets if self.keep_tickets else [],
                "ticket_masks": tmasks if self.keep_tickets or self.averaging == "caa" else [],
                "ultimate": ultimate, "ultimate_masks": pmasks}

    def config(self) -> dict:
        cfg = super().config()
        cfg["base"] = self.base.config()
        return cfg
