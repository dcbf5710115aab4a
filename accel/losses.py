"""Cross-entropy with its logits gradient by torch autograd; twin of ``reference.nn.softmax_cross_entropy``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_finite


def softmax_cross_entropy(logits: torch.Tensor, y: torch.Tensor):
    """(mean cross-entropy, d loss / d logits); y is int labels [B] or soft labels [B, K].

    Uses ``F.cross_entropy`` (class indices or class probabilities) and ``torch.autograd.grad``.
    """
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.dim() == 2):
        raise TypeError(f"logits must be a float tensor of shape [B, K], got {getattr(logits, 'shape', logits)!r}")
    check_finite(logits, "logits")
    if y.dim() == 1 and not y.is_floating_point():
        if y.shape[0] != logits.shape[0]:
            raise ValueError(f"int labels have shape {tuple(y.shape)}; expected ({logits.shape[0]},)")
        y = y.long()
    elif y.dim() == 2 and y.is_floating_point():
        if y.shape != logits.shape:
            raise ValueError(f"soft labels have shape {tuple(y.shape)}; expected {tuple(logits.shape)}")
        y = y.to(logits.dtype)
    else:
        raise TypeError(f"y must be int labels [B] or float soft labels [B, K]; got {y.dtype}, {tuple(y.shape)}")
    z = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(z, y)
        (dz,) = torch.autograd.grad(loss, z)
    return loss.detach(), dz
