"""Learning-rate, drop-fraction and sparsity schedules: pure scalar logic, written once here and
imported by accel (no twin). docs/methods.md §1.8 (learning rates), §2.2 (drop fraction), §2.5 (GMP).

Whole-run learning-rate schedules (``RunConfig.lr_schedule``), each on the optimizer step s
(0-based) of a run of T steps, S steps per epoch:

- ``constant``: the base rate.
- ``cosine``: base * (1 + cos(pi s / T)) / 2, per step (DST-EE §Experiments: "cosine annealing").
- ``step``: x0.1 from step floor(T/2), x0.01 from floor(3T/4) (Sup-tickets §4.1: "decayed by 10x at
  the half and three-quarters of the training stage").
- ``warmup_cosine``: linear warm-up for W epochs, then cosine to 0, stepped once per epoch (thesis
  App. A.2, AC/DC: "warm-up phase of 5 epochs, when the learning rate was linearly increased to
  0.256"; thesis §5.4, CrAM: "linearly increased for the first 5 epochs until it reaches a maximum
  value of 0.2, after which it is decreased at each epoch, using a cosine scheduler").
- ``cyclic_cosine``: CyclicCosineDecay (Sparse Cocktail Tables 5-6: init_epoch 100, interval 10,
  min_lr 0.001, restart_lr 0.01, base 0.1), stepped once per epoch.

Superposing-stage schedules of Sup-tickets (``RunConfig.st_lr_schedule``), on the stage's own
iteration i >= 1 with cycle length C: ``eq3`` (Sup-tickets Eq. 3, the default), ``fge`` (the
cyclical rate of Garipov et al. 2018) and ``swa`` (the cyclical rate of Izmailov et al. 2018),
the two schedules Sup-tickets compares against in Table 7 within the same range [lr_low, lr_high].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LR_SCHEDULES = ("constant", "cosine", "step", "warmup_cosine", "cyclic_cosine")
PER_EPOCH_SCHEDULES = ("warmup_cosine", "cyclic_cosine")


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}={v!r} must be an integer >= {lo}")
    return v


def _check_rate(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}={v!r} must be a finite learning rate >= 0")
    return float(v)


@dataclass(frozen=True)
class LRSchedule:
    """A whole-run learning-rate schedule and its parameters (``lr_at`` evaluates it).

    ``steps_per_epoch`` turns steps into epochs for the per-epoch schedules; ``warmup_epochs`` is
    W of ``warmup_cosine``; ``cycle_init_epochs``, ``cycle_interval``, ``min_lr`` and
    ``restart_lr`` are CyclicCosineDecay's init_epoch, interval, min_lr and restart_lr."""
    name: str = "cosine"
    steps_per_epoch: int = 1
    warmup_epochs: int = 5
    cycle_init_epochs: int = 100
    cycle_interval: int = 10
    min_lr: float = 0.001
    restart_lr: float = 0.01

    def __post_init__(self):
        if self.name not in LR_SCHEDULES:
            raise ValueError(f"schedule={self.name!r} is not allowed; choose one of {list(LR_SCHEDULES)}")
        _check_int("steps_per_epoch", self.steps_per_epoch, 1)
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        _check_int("cycle_init_epochs", self.cycle_init_epochs, 1)
        _check_int("cycle_interval", self.cycle_interval, 1)
        _check_rate("min_lr", self.min_lr)
        _check_rate("restart_lr", self.restart_lr)


def lr_at(step: int, total_steps: int, base_lr: float, schedule="cosine") -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``; ``schedule`` is a name
    of ``LR_SCHEDULES`` (default parameters) or an ``LRSchedule``. See the module docstring.

    ``warmup_cosine`` at epoch e = step // S of E = T / S epochs, warm-up W: base (e + 1) / W for
    e < W, else base (1 + cos(pi (e - W) / (E - W))) / 2.
    ``cyclic_cosine`` at epoch e, init_epoch e0, interval I: min + (base - min)(1 + cos(pi e / e0)) / 2
    for e < e0, else min + (restart - min)(1 + cos(pi ((e - e0) mod I) / I)) / 2.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step={step} is outside [0, total_steps={total_steps}]")
    if not isinstance(schedule, LRSchedule):
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is not allowed; choose one of {list(LR_SCHEDULES)}")
        schedule = LRSchedule(name=schedule)
    name = schedule.name
    if name == "constant":
        return base_lr
    if name == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if name == "step":
        if step >= math.floor(0.75 * total_steps):
            return base_lr * 0.01
        if step >= math.floor(0.5 * total_steps):
            return base_lr * 0.1
        return base_lr
    e = step // schedule.steps_per_epoch
    if name == "warmup_cosine":
        w, epochs = schedule.warmup_epochs, total_steps / schedule.steps_per_epoch
        if e < w:
            return base_lr * (e + 1) / w
        if epochs <= w:
            raise ValueError(f"warmup_cosine: the warm-up of {w} epochs fills the whole run of {epochs:g} epochs; "
                             f"lower lr_warmup_epochs below the number of epochs")
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (e - w) / (epochs - w)))
    lo = schedule.min_lr                                    # cyclic_cosine
    e0, period = schedule.cycle_init_epochs, schedule.cycle_interval
    if e < e0:
        return lo + (base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * e / e0))
    return lo + (schedule.restart_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * ((e - e0) % period) / period))


# --------------------------------------------------------------------------- dynamic sparse training
DROP_FRACTION_SCHEDULES = ("constant", "cosine", "linear")


def check_update_schedule(delta_t, t_start, t_end, drop_fraction, fraction_schedule) -> None:
    """Validate a drop-and-grow schedule (docs/methods.md §2.1: all of these are NOT GIVEN, hence parameters)."""
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
    """GMP cubic schedule, docs/methods.md §2.4 (Zhu & Gupta 2017, EXTERNAL form), written in densities:
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
    superposing stage (docs/methods.md §4.2: i counts from the start of the stage, so every cycle
    ends on a collection even when 0.9 T is not a multiple of C):

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


STAGE_LR_SCHEDULES = ("eq3", "fge", "swa")


def _stage_t(i: int, cycle: int) -> float:
    if isinstance(cycle, bool) or not isinstance(cycle, int) or cycle < 1:
        raise ValueError(f"cycle length C={cycle!r} must be an integer >= 1 (iterations)")
    if isinstance(i, bool) or not isinstance(i, int) or i < 1:
        raise ValueError(f"i={i!r} must be the 1-based iteration within the superposing stage")
    return ((i - 1) % cycle + 1) / cycle


def stage_lr(i: int, cycle: int, lr_low: float = 0.001, lr_high: float = 0.005, kind: str = "eq3") -> float:
    """The learning rate at iteration i >= 1 of Sup-tickets' superposing stage, in the range
    [lr_low, lr_high], for the three schedules of Sup-tickets Table 7 (t = (mod(i-1, C) + 1) / C):

    - ``eq3``: Sup-tickets Eq. 3 (``cyclic_lr``): low -> high at mid-cycle -> low at the cycle's end.
    - ``fge``: Garipov et al. 2018, Eq. 2 with alpha1 = high, alpha2 = low: (1 - 2t) high + 2t low for
      t <= 1/2, (2 - 2t) low + (2t - 1) high after: high -> low at mid-cycle -> high (Sup-tickets
      Fig. 2 top). The stage starts with a jump to the high rate.
    - ``swa``: Izmailov et al. 2018, Eq. 1 with alpha1 = high, alpha2 = low: (1 - t) high + t low, a
      saw-tooth falling to low at the cycle's end and jumping back ("the aggressive rise of the
      learning rate" that Eq. 3 was made to avoid, Sup-tickets §3.2.1).

    Tickets are collected at the lowest rate of every cycle (Sup-tickets §5: "In all schedules,
    Sup-tickets are collected at the lowest learning rate stage"): ``stage_collects``."""
    if kind == "eq3":
        return cyclic_lr(i, cycle, lr_low, lr_high)
    t = _stage_t(i, cycle)
    if kind == "fge":
        if t <= 0.5:
            return (1 - 2 * t) * lr_high + 2 * t * lr_low
        return (2 - 2 * t) * lr_low + (2 * t - 1) * lr_high
    if kind == "swa":
        return (1 - t) * lr_high + t * lr_low
    raise ValueError(f"stage schedule {kind!r} is not allowed; choose one of {list(STAGE_LR_SCHEDULES)}")


def stage_collect_offset(cycle: int, kind: str = "eq3") -> int:
    """The position (1..C) within each cycle at which ``stage_lr`` is lowest and the cheap ticket is
    collected: C for ``eq3`` and ``swa`` (the cycle's last iteration), floor(C/2) (at least 1) for
    ``fge`` (mid-cycle: t = 1/2 exactly when C is even; for an odd C the two middle iterations have
    the same rate and the first is taken)."""
    if kind not in STAGE_LR_SCHEDULES:
        raise ValueError(f"stage schedule {kind!r} is not allowed; choose one of {list(STAGE_LR_SCHEDULES)}")
    _stage_t(1, cycle)
    return max(1, cycle // 2) if kind == "fge" else cycle


def stage_collects(i: int, cycle: int, kind: str = "eq3") -> bool:
    """True when iteration i >= 1 of the superposing stage collects a cheap ticket (see above)."""
    _stage_t(i, cycle)
    return (i - 1) % cycle + 1 == stage_collect_offset(cycle, kind)
