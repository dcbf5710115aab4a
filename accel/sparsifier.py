"""The Sparsifier: masks over the prunable weights of any ``nn.Module``, wrapped around any
``torch.optim`` optimizer (DESIGN.md "accel API idiom", SPEC §4.5 and §0.3).

    sp = Sparsifier(model, opt, density=densities.erk(0.1), method=methods.Static())
    loss.backward(); sp.step()          # replaces opt.step()

``step()`` masks the gradients, runs the wrapped optimizer, and re-masks the weights, so pruned
weights, their gradients and every optimizer state slot (SGD momentum, Adam moments) stay exactly
zero: with the weight and gradient zero off the mask, weight decay and momentum have nothing to
revive. Masks are plain tensors (no hooks, no parametrizations): the model pickles, deep-copies and
saves as usual; ``state_dict()`` holds the masks and method state.

The whole-model masking is two ``torch._foreach_mul_`` calls (gradients, weights), not a Python loop
over elements.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from reference._checks import check_density
from . import densities as D
from . import methods as methods_mod
from ._checks import check_all_finite
from .methods.base import InitContext, Method
from .prunable import discover_prunable

_ZERO_PRESERVING = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
DensityArg = Union[float, "D.DensitySpec", Mapping[str, float]]


class Sparsifier:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, density: Optional[DensityArg] = None,
                 method: Union[str, Method] = "static", include=None, exclude=None, seed: int = 0,
                 check_finite: bool = True, remask_weights: Union[bool, str] = "auto"):
        self.model = model
        self.optimizer = optimizer
        self.method = methods_mod.build(method) if isinstance(method, str) else method
        if not isinstance(self.method, Method):
            raise TypeError(f"method must be a method name or an accel.methods.Method, got {type(self.method).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be an integer >= 0")
        self.seed = seed
        self.check_finite = bool(check_finite)
        if remask_weights not in (True, False, "auto"):
            raise ValueError(f"remask_weights={remask_weights!r} is not allowed; use True, False or 'auto'")
        # With masked gradients, weights and state, SGD / Adam / AdamW provably leave pruned weights at
        # exactly 0 (every term of their update is 0 there; tests/test_sparsifier.py checks it), so
        # 'auto' skips the re-mask for them; any other optimizer gets the weights re-masked each step.
        self.remask_weights = (type(optimizer) not in _ZERO_PRESERVING) if remask_weights == "auto" else remask_weights
        self.params = discover_prunable(model, include, exclude)
        self._check_optimizer_holds_params()
        weights = {n: p.detach() for n, p in self.params.items()}
        self.densities = self._resolve_densities(density, weights)
        self.step_count = 0
        self.masks: Optional[dict] = None
        self._mask_f: list = []
        self._squashed = False
        if not self.method.needs_init_grads:
            self._install(self.method.init_masks(InitContext(weights, None, self.densities, seed)))

    # ----------------------------------------------------------------- setup
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
            return {n: check_density(density[n], f"density[{n!r}]") for n in weights}
        d = check_density(density, "density", allow_zero=False)
        return D.uniform(d).resolve(weights)

    # ------------------------------------------------------------ mask state
    def _validate_masks(self, masks: Mapping) -> dict:
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
        return out

    def _install(self, masks: Mapping) -> None:
        """Validate everything first, then apply: weights and every optimizer state slot are masked."""
        masks = self._validate_masks(masks)
        self.masks = masks
        self._mask_f = [masks[n].to(p.dtype) for n, p in self.params.items()]
        if self.method.is_dense:
            return
        with torch.no_grad():
            torch._foreach_mul_([p.data for p in self.params.values()], self._mask_f)
            for (n, p), mf in zip(self.params.items(), self._mask_f):
                for v in self.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        v.mul_(mf)

    def set_masks(self, masks: Mapping) -> None:
        """Install new masks (replacing, never multiplying into, the old ones)."""
        self._install(masks)

    # ------------------------------------------------------------------ step
    def step(self) -> None:
        """Masked optimizer step for the whole model (replaces ``optimizer.step()``)."""
        if self._squashed:
            raise RuntimeError("this Sparsifier was squashed; step the optimizer directly")
        grads = [p.grad for p in self.params.values()]
        if self.check_finite:
            check_all_finite(grads, "gradients")
        if self.masks is None:  # methods that need gradients to build their first masks (SNIP)
            missing = [n for n, g in zip(self.params, grads) if g is None]
            if missing:
                raise RuntimeError(f"method {self.method.name!r} builds its masks from the first step's gradients, "
                                   f"but {missing} have no .grad; call loss.backward() before step()")
            weights = {n: p.detach() for n, p in self.params.items()}
            gdict = {n: g.detach() for n, g in zip(self.params, grads)}
            self._install(self.method.init_masks(InitContext(weights, gdict, self.densities, self.seed)))
        if self.method.is_dense:
            self.optimizer.step()
        else:
            live = [(g, m) for g, m in zip(grads, self._mask_f) if g is not None]
            if live:
                torch._foreach_mul_([g for g, _ in live], [m for _, m in live])
            self.optimizer.step()
            if self.remask_weights:
                with torch.no_grad():
                    torch._foreach_mul_([p.data for p in self.params.values()], self._mask_f)
        self.step_count += 1
        self.method.after_step(self)

    # ------------------------------------------------------------ reporting
    def layer_densities(self) -> dict:
        if self.masks is None:
            return dict(self.densities)
        return {n: float(m.sum()) / m.numel() for n, m in self.masks.items()}

    def total_density(self) -> float:
        if self.masks is None:
            return sum(self.densities[n] * p.numel() for n, p in self.params.items()) / self.n_prunable
        return float(sum(int(m.sum()) for m in self.masks.values())) / self.n_prunable

    @property
    def n_prunable(self) -> int:
        return sum(p.numel() for p in self.params.values())

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "masks": None if self.masks is None else {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "densities": dict(self.densities),
            "step_count": self.step_count,
            "seed": self.seed,
            "method": {"name": self.method.name, "config": self.method.config(), "state": self.method.state_dict()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore masks and method state; validated whole before anything changes."""
        expected = {"masks", "densities", "step_count", "seed", "method"}
        if not isinstance(state, Mapping) or set(state) != expected:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a Sparsifier state dict: expected keys {sorted(expected)}, got {got}")
        if state["method"]["name"] != self.method.name:
            raise ValueError(f"state is for method {state['method']['name']!r}, this Sparsifier runs {self.method.name!r}")
        masks = None if state["masks"] is None else self._validate_masks(state["masks"])
        if list(state["densities"]) != list(self.params):
            raise ValueError(f"state densities name {list(state['densities'])}, prunable weights are {list(self.params)}")
        self.method.load_state_dict(state["method"]["state"])
        self.densities = dict(state["densities"])
        self.step_count = int(state["step_count"])
        self.seed = int(state["seed"])
        if masks is not None:
            self._install(masks)

    def squash(self) -> nn.Module:
        """Make the sparsity permanent: plain dense weights with exact zeros; the Sparsifier detaches."""
        if self.masks is not None and not self.method.is_dense:
            with torch.no_grad():
                torch._foreach_mul_([p.data for p in self.params.values()], self._mask_f)
        self._squashed = True
        return self.model

    def __repr__(self) -> str:
        return (f"Sparsifier(method={self.method.name!r}, layers={len(self.params)}, "
                f"density={self.total_density():.4f}, step={self.step_count})")
