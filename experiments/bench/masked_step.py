"""Benchmark: the Sparsifier's masked optimizer step vs a dense torch.optim.SGD step, same MLP.

    python experiments/bench/masked_step.py [--threads N] [--device cpu|cuda] [--repeats R]

Prints the median time of one optimizer step (gradients already computed) and the ratio
masked / dense. Issue #2 target on CPU: ratio <= 1.5 for LeNet-300-100.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from accel import Sparsifier, densities
from accel.models import MLP


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device, iters, repeats):
    for _ in range(20):
        step()
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        out.append((time.perf_counter() - t) / iters)
    return statistics.median(out)


def setup(device, sparse, check_finite=True):
    torch.manual_seed(0)
    model = MLP().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(64, 784, device=device), torch.randint(0, 10, (64,), device=device)
    F.cross_entropy(model(x), y).backward()
    if not sparse:
        return opt.step
    sp = Sparsifier(model, opt, density=densities.erk(0.1), check_finite=check_finite)
    return sp.step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, device {a.device}, threads {torch.get_num_threads()}, "
          f"MLP 784-300-100-10 ({sum(p.numel() for p in MLP().parameters())} params), ERK density 0.1")
    dense = time_steps(setup(a.device, False), a.device, a.iters, a.repeats)
    masked = time_steps(setup(a.device, True), a.device, a.iters, a.repeats)
    masked_nc = time_steps(setup(a.device, True, check_finite=False), a.device, a.iters, a.repeats)
    print(f"dense torch.optim.SGD step              : {dense * 1e6:8.1f} us")
    print(f"Sparsifier.step (finite check on)       : {masked * 1e6:8.1f} us  ratio {masked / dense:.2f}x")
    print(f"Sparsifier.step (check_finite=False)    : {masked_nc * 1e6:8.1f} us  ratio {masked_nc / dense:.2f}x")


if __name__ == "__main__":
    main()
