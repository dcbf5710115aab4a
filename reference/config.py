"""Run and experiment configuration (pure scalar logic, written once and imported by accel).

A run is one training job; an experiment (a TOML file) is a list of runs times a list of seeds.
Validation is strict: an unknown key, a wrong type or a value outside its range is an error that
names the key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional


METHODS = ("dense", "static", "set", "rigl", "snfs", "granet", "dst_ee", "gmp", "acdc")
DYNAMIC_METHODS = ("set", "rigl", "snfs", "granet", "dst_ee")
DISTRIBUTIONS = ("erk", "er", "uniform", "global")
MODELS = ("mlp", "cnn", "resnet18", "resnet50", "vgg16", "vit")
OPTIMIZERS = ("sgd", "adam", "adamw")
BACKENDS = ("accel", "reference")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64")
PROCEDURES = ("train", "d2sparse", "d2_baseline", "d2_baseline_lb", "imp", "acdc", "cocktail", "cram")
COCKTAIL_RANGES = ("paper", "hidden")
COCKTAIL_MIN_HOLDOUT_PER_CLASS = 1
D2_MASK_INITS = ("random", "prune_from_previous")
D2_SCHEDULES = ("geometric", "linear")
D2_BN_MERGES = ("interpolate", "recompute")
# Choices and defaults that belong to a method, an operator or a schedule are imported from there
# (written once); the names below are kept for the code and the CLI that read them from here.
# isort: off
from .augment import VIEWS as D2_VIEWS  # noqa: E402
from .cram_options import MODES as CRAM_MODES  # noqa: E402
from .config_derived import MNIST5K_CLASSES, MNIST5K_PER_CLASS, RunDerived  # noqa: E402
from .datasets import AUGMENTS, DATASETS  # noqa: E402
from .dst import COUNTER_INITS, EXPLORATION_FORMS  # noqa: E402
from .masks import SCOPES  # noqa: E402
from .methods import DSTEE, GMP, SNFS, SupTickets  # noqa: E402
from .methods.acdc import DISTRIBUTIONS as ACDC_DISTRIBUTIONS, PLANS as ACDC_PLANS  # noqa: E402
from .methods.base import INITS as MASK_INITS  # noqa: E402
from .methods.suptickets import AVERAGING as ST_AVERAGING, BN_AVERAGES as ST_BN_AVERAGES, \
    PRUNE_SCOPES as ST_PRUNE_SCOPES  # noqa: E402
from .sparsifier import NONFINITE_POLICIES as NONFINITE  # noqa: E402
from .schedules import DROP_FRACTION_SCHEDULES as FRACTION_SCHEDULES, LR_SCHEDULES, STAGE_LR_SCHEDULES  # noqa: E402
# isort: on
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")


def check_name(key: str, value, where: str = "") -> str:
    """A run label or an experiment name becomes part of a file name: 1 to 100 characters, letters,
    digits and ``. _ + = -``, starting with a letter or digit (no path separator, no '..', never
    empty), so every run writes inside its output folder."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}{where} must be a string")
    if not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{key}={value!r}{where} is not allowed: it names files, so use 1 to 100 letters, digits "
                          f"and '._+=-', starting with a letter or digit (no '/', no leading '.', not empty)")
    return value


class ConfigError(ValueError):
    """A configuration key or value that is not allowed."""


def _f(default=dataclasses.MISSING, help: str = "", factory=None, choices=None):
    """A RunConfig field with its help text (and its allowed values, if a choice) as metadata: the
    one source of ``twinsparse train --help``, of docs/config.md (``field_help``,
    ``config_reference``) and of the choice checks in ``validate``."""
    meta = {"help": help, **({"choices": tuple(choices)} if choices is not None else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _option(cls, attr: str, help: str, choices=None):
    """A RunConfig field that is the option ``attr`` of the method class ``cls``: its default is the
    class's own (not repeated here), and ``method_options(cfg, cls)`` hands it to the class."""
    default = {f.name: f.default for f in dataclasses.fields(cls)}[attr]
    meta = {"help": help, "option_of": (cls, attr), **({"choices": tuple(choices)} if choices is not None else {})}
    return field(default=default, metadata=meta)


@dataclass
class RunConfig(RunDerived):
    label: str = _f("run", "name of the run in logs, tables and file names (letters, digits, '._+=-')")
    backend: str = _f("accel", "'accel' (PyTorch, any model) or 'reference' (the NumPy twin: MLP, SGD)", choices=BACKENDS)
    device: str = _f("cpu", "'cpu' or 'cuda' (accel only)", choices=DEVICES)
    dtype: str = _f("float32", 'floating dtype of weights and data: float32 or float64', choices=DTYPES)
    seed: int = _f(0, 'seed of the initialisation, the data order, the augmentation and every random mask decision')
    # model
    model: str = _f("mlp",
        'network: mlp, cnn, resnet18, resnet50 (ImageNet form), vgg16 or vit; input channels and image '
        'size come from the data', choices=MODELS)
    hidden: list = _f(factory=lambda: [300, 100], help='hidden layer widths of the MLP')
    batchnorm: bool = _f(False, 'BatchNorm1d after each hidden Linear of the MLP')
    # sparsity
    method: str = _f("dense", 'sparse training method: dense, static, set, rigl, snfs, granet, dst_ee, gmp or acdc', choices=METHODS)
    density: float = _f(1.0,
        'fraction of the prunable weights kept (the final density for GraNet and GMP, the compressed '
        "phases' for AC/DC); 1.0 with method dense")
    distribution: str = _f("erk",
        'how the density is spread over layers: erk, er, uniform or global (one magnitude top-k)', choices=DISTRIBUTIONS)
    mask_init: str = _f("random", 'initial mask of the sparse methods: random, magnitude or snip', choices=MASK_INITS)
    erk_power_scale: float = _f(1.0, 'power applied to the ER/ERK ratio (1 = ERK as published, 0 = uniform)')
    include: list = _f(factory=list, help=
        "weights to prune: names, module names, fnmatch patterns, 'first' or 'last' (default: every "
        'Linear, Conv, ConvTranspose and attention projection)')
    exclude: list = _f(factory=list, help=
        "weights left dense: names, module names, fnmatch patterns, 'first' or 'last'")
    # dynamic sparse training (docs/methods.md §2: interval and drop fraction are not given by the
    # papers, hence parameters). t_end_fraction and fraction_schedule left unset (None) take the
    # method's own default (``dst_window``): DST-EE Alg. 1 updates until the last iteration with a
    # fixed drop count (1.0, "constant"); RigL and the others stop at 0.75 T with a cosine decay.
    delta_t: int = _f(50, 'iterations between two mask updates (SET, RigL, SNFS, GraNet, DST-EE, GMP)')
    drop_fraction: float = _f(0.3, 'fraction of the active weights dropped and regrown at each mask update')
    fraction_schedule: Optional[str] = _f(None,
        "decay of the drop fraction: constant, cosine or linear (unset: the method's own)", choices=FRACTION_SCHEDULES)
    t_start: int = _f(0, 'first iteration at which masks may change')
    t_end_fraction: Optional[float] = _f(None,
        "mask updates stop after this fraction of the iterations (unset: the method's own, 0.75 for RigL,"
        ' 1.0 for DST-EE)')
    step_on_update: bool = _f(False, 'also take the optimizer step at an iteration that updates the masks')
    c: float = _option(DSTEE, "c", 'DST-EE: weight of the exploration term c ln t / (N + eps) in the growth score')
    eps: float = _option(DSTEE, "eps", 'DST-EE: the constant added to the activation counter N in the exploration term')
    counter_init: str = _option(DSTEE, "counter_init", "DST-EE: initial activation counters: 'mask' (1 where active) or 'zeros'", choices=COUNTER_INITS)
    exploration_form: str = _option(DSTEE, "form", "DST-EE: exploration term as in Eq. 1 ('eq1') or as printed in the text ('text')", choices=EXPLORATION_FORMS)
    snfs_momentum: float = _option(SNFS, "momentum", 'SNFS: smoothing factor of the dense gradient momentum it grows by')
    redistribute: bool = _option(SNFS, "redistribute", 'SNFS: spread the regrowth over layers by their mean momentum')
    init_density: float = _f(0.5, 'GraNet: density at the start, pruned gradually down to density')
    prune_end_fraction: float = _f(0.5, 'GMP and GraNet: gradual pruning ends after this fraction of the iterations')
    gmp_scope: str = _option(GMP, "scope", 'GMP: prune by global or per-layer magnitude', choices=SCOPES)
    # AC/DC ([TH] Alg. 1, §3.4.1; docs/methods.md §6.1): phase lengths in epochs; a length left unset
    # (None) takes the thesis value 10/5/5/10/15 with acdc_plan = "thesis" (the default: lengths kept,
    # the alternating block fills the budget, [TH] §3.4.3 "preserving the duration of each compressed
    # and decompressed phase"), or reference.acdc_ops.scaled_acdc_lengths(epochs) with acdc_plan = "scaled"
    # (the lengths scaled to a small budget: a project choice for miniatures). density = density of
    # the compressed phases.
    acdc_plan: str = _f("thesis",
        "AC/DC: phase lengths of the thesis ('thesis') or scaled to the epoch budget ('scaled')", choices=ACDC_PLANS)
    acdc_warmup: Optional[int] = _f(None, 'AC/DC: epochs of dense warm-up (unset: from acdc_plan)')
    acdc_compressed: Optional[int] = _f(None,
        'AC/DC: epochs of each compressed (sparse) phase (unset: from acdc_plan)')
    acdc_decompressed: Optional[int] = _f(None,
        'AC/DC: epochs of each decompressed (dense) phase (unset: from acdc_plan)')
    acdc_final_decompressed: Optional[int] = _f(None,
        'AC/DC: epochs of the last decompressed phase (unset: from acdc_plan)')
    acdc_final_compressed: Optional[int] = _f(None,
        'AC/DC: epochs of the final compressed fine-tuning phase (unset: from acdc_plan)')
    acdc_distribution: str = _f("global",
        'AC/DC: selection of the compressed phases: global, uniform, first_last_dense or nm24', choices=ACDC_DISTRIBUTIONS)
    # Sup-tickets around the method ([ST] Alg. 1; docs/methods.md §4.2, §4.3, §4.1)
    suptickets: bool = _f(False, 'wrap the sparse method in Sup-tickets (superposed cheap tickets in the last stage)')
    st_cycle_epochs: float = _f(0.5, 'Sup-tickets: epochs per cycle of the superposing stage')
    st_n_tickets: Optional[int] = _option(SupTickets, "n_tickets", 'Sup-tickets: number of cheap tickets (unset: as many cycles as fit)')
    st_explore_fraction: float = _option(SupTickets, "explore_fraction", 'Sup-tickets: fraction of weights explored (dropped and regrown) after each superposition')
    st_averaging: str = _option(SupTickets, "averaging", 'Sup-tickets: how tickets are superposed: cia, caa or cima', choices=ST_AVERAGING)
    st_beta: float = _option(SupTickets, "beta", 'Sup-tickets: weight of the running average in cima')
    st_prune_scope: str = _option(SupTickets, "prune_scope", 'Sup-tickets: re-prune the superposed weights per layer or globally', choices=ST_PRUNE_SCOPES)
    st_prune_each_step: bool = _option(SupTickets, "prune_each_step", 'Sup-tickets: prune the running average itself (false: keep it dense, prune a copy)')
    st_bn_avg: str = _option(SupTickets, "bn_avg", "Sup-tickets: average BatchNorm running statistics as standard deviations ('std') or variances "
        "('var')", choices=ST_BN_AVERAGES)
    st_lr_low: float = _option(SupTickets, "lr_low", 'Sup-tickets: lowest learning rate of a cycle (Eq. 3)')
    st_lr_high: float = _option(SupTickets, "lr_high", 'Sup-tickets: highest learning rate of a cycle (Eq. 3)')
    # the superposing stage's LR: Eq. 3 (default), or FGE's / SWA's cyclical rate ([ST] Table 7)
    st_lr_schedule: str = _option(SupTickets, "lr_schedule", "Sup-tickets: the stage's learning rate: Eq. 3, or FGE's / SWA's cyclical schedule", choices=STAGE_LR_SCHEDULES)
    # True: also explore at the start of the stage, so every cycle starts with an exploration
    # ([ST] §3.2.1 text); False: Alg. 1 (explore after each superposition only)
    st_explore_at_stage_start: bool = _option(SupTickets, "explore_at_stage_start", 'Sup-tickets: also explore when the superposing stage starts')
    # DST-EE exploitation degree ([EE] Eq. 2-3) of every mask update, logged beside R
    ee_exploitation_degree: bool = _f(True, 'DST-EE: log the exploitation degree (Eq. 2-3) of every mask update')
    # D²-Sparse and its baselines ([D2] §3, §4.1-4.2; docs/methods.md §5.1, §5.3); procedure 'train' = one run
    procedure: str = _f("train",
        'what is run: train (one run) or a multi-phase procedure: d2sparse, d2_baseline, d2_baseline_lb, '
        'imp, acdc, cocktail, cram', choices=PROCEDURES)
    d2_states: int = _f(10, 'D²-Sparse: number of sparse states')
    d2_schedule: str = _f("geometric", 'D²-Sparse: density of the states decreasing geometrically or linearly', choices=D2_SCHEDULES)
    d2_warmup_epochs: int = _f(25, 'D²-Sparse: epochs of dense warm-up (state 0)')
    d2_state_epochs: int = _f(50, 'D²-Sparse: epochs of each branch of a state')
    d2_finetune_epochs: int = _f(5, 'D²-Sparse: epochs of fine-tuning after each merge')
    d2_finetune_lr_scale: float = _f(1.0, 'D²-Sparse: learning rate of the fine-tuning as a multiple of lr')
    d2_baseline_epochs: int = _f(55, 'D²-Sparse baselines: training epochs per state')
    d2_alphas: list = _f(factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.95], help=
        'D²-Sparse: candidate merge weights alpha, the best kept')
    d2_views: list = _f(factory=lambda: ["augmix_weak", "augmix_strong"], help=
        'D²-Sparse: the two data views of the branches: augmix_weak, augmix_strong, cutmix or none')
    d2_lb_view: str = _f("none", 'D²-Sparse large-batch baseline: its data view', choices=D2_VIEWS)
    d2_view_pool: int = _f(0, 'D²-Sparse: reuse a pool of this many augmented copies of the data (0: fresh views)')
    d2_bn_merge: str = _f("interpolate",
        'D²-Sparse: BatchNorm statistics of a merge: interpolated or recomputed on the data', choices=D2_BN_MERGES)
    # each state's initial masks: "random" ERK masks ([D2] §3, literal) or the previous state's network
    # magnitude-pruned to the state's density, then drop_fraction of it re-grown at random per branch
    d2_mask_init: str = _f("random", "D²-Sparse: each state's masks: random ERK or pruned from the previous state", choices=D2_MASK_INITS)
    # IMP with weight rewinding (docs/methods.md §2.5): N iterations pruning imp_rate of the remaining weights
    imp_iterations: int = _f(10, 'IMP: number of prune-and-retrain iterations')
    imp_rate: float = _f(0.2, 'IMP: fraction of the remaining weights pruned per iteration')
    imp_rewind_epoch: int = _f(1, 'IMP: epoch whose weights the survivors are rewound to')
    imp_scope: str = _f("global", 'IMP: prune by global or per-layer magnitude', choices=SCOPES)
    # CrAM ([TH] Ch. 5 Alg. 2; docs/methods.md §7.1, §7.2, §7.5; reference.cram_options): procedure 'cram' trains a dense
    # model with cram_mode, then prunes it one-shot at cram_eval_sparsities (+ BNT on cram_bnt_samples)
    cram_mode: str = _f("cram", 'CrAM: training mode: cram, sam, csam or plain sgd', choices=CRAM_MODES)
    cram_rho: float = _f(0.05, 'CrAM: step size rho of the perturbation')
    cram_plus: Optional[bool] = _f(None,
        "CrAM: add the gradient at the dense point (CrAM+; unset: the mode's default)")
    cram_sparse_grad: bool = _f(True, 'CrAM: mask the gradient taken at the compressed point')
    cram_tau: int = _f(1, 'CrAM: steps a Top-K mask is kept before it is recomputed')
    cram_compressions: list = _f(factory=lambda: ["topk:0.5", "topk:0.7", "topk:0.9"], help=
        "CrAM: compressions drawn per step, e.g. 'topk:0.5', 'nm:2:4', 'quant:4'")
    cram_eval_sparsities: list = _f(factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9], help=
        'CrAM: sparsities of the one-shot pruning evaluated after training')
    cram_eval_patterns: list = _f(factory=lambda: ["global", "uniform", "nm:2:4"], help=
        'CrAM: patterns of the one-shot evaluation: global, uniform, nm:N:M, quant:B')
    cram_bnt_samples: int = _f(1000, 'CrAM: training samples the BatchNorm re-tuning draws from')
    cram_bnt_batches: int = _f(100, 'CrAM: batches of BatchNorm re-tuning after each one-shot pruning')
    cram_bnt_batch_size: int = _f(128, 'CrAM: batch size of the BatchNorm re-tuning')
    # probability of a plain base-optimizer step instead of the CrAM step ([TH] §5.5.1, Table 5.9 p(Adam))
    cram_base_prob: float = _f(0.0, 'CrAM: probability of a plain base-optimizer step instead of a CrAM step')
    # uniform Top-K (training compressions ':uniform' and the one-shot 'uniform' pattern) keeps the first
    # and the last layer dense ([TH] §5.4.1: "we keep the first and last layers dense"); False prunes them
    cram_uniform_first_last_dense: bool = _f(True, 'CrAM: uniform Top-K keeps the first and last layer dense')
    # Sparse Cocktail ([SC] §3-4, App. C, F; docs/methods.md §8.1): N IMP iterations of UMG masks + dense-pivot
    # co-training, greedy interpolation on a hold-out, BnUpdate per subnetwork (reference.cocktail_procedure)
    cocktail_iterations: int = _f(10, 'Sparse Cocktail: number of IMP iterations')
    cocktail_rewind_epoch: int = _f(1, 'Sparse Cocktail: epoch whose weights each iteration rewinds to')
    cocktail_unstructured_rate: float = _f(0.2, 'Sparse Cocktail: unstructured pruning rate per iteration')
    cocktail_channel_rate: float = _f(0.1, 'Sparse Cocktail: channel pruning rate per iteration')
    cocktail_beta: float = _f(0.8, 'Sparse Cocktail: UMG weight of the unstructured mask in the channel score')
    cocktail_holdout_fraction: float = _f(0.05,
        'Sparse Cocktail: fraction of the training data held out to score the interpolation')
    cocktail_temperature: float = _f(1.0, "Sparse Cocktail: temperature of the dense pivot's soft targets")
    cocktail_range: str = _f("paper", "Sparse Cocktail: layers pruned: 'paper' (all but first and last) or 'hidden'", choices=COCKTAIL_RANGES)
    cocktail_rewind: bool = _f(True, 'Sparse Cocktail: rewind weights at each iteration (ablation switch)')
    cocktail_interpolate: bool = _f(True, 'Sparse Cocktail: greedy weight interpolation (ablation switch)')
    cocktail_pivot: bool = _f(True, 'Sparse Cocktail: dense pivot co-training (ablation switch)')
    cocktail_umg: bool = _f(True, 'Sparse Cocktail: unified mask generation (ablation switch)')
    # optimisation
    optimizer: str = _f("sgd", 'optimizer: sgd, adam or adamw', choices=OPTIMIZERS)
    epochs: int = _f(10, 'passes over the training set')
    batch_size: int = _f(64, 'samples per iteration')
    lr: float = _f(0.05, 'peak learning rate')
    momentum: float = _f(0.9, 'momentum factor of SGD')
    weight_decay: float = _f(5e-4, 'weight decay (L2 for SGD and Adam, decoupled for AdamW)')
    nesterov: bool = _f(False, 'Nesterov momentum (SGD)')
    # None: the paper's schedule of the method (``lr_schedule_name``): warmup_cosine for AC/DC and CrAM,
    # cyclic_cosine for Sparse Cocktail, step for Sup-tickets, cosine otherwise (docs/methods.md §1.8)
    lr_schedule: Optional[str] = _f(None, "learning-rate schedule (unset: the method's paper schedule)", choices=LR_SCHEDULES)
    # warmup_cosine: linear warm-up epochs ([TH] §5.4, App. A.2: 5)
    lr_warmup_epochs: int = _f(5, 'warmup_cosine: epochs of linear warm-up')
    # cyclic_cosine ([SC] Table 5: init_epoch 100, interval 10,
    lr_cycle_init_epochs: int = _f(100, 'cyclic_cosine: epochs of the first cycle')
    #   min_lr 0.001, restart_lr 0.01)
    lr_cycle_interval: int = _f(10, 'cyclic_cosine: epochs of every later cycle')
    lr_min: float = _f(0.001, 'cyclic_cosine: lowest learning rate')
    lr_restart: float = _f(0.01, 'cyclic_cosine: learning rate at each restart')
    # data (reference.datasets; imagefolder through accel.data)
    dataset: str = _f("mnist5k",
        'data: mnist5k (ships with the install), cifar10, cifar100, imagefolder, tensors (.npz) or '
        'synthetic', choices=DATASETS)
    data_root: Optional[str] = _f(None,
        'cifar10/100: folder holding cifar-10-batches-py or cifar-100-python; imagefolder: folder with '
        'train/ and val/; tensors: the .npz file')
    augment: Optional[str] = _f(None,
        'training augmentation: none or crop_flip (unset: crop_flip for CIFAR, none otherwise)', choices=AUGMENTS)
    image_size: int = _f(32, 'imagefolder: images resized and center-cropped to this side')
    synthetic_shape: list = _f(factory=lambda: [3, 32, 32], help='synthetic: shape of one sample, e.g. 3 32 32 or 20')
    synthetic_classes: int = _f(10, 'synthetic: number of classes')
    synthetic_train: int = _f(1000, 'synthetic: training samples')
    synthetic_test: int = _f(200, 'synthetic: test samples')
    train_budget: Optional[int] = _f(None,
        'train on a class-balanced subset of this many samples (unset: the whole training split)')
    test_per_class: int = _f(100, 'mnist5k: test samples per class')
    holdout_per_class: int = _f(50, 'held-out samples per class taken from the training data')
    split_seed: int = _f(0, 'seed of the train / hold-out / test split and of synthetic data')
    check_finite: bool = _f(True, 'stop on NaN/inf in gradients (see nonfinite)')
    nonfinite: str = _f("raise", 'on a non-finite gradient: raise, or skip the iteration', choices=NONFINITE)
    # data-parallel (torchrun): debug check that every rank holds the same masks after each update
    ddp_verify_masks: bool = _f(False,
        'under torchrun: check after every mask update that all ranks hold the same masks')
    # outputs
    log_every: int = _f(0,
        'also log the training loss, learning rate and density every this many iterations (0: per epoch '
        'only)')

    def validate(self) -> "RunConfig":
        from . import config_checks as CHECKS   # the checks of one method / procedure / dataset
        check_name("label", self.label)
        for f in fields(self):          # every choice field against the values on its metadata
            value = getattr(self, f.name)
            if "choices" in f.metadata and not (value is None and f.default is None):
                check_choice(f.name, value, f.metadata["choices"])
        check_int("lr_warmup_epochs", self.lr_warmup_epochs, 0)
        check_int("lr_cycle_init_epochs", self.lr_cycle_init_epochs, 1)
        check_int("lr_cycle_interval", self.lr_cycle_interval, 1)
        check_range("lr_min", self.lr_min, 0.0, math.inf)
        check_range("lr_restart", self.lr_restart, 0.0, math.inf)
        if self.lr_schedule_name() == "warmup_cosine" and self.lr_warmup_epochs >= self.epochs:
            raise ConfigError(f"lr_warmup_epochs={self.lr_warmup_epochs} leaves no cosine phase in a run of "
                              f"epochs={self.epochs} (lr_schedule='warmup_cosine'); use lr_warmup_epochs < epochs")
        check_range("density", self.density, 0.0, 1.0, lo_open=True)
        if self.method == "dense" and self.density != 1.0:
            raise ConfigError(f"density={self.density} with method='dense': a dense run has density 1.0 "
                              f"(use method='static' for a fixed sparse mask)")
        if self.method != "dense" and self.density == 1.0:
            raise ConfigError(f"method={self.method!r} needs density < 1 (got density=1.0); use method='dense'")
        check_range("erk_power_scale", self.erk_power_scale, 0.0, math.inf)
        check_int("delta_t", self.delta_t, 1)
        check_int("t_start", self.t_start, 0)
        check_range("drop_fraction", self.drop_fraction, 0.0, 1.0)
        if self.t_end_fraction is not None:
            check_range("t_end_fraction", self.t_end_fraction, 0.0, 1.0, lo_open=True)
        check_range("c", self.c, 0.0, math.inf)
        check_range("eps", self.eps, 0.0, math.inf, lo_open=True)
        check_range("snfs_momentum", self.snfs_momentum, 0.0, 0.999999)
        check_range("init_density", self.init_density, 0.0, 1.0, lo_open=True)
        check_range("prune_end_fraction", self.prune_end_fraction, 0.0, 1.0, lo_open=True)
        CHECKS.check_acdc(self)
        check_range("st_cycle_epochs", self.st_cycle_epochs, 0.0, math.inf, lo_open=True)
        if self.st_n_tickets is not None:
            check_int("st_n_tickets", self.st_n_tickets, 1)
        check_range("st_explore_fraction", self.st_explore_fraction, 0.0, 1.0)
        check_range("st_beta", self.st_beta, 0.0, 1.0)
        check_range("st_lr_low", self.st_lr_low, 0.0, math.inf, lo_open=True)
        check_range("st_lr_high", self.st_lr_high, self.st_lr_low, math.inf)
        if self.suptickets and self.method == "dense":
            raise ConfigError("suptickets=true needs a sparse base method (static, set, rigl, snfs, granet, dst_ee)")
        if self.method == "granet" and self.init_density < self.density:
            raise ConfigError(f"init_density={self.init_density} is below density={self.density}: GraNet prunes "
                              f"gradually from init_density down to density")
        check_range("lr", self.lr, 0.0, math.inf)
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        for key, lo in (("epochs", 1), ("batch_size", 1), ("test_per_class", 1), ("holdout_per_class", 0)):
            check_int(key, getattr(self, key), lo)
        check_int("seed", self.seed, 0)
        check_int("split_seed", self.split_seed, 0)
        if self.train_budget is not None:
            check_int("train_budget", self.train_budget, 1)
        if not (isinstance(self.hidden, list) and self.hidden and all(isinstance(h, int) and h > 0 for h in self.hidden)):
            raise ConfigError(f"hidden={self.hidden!r} must be a non-empty list of positive integers")
        if self.backend == "reference" and self.model != "mlp":
            raise ConfigError(f"backend='reference' trains model='mlp' only (got model={self.model!r})")
        if self.backend == "reference" and self.optimizer != "sgd":
            raise ConfigError(f"backend='reference' implements optimizer='sgd' only (got optimizer={self.optimizer!r})")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov=true needs momentum > 0")
        CHECKS.check_data(self)
        n_train = MNIST5K_CLASSES * (MNIST5K_PER_CLASS - self.test_per_class - self.holdout_per_class)
        if self.dataset != "mnist5k":
            n_train = self.full_train_size()
        elif n_train < MNIST5K_CLASSES:
            raise ConfigError(f"test_per_class={self.test_per_class} + holdout_per_class={self.holdout_per_class} "
                              f"leave {n_train} training samples of MNIST-5k ({MNIST5K_PER_CLASS} per class)")
        if self.train_budget is not None and n_train is not None and self.train_budget > n_train:
            raise ConfigError(f"train_budget={self.train_budget} is larger than the training set ({n_train} samples "
                              f"of {self.dataset})")
        if self.known_n_train() is not None and self.batch_size > self.n_train():
            raise ConfigError(f"batch_size={self.batch_size} is larger than the training set ({self.n_train()} samples"
                              f"{' = train_budget' if self.train_budget is not None else ''}): every epoch would be one "
                              f"partial batch; use batch_size <= {self.n_train()}")
        CHECKS.check_procedure(self)
        return self

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes).validate()


RUN_KEYS = {f.name: f for f in fields(RunConfig)}
def _keys_of_type(kind: str) -> set:
    """The RunConfig fields annotated ``kind`` or ``Optional[kind]`` (the annotation is the one source
    of a key's type for the TOML and CLI checks)."""
    return {f.name for f in fields(RunConfig) if f.type in (kind, f"Optional[{kind}]")}


BOOL_KEYS, FLOAT_KEYS, INT_KEYS, LIST_KEYS = (_keys_of_type(k) for k in ("bool", "float", "int", "list"))


def method_options(cfg: RunConfig, cls) -> dict:
    """The options of method class ``cls`` set by ``cfg``: every field declared with
    ``_option(cls, attr, ...)``, as ``{attr: value}`` (e.g. SupTickets' averaging from st_averaging)."""
    return {f.metadata["option_of"][1]: getattr(cfg, f.name) for f in fields(RunConfig)
            if f.metadata.get("option_of", (None,))[0] is cls}


def choices_of(name: str):
    """The allowed values of a choice field (None for a field that is not a choice)."""
    return RUN_KEYS[name].metadata.get("choices")


def check_choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def check_range(key, value, lo, hi, lo_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if (value <= lo if lo_open else value < lo) or value > hi:
        raise ConfigError(f"{key}={value!r} is outside the allowed range {'(' if lo_open else '['}{lo}, {hi}]")


def check_int(key, value, lo):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{key}={value!r} must be an integer >= {lo}")


def run_to_dict(rc: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(rc)

