"""CrAM training on torch: the loop of the 'cram' procedure (``reference.cram_procedure.run_cram``, written
once) with the ``accel.cram_optimizer.CrAM`` wrapper around the run's optimizer; twin of
``reference.cram_procedure.train_cram_reference`` / ``ReferenceCramBackend``. Any model of
``accel.models``; the MLP starts from ``reference.nn.init_mlp(seed)`` and reads the same batches, so
both backends follow the same trajectory (conformance/test_cram_trajectory.py)."""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from twinsparse.reference.config import run_to_dict
from twinsparse.reference.cram_options import training_compressions
from twinsparse.reference.schedules import lr_at
from twinsparse.reference.train import default_batches
from . import checkpoint as ckpt
from . import distributed as ddp
from . import cram_ops as CR
from .bn import bn_recalibrate
from .cram_optimizer import CrAM
from .models import mlp_from_reference
from .prunable import discover_prunable, reduction_dims
from .train import _inputs, _targets, build_model_for, build_optimizer, evaluate, load_net


def build_cram(cfg, model, optimizer) -> CrAM:
    """The CrAM wrapper of a run config (cfg.cram_*), prunable set from include / exclude."""
    names = list(discover_prunable(model, cfg.include or None, cfg.exclude or None))
    comps = training_compressions(cfg)
    return CrAM(model, optimizer, comps, rho=cfg.cram_rho, plus=cfg.cram_plus, sparse_grad=cfg.cram_sparse_grad,
                tau=cfg.cram_tau, seed=cfg.seed, prunable=names, mode=cfg.cram_mode, check_finite=cfg.check_finite,
                base_prob=cfg.cram_base_prob)


def train_cram_accel(cfg, split, on_step=None, on_epoch=None, progress=None, checkpoint: str | None = None,
                     resume: bool = False) -> dict:
    """Train ``cfg`` with CrAM on ``split``. ``on_step(t, model, cram)`` after each step, ``on_epoch(record)``
    after each epoch; ``progress`` a tqdm-like object. ``checkpoint`` / ``resume`` as in
    ``reference.cram_procedure.train_cram_reference`` (model, CrAM + optimizer state with the mask
    cache, history). Returns {model, cram, optimizer, history}."""
    cfg.validate()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device")
    model = build_model_for(cfg, split.x_train.shape[1:], int(split.y_train.max()) + 1)
    opt = build_optimizer(cfg, model)
    cram = build_cram(cfg, model, opt)
    batches = default_batches(cfg, split.x_train, split.y_train)
    total = -(-len(split.x_train) // cfg.batch_size) * cfg.epochs
    plan = cfg.lr_plan(-(-len(split.x_train) // cfg.batch_size))
    history, step, start = [], 0, 0
    if resume and checkpoint and os.path.exists(checkpoint):
        ck = ckpt.load(checkpoint, map_location=cfg.device)
        ckpt.check_config(ck["config"], run_to_dict(cfg), checkpoint)
        model.load_state_dict(ck["model"])
        cram.load_state_dict(ck["cram"])
        history, start, step = ck["history"], ck["epoch"], ck["step"]
        for rec in history if on_epoch is not None else ():
            on_epoch(rec)
    model.train()
    for epoch in range(start, cfg.epochs):
        t0, loss_sum, n = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=cfg.device), 0
        for parts in batches(epoch):
            (xb, yb), = parts
            x, y = _inputs(cfg, xb), _targets(cfg, yb)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg.lr, plan)

            def closure(x=x, y=y):
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            loss = cram.step(closure)
            step, n = step + 1, n + 1
            loss_sum += loss.detach()
            if on_step is not None:
                on_step(step, model, cram)
            if progress is not None:
                progress.update(1)
        rec = {"epoch": epoch + 1, "step": step, "train_loss": float(loss_sum) / max(n, 1),
               "lr": lr_at(step, total, cfg.lr, plan),
               **{f"test_{k}": v for k, v in evaluate(cfg, model, split.x_test, split.y_test).items()},
               "density": 1.0, "epoch_time": time.perf_counter() - t0}
        history.append(rec)
        if checkpoint and ddp.rank() == 0:
            ckpt.save(checkpoint, {"config": run_to_dict(cfg), "epoch": epoch + 1, "step": step,
                                   "model": model.state_dict(), "cram": cram.state_dict(), "history": history})
        if on_epoch is not None:
            on_epoch(rec)
    return {"model": model, "cram": cram, "optimizer": opt, "history": history}


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


class AccelCramBackend:
    """Torch twin of ``reference.cram_procedure.ReferenceCramBackend``; a network is a state dict."""

    def __init__(self, cfg, split):
        self.cfg, self.split = cfg, split
        self.model = None

    def _adopt(self, model) -> None:
        self.model = model
        self.names = list(discover_prunable(model, self.cfg.include or None, self.cfg.exclude or None))
        self.nm_axis = reduction_dims(model, self.names)     # N:M groups along each layer's reduction dim

    def build(self) -> None:
        """The model (init only), for a run whose training was restored from a checkpoint."""
        self._adopt(build_model_for(self.cfg, self.split.x_train.shape[1:], int(self.split.y_train.max()) + 1))

    def train(self, on_epoch=None, on_step=None, **kw):
        out = train_cram_accel(self.cfg, self.split, on_step=on_step, on_epoch=on_epoch, **kw)
        self._adopt(out["model"])
        return _clone(self.model.state_dict()), out["history"]

    def prunable(self):
        return list(self.names)

    @property
    def has_bn(self) -> bool:
        return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules())

    def compress(self, net, compression):
        out, _ = CR.compress({n: net[n] for n in self.names}, compression, nm_axis=self.nm_axis)
        return {**net, **out}

    def density(self, net) -> float:
        return (sum(int(torch.count_nonzero(net[n])) for n in self.names)
                / sum(net[n].numel() for n in self.names))

    def bnt(self, net, x_batches):
        load_net(self.model, net)
        bn_recalibrate(self.model, [_inputs(self.cfg, np.asarray(x)) for x in x_batches])
        return _clone(self.model.state_dict())

    def evaluate(self, net, x, y) -> dict:
        load_net(self.model, net)
        return evaluate(self.cfg, self.model, x, y)


def cram_step(params, buffers, bufs, x, y, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
              nesterov: bool = False, compressions=(), rho: float = 0.05, plus=None, sparse_grad: bool = True,
              t: int, seed: int = 0, mode: str = "cram", tau: int = 1, mask_cache=None, prunable=None,
              bn_eps: float = 1e-5, bn_momentum: float = 0.1):
    """Functional twin of ``reference.cram_procedure.cram_step`` (same arguments and results) built on the
    ``CrAM`` wrapper around ``torch.optim.SGD`` and ``accel.models.MLP``: the MLP is rebuilt from
    ``params`` / ``buffers``, the SGD momentum buffers are seeded from ``bufs``, the wrapper's step
    counter from ``t`` and its Top-K mask cache from ``mask_cache``; one ``step`` runs. Inputs are not
    modified. Returns (params', buffers', bufs', info)."""
    model = mlp_from_reference(params, buffers, bn_eps=bn_eps, bn_momentum=bn_momentum)
    model.train()
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for n, p in model.named_parameters():
        b = (bufs or {}).get(n)
        if b is not None and momentum != 0:
            sgd.state[p]["momentum_buffer"] = torch.as_tensor(b, device=p.device).to(p.dtype).clone()
    if prunable is None:
        prunable = [n for n, _ in model.named_parameters() if n.startswith("fc.") and n.endswith(".weight")]
    opt = CrAM(model, sgd, compressions, rho=rho, plus=plus, sparse_grad=sparse_grad, tau=tau, seed=seed,
               prunable=prunable, mode=mode)
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t={t!r} must be an integer >= 1")
    opt.t = t - 1
    opt._cache = {c: (int(t0), dict(m), opt._float_masks(m)) for c, (t0, m) in (mask_cache or {}).items()}
    w0 = model.fc[0].weight
    xt = torch.as_tensor(x, device=w0.device).to(w0.dtype)
    yt = torch.as_tensor(y, device=w0.device)
    yt = yt.to(w0.dtype) if yt.is_floating_point() else yt.long()

    def closure():
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        return loss
    loss = opt.step(closure)
    new_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    new_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    new_bufs = {n: (sgd.state[p].get("momentum_buffer").clone() if sgd.state[p].get("momentum_buffer") is not None
                    else None) for n, p in model.named_parameters()}
    info = {"loss": float(loss.detach()), "compression": opt.last["compression"], "masks": opt.last["masks"],
            "refreshed": opt.last["refreshed"],
            "mask_cache": {c: (t0, m) for c, (t0, m, _) in opt._cache.items()}}
    return new_params, new_buffers, new_bufs, info
