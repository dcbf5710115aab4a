"""Nested containers of tensors (dicts, lists, FlatDicts) as the Sparsifier moves, reads and
guards them: a method's state, an update's statistics."""
from __future__ import annotations

from typing import Mapping

import torch

from .flat import FlatDict

__all__ = ["to_device", "tensors_in", "replace_tensors", "select_where"]


def to_device(obj, device):
    """Recursive copy of a (nested) dict of tensors to ``device``; other values pass through."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device).clone()
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def tensors_in(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            tensors_in(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            tensors_in(v, out)
    return out


def replace_tensors(obj, values: dict):
    if isinstance(obj, torch.Tensor):
        return values[id(obj)]
    if isinstance(obj, Mapping):
        return {k: replace_tensors(v, values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(replace_tensors(v, values) for v in obj)
    return obj


def select_where(bad: torch.Tensor, old, new):
    """``new`` with every tensor replaced by ``old``'s (or zeros) where ``bad`` is set: an
    observation made with non-finite gradients is discarded on the device."""
    if isinstance(new, FlatDict):
        prev = old.flat if isinstance(old, FlatDict) else (new.layout.flatten(old) if old is not None else None)
        flat = torch.where(bad, torch.zeros_like(new.flat) if prev is None else prev, new.flat)
        return new.layout.split(flat)
    if isinstance(new, torch.Tensor):
        return torch.where(bad, torch.zeros_like(new) if old is None else old, new)
    if isinstance(new, Mapping):
        return {k: select_where(bad, None if old is None else old.get(k), v) for k, v in new.items()}
    return new
