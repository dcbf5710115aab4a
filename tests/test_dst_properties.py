"""Hypothesis property tests of the invariants of every method over random models and densities.

After every iteration: per-layer active counts exactly as initialised (GraNet: the schedule's
total; SNFS with redistribution: the initial total), pruned weights and every optimizer slot
exactly 0, nothing non-finite, explored >= mask, R non-decreasing; DST-EE counters = initial mask
+ every post-update mask.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, strategies as st

from twinsparse.accel import Sparsifier, densities, methods


class _Net(nn.Module):
    def __init__(self, conv: bool, widths):
        super().__init__()
        self.conv = nn.Conv2d(1, widths[0], 3, padding=1) if conv else None
        n_in = widths[0] * 16 if conv else 16
        dims = [n_in, *widths[1:], 3]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, x):
        if self.conv is not None:
            x = F.relu(self.conv(x.view(-1, 1, 4, 4)))
        x = x.flatten(1)
        for i, lin in enumerate(self.fc):
            x = lin(x) if i == len(self.fc) - 1 else F.relu(lin(x))
        return x


@st.composite
def _setups(draw):
    name = draw(st.sampled_from(["set", "rigl", "snfs", "granet", "dst_ee"]))
    kw = dict(delta_t=draw(st.integers(1, 3)), drop_fraction=draw(st.floats(0.0, 1.0)),
              fraction_schedule=draw(st.sampled_from(["constant", "cosine", "linear"])), t_end=10,
              step_on_update=draw(st.booleans()), init=draw(st.sampled_from(["random", "magnitude"])))
    density = draw(st.floats(0.05, 0.9))
    if name == "granet":
        kw.update(final_density=density * draw(st.floats(0.3, 1.0)), prune_end=6, delta_t=2)
    if name == "dst_ee":
        kw.update(c=draw(st.sampled_from([0.0, 1e-3, 1.0])), eps=draw(st.sampled_from([1e-6, 1.0])),
                  counter_init=draw(st.sampled_from(["mask", "zeros"])))
    if name == "snfs":
        kw.update(redistribute=draw(st.booleans()))
    return dict(name=name, kw=kw, density=density, conv=draw(st.booleans()),
                widths=draw(st.lists(st.integers(2, 9), min_size=1, max_size=3)),
                dist=draw(st.sampled_from(["erk", "uniform"])), opt=draw(st.sampled_from(["sgd", "adam"])),
                seed=draw(st.integers(0, 1000)))


def model_and_optimizer(s):
    """The drawn network (seeded) and its optimizer: SGD with momentum and weight decay, or AdamW."""
    torch.manual_seed(s["seed"])
    model = _Net(s["conv"], s["widths"])
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2) if s["opt"] == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=0.01))
    return model, opt


@given(_setups())
def test_method_invariants(s):
    model, opt = model_and_optimizer(s)
    spec = densities.erk(s["density"]) if s["dist"] == "erk" else densities.uniform(s["density"])
    sp = Sparsifier(model, opt, density=spec, method=methods.build(s["name"], **s["kw"]), seed=s["seed"])
    init = {n: int(m.sum()) for n, m in sp.masks.items()}
    first_masks = {n: m.clone() for n, m in sp.masks.items()}
    counters = {n: m.long() for n, m in first_masks.items()}
    if s["name"] == "dst_ee" and s["kw"]["counter_init"] == "zeros":
        counters = {n: torch.zeros_like(c) for n, c in counters.items()}
    r_prev = sp.exploration_degree()
    g = torch.Generator().manual_seed(s["seed"])
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 16, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()
        n_updates = len(sp.updates)
        sp.step()
        counts = {n: int(m.sum()) for n, m in sp.masks.items()}
        if s["name"] == "granet":
            if sp.updates:
                assert sum(counts.values()) == sp.updates[-1]["target_active"]
        elif s["name"] == "snfs" and s["kw"]["redistribute"]:
            assert sum(counts.values()) == sum(init.values())
        else:
            assert counts == init
        for n, p in sp.params.items():
            off = ~sp.masks[n]
            assert torch.all(p[off] == 0) and bool(torch.isfinite(p).all())
            for v in opt.state[p].values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert torch.all(v[off] == 0)
            assert torch.all(sp.explored[n] | ~sp.masks[n])
        r = sp.exploration_degree()
        assert r >= r_prev - 1e-15
        r_prev = r
        if len(sp.updates) > n_updates:
            counters = {n: c + sp.masks[n].long() for n, c in counters.items()}
    if s["name"] == "dst_ee":
        assert all(torch.equal(sp.method_state["counters"][n], counters[n]) for n in counters)
