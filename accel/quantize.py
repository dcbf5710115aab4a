"""Symmetric per-output-channel quantization on torch tensors; twin of ``reference.quantize``
(docs/methods.md §1.11, [TH] §5.4.1). ``torch.round`` rounds half to even, like the reference's ``np.rint``;
every step is one IEEE operation in the weight's dtype, so codes and values are bit-identical.
Both divisions go through ``true_div``: CUDA would compute ``max|W_c| / q_max`` (a Python scalar
divisor) as ``max|W_c| * fl(1 / q_max)``, one ulp off, and a weight exactly half-way between two
levels would then round to the other level."""
from __future__ import annotations

from typing import Mapping

import torch

from twinsparse.reference.quantize import check_bits, qmax
from ._checks import as_real_tensor
from ._exact import true_div

__all__ = ["check_bits", "qmax", "quantize_codes", "quantize_dequantize", "quantize_all"]


def _check_weight(w) -> torch.Tensor:
    w = as_real_tensor(w, "weight")
    if not w.is_floating_point():
        raise TypeError(f"quantization needs a floating weight, got dtype {w.dtype}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"quantization needs a non-empty weight with an output dimension, got shape {tuple(w.shape)}")
    return w


def quantize_codes(w: torch.Tensor, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 codes of w's shape, per-channel scales [O]): clip(round_half_even(W_c / s_c), ±q_max)."""
    q = qmax(bits)
    w = _check_weight(w)
    flat = w.reshape(w.shape[0], -1)
    scales = true_div(flat.abs().amax(dim=1), q)
    s = scales.unsqueeze(1)
    ratio = torch.where(s > 0, true_div(flat, torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(flat))
    codes = torch.round(ratio).clamp_(-q, q).to(torch.int32)
    return codes.reshape(w.shape), scales


def quantize_dequantize(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Q(W) as a float tensor of w's shape and dtype."""
    codes, scales = quantize_codes(w, bits)
    return (codes.reshape(codes.shape[0], -1).to(scales.dtype) * scales.unsqueeze(1)).reshape(codes.shape)


def quantize_all(weights: Mapping[str, torch.Tensor], bits: int = 4) -> dict[str, torch.Tensor]:
    check_bits(bits)
    return {n: quantize_dequantize(w, bits) for n, w in weights.items()}
