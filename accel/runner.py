"""Running an experiment: every (run, seed) on the chosen backend, a JSON-lines log per run, a
results table (mean ± std over seeds) printed and written, and a PNG plot of the curves."""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections import OrderedDict

from tqdm import tqdm

from twinsparse.reference import safeio
from twinsparse.reference.checkpoint import CheckpointError, check_config
from twinsparse.reference.config import RunConfig, run_to_dict
from twinsparse.reference.config_checks import check_mask_updates
from twinsparse.reference.experiment_file import ExperimentConfig
from twinsparse.reference.train import Diverged
from .events import RunEvents, existing_outputs, remove_output
from .rundir import RunDirectoryError, RunLock, RunLog, default_output, read_log, stage_files


def load_split(cfg: RunConfig):
    """The data of ``cfg.dataset`` (``accel.data.load_split``); one row of features per sample for
    the reference backend (its MLP)."""
    from .data import flat, load_split as load
    split = load(cfg)
    return flat(split) if cfg.backend == "reference" and split.x_train.ndim > 2 else split


def preflight(cfg: RunConfig) -> None:
    """Everything about one run that can fail before it trains, checked without touching a file:
    the device, the model and its prunable set (include / exclude), the layer densities (no layer
    left with 0 weights), the method and its mask-update schedule (at least one update)."""
    from .data import data_info
    check_mask_updates(cfg)
    n_in, n_classes = data_info(cfg)                        # the data's files are checked here
    spe = -(-cfg.n_train() // cfg.batch_size)
    if cfg.backend == "reference":
        import numpy as np

        from twinsparse.reference.methods import from_run_config
        from twinsparse.reference.nn import init_mlp
        from twinsparse.reference.prunable import select_prunable
        from twinsparse.reference.train import resolve_densities
        params, _ = init_mlp((n_in[0], *cfg.hidden, n_classes), batchnorm=cfg.batchnorm, seed=cfg.seed,
                             dtype=np.dtype(cfg.dtype))
        names = select_prunable([n for n in params if n.startswith("fc.") and n.endswith(".weight")],
                                cfg.include, cfg.exclude)
        resolve_densities(cfg, {n: params[n] for n in names})
        from_run_config(cfg, spe * cfg.epochs, spe)
        return
    import torch

    from .train import build_model_for, build_optimizer, build_sparsifier
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device")
    model = build_model_for(cfg.replace(device="cpu"), n_in, n_classes)
    build_sparsifier(cfg, model, build_optimizer(cfg, model), spe * cfg.epochs, None, spe)


def _log_header(cfg: RunConfig) -> dict:
    return {"config": run_to_dict(cfg)}


def check_run_files(cfg: RunConfig, log_path: str | None, ck_path: str | None, resume: bool = False,
                    overwrite: bool = False) -> dict:
    """The files of one run, checked before anything is written (nothing is changed here).

    A fresh run must not find an earlier run's log or checkpoints unless ``overwrite`` (then they
    are listed in ``remove``). A resumed run must find a checkpoint (when there is one) that is
    intact, verified and written by this very config, and a log whose header is this config.
    Returns {"remove": [...], "history": the checkpoint's records (a training run), or None}."""
    existing = [p for p in (log_path, ck_path) if p and os.path.exists(p)] + (stage_files(ck_path) if ck_path else [])
    if log_path and not resume:   # the CSV files and TensorBoard folder of an earlier run (a resumed run rewrites them)
        existing += existing_outputs(log_path[: -len(".jsonl")])
    if not resume:
        if existing and not overwrite:
            raise RunDirectoryError(
                f"{existing[0]} already exists{f' (and {len(existing) - 1} more file(s) of that run)' if len(existing) > 1 else ''}: "
                f"it belongs to an earlier run. Use --resume to continue that run, --overwrite to replace it, or "
                f"another --output")
        return {"remove": existing, "history": None}
    history = None
    if ck_path and os.path.exists(ck_path):
        ck = ck_load_reference(ck_path) if cfg.backend == "reference" else ck_load_accel(ck_path)
        check_config(ck.get("config", {}), run_to_dict(cfg), ck_path)
        if cfg.procedure == "train":
            if "history" not in ck:
                raise CheckpointError(f"checkpoint {ck_path} is not the checkpoint of a training run")
            history = ck["history"]
        elif "stages" not in ck:
            raise CheckpointError(f"{ck_path} is the checkpoint of a single training run, not of a multi-phase "
                                  f"procedure (procedure={cfg.procedure!r})")
    if ck_path:
        for f in stage_files(ck_path):
            ck = ck_load_reference(f) if cfg.backend == "reference" else ck_load_accel(f)
            check_config(ck.get("config", {}), run_to_dict(cfg) if "progress" in ck else ck.get("config", {}), f)
    if log_path and os.path.exists(log_path):
        records, _, _ = read_log(log_path)
        if records:
            head = records[0].get("config") if isinstance(records[0], dict) else None
            if not isinstance(head, dict):
                raise RunDirectoryError(f"log {log_path} does not start with a config header; it is not the log of a "
                                        f"twinsparse run: move it away or start afresh with --overwrite")
            now = json.loads(json.dumps(run_to_dict(cfg)))
            diff = sorted(k for k in set(head) | set(now) if head.get(k) != now.get(k))
            if diff:
                details = ", ".join(f"{k}: {head.get(k)!r} in the log vs {now.get(k)!r} now" for k in diff[:5])
                raise RunDirectoryError(f"log {log_path} is from another run ({details}); resume only continues the "
                                        f"run that wrote it")
    return {"remove": [], "history": history}


def train_one(cfg: RunConfig, log_path: str | None = None, progress: bool = True, checkpoint: bool = False,
              resume: bool = False, ck_path: str | None = None, overwrite: bool = False, checked: dict | None = None) -> list:
    """Train one run on its backend; returns the per-epoch history (written to ``log_path``).

    ``checkpoint``: write ``ck_path`` (default ``<log>.ckpt``) atomically after every epoch -- for a
    multi-phase procedure after every stage, with the running phase's epochs beside it
    (``reference.stages``); ``resume``: continue from it when present. Everything is checked before
    a file is opened for writing (``preflight``, ``check_run_files``; ``checked``: their result when
    the caller ran them). A fresh run refuses to replace an earlier run's files unless ``overwrite``;
    a resumed run appends to its log (records the log already holds are not written again)."""
    if ck_path is None and log_path:
        ck_path = log_path[: -len(".jsonl")] + ".ckpt"
    if checked is None:
        preflight(cfg)
        checked = check_run_files(cfg, log_path, ck_path, resume, overwrite)
        for f in checked["remove"]:
            _remove(f)
    if not (checkpoint or resume):
        ck_path = None
    split = load_split(cfg)
    log = RunLog(log_path, resume=resume) if log_path else None
    events = RunEvents(log, log_path[: -len(".jsonl")] if log_path else "")
    on_epoch = events.record
    try:
        on_epoch(_log_header(cfg))
        for rec in checked["history"] or []:      # a resumed run: the checkpoint's epochs with their events
            events.record(rec, live=False)
        events.flush()
        if cfg.procedure != "train":
            history = _procedure_one(cfg, split, log, on_epoch, ck_path, resume)
        else:
            history = _train_run(cfg, split, log, on_epoch, ck_path, resume, progress, events.event)
        events.flush()
        if log:
            log.finish()
    except Diverged as e:
        if log:
            log.write({"diverged": e.info, "error": str(e)})
        raise
    finally:
        events.close()
        if log:
            log.close()
    return history


def _train_run(cfg, split, log, on_epoch, ck_path, resume, progress, on_event=None) -> list:
    steps = -(-len(split.x_train) // cfg.batch_size) * cfg.epochs
    bar = tqdm(total=steps, desc=f"{cfg.label} seed={cfg.seed} [{cfg.backend}]", leave=False,
               disable=not progress, file=sys.stderr, mininterval=0.5)
    try:
        if cfg.backend == "reference":
            from twinsparse.reference.train import train_reference

            def tick(*_):
                bar.update(1)
            out = train_reference(cfg, split, on_epoch=on_epoch, on_step=tick, checkpoint=ck_path, resume=resume,
                                  on_event=on_event)
        else:
            from .train import train_accel
            out = train_accel(cfg, split, on_epoch=on_epoch, progress=bar, checkpoint=ck_path, resume=resume,
                              on_event=on_event)
    finally:
        bar.close()
    # (each mask update -- t, drop fraction, counts, density, R, mask change -- was logged as it happened)
    skipped = out["history"][-1].get("skipped_steps", 0) if out["history"] else 0
    if skipped:
        warnings.warn(f"run {cfg.label!r} (seed {cfg.seed}): {skipped} iteration(s) were skipped for non-finite "
                      f"gradients (nonfinite='skip'); the log's skipped_steps counts them per epoch", RuntimeWarning)
    return out["history"]


def _procedure_one(cfg: RunConfig, split, log, on_epoch, ck_path=None, resume=False) -> list:
    """A multi-phase procedure (D²-Sparse and its baselines, ...): one log record per state (state 0
    = the dense warm-up), with ``epoch`` = the state index so tables and plots read it as a curve."""
    from . import distributed as ddp
    from twinsparse.accel.backends import run_procedure
    history = []

    def on_record(rec):
        history.append({"epoch": rec["state"], "epoch_time": rec["time_s"], **rec})
        on_epoch(history[-1])
    out = run_procedure(cfg, split, on_record=on_record, checkpoint=ck_path, resume=resume,
                        writer=ddp.rank() == 0)
    if log:
        log.write(*({"mask_update": u} for u in out["updates"]))
    return history


def _remove(path: str) -> None:
    try:
        remove_output(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise safeio.io_error(e, "removing", path) from e


def mean_std(values):
    """Mean and sample std (ddof 1; 0 for a single value)."""
    values = list(values)
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarize(results: "OrderedDict[str, list]") -> list:
    """Rows of the results table: final-epoch test metrics, mean and std over seeds."""
    rows = []
    for label, histories in results.items():
        finals = [h[-1] for h in histories]
        row = {"label": label, "seeds": len(finals), "density": finals[0]["density"]}
        for key in ("test_acc", "test_nll", "test_ece"):
            row[key] = mean_std([f[key] for f in finals])
        row["time_s"] = sum(sum(r["epoch_time"] for r in h) for h in histories) / len(histories)
        rows.append(row)
    return rows


def format_table(rows: list) -> str:
    lines = ["| run | density | test acc (%) | test NLL | test ECE | seeds | train s/run |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc, nll, ece = r["test_acc"], r["test_nll"], r["test_ece"]
        lines.append(f"| {r['label']} | {r['density']:.4f} | {100 * acc[0]:.2f} ± {100 * acc[1]:.2f} | "
                     f"{nll[0]:.3f} ± {nll[1]:.3f} | {ece[0]:.3f} ± {ece[1]:.3f} | {r['seeds']} | {r['time_s']:.1f} |")
    return "\n".join(lines)


def plot(results: "OrderedDict[str, list]", path: str, title: str, groups: dict | None = None) -> None:
    """The accuracy and density curves as a PNG, written atomically to ``path`` (accel.plots)."""
    safeio.write_atomic(path, plot_png(results, title, groups))


def plot_png(results: "OrderedDict[str, list]", title: str, groups: dict | None = None) -> bytes:
    """The accuracy and density curves, as the bytes of a PNG file (accel.plots.plot_png)."""
    from .plots import plot_png as png
    return png(results, title, groups)


def ck_load_reference(path):
    from twinsparse.reference.checkpoint import load_reference
    return load_reference(path)


def ck_load_accel(path):
    from .checkpoint import load
    return load(path)


RESULT_FILES = ("results.md", "results.json", "curves.png")


def _shared(value):
    """``value`` of rank 0 on every rank (DDP), e.g. the output folder rank 0 chose."""
    from . import distributed as ddp
    if not ddp.active():
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_experiment(exp: ExperimentConfig, output: str | None = None, progress: bool = True, checkpoint: bool = False,
                   resume: bool = False, overwrite: bool = False, **overrides) -> list:
    """Run every (run, seed) of ``exp``; writes logs, ``results.md``, ``results.json``, ``curves.png``.

    The output folder is a transaction: every config, checkpoint and log is checked before any file
    is written; the folder is locked for the whole experiment (a second writer fails at once); a
    fresh experiment refuses to replace an earlier run's files unless ``overwrite``; ``resume``
    continues every run and appends to its log; result files are replaced atomically. Without
    ``output`` the runs go to a fresh folder (``rundir.default_output`` of the config's output)."""
    from . import distributed as ddp

    if resume and overwrite:
        raise ValueError("--resume continues the runs in the output folder and --overwrite replaces them: choose one")
    cfgs = [c.replace(**overrides) if overrides else c for c in exp.expand()]
    for cfg in cfgs:               # configs, models, densities, schedules: before any file is touched
        preflight(cfg)
    writer = ddp.rank() == 0  # under DDP only rank 0 writes logs, tables, plots and checkpoints
    out_dir = output if output is not None else _shared(default_output(exp.output, resume) if writer else None)
    if output is None and writer and os.path.normpath(out_dir) != os.path.normpath(exp.output):
        print(f"{exp.output} holds an earlier run; this one writes to {out_dir}", file=sys.stderr)
    stems = [os.path.join(out_dir, f"{cfg.label}_seed{cfg.seed}") for cfg in cfgs]
    created = not os.path.exists(out_dir)
    lock = None
    if writer:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise safeio.io_error(e, "creating the output folder", out_dir) from e
        lock = RunLock(out_dir).acquire()
    try:
        checks = [check_run_files(cfg, stem + ".jsonl", stem + ".ckpt", resume, overwrite)
                  for cfg, stem in zip(cfgs, stems)]
        results_there = [os.path.join(out_dir, n) for n in RESULT_FILES if os.path.exists(os.path.join(out_dir, n))]
        if results_there and not (resume or overwrite):
            raise RunDirectoryError(f"{results_there[0]} already exists: {out_dir} holds the results of an earlier "
                                    f"experiment. Use --resume to continue it, --overwrite to replace it, or another "
                                    f"--output")
    except BaseException:
        if lock is not None:
            lock.release()
            if created:
                try:
                    os.rmdir(out_dir)
                except OSError:
                    pass
        raise
    try:
        if writer:
            for f in (results_there if overwrite else []) + [f for c in checks for f in c["remove"]]:
                _remove(f)
            stale = safeio.remove_stale_temps(out_dir)
            if stale:
                warnings.warn(f"removed {len(stale)} temporary file(s) left in {out_dir} by an interrupted write: "
                              f"{', '.join(os.path.basename(p) for p in stale[:3])}", RuntimeWarning)
        return _run_all(exp, cfgs, stems, checks, out_dir, writer, progress, checkpoint, resume)
    finally:
        if lock is not None:
            lock.release()


def _groups(cfgs) -> dict:
    """label -> the method (or multi-phase procedure) of the run: the colour of its curves."""
    return {c.label: c.method if c.procedure == "train" else c.procedure for c in cfgs}


def _run_all(exp, cfgs, stems, checks, out_dir, writer, progress, checkpoint, resume) -> list:
    results: "OrderedDict[str, list]" = OrderedDict()
    t0 = time.perf_counter()
    for cfg, stem, chk in tqdm(list(zip(cfgs, stems, checks)), desc=exp.name, disable=not progress, file=sys.stderr):
        # every rank resumes from the checkpoint (only rank 0 writes it and the log)
        results.setdefault(cfg.label, []).append(train_one(cfg, stem + ".jsonl" if writer else None, progress=progress,
                                                           checkpoint=checkpoint, resume=resume, ck_path=stem + ".ckpt",
                                                           checked=chk))
    rows = summarize(results)
    if not writer:
        return rows
    table = format_table(rows)
    backend = cfgs[0].backend
    header = (f"# {exp.name}\n\nbackend: {backend}, device: {cfgs[0].device}, seeds: {exp.seeds}, "
              f"wall time: {time.perf_counter() - t0:.1f} s\n\n")
    safeio.write_atomic_group({  # the three result files are replaced together, or none of them
        os.path.join(out_dir, "results.md"): (header + table + "\n").encode("utf-8"),
        os.path.join(out_dir, "results.json"): json.dumps({"experiment": exp.name, "seeds": exp.seeds, "rows": rows},
                                                          indent=1).encode("utf-8"),
        os.path.join(out_dir, "curves.png"): plot_png(results, exp.name, _groups(cfgs))})
    print(f"\n{exp.name} ({backend}, {len(exp.seeds)} seeds), final-epoch test metrics:\n{table}\n"
          f"results, logs and plot in {out_dir}/ ({time.perf_counter() - t0:.1f} s)")
    return rows
