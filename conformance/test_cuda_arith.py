"""The twins agree bit for bit on rounding boundaries under CUDA's arithmetic, checked on the CPU.

A GPU run found quantization codes one level apart: CUDA divides by a Python scalar as a
multiplication by its rounded reciprocal, so ``max|W_c| / q_max`` came out one ulp off and a weight
exactly half-way between two levels rounded to the other one. The CPU divides exactly, so no CPU
test saw it. ``conformance.cuda_arith.cuda_arithmetic`` makes CPU tensors compute the CUDA way; the
tests below build the boundary inputs with NumPy (proving that reciprocal multiplication changes
their result), show that the emulator reproduces the numbers the GPU logged, and check that the
accel twins now match the reference on those inputs with CUDA's arithmetic in force.
"""
import numpy as np
import pytest
import torch

import twinsparse.accel.cram_ops as AC
import twinsparse.accel.cram_optimizer as ACO
import twinsparse.accel.merge as AMG
import twinsparse.accel.metrics as AM
import twinsparse.accel.quantize as AQ
import twinsparse.reference.cram_ops as RC
import twinsparse.reference.merge as RMG
import twinsparse.reference.metrics as RM
import twinsparse.reference.quantize as RQ
from twinsparse.accel._exact import true_div
from twinsparse.conformance.cuda_arith import cuda_arithmetic

# (dtype, bits) with boundary weights among the halves up to 40 (q_max = 1 at 2 bits divides exactly)
BOUNDARY_CASES = [(np.float32, 3), (np.float32, 4), (np.float32, 8), (np.float64, 4), (np.float64, 8)]


def boundary_weights(dtype, bits: int, top: float = 40.0) -> np.ndarray:
    """Rows [m, x], each one quantization channel (m = its max |w|, |x| <= m, halves up to ``top``),
    whose code of x differs when the scale m / q_max is computed as m * fl(1 / q_max) instead of by
    a division -- computed with NumPy in ``dtype``, independently of torch."""
    dt, q = np.dtype(dtype).type, RQ.qmax(bits)
    halves = np.arange(1, int(2 * top) + 1) / 2
    m, x = np.meshgrid(halves, np.concatenate([-halves[::-1], [0.0], halves]), indexing="ij")
    keep = np.abs(x) <= m
    m, x = m[keep].astype(dtype), x[keep].astype(dtype)
    divided = np.rint(x / (m / dt(q)))
    reciprocal = np.rint(x / (m * (dt(1) / dt(q))))
    moved = divided != reciprocal
    return np.stack([m[moved], x[moved]], axis=1)


def reciprocal_twin_codes(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The accel quantizer as it was before the GPU run: it divides by the Python scalar q_max."""
    q = RQ.qmax(bits)
    flat = w.reshape(w.shape[0], -1)
    s = (flat.abs().amax(dim=1) / q).unsqueeze(1)
    ratio = torch.where(s > 0, flat / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(flat))
    return torch.round(ratio).clamp_(-q, q).to(torch.int32).reshape(w.shape)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- the emulator itself

def test_emulator_reproduces_the_values_the_gpu_logged():
    w = torch.tensor([[3.0, 1.5]], dtype=torch.float32)
    with cuda_arithmetic() as mode:
        scale = w.abs().amax(dim=1) / 7
        acc = (torch.arange(1000) < 567).double().mean()
        codes = reciprocal_twin_codes(w, 4)
    assert mode.rewritten >= 3
    f32 = np.float32
    assert scale.item() == f32(3) * (f32(1) / f32(7)) != f32(3) / f32(7)
    assert (scale * 7).item() == np.float32(3.0000002)          # the GPU's dequantized maximum
    assert codes.tolist() == [[7, 3]]                          # the GPU's codes; the reference has [[7, 4]]
    assert RQ.quantize_codes(w.numpy(), 4)[0].tolist() == [[7, 4]]
    assert acc.item() == 0.5670000000000001 != 567 / 1000       # the GPU's accuracy
    # without the emulator the CPU divides exactly: that is why no CPU test saw the bug
    assert (w.abs().amax(dim=1) / 7).item() == f32(3) / f32(7)
    assert (torch.arange(1000) < 567).double().mean().item() == 0.567


def test_emulator_leaves_tensor_divisors_and_other_ops_alone():
    a = torch.tensor([[3.0, 1.5], [9.0, 4.5]], dtype=torch.float32)
    with cuda_arithmetic() as mode:
        by_rows = a / torch.tensor([[7.0], [7.0]])
        floor = torch.div(a, 7, rounding_mode="floor")
        product = a * 7
    assert mode.rewritten == 0
    assert _bits_equal(by_rows.numpy(), a.numpy() / np.float32(7))
    assert floor.tolist() == [[0.0, 0.0], [1.0, 0.0]] and product.tolist() == [[21.0, 10.5], [63.0, 31.5]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_true_div_is_one_division_under_cuda_arithmetic(dtype):
    np_dt = np.float32 if dtype == torch.float32 else np.float64
    x = np.arange(-40, 41, dtype=np_dt) / np_dt(2)
    t = torch.from_numpy(x.copy())
    with cuda_arithmetic() as mode:
        outs = {"number": true_div(t, 7), "0-dim tensor": true_div(t, torch.tensor(7, dtype=dtype)),
                "[1] tensor": true_div(t, torch.tensor([7], dtype=dtype)),
                "0-dim / 0-dim": true_div(t[3], torch.tensor(7, dtype=dtype))}
    assert mode.rewritten == 0, "true_div handed torch a divisor that CUDA turns into a reciprocal"
    want = x / np_dt(7)
    assert not _bits_equal(want, x * (np_dt(1) / np_dt(7)))    # the inputs tell the two apart
    for what in ("number", "0-dim tensor", "[1] tensor"):
        assert _bits_equal(outs[what].numpy(), want), what
    assert outs["0-dim / 0-dim"].shape == () and outs["0-dim / 0-dim"].item() == want[3]
    rounded = true_div(torch.ones(3, dtype=torch.float32), 0.1)        # a number is rounded to the dtype first
    assert _bits_equal(rounded.numpy(), np.ones(3, np.float32) / np.float32(0.1))
    with pytest.raises(TypeError, match="divisor"):
        true_div(t, "7")


# ----------------------------------------------------------------------------- quantization

@pytest.mark.parametrize("dtype,bits", BOUNDARY_CASES)
def test_quantization_matches_the_reference_on_boundaries_under_cuda_arithmetic(dtype, bits):
    w = boundary_weights(dtype, bits)
    assert len(w) >= 4, "no boundary weights: the test would not tell the two arithmetics apart"
    ref_codes, ref_scales = RQ.quantize_codes(w, bits)
    ref_q = RQ.quantize_dequantize(w, bits)
    tw = torch.from_numpy(w.copy())
    # the pre-fix twin: right on the CPU, wrong under CUDA's arithmetic (so this test discriminates)
    assert np.array_equal(reciprocal_twin_codes(tw, bits).numpy(), ref_codes)
    with cuda_arithmetic():
        wrong = reciprocal_twin_codes(tw, bits).numpy()
        codes, scales = AQ.quantize_codes(tw, bits)
        q = AQ.quantize_dequantize(tw, bits)
        q_all = AQ.quantize_all({"w": tw}, bits)["w"]
    assert np.count_nonzero(wrong != ref_codes) == len(w)     # one code moved in every boundary row
    assert np.array_equal(codes.numpy(), ref_codes)
    assert _bits_equal(scales.numpy(), ref_scales)
    assert _bits_equal(q.numpy(), ref_q) and _bits_equal(q_all.numpy(), ref_q)


@pytest.mark.parametrize("dtype,bits", [(np.float32, 4), (np.float64, 4)])
def test_cram_quantization_points_match_the_reference_on_boundaries_under_cuda_arithmetic(dtype, bits):
    """CrAM's quantization compression of theta (rho = 0 and a zero gradient keep theta as it is), as
    compress, cram_point and csam_point (the GPU's failing entries) reach it."""
    w = boundary_weights(dtype, bits)
    params = {"layer0.weight": w, "bias": np.full(2, -0.3, dtype)}
    zeros = {n: np.zeros_like(v) for n, v in params.items()}
    comp = RC.quant_compression(bits)
    refs = {"compress": RC.compress(params, comp, ["layer0.weight"])[0],
            "cram_point": RC.cram_point(params, zeros, 0.0, comp, ["layer0.weight"])[0],
            "csam_point": RC.csam_point(params, zeros, 0.0, comp, None, ["layer0.weight"])[0]}
    tp = {n: torch.from_numpy(v.copy()) for n, v in params.items()}
    tz = {n: torch.zeros_like(v) for n, v in tp.items()}
    with cuda_arithmetic():
        accs = {"compress": AC.compress(tp, comp, ["layer0.weight"])[0],
                "cram_point": AC.cram_point(tp, tz, 0.0, comp, ["layer0.weight"])[0],
                "csam_point": AC.csam_point(tp, tz, 0.0, comp, None, ["layer0.weight"])[0]}
    for op, ref in refs.items():
        assert not _bits_equal(ref["layer0.weight"], w)                 # quantization changed the weights
        for n in ref:
            assert _bits_equal(accs[op][n].numpy(), ref[n]), f"{op}: {n}"


# ----------------------------------------------------------------------------- metrics

# (correct, n) of the test accuracies the GPU run logged one ulp off (0.5670000000000001 for 0.567, ...)
LOGGED_ACCURACIES = [(567, 1000), (576, 1000), (815, 1000), (474, 1000), (702, 1000), (173, 1000)]


def _logits_with_correct(correct: int, n: int, k: int = 10):
    """Logits [n, k] and labels: exactly ``correct`` rows predict their label."""
    rng = np.random.default_rng(correct * 7919 + n)
    y = rng.integers(0, k, size=n)
    pred = np.where(np.arange(n) < correct, y, (y + 1 + rng.integers(0, k - 1, size=n)) % k)
    z = rng.normal(size=(n, k))
    z[np.arange(n), pred] += 20.0
    return z, y


@pytest.mark.parametrize("correct,n", LOGGED_ACCURACIES)
def test_accuracy_is_the_count_over_n_under_cuda_arithmetic(correct, n):
    assert correct * (1 / n) != correct / n           # the mean-by-reciprocal result differs from the quotient
    z, y = _logits_with_correct(correct, n)
    other = z.copy()
    other[: n - correct] = np.roll(other[: n - correct], 1, axis=1)  # n - correct predictions move
    ref = (RM.accuracy(z, y), RM.disagreement(z, other), RM.sample_agreement(z, other))
    assert ref == (correct / n, (n - correct) / n, correct / n)
    zt, yt, ot = torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(other)
    with cuda_arithmetic():
        acc = (AM.accuracy(zt, yt), AM.disagreement(zt, ot), AM.sample_agreement(zt, ot))
        per_class = AM.mean_per_class_accuracy(zt, yt)
    assert acc == ref
    assert per_class == RM.mean_per_class_accuracy(z, y)


# ----------------------------------------------------------------------------- running averages

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t", [3, 7, 10])
def test_ticket_averages_match_the_reference_bit_for_bit_under_cuda_arithmetic(dtype, t):
    """Sup-tickets' averages divide by the ticket count t; their magnitudes then decide the re-pruned
    mask, so the torch path divides like the reference (and like kernels/merge.cu) on every device.
    (BN averaging in mode 'std' takes square roots, and torch's CPU sqrt is not correctly rounded in
    every lane while NumPy's is: that mode agrees within the dtype tolerance only, checked by
    conformance/entries/merge.py.)"""
    dt = np.dtype(dtype).type
    rng = np.random.default_rng(t)
    avg, x = rng.normal(size=(2, 64, 8)).astype(dtype)
    var_avg, var = (np.abs(rng.normal(size=(2, 64))) + 0.1).astype(dtype)
    tickets = [{"w": rng.normal(size=(16, 8)).astype(dtype), "b": rng.normal(size=16).astype(dtype)}
               for _ in range(t)]
    masks = [{"w": rng.random((16, 8)) < 0.5} for _ in range(t)]
    numerator = dt(t - 1) * avg + x
    assert np.any(numerator / dt(t) != numerator * (dt(1) / dt(t)))     # the inputs discriminate
    ref = {"superpose_cia": RMG.superpose_cia({"w": avg}, {"w": x}, t)["w"],
           "cia": RMG.cia(tickets)["w"], **{f"caa {n}": v for n, v in RMG.caa(tickets, masks).items()},
           "bn var": np.stack(RMG.average_bn_stats(avg[:, 0], var_avg, x[:, 0], var, t, "var"))}
    T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    tt = [{n: T(v) for n, v in d.items()} for d in tickets]
    with cuda_arithmetic():
        acc = {"superpose_cia": AMG.superpose_cia({"w": T(avg)}, {"w": T(x)}, t)["w"],
               "cia": AMG.cia(tt)["w"],
               **{f"caa {n}": v for n, v in AMG.caa(tt, [{"w": T(m["w"])} for m in masks]).items()},
               "bn var": torch.stack(AMG.average_bn_stats(T(avg[:, 0]), T(var_avg), T(x[:, 0]), T(var), t, "var"))}
    for what in ref:
        assert _bits_equal(acc[what].numpy(), ref[what]), what


# ----------------------------------------------------------------------------- number / tensor

def test_sam_point_of_the_cram_optimizer_divides_rho_by_the_norm_once():
    """``rho / norm_tensor`` is ``norm.reciprocal() * rho`` in torch on every device (two roundings);
    the reference's rho / ||g|| is one. With ||g|| = 5 and rho = 3 the two differ, and so would the
    SAM point theta + (rho / ||g||) g."""
    rho, g = 3.0, np.array([3.0, 4.0])
    assert rho / 5.0 != (1 / 5.0) * rho
    assert (3.0 / torch.tensor(5.0, dtype=torch.float64)).item() == (1 / 5.0) * rho   # torch's __rdiv__
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = ACO.CrAM([p], torch.optim.SGD([p], lr=0.0), mode="sam", rho=rho)
    seen = []

    def closure():
        seen.append(p.detach().clone())
        loss = (p * torch.from_numpy(g)).sum()
        loss.backward()
        return loss
    with cuda_arithmetic():
        opt.step(closure)
    assert len(seen) == 2
    want = RC.sam_point({"p": np.zeros(2)}, {"p": g}, rho)["p"]
    assert _bits_equal(seen[1].numpy(), want)
