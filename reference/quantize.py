"""Symmetric per-output-channel weight quantization, the CrAM⁺-4Bits compression, NumPy reference.

[TH] §5.4.1 "Quantization": "the compression operator C is the symmetric per-channel weight
quantization to 4 bits (round to nearest integer)". The integer range and the scale are NOT GIVEN;
docs/methods.md §1.11 resolution (symmetric, zero maps to zero, 2^b - 1 levels):

    q_max = 2^(b-1) - 1  (= 7 for b = 4)
    s_c   = max |W_c| / q_max                       per output channel c (dim 0)
    code  = clip(round_half_even(W_c / s_c), -q_max, q_max)     (an all-zero channel: s_c = 0, codes 0)
    Q(W)_c = s_c * code

Rounding: half-to-even ("banker's rounding") -- what ``torch.round`` does and what ``np.rint``
does, so both twins round identically; every step above is one correctly rounded IEEE operation
in the weight's dtype, so codes and results are bit-identical across backends. A 4-bit code takes
at most 15 values (-7..7) per channel. A 1-D tensor is treated as O channels of one element each.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ._checks import as_real_array, check_int

CODE_DTYPE = np.int32


def check_bits(bits) -> int:
    """Bit width b in [2, 16] (b = 1 has no non-zero symmetric level)."""
    return check_int(bits, "bits", 2, 16)


def qmax(bits: int) -> int:
    """Largest code of the symmetric b-bit grid, 2^(b-1) - 1."""
    return 2 ** (check_bits(bits) - 1) - 1


def _check_weight(w) -> np.ndarray:
    w = as_real_array(w, "weight")
    if w.dtype.kind != "f":
        raise TypeError(f"quantization needs a floating weight, got dtype {w.dtype}")
    if w.ndim < 1 or w.size == 0:
        raise ValueError(f"quantization needs a non-empty weight with an output dimension, got shape {w.shape}")
    return w


def quantize_codes(w: np.ndarray, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(integer codes of w's shape, per-channel scales [O]) of the symmetric per-channel grid."""
    q = qmax(bits)
    w = _check_weight(w)
    dt = w.dtype.type
    flat = w.reshape(w.shape[0], -1)
    scales = np.abs(flat).max(axis=1) / dt(q)
    s = scales[:, None]
    ratio = np.divide(flat, s, out=np.zeros_like(flat), where=s > 0)
    codes = np.clip(np.rint(ratio), -q, q).astype(CODE_DTYPE)
    return codes.reshape(w.shape), scales


def quantize_dequantize(w: np.ndarray, bits: int = 4) -> np.ndarray:
    """Q(W): the quantized weight as a float array of w's shape and dtype (docs/methods.md §1.11)."""
    codes, scales = quantize_codes(w, bits)
    flat = codes.reshape(codes.shape[0], -1).astype(scales.dtype) * scales[:, None]
    return flat.reshape(codes.shape)


def quantize_all(weights: Mapping[str, np.ndarray], bits: int = 4) -> dict[str, np.ndarray]:
    """``quantize_dequantize`` of every tensor of a dict (layer name -> weight)."""
    check_bits(bits)
    return {n: quantize_dequantize(w, bits) for n, w in weights.items()}
