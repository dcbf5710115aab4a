"""Multi-phase procedures by name, each written once over a backend (``reference.engine.
ReferenceEngine`` or ``accel.engine.AccelEngine``: the array operators, the training of a phase,
the optimizer step, checkpoint I/O). ``run_procedure(engine, cfg)`` runs ``cfg.procedure`` on the
backend it is given (the code above both packages chooses it: ``accel.backends``); one record
per state / iteration goes to ``on_record``. Every procedure takes a ``reference.stages.Stages``
(records, update log, resumable stages), so each is checkpointed and resumed the same way."""
from __future__ import annotations

from .acdc_procedure import run_acdc
from .cocktail_procedure import run_cocktail
from .cram_procedure import run_cram
from .d2sparse import run_d2
from .config import run_to_dict
from .imp import run_imp
from .stages import Stages

PROCEDURES = {"d2sparse": run_d2, "d2_baseline": run_d2, "d2_baseline_lb": run_d2, "imp": run_imp, "acdc": run_acdc,
              "cocktail": run_cocktail, "cram": run_cram}


def run_procedure(engine, cfg, on_record=None, checkpoint: str | None = None, resume: bool = False,
                  writer: bool = True) -> dict:
    """``checkpoint``: the procedure checkpoint, saved atomically after every stage (and each
    training phase's epochs beside it, ``reference.stages``); ``resume``: continue from it when it
    exists; ``writer``: False on DDP ranks > 0 (they read checkpoints, never write them)."""
    if cfg.procedure not in PROCEDURES:
        raise ValueError(f"procedure={cfg.procedure!r} is not a multi-phase procedure; choose one of {sorted(PROCEDURES)}")
    stages = Stages(on_record, path=checkpoint, config=run_to_dict(cfg), resume=resume,
                    io=engine.checkpoint_io() if checkpoint else None, writer=writer)
    return PROCEDURES[cfg.procedure](engine, cfg, stages=stages)
