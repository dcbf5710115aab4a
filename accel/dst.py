"""Dynamic sparse training operators on torch tensors (docs/methods.md §2.1, §3.2); twin of ``reference.dst``.

Same names, arguments and results (checked by ``conformance/entries/dst.py``). Name, count and
scalar validation is the reference's scalar logic, imported, not copied.

Every operator works on the whole model at once: the layers are one flat buffer
(``accel.flat``), and drop and grow are one segmented exact top-k each
(``accel.topk.select_segments``), so a mask update costs the same number of kernel launches for
10 layers or 200. Nothing here asks the device for a number when the host already knows it:

* masks that carry their per-layer counts (``FlatDict.counts``: the Sparsifier's installed masks)
  give ``swap_counts`` and the count checks for free;
* inside a Sparsifier update (``accel.deferred.transaction``) the checks that need the device
  (finite scores, counts within their pools) are collected and read once when the update
  commits, and counts the host does not know stay device tensors (``DeviceCounts``).

Called directly, every operator validates at once and returns Python ints, as the reference does.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from twinsparse.reference.dst import COUNTER_INITS, EXPLORATION_FORMS, check_exploration  # noqa: F401 (re-export)
from twinsparse.reference.dst import (check_counter_init, check_counts, check_dst_ee_args, check_ema_beta, check_fraction,
                                     check_keep_count, drop_count_message, grow_count_message, swap_count)
from twinsparse.reference.masks import check_layer_dict, check_layer_names
from . import deferred
from . import kernels as _kernels
from ._checks import as_real_tensor, check_same_shape, scalar_as
from ._exact import true_div
from .flat import DeviceCounts, FlatDict, Layout, int_vector, layout_of, segment_sums
from .topk import _require_finite, segmented_topk_within, select_segments, select_within  # noqa: F401

__all__ = ["COUNTER_INITS", "EXPLORATION_FORMS", "swap_counts", "drop", "grow", "drop_and_grow",
           "init_counters", "increment_counters", "check_exploration", "dst_ee_scores", "ema_update",
           "mean_abs_over_mask", "prune_to_count", "explored_union", "segmented_topk_within",
           "active_counts", "require_counts", "total"]


# ----------------------------------------------------------------------------- helpers

def _bool_masks(masks: Mapping, what: str = "masks") -> Mapping:
    check_layer_dict(masks, what)
    if isinstance(masks, FlatDict) and masks.flat.dtype == torch.bool:
        return masks
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{what}[{n!r}] must be a boolean torch.Tensor, got {type(m).__name__}")
        if m.dtype != torch.bool:
            raise TypeError(f"{what}[{n!r}] must be a boolean mask, got dtype {m.dtype}")
    return masks


def _real(t, what: str) -> torch.Tensor:
    """Type checks of ``as_real_tensor`` without the finiteness check (done on the flat buffer)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{what} must be a real tensor, got dtype {t.dtype}")
    return t


def _check_like(masks: Mapping, values: Mapping, what: str, label: str, real=_real) -> None:
    """``values`` has the layers of ``masks``, each a real tensor of its mask's shape (checked by
    ``real``, which names it ``what[name]``; the shape error names it ``label name``)."""
    check_layer_names(masks, values, what)
    for n, m in masks.items():
        check_same_shape(m, real(values[n], f"{what}[{n!r}]"), f"mask {n!r}", f"{label} {n!r}")


def active_counts(masks: Mapping):
    """Per-layer active counts: host ints when the masks carry them or outside an update (one
    reduction, one sync), else a ``DeviceCounts`` (inside an update)."""
    if isinstance(masks, FlatDict) and masks.counts is not None:
        return dict(zip(masks.layout.names, masks.counts))
    lay = layout_of(masks)
    vec = masks.device_counts() if isinstance(masks, FlatDict) else segment_sums(lay, lay.flatten(masks))
    if deferred.active() is not None:
        return DeviceCounts(lay, vec)
    return dict(zip(lay.names, (int(c) for c in vec.tolist())))


def _host(counts):
    """Host list of counts in layout order, or None when they live on the device."""
    return None if isinstance(counts, DeviceCounts) else list(counts.values())


def _vec(counts, layout: Layout, device) -> torch.Tensor:
    if isinstance(counts, DeviceCounts):
        return counts.vec
    return int_vector([counts[n] for n in layout.names], device)


def _counts_arg(counts: Mapping, masks: Mapping, what: str):
    """Validated counts (host ints), or device counts passed through (names checked)."""
    if isinstance(counts, DeviceCounts):
        check_layer_names(masks, counts, what)
        return counts
    return check_counts(counts, masks, what)


def total(counts):
    """Sum of per-layer counts: an int, or a 0-d device tensor for device counts."""
    return counts.vec.sum() if isinstance(counts, DeviceCounts) else sum(counts.values())


def _require_le(names, a, a_vec, b, b_vec, message) -> None:
    """a[i] <= b[i] for every layer: on the host when both are known, else deferred. ``a_vec`` /
    ``b_vec`` are device vectors or functions that build them (only called when needed)."""
    if a is not None and b is not None:
        for n, x, y in zip(names, a, b):
            if x > y:
                raise ValueError(message(n, x, y))
        return
    a_vec = a_vec() if callable(a_vec) else a_vec
    b_vec = b_vec() if callable(b_vec) else b_vec

    def msg():
        av, bv = a_vec.tolist(), b_vec.tolist()
        n, x, y = next((n, x, y) for n, x, y in zip(names, av, bv) if x > y)
        return message(n, x, y)
    deferred.require((a_vec <= b_vec).all(), msg)


class _Sel:
    """The masks of one selection, flat, with their active counts (host list or device vector)."""

    def __init__(self, masks: Mapping, scores: Mapping, kind: str):
        masks = _bool_masks(masks)
        _check_like(masks, scores, f"{kind} scores", f"{kind} scores")
        self.layout = lay = layout_of(masks)
        self.mask = lay.flatten(masks)
        self.dev = self.mask.device
        self.n_active = masks.counts if isinstance(masks, FlatDict) else None
        if self.n_active is None and deferred.active() is None:
            self.n_active = tuple(segment_sums(lay, self.mask).tolist())
        self._masks = masks
        self._active_vec = None
        self.sizes_vec = lay.on(self.dev)["sizes"]

    @property
    def active_vec(self) -> torch.Tensor:
        """The active counts on the device (built only when some count is not known on the host)."""
        if self._active_vec is None:
            m, lay = self._masks, self.layout
            self._active_vec = (_vec(dict(zip(lay.names, self.n_active)), lay, self.dev) if self.n_active is not None
                                else (m.device_counts() if isinstance(m, FlatDict) else segment_sums(lay, self.mask)))
        return self._active_vec

    def scores(self, scores: Mapping, kind: str) -> torch.Tensor:
        flat = self.layout.flatten(scores)
        _require_finite(self.layout, flat, f"{kind} scores")
        return flat


def _sub(a, b):
    return None if a is None or b is None else [x - y for x, y in zip(a, b)]


def _add(a, b):
    return None if a is None or b is None else [x + y for x, y in zip(a, b)]


def _keep(sel: _Sel, flat_scores, counts, counts_vec):
    """The drop step: keep n_active - k of the active positions (largest drop scores)."""
    names = sel.layout.names
    _require_le(names, counts, counts_vec, sel.n_active, lambda: sel.active_vec, drop_count_message)
    kept_counts = _sub(sel.n_active, counts)
    ks = kept_counts if kept_counts is not None else sel.active_vec - _call(counts_vec)
    n_cand = sum(sel.n_active) if sel.n_active is not None else None
    return select_segments(flat_scores, sel.mask, sel.layout, ks, n_cand=n_cand), kept_counts


def _grown(sel: _Sel, kept, kept_counts, kept_vec, flat_scores, counts, counts_vec):
    """The grow step: counts[l] positions among the inactive ones of ``kept`` (the kernel reads
    ``kept`` inverted: no complement is built), OR-ed with it."""
    pool = None if kept_counts is None else [s - a for s, a in zip(sel.layout.sizes, kept_counts)]
    _require_le(sel.layout.names, counts, counts_vec, pool, lambda: sel.sizes_vec - _call(kept_vec), grow_count_message)
    n_cand = None if pool is None else sum(pool)
    ks = counts if counts is not None else _call(counts_vec)
    new = select_segments(flat_scores, kept, sel.layout, ks, n_cand=n_cand, or_with=kept, invert=True)
    return new, _add(kept_counts, counts)


def _call(v):
    return v() if callable(v) else v


def _out(sel: _Sel, flat: torch.Tensor, counts) -> FlatDict:
    return sel.layout.split(flat, counts)


# ----------------------------------------------------------------------------- prune and grow

def swap_counts(masks: Mapping, fraction: float):
    """k_l = floor(f * n_active_l) for every layer (docs/methods.md §2.1): python ints, or device
    counts inside an update when the host does not know the active counts."""
    masks = _bool_masks(masks)
    f = check_fraction(fraction)
    active = active_counts(masks)
    if isinstance(active, DeviceCounts):         # float64 product and floor, as Python does on the host
        return DeviceCounts(active.layout, torch.floor(active.vec.to(torch.float64) * f).to(torch.int64))
    return {n: swap_count(f, a) for n, a in active.items()}


def drop(masks: Mapping, drop_scores: Mapping, counts: Mapping) -> dict:
    """Drop counts[l] active weights per layer: keep the top (n_active - k) drop scores among the
    active positions (complement of a keep set). One segmented selection for all layers."""
    sel = _Sel(masks, drop_scores, "drop")
    counts = _counts_arg(counts, masks, "drop counts")
    flat = sel.scores(drop_scores, "drop")
    keep, kept_counts = _keep(sel, flat, _host(counts), lambda: _vec(counts, sel.layout, sel.dev))
    return _out(sel, keep, kept_counts)


def grow(masks: Mapping, grow_scores: Mapping, counts: Mapping) -> dict:
    """Grow counts[l] weights per layer at the largest grow scores among the inactive positions."""
    sel = _Sel(masks, grow_scores, "grow")
    counts = _counts_arg(counts, masks, "grow counts")
    flat = sel.scores(grow_scores, "grow")
    new, new_counts = _grown(sel, sel.mask, sel.n_active, lambda: sel.active_vec, flat, _host(counts),
                             lambda: _vec(counts, sel.layout, sel.dev))
    return _out(sel, new, new_counts)


def drop_and_grow(masks: Mapping, drop_scores: Mapping, grow_scores: Mapping, drop_counts: Mapping,
                  grow_counts: Mapping | None = None) -> dict:
    """One prune-and-grow round ([ST] Eq. 1-2); ``grow_counts`` defaults to ``drop_counts``.
    Everything (both score sets, both count sets) is validated before any selection runs."""
    sel = _Sel(masks, drop_scores, "drop")
    dcounts = _counts_arg(drop_counts, masks, "drop counts")
    fd = sel.scores(drop_scores, "drop")
    gcounts = dcounts if grow_counts is None else _counts_arg(grow_counts, masks, "grow counts")
    _check_like(masks, grow_scores, "grow scores", "grow scores")
    fg = sel.scores(grow_scores, "grow")
    dh, dv = _host(dcounts), (lambda: _vec(dcounts, sel.layout, sel.dev))
    gh, gv = _host(gcounts), (lambda: _vec(gcounts, sel.layout, sel.dev))
    # the pool after the drop (inactive before + dropped) is checked before any selection runs
    _require_le(sel.layout.names, dh, dv, sel.n_active, lambda: sel.active_vec, drop_count_message)
    kept_counts = _sub(sel.n_active, dh)
    kept_vec = (lambda: sel.active_vec - dv())
    pool = None if kept_counts is None else [s - a for s, a in zip(sel.layout.sizes, kept_counts)]
    _require_le(sel.layout.names, gh, gv, pool, lambda: sel.sizes_vec - kept_vec(), grow_count_message)
    kept, _ = _keep(sel, fd, dh, dv)
    new, new_counts = _grown(sel, kept, kept_counts, kept_vec, fg, gh, gv)
    return _out(sel, new, new_counts)


def require_counts(masks: Mapping, expected: Mapping, what: str) -> None:
    """Invariant of an update: the per-layer active counts of ``masks`` (counted on the device,
    whatever the masks claim) equal ``expected``; RuntimeError naming the layers otherwise."""
    masks = _bool_masks(masks)
    lay = layout_of(masks)
    actual = masks.device_counts() if isinstance(masks, FlatDict) else segment_sums(lay, lay.flatten(masks))
    want = _vec(expected, lay, actual.device)

    def msg():
        a, b = want.tolist(), actual.tolist()
        bad = {n: (x, y) for n, x, y in zip(lay.names, a, b) if x != y}
        return f"{what}: per-layer active counts {bad} (expected, got) break the update's invariant"
    deferred.require((actual == want).all(), msg, RuntimeError)


# ----------------------------------------------------------------------------- DST-EE ([EE] Eq. 1)

def init_counters(masks: Mapping, init: str = "mask") -> dict:
    """Activation counter N (docs/methods.md §3.2 item 2): N_0 = M_0 ('mask') or zeros; int64."""
    masks = _bool_masks(masks)
    check_counter_init(init)
    lay = layout_of(masks)
    flat = lay.flatten(masks)
    return lay.split(flat.to(torch.int64) if init == "mask" else torch.zeros_like(flat, dtype=torch.int64))


def increment_counters(counters: Mapping, masks: Mapping) -> dict:
    """N <- N + M_new (docs/methods.md §3.2 item 3: the mask after drop and grow)."""
    masks = _bool_masks(masks)
    _check_like(masks, counters, "counters", "counter")
    lay = layout_of(masks)
    return lay.split(lay.flatten(counters) + lay.flatten(masks).to(torch.int64))


def dst_ee_scores(grads: Mapping, counters: Mapping, t: int, c: float, eps: float, form: str = "eq1") -> dict:
    """DST-EE acquisition function, [EE] Eq. (1): S = |dL/dW| + c * ln(t) / (N + eps)
    (``form='text'``: ln(t) / (N + c)). Computed in the gradient's dtype, in the reference's
    operation order (scalars rounded to that dtype first)."""
    check_dst_ee_args(grads, counters, t, c, eps, form)
    for n, g in grads.items():
        g = _real(g, f"gradients[{n!r}]")
        N = _real(counters[n], f"counters[{n!r}]")
        check_same_shape(g, N, f"gradient {n!r}", f"counter {n!r}")
    if len({g.dtype for g in grads.values()}) > 1:      # layers of several dtypes: one buffer each
        out = {}
        for n in grads:
            out.update(dst_ee_scores({n: grads[n]}, {n: counters[n]}, t, c, eps, form))
        return out
    lay = layout_of(grads)
    first = next(iter(grads.values()))
    flat_g = lay.flatten(grads)
    _require_finite(lay, flat_g, "gradients")
    if _kernels.on_device(first):              # CUDA + CuPy: one launch for every layer (kernels/dst.cu)
        fused = _kernels.dst_ee_scores(grads, counters, t, c, eps, form) if _kernels.usable(first) else None
        if fused is not None:
            return fused
    dt = first.dtype
    c_, lnt, eps_ = scalar_as(c, dt), scalar_as(math.log(t), dt), scalar_as(eps, dt)
    Nf = lay.flatten(counters).to(dt)
    if form == "eq1":      # c * ln t (a product of two dtype values, rounded to the dtype), over N + eps
        num, den = scalar_as(c_ * lnt, dt), Nf + eps_
    else:
        num, den = lnt, Nf + c_
    bonus = true_div(torch.full_like(den, num), den)
    return lay.split(flat_g.abs() + bonus)


# ----------------------------------------------------------------------------- SNFS / GraNet helpers

def ema_update(ema: Mapping | None, grads: Mapping, beta: float) -> dict:
    """m <- beta m + (1 - beta) g (SNFS momentum); ``ema=None`` starts from zeros."""
    check_ema_beta(beta)
    check_layer_dict(grads, "gradients")
    for n, g in grads.items():
        _real(g, f"gradients[{n!r}]")
    if len({g.dtype for g in grads.values()}) > 1:      # layers of several dtypes: one buffer each
        out = {}
        for n in grads:
            out.update(ema_update(None if ema is None else {n: ema[n]}, {n: grads[n]}, beta))
        return out
    lay = layout_of(grads)
    g = lay.flatten(grads)
    _require_finite(lay, g, "gradients")
    prev = torch.zeros_like(g) if ema is None else lay.flatten(ema)
    # the scalars rounded to the dtype first, as the reference's dtype.type(beta)
    return lay.split(prev * scalar_as(beta, g.dtype) + g * scalar_as(1.0 - beta, g.dtype))


def mean_abs_over_mask(values: Mapping, masks: Mapping) -> dict:
    """Per-layer mean |v| over the active positions (0.0 for an empty layer), accumulated in
    float64; python floats (one device sync, also inside an update: SNFS redistribution reads
    these on the host)."""
    masks = _bool_masks(masks)
    _check_like(masks, values, "values", "values", as_real_tensor)
    lay = layout_of(masks)
    m = lay.flatten(masks)
    v = torch.where(m, lay.flatten(values).abs().to(torch.float64), 0.0)
    sums = torch.stack([part.sum() for part in v.split(lay.sizes)])   # per layer, like the reference
    both = torch.cat([sums, segment_sums(lay, m).to(torch.float64)]).tolist()   # one read for both
    sums, ks = both[:len(lay)], [int(k) for k in both[len(lay):]]
    return {n: float(s / k) if k else 0.0 for n, s, k in zip(lay.names, sums, ks)}


def prune_to_count(masks: Mapping, scores: Mapping, n_keep) -> dict:
    """Global magnitude step of gradual pruning (GraNet): keep the n_keep largest scores among the
    active positions of all layers together (concatenation order, tie rule)."""
    masks = _bool_masks(masks)
    _check_like(masks, scores, "scores", "scores")
    lay = layout_of(masks)
    flat_m = lay.flatten(masks)
    flat_s = lay.flatten(scores)
    _require_finite(lay, flat_s, "scores")
    known = masks.counts if isinstance(masks, FlatDict) else None
    total_active = sum(known) if known is not None else int(flat_m.sum())
    keep = select_within(flat_s, flat_m, check_keep_count(n_keep, total_active), total_active)
    return lay.split(keep)


def explored_union(explored: Mapping, masks: Mapping) -> dict:
    """ITOP bookkeeping: b <- b OR m (a weight is explored once it was ever active; docs/methods.md §3.4)."""
    masks = _bool_masks(masks)
    check_layer_names(masks, explored, "explored")
    lay = layout_of(masks)
    m = lay.flatten(masks)
    return lay.split(torch.as_tensor(lay.flatten(explored), device=m.device).to(torch.bool) | m)
