"""The engine's contract, counted (accel.contract): a plain Sparsifier step asks the device for
nothing, a mask update waits at most once, and the number of kernel launches does not grow with
the number of layers (ResNet-18 vs ResNet-50 layer structures, narrowed so the test is fast).

Every method that updates masks is covered, with SGD and AdamW, on the torch path and on the
CUDA kernels (run by the SIMT emulator). The torch path is the one CUDA runs without CuPy: on a
CPU a few operators would otherwise take CPU-specific paths (free host reads there), so the fixture
below switches those off. On a GPU, tests/test_kernels_gpu.py repeats this
under torch.cuda.set_sync_debug_mode("error").
"""
import pytest
import torch

from twinsparse.accel import flat as accel_flat

from twinsparse.accel import Sparsifier, contract, densities, kernels, methods
from twinsparse.accel.bench import ShapeNet, resnet18_shapes, resnet50_shapes
from twinsparse.reference.methods import ACDC, SupTickets

T = 12


@pytest.fixture(autouse=True)
def _cuda_torch_path(monkeypatch):
    monkeypatch.setattr(accel_flat, "CPU_PATHS", False)


MODELS = {"resnet18": resnet18_shapes(width=4), "resnet50": resnet50_shapes(width=4, num_classes=10)}

METHODS = {
    "static": lambda: methods.Static(),
    "set": lambda: methods.SET(delta_t=3, t_end=T),
    "rigl": lambda: methods.RigL(delta_t=3, t_end=T),
    "snfs": lambda: methods.SNFS(delta_t=3, t_end=T),
    "dst_ee": lambda: methods.DSTEE(delta_t=3, t_end=T),
    "granet": lambda: methods.GraNet(delta_t=3, t_end=T, final_density=0.05, prune_end=6),
    "gmp": lambda: methods.GMP(final_density=0.1, delta_t=3, prune_end=9),
    "acdc": lambda: ACDC(density=0.1, total_epochs=6, steps_per_epoch=2, warmup=1, compressed=1, decompressed=1,
                         final_decompressed=1, final_compressed=1),
    "suptickets": lambda: SupTickets(base=methods.RigL(delta_t=3, t_end=T), total_steps=T, cycle=2),
}
DENSITY = {"gmp": None, "acdc": None}


def _run(model_name, method_name, opt_name, emulate=None):
    """Per iteration: (event?, syncs, launches, sync log)."""
    torch.manual_seed(0)
    model = ShapeNet(MODELS[model_name])
    params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4) if opt_name == "sgd"
           else torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2))
    method = METHODS[method_name]()
    density = densities.erk(0.1) if method_name not in DENSITY else 1.0     # GMP and AC/DC start dense
    sp = Sparsifier(model, opt, density=density, method=method, nonfinite="skip")
    g = torch.Generator().manual_seed(1)
    out = []
    for t in range(1, T + 1):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        event = sp.method.due(t) or sp.method.collects(t)
        ctx = kernels.use_backend(emulate) if emulate is not None else _null()
        with ctx, contract.count() as c:
            sp.step()
        out.append((event, c.syncs, c.launches, c.sync_log, sp._engine.last_path))
    assert sp.step_count == T
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("method_name", list(METHODS))
def test_plain_steps_never_sync_updates_sync_once_launches_do_not_grow_with_layers(method_name, opt_name):
    small, big = _run("resnet18", method_name, opt_name), _run("resnet50", method_name, opt_name)
    assert len(MODELS["resnet50"]) > 2 * len(MODELS["resnet18"]) / 1.5      # really more layers
    events = 0
    for t, ((ev_s, sy_s, la_s, log_s, path), (ev_b, sy_b, la_b, log_b, _)) in enumerate(zip(small, big), start=1):
        assert ev_s == ev_b
        assert path == "torch"
        if ev_s:
            events += 1
            assert sy_s <= 1 and sy_b <= 1, f"t={t}: an update synced {sy_b} times: {log_b}"
        else:
            assert sy_s == 0 and sy_b == 0, f"t={t}: a plain step synced: {log_b}"
        if t > 1:      # (the first step allocates the optimizer state: one buffer per parameter)
            assert la_s == la_b, f"t={t}: {la_s} launches for {len(MODELS['resnet18'])} layers, {la_b} for " \
                                 f"{len(MODELS['resnet50'])}"
    if method_name != "static":
        assert events >= 2


def test_plain_step_launches_are_few():
    """A static-sparse SGD step on the torch path: guard (2), its record (5), mask (1), fused update (1)."""
    steps = _run("resnet50", "static", "sgd")
    assert all(la <= 9 for _, _, la, _, _ in steps[1:]), [la for _, _, la, _, _ in steps]
    assert all(la <= 9 for _, _, la, _, _ in _run("resnet18", "static", "sgd")[1:])


@pytest.mark.parametrize("method_name", ["static", "rigl"])
def test_the_contract_holds_on_the_cuda_kernels(method_name):
    """The kernel path (emulated on the CPU): a plain step is the guard kernel and one fused update
    kernel, whatever the number of layers; a RigL update adds the segmented top-k chain."""
    simt = pytest.importorskip("twinsparse.accel.kernels.simt")
    if simt.unavailable_reason():
        pytest.skip(simt.unavailable_reason())
    small = _run("resnet18", method_name, "sgd", emulate=simt.SimtBackend())
    big = _run("resnet50", method_name, "sgd", emulate=simt.SimtBackend())
    for (ev, sy_s, la_s, _, path), (_, sy_b, la_b, log_b, _) in zip(small, big):
        assert path == "kernel"
        assert (sy_b <= 1) if ev else (sy_b == 0), log_b
    for (_, _, la_s, _, _), (_, _, la_b, _, _) in list(zip(small, big))[1:]:
        assert la_s == la_b
    assert all(la <= 3 for ev, _, la, _, _ in big[1:] if not ev)
    if method_name == "rigl":   # a whole-model RigL update: at most 40 launches (the GPU engine's budget)
        assert max(la for ev, _, la, _, _ in big if ev) <= 40


def test_the_counter_sees_what_a_gpu_would_wait_for():
    x = torch.arange(10.0)
    with contract.count() as c:
        x.sum().item()
        x[x > 3]
        x.tolist()
        torch.tensor([1, 2], device=x.device)
        torch.from_numpy(x.numpy()).to(x.device)
    assert c.syncs == 6, c.sync_log          # item, boolean index, tolist, torch.tensor, numpy, .to
    with contract.count() as c:
        y = x * 2
        torch.cumsum(y, 0)
        torch.nonzero_static(y > 3, size=2)
        y.view(2, 5).t()
    assert c.syncs == 0 and c.launches == 4
