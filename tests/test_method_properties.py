"""Hypothesis property tests of the invariants of the methods not covered by
test_dst_properties.py (static, GMP, AC/DC) over random models, densities and schedules.

After every iteration: nothing non-finite; pruned weights and every optimizer slot exactly 0;
explored >= mask. Static: per-layer counts as initialised, masks never change. GMP: masks only
shrink (nested), and after each update the count is exactly the cubic schedule's target (global or
per layer). AC/DC: all-ones masks in dense phases; in compressed phases exactly k of the prunable
weights (global or per layer) -- no weight of a compressed phase revives through momentum or weight
decay while the phase lasts.
"""
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from twinsparse.accel import Sparsifier, densities, methods
from twinsparse.reference._checks import count_for_density
from twinsparse.reference.acdc_ops import phase_at
from tests.test_dst_properties import model_and_optimizer


@st.composite
def _setups(draw):
    name = draw(st.sampled_from(["static", "gmp", "acdc"]))
    density = draw(st.floats(0.05, 0.9))
    if name == "static":
        kw = dict(init=draw(st.sampled_from(["random", "magnitude", "snip"])))
    elif name == "gmp":
        kw = dict(final_density=density, delta_t=draw(st.integers(1, 3)), prune_start=draw(st.integers(0, 3)),
                  prune_end=draw(st.integers(5, 9)), scope=draw(st.sampled_from(["global", "layer"])))
    else:  # 12 iterations = 6 epochs of 2: W C D C D C, or with a 2-epoch warm-up W C D C
        plan = draw(st.sampled_from([dict(warmup=1, compressed=1, decompressed=1, final_decompressed=1,
                                          final_compressed=1),
                                     dict(warmup=2, compressed=1, decompressed=1, final_decompressed=1,
                                          final_compressed=1)]))
        kw = dict(density=min(density, 0.89), total_epochs=6 if plan["warmup"] == 1 else 5, steps_per_epoch=2,
                  distribution=draw(st.sampled_from(["global", "uniform"])), **plan)
    return dict(name=name, kw=kw, density=density, conv=draw(st.booleans()),
                widths=draw(st.lists(st.integers(2, 9), min_size=1, max_size=3)),
                dist=draw(st.sampled_from(["erk", "uniform"])), opt=draw(st.sampled_from(["sgd", "adam"])),
                seed=draw(st.integers(0, 1000)))


def _check_zeros_and_finite(sp, opt):
    for n, p in sp.params.items():
        off = ~sp.masks[n]
        assert bool(torch.isfinite(p).all())
        assert torch.all(p[off] == 0), f"{n}: a pruned weight is non-zero"
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert torch.all(v[off] == 0), f"{n}: an optimizer slot of a pruned weight is non-zero"
        assert torch.all(sp.explored[n] | ~sp.masks[n])


@given(_setups())
def test_static_gmp_acdc_invariants(s):
    model, opt = model_and_optimizer(s)
    dense_start = s["name"] in ("gmp", "acdc")
    spec = (densities.uniform(1.0) if dense_start else
            densities.erk(s["density"]) if s["dist"] == "erk" else densities.uniform(s["density"]))
    method = methods.build(s["name"], **s["kw"])
    sp = Sparsifier(model, opt, density=spec, method=method, seed=s["seed"])
    g = torch.Generator().manual_seed(s["seed"])
    prev = init = None
    for t in range(1, 13 if s["name"] != "acdc" else s["kw"]["total_epochs"] * 2 + 1):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 16, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()
        sp.step()
        masks = {n: m.clone() for n, m in sp.masks.items()}
        counts = {n: int(m.sum()) for n, m in masks.items()}
        sizes = {n: m.numel() for n, m in masks.items()}
        _check_zeros_and_finite(sp, opt)
        if s["name"] == "static":
            init = init or counts
            assert counts == init and (prev is None or all(torch.equal(masks[n], prev[n]) for n in masks))
        elif s["name"] == "gmp":
            if prev is not None:
                assert all(not torch.any(masks[n] & ~prev[n]) for n in masks), "GMP masks must be nested"
            if method.prune_start <= t <= method.prune_end and (t % method.delta_t == 0 or t == method.prune_end):
                d = method.density_at(t)
                if s["kw"]["scope"] == "global":
                    assert sum(counts.values()) == min(count_for_density(d, sum(sizes.values())),
                                                       sum(int(prev[n].sum()) for n in prev) if prev else 10**9)
                else:
                    assert all(counts[n] == min(count_for_density(d, sizes[n]),
                                                int(prev[n].sum()) if prev else sizes[n]) for n in counts)
        else:
            phase = phase_at(method.phases, (t - 1) // 2)
            if phase.kind == "dense":
                assert all(c == sizes[n] for n, c in counts.items())
            elif s["kw"]["distribution"] == "global":
                assert sum(counts.values()) == count_for_density(method.density, sum(sizes.values()))
            else:
                assert all(c == count_for_density(method.density, sizes[n]) for n, c in counts.items())
        prev = masks
