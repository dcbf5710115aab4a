"""Masks as export takes them: a dict parameter name -> boolean (or 0/1) tensor, validated against the
model before any use (``check_masks``), applied in place (``apply_masks``); ``param_count``."""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn as nn

__all__ = ["param_count", "check_masks", "apply_masks"]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_masks(model: nn.Module, masks: Optional[Mapping]) -> dict:
    """Validate a dict param-name -> mask against ``model`` (every entry before any use)."""
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of parameter name -> boolean tensor (or None), got {type(masks).__name__}")
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name parameter(s) {unknown} that the model does not have; "
                         f"its weights are {[n for n in params if n.endswith('weight')]}")
    out = {}
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask {n!r} must be a torch.Tensor, got {type(m).__name__}")
        if tuple(m.shape) != tuple(params[n].shape):
            raise ValueError(f"mask {n!r} has shape {tuple(m.shape)} but the parameter has shape {tuple(params[n].shape)}")
        if m.dtype != torch.bool:
            if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(f"mask {n!r} must be boolean or 0/1 valued")
            m = m != 0
        out[n] = m
    return out


def apply_masks(model: nn.Module, masks: Optional[Mapping]) -> nn.Module:
    """Multiply the named parameters by their masks in place (all validated first); returns ``model``."""
    masks = check_masks(model, masks)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(device=params[n].device, dtype=params[n].dtype))
    return model

