"""Sparse-training methods, each a small class on shared machinery, backend-agnostic: they call
the twin operators through an ``ops`` namespace (``reference.ops`` or ``accel.ops``)."""
from .acdc import ACDC, acdc_from_run_config, acdc_lengths
from .base import INITS, InitContext, Method, Update
from .dense import Dense
from .dst_ee import DSTEE
from .dynamic import DropGrow
from .gmp import GMP
from .granet import GraNet
from .preset import Preset
from .rigl import RigL
from .set import SET
from .snfs import SNFS, allocate_proportional
from .static import Static
from .suptickets import SupTickets

METHODS = {"dense": Dense, "static": Static, "set": SET, "rigl": RigL, "snfs": SNFS, "granet": GraNet,
           "dst_ee": DSTEE, "gmp": GMP, "acdc": ACDC}


def build(name: str, **options) -> Method:
    """A method by name, e.g. ``build("rigl", delta_t=100, t_end=3000)``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {sorted(METHODS)}")
    try:
        return METHODS[name](**options)
    except TypeError as e:
        raise ValueError(f"bad option for method {name!r}: {e}") from None


__all__ = ["Method", "InitContext", "Update", "DropGrow", "Dense", "Static", "SET", "RigL", "SNFS", "GraNet",
           "DSTEE", "GMP", "ACDC", "acdc_lengths", "SupTickets", "Preset", "METHODS", "INITS", "build", "allocate_proportional"]


def from_run_config(cfg, total_steps: int, steps_per_epoch: int = 1) -> Method:
    """The method object of a validated ``RunConfig`` for a run of ``total_steps`` iterations
    (t_end = floor(t_end_fraction * T) with the method's default window, ``RunConfig.dst_window``;
    GraNet's prune_end = floor(prune_end_fraction * T)); with ``suptickets`` the method is wrapped in
    Sup-tickets (C = st_cycle_epochs epochs, at least 1 step)."""
    from ..config import method_options   # the run fields declared as options of each class
    method = _base_from_run_config(cfg, total_steps, steps_per_epoch, method_options)
    if not getattr(cfg, "suptickets", False):
        return method
    return SupTickets(base=method, total_steps=total_steps, cycle=max(1, round(cfg.st_cycle_epochs * steps_per_epoch)),
                      **method_options(cfg, SupTickets))


def _base_from_run_config(cfg, total_steps: int, steps_per_epoch: int, method_options) -> Method:
    if cfg.method == "dense":
        return Dense()
    if cfg.method == "static":
        return Static(init=cfg.mask_init)
    if cfg.method == "acdc":  # phases in epochs -> iterations (steps_per_epoch)
        return acdc_from_run_config(cfg, steps_per_epoch)
    if cfg.method == "gmp":
        return GMP(final_density=cfg.density, delta_t=cfg.delta_t, prune_start=cfg.t_start,
                   prune_end=max(cfg.t_start + 1, int(cfg.prune_end_fraction * total_steps)), **method_options(cfg, GMP))
    t_end_fraction, fraction_schedule = cfg.dst_window()   # DST-EE: Alg. 1's window by default
    common = dict(delta_t=cfg.delta_t, drop_fraction=cfg.drop_fraction, fraction_schedule=fraction_schedule,
                  t_start=cfg.t_start, t_end=int(t_end_fraction * total_steps), init=cfg.mask_init,
                  step_on_update=cfg.step_on_update)
    extra = {
        "set": {}, "rigl": {},
        "snfs": method_options(cfg, SNFS),
        "granet": dict(final_density=cfg.density, prune_start=cfg.t_start,
                       prune_end=int(cfg.prune_end_fraction * total_steps)),
        "dst_ee": method_options(cfg, DSTEE),
    }[cfg.method]
    return build(cfg.method, **common, **extra)
