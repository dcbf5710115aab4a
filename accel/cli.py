"""``twinsparse`` command line.

    twinsparse run CONFIG.toml [--backend reference|accel] [--device cpu|cuda] [--seed N] [--output DIR]
                               [--checkpoint] [--resume | --overwrite]
    twinsparse train --method static --density 0.1 --distribution erk [... every run field ...]
    twinsparse export CHECKPOINT --format {dense,slim,2:4} --out PATH [--dtype float16|bfloat16]
    twinsparse bench [--quick] [--device auto|cpu|cuda] [--sections ...] [--out DIR]
    twinsparse plot OUTPUT_FOLDER

Every field of :class:`reference.config.RunConfig` is a ``train`` flag; bad values are reported
with the key, the value and what is allowed.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from twinsparse.reference import config as C
from twinsparse.reference import config_keys as K
from twinsparse.reference import experiment_file as E

_LIST_TYPES = {"hidden": int, "d2_alphas": float, "cram_eval_sparsities": float, "synthetic_shape": int}


DEFAULT_TRAIN_OUTPUT = "runs/train"
CKPT_HELP = ("write <run>.ckpt atomically after every epoch (a multi-phase procedure: after every stage, with the "
             "running phase's epochs in <run>.ckpt.stage-*)")

OVERWRITE_HELP = "replace the files of an earlier run in the output folder (without it, that is an error)"


def _flag_help(name: str, default) -> str:
    """The field's help text (its metadata in reference.config) and its default."""
    shown = "unset" if default is None else ("true" if default is True else "false" if default is False else default)
    return f"{K.field_help(name)} (default: {shown})".replace("%", "%%")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    defaults = C.RunConfig()
    groups: dict = {}
    for f in fields(C.RunConfig):      # one group per method / procedure / dataset that owns the key
        owner = K.key_owner(f.name)
        title = f"only with {owner[0]}" if owner else "run"
        if title not in groups:
            groups[title] = p.add_argument_group(title)
    for f in fields(C.RunConfig):
        owner = K.key_owner(f.name)
        g = groups[f"only with {owner[0]}" if owner else "run"]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name in C.BOOL_KEYS:
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=_flag_help(f.name, default))
        elif f.name in C.LIST_KEYS:
            g.add_argument(flag, dest=f.name, nargs="*", type=_LIST_TYPES.get(f.name, str), default=None,
                           help=_flag_help(f.name, default))
        else:
            typ = float if f.name in C.FLOAT_KEYS else int if f.name in C.INT_KEYS else str
            g.add_argument(flag, dest=f.name, type=typ, default=None, choices=C.choices_of(f.name),
                           help=_flag_help(f.name, default))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinsparse", description="Sparse training, twinned in NumPy and PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an experiment TOML (runs x seeds), write logs, table and plot")
    r.add_argument("config")
    r.add_argument("--backend", choices=C.BACKENDS)
    r.add_argument("--device", choices=C.DEVICES)
    r.add_argument("--seed", type=int, help="run this single seed instead of the config's seed list")
    r.add_argument("--output", help="output folder, used as given (default: the config's [experiment] output, or a "
                                    "fresh numbered sibling of it when it holds an earlier run)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--dry-run", action="store_true", help="print the resolved runs and per-layer densities, train nothing")
    r.add_argument("--checkpoint", action="store_true", help=CKPT_HELP)
    r.add_argument("--resume", action="store_true", help="continue every run from its checkpoint when present "
                                                          "(without --output: the most recent output folder)")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    t = sub.add_parser("train", help="train one run given by flags")
    _add_run_flags(t)
    t.add_argument("--output", help="output folder, used as given (default: runs/train, or a fresh numbered sibling "
                                    "of it when it holds an earlier run)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--dry-run", action="store_true", help="print the resolved run and per-layer densities, train nothing")
    t.add_argument("--checkpoint", action="store_true", help=CKPT_HELP)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint when present "
                                                          "(without --output: the most recent output folder)")
    t.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    e = sub.add_parser("export", help="export a training checkpoint: dense (masks applied), slim (dead channels "
                                      "removed) or 2:4 (semi-structured sparse, NVIDIA GPU with sm >= 8.0)")
    e.add_argument("checkpoint", help="an accel checkpoint written by --checkpoint (<run>.ckpt)")
    e.add_argument("--format", dest="export_format", required=True, choices=("dense", "slim", "2:4"))
    e.add_argument("--out", required=True, help="weights file to write: a plain state_dict (safetensors when installed, "
                                                "torch.save of the dict for a .pt name); the architecture, masks and "
                                                "report go to the .json beside it")
    e.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"), help="weight dtype for 2:4")
    pl = sub.add_parser("plot", help="redraw <folder>/curves.png from the run logs in an output folder")
    pl.add_argument("folder", help="an output folder of `twinsparse run` / `train` (holding <label>_seed<seed>.jsonl)")
    from .bench import add_arguments as _bench_arguments
    _bench_arguments(sub.add_parser("bench", help="time the Sparsifier step, a whole-model update, end-to-end ResNet-50 "
                                                  "steps and the kernels against fused dense optimizers, per-layer peer "
                                                  "loops and the bandwidth floor; writes <device>.log and .json"))
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from . import distributed as ddp
    from .describe import describe_run
    from .runner import run_experiment
    try:
        if args.command == "bench":
            from .bench import run as run_bench
            return run_bench(args)
        if args.command == "plot":
            from .plots import replot
            print(f"wrote {replot(args.folder)}")
            return 0
        if args.command == "export":
            from .export.command import export_checkpoint, format_export_report
            print(format_export_report(export_checkpoint(args.checkpoint, args.export_format, args.out, args.dtype)))
            return 0
        # under torchrun (WORLD_SIZE > 1) every process joins the group; a dead peer fails collectives
        ddp.init_from_env(timeout_s=float(os.environ.get("TWINSPARSE_DDP_TIMEOUT", "60")))
        if args.command == "run":
            exp = E.load_experiment(args.config)
            overrides = {k: getattr(args, k) for k in ("backend", "device") if getattr(args, k) is not None}
            if args.seed is not None:
                exp.seeds = [args.seed]
            if args.dry_run:
                print("\n\n".join(describe_run(r.replace(**overrides)) for r in exp.runs))
                return 0
            run_experiment(exp, output=args.output, progress=not args.no_progress, checkpoint=args.checkpoint,
                           resume=args.resume, overwrite=args.overwrite, **overrides)
        else:
            given = {f.name: getattr(args, f.name) for f in fields(C.RunConfig) if getattr(args, f.name) is not None}
            seed = given.pop("seed", 0)
            run = C.RunConfig(**K.coerce_run_fields(given, "the command line")).validate()
            K.check_selected_keys(given, run, "the command line", shown=lambda k, v: f"--{k.replace('_', '-')} {v}")
            if args.dry_run:
                print(describe_run(run.replace(seed=seed)))
                return 0
            exp = E.ExperimentConfig(name=run.label, output=DEFAULT_TRAIN_OUTPUT, seeds=[seed], runs=[run])
            run_experiment(exp, output=args.output, progress=not args.no_progress, checkpoint=args.checkpoint,
                           resume=args.resume, overwrite=args.overwrite)
    except (C.ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"twinsparse: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
