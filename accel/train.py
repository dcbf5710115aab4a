"""The accel training loop: any model of ``accel.models``, any method, the Sparsifier in place of
``optimizer.step()``. Same procedure as ``reference.train`` (read that one for the maths).
``train_on_loader`` runs it on a DataLoader of your own."""
from __future__ import annotations

import copy
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from twinsparse.reference.config import RunConfig, run_to_dict
from twinsparse.reference.nn import init_mlp
from twinsparse.reference.train import check_diverged, ticket_report as reference_ticket_report
from twinsparse.reference.schedules import lr_at
from . import checkpoint as ckpt
from . import distributed as ddp
from . import densities as D
from twinsparse.reference.methods import DSTEE, from_run_config
from . import exploitation as EE
from . import metrics as MET
from . import data as DATA
from .models import build_model, mlp_from_reference
from .sparsifier import Sparsifier

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model_for(cfg: RunConfig, n_in, n_classes: int) -> torch.nn.Module:
    """``cfg.model`` for inputs of shape ``n_in`` (one sample: an int or (features,) for flat rows,
    (C, H, W) for images; the input channels and image size come from it) and ``n_classes``.
    The MLP starts from ``reference.nn.init_mlp(seed)`` (so both backends share the init); other
    models use torch's default init under ``torch.manual_seed(seed)``."""
    dtype = DTYPES[cfg.dtype]
    shape = (int(n_in),) if isinstance(n_in, (int, np.integer)) else tuple(int(s) for s in n_in)
    if cfg.model == "mlp":
        sizes = (math.prod(shape), *cfg.hidden, n_classes)
        params, buffers = init_mlp(sizes, batchnorm=cfg.batchnorm, seed=cfg.seed, dtype=np.dtype(cfg.dtype))
        model = mlp_from_reference(params, buffers, sizes, cfg.batchnorm)
    else:
        c, h, w = DATA.image_shape(shape)
        kw = {"image_size": (h, w)} if cfg.model == "vit" else {}
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, in_channels=c, num_classes=n_classes, **kw)
    return model.to(device=cfg.device, dtype=dtype)


def build_optimizer(cfg: RunConfig, model) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def density_spec(cfg: RunConfig):
    """The initial-mask densities (GraNet starts at init_density; docs/methods.md §1.4)."""
    if cfg.method == "dense":
        return None
    d = cfg.initial_density()
    if cfg.distribution == "erk":
        return D.erk(d, power_scale=cfg.erk_power_scale)
    return D.from_config(cfg.distribution if cfg.distribution != "global" else "global_magnitude", d)


def build_sparsifier(cfg: RunConfig, model, optimizer, total_steps: int, method=None,
                     steps_per_epoch: int = 1) -> Sparsifier:
    method = from_run_config(cfg, total_steps, steps_per_epoch) if method is None else method
    return Sparsifier(model, optimizer, density=density_spec(cfg), method=method, include=cfg.include or None,
                      exclude=cfg.exclude or None, seed=cfg.seed, check_finite=cfg.check_finite,
                      nonfinite=cfg.nonfinite)


_inputs = DATA.model_input           # (the names other modules import)
_targets = DATA.model_target
device_batches = DATA.device_batches   # the training set resident on the device (accel.data)


@torch.no_grad()
def predict(cfg: RunConfig, model, x: np.ndarray, batch: int = 1000) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(_inputs(cfg, x[i:i + batch])) for i in range(0, len(x), batch)])
    model.train()
    return out


def scores_of(logits: torch.Tensor, y: np.ndarray) -> dict:
    yt = torch.from_numpy(y).to(logits.device)
    return {"acc": MET.accuracy(logits, yt), "nll": MET.nll(logits, yt), "ece": MET.ece(logits, yt)}


def evaluate(cfg: RunConfig, model, x: np.ndarray, y: np.ndarray) -> dict:
    return scores_of(predict(cfg, model, x), y)


def epoch_test_scores(cfg: RunConfig, model, split, epoch: int, step: int, skipped: int) -> dict:
    """The test metrics after an epoch; a network or test logits holding NaN/inf is ``Diverged``
    (with the count of skipped iterations), not a bare metrics error."""
    check_diverged(cfg, epoch, step, skipped, [n for n, v in model.state_dict().items()
                                               if v.is_floating_point() and not bool(v.isfinite().all())])
    if split.x_test is None:                      # a DataLoader run without a test loader
        return {}
    logits = predict(cfg, model, split.x_test)
    check_diverged(cfg, epoch, step, skipped, [] if bool(logits.isfinite().all()) else ["the test logits"])
    return scores_of(logits, split.y_test)


def ticket_report(cfg: RunConfig, model, state: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """Sup-tickets: metrics of the ultimate ticket and of every cheap ticket, and their diversity;
    ``reference.train.ticket_report`` with this engine's predictions (each ticket loaded into a copy
    of ``model``) and metrics."""
    def predict_net(net):
        m = copy.deepcopy(model)
        m.load_state_dict(net)
        return predict(cfg, m, x)
    return reference_ticket_report(predict_net, state, y, scores=scores_of, metrics=MET)


def load_net(model, net: dict) -> None:
    """Load a full state dict (parameters and buffers) into ``model``; names and shapes must match."""
    own = model.state_dict()
    if set(net) != set(own):
        raise ValueError(f"init_net names {sorted(net)} but the model has {sorted(own)}")
    for n, v in own.items():
        if tuple(net[n].shape) != tuple(v.shape):
            raise ValueError(f"init_net[{n!r}] has shape {tuple(net[n].shape)} but the model's is {tuple(v.shape)}")
    model.load_state_dict({n: torch.as_tensor(v) for n, v in net.items()})


def _data_shape(split) -> dict:
    """The sample shape and class count of the data (what an export rebuilds the model for)."""
    if isinstance(split, DATA.LoaderData):
        return {}
    return {"input_shape": list(DATA.sample_shape(split)), "num_classes": int(split.y_train.max()) + 1}


def _emit_events(cfg: RunConfig, sp, seen: int, step: int, epoch: int, loss, opt, events: list, on_event) -> int:
    """The events of one iteration, in order: its mask updates (once final), then every
    ``log_every`` iterations the loss (read from the device only then), LR and density."""
    for u in sp.updates[seen:]:
        events.append({"mask_update": u})
        on_event(events[-1])
    if cfg.log_every and step % cfg.log_every == 0:
        value = loss.detach().double()
        if ddp.active():                      # every rank takes part; the global-batch mean
            value = value.clone()
            torch.distributed.all_reduce(value)
            value /= ddp.world()
        events.append({"train_step": {"t": step, "epoch": epoch + 1, "loss": float(value),
                                      "lr": float(opt.param_groups[0]["lr"]), "density": sp.total_density()}})
        on_event(events[-1])
    return len(sp.updates)


def train_accel(cfg: RunConfig, split, on_epoch=None, on_step=None, progress=None, method=None,
                checkpoint: str | None = None, resume: bool = False, init_net: dict | None = None,
                batches=None, lr_offset: int = 0, snapshot_epoch: int | None = None,
                model: torch.nn.Module | None = None, on_event=None) -> dict:
    """Train ``cfg`` on ``split``; returns model, sparsifier and the per-epoch history.

    ``on_step(step, model, sparsifier)`` runs after each optimizer step; ``progress`` is an
    optional tqdm-like object updated once per step. With ``checkpoint`` a checkpoint is written
    atomically after every epoch; with ``resume`` an existing one is loaded first and training
    continues from its epoch (data order and every random decision derive from (seed, epoch, t),
    so the resumed run equals the uninterrupted one). ``init_net`` (a state dict) replaces the
    initialisation; ``batches(epoch)`` replaces the data pipeline, yielding per iteration a list of
    parts (x, y) whose losses are summed; ``lr_offset`` and ``snapshot_epoch`` as in
    ``reference.train.train_reference``. ``model``: a module to train instead of ``cfg.model``
    (on the run's device and dtype). ``split`` may be an ``accel.data.LoaderData`` (with
    ``batches``: ``train_on_loader``). ``on_event(record)`` receives, as they happen,
    ``{"mask_update": ...}`` for every mask update and ``{"train_step": {t, epoch, loss, lr,
    density}}`` every ``cfg.log_every`` iterations; each epoch's record then lists its events under
    ``"events"`` (so a resumed run's log can repeat them in order).
    """
    cfg.validate()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device")
    if model is None:
        model = build_model_for(cfg, DATA.sample_shape(split), int(split.y_train.max()) + 1)
    if init_net is not None:
        load_net(model, init_net)
    if batches is None:
        on_gpu = torch.device(cfg.device).type == "cuda" and not ddp.active()
        batches = DATA.make_batches(cfg, split.x_train, split.y_train, resident=on_gpu)
    opt = build_optimizer(cfg, model)
    steps_per_epoch = (split.steps_per_epoch if isinstance(split, DATA.LoaderData)
                       else -(-len(split.x_train) // cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sp = build_sparsifier(cfg, model, opt, total, method, steps_per_epoch)
    plan = cfg.lr_plan(steps_per_epoch)
    measure_ee = cfg.ee_exploitation_degree and isinstance(sp.method, DSTEE)
    net = model
    if ddp.active():  # data-parallel: DDP all-reduces the gradients; the Sparsifier works on the module
        net = ddp.wrap(model, cfg.device)
        if cfg.ddp_verify_masks:
            sp.on_update = lambda t, masks: ddp.verify_masks(masks, t)
    history, step, start, snapshot = [], 0, 0, None
    if resume and checkpoint and os.path.exists(checkpoint):
        ck = ckpt.load(checkpoint, map_location=cfg.device)
        ckpt.check_config(ck["config"], run_to_dict(cfg), checkpoint)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sp.load_state_dict(ck["sparsifier"])
        history, start, step, snapshot = ck["history"], ck["epoch"], sp.step_count, ck.get("snapshot")
    model.train()
    seen = len(sp.updates)
    with ddp.peer_failures_explained():
        for epoch in range(start, cfg.epochs):
            t0, loss_sum = time.perf_counter(), torch.zeros((), device=cfg.device, dtype=torch.float64)
            events: list = []
            for parts in batches(epoch):
                for g in opt.param_groups:   # (a method's own LR, Sup-tickets' Eq. 3, is set by the Sparsifier)
                    g["lr"] = lr_at(lr_offset + step, lr_offset + total, cfg.lr, plan)
                opt.zero_grad(set_to_none=True)
                loss = 0.0
                for xb, yb in parts:  # summed loss over the parts (one part in the standard pipeline)
                    if ddp.active():  # this rank's slice; DDP's gradient average is then the global-batch mean
                        xs, ys = ddp.shard(xb, yb)
                        loss = loss + F.cross_entropy(net(_inputs(cfg, xs)), _targets(cfg, ys),
                                                      reduction="sum") * ddp.loss_scale(len(xb))
                    else:
                        loss = loss + F.cross_entropy(net(_inputs(cfg, xb)), _targets(cfg, yb))
                loss.backward()
                ee_grads = None
                if measure_ee and sp.method.due(sp.step_count + 1):  # the dense gradients the update scores by
                    ee_grads = {n: p.grad.detach().clone() for n, p in sp.params.items()}
                    n_updates = len(sp.updates)
                sp.step()
                if ee_grads is not None and len(sp.updates) > n_updates:   # [EE] Eq. 3, beside R
                    sp.updates[-1]["exploitation_degree"] = EE.measure(
                        model, list(sp.params), sp.masks, sp.method_state["kept"], ee_grads, opt.param_groups[0]["lr"],
                        [(_inputs(cfg, xb), _targets(cfg, yb)) for xb, yb in parts], F.cross_entropy)
                step = sp.step_count
                loss_sum += loss.detach()
                if on_event is not None:
                    seen = _emit_events(cfg, sp, seen, step, epoch, loss, opt, events, on_event)
                if on_step is not None:
                    on_step(step, model, sp)
                if progress is not None:
                    progress.update(1)
            if ddp.active():  # the global-batch mean loss: ranks hold world-scaled shard sums
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= ddp.world()
            record = {"epoch": epoch + 1, "step": step, "train_loss": float(loss_sum) / steps_per_epoch,
                      "lr": lr_at(lr_offset + step, lr_offset + total, cfg.lr, plan) if sp.method.lr_override(step) is None else sp.method.lr_override(step),
                      **{f"test_{k}": v for k, v in epoch_test_scores(cfg, model, split, epoch + 1, step, sp.skipped_steps).items()},
                      "density": sp.total_density(), "layer_density": sp.layer_densities(),
                      "exploration_degree": sp.exploration_degree(), "skipped_steps": sp.skipped_steps, "epoch_time": time.perf_counter() - t0}
            if (epoch == cfg.epochs - 1 and isinstance(sp.method_state, dict) and sp.method_state.get("ultimate") is not None
                    and split.x_test is not None):
                rep = ticket_report(cfg, model, sp.method_state, split.x_test, split.y_test)
                record.update({f"network_test_{k}": record[f"test_{k}"] for k in ("acc", "nll", "ece")})
                record.update({f"test_{k}": v for k, v in rep["ultimate"].items()})
                record["suptickets"] = rep
            if on_event is not None:
                record["events"] = events
            history.append(record)
            if snapshot_epoch == epoch + 1:
                snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if checkpoint and ddp.rank() == 0:
                ckpt.save(checkpoint, {"config": run_to_dict(cfg), "epoch": epoch + 1, "model": model.state_dict(),
                                       "optimizer": opt.state_dict(), "sparsifier": sp.state_dict(), "history": history,
                                       "snapshot": snapshot, **_data_shape(split)})
            if on_epoch is not None:
                on_epoch(record)
    return {"model": model, "sparsifier": sp, "optimizer": opt, "history": history, "updates": sp.updates,
            "snapshot": snapshot}


# ----------------------------------------------------------------------------- your own DataLoader

def _collect_test(loader, cfg: RunConfig):
    xs, ys = [], []
    for xb, yb in loader:
        xs.append(torch.as_tensor(xb).to(device=cfg.device, dtype=DTYPES[cfg.dtype]))
        ys.append(torch.as_tensor(yb).cpu().numpy())
    if not xs:
        raise ValueError("the test loader yielded no batch")
    return torch.cat(xs), np.concatenate(ys).astype(np.int64)


def train_on_loader(cfg: RunConfig, train_loader, test_loader=None, model: torch.nn.Module | None = None,
                    num_classes: int | None = None, on_epoch=None, progress=None) -> dict:
    """Train ``cfg`` (its method, densities, optimizer and LR schedule) on your own DataLoaders.

    ``train_loader`` yields (x, y) batches (one pass = one epoch; its own shuffling and transforms
    apply, so a resumed run repeats the data only if the loader does). ``test_loader`` (optional)
    is evaluated after every epoch (its inputs are gathered on the device once). ``model``: your
    module (moved to the run's device and dtype), else ``cfg.model`` built for the shape of the
    first batch and ``num_classes``. Returns what ``train_accel`` returns."""
    first = next(iter(train_loader), None)
    if first is None:
        raise ValueError("the training loader yielded no batch")
    if model is None:
        if num_classes is None:
            classes = getattr(getattr(train_loader, "dataset", None), "classes", None)
            if classes is None:
                raise ValueError("give num_classes (the loader's dataset has no .classes) or your own model")
            num_classes = len(classes)
        model = build_model_for(cfg, tuple(first[0].shape[1:]), num_classes)
    model = model.to(device=cfg.device, dtype=DTYPES[cfg.dtype])
    if test_loader is not None:
        x_test, y_test = _collect_test(test_loader, cfg)
    else:
        x_test, y_test = None, None

    def batches(epoch):
        for xb, yb in train_loader:
            yield [(torch.as_tensor(xb).to(device=cfg.device, dtype=DTYPES[cfg.dtype], non_blocking=True),
                    torch.as_tensor(yb).to(device=cfg.device, non_blocking=True))]
    data = DATA.LoaderData(x_test=x_test, y_test=y_test,
                           n_train=len(train_loader.dataset) if hasattr(train_loader, "dataset") else None,
                           steps_per_epoch=len(train_loader))
    return train_accel(cfg, data, batches=batches, model=model, on_epoch=on_epoch, progress=progress)
