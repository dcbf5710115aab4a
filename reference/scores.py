"""Per-weight scores (docs/methods.md §1.3, §1.10, §2.1), NumPy reference.

A score has the weight's shape; larger = more important. Selection on scores always goes
through ``reference.topk`` (docs/methods.md §1.2 tie rule). NaN/inf inputs are errors.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ._checks import check_density, check_same_shape, count_for_density, as_real_array
from .masks import check_layer_dict
from .topk import topk_masks_global


def magnitude_scores(w: np.ndarray) -> np.ndarray:
    """|w| -- the magnitude criterion ([TH] §2.2.1; docs/methods.md §1.3)."""
    return np.abs(as_real_array(w, "weight"))


def gradient_scores(g: np.ndarray) -> np.ndarray:
    """|g| -- RigL's grow criterion, "top-k absolute largest gradients" ([EE]; docs/methods.md §2.1)."""
    return np.abs(as_real_array(g, "gradient"))


def snip_scores(w: np.ndarray, g: np.ndarray, normalize: bool = False) -> np.ndarray:
    """SNIP connection sensitivity |w * g| (docs/methods.md §1.10, EXTERNAL form of Lee et al. 2019).

    ``normalize=True`` divides by the sum over all entries (s_j = sal_j / sum_k sal_k); a zero
    sum is an error since the normalized score is then undefined.
    """
    w, g = as_real_array(w, "weight"), as_real_array(g, "gradient")
    check_same_shape(w, g, "weight", "gradient")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    sal = np.abs(w * g)
    if not normalize:
        return sal
    total = sal.sum()
    if total == 0:
        raise ValueError("snip_scores(normalize=True): every |w * g| is 0, so the sum to divide by is 0; "
                         "use normalize=False or a gradient from a batch with a non-zero loss signal")
    return sal / total


def snip_masks(weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], density: float) -> dict[str, np.ndarray]:
    """SNIP pruning: one global top-k of |w * g| over all layers (docs/methods.md §1.10 RESOLUTION).

    k = floor(d * N + 0.5) over the concatenation in dict order; weights that are already 0
    score 0 and go first, ties by flat index (docs/methods.md §1.2). Selection uses the unnormalized
    scores: dividing by a positive sum does not change the order.
    """
    check_layer_dict(weights, "weights")
    check_layer_dict(grads, "grads")
    if list(weights) != list(grads):
        raise ValueError(f"weights and grads must name the same layers in the same order: "
                         f"{list(weights)} vs {list(grads)}")
    d = check_density(density)
    scores = {}
    for name in weights:
        w, g = as_real_array(weights[name], f"weight {name!r}"), as_real_array(grads[name], f"gradient {name!r}")
        check_same_shape(w, g, f"weight {name!r}", f"gradient {name!r}")
        scores[name] = np.abs(w * g)
    total = sum(s.size for s in scores.values())
    return topk_masks_global(scores, count_for_density(d, total))
