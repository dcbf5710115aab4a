"""Sup-tickets: schedule, cyclic LR, bad input, and the invariants of the ultimate ticket."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from twinsparse.accel import Sparsifier, densities, methods
from twinsparse.accel.models import MLP
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.methods import SupTickets
from twinsparse.reference.schedules import cyclic_lr


def test_cyclic_lr_is_the_eq3_triangle():
    vals = [cyclic_lr(i, 8) for i in range(1, 17)]
    assert vals[3] == pytest.approx(0.005) and vals[7] == pytest.approx(0.001) and vals[15] == pytest.approx(0.001)
    assert vals[:8] == pytest.approx(vals[8:])
    assert max(vals) == pytest.approx(0.005) and min(vals) >= 0.001 - 1e-15
    with pytest.raises(ValueError, match="C=0"):
        cyclic_lr(1, 0)
    with pytest.raises(ValueError, match="i=0"):
        cyclic_lr(0, 8)


def _st(**kw):
    base = kw.pop("base", methods.RigL(delta_t=5, t_end=80))
    return SupTickets(base=base, **{"total_steps": 100, "cycle": 3, **kw})


def test_schedule_of_the_superposing_stage():
    m = _st()
    assert m.stage_start == 90
    assert [t for t in range(1, 101) if m.collects(t)] == [93, 96, 99]
    assert m.due(5) and not m.due(93 - 1) and m.due(93) and m.update_after_step(93)
    assert m.lr_override(90) is None and m.lr_override(99) == pytest.approx(0.001)
    m4 = _st(n_tickets=4, cycle=5)
    assert m4.stage_start == 80 and [t for t in range(1, 101) if m4.collects(t)] == [85, 90, 95, 100]


@pytest.mark.parametrize("kw,needle", [
    (dict(cycle=11), "longer than the superposing stage"),
    (dict(cycle=0), "cycle=0"),
    (dict(n_tickets=40, cycle=3), "longer than training"),
    (dict(explore_fraction=1.5), "explore_fraction=1.5"),
    (dict(averaging="mean"), "averaging='mean'"),
    (dict(beta=-0.1), "beta=-0.1"),
    (dict(prune_scope="model"), "prune_scope='model'"),
    (dict(bn_avg="both"), "bn_avg='both'"),
    (dict(lr_low=0.01, lr_high=0.005), "lr_low"),
    (dict(base=methods.Dense()), "sparse base method"),
])
def test_bad_suptickets_options(kw, needle):
    with pytest.raises(ValueError) as e:
        _st(**kw)
    assert needle in str(e.value)


def test_bad_suptickets_config():
    with pytest.raises(ConfigError, match="sparse base"):
        RunConfig(method="dense", suptickets=True).validate()
    with pytest.raises(ConfigError, match="st_averaging"):
        RunConfig(method="rigl", density=0.1, suptickets=True, st_averaging="x").validate()
    with pytest.raises(ConfigError, match="st_lr_high"):
        RunConfig(method="rigl", density=0.1, suptickets=True, st_lr_low=0.01, st_lr_high=0.001).validate()


@given(st.sampled_from(["static", "set", "rigl", "granet", "dst_ee"]), st.sampled_from(["cia", "caa", "cima"]),
       st.sampled_from(["layer", "global"]), st.booleans(), st.sampled_from(["std", "var"]), st.integers(0, 100),
       st.floats(0.1, 0.6))
def test_ultimate_ticket_invariants(base_name, averaging, scope, each_step, bn_avg, seed, density):
    torch.manual_seed(seed)
    model = MLP(sizes=(10, 12, 8, 3), batchnorm=True).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    T = 40
    kw = {} if base_name == "static" else dict(delta_t=4, t_end=30)
    if base_name == "granet":
        kw.update(final_density=density * 0.5, prune_end=20)
    base = methods.build(base_name, **kw)
    m = SupTickets(base=base, total_steps=T, cycle=3, n_tickets=3, averaging=averaging, prune_scope=scope,
                   prune_each_step=each_step, bn_avg=bn_avg)
    sp = Sparsifier(model, opt, density=densities.erk(density), method=m, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for t in range(1, T + 1):
        for group in opt.param_groups:
            group["lr"] = m.lr_override(t) or 0.05
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 10, generator=g, dtype=torch.float64)),
                        torch.randint(0, 3, (8,), generator=g)).backward()
        sp.step()
    state = sp.method_state
    assert state["t"] == 3 and len(state["tickets"]) == 3
    ult, um = state["ultimate"], state["ultimate_masks"]
    active = {n: int(x.sum()) for n, x in sp.masks.items()}
    kept = {n: int(x.sum()) for n, x in um.items()}
    if scope == "layer":
        assert kept == active  # exactly at the layer densities of the training masks
    else:
        assert sum(kept.values()) == sum(active.values())
    for n, x in um.items():
        assert torch.all(ult[n][~x] == 0)
    for k, v in ult.items():
        if v.is_floating_point():
            assert bool(torch.isfinite(v).all()), k
    for i in range(2):
        mean_key, var_key = f"bn.{i}.running_mean", f"bn.{i}.running_var"
        means = torch.stack([tk[mean_key] for tk in state["tickets"]])
        var = torch.stack([tk[var_key] for tk in state["tickets"]])
        torch.testing.assert_close(ult[mean_key], means.mean(0))  # BN statistics: running average, any rule
        expected = var.sqrt().mean(0) ** 2 if bn_avg == "std" else var.mean(0)
        torch.testing.assert_close(ult[var_key], expected)
        assert bool((ult[var_key] >= 0).all())
    if averaging == "cia" and each_step is False:
        dense_avg = torch.stack([tk["fc.2.bias"] for tk in state["tickets"]]).mean(0)
        torch.testing.assert_close(ult["fc.2.bias"], dense_avg)


def test_state_dict_holds_the_tickets():
    model = MLP(sizes=(10, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    m = SupTickets(base=methods.RigL(delta_t=4, t_end=15), total_steps=20, cycle=2, n_tickets=2)
    sp = Sparsifier(model, opt, density=densities.erk(0.3), method=m)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 10)), torch.randint(0, 3, (4,))).backward()
        sp.step()
    sd = sp.state_dict()
    assert sd["method"]["state"]["t"] == 2 and len(sd["method"]["state"]["tickets"]) == 2
    model2 = MLP(sizes=(10, 8, 3))
    sp2 = Sparsifier(model2, torch.optim.SGD(model2.parameters(), lr=0.05), density=densities.erk(0.3),
                     method=SupTickets(base=methods.RigL(delta_t=4, t_end=15), total_steps=20, cycle=2, n_tickets=2))
    sp2.load_state_dict(sd)
    assert all(torch.equal(sp2.method_state["ultimate"][k], sp.method_state["ultimate"][k]) for k in sp.method_state["ultimate"])
    assert np.isclose(sp2.total_density(), sp.total_density())


def test_the_cyclic_lr_reaches_a_users_own_loop():
    """[ST] Eq. 3 is applied by the Sparsifier itself: a plain loop with its own (constant) LR gets
    the cyclic schedule in the superposing stage, and its own LR before it."""
    torch.manual_seed(0)
    model = MLP(sizes=(12, 16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    T, C = 40, 4
    method = SupTickets(base=methods.RigL(delta_t=5, t_end=30), total_steps=T, cycle=C)
    sp = Sparsifier(model, opt, density=densities.erk(0.3), method=method)
    seen = []
    for t in range(1, T + 1):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 12)), torch.randint(0, 4, (8,))).backward()
        sp.step()
        seen.append(opt.param_groups[0]["lr"])
    t0 = method.stage_start
    assert seen[:t0] == [0.1] * t0
    assert seen[t0:] == [cyclic_lr(t - t0, C, method.lr_low, method.lr_high) for t in range(t0 + 1, T + 1)]
    assert len(set(seen[t0:])) > 1
