"""Small pieces shared by the multi-phase procedures (D²-Sparse, IMP, AC/DC, CrAM, Sparse
Cocktail) and by both engines: seeds per phase, masking a network dict, the test metrics of a
record, and the method of one training phase (records and resumable stages: ``reference.stages``)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .methods import Preset, from_run_config


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for one phase / branch / mask draw, a pure function of (seed, keys)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys), 0xD2]).generate_state(1)[0])


def masked(net: dict, masks: dict) -> dict:
    """theta * M on the masked weights, every other entry as it is."""
    return {n: (v * masks[n] if n in masks else v) for n, v in net.items()}


def test_metrics(engine, net, data, prefix: str = "test") -> dict:
    """``{prefix}_acc / _nll / _ece`` of ``net`` on ``data`` = (x, y)."""
    return {f"{prefix}_{k}": v for k, v in engine.evaluate(net, *data).items()}


test_metrics.__test__ = False  # not a pytest test


def phase_method(pcfg, masks, n_train: int):
    """The method of a training phase started from given ``masks`` (None: the config's own)."""
    if masks is None:
        return None
    spe = -(-n_train // pcfg.batch_size)
    return Preset(from_run_config(pcfg, spe * pcfg.epochs, spe), masks)


def dense_with_rewind(engine, cfg, stages, rewind_epoch: int, x_dim: int, n_classes: int) -> dict:
    """The dense start of IMP and Sparse Cocktail, as the resumable stage 'dense': ``cfg.epochs``
    of dense training from ``engine.init_net`` (called also on resume: it sets up the engine's
    model), record 0 emitted. Returns {net: the trained network, rewind: the network after
    ``rewind_epoch`` (0: the initialisation)}."""
    t0 = engine.clock()
    net = engine.init_net(cfg, x_dim, n_classes)

    def dense(**kw):
        dense_cfg = replace(cfg, procedure="train", method="dense", density=1.0,
                            lr_schedule=cfg.lr_schedule_name()).validate()   # the procedure's LR schedule
        out = engine.train(dense_cfg, net, None, snapshot_epoch=rewind_epoch or None, **kw)
        stages.emit({"state": 0, "phase": "dense", "density": 1.0, **test_metrics(engine, out["net"], (
            engine.split.x_test, engine.split.y_test)), "time_s": engine.clock() - t0})
        return {"net": out["net"], "rewind": out["snapshot"] if rewind_epoch else net}
    return stages.train("dense", dense)
