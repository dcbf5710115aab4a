"""Dynamic sparse training through the Sparsifier: schedules, invariants, bad input, atomic updates."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twinsparse.accel import Sparsifier, densities, methods
from twinsparse.accel.models import MLP
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.methods import allocate_proportional
from twinsparse.reference.schedules import drop_fraction_at, gmp_density_at, update_due

SIZES = (12, 10, 8, 3)


def _run(method, n_steps=12, opt="sgd", seed=0, density=densities.erk(0.3), keep=None):
    torch.manual_seed(seed)
    model = MLP(sizes=SIZES).double()
    o = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if opt == "sgd"
         else torch.optim.Adam(model.parameters(), lr=0.01))
    sp = Sparsifier(model, o, density=density, method=method, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        o.zero_grad()
        F.cross_entropy(model(torch.randn(16, SIZES[0], generator=g, dtype=torch.float64)),
                        torch.randint(0, SIZES[-1], (16,), generator=g)).backward()
        sp.step()
        if keep is not None:
            keep(sp)
    return model, o, sp


def test_schedule_scalars():
    assert [update_due(t, 5, 0, 20) for t in (4, 5, 15, 20)] == [False, True, True, False]
    assert update_due(10, 5, 11, 30) is False
    assert drop_fraction_at(0, 0.3, "cosine", 0, 100) == pytest.approx(0.3)
    assert drop_fraction_at(50, 0.3, "cosine", 0, 100) == pytest.approx(0.15)
    assert drop_fraction_at(50, 0.3, "linear", 0, 100) == pytest.approx(0.15)
    assert drop_fraction_at(77, 0.3, "constant", 0, 100) == 0.3
    assert gmp_density_at(0, 0.5, 0.1, 0, 100) == pytest.approx(0.5)
    assert gmp_density_at(100, 0.5, 0.1, 0, 100) == pytest.approx(0.1)
    assert gmp_density_at(50, 0.5, 0.1, 0, 100) == pytest.approx(1 - (0.9 + (0.5 - 0.9) * 0.125))


@pytest.mark.parametrize("name,kw,needle", [
    ("rigl", dict(delta_t=0, t_end=10), "delta_t=0"),
    ("rigl", dict(delta_t=-3, t_end=10), "delta_t=-3"),
    ("set", dict(drop_fraction=1.5, t_end=10), "drop_fraction=1.5"),
    ("set", dict(drop_fraction=-0.1, t_end=10), "drop_fraction=-0.1"),
    ("rigl", dict(t_start=20, t_end=10), "t_end=10 is not after t_start=20"),
    ("rigl", dict(), "t_end is required"),
    ("rigl", dict(t_end=10, fraction_schedule="exp"), "fraction_schedule='exp'"),
    ("dst_ee", dict(t_end=10, c=-1.0), "c=-1.0"),
    ("dst_ee", dict(t_end=10, eps=0.0), "eps=0.0"),
    ("dst_ee", dict(t_end=10, eps=-1e-3), "eps=-0.001"),
    ("dst_ee", dict(t_end=10, counter_init="ones"), "counter_init='ones'"),
    ("dst_ee", dict(t_end=10, form="eq2"), "eq2"),
    ("snfs", dict(t_end=10, momentum=1.0), "momentum=1.0"),
    ("granet", dict(t_end=100, final_density=0.1), "prune_end is required"),
    ("granet", dict(t_end=100, delta_t=50, prune_end=60), "final density would never be reached"),
    ("rigl", dict(t_end=10, init="zeros"), "init='zeros'"),
    ("rigl", dict(t_end=10, delta=3), "bad option"),
    ("rigl2", dict(), "unknown method 'rigl2'"),
])
def test_bad_method_options(name, kw, needle):
    with pytest.raises(ValueError) as e:
        methods.build(name, **kw)
    assert needle in str(e.value)


@pytest.mark.parametrize("kw,needle", [
    (dict(method="dst_ee", density=0.1, c=-1.0), "c=-1.0"),
    (dict(method="dst_ee", density=0.1, eps=0.0), "eps=0.0"),
    (dict(method="rigl", density=0.1, delta_t=0), "delta_t=0"),
    (dict(method="rigl", density=0.1, drop_fraction=2.0), "drop_fraction=2.0"),
    (dict(method="granet", density=0.6, init_density=0.5), "init_density=0.5"),
    (dict(method="set", density=0.1, fraction_schedule="step"), "fraction_schedule='step'"),
])
def test_bad_run_config(kw, needle):
    with pytest.raises(ConfigError) as e:
        RunConfig(**kw).validate()
    assert needle in str(e.value)


def test_granet_final_above_initial_is_an_error():
    with pytest.raises(ValueError, match="above the initial density"):
        _run(methods.GraNet(delta_t=2, t_end=12, final_density=0.6, prune_end=6), density=densities.erk(0.3))


@pytest.mark.parametrize("name", ["set", "rigl", "snfs", "dst_ee"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_updates_keep_layer_counts_and_start_grown_weights_at_zero(name, opt):
    snaps = []

    def keep(sp):
        snaps.append((sp.step_count, {n: m.clone() for n, m in sp.masks.items()},
                      {n: p.detach().clone() for n, p in sp.params.items()},
                      {n: [v.clone() for v in sp.optimizer.state[p].values() if torch.is_tensor(v) and v.dim()]
                       for n, p in sp.params.items()}))
    model, o, sp = _run(methods.build(name, delta_t=3, drop_fraction=0.5, t_end=12), opt=opt, keep=keep)
    assert [u["t"] for u in sp.updates] == [3, 6, 9]
    init = snaps[0][1]
    for t, masks, weights, states in snaps:
        for n in masks:
            assert int(masks[n].sum()) == int(init[n].sum()), f"t={t}: layer {n} changed its count"
            assert torch.all(weights[n][~masks[n]] == 0)
            for v in states[n]:
                assert torch.all(v[~masks[n]] == 0)
    for (t0, m0, _, _), (t1, m1, w1, s1) in zip(snaps, snaps[1:]):
        if t1 in (3, 6, 9):  # update iteration, no optimizer step (Alg. 1): grown weights are exactly 0
            changed = sum(int((m0[n] ^ m1[n]).sum()) for n in m0)
            assert changed > 0, f"the update at t={t1} changed nothing"
            for n in m0:
                grown = m1[n] & ~m0[n]
                assert torch.all(w1[n][grown] == 0)
                for v in s1[n]:
                    assert torch.all(v[grown] == 0)
    assert all(u["dropped"] == u["grown"] for u in sp.updates)
    assert sp.exploration_degree() >= sp.total_density()


def test_dst_ee_counters_count_every_mask():
    hist = []
    m = methods.DSTEE(delta_t=2, drop_fraction=0.5, t_end=12, c=1e-2)
    model, o, sp = _run(m, keep=lambda sp: hist.append((sp.step_count, {n: x.clone() for n, x in sp.masks.items()})))
    first = hist[0][1]
    expected = {n: first[n].long().clone() for n in first}
    for t, masks in hist:
        if t % 2 == 0 and t < 12:
            for n in masks:
                expected[n] += masks[n].long()
    for n in expected:
        assert torch.equal(sp.method_state["counters"][n], expected[n])
    explored = {n: c > 0 for n, c in sp.method_state["counters"].items()}
    assert all(torch.equal(explored[n], sp.explored[n]) for n in explored)


def test_set_random_stream_is_step_indexed_and_seeded():
    a = _run(methods.SET(delta_t=3, t_end=12), seed=1)[2]
    b = _run(methods.SET(delta_t=3, t_end=12), seed=1)[2]
    c = _run(methods.SET(delta_t=3, t_end=12, init="random"), seed=1, density=densities.erk(0.3))[2]
    assert all(torch.equal(a.masks[n], b.masks[n]) and torch.equal(a.masks[n], c.masks[n]) for n in a.masks)
    d = _run(methods.SET(delta_t=3, t_end=12), seed=2)[2]
    assert any(not torch.equal(a.masks[n], d.masks[n]) for n in a.masks)


def test_granet_follows_the_cubic_schedule_to_the_final_density():
    m = methods.GraNet(delta_t=2, t_end=20, final_density=0.1, prune_end=10, drop_fraction=0.2)
    model, o, sp = _run(m, n_steps=20, density=densities.erk(0.5))
    n = sp.n_prunable
    d0 = sp.updates[0]["target_active"]
    assert d0 < 0.5 * n
    for u in sp.updates:
        target = int(np.floor(gmp_density_at(u["t"], sp.method_state["d_init"], 0.1, 0, 10) * n + 0.5))
        assert u["target_active"] == target
        assert round(u["density"] * n) == target
    assert sp.total_density() == pytest.approx(0.1, abs=1 / n)


def test_snfs_redistribution_preserves_the_total_only():
    counts = []
    m = methods.SNFS(delta_t=2, t_end=12, drop_fraction=0.5, redistribute=True)
    _run(m, keep=lambda sp: counts.append([int(x.sum()) for x in sp.masks.values()]))
    assert len({sum(c) for c in counts}) == 1, "the total number of active weights moved"
    assert len({tuple(c) for c in counts}) > 1, "redistribution never moved weights between layers"


def test_allocate_proportional():
    assert allocate_proportional(10, {"a": 1.0, "b": 1.0}, {"a": 100, "b": 100}) == {"a": 5, "b": 5}
    assert allocate_proportional(10, {"a": 3.0, "b": 1.0}, {"a": 4, "b": 100}) == {"a": 4, "b": 6}
    assert allocate_proportional(3, {"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}) == {"a": 2, "b": 1}
    assert allocate_proportional(4, {"a": 0.0, "b": 0.0}, {"a": 10, "b": 10}) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="free positions"):
        allocate_proportional(30, {"a": 1.0}, {"a": 10})


def _fresh_grads(model, bad=None):
    model.zero_grad()
    F.cross_entropy(model(torch.randn(16, SIZES[0], dtype=torch.float64)), torch.randint(0, 3, (16,))).backward()
    if bad is not None:
        model.fc[0].weight.grad[0, 0] = bad


def _snapshot(model, o, sp):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(o.state_dict()),
            {n: m.clone() for n, m in sp.masks.items()}, copy.deepcopy(sp.method_state), sp.step_count, len(sp.updates))


def _assert_same(a, b):
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    assert str(a[1]) == str(b[1])
    assert all(torch.equal(a[2][n], b[2][n]) for n in a[2])
    assert str(a[3]) == str(b[3])
    assert a[4:] == b[4:]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_at_an_update_raises_even_without_check_and_changes_nothing(bad):
    m = methods.DSTEE(delta_t=3, t_end=12)
    model, o, sp = _run(m, n_steps=2)
    sp.check_finite = False
    _fresh_grads(model, bad)
    before = _snapshot(model, o, sp)
    with pytest.raises(ValueError, match="non-finite"):
        sp.step()  # iteration 3 is an update
    _assert_same(before, _snapshot(model, o, sp))


class _Greedy(methods.RigL):
    """A broken method that tries to grow more weights than it dropped."""
    def grow_counts(self, ops, drop_counts, kept, state):
        sizes = ops.sizes(kept)
        return {n: sizes[n] for n in kept}


def test_a_failed_update_leaves_masks_weights_and_optimizer_state_unchanged():
    model, o, sp = _run(_Greedy(delta_t=3, t_end=12), n_steps=2)
    _fresh_grads(model)
    before = _snapshot(model, o, sp)
    with pytest.raises(ValueError, match="larger than the inactive pool"):
        sp.step()
    _assert_same(before, _snapshot(model, o, sp))


def test_state_dict_resume_reproduces_the_uninterrupted_run():
    def make():
        return methods.DSTEE(delta_t=2, drop_fraction=0.5, t_end=20, c=1e-2)
    full = _run(make(), n_steps=12, seed=3)
    torch.manual_seed(3)
    model = MLP(sizes=SIZES).double()
    o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sp = Sparsifier(model, o, density=densities.erk(0.3), method=make(), seed=3)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, SIZES[0], generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
               for _ in range(12)]
    for i, (x, y) in enumerate(batches):
        if i == 7:  # save, rebuild everything, load, continue
            blob = copy.deepcopy((model.state_dict(), o.state_dict(), sp.state_dict()))
            model = MLP(sizes=SIZES).double()
            o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
            sp = Sparsifier(model, o, density=densities.erk(0.3), method=make(), seed=3)
            model.load_state_dict(blob[0])
            o.load_state_dict(blob[1])
            sp.load_state_dict(blob[2])
        o.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sp.step()
    fm, fsp = full[0], full[2]
    assert all(torch.equal(fsp.masks[n], sp.masks[n]) for n in sp.masks)
    assert all(torch.equal(fsp.method_state["counters"][n], sp.method_state["counters"][n]) for n in sp.masks)
    for a, b in zip(fm.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert fsp.updates == sp.updates


def test_dst_ee_with_c_zero_is_rigl():
    """Eq. (1) with c = 0 leaves the exploitation term only: the run must equal RigL step for step."""
    a = _run(methods.DSTEE(delta_t=3, drop_fraction=0.5, t_end=12, c=0.0, fraction_schedule="cosine"), seed=4)
    b = _run(methods.RigL(delta_t=3, drop_fraction=0.5, t_end=12), seed=4)
    assert all(torch.equal(a[2].masks[n], b[2].masks[n]) for n in a[2].masks)
    assert all(torch.equal(p, q) for p, q in zip(a[0].parameters(), b[0].parameters()))
