"""Evaluation and mask statistics (docs/methods.md §1.14) on torch tensors; twin of ``reference.metrics``.

Same names, same conventions, same return types (Python floats / ints / dicts of floats):
logits [B, K] are upcast to float64 before any arithmetic (so float32 inputs give the same
softmax, and the same ECE bin, as the reference); predictions are the argmax with ties to the
lowest class index, computed explicitly (the smallest index attaining the row maximum) rather
than relying on ``torch.argmax``'s tie behaviour on every device.

Fractions of counted samples (accuracy, disagreement, agreement, per-class accuracy) are an integer
count divided by n as Python ``int / int``: the correctly rounded float64 quotient, bitwise equal to
the reference's on every device (CUDA's ``Tensor.mean`` multiplies by 1/n instead, and 567 of 1000
would read 0.5670000000000001). Means of float values (NLL, KL, cross-entropy, ECE) divide a sum by
n in Python for the same reason; their sums are accumulated in a different order than NumPy's, so
they agree with the reference within the float64 tolerance, not bit for bit.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

import torch

from twinsparse.reference._checks import check_nonempty, check_same_keys
from . import deferred
from ._checks import check_finite, check_same_shape
from ._exact import true_div
from .flat import FlatDict, layout_of


# ----------------------------------------------------------------------------- validation
def _tensor(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _logits(logits, what: str = "logits") -> torch.Tensor:
    z = _tensor(logits, what)
    if not z.is_floating_point():
        raise TypeError(f"{what} must be a floating tensor, got dtype {z.dtype}")
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{what} must have shape [B, K] with B >= 1 and K >= 1, got {tuple(z.shape)}")
    check_finite(z, what)
    return z.to(torch.float64)


def _labels(y, z: torch.Tensor) -> torch.Tensor:
    y = _tensor(y, "labels y")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels y must be an integer tensor, got dtype {y.dtype}")
    if tuple(y.shape) != (z.shape[0],):
        raise ValueError(f"labels y must have shape ({z.shape[0]},) to match logits {tuple(z.shape)}, got {tuple(y.shape)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= z.shape[1]:
        raise ValueError(f"labels y must be in [0, {z.shape[1] - 1}] (K = {z.shape[1]} classes), got values in [{lo}, {hi}]")
    return y.to(device=z.device, dtype=torch.int64)


def _pair(a, b, what_a: str, what_b: str):
    za, zb = _logits(a, what_a), _logits(b, what_b)
    check_same_shape(za, zb, what_a, what_b)
    return za, zb


def _masks(masks: Mapping, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(masks, Mapping):
        raise TypeError(f"{what} must be a dict of layer name -> boolean mask, got {type(masks).__name__}")
    check_nonempty(masks, f"dict {what}")
    for name, m in masks.items():
        if _tensor(m, f"{what}[{name!r}]").dtype != torch.bool:
            raise TypeError(f"{what}[{name!r}] must be a boolean mask, got dtype {m.dtype}")
    if sum(m.numel() for m in masks.values()) == 0:
        raise ValueError(f"{what} has no entries (every mask is empty)")
    return dict(masks)


def _mask_pair(a: Mapping, b: Mapping, what_a: str, what_b: str):
    ma, mb = _masks(a, what_a), _masks(b, what_b)
    check_same_keys(ma, mb, what_a, what_b)
    for name in ma:
        check_same_shape(ma[name], mb[name], f"{what_a}[{name!r}]", f"{what_b}[{name!r}]")
    return ma, mb


def _count(tensors) -> int:
    """Total number of True entries over a list of bool tensors, with one host sync."""
    return int(torch.stack([t.count_nonzero() for t in tensors]).sum())


# ----------------------------------------------------------------------------- helpers
def _argmax_first(z: torch.Tensor) -> torch.Tensor:
    is_max = z == z.amax(dim=1, keepdim=True)
    idx = torch.arange(z.shape[1], device=z.device).expand_as(z)
    return torch.where(is_max, idx, z.shape[1]).amin(dim=1)


def predictions(logits) -> torch.Tensor:
    """argmax over classes, ties -> lowest class index (docs/methods.md §1.14)."""
    return _argmax_first(_logits(logits))


def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    s = z - z.amax(dim=1, keepdim=True)
    return s - torch.log(torch.exp(s).sum(dim=1, keepdim=True))


# ----------------------------------------------------------------------------- §8.1 - §8.3
def accuracy(logits, y) -> float:
    """Top-1 accuracy, fraction in [0, 1] (docs/methods.md §1.14): correct count / n."""
    z = _logits(logits)
    return int((_argmax_first(z) == _labels(y, z)).count_nonzero()) / z.shape[0]


def mean_per_class_accuracy(logits, y) -> float:
    """Mean over the classes present in ``y`` of the per-class accuracy (docs/methods.md §1.14)."""
    z = _logits(logits)
    y = _labels(y, z)
    correct = (_argmax_first(z) == y).to(torch.int64)
    k = z.shape[1]
    hits = torch.zeros(k, dtype=torch.int64, device=z.device).index_add_(0, y, correct)
    hits, counts = torch.stack([hits, torch.bincount(y, minlength=k)]).tolist()
    per_class = [h / c for h, c in zip(hits, counts) if c > 0]
    return math.fsum(per_class) / len(per_class)


def nll(logits, y) -> float:
    """Mean negative log-likelihood, natural log, via log-softmax (docs/methods.md §1.14)."""
    z = _logits(logits)
    y = _labels(y, z)
    return -float(_log_softmax(z).gather(1, y[:, None]).sum()) / z.shape[0]


def ece(logits, y, n_bins: int = 15) -> float:
    """Expected calibration error (docs/methods.md §1.14): bins ((b-1)/B, b/B], index ceil(conf*B)-1 clipped to
    [0, B-1] in float64, exactly as in ``reference.metrics.ece``."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise TypeError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} is not allowed; it must be >= 1")
    n_bins = int(n_bins)
    z = _logits(logits)
    y = _labels(y, z)
    conf = 1.0 / torch.exp(z - z.amax(dim=1, keepdim=True)).sum(dim=1)
    bins = (torch.ceil(conf * n_bins).to(torch.int64) - 1).clamp(0, n_bins - 1)
    gap = (_argmax_first(z) == y).double() - conf
    per_bin = torch.zeros(n_bins, dtype=torch.float64, device=z.device).index_add_(0, bins, gap)
    return float(per_bin.abs().sum()) / z.shape[0]


# ----------------------------------------------------------------------------- §8.4 - §8.5
def disagreement(logits_a, logits_b) -> float:
    """d_dis: fraction of samples whose top-1 predictions differ (docs/methods.md §1.14)."""
    za, zb = _pair(logits_a, logits_b, "logits_a", "logits_b")
    return int((_argmax_first(za) != _argmax_first(zb)).count_nonzero()) / za.shape[0]


def sample_agreement(logits_a, logits_b) -> float:
    """Fraction of samples with equal top-1 predictions = 1 - d_dis (docs/methods.md §1.14)."""
    za, zb = _pair(logits_a, logits_b, "logits_a", "logits_b")
    return int((_argmax_first(za) == _argmax_first(zb)).count_nonzero()) / za.shape[0]


def kl_divergence(logits_p, logits_q, symmetric: bool = False) -> float:
    """Mean over samples of KL(p || q) (docs/methods.md §1.14); ``symmetric=True`` averages both directions."""
    zp, zq = _pair(logits_p, logits_q, "logits_p", "logits_q")
    lp, lq = _log_softmax(zp), _log_softmax(zq)
    n = zp.shape[0]
    forward = float((lp.exp() * (lp - lq)).sum(dim=1).sum()) / n
    if not symmetric:
        return forward
    backward = float((lq.exp() * (lq - lp)).sum(dim=1).sum()) / n
    return 0.5 * (forward + backward)


def prediction_cross_entropy(logits_ref, logits_other) -> float:
    """-(1/N) sum_i sum_c p_ref,c log p_other,c (docs/methods.md §1.14)."""
    zr, zo = _pair(logits_ref, logits_other, "logits_ref", "logits_other")
    return -float((_log_softmax(zr).exp() * _log_softmax(zo)).sum(dim=1).sum()) / zr.shape[0]


# ----------------------------------------------------------------------------- docs/methods.md §1.14, §3.4, §1.1
def hamming_distance(masks_a: Mapping, masks_b: Mapping, normalized: bool = False):
    """Number of differing mask positions (int), or that count / |P| (float) (docs/methods.md §1.14)."""
    ma, mb = _mask_pair(masks_a, masks_b, "masks_a", "masks_b")
    diff = _count([ma[n] != mb[n] for n in ma])
    if not normalized:
        return diff
    return diff / sum(m.numel() for m in ma.values())


def exploration_degree(counters: Mapping) -> float:
    """R = (entries with counter > 0) / (all entries) (docs/methods.md §3.4)."""
    if not isinstance(counters, Mapping):
        raise TypeError(f"counters must be a dict of layer name -> counter tensor, got {type(counters).__name__}")
    check_nonempty(counters, "dict of counters")
    for name, c in counters.items():
        if _tensor(c, f"counters[{name!r}]").is_complex():
            raise TypeError(f"counters[{name!r}] must be numeric, got dtype {c.dtype}")
        check_finite(c, f"counters[{name!r}]")
        if c.numel() and bool((c < 0).any()):
            raise ValueError(f"counters[{name!r}] has negative entries ({c.min().item()}); counters must be >= 0")
    total = sum(c.numel() for c in counters.values())
    if total == 0:
        raise ValueError("counters have no entries (every array is empty)")
    return _count([c > 0 for c in counters.values()]) / total


def mask_change(mask_prev: Mapping, mask_new: Mapping) -> dict[str, float]:
    """XOR count of consecutive masks over the kept weights of ``mask_prev`` and over |P| (docs/methods.md §1.14).
    One flat reduction each; inside a Sparsifier update the two ratios are 0-d device tensors,
    read when the update commits (``accel.deferred``)."""
    mp, mn = _mask_pair(mask_prev, mask_new, "mask_prev", "mask_new")
    lay = layout_of(mp)
    a, b = lay.flatten(mp), lay.flatten(mn)
    xor = (a ^ b).sum()
    kept_known = mp.counts if isinstance(mp, FlatDict) else None
    kept = sum(kept_known) if kept_known is not None else a.sum()
    total = lay.numel
    if deferred.active() is None:
        xor, kept = int(xor), int(kept)
        if kept == 0:
            raise ValueError("mask_prev keeps no weight, so the change relative to the kept weights is undefined")
        return dict(xor_over_kept=xor / kept, xor_over_total=xor / total)
    message = "mask_prev keeps no weight, so the change relative to the kept weights is undefined"
    if isinstance(kept, int):
        if kept == 0:
            raise ValueError(message)
    else:
        deferred.require(kept != 0, lambda: message)
    x = xor.to(torch.float64)     # exact counts; each ratio is one correctly rounded float64 division
    return dict(xor_over_kept=true_div(x, kept if isinstance(kept, int) else kept.to(torch.float64)),
                xor_over_total=true_div(x, total))


def layer_densities(masks: Mapping) -> dict[str, float]:
    """Kept fraction of each mask (docs/methods.md §1.1); empty masks are an error."""
    ms = _masks(masks, "masks")
    for name, m in ms.items():
        if m.numel() == 0:
            raise ValueError(f"masks[{name!r}] is empty; its density is undefined")
    counts = torch.stack([m.count_nonzero() for m in ms.values()]).tolist()
    return {name: c / m.numel() for (name, m), c in zip(ms.items(), counts)}


def total_density(masks: Mapping) -> float:
    """Kept entries over all entries of all masks (docs/methods.md §1.1)."""
    ms = _masks(masks, "masks")
    return _count(list(ms.values())) / sum(m.numel() for m in ms.values())


def zero_fraction(weights) -> float:
    """Fraction of exactly-zero weights (docs/methods.md §1.1, §1.14); one tensor or a dict of tensors."""
    tensors = dict(weights) if isinstance(weights, Mapping) else {"weights": weights}
    check_nonempty(tensors, "dict of weights")
    for name, w in tensors.items():
        if _tensor(w, f"weights[{name!r}]").is_complex():
            raise TypeError(f"weights[{name!r}] must be numeric, got dtype {w.dtype}")
        check_finite(w, f"weights[{name!r}]")
    total = sum(w.numel() for w in tensors.values())
    if total == 0:
        raise ValueError("weights have no entries")
    return _count([w == 0 for w in tensors.values()]) / total
