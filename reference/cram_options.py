"""CrAM run options as scalar logic (written once, imported by accel): the text form of a
compression set, the update modes, and the checks of the ``cram_*`` fields of ``RunConfig``.

[TH] Ch. 5, Alg. 2; docs/methods.md §7.1, §7.2, §7.5. A compression is written as a string:

    "topk:0.7"            Top-K at 70% sparsity, global magnitude (the thesis' default, [TH] §5.4)
    "topk:0.7:uniform"    the same sparsity in every prunable layer
    "topk:0.3-0.9"        every integer percentage 30%, 31%, ..., 90% (docs/methods.md §7.2 resolution of
                          "sampled uniformly at random in the range 30%-90%"; one Compression each)
    "nm:2:4"              N:M keeping 2 of every 4 along the reduction axis (CrAM⁺-N:M)
    "quant:4"             symmetric per-channel 4-bit quantization (CrAM⁺-4Bits)

A list of strings is the set C of Alg. 2 l.5 (one element drawn uniformly per step, so a range
"topk:0.3-0.9" weighs 61 times one "topk:0.5" -- write what you mean).

Modes (``MODES``):
    "cram"  Alg. 2 / Eq. 5.2 (plus=False) or Eq. 5.4 (plus=True, CrAM⁺, the default);
            rho = 0 gives Top-K (Eq. 5.8, plus=False) and Top-K⁺ (Eq. 5.9, plus=True)
    "sam"   SAM, [TH] Eq. C.2: the point theta + rho g / ||g||, no compression
    "csam"  C-SAM, [TH] Eq. 5.7, with the sparse gradients of §5.6.2 when sparse_grad
    "sgd"   the plain base optimizer (one forward/backward per step): the baseline
"""
from __future__ import annotations

import math

from .acdc_ops import DISTRIBUTIONS as TOPK_DISTRIBUTIONS
from .cram_ops import Compression, nm_compression, percent_range, quant_compression, topk_compression

MODES = ("cram", "sam", "csam", "sgd")
EVAL_PATTERNS = TOPK_DISTRIBUTIONS   # Top-K over all layers or per layer; + any compression string nm / quant


def _number(text: str, spec: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"compression {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"compression {spec!r}: {text!r} is not a finite number")
    return v


def _int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"compression {spec!r}: {text!r} is not an integer") from None


def parse_compression(spec: str) -> tuple[Compression, ...]:
    """The Compression(s) one string stands for (a Top-K range gives several); see the module doc."""
    if not isinstance(spec, str):
        raise TypeError(f"a compression is a string like 'topk:0.7', 'nm:2:4' or 'quant:4', got {spec!r}")
    parts = spec.strip().split(":")
    kind = parts[0]
    if kind == "topk":
        if len(parts) not in (2, 3):
            raise ValueError(f"compression {spec!r}: write 'topk:SPARSITY' or 'topk:SPARSITY:global|uniform' "
                             f"(SPARSITY in [0, 1) or a range like 0.3-0.9)")
        dist = parts[2] if len(parts) == 3 else "global"
        if dist not in EVAL_PATTERNS:
            raise ValueError(f"compression {spec!r}: distribution {dist!r} is not allowed; choose one of "
                             f"{list(EVAL_PATTERNS)}")
        if "-" in parts[1].lstrip("-"):
            lo, hi = parts[1].rsplit("-", 1)
            a, b = _number(lo, spec), _number(hi, spec)
            pa, pb = round(a * 100), round(b * 100)
            if abs(pa - a * 100) > 1e-9 or abs(pb - b * 100) > 1e-9:
                raise ValueError(f"compression {spec!r}: a range runs over integer percentages, so its ends "
                                 f"must be multiples of 0.01")
            try:
                sps = percent_range(pa, pb)
            except ValueError as e:
                raise ValueError(f"compression {spec!r}: {e}") from None
            return tuple(topk_compression(s, distribution=dist) for s in sps)
        try:
            return (topk_compression(_number(parts[1], spec), distribution=dist),)
        except ValueError as e:
            raise ValueError(f"compression {spec!r}: {e}") from None
    if kind == "nm":
        if len(parts) != 3:
            raise ValueError(f"compression {spec!r}: write 'nm:N:M' (keep N of every M, e.g. 'nm:2:4')")
        try:
            return (nm_compression(_int(parts[1], spec), _int(parts[2], spec)),)
        except (ValueError, TypeError) as e:
            raise ValueError(f"compression {spec!r}: {e}") from None
    if kind == "quant":
        if len(parts) != 2:
            raise ValueError(f"compression {spec!r}: write 'quant:BITS' (e.g. 'quant:4')")
        try:
            return (quant_compression(_int(parts[1], spec)),)
        except (ValueError, TypeError) as e:
            raise ValueError(f"compression {spec!r}: {e}") from None
    raise ValueError(f"compression {spec!r}: unknown kind {kind!r}; write 'topk:S', 'topk:S:uniform', "
                     f"'topk:A-B', 'nm:N:M' or 'quant:BITS'")


def parse_compressions(specs) -> tuple[Compression, ...]:
    """The compression set C of Alg. 2 from a list of strings (in order; ranges expanded). An empty
    list is an error (Alg. 2 l.5 needs at least one compression)."""
    if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        raise TypeError(f"compressions must be a list of strings like ['topk:0.5', 'nm:2:4'], got {specs!r}")
    if not specs:
        raise ValueError("the set of compressions is empty; CrAM needs at least one (e.g. ['topk:0.5'])")
    out = []
    for s in specs:
        out.extend(parse_compression(s))
    return tuple(out)


def resolve_plus(mode: str, plus) -> bool:
    """``plus`` given, or the mode's thesis default: CrAM⁺ for 'cram' (the method the thesis proposes,
    §5.3.1), plain for SAM, C-SAM and SGD (no '+' version in [TH]; a C-SAM⁺ would need a third
    forward/backward, §5.3.3). plus=True with a mode other than 'cram' is an error."""
    check_mode(mode)
    if plus is None:
        return mode == "cram"
    if not isinstance(plus, bool):
        raise TypeError(f"plus must be True, False or None (the mode's default), got {plus!r}")
    if plus and mode != "cram":
        raise ValueError(f"plus=True is not defined for mode={mode!r}: the '+' (add the gradient at theta) is "
                         f"CrAM⁺ ([TH] Eq. 5.4); SAM has none and C-SAM⁺ would need a third pass, not in the "
                         f"thesis. Leave plus unset or False")
    return plus


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; choose one of {list(MODES)}")
    return mode


def parse_eval_patterns(patterns) -> list[tuple[str, object]]:
    """The one-shot patterns of the evaluation protocol (docs/methods.md §7.5): 'global' / 'uniform' (Top-K at
    every evaluation sparsity) or a fixed compression string of kind nm / quant ('nm:2:4', 'quant:4').
    Returns [(name, 'global' | 'uniform' | Compression)]."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise TypeError(f"eval patterns must be a list like ['global', 'uniform', 'nm:2:4'], got {patterns!r}")
    out = []
    for p in patterns:
        if p in EVAL_PATTERNS:
            out.append((p, p))
            continue
        try:
            comps = parse_compression(p) if isinstance(p, str) else None
        except ValueError:
            comps = None
        if comps is None or len(comps) != 1 or comps[0].kind == "topk":
            raise ValueError(f"eval pattern {p!r} is not allowed: use 'global', 'uniform' (Top-K at each "
                             f"evaluation sparsity) or an N:M / quantization string such as 'nm:2:4', 'quant:4'")
        out.append((p, comps[0]))
    if len({n for n, _ in out}) != len(out):
        raise ValueError(f"eval patterns {list(patterns)} repeat an entry")
    return out


def uniform_topk(cfg, sparsity: float, distribution: str) -> Compression:
    """A Top-K compression of the run: with ``distribution='uniform'`` the first and the last prunable
    layer stay dense when ``cfg.cram_uniform_first_last_dense`` ([TH] §5.4.1: "we keep the first and
    last layers dense"; the sparsity then counts the other layers)."""
    return topk_compression(sparsity, distribution=distribution,
                            first_last_dense=distribution == "uniform" and bool(cfg.cram_uniform_first_last_dense))


def training_compressions(cfg) -> tuple:
    """The compression set C of a run (``cram_compressions``), uniform Top-K ones following
    ``cram_uniform_first_last_dense``; empty for modes without compressions."""
    if cfg.cram_mode not in ("cram", "csam"):
        return ()
    return tuple(uniform_topk(cfg, c.sparsity, c.distribution) if c.kind == "topk" else c
                 for c in parse_compressions(cfg.cram_compressions))


def validate_cram_fields(cfg, error=ValueError) -> None:
    """Checks of the ``cram_*`` fields of a RunConfig (raised as ``error``, e.g. ConfigError)."""
    try:
        check_mode(cfg.cram_mode)
        if cfg.cram_mode in ("cram", "csam") or cfg.cram_compressions:
            parse_compressions(cfg.cram_compressions)
        resolve_plus(cfg.cram_mode, cfg.cram_plus)
        parse_eval_patterns(cfg.cram_eval_patterns)
    except (ValueError, TypeError) as e:
        raise error(f"cram: {e}") from None
    p = cfg.cram_base_prob
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise error(f"cram_base_prob={p!r} is outside the allowed range [0, 1]: the probability of a plain "
                    f"base-optimizer step instead of the CrAM step")
    if p > 0 and cfg.cram_mode == "sgd":
        raise error(f"cram_base_prob={p} mixes plain steps into CrAM / SAM / C-SAM; cram_mode='sgd' takes only "
                    f"plain steps already (set cram_base_prob=0)")
    uses_uniform = "uniform" in cfg.cram_eval_patterns or any(
        isinstance(c, str) and c.endswith(":uniform") for c in cfg.cram_compressions)
    if (uses_uniform and cfg.cram_uniform_first_last_dense and cfg.procedure == "cram" and cfg.model == "mlp"
            and len(cfg.hidden) + 1 < 3):
        raise error(f"cram_uniform_first_last_dense=true keeps the first and the last layer dense; the MLP "
                    f"hidden={cfg.hidden} has {len(cfg.hidden) + 1} layers, so uniform Top-K would prune none: add a "
                    f"hidden layer or set cram_uniform_first_last_dense=false")
    rho = cfg.cram_rho
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
        raise error(f"cram_rho={rho!r} is outside the allowed range [0, inf): the perturbation step must be >= 0")
    for key, lo in (("cram_tau", 1), ("cram_bnt_samples", 2), ("cram_bnt_batches", 1), ("cram_bnt_batch_size", 2)):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise error(f"{key}={v!r} must be an integer >= {lo}")
    if cfg.cram_tau > 1 and cfg.cram_mode != "cram":
        raise error(f"cram_tau={cfg.cram_tau} (infrequent Top-K masks, [TH] §5.4.1) is defined for "
                    f"cram_mode='cram' only, got cram_mode={cfg.cram_mode!r}")
    sps = cfg.cram_eval_sparsities
    if not isinstance(sps, list) or not sps:
        raise error(f"cram_eval_sparsities={sps!r} must be a non-empty list of sparsities in [0, 1)")
    for s in sps:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s < 1.0):
            raise error(f"cram_eval_sparsities entry {s!r} is outside the allowed range [0, 1)")
    if cfg.procedure == "cram" and (cfg.method != "dense" or cfg.suptickets):
        raise error(f"procedure='cram' trains a dense model (one-shot pruned after training, docs/methods.md §7.5): leave "
                    f"method='dense' and density=1.0 (got method={cfg.method!r})")


def describe_cram(cfg) -> str:
    """One paragraph for ``--dry-run``: the update, the compression set and the evaluation protocol."""
    plus = resolve_plus(cfg.cram_mode, cfg.cram_plus)
    if cfg.cram_mode in ("cram", "csam"):
        comps = parse_compressions(cfg.cram_compressions)
        what = (f"{'CrAM⁺' if plus else 'CrAM'}" if cfg.cram_mode == "cram" else "C-SAM") + \
               f" (rho={cfg.cram_rho}, sparse_grad={cfg.cram_sparse_grad}, tau={cfg.cram_tau}) over " \
               f"{len(comps)} compression(s) {cfg.cram_compressions}"
    elif cfg.cram_mode == "sam":
        what = f"SAM (rho={cfg.cram_rho})"
    else:
        what = f"the plain {cfg.optimizer} baseline"
    pats = [n if n not in EVAL_PATTERNS else f"{n} top-k at {cfg.cram_eval_sparsities}"
            for n, _ in parse_eval_patterns(cfg.cram_eval_patterns)]
    bnt = (f"before/after BNT ({cfg.cram_bnt_batches} batches of {cfg.cram_bnt_batch_size} from "
           f"{cfg.cram_bnt_samples} training samples)" if cfg.batchnorm or cfg.model != "mlp" else "no BNT (no BatchNorm)")
    return (f"procedure cram: {cfg.epochs} epochs of dense training with {what}; then one-shot pruning of the "
            f"table's prunable set: {'; '.join(pats)}; test accuracy {bnt}")
