"""CrAM -- Compression-Aware Minimization: the operators of one step, NumPy reference.

[TH] Ch. 5: Eq. 5.1-5.9, Alg. 2, §5.3, §5.6.2; docs/methods.md §7.1, §7.2, §7.5. Pure functions on dicts
name -> array; the caller computes the gradients (a forward/backward at each point) and runs the
optimizer. One CrAM / CrAM⁺ step (Alg. 2) in terms of these operators:

    g            = grad L(theta)                                   (l.4, caller)
    C            = sample_compression(compressions, seed, t)       (l.5, uniform, seeded stream)
    theta~, M    = cram_point(theta, g, rho, C, prunable)          (l.6/8: C(theta + rho g))
    g~           = grad L(theta~)                                  (caller)
    update       = cram_update_grads(g~, g, masks=M, plus=True)    (l.9 SG: M g~; l.14 CrAM⁺: + g)
    theta_{t+1}  = optimizer step with ``update``                  (l.16, caller)

THE PERTURBATION IS NOT NORMALIZED: Eq. 5.2/5.6 and Alg. 2 l.6 use theta + rho * grad L(theta), and
"we did not enforce the bound on the norm of the perturbation" (§5.3.1). (The SAM form
rho * g / ||g||, [TH] App. C Eq. C.2, is ``sam_point``; C-SAM, Eq. 5.7, uses it; ``cram_point``
offers it with ``normalize=True`` only as a switch.) Top-K (Eq. 5.8) and Top-K⁺ (Eq. 5.9) are
``cram_point`` with rho = 0. Norms are the l2 norm over every tensor of the gradient dict
(docs/methods.md §7.1: all trainable parameters), accumulated in float64.

Compressions (``Compression``, scalar config shared with accel) act on the ``prunable`` tensors only;
the other tensors (BN, biases) pass through C unchanged (docs/methods.md §7.2). Top-K returns the index-set mask
1[i in A_k] (docs/methods.md §1.2 resolution for CrAM; "M_t ... the linear projection operator onto the support
of the largest K coordinates", Alg. 2 l.8); N:M returns its pattern mask; quantization has no mask
(Alg. 2 l.11: no sparse gradient).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._checks import as_real_array, check_int, check_sparsity, check_same_shape
from .acdc_ops import check_distribution, topk_compress
from .masks import check_layer_dict, check_nm, nm_masks
from .quantize import check_bits, quantize_dequantize
from .schedules import step_seed

COMPRESSION_KINDS = ("topk", "nm", "quant")


# ----------------------------------------------------------------------------- compression specs

@dataclass(frozen=True)
class Compression:
    """One compression operator C of Alg. 2 ([TH] §5.3.3, §5.4.1). Build with ``topk_compression``,
    ``nm_compression`` or ``quant_compression``. ``sparsity`` is the fraction of zeros ("CrAM-k50
    indicates that the Top-K operator with k=50% was used", i.e. k50 = 50% sparsity, docs/methods.md §1.2)."""
    kind: str
    sparsity: float | None = None
    distribution: str = "global"
    keep_dense: tuple = ()
    first_last_dense: bool = False
    n: int | None = None
    m: int | None = None
    bits: int | None = None

    def __post_init__(self):
        if self.kind not in COMPRESSION_KINDS:
            raise ValueError(f"compression kind={self.kind!r} is not allowed; choose one of {list(COMPRESSION_KINDS)}")
        if self.kind == "topk":
            check_sparsity(self.sparsity)
            check_distribution(self.distribution)
        elif self.kind == "nm":
            check_nm(self.n, self.m)
        else:
            check_bits(self.bits)


def topk_compression(sparsity: float, distribution: str = "global", keep_dense: Iterable[str] = (),
                     first_last_dense: bool = False) -> Compression:
    """Top-K at ``sparsity`` (global, or uniform per layer with e.g. first & last dense, [TH] §5.4.1)."""
    return Compression("topk", sparsity=float(sparsity), distribution=distribution,
                       keep_dense=tuple(keep_dense), first_last_dense=first_last_dense)


def nm_compression(n: int, m: int) -> Compression:
    """N:M projection keeping n of every m along the reduction axis (CrAM⁺-N:M: 2:4 and 4:8)."""
    return Compression("nm", n=n, m=m)


def quant_compression(bits: int = 4) -> Compression:
    """Symmetric per-channel quantization to ``bits`` bits (CrAM⁺-4Bits, ``reference.quantize``)."""
    return Compression("quant", bits=bits)


def percent_range(lo: int, hi: int) -> tuple[float, ...]:
    """Sparsities {lo%, lo+1%, ..., hi%} (docs/methods.md §7.2 resolution of "sampled uniformly at random in the
    range 30%-90%": the integer percentages of the range)."""
    lo, hi = check_int(lo, "lo (percent)", 0, 99), check_int(hi, "hi (percent)", 0, 99)
    if hi < lo:
        raise ValueError(f"percent range [{lo}, {hi}] is empty: need lo <= hi")
    return tuple(p / 100 for p in range(lo, hi + 1))


def multi_topk(sparsities: Iterable[float], **kw) -> tuple[Compression, ...]:
    """The compression set of CrAM-Multi: one Top-K per sparsity, e.g. {0.5, 0.7, 0.9} ([TH] §5.4)."""
    return tuple(topk_compression(s, **kw) for s in sparsities)


def sample_compression(compressions: Sequence, seed: int, t: int):
    """Alg. 2 l.5 "Uniformly choose a compression method C in the set": the element chosen at step t.

    A deterministic function of (seed, t) (``np.random.default_rng(step_seed(seed, t))``), so both
    backends, resumed runs and every DDP rank choose the same C (docs/methods.md §1.15). An empty set
    is an error."""
    comps = list(compressions)
    if not comps:
        raise ValueError("the set of compression methods is empty; CrAM needs at least one (e.g. topk_compression(0.5))")
    rng = np.random.default_rng(step_seed(check_int(seed, "seed", 0), check_int(t, "t", 0)))
    return comps[int(rng.integers(len(comps)))]


def check_base_prob(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"base_prob={p!r} is outside the allowed range [0, 1]: it is the probability of a plain "
                         f"base-optimizer step")
    return float(p)


def base_step_at(seed: int, t: int, p: float) -> bool:
    """Whether step t is a plain base-optimizer step instead of the CrAM step, with probability ``p``
    ([TH] §5.5.1, Table 5.9: "at each optimization step we choose with a certain probability between
    the CrAM or a standard Adam update"; p(Adam) there). A deterministic function of (seed, t) on its
    own stream (independent of ``sample_compression``'s), so both backends and every DDP rank agree;
    p = 0 never draws, p = 1 always takes the base step."""
    p = check_base_prob(p)
    if p == 0.0:
        return False
    rng = np.random.default_rng([step_seed(check_int(seed, "seed", 0), check_int(t, "t", 0)), 0xBA5E])
    return bool(rng.random() < p)


# ----------------------------------------------------------------------------- helpers

def check_rho(rho) -> float:
    """Perturbation step size rho >= 0 (rho = 0: no perturbation, Eq. 5.8/5.9)."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.floating, np.integer)):
        raise TypeError(f"rho must be a number >= 0, got {rho!r}")
    r = float(rho)
    if not (math.isfinite(r) and r >= 0.0):
        raise ValueError(f"rho={rho!r} is outside the allowed range [0, inf): the perturbation step must be >= 0")
    return r


def _pair(a: Mapping, b: Mapping, what_a: str, what_b: str, backend=None) -> None:
    b_ = backend or _NUMPY
    check_layer_dict(a, what_a)
    if list(a) != list(b):
        raise ValueError(f"{what_a} and {what_b} must name the same tensors in the same order: {list(a)} vs {list(b)}")
    for n in a:
        b_.as_real(a[n], f"{what_a}[{n!r}]")
        b_.as_real(b[n], f"{what_b}[{n!r}]")
        check_same_shape(a[n], b[n], f"{what_a}[{n!r}]", f"{what_b}[{n!r}]")


def _prunable(params: Mapping, prunable) -> list[str]:
    if prunable is None:
        return list(params)
    if isinstance(prunable, str):
        raise TypeError(f"prunable must be a list of tensor names, got the string {prunable!r}")
    names = list(prunable)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"prunable names unknown tensor(s) {unknown}; the tensors are {list(params)}")
    return [n for n in params if n in set(names)]


def grad_norm(grads: Mapping[str, np.ndarray]) -> float:
    """Global l2 norm over every tensor of the dict, accumulated in float64 (docs/methods.md §7.1)."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(g, dtype=np.float64)))) for g in grads.values()))


def _axpy(params: Mapping, grads: Mapping, scale: float) -> dict:
    """theta + scale * g per tensor, the scalar rounded to the tensor dtype first."""
    out = {}
    for n, p in params.items():
        p = np.asarray(p)
        dt = p.dtype.type if p.dtype.kind == "f" else np.float64
        out[n] = p + dt(scale) * np.asarray(grads[n], dtype=dt)
    return out


# ----------------------------------------------------------------------------- operators
# Written once: each takes ``backend``, the array primitives of a backend (NumPy by default;
# ``accel.cram_ops`` passes torch's), so the compositions below are not repeated in accel.

def compress(params: Mapping[str, np.ndarray], compression: Compression,
             prunable: Iterable[str] | None = None, backend=None, nm_axis="reduction") -> tuple[dict, dict | None]:
    """C(params): (compressed dict, masks of the prunable tensors, or None for quantization).

    Top-K (``reference.acdc_ops.topk_compress`` on the prunable tensors, index-set masks), N:M
    (``reference.masks.nm_masks`` along ``nm_axis``: the GEMM reduction dimension, dim 1, or a dict
    layer -> dimension such as ``accel.prunable.reduction_dims``, which is 0 for a ConvTranspose;
    indivisible layers stay dense with a warning) or quantization (``reference.quantize``). Tensors
    outside ``prunable`` (default: all are prunable) are copied."""
    b = backend or _NUMPY
    if not isinstance(compression, Compression):
        raise TypeError(f"compression must be a Compression (topk_compression / nm_compression / "
                        f"quant_compression), got {type(compression).__name__}")
    check_layer_dict(params, "params")
    for n, p in params.items():
        b.as_real(p, f"params[{n!r}]")
    names = _prunable(params, prunable)
    sub = {n: params[n] for n in names}
    out = {n: b.copy(p) for n, p in params.items()}
    if compression.kind == "quant":
        out.update({n: b.quantize_dequantize(w, compression.bits) for n, w in sub.items()})
        return out, None
    if compression.kind == "topk":
        comp, masks = b.topk_compress(sub, compression.sparsity, compression.distribution,
                                      compression.keep_dense, compression.first_last_dense)
    else:
        axis = {n: nm_axis[n] for n in sub} if isinstance(nm_axis, Mapping) else nm_axis
        masks, _ = b.nm_masks(sub, compression.n, compression.m, axis=axis)
        comp = {n: b.zero_outside(masks[n], w) for n, w in sub.items()}
    out.update(comp)
    return out, masks


def perturb(params: Mapping, grads: Mapping, rho: float, normalize: bool = False, backend=None) -> dict:
    """phi = theta + rho * g (CrAM, Eq. 5.2, unnormalized) or theta + rho * g / ||g|| (``normalize``,
    SAM Eq. C.2). A zero gradient with ``normalize`` leaves theta unchanged (direction undefined)."""
    b = backend or _NUMPY
    rho = check_rho(rho)
    _pair(params, grads, "params", "grads", b)
    if normalize:
        norm = b.grad_norm(grads)
        return b.axpy(params, grads, rho / norm if norm > 0 else 0.0)
    return b.axpy(params, grads, rho)


def sam_point(params: Mapping, grads: Mapping, rho: float, backend=None) -> dict:
    """SAM's perturbed point theta + rho * g / ||g|| ([TH] §5.2, App. C Eq. C.2; docs/methods.md §7.1)."""
    return perturb(params, grads, rho, normalize=True, backend=backend)


def cram_point(params: Mapping, grads: Mapping, rho: float, compression: Compression,
               prunable: Iterable[str] | None = None, normalize: bool = False,
               backend=None) -> tuple[dict, dict | None]:
    """CrAM's intermediate point theta~ = C(theta + rho * g) ([TH] Eq. 5.2/5.6, Alg. 2 l.6) and the
    mask M_t of C (Alg. 2 l.8; None for quantization). rho = 0 gives C(theta) (Top-K / Top-K⁺,
    Eq. 5.8/5.9). ``normalize=True`` perturbs by rho * g / ||g|| instead (not the thesis' CrAM)."""
    return compress(perturb(params, grads, rho, normalize, backend), compression, prunable, backend)


def csam_point(params: Mapping, grads_at_compressed: Mapping, rho: float, compression: Compression,
               masks_at_compressed: Mapping | None = None,
               prunable: Iterable[str] | None = None, backend=None) -> tuple[dict, dict | None]:
    """C-SAM's point C(theta + rho * g^ / ||g^||), g^ = grad L(C(theta)) ([TH] Eq. 5.7), with the
    sparse-gradient approximation of §5.6.2 when ``masks_at_compressed`` (the mask of C(theta)) is
    given: g^ = M_theta * grad L(C(theta)). Returns (theta~, mask of theta~); the update then uses
    ``cram_update_grads(grad L(theta~), None, masks, plus=False)``."""
    g = (sparse_grads(grads_at_compressed, masks_at_compressed, backend) if masks_at_compressed is not None
         else grads_at_compressed)
    return compress(perturb(params, g, rho, normalize=True, backend=backend), compression, prunable, backend)


def sparse_grads(grads: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], backend=None) -> dict:
    """Sparse intermediate gradients M_t * grad L(theta~) (Alg. 2 l.9; CrAM-SG, [TH] §5.3.3):
    tensors with a mask are multiplied by it, the others (BN, biases) pass unchanged."""
    b = backend or _NUMPY
    check_layer_dict(grads, "grads")
    unknown = [n for n in masks if n not in grads]
    if unknown:
        raise ValueError(f"masks name tensor(s) {unknown} that are not in grads {list(grads)}")
    out = {}
    for n, g in grads.items():
        g = b.as_real(g, f"grads[{n!r}]")
        if n in masks:
            m = masks[n]
            if not b.is_bool(m):
                raise TypeError(f"masks[{n!r}] must be a boolean mask, got {b.describe(m)}")
            check_same_shape(m, g, f"masks[{n!r}]", f"grads[{n!r}]")
            out[n] = b.zero_outside(m, g)
        else:
            out[n] = b.copy(g)
    return out


def cram_update_grads(grad_tilde: Mapping, grad: Mapping | None = None, masks: Mapping | None = None,
                      plus: bool = True, backend=None) -> dict:
    """The gradient fed to the optimizer (Alg. 2 l.9-14): g~ = grad L(theta~), masked by M_t when
    ``masks`` is given (sparse intermediate gradients, docs/methods.md §7.2 flag ``sparse_grad``), plus the
    dense gradient g = grad L(theta) for CrAM⁺ (Eq. 5.4; ``plus=True`` needs ``grad``)."""
    b = backend or _NUMPY
    if not isinstance(plus, bool):
        raise TypeError(f"plus must be True (CrAM⁺) or False (CrAM), got {plus!r}")
    gt = sparse_grads(grad_tilde, masks, b) if masks is not None else {
        n: b.copy(b.as_real(g, f"grad_tilde[{n!r}]")) for n, g in grad_tilde.items()}
    if not plus:
        return gt
    if grad is None:
        raise ValueError("CrAM⁺ (plus=True) adds the gradient at theta: pass grad=, or plus=False for CrAM")
    _pair(gt, grad, "grad_tilde", "grad", b)
    return {n: gt[n] + b.cast_like(grad[n], gt[n]) for n in gt}


# The NumPy primitives of the operators above (``accel.cram_ops`` builds the torch ones).
_NUMPY = SimpleNamespace(
    as_real=as_real_array, copy=lambda a: np.array(a, copy=True),
    zero_outside=lambda m, w: np.where(m, w, np.zeros((), np.asarray(w).dtype)),
    is_bool=lambda m: np.asarray(m).dtype == bool, describe=lambda m: f"dtype {np.asarray(m).dtype}",
    cast_like=lambda x, ref: np.asarray(x, dtype=ref.dtype),
    topk_compress=topk_compress, nm_masks=nm_masks, quantize_dequantize=quantize_dequantize,
    grad_norm=grad_norm, axpy=_axpy)
