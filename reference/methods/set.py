"""SET: magnitude drop, random growth ([TH] §3.2, [EE] related work: "prun[es] weights with
smallest magnitude and re-introduc[es] some weights randomly").

The random grow scores come from a step-indexed stream, ``random_scores(shapes, step_seed(seed, t))``
(NumPy, copied to the device), so both backends and every DDP rank draw the same ones.
``random_source(shapes, t) -> {name: array}`` replaces the stream (tests inject scores this way).
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..schedules import step_seed
from .dynamic import DropGrow


@dataclass
class SET(DropGrow):
    random_source: Optional[Callable] = field(default=None, repr=False, compare=False)
    name = "set"

    def grow_scores(self, ops, t, weights, grads, kept, state, seed):
        if self.random_source is not None:
            shapes = {n: tuple(w.shape) for n, w in weights.items()}
            return ops.from_numpy_like(self.random_source(shapes, t), weights)
        return ops.random_scores_like(weights, step_seed(seed, t))
