"""CUDA's rewritten arithmetic, reproduced on the CPU, so that a CPU test sees what a GPU run would.

A few of PyTorch's CUDA kernels compute an operation differently from its CPU kernel (and from NumPy),
and the result can differ in the last bit:

- **true division by a CPU scalar** -- a Python number, or a 0-dim tensor on the CPU -- runs as
  ``a * (1 / b)``, the reciprocal rounded to the operation's math type first
  (``div_true_kernel_cuda`` in ``aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu``: "if the second
  operand is a CPU scalar, compute a * reciprocal(b)"). ``3 * fl(1/7)`` is not ``fl(3/7)`` in float32;
- **mean** is ``sum * (1 / n)`` (``MeanOps`` in ``ReduceMomentKernel.cu`` multiplies by a factor),
  not ``sum / n``: 567 correct answers of 1000 give 0.5670000000000001, not 0.567.

On the CPU both are true divisions, so an accel twin that divides by a Python scalar passes every CPU
test and then, on a GPU, puts a weight that sits exactly on a rounding boundary one quantization
level away from the reference. ``cuda_arithmetic()`` is a ``TorchFunctionMode`` that makes CPU
tensors compute these two operations the CUDA way, so such a twin fails on the CPU as well.

On the CPU a tensor on "the device" cannot be told apart from a CPU scalar, so every 0-dim tensor
divisor is treated as a CPU scalar. Code that must divide exactly therefore divides by a tensor with
at least one dimension on the dividend's device (``accel._exact.true_div``), which no device rewrites.
Only calls made from Python are seen (``a / b``, ``torch.div``, ``Tensor.mean``, ...); divisions
inside torch's C++ operators (e.g. a loss with ``reduction='mean'``) are not rewritten.
"""
from __future__ import annotations

import numbers

import torch
from torch.overrides import TorchFunctionMode

_DIV = {torch.div, torch.true_divide, torch.Tensor.div, torch.Tensor.true_divide,
        torch.Tensor.__truediv__, torch.Tensor.__itruediv__}
_DIV_INPLACE = {torch.Tensor.div_, torch.Tensor.true_divide_}
_MEAN = {torch.mean, torch.Tensor.mean}


def _math_type(dtype: torch.dtype) -> torch.dtype:
    """The type CUDA computes in (``at::opmath_type``): float for the 16-bit floats."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _is_cpu_scalar(b) -> bool:
    if isinstance(b, torch.Tensor):
        return b.dim() == 0 and b.device.type == "cpu"
    return isinstance(b, numbers.Real)


def reciprocal_div(a: torch.Tensor, b) -> torch.Tensor:
    """``a / b`` as CUDA computes it when ``b`` is a CPU scalar: ``a * fl(1 / b)`` in the math type."""
    out_dtype = torch.result_type(a, b)
    if not out_dtype.is_floating_point:
        return torch.true_divide(a, b)
    mt = _math_type(out_dtype)
    value = b.item() if isinstance(b, torch.Tensor) else b
    inv = torch.ones((), dtype=mt) / torch.tensor(value, dtype=torch.float64).to(mt)
    return (a.to(mt) * inv).to(out_dtype)


def factor_mean(x: torch.Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> torch.Tensor:
    """``x.mean(dim)`` as CUDA computes it: the sum times fl(outputs / inputs), i.e. times fl(1 / n)."""
    acc = _math_type(dtype or x.dtype)
    s = x.sum(dtype=acc) if dim is None else x.sum(dim=dim, keepdim=keepdim, dtype=acc)
    n_out = s.numel()
    factor = torch.tensor(float(n_out), dtype=acc) / torch.tensor(float(x.numel()), dtype=acc)
    return (s * factor).to(dtype or x.dtype)


class CudaArithmetic(TorchFunctionMode):
    """While active, CPU true divisions by a scalar and means are computed as CUDA computes them.
    ``self.rewritten`` counts the rewritten calls (a test can check that its path was exercised)."""

    def __init__(self):
        super().__init__()
        self.rewritten = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DIV or func in _DIV_INPLACE:
            res = self._division(func, args, kwargs)
        elif func in _MEAN:
            res = self._mean(args, kwargs)
        else:
            res = None
        return func(*args, **kwargs) if res is None else res

    def _division(self, func, args, kwargs):
        if len(args) != 2 or set(kwargs) - {"rounding_mode", "out"} or kwargs.get("rounding_mode") is not None:
            return None
        a, b = args
        if not (isinstance(a, torch.Tensor) and a.device.type == "cpu" and _is_cpu_scalar(b)
                and torch.result_type(a, b).is_floating_point):
            return None
        self.rewritten += 1
        res = reciprocal_div(a, b)
        if func in _DIV_INPLACE or func is torch.Tensor.__itruediv__:
            return a.copy_(res)
        out = kwargs.get("out")
        return res if out is None else out.copy_(res)

    def _mean(self, args, kwargs):
        if not args or not isinstance(args[0], torch.Tensor) or len(args) > 3:
            return None
        x, kw = args[0], dict(zip(("dim", "keepdim"), args[1:]), **kwargs)
        if set(kw) - {"dim", "keepdim", "dtype"} or x.device.type != "cpu" or x.numel() == 0:
            return None
        if not (kw.get("dtype") or x.dtype).is_floating_point:
            return None
        self.rewritten += 1
        return factor_mean(x, kw.get("dim"), kw.get("keepdim", False), dtype=kw.get("dtype"))


def cuda_arithmetic() -> CudaArithmetic:
    """``with cuda_arithmetic() as mode:`` -- CPU tensors divide by scalars and average the CUDA way."""
    return CudaArithmetic()
