"""CUDA kernels (accel/kernels/*.cu) against the torch path and the NumPy reference, on a GPU.

Marked ``gpu`` (deselected by default; run ``pytest -m gpu``) and skipped with the reason when
there is no CUDA device or no CuPy. Sizes go beyond what the hypothesis registry draws: whole
ResNet-sized buffers, heavy ties, empty segments, a non-default stream; outputs are poisoned first
so an unwritten element shows. The 2^31+ element case is also ``slow``.
"""
import numpy as np
import pytest
import torch

from accel import kernels
from conformance.kernel_cases import SGD_SETTINGS, check_segmented, ref_topk_within, segmented_case, sgd_case

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not kernels.available(), reason=f"CUDA kernels: {kernels.unavailable_reason()}")]

DEV = torch.device("cuda")


@pytest.fixture
def torch_path(monkeypatch):
    """Call ``fn`` with the kernels switched off (the torch implementation on the same device)."""
    def run(fn, *a, **k):
        with monkeypatch.context() as m:
            m.setenv(kernels.DISABLE_ENV, "1")
            return fn(*a, **k)
    return run


def test_every_kernel_compiles_with_nvrtc():
    for file, names in kernels.KERNELS.items():
        for name in names:
            kernels._function(file, name, DEV)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", ["none", "few", "all"])
def test_segmented_topk_matches_sort(dtype, ties):
    sizes = [0, 1, 7, 40000, 0, 123457, 3 * kernels.CHUNK + 1, 64]
    s, cand, ks = segmented_case(sizes, dtype, ties, 0)
    out = kernels.topk_select(s.to(DEV), sizes, ks, candidates=cand.to(DEV)).cpu().numpy()
    check_segmented(out, s, cand, sizes, ks)


def test_topk_inverted_candidates_and_or_with_is_the_grow_step():
    g = torch.Generator(device="cpu").manual_seed(1)
    n = 200003
    s = torch.randint(0, 5, (n,), generator=g).float()
    kept = torch.rand(n, generator=g) < 0.1
    k = int((~kept).sum()) // 3
    out = kernels.topk_select(s.to(DEV), [n], [k], candidates=kept.to(DEV), invert=True, or_with=kept.to(DEV))
    want = ref_topk_within(s, ~kept, k) | kept.numpy()
    assert np.array_equal(out.cpu().numpy(), want)


def test_topk_on_a_side_stream_and_with_grad_inputs():
    w = torch.randn(300000, device=DEV, requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = kernels.topk_mask(w.abs(), 1234)
    torch.cuda.current_stream().wait_stream(side)
    assert np.array_equal(out.cpu().numpy(), ref_topk_within(w.detach().abs(), None, 1234))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (2, 6), (16, 32), (0, 4), (4, 4)])
@pytest.mark.parametrize("axis", ["reduction", "rows"])
def test_nm_mask_matches_torch(dtype, n, m, axis, torch_path):
    from accel.masks import nm_mask
    g = torch.Generator(device="cpu").manual_seed(2)
    for shape in [(64, 4 * m), (32, 2 * m, 3, 3), (16, m, 1, 1)]:
        w = (torch.randint(-2, 3, shape, generator=g).to(dtype) * 0.25).to(DEV)   # many ties
        assert torch.equal(nm_mask(w, n, m, axis), torch_path(nm_mask, w, n, m, axis))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum,nesterov,dampening,wd", SGD_SETTINGS)
def test_masked_sgd_step_all_matches_reference(dtype, momentum, nesterov, dampening, wd):
    import reference.optim as RO
    from accel.optim import masked_sgd_step_all
    shapes = {"a": (64, 3, 3, 3), "b": (512, 4608 // 9, 3, 3), "c": (10, 512), "d": (7,)}
    ws, gs, ms, bs = sgd_case(shapes, dtype, momentum)
    hp = dict(lr=0.1, momentum=momentum, weight_decay=wd, dampening=dampening, nesterov=nesterov)
    to = lambda d: {k: None if v is None else v.to(DEV) for k, v in d.items()}  # noqa: E731
    launches = kernels.launches["count"]
    out_w, out_b = masked_sgd_step_all(to(ws), to(gs), to(ms), to(bs), **hp)
    assert kernels.launches["count"] == launches + 1, "one launch for every layer"
    np_ = lambda d: {k: None if v is None else v.numpy() for k, v in d.items()}  # noqa: E731
    ref_w, ref_b = RO.masked_sgd_step_all(np_(ws), np_(gs), np_(ms), np_(bs), **hp)
    for name in shapes:
        # each operation rounded like NumPy's (no FMA): equal bit for bit
        assert np.array_equal(out_w[name].cpu().numpy(), ref_w[name])
        if momentum:
            assert np.array_equal(out_b[name].cpu().numpy(), ref_b[name])


def test_sparsifier_fused_step_matches_torch_path(torch_path):
    from accel import Sparsifier, densities, methods
    from accel.models import build_model

    def run(disable):
        torch.manual_seed(0)
        model = build_model("resnet18", in_channels=3).to(DEV)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        sp = Sparsifier(model, opt, density=densities.erk(0.1), method=methods.Static())
        x = torch.randn(8, 3, 32, 32, device=DEV)
        y = torch.randint(0, 10, (8,), device=DEV)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            (torch_path(sp.step) if disable else sp.step())
        return ({k: v.detach().clone() for k, v in model.state_dict().items()},
                {id_: opt.state[p]["momentum_buffer"].clone() for id_, p in enumerate(model.parameters())},
                [(p.grad.clone(), sp.masks[n].clone()) for n, p in sp.params.items()])

    launches = kernels.launches["count"]
    w_k, b_k, g_k = run(False)
    assert kernels.launches["count"] > launches
    w_t, b_t, g_t = run(True)
    for k in w_t:
        if w_t[k].is_floating_point():
            torch.testing.assert_close(w_k[k], w_t[k], rtol=1e-5, atol=1e-6)   # torch's foreach SGD may fuse FMAs
    for k in b_t:
        torch.testing.assert_close(b_k[k], b_t[k], rtol=1e-5, atol=1e-6)
    for (gk, mk), (gt, mt) in zip(g_k, g_t):
        assert torch.equal(mk, mt)
        assert not gk[~mk].any() and not gt[~mt].any()      # gradients masked in place on both paths


def test_dst_ee_scores_and_cia_and_umg_match_reference():
    import reference.cocktail_ops as RCO
    import reference.dst as RD
    import reference.merge as RMG
    from accel.cocktail_ops import umg_channel_scores
    from accel.dst import dst_ee_scores
    from accel.merge import superpose_cia
    rng = np.random.default_rng(4)
    grads = {f"l{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate([(64, 27), (128, 576), (10,)])}
    counters = {k: rng.integers(0, 9, v.shape) for k, v in grads.items()}
    got = dst_ee_scores({k: torch.from_numpy(v).to(DEV) for k, v in grads.items()},
                        {k: torch.from_numpy(v).to(DEV) for k, v in counters.items()}, 1000, 1e-2, 1e-3)
    want = RD.dst_ee_scores(grads, counters, 1000, 1e-2, 1e-3)
    for k in grads:
        assert np.array_equal(got[k].cpu().numpy(), want[k])
    avg = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in grads.items()}
    got = superpose_cia({k: torch.from_numpy(v).to(DEV) for k, v in avg.items()},
                        {k: torch.from_numpy(v).to(DEV) for k, v in grads.items()}, 7)
    want = RMG.superpose_cia(avg, grads, 7)
    for k in grads:
        assert np.array_equal(got[k].cpu().numpy(), want[k])
    w = rng.standard_normal((256, 128, 3, 3)).astype(np.float32)
    mu, mnm = rng.random(w.shape) < 0.2, rng.random(w.shape) < 0.5
    got = umg_channel_scores(*(torch.from_numpy(a).to(DEV) for a in (w, mu, mnm)), beta=0.7)
    np.testing.assert_allclose(got.cpu().numpy(), RCO.umg_channel_scores(w, mu, mnm, beta=0.7), rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_topk_beyond_2_31_elements():
    """64-bit indexing: a single segment of 2^31 + 3 elements (about 10 GB of device memory)."""
    n = (1 << 31) + 3
    s = torch.zeros(n, device=DEV)
    s[-5:] = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0], device=DEV)
    cand = torch.ones(n, dtype=torch.bool, device=DEV)
    out = kernels.topk_select(s, [n], [4], candidates=cand)
    idx = out.nonzero().squeeze(1).cpu().tolist()
    assert idx == [n - 5, n - 3, n - 2, n - 1]
    out = kernels.topk_select(s, [n], [7], candidates=cand)       # + the 1.0, then 2 of the tied zeros: lowest indices
    assert out.nonzero().squeeze(1).cpu().tolist() == [0, 1, n - 5, n - 4, n - 3, n - 2, n - 1]
