"""The method contract (jaxpruner-style, DESIGN.md): a method builds the initial masks and may
update them after an optimizer step; the Sparsifier owns everything else (masked step, state,
statistics). A method file only overrides the hooks it needs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class InitContext:
    """What a method sees when it builds the first masks."""
    weights: dict          # name -> weight tensor (prunable set, registration order)
    grads: dict            # name -> gradient tensor, or None when the method does not need them
    densities: dict        # name -> target density of that layer (resolved distribution)
    seed: int              # the Sparsifier's seed: every random mask decision derives from it


class Method:
    name = "base"
    needs_init_grads = False   # True: masks are built at the first step() from the gradients present then
    is_dense = False           # True: no masking at all (the dense baseline)

    def init_masks(self, ctx: InitContext) -> dict:
        raise NotImplementedError

    def after_step(self, sparsifier) -> None:
        """Called after every masked optimizer step (mask updates of dynamic methods go here)."""

    def config(self) -> dict:
        return {"name": self.name, **(asdict(self) if hasattr(self, "__dataclass_fields__") else {})}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state, got keys {sorted(state)}")
