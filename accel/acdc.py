"""AC/DC operators on torch tensors ([TH] Ch. 3, Alg. 1; SPEC §2.1, §5.4, §7.3); twin of ``reference.acdc``.

The phase plan is pure scalar logic and is imported from the reference (DESIGN.md "no twin, no
drift"). The compression operators run on torch tensors with the same selection (``accel.masks``,
tie rule of SPEC §0.3), so masks are identical to the reference's, ties included (checked by
``conformance/entries/acdc_cram.py``).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Iterable, Mapping

import torch

from reference.acdc import (DISTRIBUTIONS, IMAGENET_EPOCHS, IMAGENET_LENGTHS, PHASE_KINDS, Phase,  # noqa: F401
                            acdc_phases, check_distribution, phase_at, phase_entered, pruned_names,
                            scaled_acdc_lengths, selection)
from ._checks import as_real_tensor
from .masks import global_magnitude_masks, magnitude_masks, nm_masks

__all__ = ["Phase", "acdc_phases", "scaled_acdc_lengths", "phase_at", "phase_entered", "pruned_names",
           "topk_compress", "acdc_compress", "IMAGENET_LENGTHS", "DISTRIBUTIONS"]


_TORCH = SimpleNamespace(as_real=as_real_tensor, nm_masks=nm_masks, global_magnitude_masks=global_magnitude_masks,
                         magnitude_masks=magnitude_masks)


def _selection(weights: Mapping, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis):
    """The reference's selection (written once) over the torch mask operators."""
    return selection(weights, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis, backend=_TORCH)


def _apply(weights: Mapping, keep: Mapping) -> dict:
    return {n: torch.where(keep[n], w, torch.zeros((), dtype=w.dtype, device=w.device)) if n in keep else w.clone()
            for n, w in weights.items()}


def topk_compress(weights: Mapping[str, torch.Tensor], sparsity: float, distribution: str = "global",
                  keep_dense: Iterable[str] = (), first_last_dense: bool = False) -> tuple[dict, dict]:
    """T_k over the pruned layers: (compressed weights, index-set masks 1[i in A_k]) (SPEC §2.1)."""
    keep, _, _ = _selection(weights, sparsity, distribution, keep_dense, first_last_dense, None, "reduction")
    full = {n: keep[n] if n in keep else torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return _apply(weights, keep), full


def acdc_compress(weights: Mapping[str, torch.Tensor], sparsity: float | None = None, distribution: str = "global",
                  keep_dense: Iterable[str] = (), first_last_dense: bool = False,
                  nm: tuple[int, int] | None = None, nm_axis: str = "reduction") -> tuple[dict, dict]:
    """[TH] Alg. 1 l.4-5: theta <- T_k(theta) (or N:M); m <- 1[theta_i != 0] on the pruned layers,
    all-True elsewhere. Returns (compressed weights, masks); inputs are never modified."""
    keep, _, left_dense = _selection(weights, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis)
    out = _apply(weights, keep)
    pruned = [n for n in keep if n not in left_dense]
    masks = {n: (out[n] != 0) if n in pruned else torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return out, masks
