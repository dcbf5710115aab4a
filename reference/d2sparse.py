"""D²-Sparse and its baselines ([D2] §3, §4.1-4.2, App. A-B; docs/methods.md §5.1, §5.3), written once.

The procedure is scalar logic over an *engine* (``reference.engine.ReferenceEngine`` for the
NumPy MLP, ``accel.engine.AccelEngine`` for torch models) that trains a phase, evaluates a
network and takes SNIP gradients; every array step goes through the engine's twin ``ops``. So
both backends run the same states, seeds, views and choices.

    D1 = T1(D), D2 = T2(D)                         two augmented views (AugMix weak / strong)
    theta <- dense warm-up on D (once)               docs/methods.md §5.1
    for state i = 1..k at density d_i = d_final^(i/k) (geometric; linear in sparsity as a switch):
        branch b = 1, 2: theta_b <- theta * M_b with M_b an independent random ERK mask at d_i
                         (``d2_mask_init="prune_from_previous"``: theta magnitude-pruned, see state_masks),
                         trained with RigL (the "ERK algorithm", docs/methods.md §5.1) on D_b
        for alpha in the grid [0.1, 0.25, 0.5, 0.75, 0.95]:
            theta_P = alpha theta_1 + (1 - alpha) theta_2    (Eq. 1; BN buffers with the same alpha)
            M_S = SNIP(theta_P, d_i, one batch of D1)        (global |w g|, docs/methods.md §1.10)
            score = accuracy of theta_P * M_S on D (un-augmented training data, never the test set)
        alpha* = the best score, first in grid order on ties
        theta <- fine-tune theta_P(alpha*) * M_S with RigL on D1 (5 epochs)
        record test accuracy / NLL / ECE, Hamming(M_1, M_2), alpha*
    1-shot variant: k = 1 (d_1 = d_final)

Baseline LB: the same states, one branch on D (no merge, no SNIP); Baseline: each iteration sums
the losses of a batch of D1 and the same batch of D2 (two forwards, one backward). Both train
``d2_baseline_epochs`` (55 = 50 + 5, docs/methods.md §5.4) per state. Each phase (warm-up,
branch, fine-tune, baseline state) is a fresh run of the training loop: its own optimizer
(momentum from 0) and its own LR schedule over the phase.

Views. ``Views`` makes augmented copies of D: copy (view, key) applies the view to D in batches,
in a seeded random order (CutMix mixes within a batch); the key is (phase, epoch), or
epoch mod ``d2_view_pool`` when a pool is set (the same copies reused, to bound the NumPy
augmentation cost). Each iteration reads the same sample indices from every view it uses.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .augment import make_view
from .data import iterate_batches
from .densities import layer_densities_for
from .procedure_tools import derive_seed, masked, test_metrics
from .stages import Stages

ALPHA_GRID = (0.1, 0.25, 0.5, 0.75, 0.95)


def state_densities(final_density: float, k: int, schedule: str = "geometric") -> list:
    """Target densities d_1..d_k of the states (docs/methods.md §5.1): geometric d_i = d_final^(i/k), or
    linear in sparsity 1 - (1 - d_final) i / k. The last one is d_final exactly."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} states must be an integer >= 1")
    if not (isinstance(final_density, (int, float)) and 0.0 < final_density <= 1.0):
        raise ValueError(f"final_density={final_density!r} is outside the allowed range (0, 1]")
    if schedule == "geometric":
        out = [final_density ** (i / k) for i in range(1, k + 1)]
    elif schedule == "linear":
        out = [1.0 - (1.0 - final_density) * i / k for i in range(1, k + 1)]
    else:
        raise ValueError(f"schedule={schedule!r} is not allowed; choose 'geometric' or 'linear'")
    out[-1] = float(final_density)
    return out


def best_alpha(alphas, scores) -> tuple:
    """(alpha*, index): the highest score, the first in grid order on ties (docs/methods.md §5.3)."""
    if len(alphas) == 0 or len(alphas) != len(scores):
        raise ValueError(f"need one score per alpha, got {len(scores)} scores for {len(alphas)} alphas")
    i = max(range(len(scores)), key=lambda j: (scores[j], -j))
    return alphas[i], i


class Views:
    """Augmented copies of the low-data set D (see the module docstring)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, names, seed: int, pool: int, batch_size: int):
        self.x, self.y, self.seed, self.pool, self.batch_size = x, y, int(seed), int(pool), int(batch_size)
        self.names = list(names)
        self.fns = [None if n == "none" else make_view(n) for n in self.names]
        self._cache: dict = {}

    def copy(self, v: int, phase: tuple, epoch: int) -> tuple:
        """(x_aug, y) of view ``v``: soft labels for an augmenting view, int labels for 'none'."""
        if self.fns[v] is None:
            return self.x, self.y
        key = (v, epoch % self.pool) if self.pool else (v, *phase, epoch)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, *key, 0xA6])
            order = rng.permutation(len(self.y))
            xa = np.empty_like(self.x)
            ya = np.empty((len(self.y), int(self.y.max()) + 1), dtype=self.x.dtype)
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                xa[idx], ya[idx] = self.fns[v](self.x[idx], self.y[idx], rng)
            if not self.pool:  # fresh copies are used once; keep only the pool's
                self._cache.clear()
            self._cache[key] = (xa, ya)
        return self._cache[key]

    def batches(self, views, phase: tuple, seed: int):
        """``batches(epoch)`` for the training loops: per iteration one part per view in ``views``,
        all reading the same sample indices (order from (seed, epoch))."""
        ids = np.arange(len(self.y)).reshape(-1, 1)

        def batches(epoch):
            copies = [self.copy(v, phase, epoch) for v in views]
            for idx, _ in iterate_batches(ids, self.y, self.batch_size, seed, epoch):
                idx = idx[:, 0]
                yield [(xa[idx], ya[idx]) for xa, ya in copies]
        return batches


def random_erk_masks(engine, cfg, net: dict, density: float, seed: int) -> dict:
    """An exact-count random mask with the run's layer distribution (ERK by default) at ``density``."""
    ops = engine.ops
    weights = {n: net[n] for n in engine.prunable(net)}
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    kw = {"power_scale": cfg.erk_power_scale} if cfg.distribution == "erk" else {}
    dist = cfg.distribution if cfg.distribution != "global" else "erk"
    dens = layer_densities_for(dist, shapes, density, **kw)
    return ops.random_masks(ops.random_scores_like(weights, seed), dens)


def state_masks(engine, cfg, net: dict, density: float, seed: int) -> dict:
    """The initial masks of one branch (or baseline) of a state, by ``cfg.d2_mask_init``:

    - "random" (default, [D2] §3 "Two random sparse binary matrices ... are initialized for each model
      at the predefined state sparsity"): an independent exact-count random ERK mask at ``density``;
    - "prune_from_previous" (an option, docs/methods.md §5.2): keep the previous state's learned
      topology: magnitude-prune the incoming network (the previous state's fine-tuned network; the
      dense warm-up before state 1) per layer to the state's ERK densities, then move
      ``drop_fraction`` of each layer's kept weights (the smallest |w|) to random positions drawn from
      ``seed``, so the two branches still start from different masks."""
    if cfg.d2_mask_init == "random":
        return random_erk_masks(engine, cfg, net, density, seed)
    ops = engine.ops
    weights = {n: net[n] for n in engine.prunable(net)}
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    kw = {"power_scale": cfg.erk_power_scale} if cfg.distribution == "erk" else {}
    dist = cfg.distribution if cfg.distribution != "global" else "erk"
    kept = ops.magnitude_masks(weights, layer_densities_for(dist, shapes, density, **kw))
    counts = ops.swap_counts(kept, cfg.drop_fraction)
    survivors = ops.drop(kept, ops.abs_all(weights), counts)
    return ops.grow(survivors, ops.random_scores_like(weights, seed), counts)


def phase_config(cfg, method: str, epochs: int, density: float, seed: int, lr_scale: float = 1.0):
    """The RunConfig of one training phase (fresh optimizer and LR schedule over the phase)."""
    return replace(cfg, procedure="train", method=method, epochs=int(epochs), lr_schedule=cfg.lr_schedule_name(), density=1.0 if method == "dense" else density,
                   seed=seed, lr=cfg.lr * lr_scale, suptickets=False).validate()


def run_d2(engine, cfg, on_record=None, stages=None) -> dict:
    """Run ``cfg.procedure`` (d2sparse, d2_baseline or d2_baseline_lb) on the low-data set
    D = engine.split.x_train; returns the final network and masks, one record per state (state 0 = the
    warm-up) and the per-phase mask-update logs. ``stages`` (``reference.stages.Stages``): the
    warm-up and each state are resumable stages, each training phase a child stage."""
    proc = cfg.procedure
    if proc not in ("d2sparse", "d2_baseline", "d2_baseline_lb"):
        raise ValueError(f"procedure={proc!r} is not a D²-Sparse procedure")
    ops, seed = engine.ops, cfg.seed
    x_train, y_train = engine.split.x_train, engine.split.y_train
    test = (engine.split.x_test, engine.split.y_test)
    views = Views(x_train, y_train, [*cfg.d2_views, cfg.d2_lb_view, "none"], derive_seed(seed, 99), cfg.d2_view_pool,
                  cfg.batch_size)
    dens = state_densities(cfg.density, cfg.d2_states, cfg.d2_schedule)
    alphas = [float(a) for a in cfg.d2_alphas]
    stages = Stages.attach(stages, on_record)

    def train(name, method, epochs, net, masks, batch_views, phase, density, lr_scale=1.0):
        """One training phase as the child stage ``name`` (its epochs checkpointed)."""
        pseed = derive_seed(seed, *phase)
        pcfg = phase_config(cfg, method, epochs, density, pseed, lr_scale)

        def run(**kw):
            out = engine.train(pcfg, net, masks, views.batches(batch_views, phase, pseed), **kw)
            stages.add_updates({"phase": list(phase), **u} for u in out["updates"])
            return out
        return stages.train(name, run)

    def warmup(net, t0):
        if cfg.d2_warmup_epochs > 0:  # dense warm-up on the un-augmented D (view 3 = 'none')
            net = train("dense", "dense", cfg.d2_warmup_epochs, net, None, (3,), (0, 0), 1.0)["net"]
        stages.emit({"state": 0, "phase": "warmup", "density": 1.0, **test_metrics(engine, net, test),
                     "time_s": engine.clock() - t0})
        return net

    def state(i, d, net):
        t0 = engine.clock()
        rec = {"state": i, "phase": "state", "target_density": d}
        if proc == "d2sparse":
            branches = []
            for b in (0, 1):
                m0 = state_masks(engine, cfg, net, d, derive_seed(seed, i, b, 1))
                out = train(f"branch{b + 1}", cfg.method, cfg.d2_state_epochs, masked(net, m0), m0, (b,), (i, b + 1), d)
                branches.append(out)
                rec[f"branch{b + 1}_test_acc"] = engine.evaluate(out["net"], *test)["acc"]
            m1, m2 = branches[0]["masks"], branches[1]["masks"]
            rec["hamming"] = float(ops.hamming_distance(m1, m2, normalized=True))
            rec["hamming_count"] = int(ops.hamming_distance(m1, m2))
            ft_phase = (i, 3)
            snip_x, snip_y = next(iter(views.batches((0,), ft_phase, derive_seed(seed, *ft_phase))(0)))[0]
            scores, cands = [], []
            for a in alphas:
                merged = ops.interpolate(branches[0]["net"], branches[1]["net"], a)
                if cfg.d2_bn_merge == "recompute":
                    merged = engine.bn_recalibrate(merged, x_train)
                names = engine.prunable(merged)
                ms = ops.snip_masks({n: merged[n] for n in names}, engine.grads(merged, snip_x, snip_y), d)
                cand = masked(merged, ms)
                scores.append(engine.evaluate(cand, x_train, y_train)["acc"])
                cands.append((cand, ms))
            a_star, j = best_alpha(alphas, scores)
            rec.update(alpha=a_star, alpha_scores=dict(zip(map(str, alphas), scores)))
            out = train("finetune", cfg.method, cfg.d2_finetune_epochs, cands[j][0], cands[j][1], (0,), ft_phase, d,
                        cfg.d2_finetune_lr_scale)
        else:
            m0 = state_masks(engine, cfg, net, d, derive_seed(seed, i, 0, 1))
            used = (0, 1) if proc == "d2_baseline" else (2,)
            out = train("baseline", cfg.method, cfg.d2_baseline_epochs, masked(net, m0), m0, used, (i, 4), d)
        rec.update(density=float(ops.total_density(out["masks"])), **test_metrics(engine, out["net"], test),
                   time_s=engine.clock() - t0)
        stages.emit(rec)
        return out["net"], out["masks"]

    t0 = engine.clock()
    net0 = engine.init_net(cfg, x_train.shape[1], int(y_train.max()) + 1)  # also on resume: the engine's model
    net, masks = stages.stage("warmup", lambda: warmup(net0, t0)), None
    for i, d in enumerate(dens, 1):
        net, masks = stages.stage(f"state{i}", lambda i=i, d=d, net=net: state(i, d, net))
    return {"net": net, "masks": masks, "records": stages, "updates": stages.updates, "densities": dens}


def total_epochs(cfg) -> int:
    """Epochs the procedure trains in all (for progress bars and budgets)."""
    per_state = (2 * cfg.d2_state_epochs + cfg.d2_finetune_epochs if cfg.procedure == "d2sparse"
                 else cfg.d2_baseline_epochs)
    return cfg.d2_warmup_epochs + cfg.d2_states * per_state
