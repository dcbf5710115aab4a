"""Static sparse training: one mask at initialisation, fixed for the whole run ([ST] §4 "ERK",
"SNIP" baselines): random at the layer densities (docs/methods.md §1.5), per-layer magnitude (§1.3), or
SNIP at the first step's gradient (§2.7)."""
from dataclasses import dataclass

from .base import InitContext, Method, check_init, initial_masks


@dataclass
class Static(Method):
    init: str = "random"
    name = "static"

    def __post_init__(self):
        check_init(self.init)

    def init_masks(self, ops, ctx: InitContext) -> dict:
        return initial_masks(ops, ctx, self.init)
