"""The Sparsifier's optimizer step: masked gradients, the wrapped optimizer's update, pruned
weights and every optimizer slot kept at exactly 0, and a NaN/inf guard, with no host sync.

The guard is the same algorithm on every device: a float32 flag ``found_inf`` is zeroed, set on
the device when any gradient the optimizer steps is non-finite (``guard``), and the step is then
skipped on the device (the optimizer kernels read the flag, as torch's fused optimizers do under
GradScaler). The host never reads it on a plain step; the Sparsifier keeps a device record of
bad steps and reports it at its next synchronisation point.

Three ways to step, chosen per parameter group and dtype:

* ``kernel``: CUDA + CuPy, torch.optim.SGD / Adam / AdamW: one launch of ``masked_sgd.cu`` /
  ``masked_adam.cu`` for every tensor of the group (mask, update, skip-on-flag fused);
* ``torch``: the same optimizers anywhere else: the gradients of the prunable weights are
  multiplied by their masks with one ``torch._foreach_mul_``, then torch's own fused update
  (``torch._fused_sgd_`` / ``_fused_adam_`` / ``_fused_adamw_``) runs with ``found_inf``;
* ``generic``: any other optimizer (or options the fused updates do not take): the flag is read
  on the host (the one sync this path costs), the gradients are masked and ``optimizer.step()``
  runs; pruned weights are re-masked afterwards when the optimizer could move them.

The optimizer's ``state`` is kept in torch's own format (SGD ``momentum_buffer``; Adam ``step``,
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so ``optimizer.state_dict()`` and a later plain
``optimizer.step()`` see what they expect. Differences from ``optimizer.step()``: a fused update
rounds like torch's ``fused=True`` optimizers (a last-bit difference to the foreach/for-loop
ones); SGD's momentum buffer is created as zeros on a parameter's first step (so a skipped first
step leaves it 0 and the next step, with dampening > 0, weighs its gradient by 1 - dampening).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import kernels as _kernels
from .mask_buffers import MaskBuffers, dense_strides

__all__ = ["StepEngine", "optimizer_kind", "nonfinite_guard"]


def optimizer_kind(optimizer) -> Optional[str]:
    """'sgd' / 'adam' (Adam and AdamW) for the optimizers whose update the engine fuses, else None."""
    t = type(optimizer)
    if t is torch.optim.SGD:
        return "sgd"
    if t in (torch.optim.Adam, torch.optim.AdamW):
        return "adam"
    return None


def nonfinite_guard(grads: list, found: torch.Tensor, record: Optional[torch.Tensor], scratch, one) -> None:
    """Set ``found`` (float32 0-d, zeroed here) when a gradient is non-finite, and advance
    ``record`` (float64 [3]: bad steps, first bad iteration, iterations); no sync."""
    found.zero_()
    if not grads:
        return
    kern = [g for g in grads if g.dtype in _kernels.DTYPES]
    if (len(kern) == len(grads) and _kernels.on_device(grads[0]) and _kernels.usable(grads[0])
            and all(dense_strides(g) for g in grads)):
        _kernels.nonfinite_check(grads, found, record, scratch)
        return
    by: dict = {}
    for g in grads:
        by.setdefault((g.device, g.dtype), []).append(g)
    for gs in by.values():      # multiplies by 1 (exact) and sets found on NaN / inf
        torch._amp_foreach_non_finite_check_and_unscale_(gs, found, one)
    if record is not None:      # the iteration; its number if it is the first bad one; the bad count
        record[2:3].add_(1)
        record[1:2].addcmul_((record[0:1] == 0) * found, record[2:3])
        record[0:1].add_(found)


class _Plan:
    """One parameter group's step, prepared once: its tensors split by (device, dtype)."""

    def __init__(self, group: dict, masks: dict, float_masks: dict):
        self.group = group
        self.subgroups = {}
        for p in group["params"]:
            self.subgroups.setdefault((p.device, p.dtype), []).append(p)
        self.masks = masks            # id(param) -> memory-order bool view (prunable only)
        self.float_masks = float_masks


class StepEngine:
    def __init__(self, optimizer: torch.optim.Optimizer, prunable: dict, buffers: Optional[MaskBuffers]):
        self.opt = optimizer
        self.kind = optimizer_kind(optimizer)
        self.prunable = prunable
        self.buffers = buffers
        self._plans: Optional[list] = None
        self._plan_key = None
        self.last_path: Optional[str] = None       # 'kernel' / 'torch' / 'generic' / 'dense' (tests, bench)

    # ------------------------------------------------------------------ plans
    def _plans_now(self) -> list:
        key = tuple(len(g["params"]) for g in self.opt.param_groups)
        if self._plans is None or key != self._plan_key:
            masks, fmasks = {}, {}
            if self.buffers is not None:
                for n, p in self.prunable.items():
                    masks[id(p)] = self.buffers.kview[n]
                    fmasks[id(p)] = self.buffers.kfloat_view[n]
            self._plans = [_Plan(g, masks, fmasks) for g in self.opt.param_groups]
            self._plan_key = key
        return self._plans

    def invalidate(self) -> None:
        self._plans = None

    def grads(self) -> list:
        """Every gradient the optimizer would step (the guard covers all of them)."""
        return [p.grad for g in self.opt.param_groups for p in g["params"] if p.grad is not None]

    # ------------------------------------------------------------------ step
    def step(self, found: Optional[torch.Tensor], grad_scale: Optional[torch.Tensor], masked: bool,
             remask: bool) -> None:
        """One optimizer step with the masks (``masked=False``: plain, for the dense method)."""
        if self.kind is None or not self._fusable():
            self._generic(found, grad_scale, masked, remask)
            return
        paths = set()
        for plan in self._plans_now():
            group = plan.group
            for (device, dtype), params in plan.subgroups.items():
                ps = [p for p in params if p.grad is not None]
                if not ps:
                    continue
                gs = [p.grad for p in ps]
                ms = [plan.masks.get(id(p)) for p in ps] if masked else [None] * len(ps)
                if self._kernel_ok(ps, gs, group):
                    paths.add("kernel")
                    self._kernel_step(group, ps, gs, ms, found, grad_scale)
                else:
                    paths.add("torch")
                    if masked:
                        pairs = [(g, plan.float_masks[id(p)]) for p, g in zip(ps, gs) if id(p) in plan.float_masks]
                        if pairs:
                            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
                    self._torch_step(group, ps, gs, found, grad_scale)
        self.last_path = "+".join(sorted(paths)) or "none"

    def _fusable(self) -> bool:
        from torch.optim import optimizer as _o
        foreign = [h for h in self.opt._optimizer_step_pre_hooks.values() if not getattr(h, "twinsparse_hook", False)]
        if (foreign or self.opt._optimizer_step_post_hooks
                or _o._global_optimizer_pre_hooks or _o._global_optimizer_post_hooks):
            return False      # the user's hooks must see optimizer.step(): the generic path calls it
        for g in self.opt.param_groups:
            if g.get("differentiable") or any(p.grad is not None and p.grad.is_sparse for p in g["params"][:1]):
                return False
            if self.kind == "adam" and g.get("capturable") and not g.get("fused"):
                return False
        return True

    def _kernel_ok(self, ps, gs, group) -> bool:
        p0 = ps[0]
        if not (_kernels.on_device(p0) and p0.dtype in _kernels.DTYPES and _kernels.available()):
            return False
        if isinstance(group["lr"], torch.Tensor) or (self.buffers is not None and not self.buffers.dense):
            return False
        return all(g.dtype == p.dtype and not g.is_sparse and g.stride() == p.stride() and dense_strides(p)
                   for p, g in zip(ps, gs))

    # ------------------------------------------------------------------ SGD / Adam state
    def _sgd_bufs(self, group, ps):
        state = self.opt.state
        bufs = [state[p].get("momentum_buffer") for p in ps]
        first = all(b is None for b in bufs)
        new = [b if b is not None else torch.zeros_like(p) for p, b in zip(ps, bufs)]
        return bufs, new, first

    def _adam_state(self, group, ps):
        state = self.opt.state
        amsgrad = group["amsgrad"]
        out = ([], [], [], [])
        for p in ps:
            st = state[p]
            if len(st) == 0:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif st["step"].device != p.device or st["step"].dtype != torch.float32:
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)   # once: kept on the device
            if amsgrad and "max_exp_avg_sq" not in st:
                st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out[0].append(st["exp_avg"])
            out[1].append(st["exp_avg_sq"])
            out[2].append(st["max_exp_avg_sq"] if amsgrad else None)
            out[3].append(st["step"])
        return out

    def _kernel_step(self, group, ps, gs, ms, found, grad_scale) -> None:
        if self.kind == "sgd":
            momentum = group["momentum"]
            if momentum != 0:
                bufs_in, bufs_out, _ = self._sgd_bufs(group, ps)
            else:
                bufs_in = bufs_out = [None] * len(ps)
            _kernels.sgd_step(ps, gs, ms, bufs_in, bufs_out, lr=group["lr"], momentum=momentum,
                              weight_decay=group["weight_decay"], dampening=group["dampening"],
                              nesterov=group["nesterov"], maximize=group["maximize"], found_inf=found,
                              grad_scale=grad_scale)
            if momentum != 0:
                for p, b in zip(ps, bufs_out):
                    self.opt.state[p]["momentum_buffer"] = b
            return
        ea, es, mx, steps = self._adam_state(group, ps)
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        _kernels.adam_step(ps, gs, ms, ea, es, mx, steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=group["amsgrad"],
                           decoupled=bool(group.get("decoupled_weight_decay", type(self.opt) is torch.optim.AdamW)),
                           maximize=group["maximize"], found_inf=found, grad_scale=grad_scale)
        if found is not None:
            torch._foreach_sub_(steps, [found] * len(steps))

    def _torch_step(self, group, ps, gs, found, grad_scale) -> None:
        if self.kind == "sgd":
            momentum = group["momentum"]
            bufs, first = [], False
            if momentum != 0:
                _, bufs, first = self._sgd_bufs(group, ps)
            torch._fused_sgd_(ps, gs, bufs, weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                              dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                              is_first_step=first, grad_scale=grad_scale, found_inf=found)
            if momentum != 0:
                for p, b in zip(ps, bufs):
                    self.opt.state[p]["momentum_buffer"] = b
            return
        ea, es, mx, steps = self._adam_state(group, ps)
        beta1, beta2 = group["betas"]
        decoupled = bool(group.get("decoupled_weight_decay", type(self.opt) is torch.optim.AdamW))
        fn = torch._fused_adamw_ if decoupled else torch._fused_adam_
        torch._foreach_add_(steps, 1)
        fn(ps, gs, ea, es, mx if group["amsgrad"] else [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
           weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=group["amsgrad"], maximize=group["maximize"],
           grad_scale=grad_scale, found_inf=found)
        if found is not None:
            torch._foreach_sub_(steps, [found] * len(steps))

    # ------------------------------------------------------------------ any other optimizer
    def _generic(self, found, grad_scale, masked: bool, remask: bool) -> None:
        self.last_path = "generic"
        if found is not None and bool(found.item()):     # the one host sync of this path
            return
        if grad_scale is not None:
            inv = grad_scale.double().reciprocal().float()
            torch._foreach_mul_([g for g in self.grads()], inv)
        if masked and self.buffers is not None:
            pairs = [(p.grad, self.buffers.kfloat_view[n]) for n, p in self.prunable.items() if p.grad is not None]
            if pairs:
                torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
        self.opt.step()
        if masked and remask and self.buffers is not None:
            with torch.no_grad():
                torch._foreach_mul_([p.data for p in self.prunable.values()],
                                    [self.buffers.kfloat_view[n] for n in self.prunable])
