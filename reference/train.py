"""The reference training procedure for the NumPy MLP: dense, static and dynamic sparse training.

Readable on purpose: one loop, the paper operators called by name, the method (written once,
backend-agnostic, in ``reference.methods``) driving the masks through ``reference.ops``.

    masks  <- method.init_masks: random ERK / uniform / magnitude (docs/methods.md §1.4, §1.5), or SNIP at the
              first batch (§2.7); state <- method.init_state (e.g. DST-EE counters N = M)
    for t = 1, 2, ... over the mini-batches (the shared NumPy pipeline, reference.data):
        loss, grads <- hand-written forward/backward of the MLP (reference.nn); grads are dense
        if method.due(t):   new masks from the dense gradients (drop -> score -> grow, docs/methods.md §2.1);
                            weights and momentum kept only on the survivors (grown ones start at 0)
                            and, unless step_on_update, no SGD step at t (RigL / DST-EE Alg. 1)
        else:               every parameter <- masked SGD step (docs/methods.md §1.9, PyTorch's convention);
                            biases and BatchNorm parameters use an all-ones mask (never pruned, docs/methods.md §1.1)
    evaluate on the test split after every epoch (docs/methods.md §1.14)

The accel engine (``accel.train`` + ``accel.Sparsifier``) runs the same procedure on torch; for the
MLP both start from ``reference.nn.init_mlp(seed)`` and read the same batches, so their runs can be
compared step by step (conformance/test_trajectory.py).
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import densities as D
from . import metrics as MET
from . import checkpoint as CK
from .config import RunConfig, run_to_dict
from .data import iterate_batches
from .methods import from_run_config
from .exploitation import exploitation_degree, exploitation_pair, grown_positions
from .methods import DSTEE
from .nn import init_mlp, mlp_forward, mlp_loss_and_grads, softmax_cross_entropy
from .sparsifier import Sparsifier
from .prunable import select_prunable
from .schedules import lr_at


def resolve_densities(cfg: RunConfig, weights: dict) -> dict:
    """Per-layer densities of the initial masks (docs/methods.md §1.4; 'global' = global magnitude); a layer
    left with 0 weights is an error (``densities.check_keeps_weights``)."""
    if cfg.method == "dense":
        return {n: 1.0 for n in weights}
    d = cfg.initial_density()
    if cfg.distribution == "global":
        dens = D.global_magnitude_densities(weights, d)
    else:
        shapes = {n: tuple(w.shape) for n, w in weights.items()}
        kw = {"power_scale": cfg.erk_power_scale} if cfg.distribution == "erk" else {}
        dens = D.layer_densities_for(cfg.distribution, shapes, d, **kw)
    return D.check_keeps_weights(dens, {n: np.size(w) for n, w in weights.items()},
                                 source=f"density={d:.3g} ({cfg.distribution})")


class Diverged(RuntimeError):
    """The network holds NaN or inf after an epoch: the run cannot be evaluated or continued.
    ``info`` (epoch, step, skipped_steps, the first non-finite tensors) goes to the run's log."""

    def __init__(self, cfg: RunConfig, epoch: int, step: int, skipped: int, bad: list):
        self.info = {"epoch": epoch, "step": step, "skipped_steps": int(skipped), "nonfinite": list(bad[:5])}
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        skip = (f"{skipped} iteration(s) had been skipped for non-finite gradients (nonfinite='skip')"
                if cfg.nonfinite == "skip" else "no iteration was skipped (nonfinite='raise')")
        super().__init__(f"run {cfg.label!r} (seed {cfg.seed}) diverged in epoch {epoch}: {bad[0]!r}{more} hold NaN "
                         f"or inf after iteration {step}; {skip}. Lower the learning rate or check the data")


def check_diverged(cfg: RunConfig, epoch: int, step: int, skipped: int, bad: list) -> None:
    """Raise ``Diverged`` when ``bad`` (the names of non-finite tensors) is not empty."""
    if bad:
        raise Diverged(cfg, epoch, step, skipped, bad)


def predict(params, buffers, x, batch: int = 1000) -> np.ndarray:
    return np.concatenate([mlp_forward(params, buffers, x[i:i + batch], train=False)[0]
                           for i in range(0, len(x), batch)])


def scores_of(logits, y) -> dict:
    return {"acc": MET.accuracy(logits, y), "nll": MET.nll(logits, y), "ece": MET.ece(logits, y)}


def evaluate(params, buffers, x, y, batch: int = 1000) -> dict:
    return scores_of(predict(params, buffers, x, batch), y)


def ticket_report(predict_net, state: dict, y, scores=None, metrics=MET) -> dict:
    """Sup-tickets: the ultimate ticket's and every cheap ticket's test metrics, and the tickets'
    diversity (mean pairwise disagreement, symmetric KL; docs/methods.md §1.14).

    ``predict_net(net)`` gives the test logits of a network state (``state["ultimate"]`` and each of
    ``state["tickets"]``). Both engines use this one function: the logits are read by ``scores(logits,
    y)`` (default ``scores_of``) and by ``metrics.disagreement`` / ``metrics.kl_divergence`` (default
    ``reference.metrics``); ``accel.train.ticket_report`` passes torch's."""
    scores = scores_of if scores is None else scores
    ult = predict_net(state["ultimate"])
    logits = [predict_net(tk) for tk in state["tickets"]]
    pairs = [(a, b) for i, a in enumerate(logits) for b in logits[i + 1:]]
    return {"ultimate": scores(ult, y), "tickets": [scores(z, y) for z in logits], "n_tickets": state["t"],
            "disagreement": float(np.mean([metrics.disagreement(a, b) for a, b in pairs])) if pairs else 0.0,
            "kl": float(np.mean([metrics.kl_divergence(a, b, symmetric=True) for a, b in pairs])) if pairs else 0.0}


def epoch_test_scores(cfg: RunConfig, params, buffers, split, epoch: int, step: int, skipped: int) -> dict:
    """The test metrics after an epoch; a network or test logits holding NaN/inf is ``Diverged``
    (with the count of skipped iterations), not a bare metrics error."""
    check_diverged(cfg, epoch, step, skipped, [n for n, v in {**params, **buffers}.items() if not np.all(np.isfinite(v))])
    logits = predict(params, buffers, split.x_test.astype(np.dtype(cfg.dtype)))
    check_diverged(cfg, epoch, step, skipped, [] if np.all(np.isfinite(logits)) else ["the test logits"])
    return scores_of(logits, split.y_test)


def load_net(net, params: dict, buffers: dict) -> tuple[dict, dict]:
    """Copies of ``params`` / ``buffers`` taken from ``net`` (a dict holding both, e.g. a merged
    network); names and shapes must match exactly."""
    want = {**params, **buffers}
    if set(net) != set(want):
        raise ValueError(f"init_net names {sorted(net)} but the model has {sorted(want)}")
    for n, v in want.items():
        if np.shape(net[n]) != np.shape(v):
            raise ValueError(f"init_net[{n!r}] has shape {np.shape(net[n])} but the model's is {np.shape(v)}")
    return ({n: np.array(net[n], dtype=v.dtype) for n, v in params.items()},
            {n: np.array(net[n], dtype=v.dtype) for n, v in buffers.items()})


def _exploitation(params, buffers, masks, kept, grads, lr, parts, dtype) -> float:
    """Delta L_g of [EE] Eq. (3) for the update just applied (``reference.exploitation``): the summed
    training loss of the iteration's batch parts (training-mode BN, running statistics untouched: the
    forward is pure) with the grown weights at 0 minus the one with them at -lr * g."""
    names = list(masks)
    base, probe = exploitation_pair({n: params[n] for n in names}, grads, grown_positions(masks, kept), lr)
    losses = []
    for net in (base, probe):
        p = {**params, **net}
        losses.append(sum(float(softmax_cross_entropy(mlp_forward(p, buffers, np.asarray(xb, dtype=dtype), train=True)[0],
                                                      yb)[0]) for xb, yb in parts))
    return exploitation_degree(*losses)


def default_batches(cfg: RunConfig, x, y):
    """The standard pipeline: one part (xb, yb) per iteration, in the order of (seed, epoch)."""
    def batches(epoch):
        return ([(xb, yb)] for xb, yb in iterate_batches(x, y, cfg.batch_size, cfg.seed, epoch))
    return batches


def train_reference(cfg: RunConfig, split, on_epoch=None, on_step=None, method=None,
                    checkpoint: str | None = None, resume: bool = False, init_net: dict | None = None,
                    batches=None, lr_offset: int = 0, snapshot_epoch: int | None = None, on_event=None) -> dict:
    """Train the MLP of ``cfg`` on ``split``; returns the final state, the per-epoch history and
    one record per mask update.

    ``on_event`` as in ``accel.train.train_accel`` (mask updates and logged steps as they happen).
    ``on_epoch(record)`` is called after each epoch, ``on_step(t, params, masks)`` after each
    iteration (used by the trajectory conformance check). ``method`` overrides the method built
    from ``cfg`` (e.g. SET with injected random scores). ``checkpoint`` / ``resume``: an atomic
    checkpoint after every epoch, and continuing from one (the resumed run equals the uninterrupted
    one: data order and random decisions derive from (seed, epoch, t) only). ``init_net`` (a dict of
    parameters and buffers) replaces the initialisation; ``batches(epoch)`` replaces the data
    pipeline: it yields, per iteration, a list of parts (x, y) whose losses are summed (y: int labels
    or soft labels), e.g. D²-Sparse's augmented views (``reference.d2sparse``). ``lr_offset``: the
    LR schedule is the one of a run ``lr_offset`` iterations longer, entered at that point (IMP's
    rewinding); ``snapshot_epoch``: a copy of the network after that epoch is returned as ``snapshot``.
    """
    cfg.validate()
    if cfg.model != "mlp":
        raise ValueError(f"the reference backend trains model='mlp' only, got {cfg.model!r}")
    dtype = np.dtype(cfg.dtype)
    x_train, y_train = split.x_train.astype(dtype), split.y_train
    sizes = (x_train.shape[1], *cfg.hidden, int(y_train.max()) + 1)
    params, buffers = init_mlp(sizes, batchnorm=cfg.batchnorm, seed=cfg.seed, dtype=dtype)
    if init_net is not None:
        params, buffers = load_net(init_net, params, buffers)
    batches = default_batches(cfg, x_train, y_train) if batches is None else batches
    prunable = select_prunable([n for n in params if n.startswith("fc.") and n.endswith(".weight")],
                               cfg.include, cfg.exclude)
    densities = resolve_densities(cfg, {n: params[n] for n in prunable})
    steps_per_epoch = -(-len(x_train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    plan = cfg.lr_plan(steps_per_epoch)
    method = from_run_config(cfg, total, steps_per_epoch) if method is None else method
    measure_ee = cfg.ee_exploitation_degree and isinstance(method, DSTEE)
    sp = Sparsifier(params, prunable, densities, method, cfg.seed, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, nonfinite=cfg.nonfinite)
    history, start_epoch, snapshot = [], 0, None
    if resume and checkpoint and os.path.exists(checkpoint):
        ck = CK.load_reference(checkpoint)
        CK.check_config(ck["config"], run_to_dict(cfg), checkpoint)
        buffers, history, start_epoch = ck["buffers"], ck["history"], ck["epoch"]
        sp.load_state_dict({"params": ck["params"], "masks": ck["masks"], "method_state": ck["state"],
                            "explored": ck["explored"], "bufs": ck["bufs"], "updates": ck["updates"],
                            "step_count": ck["t"], "skipped_steps": ck["skipped"]})
        snapshot = ck.get("snapshot")
    seen = len(sp.updates)

    def emit(t, epoch, loss, events):
        """As accel.train._emit_events: this iteration's mask updates, then every log_every the loss."""
        nonlocal seen
        for u in sp.updates[seen:]:
            events.append({"mask_update": u})
            on_event(events[-1])
        seen = len(sp.updates)
        if cfg.log_every and t % cfg.log_every == 0:
            lr_t = sp.lr_at(t, lr_at(lr_offset + t - 1, lr_offset + total, cfg.lr, plan))
            events.append({"train_step": {"t": t, "epoch": epoch + 1, "loss": float(loss), "lr": float(lr_t),
                                          "density": MET.total_density(sp.masks) if sp.masks else 1.0}})
            on_event(events[-1])

    for epoch in range(start_epoch, cfg.epochs):
        t0, losses, events = time.perf_counter(), [], []
        for parts in batches(epoch):
            loss, grads, new_buffers = 0.0, None, buffers
            for xb, yb in parts:  # summed loss: one forward per part, the gradients add up
                lp, gp, new_buffers, _ = mlp_loss_and_grads(sp.params, new_buffers, np.asarray(xb, dtype=dtype), yb)
                loss, grads = loss + lp, gp if grads is None else {n: grads[n] + gp[n] for n in gp}
            buffers = new_buffers      # the forward ran: its BN statistics count, as in torch
            lr = lr_at(lr_offset + sp.step_count, lr_offset + total, cfg.lr, plan)
            stepped = sp.step(grads, lr, buffers)      # one iteration: reference/sparsifier.py
            t = sp.step_count
            if stepped and measure_ee and sp.updated_at == t:   # DST-EE's exploitation degree (Eq. 3), beside R
                sp.updates[-1]["exploitation_degree"] = _exploitation(
                    sp.params, buffers, sp.masks, sp.method_state["kept"], {n: grads[n] for n in prunable},
                    sp.lr_at(t, lr), parts, dtype)
            losses.append(loss)
            if on_event is not None:
                emit(t, epoch, loss, events)
            if on_step is not None:
                on_step(t, sp.params, sp.masks)
        params, masks, state, explored = sp.params, sp.masks, sp.method_state, sp.explored
        updates, skipped = sp.updates, sp.skipped_steps
        record = {"epoch": epoch + 1, "step": t, "train_loss": float(np.mean(losses)),
                  "lr": sp.lr_at(t, lr_at(lr_offset + t, lr_offset + total, cfg.lr, plan)),
                  **{f"test_{k}": v for k, v in epoch_test_scores(cfg, params, buffers, split, epoch + 1, t, skipped).items()},
                  "density": MET.total_density(masks), "layer_density": MET.layer_densities(masks),
                  "exploration_degree": MET.exploration_degree(explored), "skipped_steps": skipped, "epoch_time": time.perf_counter() - t0}
        if epoch == cfg.epochs - 1 and isinstance(state, dict) and state.get("ultimate") is not None:
            x_test = split.x_test.astype(dtype)
            rep = ticket_report(lambda net: predict({n: net[n] for n in params}, {n: net[n] for n in buffers}, x_test),
                                state, split.y_test)
            record.update({f"network_test_{k}": record[f"test_{k}"] for k in ("acc", "nll", "ece")})
            record.update({f"test_{k}": v for k, v in rep["ultimate"].items()})
            record["suptickets"] = rep
        if on_event is not None:
            record["events"] = events
        history.append(record)
        if snapshot_epoch == epoch + 1:
            snapshot = {n: np.array(v, copy=True) for n, v in {**params, **buffers}.items()}
        if checkpoint:
            CK.save_tagged(checkpoint, {"config": run_to_dict(cfg), "epoch": epoch + 1,
                                           "params": params, "buffers": buffers, "masks": masks, "state": state,
                                           "explored": explored, "bufs": sp.bufs, "history": history,
                                           "updates": updates, "t": t, "skipped": skipped,
                                           "snapshot": snapshot})
        if on_epoch is not None:
            on_epoch(record)
    return {"params": sp.params, "buffers": buffers, "masks": sp.masks, "densities": densities, "history": history,
            "updates": sp.updates, "state": sp.method_state, "snapshot": snapshot}
