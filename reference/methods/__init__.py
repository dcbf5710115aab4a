"""Sparse-training methods, each a small class on shared machinery, backend-agnostic: they call
the twin operators through an ``ops`` namespace (``reference.ops`` or ``accel.ops``)."""
from .base import INITS, InitContext, Method, Update
from .dense import Dense
from .dst_ee import DSTEE
from .dynamic import DropGrow
from .granet import GraNet
from .rigl import RigL
from .set import SET
from .snfs import SNFS, allocate_proportional
from .static import Static

METHODS = {"dense": Dense, "static": Static, "set": SET, "rigl": RigL, "snfs": SNFS, "granet": GraNet,
           "dst_ee": DSTEE}


def build(name: str, **options) -> Method:
    """A method by name, e.g. ``build("rigl", delta_t=100, t_end=3000)``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {sorted(METHODS)}")
    try:
        return METHODS[name](**options)
    except TypeError as e:
        raise ValueError(f"bad option for method {name!r}: {e}") from None


__all__ = ["Method", "InitContext", "Update", "DropGrow", "Dense", "Static", "SET", "RigL", "SNFS", "GraNet",
           "DSTEE", "METHODS", "INITS", "build", "allocate_proportional"]


def from_run_config(cfg, total_steps: int) -> Method:
    """The method object of a validated ``RunConfig`` for a run of ``total_steps`` iterations
    (t_end = floor(t_end_fraction * T); GraNet's prune_end = floor(prune_end_fraction * T))."""
    if cfg.method == "dense":
        return Dense()
    if cfg.method == "static":
        return Static(init=cfg.mask_init)
    common = dict(delta_t=cfg.delta_t, drop_fraction=cfg.drop_fraction, fraction_schedule=cfg.fraction_schedule,
                  t_start=cfg.t_start, t_end=int(cfg.t_end_fraction * total_steps), init=cfg.mask_init,
                  step_on_update=cfg.step_on_update)
    extra = {
        "set": {}, "rigl": {},
        "snfs": dict(momentum=cfg.snfs_momentum, redistribute=cfg.redistribute),
        "granet": dict(final_density=cfg.density, prune_start=cfg.t_start,
                       prune_end=int(cfg.prune_end_fraction * total_steps)),
        "dst_ee": dict(c=cfg.c, eps=cfg.eps, counter_init=cfg.counter_init, form=cfg.exploration_form),
    }[cfg.method]
    return build(cfg.method, **common, **extra)
