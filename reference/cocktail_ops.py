"""Sparse Cocktail operators ([SC] Li et al.), NumPy reference: UMG channel masks, the dense-pivot
distillation loss (Eq. 1), the greedy interpolation choice (App. C Alg. 1) and the IMP schedules.

docs/methods.md §1.7, §8.2, §8.1, §8.3. Array operators have twins in ``accel.cocktail_ops``; the
scalar logic (schedules, greedy choice, pivot step order) is written once here and imported there.
The GMP cubic schedule is ``reference.schedules.gmp_density_at`` (not repeated here).

Resolutions used (docs/methods.md §8):
- UMG score ([SC] §3.4): score_o = beta * ||m^u ⊙ W_o||_1 + (1 - beta) * ||m^nm ⊙ W_o||_1, beta = 0.8;
  a missing N:M mask (IMP iteration 1) is all-ones ("1:1" dense, docs/methods.md §1.7); keep the top
  floor(d * O + 0.5) output channels per layer, same ratio in every layer (§1.7), optionally
  only among the channels still alive (nested, §1.7). Ties -> lower channel index.
- Eq. 1: L = 1/2 [CE(S(X), Y) + L_soft(S(X), stopgrad(D(X)))] with L_soft the soft-target cross-entropy
  -sum_c softmax(D(X)/T)_c log softmax(S(X)/T)_c, T = 1, batch mean (docs/methods.md §8.2; T is a
  parameter because it is NOT GIVEN; for T != 1 the term is not rescaled by T^2).
- Alg. 1 argmax ties -> the LARGEST alpha (keeps D_best; docs/methods.md §8.3).
- IMP (docs/methods.md §8.1): s^u_k = 1 - 0.8^k, s^c_k = 1 - 0.9^k; N:M 1:2 for k in 2..4, 2:4 for 5..7,
  4:8 from 8 (masks generated at P_2, P_5, P_8, "keep them unchanged elsewhere"); none at k = 1.
  The unstructured masks are nested: keep floor(0.8 * |m^u_{k-1}| + 0.5) of the previous support,
  global magnitude (docs/methods.md §8.1).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ._checks import as_real_array, check_density, check_int, count_for_density, imp_keep_count
from .dst import prune_to_count
from .masks import check_layer_dict, check_layer_names
from .nn import softmax, softmax_cross_entropy
from .topk import topk_mask, topk_within

# [SC] App. C Alg. 1 l.1: "candidate pool C = {0.05, 0.1, 0.2, ..., 0.9, 0.95, 1}"
CANDIDATE_POOL = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# [SC] §4: N:M masks "generated during P_2, P_5 and P_8": (first IMP iteration, (keep n, of m))
NM_SCHEDULE = ((2, (1, 2)), (5, (2, 4)), (8, (4, 8)))
UMG_BETA = 0.8
UNSTRUCTURED_RATE = 0.2
CHANNEL_RATE = 0.1
IMP_ITERATIONS = 10


# ----------------------------------------------------------------------------- checks

def check_beta(beta) -> float:
    """UMG weight beta in [0, 1] ([SC] §3.4: 0.8)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)):
        raise TypeError(f"beta must be a number in [0, 1], got {beta!r}")
    b = float(beta)
    if not (math.isfinite(b) and 0.0 <= b <= 1.0):
        raise ValueError(f"beta={beta!r} is outside the allowed range [0, 1]")
    return b


def check_rate(rate, name: str = "rate") -> float:
    """A per-iteration pruning rate in [0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {rate!r}")
    r = float(rate)
    if not (math.isfinite(r) and 0.0 <= r < 1.0):
        raise ValueError(f"{name}={rate!r} is outside the allowed range [0, 1)")
    return r


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise TypeError(f"temperature must be a number > 0, got {temperature!r}")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature={temperature!r} is outside the allowed range (0, inf)")
    return t


def alive_channels(alive, n_out: int, shape: tuple) -> np.ndarray:
    """``alive`` as a bool vector [O]: given as [O], or as a channel mask of the weight's shape (each
    output channel all-True or all-False)."""
    a = np.asarray(alive)
    if a.dtype != bool:
        raise TypeError(f"alive must be a boolean channel mask, got dtype {a.dtype}")
    if a.shape == (n_out,):
        return a
    if a.shape == tuple(shape):
        rows = a.reshape(n_out, -1)
        anyr, allr = rows.any(axis=1), rows.all(axis=1)
        if not np.array_equal(anyr, allr):
            raise ValueError("alive must be a channel mask: every output channel all-True or all-False")
        return anyr
    raise ValueError(f"alive must have shape ({n_out},) or the weight's shape {tuple(shape)}, got {a.shape}")


def _check_umg_inputs(w, mask_u, mask_nm):
    w = as_real_array(w, "weight")
    if w.ndim < 2:
        raise ValueError(f"UMG channel scores need a Linear [O, I] or Conv [O, I, kh, kw] weight, got shape {w.shape}")
    for what, m in (("mask_u", mask_u), ("mask_nm", mask_nm)):
        if m is None and what == "mask_nm":
            continue
        m = np.asarray(m)
        if m.dtype != bool or m.shape != w.shape:
            raise ValueError(f"{what} must be a boolean mask of the weight's shape {w.shape}, got {m.dtype} {m.shape}")
    return w


# ----------------------------------------------------------------------------- UMG (§2.6(b))

def umg_channel_scores(w: np.ndarray, mask_u: np.ndarray, mask_nm: np.ndarray | None = None,
                       beta: float = UMG_BETA) -> np.ndarray:
    """UMG channel importance, [SC] §3.4: beta ||m^u ⊙ C||_1 + (1 - beta) ||m^nm ⊙ C||_1 per output
    channel C = W[o] (shape [O]); ``mask_nm`` None = all-ones (no N:M mask yet)."""
    b = check_beta(beta)
    w = _check_umg_inputs(w, mask_u, mask_nm)
    a = np.abs(w).reshape(w.shape[0], -1)
    zero = np.zeros((), a.dtype)
    su = np.where(np.asarray(mask_u).reshape(a.shape), a, zero).sum(axis=1)
    snm = a.sum(axis=1) if mask_nm is None else np.where(np.asarray(mask_nm).reshape(a.shape), a, zero).sum(axis=1)
    dt = a.dtype.type if a.dtype.kind == "f" else np.float64
    return dt(b) * su + dt(1.0 - b) * snm


def umg_channel_mask(w: np.ndarray, mask_u: np.ndarray, mask_nm: np.ndarray | None, channel_density: float,
                     beta: float = UMG_BETA, alive=None) -> np.ndarray:
    """The UMG channel mask m^c of one layer, broadcast to w's shape: the top floor(d * O + 0.5)
    channels by ``umg_channel_scores`` (ties -> lower index), chosen among ``alive`` channels when
    given (nested IMP masks); more channels than are alive is an error."""
    scores = umg_channel_scores(w, mask_u, mask_nm, beta)
    o = scores.shape[0]
    k = count_for_density(check_density(channel_density, "channel_density"), o)
    if alive is None:
        keep = topk_mask(scores, k)
    else:
        a = alive_channels(alive, o, np.shape(w))
        if k > int(a.sum()):
            raise ValueError(f"channel_density={channel_density!r} keeps {k} of {o} channels but only "
                             f"{int(a.sum())} are alive (nested channel masks cannot regrow)")
        keep = topk_within(scores, a, k)
    return np.broadcast_to(keep.reshape((-1,) + (1,) * (np.ndim(w) - 1)), np.shape(w)).copy()


def umg_channel_masks(weights: Mapping, masks_u: Mapping, masks_nm: Mapping | None, channel_density: float,
                      beta: float = UMG_BETA, alive: Mapping | None = None) -> dict:
    """``umg_channel_mask`` for every layer, the same channel density in each ([SC] §3.4 "for each
    layer ... the predetermined channel-wise sparsity ratio"). ``masks_nm`` None: no N:M masks yet."""
    check_layer_dict(weights, "weights")
    check_layer_names(weights, masks_u, "masks_u")
    if masks_nm is not None:
        check_layer_names(weights, masks_nm, "masks_nm")
    if alive is not None:
        check_layer_names(weights, alive, "alive")
    check_beta(beta)
    check_density(channel_density, "channel_density")
    for n, w in weights.items():        # validate every layer before computing any
        _check_umg_inputs(w, masks_u[n], None if masks_nm is None else masks_nm[n])
    return {n: umg_channel_mask(w, masks_u[n], None if masks_nm is None else masks_nm[n], channel_density,
                                beta, None if alive is None else alive[n]) for n, w in weights.items()}


def imp_unstructured_masks(weights: Mapping, prev_masks: Mapping, rate: float = UNSTRUCTURED_RATE) -> dict:
    """IMP step P_k of the unstructured pattern ([SC] §3.1, §4; docs/methods.md §8.1): keep the
    |m_{k-1}| - floor(rate |m_{k-1}| + 0.5) largest |W| among the previously kept weights
    (``imp_keep_count``: "prune rate of the remaining", as the IMP procedure), globally over all
    layers (dict order, tie rule). ``prev_masks`` all-True at k = 1."""
    r = check_rate(rate)
    check_layer_dict(prev_masks, "prev_masks")
    check_layer_names(prev_masks, weights, "weights")
    for n, m in prev_masks.items():
        if np.asarray(m).dtype != bool:
            raise TypeError(f"prev_masks[{n!r}] must be a boolean mask, got dtype {np.asarray(m).dtype}")
    scores = {n: np.abs(as_real_array(weights[n], f"weights[{n!r}]")) for n in prev_masks}
    n_prev = int(sum(np.count_nonzero(m) for m in prev_masks.values()))
    return prune_to_count(prev_masks, scores, imp_keep_count(r, n_prev))


# ----------------------------------------------------------------------------- Eq. 1 (§4.6)

def dense_pivot_loss(sparse_logits, dense_logits, y, temperature: float = 1.0):
    """Dynamic distillation loss of a sparse step, [SC] Eq. (1), and its gradient w.r.t. the sparse
    logits (the dense logits are a constant: stop gradient):

        L  = 1/2 [ CE(s, y) + CE_soft(s / T, softmax(d / T)) ]
        dL/ds = 1/2 [ (softmax(s) - onehot(y)) / B + (softmax(s / T) - softmax(d / T)) / (T B) ]

    ``y`` are int labels [B] (or soft labels [B, K]); logits are float [B, K]. Returns (loss, dlogits)."""
    t = check_temperature(temperature)
    s, d = np.asarray(sparse_logits), np.asarray(dense_logits)
    if s.shape != d.shape or d.dtype != s.dtype:
        raise ValueError(f"sparse_logits ({s.dtype} {s.shape}) and dense_logits ({d.dtype} {d.shape}) must have "
                         f"the same float dtype and shape [B, K]")
    hard, g_hard = softmax_cross_entropy(s, y)
    dt = s.dtype.type
    target = softmax(d / dt(t))
    soft, g_soft = softmax_cross_entropy(s / dt(t), target)
    half = dt(0.5)
    return half * (hard + soft), half * (g_hard + g_soft / dt(t))


def pivot_step(i: int, patterns: Sequence[str]) -> str:
    """Dense-pivot co-training order ([SC] §3.5, App. E; docs/methods.md §8.2): iteration i (1-based)
    is 'dense' when odd; even iterations cycle round-robin over ``patterns`` (e.g. ['u', 'c', 'nm'])."""
    i = check_int(i, "i", 1)
    pats = list(patterns)
    if not pats:
        raise ValueError("the list of sparse patterns is empty; need at least one (e.g. ['u', 'c'])")
    return "dense" if i % 2 else pats[(i // 2 - 1) % len(pats)]


# ----------------------------------------------------------------------------- IMP schedules (§5.6)

def _k(k) -> int:
    return check_int(k, "IMP iteration k", 1)


def unstructured_sparsity_at(k: int, rate: float = UNSTRUCTURED_RATE) -> float:
    """s^u_k = 1 - (1 - rate)^k (rate 0.2: 0.200, 0.360, ..., 0.893 at k = 10)."""
    return 1.0 - (1.0 - check_rate(rate)) ** _k(k)


def channel_sparsity_at(k: int, rate: float = CHANNEL_RATE) -> float:
    """s^c_k = 1 - (1 - rate)^k (rate 0.1: 0.100, 0.190, ..., 0.651 at k = 10)."""
    return 1.0 - (1.0 - check_rate(rate, "channel rate")) ** _k(k)


def nm_pattern_at(k: int, schedule=NM_SCHEDULE) -> tuple[int, int] | None:
    """The N:M pattern (keep n, of m) in force at IMP iteration k, None before the first entry."""
    k, current = _k(k), None
    for start, pat in schedule:
        if k >= start:
            current = tuple(pat)
    return current


def nm_generated_at(k: int, schedule=NM_SCHEDULE) -> bool:
    """True when a new N:M mask is generated at P_k (k in {2, 5, 8}); it is kept unchanged elsewhere."""
    return _k(k) in {start for start, _ in schedule}


def imp_schedule(n_iterations: int = IMP_ITERATIONS, unstructured_rate: float = UNSTRUCTURED_RATE,
                 channel_rate: float = CHANNEL_RATE, schedule=NM_SCHEDULE) -> list[dict]:
    """The docs/methods.md §8.1 table: one dict per k = 1..n with 'k', 'unstructured', 'channel', 'nm', 'nm_new'."""
    n = check_int(n_iterations, "n_iterations", 1)
    return [dict(k=k, unstructured=unstructured_sparsity_at(k, unstructured_rate),
                 channel=channel_sparsity_at(k, channel_rate), nm=nm_pattern_at(k, schedule),
                 nm_new=nm_generated_at(k, schedule)) for k in range(1, n + 1)]


# ----------------------------------------------------------------------------- Alg. 1 (§6.3)

def check_pool(pool: Iterable[float]) -> tuple[float, ...]:
    p = tuple(float(a) for a in pool)
    if not p:
        raise ValueError("the candidate pool of interpolation factors is empty")
    bad = [a for a in p if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
    if bad:
        raise ValueError(f"interpolation factors {bad} are outside the allowed range [0, 1]")
    if len(set(p)) != len(p):
        raise ValueError(f"the candidate pool {list(p)} has repeated values")
    return p


def choose_alpha(scores: Mapping[float, float]) -> float:
    """argmax over alpha of the objective; ties -> the largest alpha (docs/methods.md §8.3). NaN is an error."""
    if not scores:
        raise ValueError("no candidate scores to choose from")
    vals = {float(a): float(v) for a, v in scores.items()}
    bad = [a for a, v in vals.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the objective is not finite for alpha in {bad}")
    best = max(vals.values())
    return max(a for a, v in vals.items() if v == best)


def greedy_interpolation(n_networks: int, objective: Callable[[int, float, tuple], float],
                         pool: Iterable[float] = CANDIDATE_POOL) -> list[float]:
    """[SC] App. C Alg. 1, the scalar part: alpha_k for k = 2..N.

    ``objective(k, alpha, previous)`` is the l.5 sum of ValAcc_B[(alpha D_best + (1 - alpha) D_k) ⊙ m]
    over the masks of iterations j <= k, where D_best is the interpolation fixed by the ``previous``
    choices (alpha_2..alpha_{k-1}; see ``interpolation_coefficients``). Returns [alpha_2, ..., alpha_N]."""
    n = check_int(n_networks, "n_networks", 1)
    pool = check_pool(pool)
    alphas: list[float] = []
    for k in range(2, n + 1):
        prev = tuple(alphas)
        alphas.append(choose_alpha({a: objective(k, a, prev) for a in pool}))
    return alphas


def greedy_interpolation_table(table: Mapping[int, Mapping[float, float]],
                               pool: Iterable[float] = CANDIDATE_POOL) -> list[float]:
    """Alg. 1 on a fixed accuracy table table[k][alpha] (k = 2..N), e.g. a synthetic "ValAcc" table."""
    ks = sorted(table)
    if ks != list(range(2, len(ks) + 2)):
        raise ValueError(f"the table must have rows k = 2..N, got {ks}")
    pool = check_pool(pool)
    for k in ks:
        missing = [a for a in pool if a not in table[k]]
        if missing:
            raise ValueError(f"table[{k}] has no value for alpha in {missing}")
    return greedy_interpolation(len(ks) + 1, lambda k, a, prev: table[k][a], pool)


def interpolation_coefficients(alphas: Sequence[float]) -> list[float]:
    """Weights c_1..c_N with D_best = sum_k c_k D_k after Alg. 1 l.6 (D_best <- a_k D_best + (1 - a_k) D_k):
    c_1 = prod_j a_j, c_k = (1 - a_k) prod_{j > k} a_j. They sum to 1."""
    a = [float(x) for x in alphas]
    bad = [x for x in a if not (math.isfinite(x) and 0.0 <= x <= 1.0)]
    if bad:
        raise ValueError(f"interpolation factors {bad} are outside the allowed range [0, 1]")
    coef = [1.0]
    for ak in a:
        coef = [c * ak for c in coef] + [1.0 - ak]
    return coef
