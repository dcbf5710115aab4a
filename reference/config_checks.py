"""The checks of a RunConfig that belong to one method, procedure or dataset (AC/DC phase lengths,
D²-Sparse / IMP / CrAM / Sparse Cocktail, the data source); ``RunConfig.validate`` runs them after
the checks every run needs. Each error names the key, the bad value and what is allowed."""
from __future__ import annotations

import dataclasses
import math

from .config import (COCKTAIL_MIN_HOLDOUT_PER_CLASS, D2_VIEWS, DYNAMIC_METHODS, RunConfig,
                     ConfigError, check_choice, check_int, check_range)


def check_acdc(cfg) -> None:
    for key in ("acdc_warmup", "acdc_compressed", "acdc_decompressed", "acdc_final_decompressed",
                "acdc_final_compressed"):
        if getattr(cfg, key) is not None:
            check_int(key, getattr(cfg, key), 0 if key == "acdc_warmup" else 1)
    if cfg.method != "acdc":
        return
    if cfg.suptickets:
        raise ConfigError("suptickets=true cannot wrap method='acdc' (AC/DC drives the masks by phases)")
    if cfg.acdc_distribution == "nm24" and cfg.density != 0.5:
        raise ConfigError(f"acdc_distribution='nm24' keeps 2 of every 4 weights (density 0.5); "
                          f"set density=0.5 (got density={cfg.density})")
    from .methods.acdc import LENGTH_KEYS, acdc_lengths
    given = {k: getattr(cfg, f"acdc_{k}") for k in LENGTH_KEYS}
    try:
        acdc_lengths(cfg.epochs, plan=cfg.acdc_plan, **given)
    except ValueError as e:
        shown = ", ".join(f"acdc_{k}={'auto' if v is None else v}" for k, v in given.items())
        hint = (" (acdc_plan='scaled' scales the thesis lengths to a small budget)"
                if cfg.acdc_plan == "thesis" else "")
        raise ConfigError(f"AC/DC phase lengths ({shown}, acdc_plan={cfg.acdc_plan!r}) do not fit "
                          f"epochs={cfg.epochs}: {e}{hint}") from None


def check_cocktail(cfg) -> None:
    check_int("cocktail_iterations", cfg.cocktail_iterations, 1)
    check_int("cocktail_rewind_epoch", cfg.cocktail_rewind_epoch, 0)
    check_range("cocktail_unstructured_rate", cfg.cocktail_unstructured_rate, 0.0, 0.999, lo_open=True)
    check_range("cocktail_channel_rate", cfg.cocktail_channel_rate, 0.0, 0.999, lo_open=True)
    check_range("cocktail_beta", cfg.cocktail_beta, 0.0, 1.0)
    check_range("cocktail_holdout_fraction", cfg.cocktail_holdout_fraction, 0.0, 0.5, lo_open=True)
    check_range("cocktail_temperature", cfg.cocktail_temperature, 0.0, math.inf, lo_open=True)
    if cfg.procedure != "cocktail":
        return
    _check_own_masks_and_rewind(cfg, "cocktail", "makes its own masks (UMG at every IMP iteration)",
                                "each IMP iteration co-trains from the rewind epoch to the end")
    if cfg.model == "mlp" and len(cfg.hidden) + 1 < {"paper": 3, "hidden": 2}[cfg.cocktail_range]:
        raise ConfigError(f"cocktail_range='paper' prunes every layer but the first and the last ([SC] Table 5); "
                          f"hidden={cfg.hidden} leaves none: add a hidden layer or use cocktail_range='hidden'")
    if cfg.known_n_train() is None or cfg.n_classes() is None:
        return                       # imagefolder / tensors: checked when the data is read
    per_class = cfg.known_n_train() // cfg.n_classes()
    n_hold = math.floor(cfg.cocktail_holdout_fraction * per_class + 0.5)
    if n_hold < COCKTAIL_MIN_HOLDOUT_PER_CLASS or n_hold >= per_class:
        raise ConfigError(f"cocktail_holdout_fraction={cfg.cocktail_holdout_fraction} of {per_class} training "
                          f"samples per class gives {n_hold} hold-out sample(s) per class: too small to score the "
                          f"interpolation candidates on every class (need >= {COCKTAIL_MIN_HOLDOUT_PER_CLASS}) "
                          f"or leaving nothing to train on; raise the fraction or train_budget")


def check_procedure(cfg) -> None:
    for key, lo in (("d2_states", 1), ("d2_warmup_epochs", 0), ("d2_state_epochs", 1), ("d2_finetune_epochs", 1),
                    ("d2_baseline_epochs", 1), ("d2_view_pool", 0)):
        check_int(key, getattr(cfg, key), lo)
    check_range("d2_finetune_lr_scale", cfg.d2_finetune_lr_scale, 0.0, math.inf, lo_open=True)
    alphas = cfg.d2_alphas
    if not (isinstance(alphas, list) and alphas):
        raise ConfigError(f"d2_alphas={alphas!r} must be a non-empty list of numbers in [0, 1]")
    for a in alphas:
        check_range("d2_alphas entry", a, 0.0, 1.0)
    views = cfg.d2_views
    if not (isinstance(views, list) and len(views) == 2):
        raise ConfigError(f"d2_views={views!r} must name exactly two views (T1, T2), each one of {list(D2_VIEWS)}")
    for v in views:
        check_choice("d2_views entry", v, D2_VIEWS)
    check_int("imp_iterations", cfg.imp_iterations, 1)
    check_range("imp_rate", cfg.imp_rate, 0.0, 0.999, lo_open=True)
    check_int("imp_rewind_epoch", cfg.imp_rewind_epoch, 0)
    from .cram_options import validate_cram_fields
    validate_cram_fields(cfg, ConfigError)
    if cfg.procedure == "cram":
        return
    check_cocktail(cfg)
    if cfg.procedure in ("train", "cocktail"):
        return
    if cfg.procedure == "acdc":
        if cfg.method != "acdc":
            raise ConfigError(f"procedure='acdc' runs AC/DC training and returns its sparse and dense models: "
                              f"set method='acdc' (got method={cfg.method!r})")
        return
    if cfg.procedure == "imp":
        _check_own_masks_and_rewind(cfg, "imp", "finds its own masks (dense training, then pruning and retraining "
                                    "with fixed masks)", "each iteration retrains from the rewind epoch to the end")
        return
    if cfg.method in ("dense", "granet", "acdc") or cfg.density >= 1.0:
        raise ConfigError(f"procedure={cfg.procedure!r} trains sparse states with a mask-evolving method "
                          f"(rigl, set, snfs, dst_ee or static) to a final density < 1; got method={cfg.method!r}, "
                          f"density={cfg.density}")
    if cfg.suptickets:
        raise ConfigError(f"procedure={cfg.procedure!r} cannot be combined with suptickets=true")
    n, k = cfg.known_n_train(), cfg.n_classes()
    if n is not None and k is not None and n % k:
        raise ConfigError(f"train_budget={n} is not divisible across the {k} classes; D²-Sparse "
                          f"subsets uniformly across classes ([D2] §4.1): use a multiple of {k}")


def check_data(cfg) -> None:
    if cfg.data_root is not None and (not isinstance(cfg.data_root, str) or not cfg.data_root):
        raise ConfigError(f"data_root={cfg.data_root!r} must be a non-empty path")
    if cfg.dataset in ("cifar10", "cifar100", "imagefolder", "tensors") and cfg.data_root is None:
        what = {"cifar10": "the folder holding cifar-10-batches-py/", "cifar100": "the folder holding "
                "cifar-100-python/", "imagefolder": "the folder holding train/<class>/ and val/<class>/",
                "tensors": "a .npz (or .pt) file with x_train, y_train, x_test, y_test"}[cfg.dataset]
        raise ConfigError(f"dataset={cfg.dataset!r} needs data_root: {what}")
    if cfg.dataset in ("mnist5k", "synthetic") and cfg.data_root is not None:
        raise ConfigError(f"data_root={cfg.data_root!r} is not read by dataset={cfg.dataset!r}; remove it")
    check_int("image_size", cfg.image_size, 1)
    check_int("log_every", cfg.log_every, 0)
    for key, lo in (("synthetic_classes", 2), ("synthetic_train", 1), ("synthetic_test", 1)):
        check_int(key, getattr(cfg, key), lo)
    shape = cfg.synthetic_shape
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and
            all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ConfigError(f"synthetic_shape={shape!r} must be a list of 1 to 4 positive integers "
                          f"(e.g. [3, 32, 32] for images, [20] for feature vectors)")
    if cfg.dataset == "synthetic" and cfg.synthetic_train < cfg.synthetic_classes:
        raise ConfigError(f"synthetic_train={cfg.synthetic_train} gives some of the synthetic_classes="
                          f"{cfg.synthetic_classes} classes no training sample")


def check_mask_updates(cfg: RunConfig) -> int:
    """A training run (procedure 'train') of a method that updates its masks every ``delta_t``
    iterations must get at least one update; returns the number of updates. A ``delta_t`` larger
    than the update window (or the run) is an error rather than a silent static run."""
    if cfg.procedure != "train" or cfg.method not in (*DYNAMIC_METHODS, "gmp"):
        return 0
    from .methods import from_run_config
    spe = -(-cfg.n_train() // cfg.batch_size)
    total = spe * cfg.epochs
    base = dataclasses.replace(cfg, suptickets=False)
    try:
        method = from_run_config(base, total, spe)
    except ValueError as e:
        raise ConfigError(f"method={cfg.method!r} cannot run {total} iterations ({cfg.epochs} epochs x {spe}): {e}") \
            from None
    n = sum(1 for t in range(1, total + 1) if method.due(t))
    if n == 0:
        window = (f"t_end = t_end_fraction x {total} = {int(cfg.dst_window()[0] * total)}" if cfg.method != "gmp"
                  else f"prune_end = {int(cfg.prune_end_fraction * total)}")
        raise ConfigError(f"delta_t={cfg.delta_t} leaves no mask update in this run: method {cfg.method!r} updates every "
                          f"delta_t iterations from t_start={cfg.t_start} until {window}, and the run has {total} "
                          f"iterations ({cfg.epochs} epochs x {spe}); lower delta_t or t_start, or train longer")
    return n


def _check_own_masks_and_rewind(cfg, procedure: str, masks: str, rewind: str) -> None:
    """IMP and Sparse Cocktail make their own masks (the run stays method='dense') and rewind to
    ``<procedure>_rewind_epoch``, which must come before the last epoch."""
    if cfg.method != "dense" or cfg.suptickets:
        raise ConfigError(f"procedure={procedure!r} {masks}: leave method='dense' and density=1.0 "
                          f"(got method={cfg.method!r})")
    epoch = getattr(cfg, f"{procedure}_rewind_epoch")
    if epoch >= cfg.epochs:
        raise ConfigError(f"{procedure}_rewind_epoch={epoch} must be below epochs={cfg.epochs}: {rewind}")
