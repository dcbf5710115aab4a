"""GraphedStep's control flow on the CPU (a stand-in graph that re-runs the captured body): every
call is one iteration; updates run eagerly, plain iterations replay; observing methods are refused.
The real CUDA-graph capture and its equality with eager training are GPU tests
(tests/test_kernels_gpu.py)."""
import pytest
import torch
import torch.nn.functional as F

from twinsparse.accel import Sparsifier, densities, methods
from twinsparse.accel.graphs import GraphedStep
from twinsparse.accel.models import MLP


class FakeGraph:
    """Records the captured body; replay runs it again (as a graph re-runs its kernels: the captured
    backward writes the gradients afresh, it does not add to them)."""

    def __init__(self, model):
        self.model = model

    def capture(self, body):
        self.body = body
        body()

    def replay(self):
        for p in self.model.parameters():
            p.grad = None
        self.body()


def _setup(method):
    torch.manual_seed(0)
    model = MLP(sizes=(12, 16, 4)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, Sparsifier(model, opt, density=densities.erk(0.3), method=method)


def _batches(n):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("method", [lambda: methods.Static(), lambda: methods.RigL(delta_t=4, t_end=20)])
def test_graphed_training_equals_eager_training(method):
    data = _batches(14)
    model_e, sp_e = _setup(method())
    for x, y in data:
        sp_e.zero_grad()
        F.cross_entropy(model_e(x), y).backward()
        sp_e.step()
    model_g, sp_g = _setup(method())
    step = GraphedStep(sp_g, lambda x, y: F.cross_entropy(model_g(x), y), sample=data[0], warmup=2,
                       graph_factory=lambda: FakeGraph(model_g))
    losses = [step(x, y) for x, y in data]
    assert sp_g.step_count == sp_e.step_count == 14 and len(losses) == 14
    assert step.replays > 0 and step.replays + step.eager_steps == 14
    assert [u["t"] for u in sp_g.updates] == [u["t"] for u in sp_e.updates]
    for a, b in zip(model_e.state_dict().values(), model_g.state_dict().values()):
        assert torch.equal(a, b)


def test_updates_run_eagerly_and_plain_steps_replay():
    model, sp = _setup(methods.RigL(delta_t=4, t_end=20))
    step = GraphedStep(sp, lambda x, y: F.cross_entropy(model(x), y), sample=_batches(1)[0], warmup=1,
                       graph_factory=lambda: FakeGraph(model))
    kinds = []
    for x, y in _batches(12):
        r0 = step.replays
        step(x, y)
        kinds.append("replay" if step.replays > r0 else "eager")
    # t=1 warm-up, t=2 capture, t=4/8/12 updates: eager; the rest replays
    assert kinds == ["eager", "eager", "replay", "eager", "replay", "replay", "replay", "eager",
                     "replay", "replay", "replay", "eager"]


def test_bad_uses_are_clear_errors():
    model, sp = _setup(methods.SNFS(delta_t=4, t_end=20))
    with pytest.raises(ValueError, match="'snfs' updates its state from every gradient"):
        GraphedStep(sp, lambda x, y: 0, sample=_batches(1)[0], graph_factory=lambda: FakeGraph(model))
    model, sp = _setup(methods.Static())
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        GraphedStep(sp, lambda x, y: 0, sample=_batches(1)[0])
    with pytest.raises(ValueError, match="warmup=0"):
        GraphedStep(sp, lambda x, y: 0, sample=_batches(1)[0], warmup=0, graph_factory=lambda: FakeGraph(model))
    step = GraphedStep(sp, lambda x, y: F.cross_entropy(model(x), y), sample=_batches(1)[0], graph_factory=lambda: FakeGraph(model))
    with pytest.raises(ValueError, match=r"captured shape and dtype \(8, 12\)"):
        step(torch.randn(4, 12, dtype=torch.float64), torch.randint(0, 4, (4,)))
