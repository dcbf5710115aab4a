"""The CUDA kernels (accel/kernels/*.cu) executed on the CPU by the SIMT emulator (accel/kernels/simt).

No GPU is needed: the unchanged sources run with real barriers and warp collectives, driven by the
loader's own host code, so these tests check the kernels' logic, their tie rule, their block and
warp cooperation under shuffled schedules, grid-stride loops and the host/kernel argument ABI,
against the NumPy reference and the torch path. The emulator itself is tested first (its
intrinsics, and that it reports missing barriers, divergent barriers and early exits), and then
shown to catch seeded defects in mutated copies of the kernels. Skipped with the reason when no
C++ compiler can build the emulator. The same kernels on a real GPU: tests/test_kernels_gpu.py.
"""
import contextlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from twinsparse.accel import kernels
from twinsparse.accel.kernels import simt
from twinsparse.conformance.kernel_cases import SGD_SETTINGS, check_segmented, ref_topk_within, segmented_case, sgd_case
import twinsparse.reference.cocktail_ops as RCO
import twinsparse.reference.dst as RD
import twinsparse.reference.masks as RM
import twinsparse.reference.merge as RMG
import twinsparse.reference.optim as RO
import twinsparse.reference.topk as RT

pytestmark = pytest.mark.skipif(simt.unavailable_reason() is not None,
                                reason=f"SIMT emulator: {simt.unavailable_reason()}")

PROBES = {"probes.cu": ["probe_indices", "probe_collectives", "probe_uninit_shared", "probe_flag",
                        "probe_divergent_barrier", "probe_early_exit", "probe_partial_mask", "probe_out_of_bounds"]}
PROBE_DIR = Path(__file__).parent / "simt_probes"
ROOT = Path(__file__).resolve().parents[1]
POISON32 = 0xA5A5A5A5


@pytest.fixture(scope="module")
def probes():
    return simt.Emulator(PROBE_DIR, PROBES)


@pytest.fixture
def emulated(monkeypatch):
    """Run the body with the kernels on the emulator, a small CHUNK (multi-chunk segments at test
    sizes, chunks that are no multiple of the block size) and a seeded schedule."""
    def enter(seed=0, max_blocks=None, chunk=1000, sm_count=2):
        monkeypatch.setattr(kernels.loader, "CHUNK", chunk)
        return kernels.use_backend(simt.SimtBackend(seed=seed, max_blocks=max_blocks, sm_count=sm_count))
    return enter


# ----------------------------------------------------------------------------- the emulator itself

def test_emulator_registers_every_kernel_the_loader_launches():
    names = set(simt.emulator().kernel_names())
    assert names == {k for ks in kernels.KERNELS.values() for k in ks}
    assert simt.emulator().signature("topk_ties_f32") == ["p", "p", "i8", "p", "p", "p", "p", "p", "p", "p"]


def test_thread_and_block_indices_with_a_grid_stride_loop(probes):
    n_blocks, block = 5, 64
    out = torch.full((n_blocks * block * 4,), -1, dtype=torch.int32)
    probes.launch("probe_indices", 2, block, (out, np.int32(n_blocks)), seed=3)   # 2 blocks walk 5
    o = out.view(n_blocks, block, 4).numpy()
    assert np.array_equal(o[..., 0], np.tile(np.arange(block), (n_blocks, 1)))
    assert np.array_equal(o[..., 1], np.repeat(np.arange(n_blocks)[:, None], block, 1))
    assert np.all(o[..., 2] == block) and np.all(o[..., 3] == 2)


@pytest.mark.parametrize("delta", [1, 5, 31])
def test_warp_collectives_follow_their_cuda_definitions(probes, delta):
    rng = np.random.default_rng(delta)
    n = 128
    x = torch.from_numpy(rng.integers(-2, 3, n).astype(np.int64))
    up, down = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    ballot, match = torch.empty(n, dtype=torch.int32), torch.empty(n, dtype=torch.int32)
    probes.launch("probe_collectives", 2, 64, (x, up, down, ballot, match, np.int32(delta)), seed=delta)
    xv = x.numpy()
    for i in range(n):
        w0, lane = i - i % 32, i % 32
        assert up[i] == (xv[i - delta] if lane >= delta else xv[i])
        assert down[i] == (xv[i + delta] if lane + delta < 32 else xv[i])
        want_ballot = sum(1 << l for l in range(32) if xv[w0 + l] > 0)
        want_match = sum(1 << l for l in range(32) if xv[w0 + l] == xv[i])
        assert ballot[i].item() & 0xFFFFFFFF == want_ballot
        assert match[i].item() & 0xFFFFFFFF == want_match


def test_shared_memory_starts_poisoned_like_uninitialised_memory(probes):
    out32, out64 = torch.zeros(64, dtype=torch.int32), torch.zeros(64, dtype=torch.int64)
    probes.launch("probe_uninit_shared", 1, 64, (out32, out64))
    assert np.all(out32.numpy().view(np.uint32) == POISON32)
    assert np.all(out64.numpy().view(np.uint64) == 0xA5A5A5A5A5A5A5A5)   # template static too


def test_a_missing_barrier_shows_under_shuffled_schedules(probes):
    def run(with_barrier, seed):
        out = torch.zeros(256, dtype=torch.int32)
        probes.launch("probe_flag", 2, 128, (out, np.int32(with_barrier)), seed=seed)
        return out.numpy()
    for seed in range(6):
        assert np.all(run(1, seed) == 7)
    racy = [run(0, seed) for seed in range(1, 7)]
    assert any(np.any(r.view(np.uint32) == POISON32) for r in racy), "read before write never observed"


@pytest.mark.parametrize("kernel,message", [("probe_divergent_barrier", r"divergent __syncthreads\(\)"),
                                            ("probe_early_exit", "deadlock"),
                                            ("probe_partial_mask", "lane mask 0x0000ffff")])
def test_gpu_undefined_behaviour_is_a_launch_error(probes, kernel, message):
    with pytest.raises(simt.LaunchError, match=message) as e:
        probes.launch(kernel, 1, 128, (torch.zeros(128, dtype=torch.int32),))
    assert kernel in str(e.value) and "block 0" in str(e.value)


def test_arguments_are_checked_against_the_kernel_signature(probes):
    out = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(simt.LaunchError, match=r"parameter 1 is i4 \(int32\); the loader passed int64"):
        probes.launch("probe_flag", 1, 64, (out, np.int64(1)))
    with pytest.raises(simt.LaunchError, match="takes 2 parameters"):
        probes.launch("probe_flag", 1, 64, (out,))
    with pytest.raises(simt.LaunchError, match="parameter 0 is a pointer"):
        probes.launch("probe_flag", 1, 64, (np.int64(5), np.int32(1)))
    with pytest.raises(simt.LaunchError, match="contiguous"):
        probes.launch("probe_flag", 1, 64, (torch.zeros(64, 2, dtype=torch.int32)[:, 0], np.int32(1)))
    with pytest.raises(simt.LaunchError, match="block of 32..1024"):
        probes.launch("probe_flag", 1, 48, (out, np.int32(1)))
    with pytest.raises(KeyError, match="no kernel 'probe_missing'"):
        probes.launch("probe_missing", 1, 64, (out,))


MEMORY_PROBES = {"memory_probes.cu": ["probe_vector_copy", "probe_exchange"]}


def test_vector_loads_and_stores_and_their_alignment_check():
    """uint4 / ulonglong2 through __ldg and __stwb move 16 bytes as CUDA does; an address that is
    not a multiple of the vector's 16 bytes is a launch error, as a GPU faults on it."""
    emu = simt.Emulator(PROBE_DIR, MEMORY_PROBES)
    x = torch.arange(1, 1 + 4 * 64 + 4, dtype=torch.int32)
    for first in (0, 4):
        out = torch.zeros(8 * 64, dtype=torch.int32)
        emu.launch("probe_vector_copy", 2, 32, (x, out, np.int32(first)), seed=1)
        assert torch.equal(out[:256], x[first:first + 256]) and torch.equal(out[256:], x[first:first + 256])
    with pytest.raises(simt.LaunchError, match=r"misaligned address: __ldg at line \d+ .*multiple of 16 bytes"):
        emu.launch("probe_vector_copy", 2, 32, (x, torch.zeros(8 * 64, dtype=torch.int32), np.int32(1)))


def test_atomic_exchange_returns_the_previous_value():
    emu = simt.Emulator(PROBE_DIR, MEMORY_PROBES)
    slot, seen = torch.zeros(1, dtype=torch.int32), torch.full((128,), -1, dtype=torch.int32)
    emu.launch("probe_exchange", 1, 128, (slot, seen), seed=5)
    # each thread saw the value of the one before it: one chain through 0 and all 128 ids
    assert sorted(seen.tolist() + slot.tolist()) == list(range(129))


def test_a_missing_compiler_or_a_compile_error_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void broken(int* out) { out[0] = undeclared; }\n')
    with pytest.raises(RuntimeError, match=r"failed to compile wrap_broken.cpp:(.|\n)*undeclared"):
        simt.Emulator(tmp_path, {"broken.cu": ["broken"]})
    monkeypatch.setattr(simt, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found"):
        simt.Emulator(PROBE_DIR, PROBES)


# ----------------------------------------------------------------------------- top-k (topk.cu)

@pytest.mark.parametrize("seed,max_blocks,sm_count", [(0, None, 2), (1, 2, 2), (2, 3, 64), (3, None, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", ["none", "few", "all"])
def test_segmented_topk_matches_a_stable_sort(emulated, dtype, ties, seed, max_blocks, sm_count):
    """Empty, 1-element and multi-chunk segments, k = 0 and k = all candidates; grids from one
    block walking every chunk (sm_count 1) to one chunk per block (sm_count 64)."""
    sizes = [0, 1, 7, 2500, 0, 4097, 3 * 1000 + 1, 64, 1]
    s, cand, ks = segmented_case(sizes, dtype, ties, seed)
    with emulated(seed=seed, max_blocks=max_blocks, sm_count=sm_count) as b:
        out = kernels.topk_select(s, sizes, ks, candidates=cand).numpy()
    assert [k for k, _ in b.log] == kernels.topk.kernel_names(dtype)          # the fixed launch chain
    check_segmented(out, s, cand, sizes, ks)


@pytest.mark.parametrize("n,k", [(1, 0), (1, 1), (255, 255), (257, 128), (1000, 0), (1000, 1000)])
def test_topk_mask_edge_counts_without_candidates(emulated, n, k):
    s = torch.randn(n, dtype=torch.float64)
    s[n // 2:] = s[0]                                  # a tie block that straddles the threshold
    with emulated(seed=n):
        out = kernels.topk_mask(s, k)
    assert np.array_equal(out.numpy(), RT.topk_mask(s.numpy(), k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_extreme_values_order_like_floats(emulated, dtype):
    f = np.finfo(np.float32 if dtype == torch.float32 else np.float64)
    sub = float(f.smallest_subnormal)
    vals = [f.max, -f.max, f.tiny, -f.tiny, sub, -sub, 3 * sub, 0.0, -0.0, 1.0, -1.0, 1.0]   # subnormals, signed zeros
    s = torch.tensor(vals * 30, dtype=dtype)
    for k in (0, 1, 5, 37, 120, 299, 300, 359, 360):
        with emulated(seed=k):
            out = kernels.topk_mask(s, k)
        assert np.array_equal(out.numpy(), RT.topk_mask(s.numpy(), k)), k


@pytest.mark.parametrize("value", [0.0, -0.0, 1e-45, 7.5])
def test_topk_all_equal_scores_keep_the_smallest_indices(emulated, value):
    """Every score in the threshold bucket and tied at T: the bucket is the whole buffer."""
    n = 3000
    s = torch.full((n,), value)
    if value == 0.0:
        s[::3] = -0.0                                  # -0.0 and +0.0 are equal scores
    for k in (0, 1, 1499, 2999, 3000):
        with emulated(seed=k, sm_count=3):
            out = kernels.topk_mask(s, k).numpy()
        assert out.sum() == k and out[:k].all(), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_of_pruned_magnitudes_around_the_nonzero_count(emulated, dtype):
    """|w| of a 10%-dense layer: k below the non-zeros (T among the small magnitudes) and above
    them (T = 0: the bucket is every zero, chunks of one key, settled without reading them), in
    segments with per-segment k, mixing chunks of ties, chunks wholly kept or dropped and chunks
    that must be ranked."""
    g = torch.Generator().manual_seed(12)
    sizes = [4100, 2999, 1]
    n = sum(sizes)
    s = (torch.randn(n, generator=g, dtype=dtype) * (torch.rand(n, generator=g) < 0.1)).abs()
    bounds = np.cumsum([0] + sizes)
    nnz = [int((s[a:b] != 0).sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    for ks in ([max(0, z - 17) for z in nnz], [min(sz, z + 300) for z, sz in zip(nnz, sizes)], [z for z in nnz]):
        with emulated(seed=sum(ks), sm_count=2):
            out = kernels.topk_select(s, sizes, ks).numpy()
        check_segmented(out, s, None, sizes, ks)


def test_inverted_candidates_with_or_with_is_the_grow_step(emulated):
    g = torch.Generator().manual_seed(1)
    n = 20003
    s = torch.randint(0, 5, (n,), generator=g).float()
    kept = torch.rand(n, generator=g) < 0.1
    k = int((~kept).sum()) // 3
    with emulated(seed=4, max_blocks=4):
        out = kernels.topk_select(s, [n], [k], candidates=kept, invert=True, or_with=kept)
    assert np.array_equal(out.numpy(), ref_topk_within(s, ~kept, k) | kept.numpy())


def test_segmented_drop_and_grow_with_device_counts(emulated):
    """RigL's two selections: the drop keeps n_active - d of the active weights, the grow adds d
    among the inactive ones of the result (or_with); counts given as an int64 device tensor."""
    g = torch.Generator().manual_seed(8)
    sizes = [1500, 7, 2601, 0, 999]
    n = sum(sizes)
    mask = torch.rand(n, generator=g) < 0.3
    drop_s, grow_s = torch.randn(n, generator=g), torch.randint(-2, 3, (n,), generator=g).float()
    bounds = np.cumsum([0] + sizes)
    active = [int(mask[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    drops = [a // 3 for a in active]
    keep_k = torch.tensor([a - d for a, d in zip(active, drops)], dtype=torch.int64)
    with emulated(seed=6, sm_count=2) as b:
        kept = kernels.topk_select(drop_s, sizes, keep_k, candidates=mask)
        new = kernels.topk_select(grow_s, sizes, torch.tensor(drops, dtype=torch.int32), candidates=kept,
                                  invert=True, or_with=kept)
    assert len(b.log) == 2 * len(kernels.topk.kernel_names(torch.float32))
    check_segmented(kept.numpy(), drop_s, mask, sizes, keep_k.tolist())
    start = 0
    for size, d in zip(sizes, drops):
        sl = slice(start, start + size)
        want = ref_topk_within(grow_s[sl], ~kept[sl], d) | kept[sl].numpy()
        assert np.array_equal(new[sl].numpy(), want)
        start += size


def test_unaligned_buffers_take_the_scalar_path(emulated, monkeypatch):
    """Views that start off a 16-byte boundary: the host switches the vector loads off (same
    result); forcing them on anyway is a misaligned 16-byte load, which the emulator reports."""
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-4, 5, (5003,), generator=g).float()
    cbase = torch.rand(5005, generator=g) < 0.7
    s, cand = base[1:], cbase[3:3 + 5002]                    # 4 bytes and 3 bytes past an aligned start
    k = int(cand.sum()) // 2
    want = ref_topk_within(s, cand, k)
    with emulated(seed=2):
        assert np.array_equal(kernels.topk_select(s, [s.numel()], [k], candidates=cand).numpy(), want)
        assert np.array_equal(kernels.topk_select(base, [5003], [2000]).numpy(), ref_topk_within(base, None, 2000))
    monkeypatch.setattr(kernels.topk, "_aligned", lambda t, nbytes: True)
    with emulated(seed=2), pytest.raises(simt.LaunchError, match=r"misaligned address: __ldg .*16 bytes"):
        kernels.topk_select(s, [s.numel()], [k], candidates=cand)


def test_a_whole_buffer_with_the_production_chunk(emulated):
    """The production chunk (topk.TOPK_CHUNK): segments of many chunks, one of 300k elements,
    and a segment that starts off a vector boundary."""
    g = torch.Generator().manual_seed(5)
    sizes = [300_000, 16384, 16385, 3, 4097]
    s = torch.randint(-50, 50, (sum(sizes),), generator=g).float()
    ks = [123_457, 16384, 1, 2, 2048]
    with emulated(chunk=kernels.CHUNK, sm_count=4):
        assert kernels.topk.chunk_len() == kernels.topk.TOPK_CHUNK
        out = kernels.topk_select(s, sizes, ks).numpy()
    start = 0
    for size, k in zip(sizes, ks):
        assert np.array_equal(out[start:start + size], RT.topk_mask(s[start:start + size].numpy(), k))
        start += size


# ----------------------------------------------------------------------------- the other kernels

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (2, 6), (16, 32), (0, 4), (4, 4)])
@pytest.mark.parametrize("axis", ["reduction", "rows"])
def test_nm_mask_matches_the_torch_path(emulated, dtype, n, m, axis):
    from twinsparse.accel.masks import nm_mask
    g = torch.Generator().manual_seed(2)
    for shape in [(8, 4 * m), (4, 2 * m, 3, 3), (3, m, 1, 1)]:
        w = torch.randint(-2, 3, shape, generator=g).to(dtype) * 0.25       # many ties
        want = nm_mask(w, n, m, axis)                                       # torch, default backend
        with emulated(seed=n + m) as b:
            got = nm_mask(w, n, m, axis)                                    # dispatches to nm_mask.cu
        assert [k for k, _ in b.log] == [f"nm_masks_{kernels.SUFFIX[dtype]}"]
        assert torch.equal(got, want)


def _model_weights(dtype, g):
    """A small ResNet's weights, incl. a 7x7 stem with I = 3 (left dense), 1x1 and 3x3 convs of
    several chunks (NM_CHUNK_GROUPS = 2048), a Linear and a 2x2 conv, I = 24 (divides by 4, 6 and
    8); ties and signed zeros."""
    shapes = {"stem": (16, 3, 7, 7), "a": (64, 16, 1, 1), "b": (64, 64, 3, 3), "c": (32, 64, 2, 2),
              "fc": (10, 2056), "d": (8, 8, 1, 1), "e": (6, 24, 3, 3)}
    ws = {k: (torch.randint(-3, 4, s, generator=g).to(dtype) * 0.5) for k, s in shapes.items()}
    ws["b"].view(-1)[::5] = -0.0
    return ws


@pytest.mark.parametrize("axis", ["reduction", "rows"])
@pytest.mark.parametrize("n,m", [(2, 4), (5, 8), (3, 6)])
def test_nm_masks_one_launch_for_a_whole_model_equals_the_reference(emulated, n, m, axis):
    from twinsparse.accel.masks import nm_masks
    ws = _model_weights(torch.float32, torch.Generator().manual_seed(n + m))
    with emulated(seed=m, max_blocks=3) as b, pytest.warns(UserWarning, match="dense"):
        got, dense = nm_masks(ws, n, m, axis)
    assert [k for k, _ in b.log] == ["nm_masks_f32"], "one launch for every layer"
    with pytest.warns(UserWarning, match="dense"):
        want, want_dense = RM.nm_masks({k: v.numpy() for k, v in ws.items()}, n, m, axis)
    assert dense == want_dense and "stem" in dense
    for k in ws:
        assert got[k].shape == ws[k].shape and np.array_equal(got[k].numpy(), want[k]), k


def test_nm_masks_mixed_dtypes_and_unaligned_views(emulated):
    """float32 and float64 layers: one launch per dtype, each skipping the other's tensors; layers
    that are views at offsets of one flat buffer (not 16-byte aligned: the scalar loads)."""
    from twinsparse.accel.masks import nm_masks
    g = torch.Generator().manual_seed(9)
    flat = torch.randn(1 + 64 * 32 + 12 * 8 * 3 * 3, generator=g)
    ws = {"lin": flat[1:1 + 64 * 32].view(64, 32), "conv": flat[1 + 64 * 32:].view(12, 8, 3, 3),
          "lin64": torch.randn(16, 24, generator=g, dtype=torch.float64),
          "conv64": torch.randn(4, 8, 3, 3, generator=g, dtype=torch.float64)[:, :, :, :]}
    assert ws["lin"].data_ptr() % 16 != 0
    with emulated(seed=3) as b:
        got, dense = nm_masks(ws, 2, 4)
    assert sorted(k for k, _ in b.log) == ["nm_masks_f32", "nm_masks_f64"] and dense == []
    for k, w in ws.items():
        assert np.array_equal(got[k].numpy(), RM.nm_mask(w.numpy(), 2, 4)), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum,nesterov,dampening,wd", SGD_SETTINGS)
def test_masked_sgd_step_all_equals_the_reference_bit_for_bit(emulated, dtype, momentum, nesterov, dampening, wd):
    from twinsparse.accel.optim import masked_sgd_step_all
    shapes = {"a": (16, 3, 3, 3), "b": (40, 30), "c": (10, 51), "d": (7,)}
    ws, gs, ms, bs = sgd_case(shapes, dtype, momentum)
    hp = dict(lr=0.1, momentum=momentum, weight_decay=wd, dampening=dampening, nesterov=nesterov)
    with emulated(seed=1, max_blocks=2, chunk=300) as b:
        out_w, out_b = masked_sgd_step_all(ws, gs, ms, bs, **hp)
    assert [k for k, _ in b.log] == [f"masked_sgd_{kernels.SUFFIX[dtype]}"], "one launch for every layer"
    np_ = lambda d: {k: None if v is None else v.numpy() for k, v in d.items()}  # noqa: E731
    ref_w, ref_b = RO.masked_sgd_step_all(np_(ws), np_(gs), np_(ms), np_(bs), **hp)
    for name in shapes:
        assert np.array_equal(out_w[name].numpy(), ref_w[name])
        if momentum:
            assert np.array_equal(out_b[name].numpy(), ref_b[name])


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
def test_sparsifier_fused_optimizer_step_matches_the_torch_path(emulated, opt_name):
    """Sparsifier.step on a model: the guard (one nonfinite_check launch) and the optimizer's
    update (one masked_sgd / masked_adam launch for every tensor) on the emulated kernels, against
    the torch path (masked gradients + torch's fused update)."""
    from twinsparse.accel import Sparsifier, densities, methods
    from twinsparse.accel.models import build_model

    def run(emulate):
        torch.manual_seed(0)
        # no BatchNorm for Adam: the biases in front of a BN layer get rounding-noise gradients
        # (~1e-8), which Adam's normalised update turns into lr-sized steps of either sign
        model = build_model("mlp", sizes=(20, 32, 16, 5), batchnorm=opt_name == "sgd")
        opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
               "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
               "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-2, amsgrad=True)}[opt_name](
            model.parameters())
        sp = Sparsifier(model, opt, density=densities.erk(0.3), method=methods.Static())
        x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
        log = []
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if emulate:
                with emulated(seed=2) as b:
                    sp.step()
                log += b.log
            else:
                sp.step()
        assert sp._engine.last_path == ("kernel" if emulate else "torch")
        state = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, state, dict(sp.masks), log

    w_k, s_k, m_k, log = run(True)
    kern = "masked_sgd_f32" if opt_name == "sgd" else "masked_adam_f32"
    assert [k for k, _ in log] == ["nonfinite_check_f32", kern] * 3, "two launches a step, for every layer"
    w_t, s_t, m_t, _ = run(False)
    for k in w_t:      # torch's fused updates may contract multiply-adds; the kernel rounds each operation
        torch.testing.assert_close(w_k[k], w_t[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(s_k, s_t):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    for n in m_t:
        assert torch.equal(m_k[n], m_t[n])
        assert not w_k[n][~m_k[n]].any()


@pytest.mark.parametrize("form", ["eq1", "text"])
def test_dst_ee_scores_and_cia_equal_the_reference_and_umg_is_close(emulated, form):
    from twinsparse.accel.cocktail_ops import umg_channel_scores
    from twinsparse.accel.dst import dst_ee_scores
    from twinsparse.accel.merge import superpose_cia
    rng = np.random.default_rng(4)
    grads = {f"l{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate([(16, 27), (32, 76), (10,)])}
    counters = {k: rng.integers(0, 9, v.shape) for k, v in grads.items()}
    avg = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in grads.items()}
    w = rng.standard_normal((12, 40, 3, 3)).astype(np.float32)
    mu, mnm = rng.random(w.shape) < 0.2, rng.random(w.shape) < 0.5
    T = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}  # noqa: E731
    with emulated(seed=3, chunk=500) as b:
        scores = dst_ee_scores(T(grads), T(counters), 1000, 1e-2, 1e-3, form=form)
        cia = superpose_cia(T(avg), T(grads), 7)
        umg = umg_channel_scores(*(torch.from_numpy(a) for a in (w, mu, mnm)), beta=0.7)
    assert [k for k, _ in b.log] == ["dst_ee_scores_f32", "superpose_cia_f32", "umg_channel_scores_f32"]
    want = RD.dst_ee_scores(grads, counters, 1000, 1e-2, 1e-3, form=form)
    want_cia = RMG.superpose_cia(avg, grads, 7)
    for k in grads:
        assert np.array_equal(scores[k].numpy(), want[k])
        assert np.array_equal(cia[k].numpy(), want_cia[k])
    np.testing.assert_allclose(umg.numpy(), RCO.umg_channel_scores(w, mu, mnm, beta=0.7), rtol=2e-6, atol=1e-6)


def _umg_layers(rng, dtype, exact):
    """Rows of 147 (7x7x3: no 16-byte rows), 576 and 2048 (16-byte rows), 1x1; O not a multiple of
    the 8 channels per block; exact=True: quarter-integers, whose sums are exact in any order."""
    shapes = [(10, 3, 7, 7), (12, 64, 3, 3), (3, 2048), (9, 16, 1, 1)]
    draw = (lambda s: rng.integers(-8, 9, s) * 0.25) if exact else rng.standard_normal
    ws = [draw(s).astype(dtype) for s in shapes]
    mu = [rng.random(s) < 0.3 for s in shapes]
    mnm = [rng.random(s) < 0.5 for s in shapes]
    mnm[2] = None                                          # all ones
    return ws, mu, mnm


@pytest.mark.parametrize("exact", [True, False])
def test_umg_channel_scores_all_one_launch_for_every_layer(emulated, exact):
    from twinsparse.accel.cocktail_ops import umg_channel_scores_all
    rng = np.random.default_rng(6)
    ws, mu, mnm = _umg_layers(rng, np.float32, exact)
    w64, mu64, mnm64 = _umg_layers(rng, np.float64, exact)
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    flat = torch.randn(1 + ws[1].size)                     # a weight 4 bytes past a 16-byte boundary
    flat[1:] = torch.from_numpy(ws[1].reshape(-1))
    tw = [t(ws[0]), flat[1:].view(ws[1].shape)] + [t(w) for w in ws[2:]] + [t(w) for w in w64]
    with emulated(seed=1, max_blocks=3) as b:
        got = umg_channel_scores_all(tw, [t(m) for m in mu + mu64], [t(m) for m in mnm + mnm64], beta=0.7)
    assert sorted(k for k, _ in b.log) == ["umg_channel_scores_f32", "umg_channel_scores_f64"]
    for g, w, a, c in zip(got, ws + w64, mu + mu64, mnm + mnm64):
        want = RCO.umg_channel_scores(w, a, c, beta=0.7)
        assert g.dtype == torch.from_numpy(w).dtype and g.shape == (w.shape[0],)
        if exact:
            assert np.array_equal(g.numpy(), want)
        else:
            np.testing.assert_allclose(g.numpy(), want, rtol=2e-6 if w.dtype == np.float32 else 1e-12, atol=1e-6)


def test_umg_channel_masks_score_once_and_select_once(emulated):
    """Sparse Cocktail's channel masks: one score launch for every layer, then one segmented top-k
    chain (nested among the alive channels), equal to the reference."""
    from twinsparse.accel.cocktail_ops import umg_channel_masks
    rng = np.random.default_rng(7)
    ws, mu, mnm = _umg_layers(rng, np.float32, True)
    names = [f"conv{i}.weight" for i in range(len(ws))]
    alive = {n: rng.random(w.shape[0]) < 0.8 for n, w in zip(names, ws)}
    alive[names[0]][:] = True
    args = ({n: w for n, w in zip(names, ws)}, {n: m for n, m in zip(names, mu)},
            {n: (np.ones(w.shape, bool) if m is None else m) for n, w, m in zip(names, ws, mnm)})
    want = RCO.umg_channel_masks(*args, 0.5, beta=0.6, alive=alive)
    tt = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}  # noqa: E731
    with emulated(seed=2) as b:
        got = umg_channel_masks(*(tt(a) for a in args), 0.5, beta=0.6, alive=tt(alive))
    assert [k for k, _ in b.log] == ["umg_channel_scores_f32"] + kernels.topk.kernel_names(torch.float32)
    for n in names:
        assert np.array_equal(got[n].numpy(), want[n]), n


@pytest.mark.parametrize("where", ["fc", "b", "e", "stem"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nm_and_umg_kernels_flag_non_finite_weights_as_they_read_them(emulated, where, bad):
    """No separate finiteness pass on the kernel path: the N:M and UMG kernels flag NaN / inf
    (contiguous and strided groups; "stem" is a layer N:M leaves dense, checked on its own), the
    error names the layer; inside an update the check waits for the commit."""
    from twinsparse.accel import deferred
    from twinsparse.accel.cocktail_ops import umg_channel_masks, umg_channel_scores_all
    from twinsparse.accel.masks import nm_masks
    ws = _model_weights(torch.float32, torch.Generator().manual_seed(1))
    ws[where].view(-1)[7] = bad
    with emulated() as b, pytest.raises(ValueError, match=rf"weight '{where}' contains 1 non-finite"):
        nm_masks(ws, 2, 4)
    assert [k for k, _ in b.log] == ["nm_masks_f32"]
    names = list(ws)
    with emulated() as b, pytest.raises(ValueError, match=rf"weights\[{names.index(where)}\] contains 1 non-finite"):
        umg_channel_scores_all(list(ws.values()), [w != 0 for w in ws.values()], None, 0.5)
    assert [k for k, _ in b.log] == ["umg_channel_scores_f32"]
    with emulated(), deferred.transaction() as txn:
        umg_channel_masks(ws, {k: w != 0 for k, w in ws.items()}, None, 0.5)      # nothing raised yet
    with pytest.raises(ValueError, match=rf"weights\['{where}'\] contains 1 non-finite"):
        txn.commit()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dst_ee_and_cia_whole_model_bit_for_bit_with_unaligned_views(emulated, dtype):
    """Layers as views at offsets of one flat buffer (some 16-byte aligned, some not), chunks that
    split layers and end off a vector boundary: one launch each, equal to the reference bit for
    bit, and returned as one flat buffer."""
    from twinsparse.accel.dst import dst_ee_scores
    from twinsparse.accel.flat import FlatDict
    from twinsparse.accel.merge import superpose_cia
    rng = np.random.default_rng(11)
    shapes = {"a": (3,), "b": (16, 27), "c": (33, 7), "d": (64, 3, 3), "e": (1,)}
    sizes = [int(np.prod(s)) for s in shapes.values()]
    def flat_views(values):
        buf = torch.from_numpy(np.concatenate([v.reshape(-1) for v in values.values()]))
        out, o = {}, 0
        for (k, sh), n in zip(shapes.items(), sizes):
            out[k] = buf[o:o + n].view(sh)
            o += n
        return out
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    counters = {k: rng.integers(0, 50, s) for k, s in shapes.items()}
    avg = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    tg, tn, ta = flat_views(grads), flat_views(counters), flat_views(avg)
    assert any(v.data_ptr() % 16 for v in tg.values()) and any(v.data_ptr() % 16 == 0 for v in tg.values())
    with emulated(seed=4, chunk=50, max_blocks=5) as b:
        scores = dst_ee_scores(tg, tn, 777, 0.3, 1e-3, form="eq1")
        cia = superpose_cia(ta, tg, 5)
    sfx = "f32" if dtype == np.float32 else "f64"
    assert [k for k, _ in b.log] == [f"dst_ee_scores_{sfx}", f"superpose_cia_{sfx}"]
    assert isinstance(scores, FlatDict) and isinstance(cia, FlatDict)
    want = RD.dst_ee_scores(grads, counters, 777, 0.3, 1e-3, form="eq1")
    want_cia = RMG.superpose_cia(avg, grads, 5)
    for k in shapes:
        assert np.array_equal(scores[k].numpy(), want[k]) and np.array_equal(cia[k].numpy(), want_cia[k]), k


def test_the_loader_passes_scalars_of_the_kernels_widths(emulated, monkeypatch):
    """A loader that rounds a float32 kernel's lr to a float64 scalar is refused (CuPy would pass
    8 bytes where the kernel reads 4)."""
    monkeypatch.setattr(kernels.tables, "scalar", lambda x, dtype: np.float64(x))
    w = torch.randn(10)
    with emulated(), pytest.raises(simt.LaunchError, match=r"parameter 11 is f4 \(float32\)"):
        kernels.masked_sgd_step(w, torch.randn(10), torch.ones(10, dtype=torch.bool), lr=0.1)


def _guard_run(emulated, emu=None, dtypes=(torch.float32,)):
    """Four steps through guard.cu on a grid of 3 blocks and small chunks: the flag per step and the
    device record (bad steps, first bad iteration, iterations) after them, starting at iteration 10."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=g).to(dtypes[i % len(dtypes)]) for i, s in enumerate([(5000,), (33, 7), (1,)])]
    found = torch.zeros(())
    record = torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64)
    scratch = torch.zeros(1, dtype=torch.int32)
    flags = []
    for bad in (None, (1, 5 * 7 + 3, float("nan")), None, (2, 0, float("-inf"))):
        gs = [x.clone() for x in grads]
        if bad is not None:
            gs[bad[0]].view(-1)[bad[1]] = bad[2]
        found.zero_()
        with emulated(seed=1, max_blocks=3, chunk=700):
            backend = simt.SimtBackend(seed=1, max_blocks=3, emu=emu) if emu is not None else None
            with (kernels.use_backend(backend) if backend else contextlib.nullcontext()):
                kernels.nonfinite_check(gs, found, record, scratch)
        flags.append(float(found))
    return flags, record.tolist(), int(scratch)


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float32, torch.float64)])
def test_the_guard_kernel_flags_bad_steps_and_records_them_across_blocks(emulated, dtypes):
    flags, record, scratch = _guard_run(emulated, dtypes=dtypes)
    assert flags == [0.0, 1.0, 0.0, 1.0]
    assert record == [2.0, 12.0, 14.0]          # two bad steps, the first at iteration 12, 14 iterations
    assert scratch == 0                         # the block counter is ready for the next launch


# ----------------------------------------------------------------------------- seeded defects

def _mutant(tmp_path, file, old, new, count=1):
    src = (kernels.KERNEL_DIR / file).read_text()
    assert src.count(old) == count, f"mutation anchor not found {count} time(s) in {file}: {old!r}"
    (tmp_path / file).write_text(src.replace(old, new))
    for header in kernels.KERNEL_DIR.glob("*.cuh"):
        (tmp_path / header.name).write_text(header.read_text())
    return simt.Emulator(tmp_path, {file: list(kernels.KERNELS[file])})


def _topk_wrong(emu, s, k, seeds, sm_count=2, **kw):
    """How many of the seeded runs of the mutant ``emu`` disagree with the reference (the original
    kernels agree on every seed)."""
    want = ref_topk_within(s, kw.get("candidates"), k)
    wrong = 0
    for seed in seeds:
        with kernels.use_backend(simt.SimtBackend(seed=seed, emu=emu, sm_count=sm_count)):
            wrong += not np.array_equal(kernels.topk_select(s, [s.numel()], [k], **kw).numpy(), want)
    with kernels.use_backend(simt.SimtBackend(seed=seeds[-1], sm_count=sm_count)):
        assert np.array_equal(kernels.topk_select(s, [s.numel()], [k], **kw).numpy(), want)       # the original
    return wrong


def test_the_emulator_catches_a_missing_barrier_in_the_tie_ranks(tmp_path, emulated):
    barrier = re.search(r"\n *__syncthreads\(\); *// warp_cnt is rewritten by the next call\n",
                        (kernels.KERNEL_DIR / "topk.cu").read_text()).group(0)
    emu = _mutant(tmp_path, "topk.cu", barrier, "\n")
    with emulated():
        assert _topk_wrong(emu, _one_bucket_three_keys(5000), 2500, range(4)) > 0


def _one_bucket_three_keys(n, seed=0):
    """Scores 1.0, 1.0625, 1.125: one digit-0 bucket holding three distinct keys in every chunk, so
    the resolve ranks ties among larger and smaller keys (more than one tile of 256 per chunk)."""
    vals = torch.tensor([1.0, 1.0625, 1.125])
    return vals[torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))]


def test_the_emulator_catches_an_unsynchronised_histogram_clear(tmp_path, emulated):
    """Without the barrier after the shared histogram is zeroed, a warp that runs ahead counts into
    bins another warp clears afterwards."""
    src = (kernels.KERNEL_DIR / "topk.cu").read_text()
    anchor = re.search(r"\n *__syncthreads\(\); *// cleared before any thread adds to it\n", src).group(0)
    emu = _mutant(tmp_path, "topk.cu", anchor, "\n", count=3)      # in every histogram kernel
    s = torch.randn(6000, generator=torch.Generator().manual_seed(1))
    with emulated():
        assert _topk_wrong(emu, s, 1234, range(2)) == 2


def test_the_emulator_catches_a_segment_scanned_before_its_last_block(tmp_path, emulated):
    """The first block to finish a segment scans it (instead of the last): the histogram is
    partial whenever a segment spans several blocks, which the persistent grid makes common."""
    emu = _mutant(tmp_path, "topk.cu", "*last = before + (u64)chunks == (u64)seg_nch[s];", "*last = before == 0;")
    s = torch.randn(9000, generator=torch.Generator().manual_seed(2))
    with emulated():
        assert _topk_wrong(emu, s, 4000, range(2), sm_count=2) == 2


def test_the_emulator_catches_an_off_by_one_tie_rank(tmp_path, emulated):
    emu = _mutant(tmp_path, "topk.cu", "(tie && rank < k)", "(tie && rank <= k)")
    s = _one_bucket_three_keys(3000, seed=1)
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        out = kernels.topk_mask(s, 1500)
    assert int(out.sum()) == 1501                           # the mutant keeps one tie too many


def test_the_emulator_catches_an_off_by_one_in_a_chunk_of_ties(tmp_path, emulated):
    """A chunk whose bucket entries all equal T keeps its first k - (ties before) entries without
    ranking them one by one (the ties of pruned zeros)."""
    emu = _mutant(tmp_path, "topk.cu", "(k - base < ne ? k - base : ne)", "(k - base < ne ? k - base + 1 : ne)")
    s = torch.zeros(3000)
    s[::7] = 1.0
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        out = kernels.topk_mask(s, 1000)
    assert int(out.sum()) == 1001


def test_the_emulator_catches_nm_vector_loads_without_the_alignment_check(tmp_path, emulated):
    emu = _mutant(tmp_path, "nm_mask.cu", "const bool vin = (reinterpret_cast<unsigned long long>(w) & 15ull) == 0;",
                  "const bool vin = true;")
    flat = torch.randn(1 + 64 * 32, generator=torch.Generator().manual_seed(4))
    w = flat[1:].view(64, 32)                               # 4 bytes past a 16-byte boundary
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        with pytest.raises(simt.LaunchError, match=r"misaligned address: __ldg"):
            kernels.nm_masks([w], 2, 4, "reduction")
        got = kernels.nm_masks([w.clone()], 2, 4, "reduction")[0]          # aligned: the mutant works
    assert np.array_equal(got.numpy(), RM.nm_mask(w.numpy(), 2, 4))


def test_the_emulator_catches_a_wrong_tie_order_in_nm(tmp_path, emulated):
    emu = _mutant(tmp_path, "nm_mask.cu", "rank += (a[q] > a[l]) || (a[q] == a[l] && q < l);",
                  "rank += (a[q] > a[l]) || (a[q] == a[l] && q <= l);")
    w = torch.randint(-1, 2, (16, 8, 3, 3), generator=torch.Generator().manual_seed(5)).float()   # many ties
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        got = kernels.nm_masks([w], 2, 4, "reduction")[0]
    assert not np.array_equal(got.numpy(), RM.nm_mask(w.numpy(), 2, 4))


def test_the_emulator_catches_a_short_warp_reduction_in_umg(tmp_path, emulated):
    emu = _mutant(tmp_path, "merge.cu", "for (int d = 16; d > 0; d >>= 1) {", "for (int d = 8; d > 0; d >>= 1) {")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 600)).astype(np.float32)
    mu, mnm = rng.random(w.shape) < 0.2, rng.random(w.shape) < 0.5
    args = [torch.from_numpy(a) for a in (w, mu, mnm)]
    want = RCO.umg_channel_scores(w, mu, mnm, beta=0.7)
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        got = kernels.umg_channel_scores(*args, beta=0.7).numpy()
    assert not np.allclose(got, want, rtol=1e-4)               # lanes 16..31 never reach lane 0


def test_the_emulator_catches_swapped_counters_in_the_dst_ee_vector_path(tmp_path, emulated):
    emu = _mutant(tmp_path, "dst.cu", "nv[2 * h] = (i64)p.x;", "nv[2 * h] = (i64)p.y;")
    rng = np.random.default_rng(1)
    g = {"a": rng.standard_normal((32, 9)).astype(np.float32)}
    n = {"a": rng.integers(0, 9, (32, 9))}
    want = RD.dst_ee_scores(g, n, 100, 0.5, 1e-3, form="text")["a"]
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        got = kernels.dst_ee_scores({"a": torch.from_numpy(g["a"])}, {"a": torch.from_numpy(n["a"])}, 100, 0.5,
                                    1e-3, "text")["a"].numpy()
    assert not np.array_equal(got, want)


def test_the_emulator_catches_cia_vector_loads_without_the_alignment_check(tmp_path, emulated):
    emu = _mutant(tmp_path, "merge.cu", "const bool vec = aligned16(A) && aligned16(B) && aligned16(O);",
                  "const bool vec = true;")
    buf = torch.randn(1 + 40)
    avg, x = {"a": buf[1:].view(5, 8)}, {"a": torch.randn(5, 8)}
    with emulated(), kernels.use_backend(simt.SimtBackend(emu=emu)):
        with pytest.raises(simt.LaunchError, match=r"misaligned address: __ldg"):
            kernels.superpose_cia(avg, x, 3)


# ----------------------------------------------------------------------------- memory checking

def _asan_env():
    try:
        env = simt.asan_environment()
    except RuntimeError as e:
        pytest.skip(str(e))
    return {**os.environ, **env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_addresssanitizer_build_reports_an_out_of_bounds_read_with_its_thread():
    """The memcheck stand-in works: a probe that reads one element past its input aborts the
    process with AddressSanitizer's report, and the emulator names the launch and thread."""
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from twinsparse.accel.kernels import simt
        emu = simt.Emulator({str(PROBE_DIR)!r}, {PROBES!r})
        assert emu.sanitize
        x, out = torch.randn(100), torch.zeros(100)
        emu.launch("probe_out_of_bounds", 1, 128, (x, out, np.int32(100)))
        print("not caught")
    """)
    r = subprocess.run([sys.executable, "-c", code], env=_asan_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not caught" not in r.stdout, r.stdout + r.stderr
    assert "heap-buffer-overflow" in r.stderr and "probe_out_of_bounds" in r.stderr, r.stderr[-3000:]
    assert "SIMT emulator: the error above happened in kernel probe_out_of_bounds, block 0, thread 99" in r.stderr


@pytest.mark.slow
def test_every_emulated_kernel_test_is_memory_clean_under_addresssanitizer():
    """This file and the registry's emulated kernel entries, in a process where the kernels are
    built with AddressSanitizer (about 90 s on 2 cores): no out-of-bounds access anywhere."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           str(ROOT / "tests" / "test_kernels_simt.py"), str(ROOT / "conformance" / "test_registry.py"), "-k", "simt"]
    r = subprocess.run(cmd, env=_asan_env(), capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "AddressSanitizer" not in r.stderr.replace("ASan doesn't fully support", "")


def test_mixed_dtypes_take_one_launch_each_and_one_block_walks_every_chunk(emulated):
    """A float32 + float64 network: one launch per dtype; with the grid capped at one block, that
    block's grid-stride loop covers every chunk of every tensor."""
    from twinsparse.accel.merge import superpose_cia
    from twinsparse.accel.optim import masked_sgd_step_all
    g = torch.Generator().manual_seed(7)
    dtypes = {"a": torch.float32, "b": torch.float64, "c": torch.float32, "d": torch.float64}
    shapes = {"a": (33, 17), "b": (5, 3, 3, 3), "c": (700,), "d": (1,)}
    ws = {n: torch.randn(shapes[n], generator=g, dtype=dt) for n, dt in dtypes.items()}
    gs = {n: torch.randn(shapes[n], generator=g, dtype=dt) for n, dt in dtypes.items()}
    ms = {n: torch.rand(shapes[n], generator=g) < 0.5 for n in dtypes}
    bs = {n: torch.randn(shapes[n], generator=g, dtype=dt) for n, dt in dtypes.items()}
    hp = dict(lr=0.05, momentum=0.9, weight_decay=1e-4, dampening=0.0, nesterov=False)
    with emulated(seed=5, max_blocks=1, chunk=128) as b:
        out_w, out_b = masked_sgd_step_all(ws, gs, ms, bs, **hp)
        cia = superpose_cia(ws, gs, 3)
    assert sorted(k for k, _ in b.log) == ["masked_sgd_f32", "masked_sgd_f64", "superpose_cia_f32", "superpose_cia_f64"]
    assert all(grid == 1 for _, grid in b.log)
    np_ = lambda d: {k: v.numpy() for k, v in d.items()}  # noqa: E731
    ref_w, ref_b = RO.masked_sgd_step_all(np_(ws), np_(gs), np_(ms), np_(bs), **hp)
    ref_cia = RMG.superpose_cia(np_(ws), np_(gs), 3)
    for n in dtypes:
        assert out_w[n].dtype == dtypes[n] and np.array_equal(out_w[n].numpy(), ref_w[n])
        assert np.array_equal(out_b[n].numpy(), ref_b[n])
        assert np.array_equal(cia[n].numpy(), ref_cia[n])
