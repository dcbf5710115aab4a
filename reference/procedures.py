"""Multi-phase procedures by name, each written once over an engine (``reference.engine`` /
``accel.engine``): ``run_procedure(cfg, split, on_record)`` picks the backend's engine and runs
``cfg.procedure``; one record per state / iteration goes to ``on_record``."""
from __future__ import annotations

from .acdc_procedure import run_acdc
from .cocktail import run_cocktail
from .cram_train import run_cram
from .d2sparse import run_d2
from .imp import run_imp

PROCEDURES = {"d2sparse": run_d2, "d2_baseline": run_d2, "d2_baseline_lb": run_d2, "imp": run_imp, "acdc": run_acdc,
              "cocktail": run_cocktail, "cram": run_cram}


def make_engine(cfg, split):
    if cfg.backend == "reference":
        from .engine import ReferenceEngine
        return ReferenceEngine(cfg, split)
    from accel.engine import AccelEngine
    return AccelEngine(cfg, split)


def run_procedure(cfg, split, on_record=None) -> dict:
    if cfg.procedure not in PROCEDURES:
        raise ValueError(f"procedure={cfg.procedure!r} is not a multi-phase procedure; choose one of {sorted(PROCEDURES)}")
    return PROCEDURES[cfg.procedure](make_engine(cfg, split), cfg, on_record=on_record)
