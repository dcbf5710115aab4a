"""DST-EE ([EE] Methodology, Eq. 1, Alg. 1): magnitude drop, growth by the acquisition function

    S = |dL/dW| + c * ln(t) / (N + eps)

with the activation counter N initialised to the mask (Alg. 1; ``counter_init="zeros"`` is the
text's version) and incremented with the new mask after every update (docs/methods.md §3.2 resolutions 2-4).
``form="text"`` uses the printed exploration term ln(t) / (N + c) instead (docs/methods.md §3.2 item 1).
c and eps are NOT GIVEN in the paper: they are parameters, reported with every result.

The update window is Alg. 1's by default: updates every ΔT while t < T_end, T_end the total number
of iterations, with the same drop fraction at every update (``fraction_schedule="constant"``);
RigL's 0.75 T window with the cosine decay is an option (docs/methods.md §3.1). The state also keeps
the positions that survived the last drop (``kept``), so a training loop can tell the grown
weights apart and measure the exploitation degree of Eq. 2-3 (``reference.exploitation``).
"""
from dataclasses import dataclass, replace

from ..dst import COUNTER_INITS, check_exploration
from .dynamic import DropGrow


@dataclass
class DSTEE(DropGrow):
    c: float = 1e-3
    eps: float = 1.0
    counter_init: str = "mask"
    form: str = "eq1"
    fraction_schedule: str = "constant"
    name = "dst_ee"

    def __post_init__(self):
        super().__post_init__()
        check_exploration(self.c, self.eps, self.form)
        if self.counter_init not in COUNTER_INITS:
            raise ValueError(f"counter_init={self.counter_init!r} is not allowed; choose one of {list(COUNTER_INITS)}")

    def init_state(self, ops, masks):
        return {"counters": ops.init_counters(masks, self.counter_init), "kept": ops.clone_all(masks)}

    def grow_scores(self, ops, t, weights, grads, kept, state, seed):
        return ops.dst_ee_scores(grads, state["counters"], t, self.c, self.eps, self.form)

    def after_update(self, ops, state, masks):
        return {**state, "counters": ops.increment_counters(state["counters"], masks)}

    def update(self, ops, t, weights, grads, masks, state, seed):
        up = super().update(ops, t, weights, grads, masks, state, seed)
        return replace(up, state={**up.state, "kept": up.survivors})
