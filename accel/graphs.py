"""A whole training step (forward, backward, ``Sparsifier.step()``) captured in a CUDA graph.

Because a plain Sparsifier step never waits for the device and touches only buffers that stay
where they are (the masks in memory order, the guard's flag and record, the pointer tables), it
can be captured with ``torch.cuda.CUDAGraph`` and replayed: one graph launch for the whole
iteration instead of hundreds of kernel launches from Python. Iterations at which the method
updates its masks (or collects a Sup-tickets ticket) run eagerly; every other one replays::

    step = GraphedStep(sp, lambda x, y: F.cross_entropy(model(x), y), sample=(x0, y0))
    for x, y in loader:
        loss = step(x, y)          # copies x, y into the captured inputs; replays or runs eagerly

``loss_fn(*inputs)`` returns the loss; ``GraphedStep`` does ``zero_grad``, ``backward`` and
``sp.step()`` around it. Rules (checked where possible):

* CUDA only; inputs keep the sample's shapes and dtypes (copied into static buffers);
* methods that observe every gradient (SNFS's momentum) are refused: their state is rebuilt each
  step, which a replay cannot follow;
* the learning rate is read at capture: for a schedule, give the optimizer a tensor ``lr`` on the
  device (the step then reads it from device memory at every replay);
* every call is exactly one training iteration: the first ``warmup`` plain iterations run eagerly
  (they create the optimizer state and let cuDNN pick its algorithms), the next one is captured
  (it runs for real while being recorded), and every later plain iteration replays the graph.
"""
from __future__ import annotations

import torch

from .kernels import tables
from .sparsifier import Sparsifier

__all__ = ["GraphedStep"]


class GraphedStep:
    def __init__(self, sp: Sparsifier, loss_fn, sample: tuple, warmup: int = 3, graph_factory=None):
        if not isinstance(sp, Sparsifier):
            raise TypeError(f"GraphedStep needs a Sparsifier, got {type(sp).__name__}")
        if sp.method.observes_grads:
            raise ValueError(f"method {sp.method.name!r} updates its state from every gradient; its steps cannot be "
                             f"replayed from a CUDA graph (use the plain loop)")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup={warmup!r} must be an integer >= 1 (eager steps before the capture)")
        self.sp, self.loss_fn = sp, loss_fn
        self._graph_factory = graph_factory or torch.cuda.CUDAGraph
        if graph_factory is None:
            dev = next(iter(sp.params.values())).device
            if dev.type != "cuda":
                raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {dev}")
        self.static = tuple(torch.as_tensor(s).clone() for s in sample)
        self.graph = None
        self.static_loss = None
        self.replays = 0
        self.eager_steps = 0
        self._keep: list = []            # pointer tables (and their pinned copies) the graph reads
        self._warmup = warmup
        self._plain_eager = 0

    def _eager(self, inputs) -> torch.Tensor:
        self.sp.zero_grad(set_to_none=True)
        loss = self.loss_fn(*inputs)
        loss.backward()
        self.sp.step()
        self.eager_steps += 1
        return loss.detach()

    def _event(self, t: int) -> bool:
        m = self.sp.method
        return self.sp.masks is None or m.due(t) or m.collects(t)

    def _body(self) -> None:
        self.static_loss = self.loss_fn(*self.static)
        self.static_loss.backward()
        self.sp.step()

    def _capture(self) -> None:
        """Capture iteration t (a real step: it runs once while being recorded)."""
        self.sp.zero_grad(set_to_none=True)      # the backward allocates the gradients from the graph's pool
        g = self._graph_factory()
        before = len(tables.graph_tables)
        if self._graph_factory is torch.cuda.CUDAGraph:
            with torch.cuda.graph(g):
                self._body()
        else:
            g.capture(self._body)
        self._keep = tables.graph_tables[before:]   # the graph reads these tables (and replays their uploads)
        del tables.graph_tables[before:]
        self.graph = g
        self.eager_steps += 1

    def __call__(self, *inputs) -> torch.Tensor:
        """One training iteration on ``inputs``: eager when the method updates its masks at it (or
        during the first ``warmup`` plain iterations, or to capture), a graph replay otherwise."""
        if len(inputs) != len(self.static):
            raise ValueError(f"GraphedStep was built for {len(self.static)} inputs, got {len(inputs)}")
        for s, x in zip(self.static, inputs):
            if tuple(x.shape) != tuple(s.shape) or x.dtype != s.dtype:
                raise ValueError(f"a graphed step needs inputs of the captured shape and dtype {tuple(s.shape)} "
                                 f"{s.dtype}, got {tuple(x.shape)} {x.dtype}")
            s.copy_(x)
        t = self.sp.step_count + 1
        if self._event(t) or (self.graph is None and self._plain_eager < self._warmup):
            if not self._event(t):
                self._plain_eager += 1
            return self._eager(self.static)
        if self.graph is None:
            self._capture()
            return self.static_loss.detach().clone()
        self.graph.replay()
        self.sp.step_count = t                      # the host's bookkeeping of the replayed iteration
        self.replays += 1
        return self.static_loss.detach().clone()
