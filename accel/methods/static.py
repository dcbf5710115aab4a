"""Static sparse training: one mask at initialisation, fixed for the whole run.

- ``random``:    exactly k_l random positions per layer (SPEC §2.4), from NumPy random scores
                 seeded by the Sparsifier's seed (identical on every backend and rank);
- ``magnitude``: per-layer top-k of |w| at the layer densities (SPEC §2.2);
- ``snip``:      global top-k of |w * g| at the first step's gradient (SPEC §2.7), with the
                 overall density of the resolved distribution.
"""
from dataclasses import dataclass

from .. import masks as M
from .. import scores as S
from .base import InitContext, Method

INITS = ("random", "magnitude", "snip")


@dataclass
class Static(Method):
    init: str = "random"
    name = "static"

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is not allowed; choose one of {list(INITS)}")

    @property
    def needs_init_grads(self):
        return self.init == "snip"

    def init_masks(self, ctx: InitContext) -> dict:
        if self.init == "random":
            shapes = {n: tuple(w.shape) for n, w in ctx.weights.items()}
            device = next(iter(ctx.weights.values())).device
            return M.random_masks(M.random_scores(shapes, ctx.seed, device=device), ctx.densities)
        if self.init == "magnitude":
            return M.magnitude_masks(ctx.weights, ctx.densities)
        n_total = sum(w.numel() for w in ctx.weights.values())
        kept = sum(ctx.densities[n] * w.numel() for n, w in ctx.weights.items())
        return S.snip_masks(ctx.weights, ctx.grads, kept / n_total)
