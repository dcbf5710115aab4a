"""The NumPy engine of the multi-phase procedures (D²-Sparse, IMP, ...; ``reference.procedures``):
the MLP of ``reference.nn`` trained by ``reference.train.train_reference`` phase by phase.

An engine offers: ``ops`` (the twin operators), ``split`` (D = split.x_train), ``clock()``,
``checkpoint_io()``, ``cram_backend(cfg)``, ``cocktail_step`` (the backend's modules for CrAM and
Sparse Cocktail), ``init_net(cfg, n_in, n_classes)``, ``prunable(net)``, ``train(phase_cfg, net, masks, batches)``
-> {net, masks, updates, history, snapshot, final_masks} ("masks" only when masks were given,
"final_masks" the masks at the end of every run), ``grads(net, x, y)`` (dense gradients of the
prunable weights), ``evaluate(net, x, y)``, ``predict(net, x)`` (logits) and ``bn_recalibrate(net, x)``. ``accel.engine.AccelEngine``
offers the same on torch. A network is one dict of parameters and BN buffers (the layout
Sup-tickets merges too)."""
from __future__ import annotations

import time

import numpy as np

from . import cocktail_step, ops
from .checkpoint import IO
from .bn import bn_recalibrate, bnupdate_batches
from .data import Split
from .procedure_tools import phase_method
from .nn import init_mlp, mlp_loss_and_grads
from .prunable import select_prunable
from .train import evaluate, load_net, predict, train_reference


class ReferenceEngine:
    """The NumPy backend of the procedures (see the module docstring)."""
    name = "reference"
    ops = ops
    cocktail_step = cocktail_step

    @staticmethod
    def checkpoint_io() -> tuple:
        """(save, load) of procedure checkpoints (pickle, content-hashed)."""
        return IO

    def cram_backend(self, cfg):
        """What the 'cram' procedure trains with: the NumPy MLP's CrAM loop."""
        from .cram_procedure import ReferenceCramBackend
        return ReferenceCramBackend(cfg, self.split)

    def __init__(self, cfg, split):
        if cfg.model != "mlp":
            raise ValueError(f"the reference backend trains model='mlp' only, got {cfg.model!r}")
        """``split.x_train`` is the low-data set D; the test split is evaluated after each epoch."""
        self.cfg, self.dtype = cfg, np.dtype(cfg.dtype)
        empty = np.zeros((0, split.x_train.shape[1]), self.dtype)
        self.split = Split(x_train=split.x_train.astype(self.dtype), y_train=split.y_train, x_holdout=empty,
                           y_holdout=np.zeros(0, np.int64), x_test=split.x_test.astype(self.dtype),
                           y_test=split.y_test)
        self.template = None

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    def init_net(self, cfg, n_in: int, n_classes: int) -> dict:
        params, buffers = init_mlp((n_in, *cfg.hidden, n_classes), batchnorm=cfg.batchnorm, seed=cfg.seed,
                                   dtype=self.dtype)
        self.template = (params, buffers)
        return {**params, **buffers}

    def _split(self, net: dict) -> tuple:
        return load_net(net, *self.template)

    def prunable(self, net: dict) -> list:
        return select_prunable([n for n in self.template[0] if n.startswith("fc.") and n.endswith(".weight")],
                               self.cfg.include, self.cfg.exclude)

    def train(self, pcfg, net: dict, masks, batches=None, **kw) -> dict:
        method = phase_method(pcfg, masks, len(self.split.y_train))
        out = train_reference(pcfg, self.split, method=method, init_net=net, batches=batches, **kw)
        return {"net": {**out["params"], **out["buffers"]}, "masks": out["masks"] if masks is not None else None,
                "updates": out["updates"], "history": out["history"],
                "snapshot": out["snapshot"], "final_masks": out["masks"]}

    def grads(self, net: dict, x, y) -> dict:
        params, buffers = self._split(net)
        _, g, _, _ = mlp_loss_and_grads(params, buffers, np.asarray(x, self.dtype), y, train=True)
        return {n: g[n] for n in self.prunable(net)}

    def evaluate(self, net: dict, x, y) -> dict:
        params, buffers = self._split(net)
        return evaluate(params, buffers, np.asarray(x, self.dtype), y)

    def predict(self, net: dict, x) -> np.ndarray:
        """Logits of ``net`` on ``x`` (eval mode)."""
        params, buffers = self._split(net)
        return predict(params, buffers, np.asarray(x, self.dtype))

    def bn_recalibrate(self, net: dict, x) -> dict:
        params, buffers = self._split(net)
        if not buffers:
            return net
        x = np.asarray(x, self.dtype)
        new = bn_recalibrate(params, buffers, [x[i] for i in bnupdate_batches(len(x), self.cfg.batch_size)])
        return {**params, **new}
