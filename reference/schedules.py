"""Learning-rate schedules (pure scalar logic; accel imports these, no twin). SPEC §5.2."""
from __future__ import annotations

import math

import numpy as np


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


# --------------------------------------------------------------------------- dynamic sparse training
DROP_FRACTION_SCHEDULES = ("constant", "cosine", "linear")


def check_update_schedule(delta_t, t_start, t_end, drop_fraction, fraction_schedule) -> None:
    """Validate a drop-and-grow schedule (SPEC §3.2: all of these are NOT GIVEN, hence parameters)."""
    if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t <= 0:
        raise ValueError(f"delta_t={delta_t!r} is not allowed: the update interval must be an integer >= 1")
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}={v!r} is not allowed: it must be an integer >= 0 (a training iteration)")
    if t_end <= t_start:
        raise ValueError(f"t_end={t_end} is not after t_start={t_start}: mask updates need t_start < t_end")
    if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, (int, float)) or not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction={drop_fraction!r} is outside the allowed range [0, 1]")
    if fraction_schedule not in DROP_FRACTION_SCHEDULES:
        raise ValueError(f"fraction_schedule={fraction_schedule!r} is not allowed; choose one of {list(DROP_FRACTION_SCHEDULES)}")


def update_due(t: int, delta_t: int, t_start: int, t_end: int) -> bool:
    """RigL / DST-EE Alg. 1: update the masks at iteration t (1-based) when t mod ΔT = 0 and
    t_start <= t < t_end."""
    return t % delta_t == 0 and t_start <= t < t_end


def drop_fraction_at(t: int, f0: float, schedule: str, t_start: int, t_end: int) -> float:
    """Drop fraction at iteration t: constant f0; cosine f0/2 (1 + cos(pi (t - t_start)/(t_end - t_start)))
    (RigL's decay); linear f0 (1 - (t - t_start)/(t_end - t_start))."""
    if schedule == "constant":
        return float(f0)
    x = min(max((t - t_start) / (t_end - t_start), 0.0), 1.0)
    if schedule == "cosine":
        return float(f0) * 0.5 * (1.0 + math.cos(math.pi * x))
    if schedule == "linear":
        return float(f0) * (1.0 - x)
    raise ValueError(f"fraction_schedule={schedule!r} is not allowed; choose one of {list(DROP_FRACTION_SCHEDULES)}")


def gmp_density_at(t: int, d_init: float, d_final: float, t_start: int, t_end: int) -> float:
    """GMP cubic schedule, SPEC §5.5 (Zhu & Gupta 2017, EXTERNAL form), written in densities:
    s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3, clamped to [t0, t_end]."""
    x = min(max((t - t_start) / (t_end - t_start), 0.0), 1.0)
    s_i, s_f = 1.0 - d_init, 1.0 - d_final
    return 1.0 - (s_f + (s_i - s_f) * (1.0 - x) ** 3)


def step_seed(seed: int, t: int) -> int:
    """The seed of the random stream at iteration t (SET growth): a deterministic function of the
    run seed and the step only, so every backend and every DDP rank draws the same scores."""
    return int(np.random.SeedSequence([int(seed), int(t)]).generate_state(1, dtype=np.uint32)[0])


def cyclic_lr(i: int, cycle: int, lr_low: float = 0.001, lr_high: float = 0.005) -> float:
    """Sup-tickets cyclical learning rate, [ST] Eq. (3), on the local iteration i >= 1 of the
    superposing stage (SPEC §5.1 resolution):

        t(i)  = (mod(i - 1, C) + 1) / C
        a(i)  = (1 - 2t) a1 + 2t a2        for 0 < t <= 1/2
              = (2 - 2t) a2 + (2t - 1) a1  for 1/2 < t <= 1

    with a1 = ``lr_low`` (0.001) and a2 = ``lr_high`` (0.005): it rises to a2 at mid-cycle and is
    back at exactly a1 on the cycle's last iteration, where the cheap ticket is collected."""
    if isinstance(cycle, bool) or not isinstance(cycle, int) or cycle < 1:
        raise ValueError(f"cycle length C={cycle!r} must be an integer >= 1 (iterations)")
    if isinstance(i, bool) or not isinstance(i, int) or i < 1:
        raise ValueError(f"i={i!r} must be the 1-based iteration within the superposing stage")
    t = ((i - 1) % cycle + 1) / cycle
    if t <= 0.5:
        return (1 - 2 * t) * lr_low + 2 * t * lr_high
    return (2 - 2 * t) * lr_high + (2 * t - 1) * lr_low
