"""The Sparsifier: masks over the prunable weights of any ``nn.Module``, wrapped around any
``torch.optim`` optimizer (docs/engine.md; the masked update: docs/methods.md §1.9).

    sp = Sparsifier(model, opt, density=densities.erk(0.1), method=methods.Static())
    loss.backward(); sp.step()          # replaces opt.step()

``step()`` masks the gradients, runs the wrapped optimizer's update, and keeps pruned weights and
every optimizer state slot (SGD momentum, Adam moments) exactly zero. Masks are plain tensors (no
hooks, no parametrizations): the model pickles, deep-copies and saves as usual; ``state_dict()``
holds the masks and the method's state.

What the host does, and when it waits for the device:

* a plain step (no mask update due) never reads a device value: the NaN/inf guard is a device
  flag that makes the optimizer update skip itself (``accel.step``), and a device record counts
  such steps; the launches are a handful for the whole model (one fused kernel per parameter
  group and dtype on CUDA with CuPy);
* a mask update (SET, RigL, SNFS, DST-EE, GraNet, GMP, AC/DC, Sup-tickets) runs the method's
  operators on flat buffers with their checks deferred (``accel.deferred``), then reads every
  check, the guard flag, the per-layer counts and the update's statistics in ONE host sync, and
  installs the new masks only if all of it holds: nothing is half-applied;
* non-finite gradients: the step is skipped on the device; with ``nonfinite="raise"`` (default)
  the error is raised at the next synchronisation point (a mask update, ``state_dict()``,
  reading ``skipped_steps``, or ``check_nonfinite()``), naming the first bad iteration; with
  ``"skip"`` the steps are only counted. A skipped iteration still counts as an iteration (as an
  LR scheduler counts a step GradScaler skipped).

The class is written in three files: this one (setup, the masks, ``step()``, reporting, ``squash``),
``accel.mask_update`` (``MaskUpdates``: the non-finite guard and the mask-update transaction) and
``accel.sparsifier_state`` (``SparsifierState``: ``state_dict`` / ``load_state_dict`` for resume).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from twinsparse.reference._checks import check_density
from twinsparse.reference.densities import check_keeps_weights
from twinsparse.reference.methods import InitContext, Method
from twinsparse.reference.sparsifier import NONFINITE_POLICIES
from . import densities as D
from . import ops
from .flat import FlatDict, layout_of
from .loop_support import (NonFiniteGradientError, StrayStepGuard, method_from_name, starts_dense, unwrap,  # noqa: F401
                           with_layer_axes)
from .mask_update import MaskUpdates
from .mask_buffers import MaskBuffers
from .prunable import discover_prunable
from .sparsifier_state import SparsifierState
from .step import StepEngine

__all__ = ["Sparsifier", "NonFiniteGradientError"]   # (the error: accel.loop_support's, offered here too)


_ZERO_PRESERVING = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
DensityArg = Union[float, "D.DensitySpec", Mapping[str, float]]


class Sparsifier(MaskUpdates, SparsifierState, torch.optim.Optimizer):
    """See the module docstring. It is a ``torch.optim.Optimizer`` for the code that checks for one
    (LR schedulers, GradScaler): ``param_groups``, ``state`` and ``defaults`` are the wrapped
    optimizer's own, so a scheduler built on either object changes the same learning rates."""

    # GradScaler: ``scaler.step(sp)`` hands the scale and its found-inf flag to ``step`` through the
    # attributes ``grad_scale`` / ``found_inf``, as it does for torch's fused optimizers
    _step_supports_amp_scaling = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, density: Optional[DensityArg] = None,
                 method: Union[str, Method] = "static", include=None, exclude=None, seed: int = 0,
                 check_finite: bool = True, remask_weights: Union[bool, str] = "auto", nonfinite: str = "raise",
                 total_steps: Optional[int] = None, steps_per_epoch: int = 1):
        # (torch.optim.Optimizer.__init__ is not called: the wrapped optimizer holds the groups and state)
        self._optimizer_step_pre_hooks: dict = OrderedDict()
        self._optimizer_step_post_hooks: dict = OrderedDict()
        if not isinstance(optimizer, torch.optim.Optimizer) or isinstance(optimizer, Sparsifier):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer (not a Sparsifier), got {type(optimizer).__name__}")
        self.model = model
        self.module = unwrap(model)
        self.optimizer = optimizer
        self.method = method_from_name(method, density, total_steps, steps_per_epoch) \
            if isinstance(method, str) else method
        if not isinstance(self.method, Method):
            raise TypeError(f"method must be a method name or an accel.methods.Method, got {type(self.method).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be an integer >= 0")
        self.seed = seed
        self.check_finite = bool(check_finite)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r} is not allowed; choose one of {list(NONFINITE_POLICIES)}")
        self.nonfinite = nonfinite      # 'raise', or 'skip' the iteration (counted in skipped_steps)
        if remask_weights not in (True, False, "auto"):
            raise ValueError(f"remask_weights={remask_weights!r} is not allowed; use True, False or 'auto'")
        # With masked gradients, weights and state, SGD / Adam / AdamW provably leave pruned weights at
        # exactly 0 (every term of their update is 0 there; tests/test_sparsifier.py checks it), so
        # 'auto' skips the re-mask for them; any other optimizer gets the weights re-masked each step.
        self.remask_weights = (type(optimizer) not in _ZERO_PRESERVING) if remask_weights == "auto" else remask_weights
        self.params = discover_prunable(self.module, include, exclude)
        self.method = with_layer_axes(self.method, self.module, self.params)
        self.shared = self._dedupe_shared()       # prunable name -> the other names of the same tensor
        self._check_optimizer_holds_params()
        self._layout = layout_of(self.params)
        weights = self._weights()
        self.densities = self._resolve_densities(density, weights)
        self.step_count = 0
        self.masks: Optional[FlatDict] = None
        self.method_state: dict = {}   # the method's state (DST-EE counters, SNFS momentum, tickets, ...)
        self.explored: Optional[FlatDict] = None  # ITOP bookkeeping: ever-active positions (docs/methods.md §3.4)
        self.updates: list = []        # one record per mask update: t, R, mask change, counts
        self.on_update = None          # optional callback(t, masks) after every installed update (DDP check)
        self._squashed = False
        self._explored_count = 0
        self._buffers = None if self.method.is_dense else MaskBuffers(self.params, self._layout)
        self._engine = StepEngine(optimizer, self.params, self._buffers)
        self._found: Optional[torch.Tensor] = None     # the guard's flag (float32, device)
        self._record: Optional[torch.Tensor] = None    # float64 [3]: bad steps, first bad iteration, iterations
        self._scratch: Optional[torch.Tensor] = None   # int32 [1]: the guard kernel's block counter
        self._one: Optional[torch.Tensor] = None
        self._bad_steps = 0            # non-finite steps read back from the device record so far
        self._restored_skips = 0       # skipped steps carried over by load_state_dict
        self._stray_hook = optimizer.register_step_pre_hook(StrayStepGuard())
        if not self.method.needs_init_grads:
            self._init_masks(weights, None)

    # ----------------------------------------------------------------- setup
    def _weights(self) -> dict:
        return {n: p.detach() for n, p in self.params.items()}

    def _dedupe_shared(self) -> dict:
        """A tensor shared by several modules (tied embeddings, a reused layer) is pruned once, with
        one mask, under its first name; a warning names every module that sees the pruned tensor
        (pruning one of them prunes all of them)."""
        aliases: dict = {}
        for name, p in self.module.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        seen, out, kept = set(), {}, {}
        for name, p in self.params.items():
            if id(p) in seen:
                continue
            seen.add(id(p))
            kept[name] = p
            others = [a for a in aliases.get(id(p), [name]) if a != name]
            if others:
                out[name] = others
                warnings.warn(f"the prunable weight {name!r} is the same tensor as {others}: it is pruned once, with "
                              f"one mask, and the pruning applies wherever the tensor is used", stacklevel=3)
        self.params = kept
        return out

    def _check_optimizer_holds_params(self) -> None:
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in self.params.items() if id(p) not in held]
        if missing:
            raise ValueError(f"the optimizer does not hold the prunable weight(s) {missing}; "
                             f"build the optimizer over model.parameters()")

    def _resolve_densities(self, density, weights) -> dict:
        if self.method.is_dense:
            if density not in (None, 1, 1.0):
                raise ValueError(f"method 'dense' keeps every weight; density={density!r} is not allowed (use 1.0 or None)")
            return {n: 1.0 for n in weights}
        if density is None and starts_dense(self.method):
            return {n: 1.0 for n in weights}      # GMP, AC/DC: they start dense and set their own targets
        if density is None:
            raise ValueError(f"method {self.method.name!r} needs a density: a float in (0, 1], "
                             f"an accel.densities spec (erk(0.1), ...) or a dict layer -> density")
        if isinstance(density, D.DensitySpec):
            return dict(density.resolve(weights))
        if isinstance(density, Mapping):
            unknown = [n for n in density if n not in weights]
            missing = [n for n in weights if n not in density]
            if unknown or missing:
                raise ValueError(f"density dict must name exactly the prunable weights {list(weights)}; "
                                 f"unknown: {unknown}, missing: {missing}")
            resolved = {n: check_density(density[n], f"density[{n!r}]") for n in weights}
            return check_keeps_weights(resolved, {n: w.numel() for n, w in weights.items()},
                                       source="the density dict")
        d = check_density(density, "density", allow_zero=False)
        return D.uniform(d).resolve(weights)

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device

    # ------------------------------------------------------------ mask state
    def _validate_masks(self, masks: Mapping) -> FlatDict:
        """User-given masks (set_masks, load_state_dict): checked eagerly, as one flat bool buffer."""
        if list(masks) != list(self.params):
            raise ValueError(f"masks must name exactly the prunable weights {list(self.params)} in order; got {list(masks)}")
        out = {}
        for n, m in masks.items():
            p = self.params[n]
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"mask {n!r} must be a torch.Tensor, got {type(m).__name__}")
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask {n!r} has shape {tuple(m.shape)} but the weight has shape {tuple(p.shape)}")
            if m.dtype != torch.bool:
                if not bool(((m == 0) | (m == 1)).all()):
                    raise ValueError(f"mask {n!r} must be boolean or 0/1 valued")
                m = m != 0
            out[n] = m.to(p.device)
        return self._layout.split(self._layout.flatten(out))

    def _as_flat(self, masks: Mapping, what: str = "masks") -> FlatDict:
        """A method's masks as a flat bool buffer of this layout (no copy when they already are)."""
        if isinstance(masks, FlatDict) and masks.layout == self._layout and masks.flat.dtype == torch.bool:
            return masks
        if list(masks) != list(self.params):
            raise RuntimeError(f"method {self.method.name!r} returned {what} for {list(masks)}, "
                               f"the prunable weights are {list(self.params)}")
        for n, m in masks.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(self.params[n].shape):
                raise RuntimeError(f"method {self.method.name!r} returned a bad mask for {n!r}: "
                                   f"{type(m).__name__} {getattr(m, 'dtype', '')} {tuple(getattr(m, 'shape', ()))}")
        return self._layout.split(self._layout.flatten(masks).to(self._device()))

    def _init_masks(self, weights, grads) -> None:
        masks = self._as_flat(self.method.init_masks(ops, InitContext(weights, grads, self.densities, self.seed)))
        state = self.method.init_state(ops, masks)
        self._install(masks, None, counts=None)
        self.method_state = state
        self.explored = self._layout.split(masks.flat.clone())
        self._explored_count = sum(self.masks.counts)

    def _install(self, masks: FlatDict, survivors: Optional[FlatDict], counts) -> None:
        """Make ``masks`` the masks (replacing, never multiplying into, the old ones). Weights and
        every optimizer state slot of the prunable weights are multiplied by ``survivors``
        (default: the masks), so dropped and newly grown positions start from 0. ``counts``: the
        per-layer active counts when already read (else read here: one sync)."""
        if counts is None:
            counts = masks.counts if masks.counts is not None else masks.device_counts().tolist()
        self.masks = self._layout.split(masks.flat, counts)
        if self._buffers is None:
            return
        self._buffers.install(masks.flat)
        keep = self._buffers.kfloat_view if survivors is None else self._buffers.float_views(survivors.flat, self.params)
        with torch.no_grad():
            torch._foreach_mul_([p.data for p in self.params.values()], [keep[n] for n in self.params])
            slots, factors = [], []
            for n, p in self.params.items():
                for v in self.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        slots.append(v)
                        factors.append(keep[n].to(v.dtype) if v.dtype != keep[n].dtype else keep[n])
            if slots:
                torch._foreach_mul_(slots, factors)

    def reset_optimizer_state(self) -> None:
        """Zero every optimizer state tensor of every parameter of every group (not only the prunable
        ones): SGD momentum buffers, Adam/AdamW moments and step counters (the next step then acts as a
        fresh optimizer's). AC/DC's reset at each decompression phase ([TH] §3.4.1; ``Update.reset_optimizer_state``)."""
        tensors = [v for group in self.optimizer.param_groups for p in group["params"]
                   for v in self.optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
        if tensors:
            with torch.no_grad():
                torch._foreach_zero_(tensors)

    def set_masks(self, masks: Mapping) -> None:
        """Install new masks (replacing, never multiplying into, the old ones)."""
        self._install(self._validate_masks(masks), None, counts=None)

    # ------------------------------------------------------------------ step
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        """The wrapped optimizer's per-parameter state (torch.optim's ``state``); the method's own
        state is ``method_state``."""
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` for a sparse model: the norm is taken over the
        gradients the step will apply (the surviving weights' gradients, masked; every other
        parameter's in full) and the clip coefficient is applied to the full, dense gradients, which
        growth methods (RigL, DST-EE, SNFS) still rank. Returns the total norm (a device tensor; no
        host sync). Under GradScaler, call ``scaler.unscale_(sparsifier)`` first, as with any
        optimizer."""
        max_norm, norm_type = float(max_norm), float(norm_type)
        if not max_norm > 0 or not (norm_type > 0 or norm_type == float("inf")):
            raise ValueError(f"clip_grad_norm_ needs max_norm > 0 and norm_type > 0 (or inf), got max_norm={max_norm}, "
                             f"norm_type={norm_type}")
        groups = self.optimizer.param_groups
        params = [p for g in groups for p in g["params"] if p.grad is not None]
        if not params:
            raise RuntimeError("clip_grad_norm_ found no gradient: call loss.backward() first")
        views = self._buffers.kfloat_view if (self._buffers is not None and self.masks is not None) else {}
        masked_ids = {id(p): n for n, p in self.params.items() if n in views}
        pruned = [p for p in params if id(p) in masked_ids]
        full = [p.grad for p in params if id(p) not in masked_ids]
        parts = list(torch._foreach_mul([p.grad for p in pruned], [views[masked_ids[id(p)]] for p in pruned])) if pruned else []
        norms = torch._foreach_norm(parts + full, norm_type)
        stacked = torch.stack([n.to(torch.float32) for n in norms])
        total = stacked.max() if norm_type == float("inf") else torch.linalg.vector_norm(stacked, norm_type)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_([p.grad for p in params], coef)
        return total

    def step(self, closure=None):
        """One training iteration t = step_count + 1 (replaces ``optimizer.step()``).

        If the method's mask update is due at t, the new masks are computed from the dense
        gradients first (nothing is applied until the whole update succeeded), installed, and the
        optimizer steps with them unless the method follows Alg. 1 literally (step_on_update=False).
        A learning rate the method imposes at t (Sup-tickets' cyclic stage, [ST] Eq. 3) is written
        into every parameter group first, so any training loop gets it.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._squashed:
            raise RuntimeError("this Sparsifier was squashed; step the optimizer directly")
        grads = self._engine.grads()
        if not grads:
            raise RuntimeError("sparsifier.step() found no gradient on any parameter of the optimizer: call "
                               "loss.backward() before step() (nothing was changed and no iteration was counted)")
        t = self.step_count + 1
        self._grad_scale = getattr(self, "grad_scale", None)
        scaler_found = getattr(self, "found_inf", None)
        self.optimizer._twinsparse_stepping = True    # the wrapped optimizer's own step() may run now
        try:
            if self.masks is None:                   # methods that build their first masks from gradients (SNIP)
                self._first_masks(t)
            lr = self.method.lr_override(t)
            if lr is not None:                       # a method's own learning rate (Sup-tickets Eq. 3)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            found = self._guard(grads, scaler_found)
            m = self.method
            due = m.due(t)
            collects = m.collects(t)
            if not (due or collects):                # the hot path: no host sync
                if m.observes_grads:
                    self._observe(t, found)
                self._engine.step(found, self._grad_scale, masked=not m.is_dense, remask=self.remask_weights)
            else:
                self._event(t, found, self._grad_scale, due, due and m.update_after_step(t), collects,
                            scaler_found is not None)
            self.step_count = t
        finally:
            self.optimizer._twinsparse_stepping = False
            self._grad_scale = None
        if getattr(self.optimizer.step, "_wrapped_by_lr_sched", False):
            self.optimizer._opt_called = True        # a scheduler built on the wrapped optimizer sees its step
        return loss

    # ------------------------------------------------------------ reporting
    def exploration_degree(self) -> float:
        """R of [EE] (docs/methods.md §3.4): the fraction of prunable weights that were ever active."""
        return 1.0 if self.explored is None else self._explored_count / self._layout.numel

    def layer_densities(self) -> dict:
        if self.masks is None:
            return dict(self.densities)
        return {n: c / s for n, c, s in zip(self._layout.names, self.masks.counts, self._layout.sizes)}

    def total_density(self) -> float:
        if self.masks is None:
            return sum(self.densities[n] * p.numel() for n, p in self.params.items()) / self.n_prunable
        return sum(self.masks.counts) / self.n_prunable

    @property
    def n_prunable(self) -> int:
        return self._layout.numel

    def squash(self) -> nn.Module:
        """Make the sparsity permanent: plain dense weights with exact zeros; the Sparsifier detaches."""
        if self.masks is not None and self._buffers is not None:
            with torch.no_grad():
                torch._foreach_mul_([p.data for p in self.params.values()],
                                    [self._buffers.kfloat_view[n] for n in self.params])
        self._squashed = True
        self._stray_hook.remove()
        return self.model

    def __repr__(self) -> str:
        return (f"Sparsifier(method={self.method.name!r}, layers={len(self.params)}, "
                f"density={self.total_density():.4f}, step={self.step_count})")
