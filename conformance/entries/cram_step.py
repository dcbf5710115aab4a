"""One CrAM training step ([TH] Alg. 2, Eq. 5.2-5.9, C.2; docs/methods.md §7.1, §7.2): ``reference.cram_procedure.cram_step``
(NumPy MLP, hand-written backward, masked_sgd_step) vs ``accel.cram_procedure.cram_step`` (the ``CrAM`` wrapper
around torch SGD on ``accel.models.MLP``).

Drawn: a small MLP with or without BatchNorm (non-trivial BN running statistics), momentum buffers or none,
the mode (cram / sam / csam / sgd), plus, sparse_grad, rho (0 included: Top-K / Top-K⁺), a compression set
from Top-K (global / uniform), N:M and 4-bit quantization, tau, the step t and a Top-K mask cache holding a
random mask of some age (so a reuse step, tau > 1, is exercised). Compared: the chosen compression, the mask
of theta~ and whether it was refreshed (exact), new parameters, BN buffers (num_batches_tracked exactly) and
momentum buffers (float64 tolerance). float64 only: the Top-K / N:M selection on theta + rho g is exact only
if g agrees to the last bit, which the two backprops do not promise; in float64 a near-tie at the k-th
value within rounding is vanishingly rare for the continuous weights drawn here.
"""

import numpy as np
from hypothesis import assume, strategies as st

import twinsparse.accel.cram_procedure as A
import twinsparse.reference.cram_procedure as R
from twinsparse.conformance.entries.common import has_margin, quiet, randomize_bn_statistics
from twinsparse.conformance.registry import compare_default, register
from twinsparse.reference.cram_ops import nm_compression, quant_compression, topk_compression
from twinsparse.reference.nn import init_mlp

_RELU_MARGIN, _VAR_MARGIN = 1e-9, 1e-9

POOL = [topk_compression(0.5), topk_compression(0.7), topk_compression(0.6, "uniform"), nm_compression(2, 4),
        quant_compression(4)]


@st.composite
def _step_args(draw, dtype):
    n_linear = draw(st.integers(2, 3))
    sizes = (draw(st.sampled_from([4, 8, 6])),) + tuple(draw(st.sampled_from([4, 8, 5])) for _ in range(n_linear - 1)) \
        + (draw(st.integers(2, 4)),)
    bn = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params, buffers = init_mlp(sizes, batchnorm=bn, seed=seed, dtype=dtype)
    randomize_bn_statistics(buffers, rng, max_count=50, dtype=dtype)
    momentum = draw(st.sampled_from([0.0, 0.9]))
    bufs = {n: (rng.normal(0, 0.1, p.shape).astype(dtype) if momentum and draw(st.booleans()) else None)
            for n, p in params.items()}
    B = draw(st.integers(3, 8))
    x = rng.standard_normal((B, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=B, dtype=np.int64)
    mode = draw(st.sampled_from(["cram", "cram", "sam", "csam", "sgd"]))
    comps = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True))
    tau = draw(st.integers(1, 3)) if mode == "cram" else 1
    t = draw(st.integers(1, 6))
    prunable = [n for n in params if n.startswith("fc.") and n.endswith(".weight")]
    cache = {}
    for c in comps:
        if c.kind == "topk" and draw(st.booleans()):
            cache[c] = (draw(st.integers(max(0, t - 3), t - 1)),
                        {n: rng.random(params[n].shape) < 0.5 for n in prunable})
    plus = draw(st.booleans()) if mode == "cram" else None
    kwargs = dict(lr=draw(st.sampled_from([0.0, 0.1])), momentum=momentum, weight_decay=draw(st.sampled_from([0.0, 5e-4])),
                  nesterov=bool(momentum) and draw(st.booleans()), compressions=comps,
                  rho=draw(st.sampled_from([0.0, 0.05, 0.5])), plus=plus, sparse_grad=draw(st.booleans()), t=t,
                  seed=draw(st.integers(0, 5)), mode=mode, tau=tau, mask_cache=cache)
    points = []
    quiet(R.cram_step)(params, buffers, bufs, x, y, on_point=lambda p, track: points.append(p), **kwargs)
    assume(all(_has_margin(p, buffers, x) for p in points))
    return (params, buffers, bufs, x, y), kwargs


def _has_margin(params, buffers, x) -> bool:
    """Every pre-ReLU value and every BN batch variance at an evaluation point away from 0: a unit whose
    incoming weights are all pruned at theta~ feeds BatchNorm a constant, whose normalised value is
    rounding noise / sqrt(eps), and the ReLU after it then decides on that noise (ill-posed on any
    backend; the two disagree there)."""
    return has_margin(params, buffers, x, True, _RELU_MARGIN, _VAR_MARGIN)


def _compare(ref_out, acc_out, dtype):
    rp, rb, rm, ri = ref_out
    ap, ab, am, ai = acc_out
    compare_default(rp, ap, dtype, "params")
    compare_default(rb, ab, dtype, "buffers")
    compare_default(rm, am, dtype, "momentum buffers")
    assert ri["compression"] == ai["compression"], (ri["compression"], ai["compression"])
    assert ri["refreshed"] == ai["refreshed"]
    compare_default(ri["masks"], ai["masks"], dtype, "masks")
    assert list(ri["mask_cache"]) == list(ai["mask_cache"])
    for c in ri["mask_cache"]:
        assert ri["mask_cache"][c][0] == ai["mask_cache"][c][0]
        compare_default(ri["mask_cache"][c][1], ai["mask_cache"][c][1], dtype, f"mask_cache[{c}]")
    np.testing.assert_allclose(ai["loss"], ri["loss"], rtol=1e-9)


register("cram_step", quiet(R.cram_step), quiet(A.cram_step), _step_args, compare=_compare, dtypes=(np.float64,),
         notes="one CrAM / CrAM⁺ / SAM / C-SAM / SGD step with BN, momentum, tau mask cache (Alg. 2)")
