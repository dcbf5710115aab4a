"""Small pieces shared by the multi-phase procedures (D²-Sparse, IMP, AC/DC, CrAM, Sparse
Cocktail) and by both engines: seeds per phase, masking a network dict, the test metrics of a
record, and the method of one training phase (records and resumable stages: ``reference.stages``)."""
from __future__ import annotations

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
