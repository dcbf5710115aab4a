"""CrAM operators on torch tensors ([TH] Ch. 5, Alg. 2; SPEC §4.3, §4.4, §7.4); twin of ``reference.cram``.

The compression specs, the seeded choice of C and the range helpers are scalar logic imported from
the reference. Array operators follow the reference's operation order: theta + rho * g is two
separately rounded IEEE operations (no fused multiply-add) with rho rounded to the tensor dtype
first, so the perturbed point -- and hence every Top-K / N:M mask and quantization code -- is
bit-identical to the reference's; norms accumulate in float64.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from reference.cram import (COMPRESSION_KINDS, Compression, check_rho, multi_topk, nm_compression,  # noqa: F401
                            percent_range, quant_compression, sample_compression, topk_compression)
from reference.masks import check_layer_dict
from ._checks import as_real_tensor, check_same_shape
from .acdc import topk_compress
from .masks import nm_masks
from .quantize import quantize_dequantize

__all__ = ["Compression", "topk_compression", "nm_compression", "quant_compression", "percent_range",
           "multi_topk", "sample_compression", "check_rho", "grad_norm", "compress", "perturb", "sam_point",
           "cram_point", "csam_point", "sparse_grads", "cram_update_grads"]


def _pair(a: Mapping, b: Mapping, what_a: str, what_b: str) -> None:
    check_layer_dict(a, what_a)
    if list(a) != list(b):
        raise ValueError(f"{what_a} and {what_b} must name the same tensors in the same order: {list(a)} vs {list(b)}")
    for n in a:
        as_real_tensor(a[n], f"{what_a}[{n!r}]")
        as_real_tensor(b[n], f"{what_b}[{n!r}]")
        check_same_shape(a[n], b[n], f"{what_a}[{n!r}]", f"{what_b}[{n!r}]")


def _prunable(params: Mapping, prunable) -> list[str]:
    if prunable is None:
        return list(params)
    if isinstance(prunable, str):
        raise TypeError(f"prunable must be a list of tensor names, got the string {prunable!r}")
    names = list(prunable)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"prunable names unknown tensor(s) {unknown}; the tensors are {list(params)}")
    return [n for n in params if n in set(names)]


def _s(x: float, dtype: torch.dtype) -> float:
    """The Python scalar ``x`` rounded to ``dtype`` (the reference's ``dtype.type(x)``)."""
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()


def grad_norm(grads: Mapping[str, torch.Tensor]) -> float:
    """Global l2 norm over every tensor of the dict, accumulated in float64."""
    return math.sqrt(sum(float(g.to(torch.float64).square().sum()) for g in grads.values()))


def _axpy(params: Mapping, grads: Mapping, scale: float) -> dict:
    out = {}
    for n, p in params.items():
        dt = p.dtype if p.is_floating_point() else torch.float64
        out[n] = p.to(dt) + _s(scale, dt) * grads[n].to(dt)      # two rounded ops, as the reference
    return out


def compress(params: Mapping[str, torch.Tensor], compression: Compression,
             prunable: Iterable[str] | None = None) -> tuple[dict, dict | None]:
    """C(params): (compressed dict, masks of the prunable tensors or None for quantization)."""
    if not isinstance(compression, Compression):
        raise TypeError(f"compression must be a Compression (topk_compression / nm_compression / "
                        f"quant_compression), got {type(compression).__name__}")
    check_layer_dict(params, "params")
    for n, p in params.items():
        as_real_tensor(p, f"params[{n!r}]")
    names = _prunable(params, prunable)
    sub = {n: params[n] for n in names}
    out = {n: p.clone() for n, p in params.items()}
    if compression.kind == "quant":
        out.update({n: quantize_dequantize(w, compression.bits) for n, w in sub.items()})
        return out, None
    if compression.kind == "topk":
        comp, masks = topk_compress(sub, compression.sparsity, compression.distribution,
                                    compression.keep_dense, compression.first_last_dense)
    else:
        masks, _ = nm_masks(sub, compression.n, compression.m)
        comp = {n: torch.where(masks[n], w, torch.zeros((), dtype=w.dtype, device=w.device)) for n, w in sub.items()}
    out.update(comp)
    return out, masks


def perturb(params: Mapping, grads: Mapping, rho: float, normalize: bool = False) -> dict:
    """theta + rho * g (CrAM, unnormalized) or theta + rho * g / ||g|| (SAM); zero g -> theta."""
    rho = check_rho(rho)
    _pair(params, grads, "params", "grads")
    if normalize:
        norm = grad_norm(grads)
        return _axpy(params, grads, rho / norm if norm > 0 else 0.0)
    return _axpy(params, grads, rho)


def sam_point(params: Mapping, grads: Mapping, rho: float) -> dict:
    """SAM's perturbed point theta + rho * g / ||g|| ([TH] Eq. C.2)."""
    return perturb(params, grads, rho, normalize=True)


def cram_point(params: Mapping, grads: Mapping, rho: float, compression: Compression,
               prunable: Iterable[str] | None = None, normalize: bool = False) -> tuple[dict, dict | None]:
    """theta~ = C(theta + rho * g) and its mask M_t ([TH] Eq. 5.2, Alg. 2 l.6-8)."""
    return compress(perturb(params, grads, rho, normalize), compression, prunable)


def csam_point(params: Mapping, grads_at_compressed: Mapping, rho: float, compression: Compression,
               masks_at_compressed: Mapping | None = None,
               prunable: Iterable[str] | None = None) -> tuple[dict, dict | None]:
    """C-SAM: C(theta + rho * g^ / ||g^||), g^ = (M_theta *) grad L(C(theta)) ([TH] Eq. 5.7, §5.6.2)."""
    g = sparse_grads(grads_at_compressed, masks_at_compressed) if masks_at_compressed is not None else grads_at_compressed
    return compress(perturb(params, g, rho, normalize=True), compression, prunable)


def sparse_grads(grads: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict:
    """M_t * grad on the masked tensors, other tensors unchanged (Alg. 2 l.9)."""
    check_layer_dict(grads, "grads")
    unknown = [n for n in masks if n not in grads]
    if unknown:
        raise ValueError(f"masks name tensor(s) {unknown} that are not in grads {list(grads)}")
    out = {}
    for n, g in grads.items():
        g = as_real_tensor(g, f"grads[{n!r}]")
        if n in masks:
            m = masks[n]
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"masks[{n!r}] must be a boolean tensor, got {getattr(m, 'dtype', type(m).__name__)}")
            check_same_shape(m, g, f"masks[{n!r}]", f"grads[{n!r}]")
            out[n] = torch.where(m, g, torch.zeros((), dtype=g.dtype, device=g.device))
        else:
            out[n] = g.clone()
    return out


def cram_update_grads(grad_tilde: Mapping, grad: Mapping | None = None, masks: Mapping | None = None,
                      plus: bool = True) -> dict:
    """(M_t *) grad L(theta~) [+ grad L(theta) for CrAM⁺] (Alg. 2 l.9-14, Eq. 5.4)."""
    if not isinstance(plus, bool):
        raise TypeError(f"plus must be True (CrAM⁺) or False (CrAM), got {plus!r}")
    gt = sparse_grads(grad_tilde, masks) if masks is not None else {
        n: as_real_tensor(g, f"grad_tilde[{n!r}]").clone() for n, g in grad_tilde.items()}
    if not plus:
        return gt
    if grad is None:
        raise ValueError("CrAM⁺ (plus=True) adds the gradient at theta: pass grad=, or plus=False for CrAM")
    _pair(gt, grad, "grad_tilde", "grad")
    return {n: gt[n] + grad[n].to(gt[n].dtype) for n in gt}
