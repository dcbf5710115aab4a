"""Per-weight scores on torch tensors (docs/methods.md §1.3, §1.10, §2.1); twin of ``reference.scores``."""
from __future__ import annotations

from typing import Mapping

import torch

from twinsparse.reference._checks import check_density, count_for_density
from twinsparse.reference.masks import check_layer_dict
from ._checks import check_same_shape, as_real_tensor
from .topk import topk_masks_global


def magnitude_scores(w: torch.Tensor) -> torch.Tensor:
    """|w| (docs/methods.md §1.3)."""
    return as_real_tensor(w, "weight").abs()


def gradient_scores(g: torch.Tensor) -> torch.Tensor:
    """|g| (docs/methods.md §2.1, RigL grow criterion)."""
    return as_real_tensor(g, "gradient").abs()


def snip_scores(w: torch.Tensor, g: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """|w * g|, optionally divided by its sum over all entries (docs/methods.md §1.10)."""
    w, g = as_real_tensor(w, "weight"), as_real_tensor(g, "gradient")
    check_same_shape(w, g, "weight", "gradient")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    sal = (w * g).abs()
    if not normalize:
        return sal
    total = sal.sum()
    if bool(total == 0):
        raise ValueError("snip_scores(normalize=True): every |w * g| is 0, so the sum to divide by is 0; "
                         "use normalize=False or a gradient from a batch with a non-zero loss signal")
    return sal / total


def snip_masks(weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Global top-k of |w * g| over all layers (docs/methods.md §1.10; tie rule §1.2)."""
    check_layer_dict(weights, "weights")
    check_layer_dict(grads, "grads")
    if list(weights) != list(grads):
        raise ValueError(f"weights and grads must name the same layers in the same order: "
                         f"{list(weights)} vs {list(grads)}")
    d = check_density(density)
    scores = {}
    for name in weights:
        w, g = as_real_tensor(weights[name], f"weight {name!r}"), as_real_tensor(grads[name], f"gradient {name!r}")
        check_same_shape(w, g, f"weight {name!r}", f"gradient {name!r}")
        scores[name] = (w * g).abs()
    total = sum(s.numel() for s in scores.values())
    return topk_masks_global(scores, count_for_density(d, total))
