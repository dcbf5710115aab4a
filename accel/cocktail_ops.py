"""Sparse Cocktail operators on torch tensors ([SC] §3.4-3.6, Eq. 1, App. C; docs/methods.md §1.7,
§8.1-§8.3, §1.13); twin of ``reference.cocktail_ops``.

UMG channel masks and the nested IMP masks select with the project's tie rule (``accel.topk``);
the score arithmetic follows the reference's operation order with scalars rounded to the tensor
dtype first. The distillation loss of Eq. 1 uses autograd with the dense logits detached (stop
gradient). Scalar logic (IMP schedules, greedy interpolation, pivot step order) is imported.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from twinsparse.reference._checks import check_density, count_for_density, imp_keep_count
from twinsparse.reference.cocktail_ops import (CANDIDATE_POOL, CHANNEL_RATE, IMP_ITERATIONS, NM_SCHEDULE,  # noqa: F401
                                    UMG_BETA, UNSTRUCTURED_RATE, channel_sparsity_at, check_beta, check_pool,
                                    check_rate, check_temperature, choose_alpha, greedy_interpolation,
                                    greedy_interpolation_table, imp_schedule, interpolation_coefficients,
                                    nm_generated_at, nm_pattern_at, pivot_step, unstructured_sparsity_at)
from twinsparse.reference.masks import check_layer_dict, check_layer_names
from . import kernels as _kernels
from ._checks import as_real_tensor, check_finite, scalar_as
from ._exact import true_div
from .dst import prune_to_count
from .flat import Layout, segment_sums
from .masks import _require_finite_weights, _require_flag_clear
from .topk import _require_finite, select_segments, select_within, topk_mask, topk_within

__all__ = ["umg_channel_scores", "umg_channel_scores_all", "umg_channel_mask", "umg_channel_masks", "imp_unstructured_masks",
           "dense_pivot_criterion", "dense_pivot_loss", "CANDIDATE_POOL", "greedy_interpolation",
           "greedy_interpolation_table", "choose_alpha", "interpolation_coefficients", "pivot_step",
           "unstructured_sparsity_at", "channel_sparsity_at", "nm_pattern_at", "nm_generated_at", "imp_schedule",
           "check_beta", "check_rate", "check_temperature", "check_pool", "NM_SCHEDULE"]


def _check_umg_inputs(w, mask_u, mask_nm, what: str = "weight", finite: bool = True) -> torch.Tensor:
    w = as_real_tensor(w, what) if finite else _real_type(w, what)
    if w.dim() < 2:
        raise ValueError(f"UMG channel scores need a Linear [O, I] or Conv [O, I, kh, kw] weight, "
                         f"got shape {tuple(w.shape)}")
    for what, m in (("mask_u", mask_u), ("mask_nm", mask_nm)):
        if m is None and what == "mask_nm":
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != w.shape:
            got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{what} must be a boolean mask of the weight's shape {tuple(w.shape)}, got {got}")
    return w


def _real_type(w, what: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if w.is_complex():
        raise TypeError(f"{what} must be a real tensor, got dtype {w.dtype}")
    return w


def _alive_channels(alive, n_out: int, shape) -> torch.Tensor:
    if not isinstance(alive, torch.Tensor) or alive.dtype != torch.bool:
        raise TypeError(f"alive must be a boolean channel mask, got {getattr(alive, 'dtype', type(alive).__name__)}")
    if tuple(alive.shape) == (n_out,):
        return alive
    if tuple(alive.shape) == tuple(shape):
        rows = alive.reshape(n_out, -1)
        anyr, allr = rows.any(dim=1), rows.all(dim=1)
        if not torch.equal(anyr, allr):
            raise ValueError("alive must be a channel mask: every output channel all-True or all-False")
        return anyr
    raise ValueError(f"alive must have shape ({n_out},) or the weight's shape {tuple(shape)}, got {tuple(alive.shape)}")


def umg_channel_scores(w: torch.Tensor, mask_u: torch.Tensor, mask_nm: torch.Tensor | None = None,
                       beta: float = UMG_BETA) -> torch.Tensor:
    """beta ||m^u ⊙ W_o||_1 + (1 - beta) ||m^nm ⊙ W_o||_1 per output channel ([SC] §3.4)."""
    b = check_beta(beta)
    w = _check_umg_inputs(w, mask_u, mask_nm)
    if _kernels.on_device(w):                # CUDA + CuPy: one warp per output channel (kernels/merge.cu)
        fused = _kernels.umg_channel_scores(w, mask_u, mask_nm, b) if _kernels.usable(w) else None
        if fused is not None:
            return fused
    return _umg_scores_torch(w, mask_u, mask_nm, b)


def _umg_scores_torch(w, mask_u, mask_nm, b: float) -> torch.Tensor:
    a = w.abs().reshape(w.shape[0], -1)
    if not a.is_floating_point():
        a = a.to(torch.float64)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    su = torch.where(mask_u.reshape(a.shape), a, zero).sum(dim=1)
    snm = a.sum(dim=1) if mask_nm is None else torch.where(mask_nm.reshape(a.shape), a, zero).sum(dim=1)
    return scalar_as(b, a.dtype) * su + scalar_as(1.0 - b, a.dtype) * snm


def _scores_all(ws: list, mus: list, mnms: list, b: float, label) -> list:
    """UMG scores of type- and shape-checked layers, which must be finite (``label(i)`` names layer
    i in the error): one kernel launch (per dtype) on CUDA, which flags NaN / inf as it reads the
    weights, else per layer after one finiteness reduction."""
    if ws and _kernels.on_device(ws[0]) and all(w.device == ws[0].device for w in ws) and _kernels.usable(*ws):
        bad = torch.zeros(1, dtype=torch.int32, device=ws[0].device)
        fused = _kernels.umg_channel_scores_all(ws, mus, mnms, b, bad=bad)
        if fused is not None:
            _require_flag_clear(bad, dict(enumerate(ws)), label=label)
            return fused
    _require_finite_weights(dict(enumerate(ws)), label=label)
    return [_umg_scores_torch(w, mu, mnm, b) for w, mu, mnm in zip(ws, mus, mnms)]


def umg_channel_scores_all(ws, masks_u, masks_nm=None, beta: float = UMG_BETA) -> list[torch.Tensor]:
    """``umg_channel_scores`` of every layer (lists of weights and masks; ``masks_nm`` None, or a
    list whose entries may be None, means all ones): on CUDA one kernel launch for all layers
    (kernels/merge.cu), with one finiteness check for all weights."""
    b = check_beta(beta)
    ws, masks_u = list(ws), list(masks_u)
    masks_nm = [None] * len(ws) if masks_nm is None else list(masks_nm)
    if not len(ws) == len(masks_u) == len(masks_nm):
        raise ValueError(f"umg_channel_scores_all needs one mask_u and one mask_nm per weight; got {len(ws)} weights, "
                         f"{len(masks_u)} masks_u and {len(masks_nm)} masks_nm")
    for i, (w, mu, mnm) in enumerate(zip(ws, masks_u, masks_nm)):
        _check_umg_inputs(w, mu, mnm, f"weights[{i}]", finite=False)
    return _scores_all(ws, masks_u, masks_nm, b, label=lambda i: f"weights[{i}]")


def umg_channel_mask(w: torch.Tensor, mask_u: torch.Tensor, mask_nm: torch.Tensor | None, channel_density: float,
                     beta: float = UMG_BETA, alive=None) -> torch.Tensor:
    """Top floor(d * O + 0.5) channels by UMG score (among ``alive`` when given), broadcast to w's shape."""
    scores = umg_channel_scores(w, mask_u, mask_nm, beta)
    o = scores.shape[0]
    k = count_for_density(check_density(channel_density, "channel_density"), o)
    if alive is None:
        keep = topk_mask(scores, k)
    else:
        a = _alive_channels(alive, o, w.shape)
        if k > int(a.sum()):
            raise ValueError(f"channel_density={channel_density!r} keeps {k} of {o} channels but only "
                             f"{int(a.sum())} are alive (nested channel masks cannot regrow)")
        keep = topk_within(scores, a, k)
    return keep.reshape((-1,) + (1,) * (w.dim() - 1)).expand(w.shape).contiguous()


def umg_channel_masks(weights: Mapping, masks_u: Mapping, masks_nm: Mapping | None, channel_density: float,
                      beta: float = UMG_BETA, alive: Mapping | None = None) -> dict:
    """``umg_channel_mask`` for every layer with the same channel density."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, masks_u, "masks_u")
    if masks_nm is not None:
        check_layer_names(weights, masks_nm, "masks_nm")
    if alive is not None:
        check_layer_names(weights, alive, "alive")
    b = check_beta(beta)
    d = check_density(channel_density, "channel_density")
    names = list(weights)
    for n in names:
        _check_umg_inputs(weights[n], masks_u[n], None if masks_nm is None else masks_nm[n], f"weights[{n!r}]",
                          finite=False)
    ws = [weights[n] for n in names]
    # every layer's scores at once (one kernel launch on CUDA), then one segmented selection
    scores = _scores_all(ws, [masks_u[n] for n in names], [None if masks_nm is None else masks_nm[n] for n in names], b,
                         label=lambda i: f"weights[{names[i]!r}]")
    outs = [int(s.shape[0]) for s in scores]
    ks = [count_for_density(d, o) for o in outs]
    cands = None
    if alive is not None:
        cands = [_alive_channels(alive[n], o, w.shape) for n, o, w in zip(names, outs, ws)]
        lay_c = Layout(names, [(o,) for o in outs])
        n_alive = segment_sums(lay_c, torch.cat(cands)).tolist()             # one host read for every layer
        for n, k, o, a in zip(names, ks, outs, n_alive):
            if k > a:
                raise ValueError(f"channel_density={channel_density!r} keeps {k} of {o} channels but only "
                                 f"{a} are alive (nested channel masks cannot regrow)")
    if len({s.dtype for s in scores}) == 1:
        lay = Layout(names, [(o,) for o in outs])
        flat = torch.cat(scores)
        _require_finite(lay, flat, "UMG scores")
        keep = select_segments(flat, None if cands is None else torch.cat(cands), lay, ks).split(outs)
    else:                                    # layers of several dtypes: one selection each
        keep = [topk_mask(s, k) if cands is None else select_within(s, c, k)
                for s, k, c in zip(scores, ks, cands if cands is not None else [None] * len(ks))]
    return {n: kp.reshape((-1,) + (1,) * (w.dim() - 1)).expand(w.shape).contiguous()
            for n, kp, w in zip(names, keep, ws)}


def imp_unstructured_masks(weights: Mapping, prev_masks: Mapping, rate: float = UNSTRUCTURED_RATE) -> dict:
    """Nested global IMP step: keep |m_{k-1}| - floor(rate |m_{k-1}| + 0.5) largest |W| within m_{k-1}."""
    r = check_rate(rate)
    check_layer_dict(prev_masks, "prev_masks")
    check_layer_names(prev_masks, weights, "weights")
    for n, m in prev_masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"prev_masks[{n!r}] must be a boolean mask, got {getattr(m, 'dtype', type(m).__name__)}")
    scores = {n: as_real_tensor(weights[n], f"weights[{n!r}]").abs() for n in prev_masks}
    n_prev = int(sum(int(m.sum()) for m in prev_masks.values()))
    return prune_to_count(prev_masks, scores, imp_keep_count(r, n_prev))


# ----------------------------------------------------------------------------- Eq. 1

def _check_logits(s, d) -> None:
    for what, z in (("sparse_logits", s), ("dense_logits", d)):
        if not (isinstance(z, torch.Tensor) and z.is_floating_point() and z.dim() == 2
                and z.shape[0] >= 1 and z.shape[1] >= 1):
            raise TypeError(f"{what} must be a float tensor of shape [B, K], got {getattr(z, 'shape', z)!r}")
        check_finite(z, what)
    if s.shape != d.shape or s.dtype != d.dtype:
        raise ValueError(f"sparse_logits ({s.dtype} {tuple(s.shape)}) and dense_logits ({d.dtype} {tuple(d.shape)}) "
                         f"must have the same float dtype and shape [B, K]")


def _targets(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor of int labels [B] or soft labels [B, K], got {type(y).__name__}")
    if y.dim() == 1 and not y.is_floating_point():
        if y.shape[0] != s.shape[0]:
            raise ValueError(f"int labels have shape {tuple(y.shape)}; expected ({s.shape[0]},)")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= s.shape[1]):
            raise ValueError(f"labels must lie in [0, {s.shape[1] - 1}], got values in [{int(y.min())}, {int(y.max())}]")
        return y.long()
    if y.dim() == 2 and y.is_floating_point() and y.shape == s.shape:
        return y.to(s.dtype)
    raise TypeError(f"y must be int labels [B] or float soft labels [B, K]; got {y.dtype}, {tuple(y.shape)}")


def dense_pivot_criterion(sparse_logits: torch.Tensor, dense_logits: torch.Tensor, y: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """[SC] Eq. (1) as a differentiable loss for training: 1/2 [CE(s, y) + CE(s / T, softmax(d / T))],
    with the dense logits detached (the stop-gradient operator)."""
    t = check_temperature(temperature)
    _check_logits(sparse_logits, dense_logits)
    target = F.softmax(true_div(dense_logits.detach(), t), dim=1)
    hard = F.cross_entropy(sparse_logits, _targets(y, sparse_logits))
    soft = F.cross_entropy(true_div(sparse_logits, t), target)
    return 0.5 * (hard + soft)


def dense_pivot_loss(sparse_logits: torch.Tensor, dense_logits: torch.Tensor, y: torch.Tensor,
                     temperature: float = 1.0):
    """(loss, d loss / d sparse_logits) of Eq. (1) by autograd; twin of the reference's closed form."""
    _check_logits(sparse_logits, dense_logits)
    z = sparse_logits.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = dense_pivot_criterion(z, dense_logits, y, temperature)
        (dz,) = torch.autograd.grad(loss, z)
    return loss.detach(), dz

