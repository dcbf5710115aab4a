"""The engine rows of ``twinsparse bench``: the Sparsifier's optimizer step against torch's fused
dense optimizers and a per-layer peer loop, one whole-model RigL update against a per-layer
``torch.topk`` loop, end-to-end ResNet-50 training steps, and the quickstart on two devices."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from .. import Sparsifier, contract, densities, kernels, methods
from ..models import ResNet50
from .shapes import ShapeNet, resnet50_shapes
from .timing import Clock

__all__ = ["step_rows", "update_rows", "e2e_rows", "quickstart_row", "kernels_off"]


@contextlib.contextmanager
def kernels_off():
    """The accel operators with the CUDA kernels switched off (their torch implementation)."""
    old = os.environ.get(kernels.DISABLE_ENV)
    os.environ[kernels.DISABLE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(kernels.DISABLE_ENV, None)
        else:
            os.environ[kernels.DISABLE_ENV] = old


def _optimizer(name: str, params, fused=None):
    kw = {} if fused is None else {"fused": fused}
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-5, **kw)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, **kw)


def _model(dev, width):
    torch.manual_seed(0)
    return ResNet50(width=width).to(dev)


def _with_grads(model, gen_seed=1):
    g = torch.Generator(device="cpu").manual_seed(gen_seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p.device)
    return model


def step_rows(clock: Clock, width: int, repeats: int, opt_name: str, density: float = 0.1) -> dict:
    """ResNet-50's optimizer step: dense fused, the Sparsifier (guard on / off, kernels on / off),
    the per-layer peer loop (gradients masked layer by layer, the optimizer, weights re-masked
    layer by layer, as the sparse_learning library does). Seconds per step, medians."""
    dev = clock.device
    out = {}
    model = _with_grads(_model(dev, width))
    opt = _optimizer(opt_name, model.parameters(), fused=True)
    opt.step()
    out["dense_fused"] = clock.time(opt.step, repeats)
    model = _with_grads(_model(dev, width))
    opt = _optimizer(opt_name, model.parameters())
    opt.step()
    out["dense_default"] = clock.time(opt.step, repeats)

    def sparsifier(**kw):
        m = _with_grads(_model(dev, width))
        o = _optimizer(opt_name, m.parameters())
        sp = Sparsifier(m, o, density=densities.erk(density), method=methods.Static(), **kw)
        sp.step()
        return sp

    sp = sparsifier()
    out["ours"] = clock.time(sp.step, repeats)
    out["ours_path"] = sp._engine.last_path
    with contract.count() as c:
        sp.step()
    out["ours_launches"], out["ours_syncs"] = c.launches, c.syncs
    sp = sparsifier(check_finite=False)
    out["ours_no_guard"] = clock.time(sp.step, repeats)
    with kernels_off():
        sp = sparsifier()
        out["ours_torch_ops"] = clock.time(sp.step, repeats)
    # the peer loop (sparse_learning's Masking.step: per-layer mask multiplications around opt.step)
    m = _with_grads(_model(dev, width))
    o = _optimizer(opt_name, m.parameters())
    sp = Sparsifier(m, o, density=densities.erk(density), method=methods.Static())   # only for its masks
    pairs = [(p, sp.masks[n].to(p.dtype)) for n, p in sp.params.items()]
    sp.squash()                                            # the optimizer is the peer loop's now

    def peer():
        for p, mk in pairs:
            p.grad.mul_(mk)
        o.step()
        with torch.no_grad():
            for p, mk in pairs:
                p.mul_(mk)
    peer()
    out["peer_loop"] = clock.time(peer, repeats)
    out["params"] = sum(p.numel() for p in m.parameters())
    return out


def update_rows(clock: Clock, width: int, repeats: int, density: float = 0.1) -> dict:
    """One whole-model RigL update (drop 30 % of the active weights by |w|, grow as many by |g|)
    on ResNet-50's weights: the Sparsifier's, and a per-layer ``torch.topk`` loop that reads each
    layer's active count on the host (the RigL-PyTorch style)."""
    dev = clock.device
    shapes = resnet50_shapes(width=width)
    torch.manual_seed(0)
    model = _with_grads(ShapeNet(shapes).to(dev))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = methods.RigL(delta_t=1, t_end=10 ** 9, drop_fraction=0.3, fraction_schedule="constant")
    sp = Sparsifier(model, opt, density=densities.erk(density), method=method)
    sp.step()
    out = {"ours": clock.time(sp.step, repeats)}           # every iteration is an update (delta_t = 1)
    with contract.count() as c:
        sp.step()
    out["ours_launches"], out["ours_syncs"] = c.launches, c.syncs
    with kernels_off():
        out["ours_torch_ops"] = clock.time(sp.step, max(1, repeats // 2))
    masks = [m.clone() for m in sp.masks.values()]
    layers = list(sp.params.values())

    def peer():
        for w, m in zip(layers, masks):
            k = int(0.3 * int(m.sum()))                     # one host read per layer
            if k == 0:
                continue
            flat_m, flat_w, flat_g = m.view(-1), w.detach().view(-1), w.grad.view(-1)
            drop = torch.topk(torch.where(flat_m, flat_w.abs(), torch.inf), k, largest=False).indices
            flat_m[drop] = False
            grow = torch.topk(torch.where(flat_m, -torch.inf, flat_g.abs()), k).indices
            flat_m[grow] = True
            flat_w[grow] = 0
    peer()
    out["peer_loop"] = clock.time(peer, repeats)
    out["layers"] = len(layers)
    out["weights"] = sum(w.numel() for w in layers)
    return out


def e2e_rows(clock: Clock, width: int, batch: int, res: int, repeats: int, rigl_steps: int, rigl_delta_t: int,
             density: float = 0.1) -> dict:
    """Training steps of the ImageNet-form ResNet-50 (channels_last; bf16 autocast on CUDA): dense
    (SGD default and fused), static sparse (Sparsifier), and RigL with an update every
    ``rigl_delta_t`` steps, amortised over ``rigl_steps`` steps against as many dense steps."""
    dev = clock.device
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext

    def setup(method=None, fused=None):
        model = _model(dev, width).to(memory_format=torch.channels_last)
        opt = _optimizer("sgd", model.parameters(), fused=fused)
        sp = None if method is None else Sparsifier(model, opt, density=densities.erk(density), method=method)
        return model, opt, sp

    def trainer(model, opt, sp):
        step = sp.step if sp is not None else opt.step

        def run():
            opt.zero_grad(set_to_none=True)
            with amp():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            step()
        return run

    out = {}
    for label, kw in (("dense", {}), ("dense_fused", {"fused": True}), ("static", {"method": methods.Static()})):
        run = trainer(*setup(**kw))
        out[label] = clock.time(run, repeats, warmup=3)
    for label, kw in (("dense_total", {}), ("rigl_total", {"method": methods.RigL(delta_t=rigl_delta_t,
                                                                                t_end=10 ** 9)})):
        model, opt, sp = setup(**kw)
        run = trainer(model, opt, sp)
        for _ in range(3):
            run()
        if sp is not None:
            sp.step_count = 0                              # the timed window holds rigl_steps / delta_t updates
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(rigl_steps):
            run()
        clock.sync()
        out[label] = (time.perf_counter() - t0) / rigl_steps
        if sp is not None:
            out["rigl_updates"] = len(sp.updates)
    return out


def quickstart_row(devices: list, timeout: float = 3600) -> dict:
    """Wall time of ``twinsparse run experiments/quickstart.toml`` on each device (a fresh process
    each, so import and start-up are counted alike)."""
    cfg = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "quickstart.toml")
    out = {}
    for dev in devices:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "twinsparse", "run", os.path.abspath(cfg), "--device", dev,
                                "--output", os.path.join(tmp, "qs"), "--no-progress"],
                               capture_output=True, text=True, timeout=timeout)
            wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"the quickstart failed on {dev}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        out[dev] = wall
    return out
