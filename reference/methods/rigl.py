"""RigL: magnitude drop, growth by |dense gradient| ([EE] related work; [TH] §2.2.2: "replacing
them with connections for which the gradients have the highest magnitude")."""
from dataclasses import dataclass

from .dynamic import DropGrow


@dataclass
class RigL(DropGrow):
    name = "rigl"

    def grow_scores(self, ops, t, weights, grads, kept, state, seed):
        return ops.abs_all(grads)
