"""AC/DC -- Alternating Compressed / DeCompressed training as a method ([TH] Ch. 3, Alg. 1,
§3.3.2, §3.4.1; docs/methods.md §6.1, §6.2).

The phase plan (``reference.acdc_ops.acdc_phases``, epochs) is turned into iterations with
``steps_per_epoch``: epoch e covers iterations e*S+1 .. (e+1)*S (1-based t). A mask update is due
at the first iteration of every phase except the initial dense warm-up (masks start all-ones):

    entering a compressed phase   ([TH] Alg. 1 l.3-5): theta <- T_k(theta); m <- 1[theta != 0]
        (``ops.acdc_compress``: global Top-K by default, uniform per layer, global with the first
        and last layer dense, or 2:4; the mask is the support of the compressed weights, so it
        holds fewer than k ones when selected weights are exactly 0). survivors = m: pruned
        weights and their optimizer state become 0, the momentum of the kept ones is kept
        (docs/methods.md §6.1: "reset at compression starts: NOT GIVEN -> no reset, buffers masked").
    entering a decompressed phase (Alg. 1 l.7-8): m <- 1 and every optimizer state slot of every
        parameter <- 0 ("We reset SGD momentum at the beginning of every decompression phase",
        [TH] §3.4.1) -- ``Update.reset_optimizer_state``, honoured by both training loops.

The optimizer steps on update iterations too (the phase's first mini-batch is trained on the new
support, Alg. 1 l.10-13). ``density`` is the target density of the compressed phases (of the
pruned layers with 'first_last_dense'; 'nm24' keeps 2 of every 4, density 0.5). The update info
carries the phase index, whether it compresses, and, from the second compression on, the change
between consecutive compression masks (docs/methods.md §1.14: XOR over the previous mask's kept weights and
over |P|); the method state keeps the last compression mask for that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..acdc_ops import IMAGENET_LENGTHS, acdc_phases, phase_at, phase_entered, scaled_acdc_lengths
from .base import InitContext, Method, Update

DISTRIBUTIONS = ("global", "uniform", "first_last_dense", "nm24")
LENGTH_KEYS = ("warmup", "compressed", "decompressed", "final_decompressed", "final_compressed")


PLANS = ("thesis", "scaled")


def acdc_lengths(total_epochs: int, plan: str = "thesis", **given) -> dict:
    """The phase lengths for ``total_epochs``: each of ``LENGTH_KEYS`` given (not None) is used as
    is; every other one is the thesis value (``plan="thesis"``, the default: 10/5/5/10/15 kept for
    any budget, the alternating block grows or shrinks, [TH] §3.4.3 "preserving the duration of each
    compressed and decompressed phase") or the thesis value scaled to the budget (``plan="scaled"``,
    ``scaled_acdc_lengths``: a project choice for miniature runs, not in the thesis). The plan must
    fit the budget exactly (``acdc_phases`` raises ValueError naming the values and the nearest
    budgets that fit)."""
    if plan not in PLANS:
        raise ValueError(f"plan={plan!r} is not allowed; choose one of {list(PLANS)}")
    unknown = sorted(set(given) - set(LENGTH_KEYS))
    if unknown:
        raise ValueError(f"unknown AC/DC phase length(s) {unknown}; allowed: {list(LENGTH_KEYS)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    if len(chosen) == len(LENGTH_KEYS):
        lengths = chosen
    else:
        lengths = {**(IMAGENET_LENGTHS if plan == "thesis" else scaled_acdc_lengths(total_epochs)), **chosen}
    acdc_phases(total_epochs, **lengths)  # validates: the phases must fill the budget
    return lengths


@dataclass
class ACDC(Method):
    density: float = 0.1
    total_epochs: int = 100
    steps_per_epoch: int = 1
    warmup: int = 10
    compressed: int = 5
    decompressed: int = 5
    final_decompressed: int = 10
    final_compressed: int = 15
    distribution: str = "global"
    # the dimension 2:4 groups run along: the GEMM reduction dimension (dim 1), or a dict layer ->
    # dimension; accel's Sparsifier fills it from the model (0 for a ConvTranspose weight)
    nm_axis: Any = "reduction"
    phases: list = field(init=False, repr=False)
    name = "acdc"
    step_on_update = True

    def __post_init__(self):
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) or not 0.0 < self.density < 1.0:
            raise ValueError(f"density={self.density!r} is outside the allowed range (0, 1): it is the density "
                             f"of the compressed phases")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution={self.distribution!r} is not allowed; choose one of {list(DISTRIBUTIONS)}")
        if self.distribution == "nm24" and self.density != 0.5:
            raise ValueError(f"distribution='nm24' keeps 2 of every 4 weights (density 0.5); got density={self.density}")
        if isinstance(self.steps_per_epoch, bool) or not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch!r} must be an integer >= 1")
        self.phases = acdc_phases(self.total_epochs, **{k: getattr(self, k) for k in LENGTH_KEYS})

    def init_masks(self, ops, ctx: InitContext) -> dict:
        return ops.ones_like_masks(ctx.weights)  # dense warm-up (or C1 compresses at t = 1 without one)

    def init_state(self, ops, masks: dict) -> dict:
        return {"last_compressed": None, "n_compressions": 0}

    def epoch_of(self, t: int) -> int:
        return (t - 1) // self.steps_per_epoch

    def due(self, t: int) -> bool:
        e, r = divmod(t - 1, self.steps_per_epoch)
        if r or not 0 <= e < self.total_epochs:
            return False
        p = phase_entered(self.phases, e)
        return p is not None and not (e == 0 and p.kind == "dense")

    def _compress(self, ops, weights):
        if self.distribution == "nm24":
            return ops.acdc_compress(weights, nm=(2, 4), nm_axis=self.nm_axis)[1]
        return ops.acdc_compress(weights, sparsity=1.0 - self.density,
                                 distribution="uniform" if self.distribution == "uniform" else "global",
                                 first_last_dense=self.distribution == "first_last_dense")[1]

    def update(self, ops, t, weights, grads, masks, state, seed) -> Update:
        e = self.epoch_of(t)
        p = phase_at(self.phases, e)
        info = {"epoch": e, "phase_index": self.phases.index(p), "compressed": int(p.kind == "sparse")}
        if p.kind == "dense":  # decompression: full support, optimizer state reset
            new = ops.ones_like_masks(weights)
            return Update(masks=new, survivors=new, state=state, info={**info, "target_density": 1.0},
                          reset_optimizer_state=True)
        new = self._compress(ops, weights)
        info["target_density"] = self.density
        if state["last_compressed"] is not None:
            change = ops.mask_change(state["last_compressed"], new)
            info.update(compressed_mask_change=change["xor_over_kept"],
                        compressed_mask_change_total=change["xor_over_total"])
        state = {"last_compressed": new, "n_compressions": state["n_compressions"] + 1}
        return Update(masks=new, survivors=new, state=state, info=info)


def acdc_from_run_config(cfg, steps_per_epoch: int) -> ACDC:
    """The ACDC method of a validated ``RunConfig`` (lengths from the acdc_* fields and ``acdc_plan``,
    see ``acdc_lengths``)."""
    lengths = acdc_lengths(cfg.epochs, plan=cfg.acdc_plan, **{k: getattr(cfg, f"acdc_{k}") for k in LENGTH_KEYS})
    return ACDC(density=cfg.density, total_epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                distribution=cfg.acdc_distribution, **lengths)
