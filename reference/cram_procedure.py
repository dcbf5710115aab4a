"""CrAM training, NumPy reference: one step of Alg. 2 for the MLP, a small training loop, and the
"cram" procedure (training + the one-shot evaluation protocol), written once for both backends.

[TH] Ch. 5, Alg. 2, Eq. 5.2-5.9, §5.3.3, §5.4.1, §5.6; docs/methods.md §7.1, §7.2, §1.13, §7.5.

One step, ``cram_step`` (mode 'cram'; the operators are ``reference.cram_ops``):

    g, buffers'  = grad L(theta; x), BN running stats updated by this forward     (l.4)
    C            = sample_compression(compressions, seed, t)                       (l.5)
    theta~, M    = C(theta + rho g) with M the Top-K mask of |theta + rho g|       (l.6, l.8)
                   (tau > 1: the Top-K mask of C is reused while it is younger than tau steps)
    g~           = grad L(theta~; x), BN in train mode (batch statistics) but its
                   running statistics NOT updated ("we only track the BatchNorm statistics
                   on the dense model, before applying the compression perturbation", §5.3.3)
    g~           <- M * g~ if sparse_grad and C has a mask (Top-K; N:M too, docs/methods.md §7.2)   (l.9)
    g~           <- g~ + g  for CrAM⁺                                                 (l.14)
    theta'       = SGD step from theta with g~ (PyTorch convention, docs/methods.md §1.9; masked_sgd_step
                   with all-ones masks, so weight decay and momentum are the usual ones)     (l.16)

Mode 'sam' ([TH] Eq. C.2): theta~ = theta + rho g / ||g|| (l2 over every parameter), update g~.
Mode 'csam' ([TH] Eq. 5.7, §5.6.2): the first pass is at C(theta) (it tracks the BN statistics:
the dense model is never evaluated in C-SAM, NOT GIVEN -> resolution), g^ = M_theta * grad L(C(theta))
with sparse_grad, theta~ = C(theta + rho g^ / ||g^||), update M_theta~ * grad L(theta~).
Mode 'sgd': one pass, plain step (the baseline). rho = 0 in mode 'cram' is Top-K (Eq. 5.8, plus=False)
or Top-K⁺ (Eq. 5.9, plus=True).
"""
from __future__ import annotations

import os
import time
from typing import Mapping, Sequence

import numpy as np

from . import checkpoint as CK
from . import cram_ops as CR
from ._checks import check_int
from .bn import bn_recalibrate, bnt_batches
from .config import run_to_dict
from .cram_options import check_mode, parse_compressions, parse_eval_patterns, resolve_plus, training_compressions, \
    uniform_topk
from .nn import init_mlp, mlp_loss_and_grads
from .optim import masked_sgd_step
from .prunable import select_prunable
from .schedules import lr_at
from .stages import Stages
from .train import default_batches, evaluate


# ----------------------------------------------------------------------------- one step

def _compressions(compressions) -> tuple:
    if isinstance(compressions, (list, tuple)) and compressions and all(isinstance(c, str) for c in compressions):
        return parse_compressions(list(compressions))
    comps = tuple(compressions)
    for c in comps:
        if not isinstance(c, CR.Compression):
            raise TypeError(f"compressions must be Compression objects or strings like 'topk:0.5', got {c!r}")
    return comps


def cached_cram_point(params: Mapping, grads: Mapping, rho: float, compression, prunable, t: int, tau: int,
                      mask_cache: Mapping | None) -> tuple[dict, dict | None, dict, bool]:
    """theta~ = C(theta + rho g) with docs/methods.md §7.2's tau-infrequent Top-K masks ([TH] §5.4.1, Table 5.6):
    one cached mask per Top-K compression, recomputed from |theta + rho g| when it is drawn at step t
    and was computed tau or more steps ago (tau = 1: every step); otherwise theta~ = M_old * (theta + rho g).
    N:M and quantization are recomputed every step. Returns (theta~, mask, new cache, refreshed)."""
    cache = dict(mask_cache or {})
    hit = cache.get(compression) if compression.kind == "topk" else None
    if hit is not None and t - hit[0] < tau:
        phi = CR.perturb(params, grads, rho)
        masks = hit[1]
        out = {n: np.where(masks[n], p, np.zeros((), p.dtype)) if n in masks else p for n, p in phi.items()}
        return out, masks, cache, False
    point, masks = CR.cram_point(params, grads, rho, compression, prunable)
    if compression.kind == "topk":
        cache[compression] = (t, masks)
    return point, masks, cache, True


def cram_step(params: Mapping, buffers: Mapping, bufs: Mapping, x, y, *, lr: float, momentum: float = 0.0,
              weight_decay: float = 0.0, nesterov: bool = False, compressions: Sequence = (), rho: float = 0.05,
              plus: bool | None = None, sparse_grad: bool = True, t: int, seed: int = 0, mode: str = "cram",
              tau: int = 1, mask_cache: Mapping | None = None, prunable: Sequence[str] | None = None,
              bn_eps: float = 1e-5, bn_momentum: float = 0.1, on_point=None,
              base_prob: float = 0.0) -> tuple[dict, dict, dict, dict]:
    """One CrAM / CrAM⁺ / SAM / C-SAM / SGD step of the MLP on the batch (x, y) (module doc).

    ``params``, ``buffers``: the MLP of ``reference.nn``; ``bufs``: momentum buffers by name (None or
    absent before the first step). ``t`` (>= 1) is the step index that, with ``seed``, chooses C.
    ``prunable``: the tensors C acts on (default: every ``fc.*.weight``). Returns
    ``(params', buffers', bufs', info)``: buffers' come from the FIRST forward only; info holds
    ``loss`` (of the first pass), ``compression`` (or None), ``masks`` (of theta~, or None),
    ``refreshed`` and the new ``mask_cache`` (feed it to the next step for tau > 1). Pure: the
    inputs are not modified. ``on_point(point, track)``, if given, sees every parameter dict at which a
    gradient is evaluated (tests use it to keep away from ReLU / BatchNorm degeneracies).
    ``base_prob``: the probability that step t is a plain base step instead (``reference.cram_ops.
    base_step_at``, [TH] §5.5.1 p(Adam)); ``info["base_step"]`` says which was taken."""
    check_mode(mode)
    plus = resolve_plus(mode, plus)
    rho = CR.check_rho(rho)
    if not isinstance(sparse_grad, bool):
        raise TypeError(f"sparse_grad must be True or False, got {sparse_grad!r}")
    tau = check_int(tau, "tau", 1)
    t = check_int(t, "t", 1)
    comps = _compressions(compressions) if mode in ("cram", "csam") else ()
    if mode in ("cram", "csam") and not comps:
        raise ValueError("the set of compression methods is empty; CrAM needs at least one (e.g. ['topk:0.5'])")
    if prunable is None:
        prunable = [n for n in params if n.startswith("fc.") and n.endswith(".weight")]
    kw = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
    info = {"compression": None, "masks": None, "refreshed": False, "mask_cache": dict(mask_cache or {}),
            "base_step": mode != "sgd" and CR.base_step_at(seed, t, base_prob)}
    if info["base_step"]:
        mode = "sgd"

    def grad_at(point, track: bool):
        if on_point is not None:
            on_point(point, track)
        loss, g, new_buf, _ = mlp_loss_and_grads(point, buffers, x, y, train=True, **kw)
        return loss, g, (new_buf if track else None)

    if mode == "sgd":
        loss, update, new_buffers = grad_at(params, True)
    elif mode in ("cram", "sam"):
        loss, g, new_buffers = grad_at(params, True)                               # l.4
        masks = None
        if mode == "sam":
            point = CR.sam_point(params, g, rho)
        else:
            C = CR.sample_compression(comps, seed, t)                              # l.5
            point, masks, info["mask_cache"], info["refreshed"] = cached_cram_point(
                params, g, rho, C, prunable, t, tau, mask_cache)                   # l.6-8
            info.update(compression=C, masks=masks)
        _, g_tilde, _ = grad_at(point, False)                                      # BN stats untouched
        update = CR.cram_update_grads(g_tilde, g if plus else None,
                                      masks if (sparse_grad and masks is not None) else None, plus=plus)  # l.9-14
    else:  # csam
        C = CR.sample_compression(comps, seed, t)
        compressed, m0 = CR.compress(params, C, prunable)
        loss, g_hat, new_buffers = grad_at(compressed, True)
        point, masks = CR.csam_point(params, g_hat, rho, C, m0 if (sparse_grad and m0 is not None) else None,
                                     prunable)
        _, g_tilde, _ = grad_at(point, False)
        update = CR.cram_update_grads(g_tilde, None, masks if (sparse_grad and masks is not None) else None,
                                      plus=False)
        info.update(compression=C, masks=masks, refreshed=True)
    new_params, new_bufs = {}, {}
    for n, p in params.items():                                                    # l.16
        ones = np.ones(np.shape(p), dtype=bool)
        new_params[n], new_bufs[n] = masked_sgd_step(p, update[n], ones, (bufs or {}).get(n), lr=lr,
                                                     momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    info["loss"] = float(loss)
    return new_params, new_buffers, new_bufs, info


# ----------------------------------------------------------------------------- training loop

def train_cram_reference(cfg, split, on_step=None, on_epoch=None, checkpoint: str | None = None,
                         resume: bool = False) -> dict:
    """Train the MLP of ``cfg`` with ``cram_step`` (cfg.cram_* options; SGD with cfg's momentum,
    weight decay, LR schedule) on ``split``: same init (``init_mlp(seed)``), batches and LR schedule
    as ``reference.train``. ``on_step(t, params, buffers, info)`` after each step, ``on_epoch(record)``
    after each epoch (test metrics). ``checkpoint``: written atomically after every epoch (weights,
    BN buffers, momentum, the Top-K mask cache, history, step); ``resume``: continue from it when it
    exists, ``on_epoch`` being called first for the restored epochs. Returns {params, buffers, history}."""
    cfg.validate()
    if cfg.model != "mlp":
        raise ValueError(f"the reference backend trains model='mlp' only, got {cfg.model!r}")
    dtype = np.dtype(cfg.dtype)
    x_train, y_train = split.x_train.astype(dtype), split.y_train
    x_test = split.x_test.astype(dtype)
    sizes = (x_train.shape[1], *cfg.hidden, int(y_train.max()) + 1)
    params, buffers = init_mlp(sizes, batchnorm=cfg.batchnorm, seed=cfg.seed, dtype=dtype)
    prunable = select_prunable([n for n in params if n.startswith("fc.") and n.endswith(".weight")],
                               cfg.include, cfg.exclude)
    comps = training_compressions(cfg)
    batches = default_batches(cfg, x_train, y_train)
    total = -(-len(x_train) // cfg.batch_size) * cfg.epochs
    plan = cfg.lr_plan(-(-len(x_train) // cfg.batch_size))
    bufs, cache, history, t, start = {}, {}, [], 0, 0
    if resume and checkpoint and os.path.exists(checkpoint):
        ck = CK.load_reference(checkpoint)
        CK.check_config(ck["config"], run_to_dict(cfg), checkpoint)
        params, buffers, bufs, cache, history, t, start = (ck[k] for k in ("params", "buffers", "bufs", "cache",
                                                                            "history", "t", "epoch"))
        for rec in history if on_epoch is not None else ():
            on_epoch(rec)
    for epoch in range(start, cfg.epochs):
        t0, losses = time.perf_counter(), []
        for parts in batches(epoch):
            (xb, yb), = parts
            t += 1
            params, buffers, bufs, info = cram_step(
                params, buffers, bufs, np.asarray(xb, dtype), yb, lr=lr_at(t - 1, total, cfg.lr, plan),
                momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, compressions=comps,
                rho=cfg.cram_rho, plus=cfg.cram_plus, sparse_grad=cfg.cram_sparse_grad, t=t, seed=cfg.seed,
                mode=cfg.cram_mode, tau=cfg.cram_tau, mask_cache=cache, prunable=prunable,
                base_prob=cfg.cram_base_prob)
            cache = info["mask_cache"]
            losses.append(info["loss"])
            if on_step is not None:
                on_step(t, params, buffers, info)
        rec = {"epoch": epoch + 1, "step": t, "train_loss": float(np.mean(losses)),
               "lr": lr_at(t, total, cfg.lr, plan),
               **{f"test_{k}": v for k, v in evaluate(params, buffers, x_test, split.y_test).items()},
               "density": 1.0, "epoch_time": time.perf_counter() - t0}
        history.append(rec)
        if checkpoint:
            CK.save_tagged(checkpoint, {"config": run_to_dict(cfg), "epoch": epoch + 1, "params": params,
                                        "buffers": buffers, "bufs": bufs, "cache": cache, "history": history, "t": t})
        if on_epoch is not None:
            on_epoch(rec)
    return {"params": params, "buffers": buffers, "history": history}


class ReferenceCramBackend:
    """What the 'cram' procedure needs from a backend, on the NumPy MLP (``accel.cram_procedure.
    AccelCramBackend`` is the torch twin). A network is one dict of parameters and BN buffers."""

    def __init__(self, cfg, split):
        self.cfg, self.split = cfg, split
        self.template = None

    def build(self) -> None:
        """The network layout (init only), for a run whose training was restored from a checkpoint."""
        x, y = self.split.x_train, self.split.y_train
        self.template = init_mlp((x.shape[1], *self.cfg.hidden, int(y.max()) + 1), batchnorm=self.cfg.batchnorm,
                                 seed=self.cfg.seed, dtype=np.dtype(self.cfg.dtype))

    def train(self, on_epoch=None, on_step=None, **kw):
        out = train_cram_reference(self.cfg, self.split, on_step=on_step, on_epoch=on_epoch, **kw)
        self.template = (out["params"], out["buffers"])
        return {**out["params"], **out["buffers"]}, out["history"]

    def _split(self, net):
        params, buffers = self.template
        return {n: net[n] for n in params}, {n: net[n] for n in buffers}

    def prunable(self):
        return select_prunable([n for n in self.template[0] if n.startswith("fc.") and n.endswith(".weight")],
                               self.cfg.include, self.cfg.exclude)

    @property
    def has_bn(self) -> bool:
        return bool(self.template[1])

    def compress(self, net, compression):
        names = self.prunable()
        out, _ = CR.compress({n: net[n] for n in names}, compression)
        return {**net, **out}

    def density(self, net) -> float:
        names = self.prunable()
        return sum(int(np.count_nonzero(net[n])) for n in names) / sum(int(np.size(net[n])) for n in names)

    def bnt(self, net, x_batches):
        params, buffers = self._split(net)
        return {**params, **bn_recalibrate(params, buffers, list(x_batches))}

    def evaluate(self, net, x, y) -> dict:
        params, buffers = self._split(net)
        return evaluate(params, buffers, np.asarray(x, np.dtype(self.cfg.dtype)), y)


# ----------------------------------------------------------------------------- procedure

def one_shot_evaluation(backend, net, cfg, split) -> list[dict]:
    """docs/methods.md §7.5 evaluation protocol: for each pattern of ``cfg.cram_eval_patterns`` ('global' and
    'uniform' magnitude Top-K at each of ``cfg.cram_eval_sparsities``; fixed N:M / quantization
    strings) prune the trained network in one shot (prunable set only), report the test accuracy and
    NLL before and -- for networks with BatchNorm -- after BNT (docs/methods.md §1.13: running statistics reset,
    then ``cram_bnt_batches`` train-mode batches of ``cram_bnt_batch_size`` drawn with replacement
    from a fixed random subset of ``cram_bnt_samples`` training samples; seed = the run seed; no
    augmentation, the MNIST-5k pipeline has none). One record per (pattern, sparsity)."""
    x_train = split.x_train.astype(np.dtype(cfg.dtype))
    idx = bnt_batches(len(x_train), cfg.cram_bnt_samples, cfg.cram_bnt_batches, cfg.cram_bnt_batch_size,
                      seed=cfg.seed)
    x_bnt = [x_train[i] for i in idx]
    rows = []
    for name, pat in parse_eval_patterns(cfg.cram_eval_patterns):
        if isinstance(pat, str):
            todo = [(float(s), uniform_topk(cfg, float(s), pat)) for s in cfg.cram_eval_sparsities]
        else:
            todo = [(1.0 - pat.n / pat.m if pat.kind == "nm" else None, pat)]
        for s, comp in todo:
            pruned = backend.compress(net, comp)
            before = backend.evaluate(pruned, split.x_test, split.y_test)
            row = {"pattern": name, "sparsity": s, "density": backend.density(pruned),
                   "test_acc": before["acc"], "test_nll": before["nll"]}
            if backend.has_bn:
                after = backend.evaluate(backend.bnt(pruned, x_bnt), split.x_test, split.y_test)
                row.update(test_acc_bnt=after["acc"], test_nll_bnt=after["nll"])
            rows.append(row)
    return rows


def run_cram(engine, cfg, on_record=None, backend=None, stages=None) -> dict:
    """The 'cram' procedure ([TH] Alg. 2 training, then docs/methods.md §7.5's one-shot protocol): one record per
    training epoch (the dense model's test metrics); the last one also holds ``oneshot``, the list of
    one-shot pruned results (``one_shot_evaluation``). ``engine`` supplies the split and the clock.
    ``stages`` (``reference.stages.Stages``): training (epochs checkpointed) and the one-shot
    evaluation are resumable stages."""
    split = engine.split
    backend = engine.cram_backend(cfg) if backend is None else backend
    stages = Stages.attach(stages, on_record)

    def training(**kw):
        held = {}

        def on_epoch(rec):
            r = {"state": rec["epoch"], "phase": "train", **rec, "time_s": rec["epoch_time"]}
            if rec["epoch"] < cfg.epochs:
                stages.emit(r)
            else:
                held["last"] = r
        net, history = backend.train(on_epoch=on_epoch, **kw)
        return net, history, held["last"]

    def oneshot(net, last):
        t0 = engine.clock()
        last = {**last, "oneshot": one_shot_evaluation(backend, net, cfg, split)}
        last["time_s"] += engine.clock() - t0
        stages.emit(last)

    backend.build()  # also on resume: the layout the one-shot protocol prunes
    net, history, last = stages.train("train", training)
    stages.stage("oneshot", lambda: oneshot(net, last))
    return {"net": net, "records": stages, "updates": [], "history": history}
