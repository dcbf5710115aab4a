"""The Sparsifier in the loops people already write: GradScaler, gradient clipping, LR schedulers
(on the Sparsifier or on the wrapped optimizer), a stray optimizer.step(), tied weights, wrapped
models (torch.compile's _orig_mod, DataParallel's module), methods by name, step() without backward."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinsparse.accel import Sparsifier, densities, methods
from twinsparse.accel.models import MLP


def _model(seed=0):
    torch.manual_seed(seed)
    return MLP(sizes=(12, 16, 8, 4))


def _data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def _zero_off_mask(sp):
    for n, p in sp.params.items():
        assert not p.detach()[~sp.masks[n]].any(), n


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_gradscaler_step_equals_the_unscaled_step_and_skips_overflows(opt_name):
    make = (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)) if opt_name == "sgd" else \
        (lambda ps: torch.optim.AdamW(ps, lr=0.01))
    data = _data()
    m1 = _model()
    sp1 = Sparsifier(m1, make(m1.parameters()), density=densities.erk(0.3), method=methods.RigL(delta_t=3, t_end=100))
    for x, y in data:
        sp1.zero_grad()
        F.cross_entropy(m1(x), y).backward()
        sp1.step()
    m2 = _model()
    sp2 = Sparsifier(m2, make(m2.parameters()), density=densities.erk(0.3), method=methods.RigL(delta_t=3, t_end=100))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for x, y in data:
        sp2.zero_grad()
        scaler.scale(F.cross_entropy(m2(x), y)).backward()
        scaler.step(sp2)
        scaler.update()
    assert [u["t"] for u in sp2.updates] == [3, 6]
    for a, b in zip(m1.parameters(), m2.parameters()):     # a power-of-two scale unscales exactly
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    _zero_off_mask(sp2)
    # an overflow: GradScaler's skip, silently (no NonFiniteGradientError), the scale halves
    before = [p.detach().clone() for p in m2.parameters()]
    sp2.zero_grad()
    scaler.scale(F.cross_entropy(m2(data[0][0]), data[0][1])).backward()
    next(iter(m2.parameters())).grad.view(-1)[0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(sp2)
    scaler.update()
    assert scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, m2.parameters()))
    assert sp2.check_nonfinite() == 0


def test_clip_grad_norm_uses_the_surviving_gradients_and_keeps_the_dense_ones():
    m = _model()
    sp = Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), density=densities.erk(0.3), method=methods.Static())
    x, y = _data(1)[0]
    F.cross_entropy(m(x), y).backward()
    dense = {n: p.grad.clone() for n, p in m.named_parameters()}
    surviving = [dense[n] * sp.masks[n] if n in sp.masks else dense[n] for n in dense]
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in surviving]))
    full = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in dense.values()]))
    assert want < full                                     # the clip must not use the dense norm
    total = sp.clip_grad_norm_(want.item() / 4)
    torch.testing.assert_close(total, want)
    for n, p in m.named_parameters():                      # every gradient scaled, pruned positions kept
        torch.testing.assert_close(p.grad, dense[n] * (want / 4 / (want + 1e-6)))
    with pytest.raises(ValueError, match="max_norm=0.0"):
        sp.clip_grad_norm_(0.0)


def test_lr_schedulers_accept_the_sparsifier_or_its_optimizer():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sp = Sparsifier(m, opt, density=0.5, method=methods.Static())
    assert isinstance(sp, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(sp, step_size=2, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # no "scheduler.step() before optimizer.step()"
        for x, y in _data(4):
            sp.zero_grad()
            F.cross_entropy(m(x), y).backward()
            sp.step()
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sp = Sparsifier(m, opt, density=0.5, method=methods.Static())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)   # built on the wrapped optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in _data(2):
            sp.zero_grad()
            F.cross_entropy(m(x), y).backward()
            sp.step()
            sched.step()


def test_a_stray_optimizer_step_is_refused_until_squash():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    sp = Sparsifier(m, opt, density=0.5, method=methods.Static())
    x, y = _data(1)[0]
    F.cross_entropy(m(x), y).backward()
    with pytest.raises(RuntimeError, match=r"optimizer.step\(\) was called directly.*sparsifier.step\(\)"):
        opt.step()
    _zero_off_mask(sp)
    sp.step()                                  # the Sparsifier's own step still runs (fused, no hook in the way)
    assert sp._engine.last_path == "torch"
    sp.squash()
    opt.step()                                 # after squash the optimizer is the user's again


def test_tied_weights_are_pruned_once_with_one_mask():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight          # tied
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.b(torch.relu(self.a(x))))
    torch.manual_seed(0)
    m = Tied()
    with pytest.warns(UserWarning, match=r"'a.weight' is the same tensor as \['b.weight'\]"):
        sp = Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), density=0.5, method=methods.Static())
    assert list(sp.params) == ["a.weight", "head.weight"] and sp.shared == {"a.weight": ["b.weight"]}
    actual = sum(int((p != 0).sum()) for p in sp.params.values()) / sp.n_prunable
    assert actual == pytest.approx(sp.total_density())   # reported = actual (once, not twice)


def test_wrapped_models_give_plain_names_and_states_that_load_across():
    class CompiledLike(nn.Module):                # what torch.compile returns: the model under _orig_mod
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

        def forward(self, x):
            return self._orig_mod(x)
    for wrap in (CompiledLike, nn.DataParallel):
        m = _model()
        sp = Sparsifier(wrap(m), torch.optim.SGD(m.parameters(), lr=0.1), density=0.5, method=methods.Static())
        assert list(sp.params) == ["fc.0.weight", "fc.1.weight", "fc.2.weight"]
        plain = _model()
        sp_plain = Sparsifier(plain, torch.optim.SGD(plain.parameters(), lr=0.1), density=0.5, method=methods.Static())
        sp_plain.load_state_dict(sp.state_dict())
        assert all(torch.equal(sp.masks[n], sp_plain.masks[n]) for n in sp.masks)


def test_methods_by_name_take_their_schedule_from_total_steps():
    m = _model()
    sp = Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), density=0.2, method="rigl", total_steps=400)
    assert sp.method.name == "rigl" and 0 < sp.method.t_end <= 400
    m = _model()
    sp = Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), density=0.2, method="gmp", total_steps=400)
    assert sp.method.final_density == 0.2 and sp.total_density() == 1.0     # GMP starts dense
    m = _model()
    with pytest.raises(ValueError, match="method 'rigl' by name needs total_steps="):
        Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), density=0.2, method="rigl")
    m = _model()
    sp = Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), method=methods.GMP(final_density=0.1, prune_end=50))
    assert sp.total_density() == 1.0                        # no density needed for a method that starts dense
    from twinsparse.accel.methods import SupTickets
    assert SupTickets.name == "suptickets"


def test_step_before_backward_is_an_error_and_counts_nothing():
    m = _model()
    sp = Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), density=0.5, method=methods.Static())
    with pytest.raises(RuntimeError, match=r"no gradient.*call loss.backward\(\) before step\(\)"):
        sp.step()
    assert sp.step_count == 0
