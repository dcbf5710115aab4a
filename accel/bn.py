"""BatchNorm recalibration for any torch model (docs/methods.md §1.13 BNT / BnUpdate); twin of ``reference.bn``.

``bn_recalibrate(model, batches)`` resets every BatchNorm module's running statistics and runs
the batches forward in train mode under ``torch.no_grad()`` with ``momentum=None`` (cumulative
moving average). Momenta and the training flag are restored afterwards; if anything fails,
the running statistics are restored too, so nothing is half-applied. ``bnt_batches`` and
``bnupdate_batches`` are the reference's index logic, imported.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from twinsparse.reference.bn import bnt_batches, bnupdate_batches
from .models import mlp_from_reference

__all__ = ["bn_recalibrate", "mlp_bn_recalibrate", "bnt_batches", "bnupdate_batches"]

_BN = nn.modules.batchnorm._BatchNorm


def _bn_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)]
    if not bns:
        raise ValueError(f"bn_recalibrate needs a model with BatchNorm layers; {type(model).__name__} has none")
    for n, m in bns:
        if not m.track_running_stats or m.running_mean is None:
            raise ValueError(f"BatchNorm module {n!r} does not track running statistics "
                             f"(track_running_stats=False); there is nothing to recalibrate")
    return bns


def _input(batch, i: int) -> torch.Tensor:
    """A batch is a tensor [B, ...] or a (x, y, ...) tuple/list whose first item is x."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"batches[{i}] must be a tensor [B, ...] or an (x, y) pair, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"batches[{i}] has shape {tuple(x.shape)}; BatchNorm in train mode needs "
                         f"[B, ...] with B >= 2 samples")
    return x


def bn_recalibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Reset and re-estimate every BN layer's running statistics of ``model`` on ``batches``
    (cumulative average over the batches, train-mode forward, no gradients); returns ``model``.

    Weights and other parameters are not changed. Each BN module's momentum and the model's
    training flag are restored afterwards, also when an exception is raised (then the running
    statistics are restored as well). A list/tuple of batches is validated before anything runs.
    """
    bns = _bn_modules(model)
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of input tensors [B, ...] (or (x, y) pairs), "
                        f"got {type(batches).__name__}")
    if isinstance(batches, Sequence):
        if len(batches) == 0:
            raise ValueError("batches is empty: BN recalibration needs at least one batch")
        for i, b in enumerate(batches):
            _input(b, i)
    ref = next(iter(model.parameters()), bns[0][1].running_mean)
    momenta = [m.momentum for _, m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for _, m in bns]
    was_training = model.training
    ok = False
    try:
        for _, m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        seen = 0
        with torch.no_grad():
            for i, b in enumerate(batches):
                x = _input(b, i).to(ref.device)
                if x.is_floating_point() and ref.is_floating_point():
                    x = x.to(ref.dtype)
                model(x)
                seen += 1
        if seen == 0:
            raise ValueError("batches is empty: BN recalibration needs at least one batch")
        ok = True
    finally:
        for (_, m), mom in zip(bns, momenta):
            m.momentum = mom
        if not ok:
            with torch.no_grad():
                for (_, m), (rm, rv, nbt) in zip(bns, saved):
                    m.running_mean.copy_(rm)
                    m.running_var.copy_(rv)
                    m.num_batches_tracked.copy_(nbt)
        model.train(was_training)
    return model


def mlp_bn_recalibrate(params, buffers, batches, bn_eps: float = 1e-5) -> dict:
    """Twin of ``reference.bn.bn_recalibrate`` for the MLP: builds ``accel.models.MLP`` from the
    reference params/buffers, recalibrates it and returns the new buffers (in ``buffers`` order)."""
    if "bn.0.weight" not in params:
        raise ValueError("bn_recalibrate needs a network with BatchNorm layers; params have no 'bn.*' entries")
    model = mlp_from_reference(params, buffers, bn_eps=bn_eps)
    w0 = model.fc[0].weight
    xs = [torch.as_tensor(x, device=w0.device).to(w0.dtype) for x in batches]
    bn_recalibrate(model, xs)
    named = dict(model.named_buffers())
    return {k: named[k].detach().clone() for k in buffers}
