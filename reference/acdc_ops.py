"""AC/DC -- Alternating Compressed / DeCompressed training: the operators, NumPy reference.

[TH] Ch. 3 (Alg. 1, §3.3.2, §3.4.1, App. A.2.1); docs/methods.md §1.2, §6.1, §6.2. Two parts:

(a) The phase plan -- pure scalar logic, written once here; ``accel.acdc_ops`` imports it (docs/methods.md §1.15
    "no twin, no drift"). A dense warm-up of Δw epochs, then compressed (Δc) and decompressed (Δd)
    phases alternate, starting and ending with a compressed one, then a longer final decompressed
    phase ΔD and a final compressed fine-tuning phase ΔF ([TH] §3.3.2, §3.4.1). Epochs are 0-based,
    phases end-exclusive. Defaults = the ImageNet schedule: 10 / 5 / 5 / 10 / 15 over 100 epochs
    (docs/methods.md §6.1 table: W 0-9, C1 10-14, D1 15-19, ..., C7 70-74, D7 75-84, C8 85-99). For another
    budget the phase lengths are kept and the alternating block grows or shrinks (docs/methods.md §6.1 general
    rule; [TH] §3.4.3 "preserving the duration of each compressed and decompressed phase"), or
    ``scaled_acdc_lengths(E)`` scales the ImageNet lengths to a small budget (miniature runs).

(b) The compression operator applied when a compressed phase is entered, Alg. 1 l.4-5:
        theta <- T_k(theta);   m <- 1[theta_i != 0]
    i.e. the mask is taken from the NON-ZEROS of the compressed weights (docs/methods.md §1.2 resolution for
    AC/DC, literal): a selected entry that is exactly zero (dead filter) is not in the mask, so the
    mask may hold fewer than k ones. (CrAM instead uses the index-set mask 1[i in A_k], which
    ``topk_compress`` returns.) Global Top-K over all pruned layers is the default ([TH] §3.3.2);
    uniform per-layer Top-K, layers kept dense (first & last: the "(★)" runs of Table A.2; the
    target sparsity then counts the pruned layers only), and N:M (2:4, [TH] §3.4.2) are options.
    Layers that are not pruned keep their weights and get an all-True mask (like biases and BN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable, Mapping

import numpy as np

from ._checks import as_real_array, check_int, check_nonempty, check_sparsity
from .masks import check_layer_dict, global_magnitude_masks, magnitude_masks, nm_masks

PHASE_KINDS = ("dense", "sparse")
DISTRIBUTIONS = ("global", "uniform")
# [TH] §3.4.1: "warm-up ... 10 epochs, ... alternate ... every 5 epochs, ... the last decompression
# phase runs for 10 epochs, whereas the final 15 epochs are the compression fine-tuning phase".
IMAGENET_LENGTHS = dict(warmup=10, compressed=5, decompressed=5, final_decompressed=10, final_compressed=15)
IMAGENET_EPOCHS = 100


# ----------------------------------------------------------------------------- (a) phase plan

@dataclass(frozen=True)
class Phase:
    """One AC/DC phase: ``kind`` 'dense' | 'sparse', epochs [start, end), and its docs/methods.md §6.1 name
    ('W' warm-up, 'C1', 'D1', ...; the last 'D' is the final decompressed phase ΔD, the last 'C' the
    final compressed fine-tuning phase ΔF)."""
    kind: str
    start: int
    end: int
    name: str

    @property
    def length(self) -> int:
        return self.end - self.start


def acdc_phases(total_epochs: int = IMAGENET_EPOCHS, warmup: int = 10, compressed: int = 5,
                decompressed: int = 5, final_decompressed: int = 10, final_compressed: int = 15) -> list[Phase]:
    """The AC/DC phase list for ``total_epochs`` ([TH] Alg. 1, §3.3.2, §3.4.1; docs/methods.md §6.1).

    W (``warmup`` epochs, dense; omitted when 0), then C, D, C, ..., C (n + 1 compressed phases of
    ``compressed`` epochs and n decompressed phases of ``decompressed`` epochs, n >= 0), then the
    final dense phase (``final_decompressed``) and the final sparse phase (``final_compressed``).
    The lengths must fill the budget exactly, otherwise ValueError naming the values and the nearest
    budgets that fit. 100 epochs with the defaults gives 13 alternating phases, 150 -> 23, 200 -> 33.
    """
    E = check_int(total_epochs, "total_epochs", 1)
    w = check_int(warmup, "warmup", 0)
    c = check_int(compressed, "compressed", 1)
    d = check_int(decompressed, "decompressed", 1)
    fd = check_int(final_decompressed, "final_decompressed", 1)
    fc = check_int(final_compressed, "final_compressed", 1)
    smallest = w + c + fd + fc                      # n = 0: W, C, final D, final C
    block = E - w - fd - fc                         # epochs of the alternating block C D C ... C
    if E < smallest or (block - c) % (c + d):
        if E < smallest:
            near = f"the smallest budget that fits is {smallest}"
        else:
            lo = smallest + (E - smallest) // (c + d) * (c + d)
            near = f"the nearest budgets that fit are {lo} and {lo + c + d}"
        raise ValueError(
            f"AC/DC phases do not fit total_epochs={E}: warmup={w} + final_decompressed={fd} + "
            f"final_compressed={fc} leave {block} epochs for the alternating block, which must be "
            f"(n+1)*compressed + n*decompressed = {c} + n*{c + d} epochs (n >= 0); {near} "
            f"(or change the phase lengths; scaled_acdc_lengths(total_epochs) fits any budget >= 3)")
    n = (block - c) // (c + d)
    phases, t = [], 0
    if w:
        phases.append(Phase("dense", 0, w, "W"))
        t = w
    for i in range(n + 1):
        phases.append(Phase("sparse", t, t + c, f"C{i + 1}"))
        t += c
        if i < n:
            phases.append(Phase("dense", t, t + d, f"D{i + 1}"))
            t += d
    phases.append(Phase("dense", t, t + fd, f"D{n + 1}"))
    phases.append(Phase("sparse", t + fd, E, f"C{n + 2}"))
    return phases


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scaled_acdc_lengths(total_epochs: int) -> dict[str, int]:
    """The ImageNet phase lengths scaled to a budget of ``total_epochs`` (for miniature runs).

    Each length is round-half-up(length * E / 100) with at least 1 epoch (the warm-up may be 0);
    the number of alternating C/D pairs is kept at the ImageNet 6 when it fits and reduced
    otherwise; the final compressed phase absorbs the rounding remainder (so it is never shorter
    than its scaled value). E = 100 gives the ImageNet lengths. Pass the result to ``acdc_phases``.
    Not in the thesis (a project choice for small budgets); E < 3 cannot hold C, D, C -> ValueError.
    """
    E = check_int(total_epochs, "total_epochs", 1)
    f = E / IMAGENET_EPOCHS
    w = _round_half_up(10 * f)
    c = d = max(1, _round_half_up(5 * f))
    fd = max(1, _round_half_up(10 * f))
    fc_min = max(1, _round_half_up(15 * f))
    if E - c - fd - fc_min < w:                       # shrink the warm-up before failing
        w = max(0, E - c - fd - fc_min)
    n = min(6, (E - w - fd - fc_min - c) // (c + d))
    if n < 0:
        raise ValueError(f"total_epochs={E} is too small for AC/DC: it needs at least 3 epochs "
                         f"(one compressed, the final decompressed and the final compressed phase)")
    fc = E - w - fd - (n + 1) * c - n * d
    return dict(warmup=w, compressed=c, decompressed=d, final_decompressed=fd, final_compressed=fc)


def _check_phases(phases) -> list[Phase]:
    phases = list(phases)
    if not phases or not all(isinstance(p, Phase) for p in phases):
        raise ValueError("phases must be the non-empty list of Phase returned by acdc_phases")
    return phases


def phase_at(phases: Iterable[Phase], epoch: int) -> Phase:
    """The phase that contains ``epoch`` (0-based); ValueError outside [0, total_epochs)."""
    phases = _check_phases(phases)
    e = check_int(epoch, "epoch", 0, phases[-1].end - 1)
    for p in phases:
        if p.start <= e < p.end:
            return p
    raise AssertionError("unreachable: phases cover [0, total_epochs)")


def phase_entered(phases: Iterable[Phase], epoch: int) -> Phase | None:
    """The phase that starts at ``epoch`` (Alg. 1 l.3/l.7 "entered a (de)compression phase"), else None.
    Entering a 'sparse' phase applies ``acdc_compress``; entering a 'dense' one resets the mask to
    all-ones and (image classification) the SGD momentum to 0 ([TH] §3.3.2)."""
    p = phase_at(phases, epoch)
    return p if p.start == epoch else None


# ----------------------------------------------------------------------------- (b) compression

def check_distribution(distribution) -> str:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r} is not allowed; choose one of {list(DISTRIBUTIONS)}")
    return distribution


def pruned_names(names: Iterable[str], keep_dense: Iterable[str] = (), first_last_dense: bool = False) -> list[str]:
    """The layer names that are pruned: all of ``names`` (dict order) except ``keep_dense`` and,
    with ``first_last_dense``, the first and the last layer ([TH] Table A.2 "(★)"). Scalar logic,
    shared by both twins. Unknown names in ``keep_dense`` and an empty result are errors."""
    names = list(names)
    if isinstance(keep_dense, str):
        raise TypeError(f"keep_dense must be a list of layer names, got the string {keep_dense!r}")
    keep = list(keep_dense)
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ValueError(f"keep_dense names unknown layer(s) {unknown}; the layers are {names}")
    if not isinstance(first_last_dense, bool):
        raise TypeError(f"first_last_dense must be True or False, got {first_last_dense!r}")
    dense = set(keep) | ({names[0], names[-1]} if first_last_dense and names else set())
    out = [n for n in names if n not in dense]
    check_nonempty(dict.fromkeys(out), f"set of pruned layers (layers {names}, kept dense {sorted(dense)})")
    return out


def selection(weights: Mapping, sparsity, distribution: str, keep_dense, first_last_dense, nm, nm_axis,
              backend=None):
    """(keep sets A_k of the pruned layers, pruned names, layers N:M left dense). Pure composition of
    the backend's mask operators, written once: ``backend`` holds ``as_real``, ``nm_masks``,
    ``global_magnitude_masks`` and ``magnitude_masks`` (NumPy's by default; accel passes torch's)."""
    b = backend or _NUMPY
    check_layer_dict(weights, "weights")
    for name, w in weights.items():
        b.as_real(w, f"weight {name!r}")
    names = pruned_names(weights, keep_dense, first_last_dense)
    sub = {n: weights[n] for n in names}
    if nm is not None:
        if sparsity is not None:
            raise ValueError(f"give either sparsity= (Top-K) or nm= (N:M), not both (got sparsity={sparsity!r}, nm={nm!r})")
        if not isinstance(nm, (tuple, list)) or len(nm) != 2:
            raise TypeError(f"nm must be a pair (n, m) meaning keep n of every m, e.g. (2, 4); got {nm!r}")
        keep, left_dense = b.nm_masks(sub, nm[0], nm[1], axis=nm_axis)
        return keep, names, left_dense
    if sparsity is None:
        raise ValueError("give the target sparsity= (in [0, 1)) or nm=(n, m)")
    d = 1.0 - check_sparsity(sparsity)
    if check_distribution(distribution) == "global":
        return b.global_magnitude_masks(sub, d), names, []
    return b.magnitude_masks(sub, {n: d for n in names}), names, []


_NUMPY = SimpleNamespace(as_real=as_real_array, nm_masks=nm_masks, global_magnitude_masks=global_magnitude_masks,
                         magnitude_masks=magnitude_masks)
_selection = selection


def _apply(weights: Mapping, keep: Mapping) -> dict:
    out = {}
    for n, w in weights.items():
        w = np.asarray(w)
        out[n] = np.where(keep[n], w, np.zeros((), w.dtype)) if n in keep else w.copy()
    return out


def topk_compress(weights: Mapping[str, np.ndarray], sparsity: float, distribution: str = "global",
                  keep_dense: Iterable[str] = (), first_last_dense: bool = False) -> tuple[dict, dict]:
    """T_k over the pruned layers ([TH] Eq. 3.2, docs/methods.md §1.2): (compressed weights, index-set masks).

    k = floor((1 - s) * N + 0.5) of the N pruned weights (global, one top-k over the concatenation
    in dict order) or per layer (uniform); ties -> smaller flat index (docs/methods.md §1.2). The mask is
    1[i in A_k] (CrAM's M_t); layers kept dense get all-True masks and unchanged weights."""
    keep, _, _ = _selection(weights, sparsity, distribution, keep_dense, first_last_dense, None, "reduction")
    full = {n: keep.get(n, np.ones(np.shape(w), dtype=bool)) for n, w in weights.items()}
    return _apply(weights, keep), full


def acdc_compress(weights: Mapping[str, np.ndarray], sparsity: float | None = None, distribution: str = "global",
                  keep_dense: Iterable[str] = (), first_last_dense: bool = False,
                  nm: tuple[int, int] | None = None, nm_axis: str = "reduction") -> tuple[dict, dict]:
    """AC/DC compression step, [TH] Alg. 1 l.4-5: theta <- T_k(theta); m <- 1[theta_i != 0].

    Returns (compressed weights, masks). Top-K at ``sparsity`` (global or uniform, as
    ``topk_compress``) or, with ``nm=(n, m)``, the N:M projection keeping n of every m along
    ``nm_axis`` (2:4 in [TH] §3.4.2; ``reference.masks.nm_masks``: indivisible layers stay dense,
    with a warning). For pruned layers the mask is the support of the compressed weights (so it
    may hold fewer than k ones when selected weights are exactly zero); layers not pruned get
    all-True masks. Inputs are never modified."""
    keep, _, left_dense = _selection(weights, sparsity, distribution, keep_dense, first_last_dense, nm, nm_axis)
    out = _apply(weights, keep)
    pruned = [n for n in keep if n not in left_dense]      # N:M leaves indivisible layers dense
    masks = {n: (out[n] != 0) if n in pruned else np.ones(np.shape(w), dtype=bool) for n, w in weights.items()}
    return out, masks
