"""``twinsparse bench``: the hot paths of sparse training, each timed four ways (issue 6).

    twinsparse bench [--quick] [--device auto|cpu|cuda] [--models resnet18 resnet50] [--density 0.1]
                     [--repeats N] [--out FILE]

For every hot path, on the prunable weight shapes of ResNet-18 (CIFAR form, ``accel.models``)
and ResNet-50 (ImageNet form, a list of shapes: no model is built), the median time of

  (a) kernel   the CuPy CUDA kernel of ``accel/kernels`` ("n/a (no CUDA)" without CUDA + CuPy),
  (b) torch    plain torch ops over the whole model (what accel runs without the kernels),
  (c) loop     a per-layer loop baseline (torch.topk / sort per layer, per-layer SGD, ...),
  (d) floor    the bandwidth floor: the fewest bytes the operation must move (each input read
               once, each output written once) over the bandwidth of a measured device-to-device
               copy (bytes read + bytes written),

and the ratios to the floor and (b)/(a). Then end-to-end ResNet-18 training-step timings (dense
SGD step; Sparsifier step with and without the kernels; one RigL mask update). ``--quick``
divides every channel count by 4, uses fewer repeats and a small batch: a smoke run that
finishes in well under a minute on a CPU.

Selections (c) with torch.topk / sort do not apply the project's tie rule; they are timing
baselines only. Masks are uniform random at ``--density`` per layer.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

import torch

from . import kernels

NA = "n/a (no CUDA)"


# ----------------------------------------------------------------------------- shapes

def resnet18_shapes(width: int = 64, num_classes: int = 10) -> list[tuple]:
    """Prunable weight shapes (Conv/Linear, PyTorch layout) of accel.models.ResNet18 (CIFAR form)."""
    from .models import ResNet18
    model = ResNet18(in_channels=3, num_classes=num_classes, width=width)
    return [tuple(p.shape) for p in model.parameters() if p.dim() > 1]


def resnet50_shapes(width: int = 64, num_classes: int = 1000) -> list[tuple]:
    """Prunable weight shapes of the ImageNet ResNet-50 (torchvision layout, bottleneck expansion 4):
    7x7 stem, stages of 3/4/6/3 bottlenecks (1x1, 3x3, 1x1, 1x1 projection in each first block), fc."""
    shapes = [(width, 3, 7, 7)]
    cin = width
    for mult, blocks in ((1, 3), (2, 4), (4, 6), (8, 3)):
        w = mult * width
        for b in range(blocks):
            shapes += [(w, cin, 1, 1), (w, w, 3, 3), (4 * w, w, 1, 1)]
            if b == 0:
                shapes.append((4 * w, cin, 1, 1))
            cin = 4 * w
    shapes.append((num_classes, cin))
    return shapes


# ----------------------------------------------------------------------------- timing

def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_time(fn, dev: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (device synchronized
    around each run, so asynchronous launches are counted to completion)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def copy_bandwidth(dev: torch.device, nbytes: int, repeats: int) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), dev, repeats)
    return 2 * src.numel() * 4 / t


@contextlib.contextmanager
def torch_only():
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


# ----------------------------------------------------------------------------- hot paths

class Case:
    """One model's tensors for the hot paths (float32, uniform random masks of the density)."""

    def __init__(self, shapes, dev, density, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.dev, self.density = dev, density
        self.shapes = shapes
        self.sizes = [int(torch.Size(s).numel()) for s in shapes]
        self.n = sum(self.sizes)
        self.masks = [(torch.rand(s, generator=g) < density).to(dev) for s in shapes]
        self.w = [(torch.randn(s, generator=g) * m.cpu()).to(dev) for s, m in zip(shapes, self.masks)]
        self.g = [torch.randn(s, generator=g).to(dev) for s in shapes]
        self.buf = [(torch.randn(s, generator=g) * m.cpu()).to(dev) for s, m in zip(shapes, self.masks)]
        self.counters = [torch.randint(0, 5, s, generator=g).to(dev) for s in shapes]
        self.n_active = [int(m.sum()) for m in self.masks]


def _row(name, a, b, c, floor, note=""):
    return {"path": name, "a": a, "b": b, "c": c, "floor": floor, "note": note}


def bench_masked_sgd(case: Case, repeats: int, use_kernel: bool) -> dict:
    dev = case.dev
    hp = dict(lr=0.01, momentum=0.9, weight_decay=5e-4, dampening=0.0, nesterov=False)
    floor_bytes = case.n * (4 * 5 + 1)             # read w, g, buf, mask; write w, buf

    def params():
        ps = [torch.nn.Parameter(w.clone()) for w in case.w]
        for p, g in zip(ps, case.g):
            p.grad = g.clone()
        return ps

    a = None
    if use_kernel:
        ws, gs, bufs = [w.clone() for w in case.w], [g.clone() for g in case.g], [b.clone() for b in case.buf]
        a = median_time(lambda: kernels.sgd_step(ws, gs, case.masks, bufs, bufs, **hp), dev, repeats)
    mf = [m.float() for m in case.masks]
    timings = {}
    for label, foreach in (("b", True), ("c", False)):
        ps = params()
        opt = torch.optim.SGD(ps, foreach=foreach, **hp)
        opt.step()                                  # creates the momentum buffers

        def step(ps=ps, opt=opt, foreach=foreach):
            grads = [p.grad for p in ps]
            if foreach:
                torch._foreach_mul_(grads, mf)
            else:
                for g_, m_ in zip(grads, mf):
                    g_.mul_(m_)
            opt.step()
        timings[label] = median_time(step, dev, repeats)
    ps = params()
    dense = torch.optim.SGD(ps, foreach=True, **hp)
    dense.step()
    d = median_time(dense.step, dev, repeats)
    return _row("masked SGD-momentum step", a, timings["b"], timings["c"], floor_bytes,
                f"dense torch foreach SGD step {d * 1e3:.3f} ms; (b) = foreach mask + foreach SGD, "
                f"(c) = per-layer mask + for-loop SGD")


def bench_topk_per_layer(case: Case, repeats: int, use_kernel: bool) -> dict:
    from .flat import Layout
    from .topk import select_segments
    dev = case.dev
    scores = torch.cat([w.abs().reshape(-1) for w in case.w]) + torch.rand(case.n, device=dev) * 1e-3
    ks = [int(s * case.density + 0.5) for s in case.sizes]
    lay = Layout([str(i) for i in range(len(case.sizes))], [(s,) for s in case.sizes])
    a = median_time(lambda: kernels.topk_select(scores, case.sizes, ks), dev, repeats) if use_kernel else None
    b = median_time(lambda: select_segments(scores, None, lay, ks, strategy="sort"), dev, repeats)
    parts = scores.split(case.sizes)

    def loop():
        out = torch.zeros(case.n, dtype=torch.bool, device=dev)
        for o, s, k in zip(out.split(case.sizes), parts, ks):
            o[torch.topk(s, k, sorted=False).indices] = True
        return out
    c = median_time(loop, dev, repeats)
    return _row("top-k per layer (magnitude)", a, b, c, case.n * 5,
                "(b) = whole-model stable sorts (accel.dst 'sort'), (c) = per-layer torch.topk loop")


def bench_topk_global(case: Case, repeats: int, use_kernel: bool) -> dict:
    from . import topk as T
    dev = case.dev
    scores = torch.cat([w.abs().reshape(-1) for w in case.w]) + torch.rand(case.n, device=dev) * 1e-3
    k = int(case.n * case.density + 0.5)
    a = median_time(lambda: kernels.topk_select(scores, [case.n], [k]), dev, repeats) if use_kernel else None
    with torch_only():
        b = median_time(lambda: T.topk_mask(scores, k), dev, repeats)
    c = median_time(lambda: torch.sort(scores, descending=True, stable=True), dev, repeats)
    return _row("top-k global (magnitude)", a, b, c, case.n * 5,
                "(b) = kthvalue + tie cumsum (accel.topk torch path), (c) = full stable torch.sort")


def bench_nm(case: Case, repeats: int, use_kernel: bool) -> dict:
    from . import masks as M
    dev = case.dev
    ws = [w for w in case.w if w.shape[1] % 4 == 0]
    n = sum(w.numel() for w in ws)
    a = median_time(lambda: [kernels.nm_mask(w, 2, 4, "reduction") for w in ws], dev, repeats) if use_kernel else None
    with torch_only():
        b = median_time(lambda: [M.nm_mask(w, 2, 4) for w in ws], dev, repeats)

    def loop():
        out = []
        for w in ws:
            cl = w.permute(0, 2, 3, 1) if w.dim() == 4 else w
            grp = cl.abs().reshape(-1, 4)
            keep = torch.zeros_like(grp, dtype=torch.bool)
            keep.scatter_(1, grp.topk(2, dim=1).indices, True)
            out.append(keep)
        return out
    c = median_time(loop, dev, repeats)
    return _row("N:M 2:4 mask (reduction dim)", a, b, c, n * 5,
                f"{len(ws)} layers with I % 4 == 0; (a) one launch per layer; (c) = per-layer group topk")


def bench_drop_and_grow(case: Case, repeats: int, use_kernel: bool) -> dict:
    from .flat import Layout
    from .topk import select_segments
    dev = case.dev
    lay = Layout([str(i) for i in range(len(case.sizes))], [(s,) for s in case.sizes])
    mask = torch.cat([m.reshape(-1) for m in case.masks])
    drop_s = torch.cat([w.abs().reshape(-1) for w in case.w])
    grow_s = torch.cat([g.abs().reshape(-1) for g in case.g])
    kd = [a - int(0.3 * a) for a in case.n_active]             # kept after dropping 30 %
    kg = [int(0.3 * a) for a in case.n_active]

    def run(strategy):
        kept = select_segments(drop_s, mask, lay, kd, n_cand=sum(case.n_active), strategy=strategy)
        return select_segments(grow_s, ~kept, lay, kg, n_cand=case.n - sum(kd), or_with=kept, strategy=strategy)

    def run_kernel():
        kept = kernels.topk_select(drop_s, case.sizes, kd, candidates=mask)
        return kernels.topk_select(grow_s, case.sizes, kg, candidates=kept, invert=True, or_with=kept)
    a = median_time(run_kernel, dev, repeats) if use_kernel else None
    b = median_time(lambda: run("sort"), dev, repeats)
    c = median_time(lambda: run("loop"), dev, repeats)
    return _row("RigL drop-and-grow (segmented)", a, b, c, case.n * (1 + 4 + 4 + 1),
                "drop 30 % of the active, grow as many; (b) = sorts, (c) = per-layer kthvalue loop")


def bench_dst_ee(case: Case, repeats: int, use_kernel: bool) -> dict:
    from . import dst as D
    dev = case.dev
    grads = {f"l{i}": g for i, g in enumerate(case.g)}
    counters = {f"l{i}": c for i, c in enumerate(case.counters)}
    a = median_time(lambda: kernels.dst_ee_scores(grads, counters, 1000, 1e-3, 1e-8, "eq1"), dev, repeats) \
        if use_kernel else None
    with torch_only():
        b = median_time(lambda: D.dst_ee_scores(grads, counters, 1000, 1e-3, 1e-8), dev, repeats)
    return _row("DST-EE scores |g| + c ln t/(N+eps)", a, b, None, case.n * (4 + 8 + 4),
                "(b) = accel per-layer torch ops")


def bench_cia(case: Case, repeats: int, use_kernel: bool) -> dict:
    from . import merge as MG
    dev = case.dev
    avg = {f"l{i}": w for i, w in enumerate(case.w)}
    tk = {f"l{i}": b for i, b in enumerate(case.buf)}
    a = median_time(lambda: kernels.superpose_cia(avg, tk, 3), dev, repeats) if use_kernel else None
    with torch_only():
        b = median_time(lambda: MG.superpose_cia(avg, tk, 3), dev, repeats)
    return _row("Sup-tickets running average (CIA)", a, b, None, case.n * 12, "(b) = accel per-tensor torch ops")


def bench_umg(case: Case, repeats: int, use_kernel: bool) -> dict:
    from . import cocktail_ops as C
    dev = case.dev
    a = median_time(lambda: [kernels.umg_channel_scores(w, m, m, 0.5) for w, m in zip(case.w, case.masks)],
                    dev, repeats) if use_kernel else None
    with torch_only():
        b = median_time(lambda: [C.umg_channel_scores(w, m, m, 0.5) for w, m in zip(case.w, case.masks)],
                        dev, repeats)
    return _row("UMG channel scores", a, b, None, case.n * 6, "(a), (b) one call per layer")


HOT_PATHS = (bench_masked_sgd, bench_topk_per_layer, bench_topk_global, bench_nm, bench_drop_and_grow,
             bench_dst_ee, bench_cia, bench_umg)


# ----------------------------------------------------------------------------- end to end

def bench_end_to_end(dev, width, batch, repeats, use_kernel, density) -> list[str]:
    import torch.nn.functional as F
    from . import Sparsifier, densities, methods
    from .models import ResNet18
    lines = []
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)

    def setup(method=None):
        torch.manual_seed(0)
        model = ResNet18(in_channels=3, num_classes=10, width=width).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        sp = None if method is None else Sparsifier(model, opt, density=densities.erk(density), method=method)
        return model, opt, sp

    def train_step(model, opt, step):
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        step()

    model, opt, _ = setup()
    dense = median_time(lambda: train_step(model, opt, opt.step), dev, repeats)
    dense_opt = median_time(opt.step, dev, repeats * 3)
    n = sum(p.numel() for p in model.parameters())
    lines.append(f"end to end: ResNet-18 (width {width}, {n} params), batch {batch}x3x32x32, ERK density {density}")
    lines.append(f"  dense SGD train step (fwd+bwd+opt)           {dense * 1e3:10.3f} ms")
    lines.append(f"  dense torch.optim.SGD step alone             {dense_opt * 1e3:10.3f} ms")
    big = 10 ** 9
    variants = [("kernels", False)] if use_kernel else []
    variants.append(("torch", True))
    for label, disable in variants:
        ctx = torch_only if disable else contextlib.nullcontext
        with ctx():
            model, opt, sp = setup(methods.Static())
            t = median_time(lambda: train_step(model, opt, sp.step), dev, repeats)
            s = median_time(lambda: sp._engine.step(None, None, masked=True, remask=False), dev, repeats * 3)
            model, opt, sp = setup(methods.RigL(t_end=big))
            train_step(model, opt, lambda: None)

            def update():
                sp.step_count = 99          # iteration 100: an update is due (delta_t = 100)
                sp.step()
            u = median_time(update, dev, repeats)
        lines.append(f"  sparse train step, Sparsifier ({label:7s})      {t * 1e3:10.3f} ms  {t / dense:6.2f}x dense")
        lines.append(f"  masked optimizer step alone ({label:7s})       {s * 1e3:10.3f} ms  {s / dense_opt:6.2f}x dense step")
        lines.append(f"  RigL mask update, whole model ({label:7s})     {u * 1e3:10.3f} ms  {u / dense:6.2f}x dense train step")
    return lines


# ----------------------------------------------------------------------------- driver

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt_ms(t) -> str:
    return f"{t * 1e3:10.3f}" if t is not None else f"{'—':>10s}"


def _fmt_ratio(x, y) -> str:
    return f"{x / y:7.2f}x" if x is not None and y else f"{'—':>8s}"


def format_table(rows: list[dict], bw: float, use_kernel: bool) -> list[str]:
    head = (f"  {'hot path':36s} {'(a) kernel':>14s} {'(b) torch':>10s} {'(c) loop':>10s} {'(d) floor':>10s}"
            f" {'a/d':>8s} {'b/d':>8s} {'c/d':>8s} {'b/a':>8s}")
    out = [head, "  " + "-" * (len(head) - 2)]
    for r in rows:
        floor = r["floor"] / bw
        a = _fmt_ms(r["a"]) if use_kernel else f"{NA:>14s}"
        out.append(f"  {r['path']:36s} {a:>14s} {_fmt_ms(r['b'])} {_fmt_ms(r['c'])} {_fmt_ms(floor)}"
                   f" {_fmt_ratio(r['a'], floor)} {_fmt_ratio(r['b'], floor)} {_fmt_ratio(r['c'], floor)}"
                   f" {_fmt_ratio(r['b'], r['a'])}")
        if r["note"]:
            out.append(f"  {'':36s} {r['note']}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="channel counts / 4, few repeats, small batch (smoke run)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"], choices=("resnet18", "resnet50"))
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--repeats", type=int, help="timed runs per measurement (default 5 quick, 20 full)")
    p.add_argument("--batch", type=int, help="end-to-end batch size (default 4 quick, 128 full)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end training-step timings")
    p.add_argument("--out", help="also write the report to this file")


def run(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("twinsparse: error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if not 0.0 < args.density < 1.0:
        print(f"twinsparse: error: --density {args.density} must be in (0, 1)", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    use_kernel = dev.type == "cuda" and kernels.available()
    repeats = args.repeats or (5 if args.quick else 20)
    scale = 4 if args.quick else 1
    lines = [f"twinsparse bench{' --quick' if args.quick else ''}: torch {torch.__version__}, device {dev}"
             + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else f" ({cpu_model()})")
             + f", threads {torch.get_num_threads()}, median of {repeats}",
             f"CUDA kernels: {'CuPy ' + kernels._import_cupy().__version__ if use_kernel else NA + ': ' + str(kernels.unavailable_reason() if dev.type == 'cuda' else 'device is cpu')}"]
    mb = (64 if args.quick else 512) if dev.type == "cuda" else (16 if args.quick else 128)
    bw = copy_bandwidth(dev, mb << 20, repeats)
    lines.append(f"bandwidth floor: device-to-device copy of {mb} MiB = {bw / 1e9:.1f} GB/s (read + write)")
    lines.append("ratios: x/d = time over the bandwidth floor (1.0 = at the floor); b/a = kernel speed-up over torch")
    print("\n".join(lines), flush=True)
    for name in args.models:
        shapes = (resnet18_shapes(64 // scale) if name == "resnet18" else resnet50_shapes(64 // scale))
        case = Case(shapes, dev, args.density)
        block = ["", f"{name}{' (channels / 4)' if scale > 1 else ''}: {len(shapes)} prunable tensors, "
                      f"{case.n} weights, density {args.density}, float32"]
        rows = [fn(case, repeats, use_kernel) for fn in HOT_PATHS]
        block += format_table(rows, bw, use_kernel)
        print("\n".join(block), flush=True)
        lines += block
        del case
    if not args.no_e2e:
        batch = args.batch or (4 if args.quick else 128)
        block = [""] + bench_end_to_end(dev, 64 // scale, batch, max(2, repeats // 2), use_kernel, args.density)
        print("\n".join(block), flush=True)
        lines += block
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="twinsparse bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
