"""Benchmark: one mask update (whole model) and one masked step, relative to a dense SGD step.

    python experiments/bench/dst_update.py [--model mlp|cnn|resnet18] [--device cpu|cuda] [--threads N]

For each method (SET, RigL, SNFS, GraNet, DST-EE) at ERK density 0.1 it prints the median time of
(a) a dense torch.optim.SGD step, (b) Sparsifier.step without a mask update, (c) a full mask update
(drop -> score -> grow -> install, with its statistics), and the ratios (b)/(a), (c)/(a).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from accel import Sparsifier, densities, methods, ops
from accel.models import build_model

INPUTS = {"mlp": (1, 784), "cnn": (1, 1, 28, 28), "resnet18": (1, 3, 32, 32)}


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def median_time(fn, dev, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def setup(model_name, dev, method=None):
    torch.manual_seed(0)
    kw = {"in_channels": 3} if model_name == "resnet18" else {}
    model = build_model(model_name, **kw).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    shape = INPUTS[model_name]
    x = torch.randn(16, *shape[1:], device=dev)
    F.cross_entropy(model(x), torch.randint(0, 10, (16,), device=dev)).backward()
    sp = None if method is None else Sparsifier(model, opt, density=densities.erk(0.1), method=method)
    return model, opt, sp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp", choices=sorted(INPUTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = a.device
    model, opt, _ = setup(a.model, dev)
    n = sum(p.numel() for p in model.parameters())
    dense = median_time(opt.step, dev, a.repeats * 5)
    print(f"torch {torch.__version__}, device {dev}"
          f"{' (' + torch.cuda.get_device_name() + ')' if dev == 'cuda' else ''}, threads {torch.get_num_threads()}, "
          f"model {a.model} ({n} params), ERK density 0.1")
    print(f"dense torch.optim.SGD step: {dense * 1e3:9.3f} ms")
    print(f"{'method':8s} {'masked step':>12s} {'ratio':>7s} {'mask update':>12s} {'ratio':>8s}")
    big = 10 ** 9
    for name, m in [("set", methods.SET(t_end=big)), ("rigl", methods.RigL(t_end=big)),
                    ("snfs", methods.SNFS(t_end=big)), ("dst_ee", methods.DSTEE(t_end=big)),
                    ("granet", methods.GraNet(t_end=big, prune_end=big // 2, final_density=0.05))]:
        model, opt, sp = setup(a.model, dev, m)
        step = median_time(lambda: sp._masked_step([p.grad for p in sp.params.values()]), dev, a.repeats * 5)
        grads = {k: p.grad.detach() for k, p in sp.params.items()}
        state = sp.method.observe(ops, sp.state, 100, grads) if sp.method.observes_grads else sp.state
        upd = median_time(lambda: sp._update(100, grads, state), dev, a.repeats)
        print(f"{name:8s} {step * 1e3:9.3f} ms {step / dense:6.2f}x {upd * 1e3:9.3f} ms {upd / dense:7.1f}x")


if __name__ == "__main__":
    main()
