"""The kernel rows of ``twinsparse bench``: each mask-maintenance hot path on ResNet-50's weights
against its bandwidth floor (the bytes it must move over the measured copy bandwidth) and against
torch's own built-in where one exists. Inputs rotate through more memory than the L2 cache holds."""
from __future__ import annotations

import torch

from ..flat import Layout
from .shapes import resnet50_shapes
from .timing import Clock, copies_beyond_l2

__all__ = ["hot_path_rows"]


class _Case:
    """ResNet-50's prunable weights (float32) with random masks, gradients and counters, ``copies``
    times (rotated between calls)."""

    def __init__(self, dev, width: int, density: float, copies: int):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.shapes = resnet50_shapes(width=width)
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        self.n = sum(self.sizes)
        self.layout = Layout([f"l{i}" for i in range(len(self.shapes))], self.shapes)
        self.sets = []
        for _ in range(copies):
            masks = [(torch.rand(s, generator=g) < density) for s in self.shapes]
            w = [torch.randn(s, generator=g) * m for s, m in zip(self.shapes, masks)]
            grads = [torch.randn(s, generator=g) for s in self.shapes]
            self.sets.append({
                "masks": [m.to(dev) for m in masks], "w": [x.to(dev) for x in w], "g": [x.to(dev) for x in grads],
                "counters": [torch.randint(0, 5, s, generator=g).to(dev) for s in self.shapes],
                "flat_w": torch.cat([x.reshape(-1) for x in w]).abs().to(dev),
                "flat_g": torch.cat([x.reshape(-1) for x in grads]).abs().to(dev),
                "flat_m": torch.cat([m.reshape(-1) for m in masks]).to(dev),
                "n_active": [int(m.sum()) for m in masks],      # each copy has its own random masks
            })
        self.i = 0

    def rotate(self, i):
        self.i = i % len(self.sets)

    @property
    def cur(self):
        return self.sets[self.i]


def hot_path_rows(clock: Clock, width: int, repeats: int, bw: float, density: float = 0.1) -> dict:
    """Seconds (medians) and floors of each hot path; the ratios are formed by the caller."""
    from .. import cocktail_ops, dst, masks, merge, topk
    dev = clock.device
    bytes_one = sum(int(torch.Size(s).numel()) for s in resnet50_shapes(width=width)) * 4
    case = _Case(dev, width, density, copies_beyond_l2(bytes_one * 4, dev, budget=1 << 30))
    n, out = case.n, {"weights": case.n, "layers": len(case.shapes)}
    floor = lambda nbytes: nbytes / bw  # noqa: E731
    rot = case.rotate

    # global exact top-k (the tie rule), k = 10 %
    k = int(0.1 * n)
    out["topk_global"] = clock.time(lambda: topk.topk_mask(case.cur["flat_w"], k), repeats, before=rot)
    out["torch_topk"] = clock.time(lambda: torch.topk(case.cur["flat_w"], k, sorted=False), repeats, before=rot)
    out["torch_sort_stable"] = clock.time(lambda: torch.sort(case.cur["flat_w"], descending=True, stable=True),
                                          repeats, before=rot)
    out["topk_global_floor"] = floor(4 * n)                    # one read of the scores
    # segmented top-k, one segment per layer (per-layer magnitude masks)
    ks = [int(s * density + 0.5) for s in case.sizes]
    out["topk_segmented"] = clock.time(lambda: topk.select_segments(case.cur["flat_w"], None, case.layout, ks),
                                       repeats, before=rot)
    out["topk_segmented_floor"] = floor(5 * n)
    # RigL drop and grow (two segmented selections)
    for c in case.sets:
        c["kd"] = [a - int(0.3 * a) for a in c["n_active"]]
        c["kg"] = [int(0.3 * a) for a in c["n_active"]]

    def drop_grow():
        c = case.cur
        kept = topk.select_segments(c["flat_w"], c["flat_m"], case.layout, c["kd"], n_cand=sum(c["n_active"]))
        return topk.select_segments(c["flat_g"], ~kept, case.layout, c["kg"], n_cand=n - sum(c["kd"]), or_with=kept)
    out["drop_grow"] = clock.time(drop_grow, repeats, before=rot)
    out["drop_grow_floor"] = floor(10 * n)
    # N:M 2:4 on every weight whose reduction dimension divides by 4, and on one 8192 x 8192
    nm_names = [f"l{i}" for i, s in enumerate(case.shapes) if s[1] % 4 == 0]
    nm_n = sum(case.sizes[int(x[1:])] for x in nm_names)
    out["nm_model"] = clock.time(lambda: masks.nm_masks({x: case.cur["w"][int(x[1:])] for x in nm_names}, 2, 4),
                                 repeats, before=rot)
    out["nm_model_bytes"] = 5 * nm_n
    side = 8192 if dev.type == "cuda" else 1024
    big = [torch.randn(side, side, device=dev) for _ in range(copies_beyond_l2(side * side * 4, dev, budget=1 << 30))]
    sel = {"i": 0}
    out["nm_big"] = clock.time(lambda: masks.nm_mask(big[sel["i"]], 2, 4), repeats,
                               before=lambda i: sel.__setitem__("i", i % len(big)))
    out["nm_big_side"] = side
    out["nm_big_bytes"] = 5 * side * side
    # UMG channel scores of every layer
    umg_all = getattr(cocktail_ops, "umg_channel_scores_all", None)
    if umg_all is not None:
        fn = lambda: umg_all(case.cur["w"], case.cur["masks"], case.cur["masks"], 0.5)  # noqa: E731
    else:
        fn = lambda: [cocktail_ops.umg_channel_scores(w, m, m, 0.5) for w, m in zip(case.cur["w"], case.cur["masks"])]  # noqa: E731
    out["umg"] = clock.time(fn, repeats, before=rot)
    out["umg_floor"] = floor(6 * n)
    # DST-EE scores and the Sup-tickets running average (CIA)
    names = case.layout.names
    out["dst_ee"] = clock.time(lambda: dst.dst_ee_scores(dict(zip(names, case.cur["g"])),
                                                         dict(zip(names, case.cur["counters"])), 1000, 1e-3, 1.0),
                               repeats, before=rot)
    out["dst_ee_floor"] = floor(16 * n)
    out["cia"] = clock.time(lambda: merge.superpose_cia(dict(zip(names, case.cur["w"])),
                                                        dict(zip(names, case.cur["g"])), 3), repeats, before=rot)
    out["cia_floor"] = floor(12 * n)
    return out
