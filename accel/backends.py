"""The one place that chooses a backend: ``cfg.backend`` -> the engine of that package. The
procedures (``reference.procedures``) take the engine they are given, so the NumPy package never
imports this one."""
from __future__ import annotations

from twinsparse.reference.config import BACKENDS
from twinsparse.reference.engine import ReferenceEngine
from twinsparse.reference.procedures import run_procedure as _run_procedure



def backend_for(cfg, split):
    """The engine of ``cfg.backend`` ('reference': NumPy; 'accel': torch) over ``split``."""
    if cfg.backend == "reference":
        return ReferenceEngine(cfg, split)
    if cfg.backend == "accel":
        from .engine import AccelEngine
        return AccelEngine(cfg, split)
    raise ValueError(f"backend={cfg.backend!r} is not allowed; choose one of {list(BACKENDS)}")


def run_procedure(cfg, split, on_record=None, checkpoint=None, resume: bool = False, writer: bool = True) -> dict:
    """``reference.procedures.run_procedure`` on the backend ``cfg`` names."""
    return _run_procedure(backend_for(cfg, split), cfg, on_record=on_record, checkpoint=checkpoint, resume=resume,
                          writer=writer)
