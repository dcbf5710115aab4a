"""2:4 semi-structured export (issue 7): every eligible ``nn.Linear`` weight becomes a ``torch.sparse``
semi-structured (2:4) tensor. This needs an NVIDIA GPU with compute capability >= 8.0 and float16 /
bfloat16 weights, and is a clear ``RuntimeError`` anywhere else (``semi_structured_supported`` says
why). ``check_export_accuracy`` compares an export with the masked model.
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional

import torch
import torch.nn as nn

from .masking import apply_masks, check_masks

__all__ = ["semi_structured_supported", "export_semi_structured", "is_two_four", "check_export_accuracy",
           "SEMI_DTYPES"]


SEMI_DTYPES = (torch.float16, torch.bfloat16)


def _cusparselt() -> bool:
    b = getattr(torch.backends, "cusparselt", None)
    return bool(b is not None and b.is_available())


def _semi_class():
    """The torch subclass ``to_sparse_semi_structured`` would use (cuSPARSELt when present, else CUTLASS)."""
    sp = torch.sparse
    if getattr(sp.SparseSemiStructuredTensor, "_FORCE_CUTLASS", False) or not _cusparselt():
        return sp.SparseSemiStructuredTensorCUTLASS
    return sp.SparseSemiStructuredTensorCUSPARSELT


def semi_structured_supported(device=None) -> tuple[bool, str]:
    """(True, description) when 2:4 semi-structured weights run on ``device`` (default: the current
    CUDA device), else (False, the reason: no CUDA, not a CUDA device, capability < 8.0, old torch)."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return False, (f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU; "
                       f"2:4 semi-structured sparsity needs an NVIDIA GPU with compute capability >= 8.0")
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if dev.type != "cuda":
        return False, (f"device {dev} is not a CUDA device; 2:4 semi-structured sparsity runs on NVIDIA GPUs "
                       f"(move the model with .cuda())")
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    name = torch.cuda.get_device_name(idx)
    if (major, minor) < (8, 0):
        return False, (f"{name} has compute capability {major}.{minor}; 2:4 semi-structured sparse kernels "
                       f"need >= 8.0 (Ampere or newer)")
    backend = "cuSPARSELt" if _semi_class().__name__.endswith("CUSPARSELT") else "CUTLASS"
    return True, f"{name} (compute capability {major}.{minor}), backend {backend}"


def is_two_four(w: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive weights along the input dim of [O, I]."""
    return w.dim() == 2 and w.shape[1] % 4 == 0 and bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _semi_min_shape(cls, dtype) -> tuple[int, int]:
    cons = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(dtype)
    return (cons.sparse_min_rows, cons.sparse_min_cols) if cons is not None else (32, 64)


def _why_not_semi(w: torch.Tensor, cls) -> Optional[str]:
    rows, cols = _semi_min_shape(cls, w.dtype)
    o, i = w.shape
    if o < rows or o % rows or i < cols or i % cols:
        return f"shape {tuple(w.shape)}: needs rows a multiple of {rows} and columns a multiple of {cols}"
    if not is_two_four(w):
        return "weights are not 2:4 along the input dimension"
    return None


def export_semi_structured(model: nn.Module, masks: Optional[Mapping] = None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A copy of ``model`` whose eligible ``nn.Linear`` weights are semi-structured (2:4) sparse tensors.

    Eligible: (masked) weight 2:4 along the input dim, shape a multiple of the kernel's minimum block
    (from torch's constraints for the backend in use), dtype float16 / bfloat16 (``dtype`` converts
    the copy), model on a CUDA device with compute capability >= 8.0. Other layers stay dense; the
    copy carries ``.semi_structured_report`` ({"converted": [...], "dense": {name: reason}}). Anywhere
    2:4 cannot run this raises ``RuntimeError`` naming the reason, and nothing is modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    p0 = next(model.parameters(), None)
    if p0 is None:
        raise ValueError("the model has no parameters")
    ok, reason = semi_structured_supported(p0.device if torch.cuda.is_available() else None)
    if not ok:
        raise RuntimeError(f"2:4 semi-structured export is not possible here: {reason}")
    want = p0.dtype if dtype is None else dtype
    if want not in SEMI_DTYPES:
        raise RuntimeError(f"2:4 semi-structured export needs float16 or bfloat16 weights, the model is {want}; "
                           f"pass dtype=torch.float16 (or convert with model.half())")
    masks = check_masks(model, masks)
    out = apply_masks(copy.deepcopy(model).to(dtype=want), masks).eval()
    cls = _semi_class()
    converted, dense = [], {}
    with torch.no_grad():
        for name, mod in out.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            why = _why_not_semi(mod.weight, cls)
            if why is not None:
                dense[name] = why
                continue
            mod.weight = nn.Parameter(cls.from_dense(mod.weight.detach().contiguous()), requires_grad=False)
            converted.append(name)
    out.semi_structured_report = {"converted": converted, "dense": dense, "backend": cls.__name__}
    return out


@torch.no_grad()
def check_export_accuracy(masked_model: nn.Module, exported_model: nn.Module, x: torch.Tensor) -> dict:
    """Eval-mode outputs of both models on ``x`` (moved to each model's device and dtype):
    max / mean absolute difference (float32), the reference's max |output|, and argmax agreement."""
    outs = []
    for m in (masked_model, exported_model):
        p = next(m.parameters())
        was = m.training
        m.eval()
        try:
            outs.append(m(x.to(device=p.device, dtype=p.dtype)).detach().to("cpu", torch.float64))
        finally:
            m.train(was)
    a, b = outs
    if a.shape != b.shape:
        raise ValueError(f"the models' outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).abs()
    agree = (a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean() if a.dim() >= 1 and a.numel() else torch.tensor(1.0)
    return {"max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.numel() else 0.0,
            "max_abs_ref": float(a.abs().max()) if a.numel() else 0.0,
            "argmax_agreement": float(agree), "n": int(a.shape[0]) if a.dim() else 1}
