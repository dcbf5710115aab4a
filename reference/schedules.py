"""Learning-rate schedules (pure scalar logic; accel imports these, no twin). SPEC §5.2."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "cosine") -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    - constant: base_lr
    - cosine:   base_lr * (1 + cos(pi * step / total_steps)) / 2, per step ([EE] CIFAR recipe shape)
    - step:     base_lr, x0.1 from floor(0.5 T), x0.01 from floor(0.75 T) ([ST] CIFAR recipe, SPEC §5.2)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step={step} is outside [0, total_steps={total_steps}]")
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if schedule == "step":
        if step >= math.floor(0.75 * total_steps):
            return base_lr * 0.01
        if step >= math.floor(0.5 * total_steps):
            return base_lr * 0.1
        return base_lr
    raise ValueError(f"schedule={schedule!r} is not allowed; choose one of ['constant', 'cosine', 'step']")
