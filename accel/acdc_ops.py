"""AC/DC operators on torch tensors ([TH] Ch. 3, Alg. 1; docs/methods.md §1.2, §6.1, §6.2); twin of ``reference.acdc_ops``.

The phase plan is pure scalar logic and is imported from the reference (docs/methods.md §1.15). The compression operators run on torch tensors with the same selection (``accel.masks``,
tie rule of docs/methods.md §1.2), so masks are identical to the reference's, ties included (checked by
``conformance/entries/acdc_cram.py``).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Iterable, Mapping

import torch

from twinsparse.reference.acdc_ops import (DISTRIBUTIONS, IMAGENET_EPOCHS, IMAGENET_LENGTHS, PHASE_KINDS, Phase,  # noqa: F401
                            acdc_phases, check_distribution, phase_at, phase_entered, pruned_names,
                            scaled_acdc_lengths, selection)
from ._checks import as_real_tensor
from .flat import layout_of
from .topk import _require_finite
from .masks import global_magnitude_masks, magnitude_masks, nm_masks

__all__ = ["Phase", "acdc_phases", "scaled_acdc_lengths", "phase_at", "phase_entered", "pruned_names",
           "topk_compress", "acdc_compress", "IMAGENET_LENGTHS", "DISTRIBUTIONS"]


def _type_checked(v, what: str) -> torch.Tensor:
    """``as_real_tensor``'s type checks; finiteness is checked once on the flat buffer."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(v).__name__}")
    if v.is_complex():
        raise TypeError(f"{what} must be a real tensor, got dtype {v.dtype}")
    return v


_TORCH = SimpleNamespace(as_real=as_real_tensor, nm_masks=nm_masks, global_magnitude_masks=global_magnitude_masks,
                         magnitude_masks=magnitude_masks)
_TORCH_FLAT = SimpleNamespace(as_real=_type_checked, nm_masks=nm_masks, global_magnitude_masks=global_magnitude_masks,
                              magnitude_masks=magnitude_masks)


def _selection(weights: Mapping, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis):
    """The reference's selection (written once) over the torch mask operators."""
    return selection(weights, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis, backend=_TORCH)


def _apply(weights: Mapping, keep: Mapping) -> dict:
    return {n: torch.where(keep[n], w, torch.zeros((), dtype=w.dtype, device=w.device)) if n in keep else w.clone()
            for n, w in weights.items()}


def _flat_compress(weights: Mapping, sparsity, distribution, keep_dense, first_last_dense):
    """Top-K compression on one flat buffer when the layers share a dtype: a constant number of
    launches for any number of layers (the Sparsifier's AC/DC update). Returns (compressed flat,
    keep flat, pruned-region flat), or None when the layers cannot share a buffer."""
    if len({w.dtype for w in weights.values() if isinstance(w, torch.Tensor)}) != 1:
        return None
    keep, names, _ = selection(weights, sparsity, distribution, keep_dense, first_last_dense, None, "reduction",
                               backend=_TORCH_FLAT)
    lay = layout_of(weights)
    flat_w = lay.flatten(weights)
    _require_finite(lay, flat_w, "weights")
    sub = layout_of({n: weights[n] for n in names})
    region = torch.zeros(lay.numel, dtype=torch.bool, device=flat_w.device)
    full = torch.ones(lay.numel, dtype=torch.bool, device=flat_w.device)
    spans = _spans(lay, names)
    src, pos = sub.flatten(keep), 0
    for start, length in spans:          # contiguous runs of pruned layers (one run unless keep_dense splits it)
        full[start:start + length] = src[pos:pos + length]
        region[start:start + length] = True
        pos += length
    out = torch.where(full, flat_w, torch.zeros((), dtype=flat_w.dtype, device=flat_w.device))
    return lay, out, full, region


def _spans(lay, names) -> list:
    """(start, length) runs of consecutive pruned layers in the flat buffer."""
    pruned, spans = set(names), []
    for n, off, size in zip(lay.names, lay.offsets, lay.sizes):
        if n not in pruned:
            continue
        if spans and spans[-1][0] + spans[-1][1] == off:
            spans[-1] = (spans[-1][0], spans[-1][1] + size)
        else:
            spans.append((off, size))
    return spans


def topk_compress(weights: Mapping[str, torch.Tensor], sparsity: float, distribution: str = "global",
                  keep_dense: Iterable[str] = (), first_last_dense: bool = False) -> tuple[dict, dict]:
    """T_k over the pruned layers: (compressed weights, index-set masks 1[i in A_k]) (docs/methods.md §1.2)."""
    flat = _flat_compress(weights, sparsity, distribution, keep_dense, first_last_dense)
    if flat is not None:
        lay, out, full, _ = flat
        return lay.split(out), lay.split(full)
    keep, _, _ = _selection(weights, sparsity, distribution, keep_dense, first_last_dense, None, "reduction")
    full = {n: keep[n] if n in keep else torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return _apply(weights, keep), full


def acdc_compress(weights: Mapping[str, torch.Tensor], sparsity: float | None = None, distribution: str = "global",
                  keep_dense: Iterable[str] = (), first_last_dense: bool = False,
                  nm: tuple[int, int] | None = None, nm_axis: str = "reduction") -> tuple[dict, dict]:
    """[TH] Alg. 1 l.4-5: theta <- T_k(theta) (or N:M); m <- 1[theta_i != 0] on the pruned layers,
    all-True elsewhere. Returns (compressed weights, masks); inputs are never modified."""
    if nm is None:
        flat = _flat_compress(weights, sparsity, distribution, keep_dense, first_last_dense)
        if flat is not None:
            lay, out, _, region = flat
            return lay.split(out), lay.split((out != 0) | ~region)
    keep, _, left_dense = _selection(weights, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis)
    out = _apply(weights, keep)
    pruned = [n for n in keep if n not in left_dense]
    masks = {n: (out[n] != 0) if n in pruned else torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return out, masks
