"""Masked SGD step: PyTorch convention, nothing revives, bad input on both twins."""
import numpy as np
import pytest
import torch

import twinsparse.accel.optim as A
import twinsparse.reference.optim as R


@pytest.mark.parametrize("hp", [dict(momentum=0.9, weight_decay=0.1), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, dampening=0.3, weight_decay=1e-3), dict()])
def test_reference_equals_torch_sgd_with_an_all_ones_mask(hp):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 4))
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = torch.optim.SGD([p], lr=0.1, **hp)
    buf = None
    for _ in range(4):
        g = rng.normal(size=w.shape)
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        w, buf = R.masked_sgd_step(w, g, np.ones(w.shape, bool), buf, lr=0.1, **hp)
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_pruned_entries_never_revive():
    rng = np.random.default_rng(1)
    mask = rng.random((6, 6)) < 0.3
    w, buf = rng.normal(size=(6, 6)) * mask, None
    for _ in range(10):
        w, buf = R.masked_sgd_step(w, rng.normal(size=(6, 6)), mask, buf, lr=0.1, momentum=0.9,
                                   weight_decay=0.5, nesterov=True)
        assert np.all(w[~mask] == 0) and np.all(buf[~mask] == 0)


@pytest.mark.parametrize("impl", [R, A])
def test_bad_inputs(impl):
    conv = (lambda a: torch.from_numpy(a)) if impl is A else (lambda a: a)
    w, g, m = np.zeros((3, 2)), np.zeros((3, 2)), np.ones((3, 2), bool)
    with pytest.raises(ValueError, match="shape mismatch: weight has shape .* gradient"):
        impl.masked_sgd_step(conv(w), conv(np.zeros((2, 3))), conv(m), lr=0.1)
    with pytest.raises(ValueError, match="mask"):
        impl.masked_sgd_step(conv(w), conv(g), conv(np.ones((3,), bool)), lr=0.1)
    with pytest.raises(ValueError, match="momentum buffer"):
        impl.masked_sgd_step(conv(w), conv(g), conv(m), conv(np.zeros((1, 2))), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="non-finite"):
        impl.masked_sgd_step(conv(w), conv(np.full((3, 2), np.nan)), conv(m), lr=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        impl.masked_sgd_step(conv(np.full((3, 2), np.inf)), conv(g), conv(m), lr=0.1)
    with pytest.raises(ValueError, match="lr=-0.1"):
        impl.masked_sgd_step(conv(w), conv(g), conv(m), lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        impl.masked_sgd_step(conv(w), conv(g), conv(m), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="dampening"):
        impl.masked_sgd_step(conv(w), conv(g), conv(m), lr=0.1, momentum=0.9, dampening=2.0)
