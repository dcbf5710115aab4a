"""GMP (reference/methods/gmp.py): starts dense, prunes on the cubic schedule, masks nested, final
density exact, pruned weights never revive; both scopes; bad input."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from twinsparse.accel.runner import load_split
from twinsparse.accel.train import train_accel
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.methods import GMP
from twinsparse.reference.schedules import gmp_density_at


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_gmp_run_is_nested_and_ends_exactly_at_the_target(scope):
    cfg = RunConfig(method="gmp", density=0.05, gmp_scope=scope, delta_t=5, prune_end_fraction=0.5, epochs=2,
                    hidden=[64, 32], train_budget=500, batch_size=50).validate()
    history = []

    def on_step(t, model, sp):
        history.append({n: m.clone() for n, m in sp.masks.items()})
    out = train_accel(cfg, load_split(cfg), on_step=on_step)
    sp = out["sparsifier"]
    assert all(bool(m.all()) for m in history[0].values())  # dense until the first update (t = 5)
    for a, b in zip(history, history[1:]):  # nested: a pruned weight never returns
        assert all(bool((b[n] & ~a[n]).sum() == 0) for n in a)
    sizes = {n: m.numel() for n, m in sp.masks.items()}
    if scope == "global":
        assert sum(int(m.sum()) for m in sp.masks.values()) == math.floor(0.05 * sum(sizes.values()) + 0.5)
    else:
        assert all(int(sp.masks[n].sum()) == math.floor(0.05 * sizes[n] + 0.5) for n in sizes)
    for u in out["updates"]:
        assert u["target_density"] == pytest.approx(gmp_density_at(u["t"], 1.0, 0.05, 0, 10))
    for n, p in sp.params.items():
        assert torch.all(p[~sp.masks[n]] == 0)


def test_gmp_schedule_due_points():
    m = GMP(final_density=0.1, delta_t=4, prune_start=2, prune_end=11)
    assert [t for t in range(1, 20) if m.due(t)] == [4, 8, 11]
    assert m.density_at(2) == 1.0 and m.density_at(11) == pytest.approx(0.1)


@pytest.mark.parametrize("kw,msg", [(dict(final_density=0.0), "final_density=0.0"),
                                    (dict(prune_end=None), "prune_start < prune_end"),
                                    (dict(prune_start=5, prune_end=5), "prune_start < prune_end"),
                                    (dict(scope="per-channel"), "scope='per-channel'"),
                                    (dict(delta_t=0), "delta_t=0")])
def test_gmp_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GMP(**{"final_density": 0.1, "prune_end": 10, **kw})


def test_gmp_config_validation():
    with pytest.raises(ConfigError, match="gmp_scope='rows'"):
        RunConfig(method="gmp", density=0.1, gmp_scope="rows").validate()
    with pytest.raises(ConfigError, match="needs density < 1"):
        RunConfig(method="gmp", density=1.0).validate()


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(2, 9), min_size=1, max_size=3), final=st.floats(0.02, 0.9),
       delta_t=st.integers(1, 3), scope=st.sampled_from(["global", "layer"]), opt=st.sampled_from(["sgd", "adamw"]),
       seed=st.integers(0, 1000))
def test_gmp_invariants_over_random_models(widths, final, delta_t, scope, opt, seed):
    """After every iteration: masks nested, active count = the schedule's target at each update
    (exact), pruned weights and every optimizer slot exactly 0 (weight decay / momentum never
    revive them), nothing non-finite."""
    from twinsparse.accel import Sparsifier
    torch.manual_seed(seed)
    dims = [16, *widths, 3]
    model = torch.nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (torch.nn.Linear(a, b), torch.nn.ReLU())][:-1])
    o = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2) if opt == "sgd"
         else torch.optim.AdamW(model.parameters(), lr=0.01))
    m = GMP(final_density=final, delta_t=delta_t, prune_end=8, scope=scope)
    sp = Sparsifier(model, o, method=m, density=0.5, seed=seed)  # density unused: GMP starts dense
    g = torch.Generator().manual_seed(seed)
    prev = {n: k.clone() for n, k in sp.masks.items()}
    sizes = {n: k.numel() for n, k in sp.masks.items()}
    for t in range(1, 11):
        o.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 16, generator=g)),
                                          torch.randint(0, 3, (8,), generator=g)).backward()
        sp.step()
        for n, k in sp.masks.items():
            assert not bool((k & ~prev[n]).any())
            p = sp.params[n]
            assert torch.all(p[~k] == 0) and bool(torch.isfinite(p).all())
            assert all(torch.all(v[~k] == 0) for v in o.state[p].values() if torch.is_tensor(v) and v.shape == p.shape)
        if m.due(t):
            d = m.density_at(t)
            if scope == "global":
                want = min(math.floor(d * sum(sizes.values()) + 0.5), sum(int(k.sum()) for k in prev.values()))
                assert sum(int(k.sum()) for k in sp.masks.values()) == want
            else:
                assert all(int(sp.masks[n].sum()) == min(math.floor(d * sizes[n] + 0.5), int(prev[n].sum()))
                           for n in sizes)
        prev = {n: k.clone() for n, k in sp.masks.items()}
