"""The dense baseline: every weight kept, the optimizer step untouched."""
from .base import InitContext, Method


class Dense(Method):
    name = "dense"
    is_dense = True

    def init_masks(self, ops, ctx: InitContext) -> dict:
        return ops.ones_like_masks(ctx.weights)
