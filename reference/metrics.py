"""Evaluation and mask statistics (docs/methods.md §1.14), NumPy reference; twin of ``accel.metrics``.

Conventions shared with the twin:
- logits are [B, K] floats, labels y are [B] integers in [0, K); every computation runs in
  float64 (float32 logits are upcast first, so both twins see the same softmax).
- predictions are the argmax with ties going to the lowest class index (docs/methods.md §1.14).
- results are Python floats (counts: Python ints; mask statistics: dicts of floats).
- a fraction of counted samples (accuracy, disagreement, agreement) is the integer count divided by
  n as Python ``int / int``, the correctly rounded float64 quotient, so the twin -- whatever device
  it runs on -- returns the same bits; the per-class mean sums its fractions with ``math.fsum``
  (correctly rounded, so independent of the summation order) before dividing by the class count.
- mask dicts map layer names to boolean arrays; two dicts must name the same layers in the same
  order with equal shapes.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

import numpy as np

from ._checks import check_finite, check_nonempty, check_same_keys, check_same_shape


# ----------------------------------------------------------------------------- validation
def _logits(logits, what: str = "logits") -> np.ndarray:
    z = np.asarray(logits)
    if z.dtype.kind != "f":
        raise TypeError(f"{what} must be a floating array, got dtype {z.dtype}")
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{what} must have shape [B, K] with B >= 1 and K >= 1, got {z.shape}")
    check_finite(z, what)
    return z.astype(np.float64)


def _labels(y, z: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels y must be an integer array, got dtype {y.dtype}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels y must have shape ({z.shape[0]},) to match logits {z.shape}, got {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels y must be in [0, {z.shape[1] - 1}] (K = {z.shape[1]} classes), "
                         f"got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _pair(a, b, what_a: str, what_b: str) -> tuple[np.ndarray, np.ndarray]:
    za, zb = _logits(a, what_a), _logits(b, what_b)
    check_same_shape(za, zb, what_a, what_b)
    return za, zb


def _masks(masks: Mapping, what: str) -> dict[str, np.ndarray]:
    if not isinstance(masks, Mapping):
        raise TypeError(f"{what} must be a dict of layer name -> boolean mask, got {type(masks).__name__}")
    check_nonempty(masks, f"dict {what}")
    out = {}
    for name, m in masks.items():
        m = np.asarray(m)
        if m.dtype != bool:
            raise TypeError(f"{what}[{name!r}] must be a boolean mask, got dtype {m.dtype}")
        out[name] = m
    if sum(m.size for m in out.values()) == 0:
        raise ValueError(f"{what} has no entries (every mask is empty)")
    return out


def _mask_pair(a: Mapping, b: Mapping, what_a: str, what_b: str):
    ma, mb = _masks(a, what_a), _masks(b, what_b)
    check_same_keys(ma, mb, what_a, what_b)
    for name in ma:
        check_same_shape(ma[name], mb[name], f"{what_a}[{name!r}]", f"{what_b}[{name!r}]")
    return ma, mb


# ----------------------------------------------------------------------------- helpers
def predictions(logits) -> np.ndarray:
    """argmax over classes, ties -> lowest class index (docs/methods.md §1.14; np.argmax returns the first max)."""
    return np.argmax(_logits(logits), axis=1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


# ----------------------------------------------------------------------------- §8.1 - §8.3
def accuracy(logits, y) -> float:
    """Top-1 accuracy, fraction in [0, 1] (docs/methods.md §1.14): correct count / n."""
    z = _logits(logits)
    return int(np.count_nonzero(np.argmax(z, axis=1) == _labels(y, z))) / z.shape[0]


def mean_per_class_accuracy(logits, y) -> float:
    """Mean over the classes present in ``y`` of the per-class accuracy (docs/methods.md §1.14, [TH] Table 4.2)."""
    z = _logits(logits)
    y = _labels(y, z)
    correct = np.argmax(z, axis=1) == y
    per_class = [int(np.count_nonzero(correct[y == c])) / int(np.count_nonzero(y == c)) for c in np.unique(y)]
    return math.fsum(per_class) / len(per_class)


def nll(logits, y) -> float:
    """Mean negative log-likelihood, natural log, via log-softmax (docs/methods.md §1.14)."""
    z = _logits(logits)
    y = _labels(y, z)
    return float(-np.mean(_log_softmax(z)[np.arange(z.shape[0]), y]))


def ece(logits, y, n_bins: int = 15) -> float:
    """Expected calibration error (docs/methods.md §1.14, [D2] App. B.1).

    confidence = max softmax (float64); bin b (1-based) = ((b-1)/B, b/B], the first bin includes 0,
    i.e. 0-based index ceil(conf * B) - 1 clipped to [0, B-1]; ECE = sum_b |M_b|/N |acc(b) - conf(b)|
    = (1/N) sum_b |sum_{i in b} (correct_i - conf_i)|; empty bins contribute 0.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise TypeError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} is not allowed; it must be >= 1")
    n_bins = int(n_bins)
    z = _logits(logits)
    y = _labels(y, z)
    conf = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)  # max softmax
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = (np.argmax(z, axis=1) == y).astype(np.float64) - conf
    per_bin = np.bincount(bins, weights=gap, minlength=n_bins)
    return float(np.abs(per_bin).sum() / z.shape[0])


# ----------------------------------------------------------------------------- §8.4 - §8.5
def disagreement(logits_a, logits_b) -> float:
    """d_dis: fraction of samples whose top-1 predictions differ (docs/methods.md §1.14, Fort et al. 2019)."""
    za, zb = _pair(logits_a, logits_b, "logits_a", "logits_b")
    return int(np.count_nonzero(np.argmax(za, axis=1) != np.argmax(zb, axis=1))) / za.shape[0]


def sample_agreement(logits_a, logits_b) -> float:
    """Fraction of samples with equal top-1 predictions = 1 - d_dis (docs/methods.md §1.14; x100 for %)."""
    za, zb = _pair(logits_a, logits_b, "logits_a", "logits_b")
    return int(np.count_nonzero(np.argmax(za, axis=1) == np.argmax(zb, axis=1))) / za.shape[0]


def kl_divergence(logits_p, logits_q, symmetric: bool = False) -> float:
    """Mean over samples of KL(p || q) = sum_c p_c (log p_c - log q_c) (docs/methods.md §1.14);
    ``symmetric=True`` averages KL(p||q) and KL(q||p)."""
    zp, zq = _pair(logits_p, logits_q, "logits_p", "logits_q")
    lp, lq = _log_softmax(zp), _log_softmax(zq)
    forward = np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1))
    if not symmetric:
        return float(forward)
    backward = np.mean(np.sum(np.exp(lq) * (lq - lp), axis=1))
    return float(0.5 * (forward + backward))


def prediction_cross_entropy(logits_ref, logits_other) -> float:
    """-(1/N) sum_i sum_c p_ref,c log p_other,c (docs/methods.md §1.14; dense model as the reference)."""
    zr, zo = _pair(logits_ref, logits_other, "logits_ref", "logits_other")
    return float(-np.mean(np.sum(np.exp(_log_softmax(zr)) * _log_softmax(zo), axis=1)))


# ----------------------------------------------------------------------------- docs/methods.md §1.14, §3.4, §1.1
def hamming_distance(masks_a: Mapping, masks_b: Mapping, normalized: bool = False):
    """Number of positions where two mask dicts differ (int), or that count / |P| (float) (docs/methods.md §1.14)."""
    ma, mb = _mask_pair(masks_a, masks_b, "masks_a", "masks_b")
    diff = sum(int(np.count_nonzero(ma[n] != mb[n])) for n in ma)
    if not normalized:
        return diff
    return diff / sum(m.size for m in ma.values())


def exploration_degree(counters: Mapping) -> float:
    """R = (entries with counter > 0) / (all entries) over a dict of counter arrays (docs/methods.md §3.4, [EE])."""
    if not isinstance(counters, Mapping):
        raise TypeError(f"counters must be a dict of layer name -> counter array, got {type(counters).__name__}")
    check_nonempty(counters, "dict of counters")
    explored = total = 0
    for name, c in counters.items():
        c = np.asarray(c)
        if c.dtype.kind not in "biuf":
            raise TypeError(f"counters[{name!r}] must be numeric, got dtype {c.dtype}")
        check_finite(c, f"counters[{name!r}]")
        if c.size and c.min() < 0:
            raise ValueError(f"counters[{name!r}] has negative entries ({c.min()}); counters must be >= 0")
        explored += int(np.count_nonzero(c > 0))
        total += c.size
    if total == 0:
        raise ValueError("counters have no entries (every array is empty)")
    return explored / total


def mask_change(mask_prev: Mapping, mask_new: Mapping) -> dict[str, float]:
    """XOR count of consecutive masks over the kept weights of ``mask_prev`` and over |P| (docs/methods.md §1.14)."""
    mp, mn = _mask_pair(mask_prev, mask_new, "mask_prev", "mask_new")
    xor = sum(int(np.count_nonzero(mp[n] ^ mn[n])) for n in mp)
    kept = sum(int(np.count_nonzero(m)) for m in mp.values())
    if kept == 0:
        raise ValueError("mask_prev keeps no weight, so the change relative to the kept weights is undefined")
    total = sum(m.size for m in mp.values())
    return dict(xor_over_kept=xor / kept, xor_over_total=xor / total)


def layer_densities(masks: Mapping) -> dict[str, float]:
    """Kept fraction of each mask (docs/methods.md §1.1: density counted from the mask); empty masks are an error."""
    ms = _masks(masks, "masks")
    for name, m in ms.items():
        if m.size == 0:
            raise ValueError(f"masks[{name!r}] is empty; its density is undefined")
    return {name: int(np.count_nonzero(m)) / m.size for name, m in ms.items()}


def total_density(masks: Mapping) -> float:
    """Kept entries over all entries of all masks (docs/methods.md §1.1)."""
    ms = _masks(masks, "masks")
    return sum(int(np.count_nonzero(m)) for m in ms.values()) / sum(m.size for m in ms.values())


def zero_fraction(weights) -> float:
    """Fraction of weights that are exactly zero ("actual zero weights", docs/methods.md §1.1, §1.14);
    ``weights`` is one array or a dict of arrays (counted together)."""
    arrays = dict(weights) if isinstance(weights, Mapping) else {"weights": weights}
    check_nonempty(arrays, "dict of weights")
    zeros = total = 0
    for name, w in arrays.items():
        w = np.asarray(w)
        if w.dtype.kind not in "biuf":
            raise TypeError(f"weights[{name!r}] must be numeric, got dtype {w.dtype}")
        check_finite(w, f"weights[{name!r}]")
        zeros += int(w.size - np.count_nonzero(w))
        total += w.size
    if total == 0:
        raise ValueError("weights have no entries")
    return zeros / total
