"""AC/DC, CrAM and 4-bit quantization operators ([TH] Ch. 3, 5; docs/methods.md §1.2, §1.11, §7.1, §7.2).

Masks are compared exactly. Weights are drawn with frequent ties and exact zeros (the AC/DC mask is
the support of the compressed weights), sparsities include 0 (k = n) and values that round k to 0.
The CrAM point theta + rho * g is two correctly rounded IEEE operations on both backends (rho
rounded to the dtype first), so the Top-K / N:M selection and the quantization codes on it are
bit-identical, ties included. The normalized (SAM / C-SAM) points divide by a norm accumulated in
float64; the mask-producing entries draw gradients that are multiples of 1/2, whose sum of squares is
exact in any order, so the norm (and everything after it) is identical; ``perturb`` with arbitrary
floats is compared as arithmetic (dtype tolerance).
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.acdc_ops as AA
import twinsparse.accel.cram_ops as AC
import twinsparse.accel.quantize as AQ
import twinsparse.reference.acdc_ops as RA
import twinsparse.reference.cram_ops as RC
import twinsparse.reference.quantize as RQ
from twinsparse.conformance.registry import compare_exact, register
from twinsparse.conformance.strategies import scores, shapes
from twinsparse.conformance.entries.common import quiet
from twinsparse.conformance.entries.masks import NM_PATTERNS, exact_sum_weights


def _weights(shape, dtype):
    """Tied levels, spread or arbitrary values, or halves in [-3, 3] (many exact zeros and ties)."""
    return st.one_of(scores(shape, dtype), exact_sum_weights(shape, dtype))


def _layer_shape(nm_m=None):
    """A Linear or Conv shape; with ``nm_m``, usually one whose reduction axis divides by m."""
    if nm_m is not None:
        return st.one_of(st.tuples(st.integers(1, 4), st.integers(1, 3).map(lambda i: i * nm_m)),
                         st.tuples(st.integers(1, 3), st.integers(1, 2).map(lambda i: i * nm_m),
                                   st.integers(1, 3), st.integers(1, 3)),
                         shapes(2, 2, 1, 6))
    return st.one_of(shapes(2, 2, 1, 8), shapes(4, 4, 1, 4))


def _net(draw, dtype, draw_array=_weights, nm_m=None, min_layers=1, max_layers=4):
    n = draw(st.integers(min_layers, max_layers))
    return {f"layer{i}.weight": draw(draw_array(draw(_layer_shape(nm_m)), dtype)) for i in range(n)}


def _sparsity():
    """k = n (0), the paper's levels, a level that rounds small layers to k = 0, and any value."""
    return st.one_of(st.sampled_from([0.0, 0.5, 0.7, 0.9, 0.98]), st.floats(0, 1, exclude_max=True))


def _dense_options(draw, names):
    """keep_dense / first_last_dense leaving at least one pruned layer."""
    kw = {}
    if len(names) >= 3 and draw(st.booleans()):
        kw["first_last_dense"] = True
    elif len(names) >= 2 and draw(st.booleans()):
        kw["keep_dense"] = [draw(st.sampled_from(names))]
    return kw


# ----------------------------------------------------------------------------- AC/DC

@st.composite
def _topk_compress_args(draw, dtype):
    w = _net(draw, dtype)
    kw = _dense_options(draw, list(w))
    kw["distribution"] = draw(st.sampled_from(RA.DISTRIBUTIONS))
    return (w, draw(_sparsity())), kw


@st.composite
def _acdc_compress_args(draw, dtype):
    if draw(st.integers(0, 2)) == 0:                     # N:M variant (2:4 in [TH] §3.4.2)
        n, m = draw(st.sampled_from(NM_PATTERNS))
        w = _net(draw, dtype, nm_m=m)
        return (w,), {"nm": (n, m), **_dense_options(draw, list(w))}
    w = _net(draw, dtype)
    kw = _dense_options(draw, list(w))
    kw["distribution"] = draw(st.sampled_from(RA.DISTRIBUTIONS))
    return (w, draw(_sparsity())), kw


register("acdc.topk_compress", RA.topk_compress, AA.topk_compress, _topk_compress_args,
         notes="global / uniform T_k with index-set masks; first & last or named layers dense")
register("acdc.acdc_compress", quiet(RA.acdc_compress), quiet(AA.acdc_compress), _acdc_compress_args,
         notes="Alg. 1 l.4-5: mask = non-zeros of T_k(theta) (exact zeros drawn often); N:M variant")


# ----------------------------------------------------------------------------- quantization

def _quant_weight(shape, dtype):
    """Arbitrary floats, tied levels, halves, or a weight with an all-zero channel."""
    def zero_row(a):
        a = a.copy()
        a[0] = 0
        return a
    base = st.one_of(scores(shape, dtype), exact_sum_weights(shape, dtype))
    return st.one_of(base, base.map(zero_row))


@st.composite
def _quant_args(draw, dtype):
    w = draw(_quant_weight(draw(shapes(1, 4, 1, 6)), dtype))
    return (w,), {"bits": draw(st.sampled_from([4, 4, 2, 3, 8]))}


register("quantize.quantize_codes", RQ.quantize_codes, AQ.quantize_codes, _quant_args, compare=compare_exact,
         notes="codes and scales bit for bit: max|W_c| is exact and every later step one correctly rounded "
               "operation (round half to even on both), so no device may move a code")
register("quantize.quantize_dequantize", RQ.quantize_dequantize, AQ.quantize_dequantize, _quant_args,
         compare=compare_exact)


@st.composite
def _quant_all_args(draw, dtype):
    ws = {f"layer{i}.weight": draw(_quant_weight(draw(shapes(1, 4, 1, 5)), dtype)) for i in range(draw(st.integers(1, 3)))}
    return (ws,), {"bits": draw(st.sampled_from([4, 2, 8]))}


register("quantize.quantize_all", RQ.quantize_all, AQ.quantize_all, _quant_all_args, compare=compare_exact)


# ----------------------------------------------------------------------------- CrAM

def _params_and_grads(draw, dtype, exact_grads, nm_m=None):
    """A network of 1-3 prunable weights plus a 1-D bias (not prunable), and gradients of it."""
    w = _net(draw, dtype, nm_m=nm_m, max_layers=3)
    params = dict(w)
    params["bias"] = draw(scores((draw(st.integers(1, 5)),), dtype))
    grad_arr = exact_sum_weights if exact_grads else _weights
    grads = {n: draw(grad_arr(p.shape, dtype)) for n, p in params.items()}
    return params, grads, list(w)


def _rho():
    return st.one_of(st.sampled_from([0.0, 0.05, 0.15, 1.0]), st.floats(0, 2))


@st.composite
def _compression(draw, names):
    kind = draw(st.sampled_from(RC.COMPRESSION_KINDS))
    if kind == "topk":
        return RC.topk_compression(draw(_sparsity()), draw(st.sampled_from(RA.DISTRIBUTIONS)),
                                   **_dense_options(draw, names))
    if kind == "nm":
        return RC.nm_compression(*draw(st.sampled_from([(2, 4), (4, 8), (1, 2)])))
    return RC.quant_compression(draw(st.sampled_from([4, 4, 2, 8])))


@st.composite
def _perturb_args(draw, dtype):
    params, grads, _ = _params_and_grads(draw, dtype, exact_grads=False)
    return (params, grads, draw(_rho())), {"normalize": draw(st.booleans())}


@st.composite
def _cram_point_args(draw, dtype):
    normalize = draw(st.integers(0, 3)) == 0
    m = draw(st.sampled_from([None, 2, 4, 8]))
    params, grads, prunable = _params_and_grads(draw, dtype, exact_grads=normalize, nm_m=m)
    comp = draw(_compression(prunable))
    return (params, grads, draw(_rho()), comp), {"prunable": prunable, "normalize": normalize}


@st.composite
def _csam_point_args(draw, dtype):
    params, grads, prunable = _params_and_grads(draw, dtype, exact_grads=True, nm_m=draw(st.sampled_from([None, 4])))
    comp = draw(_compression(prunable))
    masks = None
    if draw(st.booleans()):
        masks = {n: draw(hnp.arrays(np.bool_, params[n].shape)) for n in prunable}
    return (params, grads, draw(_rho()), comp), {"masks_at_compressed": masks, "prunable": prunable}


@st.composite
def _sparse_grads_args(draw, dtype):
    _, grads, prunable = _params_and_grads(draw, dtype, exact_grads=False)
    masks = {n: draw(hnp.arrays(np.bool_, grads[n].shape)) for n in prunable if draw(st.booleans())}
    return (grads, masks), {}


@st.composite
def _cram_update_grads_args(draw, dtype):
    params, grad, prunable = _params_and_grads(draw, dtype, exact_grads=False)
    grad_tilde = {n: draw(_weights(p.shape, dtype)) for n, p in params.items()}
    masks = {n: draw(hnp.arrays(np.bool_, params[n].shape)) for n in prunable} if draw(st.booleans()) else None
    plus = draw(st.booleans())
    return (grad_tilde, grad if plus or draw(st.booleans()) else None), {"masks": masks, "plus": plus}


@st.composite
def _compress_args(draw, dtype):
    params, _, prunable = _params_and_grads(draw, dtype, exact_grads=False, nm_m=draw(st.sampled_from([None, 2, 4])))
    if draw(st.booleans()):                      # prunable=None: every tensor is compressed (no 1-D bias)
        del params["bias"]
        return (params, draw(_compression(prunable))), {"prunable": None}
    return (params, draw(_compression(prunable))), {"prunable": prunable}


@st.composite
def _grad_norm_args(draw, dtype):
    _, grads, _ = _params_and_grads(draw, dtype, exact_grads=draw(st.booleans()))
    return (grads,), {}


register("cram.compress", quiet(RC.compress), quiet(AC.compress), _compress_args,
         notes="C on the prunable tensors (all when prunable=None); Top-K, N:M, quantization")
register("cram.grad_norm", RC.grad_norm, AC.grad_norm, _grad_norm_args)
register("cram.perturb", RC.perturb, AC.perturb, _perturb_args,
         notes="theta + rho g (CrAM, unnormalized) and theta + rho g / ||g|| (SAM); arithmetic")
register("cram.sam_point", RC.sam_point, AC.sam_point,
         lambda dtype: _perturb_args(dtype).map(lambda a: (a[0], {})))
register("cram.cram_point", quiet(RC.cram_point), quiet(AC.cram_point), _cram_point_args,
         notes="C(theta + rho g) for Top-K (global/uniform, dense layers), N:M and 4-bit quantization; "
               "rho = 0 is Top-K / Top-K+; masks exact, a non-prunable bias passes through")
register("cram.csam_point", quiet(RC.csam_point), quiet(AC.csam_point), _csam_point_args,
         notes="C-SAM Eq. 5.7 with and without the sparse-gradient mask")
register("cram.sparse_grads", RC.sparse_grads, AC.sparse_grads, _sparse_grads_args)
register("cram.cram_update_grads", RC.cram_update_grads, AC.cram_update_grads, _cram_update_grads_args,
         notes="CrAM / CrAM+ with and without sparse intermediate gradients")
