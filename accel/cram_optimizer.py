"""CrAM as an optimizer wrapper around any ``torch.optim`` optimizer ([TH] Ch. 5, Alg. 2; docs/methods.md §7.1, §7.2, §7.5). The NumPy twin of one step is ``reference.cram_procedure.cram_step``.

    model, base = build(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt = CrAM(model, base, ["topk:0.5", "topk:0.7", "topk:0.9"], rho=0.05)      # CrAM⁺-Multi, SG
    for x, y in loader:
        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)          # two forward/backward passes, one base_optimizer.step()

``step(closure)`` zeroes the gradients (``set_to_none``) before EVERY call of the closure, so the
closure only computes the loss and calls ``backward()`` (zeroing inside it as well is harmless). One
step (mode 'cram'):

    1 g  = grad at theta                  closure #1; BN running statistics are updated as usual (l.4)
    2 C  = sample_compression(C_set, seed, t)                                                     (l.5)
    3 theta~ = C(theta + rho g), M its Top-K (or N:M) mask; with tau > 1 the Top-K mask of C is
      reused until it is tau steps old ([TH] §5.4.1, docs/methods.md §7.2)                                (l.6-8)
    4 g~ = grad at theta~                 closure #2 with every BatchNorm's running statistics frozen
      (``track_running_stats`` switched off for the pass: batch statistics are used, no buffer and
      no ``num_batches_tracked`` changes; [TH] §5.3.3 "we only track the BatchNorm statistics on the
      dense model")
    5 theta restored; g~ <- M * g~ (sparse_grad), g~ <- g~ + g (CrAM⁺); p.grad = g~; base.step()  (l.9-16)

Modes: 'cram' (rho = 0: Top-K, Eq. 5.8 / Top-K⁺, Eq. 5.9), 'sam' (theta + rho g/||g||, Eq. C.2),
'csam' (Eq. 5.7 with §5.6.2's sparse gradients when sparse_grad; closure #1 runs at C(theta) and
tracks the BN statistics), 'sgd' (one pass, the plain base optimizer). Parameter arithmetic uses
``torch._foreach_*`` (a handful of launches per step); theta + rho g is two separately rounded
operations with rho rounded to the parameter dtype, as in the reference, so masks agree bit for bit.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from twinsparse.reference.cram_ops import Compression, base_step_at, check_base_prob, check_rho, sample_compression
from twinsparse.reference.cram_options import check_mode, parse_compressions, resolve_plus
from . import cram_ops as CR
from .prunable import candidates, discover_prunable, reduction_dims
from ._checks import scalar_as
from ._exact import true_div

__all__ = ["CrAM", "frozen_bn_stats"]

_BN = nn.modules.batchnorm._BatchNorm


@contextmanager
def frozen_bn_stats(modules: Iterable[nn.Module]):
    """BatchNorm modules use batch statistics in train mode but leave running_mean / running_var /
    num_batches_tracked untouched inside the block (their ``track_running_stats`` flag is switched off
    and restored afterwards, also on an exception). Eval-mode forwards are unaffected."""
    mods = list(modules)
    saved = [m.track_running_stats for m in mods]
    try:
        for m in mods:
            m.track_running_stats = False
        yield
    finally:
        for m, s in zip(mods, saved):
            m.track_running_stats = s


def _by_dtype(tensors: Sequence[torch.Tensor]) -> dict:
    groups: dict = {}
    for i, p in enumerate(tensors):
        groups.setdefault((p.dtype, p.device), []).append(i)
    return groups


class CrAM:
    """Compression-Aware Minimization around ``base_optimizer`` (module doc).

    ``params_or_model``: an ``nn.Module`` (parameters by name; its BatchNorm modules are frozen in
    the perturbed pass; default prunable set = its Linear/Conv weights, ``accel.prunable``) or an
    iterable of tensors or (name, tensor) pairs (names '0', '1', ...; default prunable set = tensors
    with >= 2 dims; no BN freezing is possible then). ``compressions``: Compression objects
    (``accel.cram_ops.topk_compression`` ...) or strings ('topk:0.7', 'nm:2:4', 'quant:4'; see
    ``reference.cram_options``). ``plus``: None = the mode's default (CrAM⁺ for 'cram'). ``sparse_grad``:
    mask g~ by the Top-K / N:M mask (CrAM-SG; Alg. 2 l.9). ``tau``: Top-K mask refresh period. ``seed``
    with the step count chooses C (the same choice as the reference and on every DDP rank).
    ``check_finite``: raise before the base step if the update is not finite (theta is restored, only
    the first pass's BN statistics have moved).
    """

    def __init__(self, params_or_model, base_optimizer: torch.optim.Optimizer, compressions=(), rho: float = 0.05,
                 plus: bool | None = None, sparse_grad: bool = True, tau: int = 1, seed: int = 0,
                 prunable: Iterable[str] | None = None, mode: str = "cram", check_finite: bool = False,
                 base_prob: float = 0.0):
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        self.mode = check_mode(mode)
        self.plus = resolve_plus(mode, plus)
        self.rho = check_rho(rho)
        if not isinstance(sparse_grad, bool):
            raise TypeError(f"sparse_grad must be True or False, got {sparse_grad!r}")
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
            raise ValueError(f"tau={tau!r} must be an integer >= 1 (1 = recompute the Top-K mask every step)")
        if tau > 1 and mode != "cram":
            raise ValueError(f"tau={tau} (infrequent Top-K masks, [TH] §5.4.1) is defined for mode='cram' only")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be an integer >= 0")
        self.sparse_grad, self.tau, self.seed, self.check_finite = sparse_grad, tau, seed, bool(check_finite)
        self.base_prob = check_base_prob(base_prob)   # [TH] §5.5.1: a plain base step with this probability
        self.base = base_optimizer
        comps = list(compressions) if not isinstance(compressions, (str, Compression)) else [compressions]
        if comps and all(isinstance(c, str) for c in comps):
            comps = list(parse_compressions(comps))
        for c in comps:
            if not isinstance(c, Compression):
                raise TypeError(f"compressions must be Compression objects or strings like 'topk:0.5', got {c!r}")
        if mode in ("cram", "csam") and not comps:
            raise ValueError("the set of compression methods is empty; CrAM needs at least one (e.g. ['topk:0.5'])")
        self.compressions = tuple(comps)
        if isinstance(params_or_model, nn.Module):
            named = [(n, p) for n, p in params_or_model.named_parameters() if p.requires_grad]
            self.bn_modules = [m for m in params_or_model.modules() if isinstance(m, _BN)]
            default = list(discover_prunable(params_or_model)) if prunable is None else None
        else:
            items = list(params_or_model)
            named = [(str(i), it) if isinstance(it, torch.Tensor) else (str(it[0]), it[1]) for i, it in enumerate(items)]
            self.bn_modules = []
            default = [n for n, p in named if p.dim() >= 2] if prunable is None else None
        if not named:
            raise ValueError("CrAM got no trainable parameters")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        if isinstance(prunable, str):
            raise TypeError(f"prunable must be a list of parameter names, got the string {prunable!r}")
        want = default if prunable is None else list(prunable)
        unknown = [n for n in want if n not in self.names]
        if unknown:
            raise ValueError(f"prunable names unknown parameter(s) {unknown}; the parameters are {self.names}")
        if mode in ("cram", "csam") and not want:
            raise ValueError("the prunable set is empty: there is nothing for the compression to act on")
        self.prunable = [n for n in self.names if n in set(want)]
        # N:M groups run along each layer's reduction dimension (dim 0 of a ConvTranspose weight)
        pool = candidates(params_or_model) if isinstance(params_or_model, nn.Module) else {}
        dims = reduction_dims(params_or_model, [n for n in self.prunable if n in pool]) if pool else {}
        self._nm_axis = {n: dims.get(n, "reduction") for n in self.prunable}
        self._pidx = [self.names.index(n) for n in self.prunable]
        self.t = 0
        self._cache: dict = {}          # Compression -> (t computed, {name: bool mask}, [float masks])
        self._saved = None
        self.last: dict = {}

    # --------------------------------------------------------------------- optimizer-like surface
    @property
    def param_groups(self):
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        cache = {self.compressions.index(c): (t0, {n: m.clone() for n, m in masks.items()})
                 for c, (t0, masks, _) in self._cache.items()}
        return {"base": self.base.state_dict(), "t": self.t, "mask_cache": cache}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.t = int(state["t"])
        self._cache = {}
        for i, (t0, masks) in state["mask_cache"].items():
            c = self.compressions[int(i)]
            self._cache[c] = (int(t0), masks, self._float_masks(masks))

    # --------------------------------------------------------------------- helpers
    def _float_masks(self, masks: dict) -> list:
        return [masks[n].to(self.params[i].dtype) for n, i in zip(self.prunable, self._pidx)]

    def _closure(self, closure, frozen: bool):
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            if frozen:
                with frozen_bn_stats(self.bn_modules):
                    loss = closure()
            else:
                loss = closure()
        return loss, [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def _save(self) -> None:
        if self._saved is None or any(s.shape != p.shape or s.dtype != p.dtype for s, p in zip(self._saved, self.params)):
            self._saved = [torch.empty_like(p) for p in self.params]
        torch._foreach_copy_(self._saved, [p.detach() for p in self.params])

    @torch.no_grad()
    def _restore(self) -> None:
        torch._foreach_copy_([p.detach() for p in self.params], self._saved)

    @torch.no_grad()
    def _axpy_(self, grads: list, scale) -> None:
        """theta <- theta + scale * g on every parameter (scale rounded to each dtype first; a 0-d
        float64 tensor scale is cast to the dtype)."""
        for (dt, _), idx in _by_dtype(self.params).items():
            ps, gs = [self.params[i].detach() for i in idx], [grads[i] for i in idx]
            s = scale.to(dt) if isinstance(scale, torch.Tensor) else scalar_as(scale, dt)
            torch._foreach_add_(ps, torch._foreach_mul(gs, s))

    @staticmethod
    def _norm(grads: list) -> torch.Tensor:
        """Global l2 norm (float64) of every gradient, without a host sync."""
        norms = torch._foreach_norm(grads)
        return torch.linalg.vector_norm(torch.stack([n.to(torch.float64) for n in norms]))

    def _sam_scale(self, grads: list) -> torch.Tensor:
        norm = self._norm(grads)
        # rho / ||g|| as one division, like the reference (``rho / norm`` would be norm.reciprocal() * rho)
        return torch.where(norm > 0, true_div(torch.full_like(norm, self.rho), norm), torch.zeros_like(norm))

    @torch.no_grad()
    def _compress_(self, comp: Compression, use_cache: bool):
        """Apply C to the prunable parameters in place; returns (bool masks or None, refreshed)."""
        sub = {n: self.params[i].detach() for n, i in zip(self.prunable, self._pidx)}
        if use_cache and comp.kind == "topk":
            hit = self._cache.get(comp)
            if hit is not None and self.t - hit[0] < self.tau:
                torch._foreach_mul_(list(sub.values()), hit[2])
                return hit[1], False
        out, masks = CR.compress(sub, comp, nm_axis=self._nm_axis)
        torch._foreach_copy_(list(sub.values()), [out[n] for n in sub])
        if comp.kind == "topk" and use_cache:
            self._cache[comp] = (self.t, masks, self._float_masks(masks))
        return masks, True

    def _mask_grads_(self, grads: list, masks: dict) -> None:
        torch._foreach_mul_([grads[i] for i in self._pidx], self._float_masks(masks))

    # --------------------------------------------------------------------- the step
    def step(self, closure):
        """One step (module doc); returns the loss of the first closure call."""
        if closure is None or not callable(closure):
            raise TypeError("CrAM.step needs a closure that computes the loss and calls backward() "
                            "(it is evaluated twice per step: at theta and at the perturbed point)")
        self.t += 1
        try:
            return self._step(closure, self.t)
        except BaseException:
            self.t -= 1             # a failed step is not counted (theta was restored / never stepped)
            raise

    def _step(self, closure, t: int):
        if self.mode == "sgd" or base_step_at(self.seed, t, self.base_prob):
            loss, _ = self._closure(closure, frozen=False)
            self._base_step()
            self.last = {"t": t, "compression": None, "masks": None, "refreshed": False,
                         "base_step": self.mode != "sgd"}
            return loss
        self._save()
        comp, masks, refreshed = None, None, False
        try:
            if self.mode in ("cram", "sam"):
                loss, g = self._closure(closure, frozen=False)                       # l.4
                if self.mode == "sam":
                    self._axpy_(g, self._sam_scale(g))
                else:
                    comp = sample_compression(self.compressions, self.seed, t)       # l.5
                    self._axpy_(g, self.rho)                                         # theta + rho g
                    masks, refreshed = self._compress_(comp, use_cache=True)         # l.6-8
                _, gt = self._closure(closure, frozen=True)
            else:  # csam
                comp = sample_compression(self.compressions, self.seed, t)
                m0, _ = self._compress_(comp, use_cache=False)
                loss, g_hat = self._closure(closure, frozen=False)                  # at C(theta), BN tracked
                if self.sparse_grad and m0 is not None:
                    self._mask_grads_(g_hat, m0)
                self._restore()
                self._axpy_(g_hat, self._sam_scale(g_hat))
                masks, refreshed = self._compress_(comp, use_cache=False)
                _, gt = self._closure(closure, frozen=True)
                g = None
        finally:
            self._restore()
        if self.sparse_grad and masks is not None:                                   # l.9
            self._mask_grads_(gt, masks)
        if self.plus:                                                                # l.14
            torch._foreach_add_(gt, g)
        for p, gi in zip(self.params, gt):
            p.grad = gi
        self.last = {"t": t, "compression": comp, "masks": masks, "refreshed": refreshed, "base_step": False}
        self._base_step()                                                            # l.16
        return loss

    def _base_step(self) -> None:
        if self.check_finite:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads and not bool(torch.isfinite(self._norm(grads))):
                bad = [n for n, p in zip(self.names, self.params) if p.grad is not None and not torch.isfinite(p.grad).all()]
                raise ValueError(f"CrAM step {self.t}: the update contains non-finite values (NaN or inf) in {bad}; "
                                 f"the parameters were left unchanged")
        self.base.step()

    def __repr__(self) -> str:
        return (f"CrAM(mode={self.mode!r}, rho={self.rho}, plus={self.plus}, sparse_grad={self.sparse_grad}, "
                f"tau={self.tau}, compressions={len(self.compressions)}, base={type(self.base).__name__})")
