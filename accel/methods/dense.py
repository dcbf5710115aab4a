"""The dense baseline: every weight kept, the optimizer step untouched."""
import torch

from .base import InitContext, Method


class Dense(Method):
    name = "dense"
    is_dense = True

    def init_masks(self, ctx: InitContext) -> dict:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in ctx.weights.items()}
