"""The torch engine of the multi-phase procedures (written once in ``reference.procedures``): any
model of ``accel.models`` trained phase by phase by ``accel.train.train_accel`` with the
Sparsifier. Same interface as ``reference.engine.ReferenceEngine``; a network is a state dict
(parameters and buffers, detached clones)."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from twinsparse.reference.bn import bnupdate_batches
from twinsparse.reference.data import Split
from twinsparse.reference.procedure_tools import phase_method
from . import cocktail_step, ops
from .checkpoint import io_for
from .bn import bn_recalibrate
from .prunable import discover_prunable
from .train import _inputs, _targets, build_model_for, evaluate, load_net, predict, train_accel


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


class AccelEngine:
    """The torch backend of the procedures (same interface as ``reference.engine.ReferenceEngine``)."""
    name = "accel"
    ops = ops
    cocktail_step = cocktail_step

    def checkpoint_io(self) -> tuple:
        """(save, load) of procedure checkpoints (torch.save, content-hashed, loaded to the run's device)."""
        return io_for(self.cfg.device)

    def cram_backend(self, cfg):
        """What the 'cram' procedure trains with: the torch CrAM loop."""
        from .cram_procedure import AccelCramBackend
        return AccelCramBackend(cfg, self.split)

    def __init__(self, cfg, split):
        """``split.x_train`` is the training set D; the test split is evaluated after each epoch."""
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested but torch sees no CUDA device")
        self.cfg = cfg
        dt = np.dtype(cfg.dtype)  # NumPy data in the run's dtype, as the reference engine (views computed alike)
        self.split = Split(x_train=split.x_train.astype(dt), y_train=split.y_train, x_holdout=split.x_train[:0].astype(dt),
                           y_holdout=split.y_train[:0], x_test=split.x_test.astype(dt), y_test=split.y_test)
        self.model = None

    @staticmethod
    def clock() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def init_net(self, cfg, n_in: int, n_classes: int) -> dict:
        shape = self.split.x_train.shape[1:]       # images keep their (C, H, W); n_in is their width
        self.model = build_model_for(cfg, shape if len(shape) > 1 else n_in, n_classes)
        self.names = list(discover_prunable(self.model, cfg.include or None, cfg.exclude or None))
        return _clone(self.model.state_dict())

    def prunable(self, net: dict) -> list:
        return list(self.names)

    def _load(self, net: dict):
        load_net(self.model, net)
        return self.model

    def train(self, pcfg, net: dict, masks, batches=None, **kw) -> dict:
        method = phase_method(pcfg, masks, len(self.split.y_train))
        out = train_accel(pcfg, self.split, method=method, init_net=net, batches=batches, **kw)
        sp = out["sparsifier"]
        return {"net": _clone(out["model"].state_dict()),
                "masks": {n: m.clone() for n, m in sp.masks.items()} if masks is not None else None,
                "updates": out["updates"], "history": out["history"],
                "snapshot": out["snapshot"], "final_masks": {n: m.clone() for n, m in sp.masks.items()}}

    def grads(self, net: dict, x, y) -> dict:
        """Dense gradients of the prunable weights at ``net`` on one batch (train-mode forward; the
        model's buffers are reloaded before any later use, so nothing leaks into ``net``)."""
        model = self._load(net)
        model.train()
        params = dict(model.named_parameters())
        loss = F.cross_entropy(model(_inputs(self.cfg, np.asarray(x))), _targets(self.cfg, np.asarray(y)))
        g = torch.autograd.grad(loss, [params[n] for n in self.names])
        return {n: gi.detach() for n, gi in zip(self.names, g)}

    def evaluate(self, net: dict, x, y) -> dict:
        return evaluate(self.cfg, self._load(net), x, y)

    def predict(self, net: dict, x) -> torch.Tensor:
        """Logits of ``net`` on ``x`` (eval mode)."""
        return predict(self.cfg, self._load(net), x)

    def bn_recalibrate(self, net: dict, x) -> dict:
        model = self._load(net)
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return net
        bn_recalibrate(model, [_inputs(self.cfg, x[i]) for i in bnupdate_batches(len(x), self.cfg.batch_size)])
        return _clone(model.state_dict())
