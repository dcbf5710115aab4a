"""Divisions and averages that round like the NumPy reference on every device.

PyTorch does not always compute ``a / b`` as one IEEE division:

- on CUDA, a true division whose divisor is a CPU scalar (a Python number, or a 0-dim tensor on the
  CPU) runs as ``a * (1 / b)`` with the reciprocal rounded first, which can be one ulp off
  ``a / b`` (``div_true_kernel_cuda``, ``aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu``);
- on every device, ``number / tensor`` is ``tensor.reciprocal() * number`` (``Tensor.__rdiv__``);
- on CUDA, ``Tensor.mean`` multiplies the sum by ``1 / n`` instead of dividing it by ``n``.

One ulp matters wherever a rounding boundary decides something discrete: a weight whose ratio to
its scale is exactly k + 1/2 goes to a different quantization level, and an accuracy of 567/1000
becomes 0.5670000000000001. Accel twins therefore divide with ``true_div`` where the reference
divides, and compute a fraction of counted items as a Python ``int / int``.
``conformance/cuda_arith.py`` reproduces the CUDA rewrites on the CPU, so CPU tests catch a twin
that relies on them.
"""
from __future__ import annotations

import numbers

import torch

__all__ = ["true_div"]


def true_div(a: torch.Tensor, b) -> torch.Tensor:
    """``a / b`` as one correctly rounded division per element, on every device (NumPy's ``a / b``).

    ``b`` is a tensor broadcastable against ``a`` or a real number; a number is rounded to the result
    dtype first (as NumPy rounds ``dtype.type(b)``). The divisor reaches torch as a tensor with at
    least one dimension on ``a``'s device, which no device turns into a reciprocal multiplication."""
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"true_div divides a tensor, got {type(a).__name__}")
    if isinstance(b, torch.Tensor):
        den = b.to(a.device)
    elif isinstance(b, numbers.Real) and not isinstance(b, bool):
        den = torch.full((), b, dtype=torch.result_type(a, b), device=a.device)
    else:
        raise TypeError(f"true_div needs a tensor or a real number as divisor, got {type(b).__name__}")
    if den.dim() > 0:
        return a / den
    if a.dim() > 0:
        return a / den.reshape(1)
    return (a.reshape(1) / den.reshape(1)).reshape(())

