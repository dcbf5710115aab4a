"""The method contract, written once and run on either backend (docs/methods.md §1.15, jaxpruner-style).

A method never touches arrays itself: it calls the twin operators through an ``ops`` namespace
(``reference.ops`` for NumPy, ``accel.ops`` for torch) that holds the same function names on both
backends. So the composition of a method (which score, which count, which schedule) is scalar
logic that exists once, and the conformance suite checks the operators it calls.

Hooks (all pure: they return new masks / state, the caller installs them):
    init_masks(ops, ctx)            -> masks at initialisation
    init_state(ops, masks)          -> method state (e.g. DST-EE counters)
    observe(ops, state, t, grads)   -> state after seeing iteration t's dense gradients (SNFS)
    due(t)                          -> whether the masks are updated at iteration t (1-based)
    update(ops, t, weights, grads, masks, state, seed) -> Update(masks, survivors, state, info)
``survivors`` are the positions that keep their weight and optimizer state through the update;
every other position (dropped, or grown: grown weights start at 0 with zeroed state) is zeroed.
``reset_optimizer_state`` additionally zeroes the whole optimizer state after the update (AC/DC).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

INITS = ("random", "magnitude", "snip")


@dataclass
class InitContext:
    weights: dict          # name -> weight array/tensor (prunable set, registration order)
    grads: Any             # name -> gradient, or None when the method needs none at init
    densities: dict        # name -> target density of the layer
    seed: int              # every random mask decision derives from it


@dataclass
class Update:
    masks: dict            # the new masks
    survivors: dict        # positions whose weights and optimizer state are kept (subset of masks)
    state: dict            # the method state after the update
    info: dict = field(default_factory=dict)  # scalars for the log (fraction, counts, ...)
    # True: after installing, every optimizer state slot of every parameter (not only the prunable
    # ones: biases, BN too) is set to 0 -- AC/DC's momentum reset at each decompression ([TH] §3.4.1)
    reset_optimizer_state: bool = False


def initial_masks(ops, ctx: InitContext, init: str) -> dict:
    """Masks at initialisation: exact-count random (docs/methods.md §1.5), per-layer magnitude (§1.3), or SNIP
    (§2.7: global |w g| at the overall density of the resolved distribution)."""
    if init == "random":
        return ops.random_masks(ops.random_scores_like(ctx.weights, ctx.seed), ctx.densities)
    if init == "magnitude":
        return ops.magnitude_masks(ctx.weights, ctx.densities)
    if init == "snip":
        sizes = ops.sizes(ctx.weights)
        kept = sum(ctx.densities[n] * sizes[n] for n in sizes)
        return ops.snip_masks(ctx.weights, ctx.grads, kept / sum(sizes.values()))
    raise ValueError(f"init={init!r} is not allowed; choose one of {list(INITS)}")


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init={init!r} is not allowed; choose one of {list(INITS)}")


class Method:
    name = "base"
    is_dense = False        # no masking at all (dense baseline)
    observes_grads = False  # observe() needs every step's dense gradients
    step_on_update = True   # run the optimizer step on a mask-update iteration too

    @property
    def needs_init_grads(self) -> bool:
        return getattr(self, "init", None) == "snip"

    def init_masks(self, ops, ctx: InitContext) -> dict:
        raise NotImplementedError

    def init_state(self, ops, masks: dict) -> dict:
        return {}

    def observe(self, ops, state: dict, t: int, grads: dict) -> dict:
        return state

    def due(self, t: int) -> bool:
        return False

    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        raise NotImplementedError(f"method {self.name!r} does not update masks")

    def update_after_step(self, t: int) -> bool:
        """True: the update due at t runs after t's optimizer step (with t's dense gradients)."""
        return False

    def collects(self, t: int) -> bool:
        """True: ``collect`` sees the whole network after t's optimizer step (Sup-tickets)."""
        return False

    def collect(self, ops, t: int, net: dict, masks: dict, state: dict) -> dict:
        return state

    def lr_override(self, t: int):
        """A learning rate the method imposes at iteration t (Sup-tickets' cyclic stage), or None."""
        return None

    def config(self) -> dict:
        cfg = {"name": self.name}
        if hasattr(self, "__dataclass_fields__"):
            cfg.update({f.name: getattr(self, f.name) for f in fields(self) if f.repr})
        return cfg
