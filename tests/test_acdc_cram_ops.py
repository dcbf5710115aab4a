"""AC/DC phase plan and compression, 4-bit quantization and the CrAM operators ([TH] Ch. 3, 5;
docs/methods.md §1.2, §1.11, §7.1, §7.2, §6.1): hand-checked values, invariants (exact counts, N:M pattern,
<= 16 quantization levels per channel), bad input with clear errors, inputs never mutated.
Array operators run on both twins (reference NumPy, accel torch).
"""
import copy
import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

import twinsparse.accel.acdc_ops as AA
import twinsparse.accel.cram_ops as AC
import twinsparse.accel.quantize as AQ
import twinsparse.reference.acdc_ops as RA
import twinsparse.reference.cram_ops as RC
import twinsparse.reference.quantize as RQ


def np_in(x):
    if isinstance(x, dict):
        return {k: np_in(v) for k, v in x.items()}
    return None if x is None else np.asarray(x, dtype=np.float64) if not isinstance(x, np.ndarray) else x


def torch_in(x):
    if isinstance(x, dict):
        return {k: torch_in(v) for k, v in x.items()}
    return None if x is None else torch.as_tensor(np.asarray(np_in(x)))


def out_np(x):
    if isinstance(x, dict):
        return {k: out_np(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(out_np(v) for v in x)
    return x.numpy() if isinstance(x, torch.Tensor) else x


class Backend:
    def __init__(self, acdc, cram, quant, conv):
        self.acdc, self.cram, self.quant, self.conv = acdc, cram, quant, conv


BACKENDS = [pytest.param(Backend(RA, RC, RQ, np_in), id="reference"),
            pytest.param(Backend(AA, AC, AQ, torch_in), id="accel")]


@pytest.fixture(params=BACKENDS)
def be(request):
    return request.param


# ============================================================================ (a) AC/DC phase plan

def test_imagenet_phase_table():
    """docs/methods.md §6.1 table: W 0-9, C1 10-14, D1 15-19, ..., C7 70-74, D7 75-84, C8 85-99; 50/50 epochs."""
    ph = RA.acdc_phases()
    got = [(p.name, p.kind, p.start, p.end) for p in ph]
    expect = [("W", "dense", 0, 10)]
    for i in range(7):
        expect.append((f"C{i + 1}", "sparse", 10 + 10 * i, 15 + 10 * i))
        if i < 6:
            expect.append((f"D{i + 1}", "dense", 15 + 10 * i, 20 + 10 * i))
    expect += [("D7", "dense", 75, 85), ("C8", "sparse", 85, 100)]
    assert got == expect
    assert sum(p.length for p in ph if p.kind == "sparse") == 50
    assert sum(p.length for p in ph if p.kind == "dense") == 50


@pytest.mark.parametrize("E,alternating", [(100, 13), (150, 23), (200, 33), (300, 53), (500, 93)])
def test_extended_runs_keep_phase_lengths(E, alternating):
    ph = RA.acdc_phases(E)
    assert len(ph) == alternating + 3
    assert [p.length for p in ph[1:-2]] == [5] * alternating
    assert (ph[0].length, ph[-2].length, ph[-1].length) == (10, 10, 15)
    assert ph[-1].end == E and all(a.end == b.start for a, b in zip(ph, ph[1:]))


def test_transformer_xl_schedule():
    """[TH] §3.4.4: W 1-5, C/D every 3 epochs, D 33-39, C 40-48 (1-indexed)."""
    ph = RA.acdc_phases(48, warmup=5, compressed=3, decompressed=3, final_decompressed=7, final_compressed=9)
    assert [(p.start + 1, p.end) for p in ph] == [(1, 5), (6, 8), (9, 11), (12, 14), (15, 17), (18, 20),
                                                  (21, 23), (24, 26), (27, 29), (30, 32), (33, 39), (40, 48)]


def test_phase_at_and_entered():
    ph = RA.acdc_phases()
    assert RA.phase_at(ph, 0).name == "W" and RA.phase_at(ph, 9).name == "W"
    assert RA.phase_at(ph, 10).kind == "sparse" and RA.phase_at(ph, 84).name == "D7"
    assert RA.phase_at(ph, 99).name == "C8"
    assert RA.phase_entered(ph, 10).name == "C1" and RA.phase_entered(ph, 11) is None
    assert RA.phase_entered(ph, 85).name == "C8"
    with pytest.raises(ValueError, match=r"epoch=100 .*\[0, 99\]"):
        RA.phase_at(ph, 100)
    with pytest.raises(ValueError, match="epoch=-1"):
        RA.phase_at(ph, -1)


def test_no_warmup_starts_compressed():
    ph = RA.acdc_phases(13, warmup=0, compressed=2, decompressed=2, final_decompressed=3, final_compressed=4)
    assert ph[0].name == "C1" and ph[0].start == 0


def test_plan_that_does_not_fit_names_values():
    with pytest.raises(ValueError, match=r"total_epochs=101.*warmup=10.*100 and 110"):
        RA.acdc_phases(101)
    with pytest.raises(ValueError, match=r"total_epochs=20.*smallest budget that fits is 40"):
        RA.acdc_phases(20)
    with pytest.raises(ValueError, match=r"compressed=0 is not allowed"):
        RA.acdc_phases(100, compressed=0)
    with pytest.raises(ValueError, match=r"warmup=-1"):
        RA.acdc_phases(100, warmup=-1)
    with pytest.raises(TypeError, match="total_epochs"):
        RA.acdc_phases(100.0)


@pytest.mark.parametrize("E", list(range(3, 60)) + [99, 100, 101, 150, 333, 1000])
def test_scaled_lengths_always_fit(E):
    L = RA.scaled_acdc_lengths(E)
    ph = RA.acdc_phases(E, **L)
    assert ph[-1].end == E and ph[-1].kind == "sparse" and ph[-2].kind == "dense"


def test_scaled_lengths_match_imagenet_at_100_and_reject_tiny():
    assert RA.scaled_acdc_lengths(100) == RA.IMAGENET_LENGTHS
    with pytest.raises(ValueError, match="total_epochs=2 is too small"):
        RA.scaled_acdc_lengths(2)


def test_accel_imports_the_plan():
    assert AA.acdc_phases is RA.acdc_phases and AA.phase_at is RA.phase_at


# ============================================================================ (b) compression

def net3():
    return {"first": [[0.5, -4.0], [0.25, 1.0]],
            "mid": [[3.0, 0.0, 0.0, 1.0], [-2.0, 0.0, 0.5, -0.5]],
            "last": [[1.0, -1.0, 2.0]]}


def test_topk_global_exact_count_and_ties(be):
    w = {"a": np.ones((2, 3)), "b": np.ones((3,))}                # all equal: the first k flat indices win
    comp, masks = be.acdc.topk_compress(be.conv(w), 0.5)
    m = out_np(masks)
    assert m["a"].sum() + m["b"].sum() == 5                        # floor(0.5 * 9 + 0.5)
    np.testing.assert_array_equal(np.concatenate([m["a"].ravel(), m["b"].ravel()]),
                                  [True] * 5 + [False] * 4)


def test_acdc_mask_from_nonzeros(be):
    """Alg. 1 l.5: a selected entry that is exactly 0 is not in the mask (fewer than k ones)."""
    w = {"w": np.array([[3.0, 0.0, 0.0, 1.0]])}
    comp, index_mask = be.acdc.topk_compress(be.conv(w), 0.25)     # k = 3, the tie at 0 -> index 1
    np.testing.assert_array_equal(out_np(index_mask)["w"], [[True, True, False, True]])
    comp2, mask = be.acdc.acdc_compress(be.conv(w), 0.25)
    np.testing.assert_array_equal(out_np(mask)["w"], [[True, False, False, True]])
    np.testing.assert_array_equal(out_np(comp2)["w"], [[3.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("s", [0.0, 0.5, 0.8, 0.9])
def test_acdc_global_and_uniform_counts(be, s):
    rng = np.random.default_rng(0)
    w = {"a": rng.normal(size=(8, 5)), "b": rng.normal(size=(4, 3, 3, 3)), "c": rng.normal(size=(10, 7))}
    _, mg = be.acdc.acdc_compress(be.conv(w), s)
    n = sum(v.size for v in w.values())
    assert sum(v.sum() for v in out_np(mg).values()) == math.floor((1 - s) * n + 0.5)
    _, mu = be.acdc.acdc_compress(be.conv(w), s, distribution="uniform")
    for k, v in out_np(mu).items():
        assert v.sum() == math.floor((1 - s) * w[k].size + 0.5)


def test_first_last_dense(be):
    w = net3()
    comp, masks = be.acdc.acdc_compress(be.conv(w), 0.5, first_last_dense=True)
    comp, masks = out_np(comp), out_np(masks)
    for name in ("first", "last"):
        assert masks[name].all()
        np.testing.assert_array_equal(comp[name], np.asarray(w[name]))
    assert masks["mid"].sum() == 4                                  # 50% of the 8 pruned weights
    _, m2 = be.acdc.acdc_compress(be.conv(w), 0.5, keep_dense=["mid"])
    assert out_np(m2)["mid"].all()


def test_nm_variant_pattern(be):
    rng = np.random.default_rng(1)
    w = {"conv": rng.normal(size=(3, 8, 3, 3)), "fc": rng.normal(size=(4, 12)), "odd": rng.normal(size=(2, 6))}
    with pytest.warns(UserWarning, match="odd"):
        comp, masks = be.acdc.acdc_compress(be.conv(w), nm=(2, 4))
    comp, masks = out_np(comp), out_np(masks)
    groups = masks["conv"].transpose(0, 2, 3, 1).reshape(-1, 4)      # reduction axis (docs/methods.md §1.6)
    assert (groups.sum(axis=1) == 2).all()
    assert (masks["fc"].reshape(-1, 4).sum(axis=1) == 2).all()
    assert masks["odd"].all() and np.array_equal(comp["odd"], w["odd"])   # 6 % 4 != 0: left dense


def test_compress_does_not_mutate(be):
    w = be.conv(net3())
    before = copy.deepcopy(out_np(w))
    be.acdc.acdc_compress(w, 0.7)
    be.acdc.topk_compress(w, 0.7, distribution="uniform")
    for k in before:
        np.testing.assert_array_equal(out_np(w)[k], before[k])


def test_compress_bad_input(be):
    w = be.conv(net3())
    with pytest.raises(ValueError, match=r"sparsity=1\.0 is outside the allowed range \[0, 1\)"):
        be.acdc.acdc_compress(w, 1.0)
    with pytest.raises(ValueError, match=r"sparsity=-0\.1"):
        be.acdc.topk_compress(w, -0.1)
    with pytest.raises(ValueError, match="either sparsity= .* or nm="):
        be.acdc.acdc_compress(w, 0.5, nm=(2, 4))
    with pytest.raises(ValueError, match="give the target sparsity"):
        be.acdc.acdc_compress(w)
    with pytest.raises(ValueError, match="distribution='layerwise'"):
        be.acdc.acdc_compress(w, 0.5, distribution="layerwise")
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['nope'\]"):
        be.acdc.acdc_compress(w, 0.5, keep_dense=["nope"])
    with pytest.raises(ValueError, match="empty"):
        be.acdc.acdc_compress({k: w[k] for k in ("first", "last")}, 0.5, first_last_dense=True)
    bad = out_np(copy.deepcopy(out_np(w)))
    bad["mid"] = np.array(bad["mid"], dtype=np.float64)
    bad["mid"][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        be.acdc.acdc_compress(be.conv(bad), 0.5)


# ============================================================================ quantization

def test_quantize_round_half_even_and_levels(be):
    w = np.array([[7.0, 0.5, 1.5, 2.5, -0.5, -3.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    codes, scales = be.quant.quantize_codes(be.conv(w))
    np.testing.assert_array_equal(out_np(codes), [[7, 0, 2, 2, 0, -4], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out_np(scales), [1.0, 0.0])
    np.testing.assert_array_equal(out_np(be.quant.quantize_dequantize(be.conv(w))), np.rint(w))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_invariants(be, dtype, bits):
    rng = np.random.default_rng(bits)
    w = (rng.normal(size=(6, 5, 3, 3)) * rng.uniform(0.1, 10, size=(6, 1, 1, 1))).astype(dtype)
    q = out_np(be.quant.quantize_dequantize(be.conv(w), bits))
    codes, scales = map(out_np, be.quant.quantize_codes(be.conv(w), bits))
    qmax = 2 ** (bits - 1) - 1
    assert q.shape == w.shape and q.dtype == w.dtype
    assert np.abs(codes).max() <= qmax
    for c in range(w.shape[0]):
        assert len(np.unique(q[c])) <= 2 ** bits                  # <= 16 levels for 4 bits (15 used)
        assert np.abs(codes[c]).max() == qmax                      # the largest |w| maps to the top code
        assert np.all(np.abs(q[c] - w[c]) <= scales[c] / 2 * (1 + 1e-5))   # round to nearest


def test_quantize_bad_input(be):
    with pytest.raises(ValueError, match=r"bits=1 is not allowed; it must be in \[2, 16\]"):
        be.quant.quantize_codes(be.conv(np.ones((2, 2))), bits=1)
    with pytest.raises(TypeError, match="bits must be an integer"):
        be.quant.quantize_dequantize(be.conv(np.ones((2, 2))), bits=4.0)
    with pytest.raises(ValueError, match="non-empty weight"):
        be.quant.quantize_codes(be.conv(np.ones((0, 2))))
    with pytest.raises(ValueError, match="non-empty weight"):
        be.quant.quantize_codes(be.conv(np.array(1.0)))


# ============================================================================ CrAM

def params_grads():
    p = {"w": [1.0, -2.0, 0.5, 0.1], "b": [0.25]}
    g = {"w": [1.0, 1.0, 1.0, 1.0], "b": [2.0]}
    return p, g


def test_cram_point_is_unnormalized(be):
    """[TH] Eq. 5.2 / Alg. 2 l.6: C(theta + rho g), no division by ||g||; the bias is not compressed."""
    p, g = params_grads()
    pt, masks = be.cram.cram_point(be.conv(p), be.conv(g), 0.5, RC.topk_compression(0.5), prunable=["w"])
    pt, masks = out_np(pt), out_np(masks)
    np.testing.assert_allclose(pt["w"], [1.5, -1.5, 0.0, 0.0])    # phi = [1.5, -1.5, 1.0, 0.6], k = 2
    np.testing.assert_allclose(pt["b"], [1.25])
    np.testing.assert_array_equal(masks["w"], [True, True, False, False])
    assert list(masks) == ["w"]
    sam, _ = be.cram.cram_point(be.conv(p), be.conv(g), 0.5, RC.topk_compression(0.0), normalize=True)
    norm = math.sqrt(4 + 4)
    np.testing.assert_allclose(out_np(sam)["w"], np.array(p["w"]) + 0.5 / norm)


def test_cram_rho_zero_is_topk(be):
    p, g = params_grads()
    pt, _ = be.cram.cram_point(be.conv(p), be.conv(g), 0.0, RC.topk_compression(0.5), prunable=["w"])
    np.testing.assert_allclose(out_np(pt)["w"], [1.0, -2.0, 0.0, 0.0])


def test_cram_index_set_mask_keeps_selected_zeros(be):
    """CrAM's M_t is 1[i in A_k] (docs/methods.md §1.2): a selected zero stays in the mask, unlike AC/DC."""
    p = {"w": [3.0, 0.0, 0.0, 1.0]}
    _, masks = be.cram.cram_point(be.conv(p), be.conv({"w": [0.0] * 4}), 0.1, RC.topk_compression(0.25))
    np.testing.assert_array_equal(out_np(masks)["w"], [True, True, False, True])


def test_cram_nm_and_quant(be):
    rng = np.random.default_rng(2)
    p = {"w": rng.normal(size=(4, 8)), "b": rng.normal(size=(4,))}
    g = {k: rng.normal(size=v.shape) for k, v in p.items()}
    pt, masks = be.cram.cram_point(be.conv(p), be.conv(g), 0.05, RC.nm_compression(2, 4), prunable=["w"])
    m = out_np(masks)["w"]
    assert (m.reshape(-1, 4).sum(axis=1) == 2).all()
    assert (out_np(pt)["w"][~m] == 0).all()
    pq, mq = be.cram.cram_point(be.conv(p), be.conv(g), 0.05, RC.quant_compression(4), prunable=["w"])
    assert mq is None
    for row in out_np(pq)["w"]:
        assert len(np.unique(row)) <= 16
    np.testing.assert_allclose(out_np(pq)["b"], p["b"] + 0.05 * g["b"])


def test_sam_point_norm_and_zero_grad(be):
    rng = np.random.default_rng(3)
    p = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    g = {k: rng.normal(size=v.shape) for k, v in p.items()}
    s = out_np(be.cram.sam_point(be.conv(p), be.conv(g), 0.2))
    d = np.sqrt(sum(((s[k] - p[k]) ** 2).sum() for k in p))
    assert d == pytest.approx(0.2)
    z = out_np(be.cram.sam_point(be.conv(p), be.conv({k: np.zeros_like(v) for k, v in g.items()}), 0.2))
    for k in p:
        np.testing.assert_array_equal(z[k], p[k])


def test_sparse_grads_and_cram_plus(be):
    gt = {"w": [1.0, 2.0, 3.0], "b": [4.0]}
    g = {"w": [10.0, 10.0, 10.0], "b": [10.0]}
    masks = {"w": np.array([True, False, True])}
    mconv = masks if be.conv is np_in else {"w": torch.as_tensor(masks["w"])}
    sg = out_np(be.cram.sparse_grads(be.conv(gt), mconv))
    np.testing.assert_array_equal(sg["w"], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(sg["b"], [4.0])
    up = out_np(be.cram.cram_update_grads(be.conv(gt), be.conv(g), masks=mconv))       # CrAM⁺-SG
    np.testing.assert_array_equal(up["w"], [11.0, 10.0, 13.0])
    np.testing.assert_array_equal(up["b"], [14.0])
    up = out_np(be.cram.cram_update_grads(be.conv(gt), None, plus=False))              # CrAM, dense grads
    np.testing.assert_array_equal(up["w"], [1.0, 2.0, 3.0])


def test_csam_uses_sparse_normalized_gradient(be):
    p = {"w": [1.0, -1.0, 0.5, 0.0]}
    g = {"w": [3.0, 4.0, 100.0, 0.0]}
    masks = {"w": np.array([True, True, False, False])}
    mconv = masks if be.conv is np_in else {"w": torch.as_tensor(masks["w"])}
    pt, m = be.cram.csam_point(be.conv(p), be.conv(g), 1.0, RC.topk_compression(0.5), masks_at_compressed=mconv)
    # g^ = [3, 4, 0, 0] / 5 -> phi = [1.6, -0.2, 0.5, 0.0]; k = 2 keeps indices 0 and 2
    np.testing.assert_allclose(out_np(pt)["w"], [1.6, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(out_np(m)["w"], [True, False, True, False])


def test_cram_inputs_not_mutated(be):
    p, g = params_grads()
    P, G = be.conv(p), be.conv(g)
    be.cram.cram_point(P, G, 0.5, RC.topk_compression(0.5))
    be.cram.cram_update_grads(G, G)
    for k in p:
        np.testing.assert_array_equal(out_np(P)[k], p[k])
        np.testing.assert_array_equal(out_np(G)[k], g[k])


def test_cram_bad_input(be):
    p, g = params_grads()
    P, G = be.conv(p), be.conv(g)
    with pytest.raises(ValueError, match=r"rho=-0\.1 is outside the allowed range \[0, inf\)"):
        be.cram.cram_point(P, G, -0.1, RC.topk_compression(0.5))
    with pytest.raises(ValueError, match="rho=nan"):
        be.cram.perturb(P, G, float("nan"))
    with pytest.raises(TypeError, match="compression must be a Compression"):
        be.cram.compress(P, "topk")
    with pytest.raises(ValueError, match=r"unknown tensor\(s\) \['x'\]"):
        be.cram.cram_point(P, G, 0.1, RC.topk_compression(0.5), prunable=["x"])
    with pytest.raises(ValueError, match="pass grad="):
        be.cram.cram_update_grads(G)
    with pytest.raises(ValueError, match="same tensors"):
        be.cram.perturb(P, {"w": G["w"]}, 0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        be.cram.perturb(P, be.conv({"w": [1.0, 2.0], "b": [0.0]}), 0.1)


def test_compression_specs_validate():
    with pytest.raises(ValueError, match=r"sparsity=1\.0 is outside the allowed range \[0, 1\)"):
        RC.topk_compression(1.0)
    with pytest.raises(ValueError, match="distribution='random'"):
        RC.topk_compression(0.5, distribution="random")
    with pytest.raises(ValueError, match=r"n=3 is not allowed with m=2"):
        RC.nm_compression(3, 2)
    with pytest.raises(ValueError, match=r"bits=1 is not allowed"):
        RC.quant_compression(1)
    with pytest.raises(ValueError, match="kind='prune'"):
        RC.Compression("prune")
    assert RC.topk_compression(0.7) == RC.topk_compression(0.7)            # hashable, comparable specs
    assert AC.Compression is RC.Compression


def test_sample_compression_seeded_uniform():
    comps = RC.multi_topk([0.5, 0.7, 0.9])
    picks = [RC.sample_compression(comps, seed=7, t=t) for t in range(3000)]
    assert picks == [RC.sample_compression(comps, seed=7, t=t) for t in range(3000)]   # deterministic
    assert picks == [AC.sample_compression(comps, 7, t) for t in range(3000)]         # one stream
    counts = Counter(c.sparsity for c in picks)
    assert set(counts) == {0.5, 0.7, 0.9} and all(900 < v < 1100 for v in counts.values())
    assert picks != [RC.sample_compression(comps, seed=8, t=t) for t in range(3000)]
    with pytest.raises(ValueError, match="set of compression methods is empty"):
        RC.sample_compression([], 0, 0)


def test_percent_range():
    r = RC.percent_range(30, 90)
    assert len(r) == 61 and r[0] == 0.3 and r[-1] == 0.9
    with pytest.raises(ValueError, match=r"\[90, 30\] is empty"):
        RC.percent_range(90, 30)
    with pytest.raises(ValueError, match=r"hi \(percent\)=100"):
        RC.percent_range(30, 100)


def test_nm_compression_warns_for_indivisible(be):
    p = {"w": np.ones((2, 6))}
    with pytest.warns(UserWarning, match="left 1 layer"):
        _, m = be.cram.compress(be.conv(p), RC.nm_compression(2, 4))
    assert out_np(m)["w"].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.cram.compress(be.conv({"w": np.ones((2, 8))}), RC.nm_compression(2, 4))
