"""Inputs and oracles shared by the kernel tests on a GPU (tests/test_kernels_gpu.py) and on the
SIMT emulator (tests/test_kernels_simt.py), so both check the kernels on the same adversarial cases."""
from __future__ import annotations

import numpy as np
import torch


def ref_topk_within(scores: torch.Tensor, cand, k: int) -> np.ndarray:
    """The keep set of a stable sort by (-score, index) among the candidates, on the CPU in float64
    (exact for float32 / float64 inputs)."""
    s = scores.double().cpu().numpy()
    c = np.ones(s.size, bool) if cand is None else cand.cpu().numpy()
    idx = np.flatnonzero(c)
    order = idx[np.lexsort((idx, -s[idx]))][:k]
    out = np.zeros(s.size, bool)
    out[order] = True
    return out


def segmented_case(sizes, dtype, ties: str, seed: int):
    """Scores over consecutive segments with ``ties`` "none" (Gaussian), "few" (7 values, -0.0
    next to +0.0) or "all" (every score 0), random candidates (60%), and a random k per segment
    with segment 5 keeping every candidate and segment 6 keeping none (when they exist)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    if ties == "none":
        s = torch.randn(n, generator=g, dtype=dtype)
    elif ties == "few":
        s = torch.randint(-3, 4, (n,), generator=g).to(dtype) * 0.5
        s[::7] = -0.0
    elif ties == "all":
        s = torch.zeros(n, dtype=dtype)
    else:
        raise ValueError(f"ties must be 'none', 'few' or 'all'; got {ties!r}")
    cand = torch.rand(n, generator=g) < 0.6
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    counts = [int(cand[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    ks = [int(torch.randint(0, c + 1, (1,), generator=g)) if c else 0 for c in counts]
    if len(ks) > 5:
        ks[5] = counts[5]
    if len(ks) > 6:
        ks[6] = 0
    return s, cand, ks


def check_segmented(out: np.ndarray, s: torch.Tensor, cand, sizes, ks) -> None:
    start = 0
    for i, (size, k) in enumerate(zip(sizes, ks)):
        c = None if cand is None else cand[start:start + size]
        want = ref_topk_within(s[start:start + size], c, k)
        assert np.array_equal(out[start:start + size], want), f"segment {i} (size {size}, k {k})"
        start += size


# (momentum, nesterov, dampening, weight_decay) of the masked SGD kernel cases
SGD_SETTINGS = [(0.0, False, 0.0, 0.0), (0.9, False, 0.0, 5e-4), (0.9, True, 0.0, 5e-4), (0.5, False, 0.1, 0.1)]


def sgd_case(shapes: dict, dtype, momentum: float, seed: int = 3):
    """Weights, gradients, masks (30% kept) and momentum buffers (None when ``momentum`` is 0) for
    the tensors ``shapes``; weights and buffers are zero off the mask, gradients are dense."""
    g = torch.Generator().manual_seed(seed)
    ws, gs, ms, bs = {}, {}, {}, {}
    for name, shp in shapes.items():
        ms[name] = torch.rand(shp, generator=g) < 0.3
        ws[name] = torch.randn(shp, generator=g, dtype=dtype) * ms[name]
        gs[name] = torch.randn(shp, generator=g, dtype=dtype)
        bs[name] = torch.randn(shp, generator=g, dtype=dtype) * ms[name] if momentum else None
    return ws, gs, ms, bs
