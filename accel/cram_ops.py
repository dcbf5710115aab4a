"""CrAM operators on torch tensors ([TH] Ch. 5, Alg. 2; docs/methods.md §7.1, §7.2, §7.5); twin of ``reference.cram_ops``.

The compression specs, the seeded choice of C and the range helpers are scalar logic imported from
the reference, and so are the operators' compositions (compress, perturb, the CrAM / SAM / C-SAM
points, sparse gradients, the update gradient): they run here over torch's array primitives
(``_TORCH``). Array operators follow the reference's operation order: theta + rho * g is two
separately rounded IEEE operations (no fused multiply-add) with rho rounded to the tensor dtype
first, so the perturbed point -- and hence every Top-K / N:M mask and quantization code -- is
bit-identical to the reference's; norms accumulate in float64.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Iterable, Mapping

import torch

from twinsparse.reference.cram_ops import (COMPRESSION_KINDS, Compression, check_rho, multi_topk, nm_compression,  # noqa: F401
                            percent_range, quant_compression, sample_compression, topk_compression)
from twinsparse.reference import cram_ops as RC
from ._checks import as_real_tensor, scalar_as
from .acdc_ops import topk_compress
from .masks import nm_masks
from .quantize import quantize_dequantize

__all__ = ["Compression", "topk_compression", "nm_compression", "quant_compression", "percent_range",
           "multi_topk", "sample_compression", "check_rho", "grad_norm", "compress", "perturb", "sam_point",
           "cram_point", "csam_point", "sparse_grads", "cram_update_grads"]


def grad_norm(grads: Mapping[str, torch.Tensor]) -> float:
    """Global l2 norm over every tensor of the dict, accumulated in float64."""
    return math.sqrt(sum(float(g.to(torch.float64).square().sum()) for g in grads.values()))


def _axpy(params: Mapping, grads: Mapping, scale: float) -> dict:
    out = {}
    for n, p in params.items():
        dt = p.dtype if p.is_floating_point() else torch.float64
        out[n] = p.to(dt) + scalar_as(scale, dt) * grads[n].to(dt)      # two rounded ops, as the reference
    return out


# The torch primitives of the operators, which are written once in ``reference.cram_ops``.
_TORCH = SimpleNamespace(
    as_real=as_real_tensor, copy=lambda t: t.clone(),
    zero_outside=lambda m, w: torch.where(m, w, torch.zeros((), dtype=w.dtype, device=w.device)),
    is_bool=lambda m: isinstance(m, torch.Tensor) and m.dtype == torch.bool,
    describe=lambda m: f"dtype {m.dtype}" if isinstance(m, torch.Tensor) else type(m).__name__,
    cast_like=lambda x, ref: x.to(ref.dtype),
    topk_compress=topk_compress, nm_masks=nm_masks, quantize_dequantize=quantize_dequantize,
    grad_norm=grad_norm, axpy=_axpy)


def compress(params: Mapping[str, torch.Tensor], compression: Compression,
             prunable: Iterable[str] | None = None, nm_axis="reduction") -> tuple[dict, dict | None]:
    """C(params): (compressed dict, masks of the prunable tensors or None for quantization); N:M
    groups run along ``nm_axis`` (``accel.prunable.reduction_dims(model)`` for any layer type)."""
    return RC.compress(params, compression, prunable, backend=_TORCH, nm_axis=nm_axis)


def perturb(params: Mapping, grads: Mapping, rho: float, normalize: bool = False) -> dict:
    """theta + rho * g (CrAM, unnormalized) or theta + rho * g / ||g|| (SAM); zero g -> theta."""
    return RC.perturb(params, grads, rho, normalize, backend=_TORCH)


def sam_point(params: Mapping, grads: Mapping, rho: float) -> dict:
    """SAM's perturbed point theta + rho * g / ||g|| ([TH] Eq. C.2)."""
    return RC.sam_point(params, grads, rho, backend=_TORCH)


def cram_point(params: Mapping, grads: Mapping, rho: float, compression: Compression,
               prunable: Iterable[str] | None = None, normalize: bool = False) -> tuple[dict, dict | None]:
    """theta~ = C(theta + rho * g) and its mask M_t ([TH] Eq. 5.2, Alg. 2 l.6-8)."""
    return RC.cram_point(params, grads, rho, compression, prunable, normalize, backend=_TORCH)


def csam_point(params: Mapping, grads_at_compressed: Mapping, rho: float, compression: Compression,
               masks_at_compressed: Mapping | None = None,
               prunable: Iterable[str] | None = None) -> tuple[dict, dict | None]:
    """C-SAM: C(theta + rho * g^ / ||g^||), g^ = (M_theta *) grad L(C(theta)) ([TH] Eq. 5.7, §5.6.2)."""
    return RC.csam_point(params, grads_at_compressed, rho, compression, masks_at_compressed, prunable,
                         backend=_TORCH)


def sparse_grads(grads: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict:
    """M_t * grad on the masked tensors, other tensors unchanged (Alg. 2 l.9)."""
    return RC.sparse_grads(grads, masks, backend=_TORCH)


def cram_update_grads(grad_tilde: Mapping, grad: Mapping | None = None, masks: Mapping | None = None,
                      plus: bool = True) -> dict:
    """(M_t *) grad L(theta~) [+ grad L(theta) for CrAM⁺] (Alg. 2 l.9-14, Eq. 5.4)."""
    return RC.cram_update_grads(grad_tilde, grad, masks, plus, backend=_TORCH)
