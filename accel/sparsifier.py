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
from reference.methods import InitContext, Method, build as build_method
from . import densities as D
from . import kernels as _kernels
from . import ops
from ._checks import check_all_finite
from .prunable import discover_prunable

def _to(obj, device):
    """Recursive copy of a (nested) dict of tensors to ``device``; other values pass through."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device).clone()
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


NONFINITE_POLICIES = ("raise", "skip")
_ZERO_PRESERVING = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
DensityArg = Union[float, "D.DensitySpec", Mapping[str, float]]


class Sparsifier:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, density: Optional[DensityArg] = None,
                 method: Union[str, Method] = "static", include=None, exclude=None, seed: int = 0,
                 check_finite: bool = True, remask_weights: Union[bool, str] = "auto", nonfinite: str = "raise"):
        self.model = model
        self.optimizer = optimizer
        self.method = build_method(method) if isinstance(method, str) else method
        if not isinstance(self.method, Method):
            raise TypeError(f"method must be a method name or an accel.methods.Method, got {type(self.method).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be an integer >= 0")
        self.seed = seed
        self.check_finite = bool(check_finite)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r} is not allowed; choose one of {list(NONFINITE_POLICIES)}")
        self.nonfinite = nonfinite      # 'raise', or 'skip' the iteration (counted in skipped_steps)
        self.skipped_steps = 0
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
        self.state: dict = {}          # the method's state (DST-EE counters, SNFS momentum, ...)
        self.explored: Optional[dict] = None  # ITOP bookkeeping: ever-active positions (SPEC §8.6)
        self.updates: list = []        # one record per mask update: t, R, mask change, counts
        self.on_update = None          # optional callback(t, masks) after every installed update (DDP check)
        self._mask_f: list = []
        self._squashed = False
        if not self.method.needs_init_grads:
            self._init_masks(weights, None)

    def _init_masks(self, weights, grads) -> None:
        masks = self.method.init_masks(ops, InitContext(weights, grads, self.densities, self.seed))
        state = self.method.init_state(ops, self._validate_masks(masks))
        self._install(masks)
        self.state = state
        self.explored = {n: m.clone() for n, m in self.masks.items()}

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

    def _install(self, masks: Mapping, survivors: Optional[Mapping] = None) -> None:
        """Validate everything first, then apply. Weights and every optimizer state slot are
        multiplied by ``survivors`` (default: the masks), so dropped and newly grown positions
        start from 0 (grown weights and their momentum / Adam moments are zero)."""
        masks = self._validate_masks(masks)
        keep = masks if survivors is None else self._validate_masks(survivors)
        self.masks = masks
        self._mask_f = [masks[n].to(p.dtype) for n, p in self.params.items()]
        if self.method.is_dense:
            return
        keep_f = self._mask_f if survivors is None else [keep[n].to(p.dtype) for n, p in self.params.items()]
        with torch.no_grad():
            torch._foreach_mul_([p.data for p in self.params.values()], keep_f)
            for (n, p), mf in zip(self.params.items(), keep_f):
                for v in self.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        v.mul_(mf)

    def reset_optimizer_state(self) -> None:
        """Zero every optimizer state tensor of every parameter of every group (not only the prunable
        ones): SGD momentum buffers, Adam/AdamW moments and step counters (the next step then acts as a
        fresh optimizer's). AC/DC's reset at each decompression phase ([TH] §3.4.1; ``Update.reset_optimizer_state``)."""
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    for v in self.optimizer.state.get(p, {}).values():
                        if isinstance(v, torch.Tensor):
                            v.zero_()

    def set_masks(self, masks: Mapping) -> None:
        """Install new masks (replacing, never multiplying into, the old ones)."""
        self._install(masks)

    # ------------------------------------------------------------------ step
    def step(self) -> None:
        """One training iteration t = step_count + 1 (replaces ``optimizer.step()``).

        If the method's mask update is due at t, the new masks are computed from the dense
        gradients first (nothing is applied until the whole update succeeded), installed, and the
        optimizer steps with them unless the method follows Alg. 1 literally (step_on_update=False).
        """
        if self._squashed:
            raise RuntimeError("this Sparsifier was squashed; step the optimizer directly")
        t = self.step_count + 1
        grads = [p.grad for p in self.params.values()]
        due = self.masks is not None and self.method.due(t)
        needs_grads = due or self.method.observes_grads or self.masks is None
        if needs_grads:
            missing = [n for n, g in zip(self.params, grads) if g is None]
            if missing:
                raise RuntimeError(f"method {self.method.name!r} needs the dense gradients at iteration {t}, "
                                   f"but {missing} have no .grad; call loss.backward() before step()")
        if self.check_finite or needs_grads or self.nonfinite == "skip":
            try:
                check_all_finite(grads, f"gradients at iteration {t}")
            except ValueError:
                if self.nonfinite == "raise":
                    raise
                self.skipped_steps += 1  # nothing changes: no optimizer step, no mask update, t not consumed
                return
        after = due and self.method.update_after_step(t)
        if needs_grads:  # an update after the step needs the dense gradients the step masks in place
            gdict = {n: (g.detach().clone() if after else g.detach()) for n, g in zip(self.params, grads)}
        else:
            gdict = None
        if self.masks is None:  # methods that build their first masks from gradients (SNIP)
            self._init_masks({n: p.detach() for n, p in self.params.items()}, gdict)
        state = self.method.observe(ops, self.state, t, gdict) if self.method.observes_grads else self.state
        if due and not after:
            self._update(t, gdict, state)
            if self.method.step_on_update:
                self._masked_step(grads)
        else:
            self.state = state
            self._masked_step(grads)
        if self.method.collects(t):
            net = {k: v.detach() for k, v in self.model.state_dict().items()}
            self.state = self.method.collect(ops, t, net, self.masks, self.state)
        if after:
            self._update(t, gdict, self.state)
        self.step_count = t

    def _update(self, t: int, gdict: dict, state: dict) -> None:
        weights = {n: p.detach() for n, p in self.params.items()}
        up = self.method.update(ops, t, weights, gdict, self.masks, state, self.seed)  # pure
        old = self.masks
        explored = ops.explored_union(self.explored, up.masks)
        change = ops.mask_change(old, up.masks)
        self._install(up.masks, up.survivors)
        if up.reset_optimizer_state:
            self.reset_optimizer_state()
        self.state, self.explored = up.state, explored
        self.updates.append({"t": t, **up.info, "density": self.total_density(),
                             "exploration_degree": ops.exploration_degree(explored), **change})
        if self.on_update is not None:
            self.on_update(t, self.masks)

    def _masked_step(self, grads) -> None:
        if self.method.is_dense:
            self.optimizer.step()
            return
        live = [(g, m) for g, m in zip(grads, self._mask_f) if g is not None]
        if live and _kernels.on_device(live[0][0]) and _kernels.sgd_optimizer_step(
                self.optimizer, {id(p): self.masks[n] for n, p in self.params.items()}):
            return      # CUDA + CuPy, torch.optim.SGD: mask + step + re-mask in one launch (kernels/masked_sgd.cu)
        if live:
            torch._foreach_mul_([g for g, _ in live], [m for _, m in live])
        self.optimizer.step()
        if self.remask_weights:
            with torch.no_grad():
                torch._foreach_mul_([p.data for p in self.params.values()], self._mask_f)

    def exploration_degree(self) -> float:
        """R of [EE] (SPEC §8.6): the fraction of prunable weights that were ever active."""
        return 1.0 if self.explored is None else ops.exploration_degree(self.explored)

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
        """Masks, method state (counters, momentum, ...), ITOP bookkeeping and counters; plain
        CPU tensors and Python values, so ``torch.save`` / ``torch.load(weights_only=True)`` work."""
        return {
            "masks": _to(self.masks, "cpu"),
            "densities": dict(self.densities),
            "step_count": self.step_count,
            "seed": self.seed,
            "method": {"name": self.method.name, "config": self.method.config(), "state": _to(self.state, "cpu")},
            "explored": _to(self.explored, "cpu"),
            "updates": [dict(u) for u in self.updates],
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore masks, method state and bookkeeping; validated whole before anything changes."""
        expected = {"masks", "densities", "step_count", "seed", "method", "explored", "updates", "skipped_steps"}
        if not isinstance(state, Mapping) or set(state) != expected:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a Sparsifier state dict: expected keys {sorted(expected)}, got {got}")
        meth = state["method"]
        if not isinstance(meth, Mapping) or meth.get("name") != self.method.name:
            name = meth.get("name") if isinstance(meth, Mapping) else meth
            raise ValueError(f"state is for method {name!r}, this Sparsifier runs {self.method.name!r}")
        masks = None if state["masks"] is None else self._validate_masks(state["masks"])
        explored = None if state["explored"] is None else self._validate_masks(state["explored"])
        if list(state["densities"]) != list(self.params):
            raise ValueError(f"state densities name {list(state['densities'])}, prunable weights are {list(self.params)}")
        if masks is not None and set(meth["state"]) != set(self.method.init_state(ops, masks)):
            raise ValueError(f"method state keys {sorted(meth['state'])} do not match method {self.method.name!r} "
                             f"(expected {sorted(self.method.init_state(ops, masks))})")
        device = next(iter(self.params.values())).device
        self.densities = dict(state["densities"])
        self.step_count = int(state["step_count"])
        self.seed = int(state["seed"])
        self.updates = [dict(u) for u in state["updates"]]
        self.skipped_steps = int(state["skipped_steps"])
        self.state = _to(meth["state"], device)
        self.explored = explored
        if masks is not None:
            self._install(masks)
        else:
            self.masks = None

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
