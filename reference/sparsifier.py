"""One sparse-training iteration, written once in NumPy: the reference twin of
``accel.Sparsifier``'s step protocol (docs/engine.md; the update rules: docs/methods.md).

    sp = Sparsifier(params, prunable, densities, method, seed, momentum=0.9, weight_decay=5e-4)
    for t = 1, 2, ...:
        grads = <dense gradients of every parameter>      # (and the forward's BN statistics)
        sp.step(grads, lr, buffers)                       # sp.params is the network after iteration t

At iteration t, in this order (the same order as the accel Sparsifier):
  1. non-finite gradients: the iteration counts and changes nothing else (``nonfinite='skip'``),
     or ValueError (``'raise'``);
  2. first masks from these gradients when the method needs them (SNIP);
  3. the method observes the dense gradients (SNFS's momentum);
  4. the method's own learning rate replaces ``lr`` when it sets one (Sup-tickets Eq. 3);
  5. a mask update due before the step: new masks from the dense gradients; the weights and
     momentum of dropped and grown positions restart from 0 (AC/DC's decompression zeroes every
     momentum buffer); the step runs only if the method steps on update iterations;
  6. the masked SGD step of every parameter (``reference.optim.masked_sgd_step``; parameters
     without a mask use all-ones);
  7. a collection (Sup-tickets' ticket) sees the network after the step, then the update due after
     the step runs.
Everything is functional: ``params``, ``masks`` and the method state are replaced, never changed
in place.
"""
from __future__ import annotations

import numpy as np

from . import metrics as MET
from . import ops
from .methods import InitContext
from .optim import masked_sgd_step

NONFINITE_POLICIES = ("raise", "skip")


class Sparsifier:
    def __init__(self, params: dict, prunable, densities: dict, method, seed: int, *, momentum: float = 0.0,
                 weight_decay: float = 0.0, dampening: float = 0.0, nesterov: bool = False, nonfinite: str = "raise"):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r} is not allowed; choose one of {list(NONFINITE_POLICIES)}")
        self.params = dict(params)
        self.names = list(prunable)
        unknown = [n for n in self.names if n not in self.params]
        if unknown:
            raise ValueError(f"prunable weight(s) {unknown} are not parameters of the network {list(self.params)}")
        self.densities = dict(densities)
        self.method = method
        self.seed = seed
        self.nonfinite = nonfinite
        self.hp = dict(momentum=momentum, weight_decay=weight_decay, dampening=dampening, nesterov=nesterov)
        self.bufs: dict = {}              # momentum buffers, name -> array (None before the first step)
        self.masks = self.method_state = self.explored = None
        self.updates: list = []
        self.step_count = 0
        self.skipped_steps = 0
        self.updated_at = None            # the iteration of the last installed mask update
        if not method.needs_init_grads:
            self._start(None)

    def _weights(self) -> dict:
        return {n: self.params[n] for n in self.names}

    def _start(self, grads) -> None:
        masks = self.method.init_masks(ops, InitContext(self._weights(), grads, self.densities, self.seed))
        self.method_state = self.method.init_state(ops, masks)
        self.masks, self.explored = masks, dict(masks)
        self.params = {n: p * masks[n] if n in masks else p for n, p in self.params.items()}

    def _update(self, t: int, grads: dict) -> None:
        up = self.method.update(ops, t, self._weights(), grads, self.masks, self.method_state, self.seed)
        params, bufs = dict(self.params), dict(self.bufs)
        for n in self.names:               # dropped and grown positions restart from 0, momentum too
            params[n] = params[n] * up.survivors[n]
            if bufs.get(n) is not None:
                bufs[n] = bufs[n] * up.survivors[n]
        if up.reset_optimizer_state:       # AC/DC decompression: every momentum buffer <- 0 (all parameters)
            bufs = {n: (None if b is None else np.zeros_like(b)) for n, b in bufs.items()}
        explored = ops.explored_union(self.explored, up.masks)
        self.updates.append({"t": t, **up.info, "density": MET.total_density(up.masks),
                             "exploration_degree": MET.exploration_degree(explored),
                             **MET.mask_change(self.masks, up.masks)})
        self.params, self.bufs, self.explored = params, bufs, explored
        self.masks, self.method_state = up.masks, up.state
        self.updated_at = t

    def lr_at(self, t: int, lr: float) -> float:
        """The learning rate of iteration t: the method's own when it sets one."""
        own = self.method.lr_override(t)
        return lr if own is None else own

    def step(self, grads: dict, lr: float, buffers: dict | None = None) -> bool:
        """Iteration t = step_count + 1 with the dense gradients of every parameter; ``buffers``
        (BatchNorm statistics after this iteration's forward) are part of what a collection sees.
        Returns False when the iteration was skipped for non-finite gradients."""
        t = self.step_count = self.step_count + 1
        if not all(np.all(np.isfinite(g)) for g in grads.values()):
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return False
            raise ValueError(f"gradients at iteration {t} contain non-finite values (NaN or inf)")
        dense = {n: grads[n] for n in self.names}
        m = self.method
        if self.masks is None:             # SNIP: saliency |w * g| at the dense initialisation, first batch
            self._start(dense)
        if m.observes_grads:
            self.method_state = m.observe(ops, self.method_state, t, dense)
        due = m.due(t)
        after = due and m.update_after_step(t)
        lr_t = self.lr_at(t, lr)
        step = True
        if due and not after:
            self._update(t, dense)
            step = m.step_on_update
        if step:
            new, bufs = {}, dict(self.bufs)
            for n, p in self.params.items():
                mask = self.masks[n] if n in self.masks else np.ones(p.shape, dtype=bool)
                new[n], bufs[n] = masked_sgd_step(p, grads[n], mask, self.bufs.get(n), lr=lr_t, **self.hp)
            self.params, self.bufs = new, bufs
        if m.collects(t):
            self.method_state = m.collect(ops, t, {**self.params, **(buffers or {})}, self.masks, self.method_state)
        if after:
            self._update(t, dense)
        return True

    # ----------------------------------------------------------------- state
    STATE_KEYS = ("params", "masks", "method_state", "explored", "bufs", "updates", "step_count", "skipped_steps")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in self.STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"not a reference Sparsifier state: missing {missing}")
        for k in self.STATE_KEYS:
            setattr(self, k, state[k])
