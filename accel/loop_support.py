"""How the Sparsifier meets the models and loops people bring: wrapped models (torch.compile,
DDP, DataParallel), a stray ``optimizer.step()``, methods given by name, methods that start dense,
methods that group weights along a layer's reduction dimension, and the error a non-finite
gradient raises."""
from __future__ import annotations

import dataclasses

import torch.nn as nn

from twinsparse.reference.methods import build as build_method

__all__ = ["unwrap", "StrayStepGuard", "method_from_name", "starts_dense", "with_layer_axes", "NonFiniteGradientError"]


def starts_dense(method) -> bool:
    """Methods whose masks start all-ones and that set their own target densities (GMP, AC/DC)."""
    from twinsparse.reference.methods import ACDC, GMP
    base = getattr(method, "base", method)
    return isinstance(method, (GMP, ACDC)) or isinstance(base, (GMP, ACDC))


def with_layer_axes(method, module: nn.Module, names):
    """A method whose N:M groups follow each layer's reduction dimension (``nm_axis``, AC/DC's 2:4
    phases) gets the dimensions of ``module``'s prunable weights ``names`` (dim 0 of a ConvTranspose,
    dim 1 of Linear and Conv weights). A method without the field, or one given its axes, is kept."""
    if "nm_axis" not in getattr(method, "__dataclass_fields__", {}) or method.nm_axis != "reduction":
        return method
    from .prunable import reduction_dims
    dims = reduction_dims(module, list(names))
    return method if all(d == 1 for d in dims.values()) else dataclasses.replace(method, nm_axis=dims)


def method_from_name(name: str, density, total_steps, steps_per_epoch):
    """A method given by name: its schedule (t_end, prune_end, AC/DC phases, ...) follows the
    project's defaults for a run of ``total_steps`` iterations (the same ones a config gets)."""
    from twinsparse.reference.methods import METHODS
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {sorted(METHODS)}")
    if name in ("dense", "static"):
        return build_method(name)
    if total_steps is None:
        raise ValueError(f"method {name!r} by name needs total_steps= (the length of training, in iterations) "
                         f"to place its mask updates; or pass a method object, e.g. accel.methods.RigL(t_end=...)")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1 (iterations)")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be an integer >= 1")
    from twinsparse.reference.config import RunConfig
    from twinsparse.reference.methods import from_run_config
    target = density if isinstance(density, (int, float)) and not isinstance(density, bool) else \
        getattr(density, "density", 0.1)
    epochs = max(1, total_steps // steps_per_epoch)
    cfg = RunConfig(method=name, density=float(target), epochs=epochs).validate()
    return from_run_config(cfg, total_steps, steps_per_epoch)


class StrayStepGuard:
    """A step pre-hook on the wrapped optimizer: ``optimizer.step()`` called directly (not from a
    Sparsifier's step) would move pruned weights, so it is refused with the way out."""
    twinsparse_hook = True      # the step engine's own: it does not force the generic path

    def __call__(self, optimizer, args, kwargs):
        if not getattr(optimizer, "_twinsparse_stepping", False):
            raise RuntimeError("optimizer.step() was called directly on the optimizer a Sparsifier wraps: it would "
                               "move pruned weights (weight decay, momentum). Call sparsifier.step() instead (it runs "
                               "the optimizer with the masks), or sparsifier.squash() to end sparse training")


class NonFiniteGradientError(ValueError):
    """Gradients held NaN or inf at one or more iterations (those steps changed nothing)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``module``)
    wrappers, so parameter names carry no wrapper prefix and a state saved with one setup loads
    into the other."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
