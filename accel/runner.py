"""Running an experiment: every (run, seed) on the chosen backend, a JSON-lines log per run, a
results table (mean ± std over seeds) printed and written, and a PNG plot of the curves."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import OrderedDict

from tqdm import tqdm

from reference.config import ExperimentConfig, RunConfig, run_to_dict
from reference.data import class_balanced_subset, split_mnist5k


def load_split(cfg: RunConfig):
    split = split_mnist5k(test_per_class=cfg.test_per_class, holdout_per_class=cfg.holdout_per_class,
                          seed=cfg.split_seed)
    if cfg.train_budget is not None:
        x, y = class_balanced_subset(split.x_train, split.y_train, cfg.train_budget, seed=cfg.split_seed)
        split = type(split)(x_train=x, y_train=y, x_holdout=split.x_holdout, y_holdout=split.y_holdout,
                            x_test=split.x_test, y_test=split.y_test)
    return split


def train_one(cfg: RunConfig, log_path: str | None = None, progress: bool = True, checkpoint: bool = False,
              resume: bool = False, ck_path: str | None = None) -> list:
    """Train one run on its backend; returns the per-epoch history (written to ``log_path``).

    ``checkpoint``: write ``ck_path`` (default ``<log>.ckpt``) atomically after every epoch -- for a
    multi-phase procedure after every stage, with the running phase's epochs beside it
    (``reference.stages``); ``resume``: continue from it when present (the log is rewritten: from
    the checkpoint's history, or for a procedure by replaying its completed stages, then continued)."""
    split = load_split(cfg)
    if not (checkpoint or resume):
        ck_path = None
    elif ck_path is None and log_path:
        ck_path = log_path[: -len(".jsonl")] + ".ckpt"
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    header = {"config": run_to_dict(cfg)}
    if log:
        log.write(json.dumps(header) + "\n")
        if resume and ck_path and os.path.exists(ck_path) and cfg.procedure == "train":
            load = ck_load_reference if cfg.backend == "reference" else ck_load_accel
            for rec in load(ck_path)["history"]:
                log.write(json.dumps(rec) + "\n")

    def on_epoch(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    if cfg.procedure != "train":
        return _procedure_one(cfg, split, log, on_epoch, ck_path, resume)
    steps = -(-len(split.x_train) // cfg.batch_size) * cfg.epochs
    bar = tqdm(total=steps, desc=f"{cfg.label} seed={cfg.seed} [{cfg.backend}]", leave=False,
               disable=not progress, file=sys.stderr, mininterval=0.5)
    try:
        if cfg.backend == "reference":
            from reference.train import train_reference

            def tick(*_):
                bar.update(1)
            out = train_reference(cfg, split, on_epoch=on_epoch, on_step=tick, checkpoint=ck_path, resume=resume)
        else:
            from .train import train_accel
            out = train_accel(cfg, split, on_epoch=on_epoch, progress=bar, checkpoint=ck_path, resume=resume)
        if log:  # one line per mask update: t, drop fraction, counts, density, R, mask change
            for u in out.get("updates", []):
                log.write(json.dumps({"mask_update": u}) + "\n")
    finally:
        bar.close()
        if log:
            log.close()
    return out["history"]


def _procedure_one(cfg: RunConfig, split, log, on_epoch, ck_path=None, resume=False) -> list:
    """A multi-phase procedure (D²-Sparse and its baselines, ...): one log record per state (state 0
    = the dense warm-up), with ``epoch`` = the state index so tables and plots read it as a curve."""
    from . import distributed as ddp
    from reference.procedures import run_procedure
    history = []

    def on_record(rec):
        history.append({"epoch": rec["state"], "epoch_time": rec["time_s"], **rec})
        on_epoch(history[-1])
    try:
        out = run_procedure(cfg, split, on_record=on_record, checkpoint=ck_path, resume=resume,
                            writer=ddp.rank() == 0)
        if log:
            for u in out["updates"]:
                log.write(json.dumps({"mask_update": u}) + "\n")
    finally:
        if log:
            log.close()
    return history


def describe_run(cfg: RunConfig) -> str:
    """The resolved config and a per-layer table of the initial masks (layer, shape, weights,
    density, kept, sparsity); builds the model but trains nothing."""
    import json as _json

    from .prunable import discover_prunable
    from .train import build_model_for, density_spec

    split_in, n_classes = 784, 10
    model = build_model_for(cfg, split_in, n_classes)
    params = discover_prunable(model, cfg.include or None, cfg.exclude or None)
    weights = {n: p.detach() for n, p in params.items()}
    spec = density_spec(cfg)
    dens = {n: 1.0 for n in weights} if spec is None else spec.resolve(weights)
    lines = [f"run {cfg.label!r} (seed {cfg.seed}):", _json.dumps(run_to_dict(cfg), sort_keys=True),
             f"{'layer':<28} {'shape':<20} {'weights':>10} {'density':>8} {'kept':>10} {'sparsity':>8}"]
    total = kept_total = 0
    for n, w in weights.items():
        kept = int(dens[n] * w.numel() + 0.5)
        total, kept_total = total + w.numel(), kept_total + kept
        lines.append(f"{n:<28} {str(tuple(w.shape)):<20} {w.numel():>10} {dens[n]:>8.4f} {kept:>10} {1 - dens[n]:>8.2%}")
    lines.append(f"{'total (prunable set)':<28} {'':<20} {total:>10} {kept_total / total:>8.4f} {kept_total:>10} "
                 f"{1 - kept_total / total:>8.2%}")
    if cfg.method == "acdc":
        lines.append(f"AC/DC phases (epochs, 0-based, end-exclusive): "
                     f"{', '.join(f'{p.name} {p.start}-{p.end}' for p in cfg.acdc_plan())}; compressed phases at "
                     f"density {cfg.density} ({cfg.acdc_distribution}); the table above is the dense start"
                     + ("; procedure acdc adds a dense fine-tune of the last dense checkpoint"
                        if cfg.procedure == "acdc" else ""))
    if cfg.procedure == "cocktail":
        from reference.cocktail import describe
        lines.append(describe(cfg))
    if cfg.procedure == "cram":
        from reference.cram_spec import describe_cram
        lines.append(describe_cram(cfg))
    if cfg.procedure not in ("train", "acdc", "cocktail", "cram"):
        from reference.d2sparse import state_densities, total_epochs
        dens = state_densities(cfg.density, cfg.d2_states, cfg.d2_schedule)
        lines.append(f"procedure {cfg.procedure}: {cfg.d2_states} state(s) at densities "
                     f"{', '.join(f'{d:.4f}' for d in dens)}; {total_epochs(cfg)} training epochs in all "
                     f"(the table above is the final state's layer distribution)")
    return "\n".join(lines)


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


def plot(results: "OrderedDict[str, list]", path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, histories in results.items():
        epochs = [r["epoch"] for r in histories[0]]
        accs = [[100 * h[i]["test_acc"] for h in histories] for i in range(len(epochs))]
        mean = [sum(a) / len(a) for a in accs]
        lo = [min(a) for a in accs]
        hi = [max(a) for a in accs]
        line, = ax1.plot(epochs, mean, label=label)
        ax1.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2)
        ax2.plot(epochs, [histories[0][i]["density"] for i in range(len(epochs))], label=label, color=line.get_color())
    ax1.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{title}: accuracy (mean, min-max over seeds)")
    ax2.set(xlabel="epoch", ylabel="density of the prunable set", title="density", yscale="log")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ck_load_reference(path):
    from reference.checkpoint import load_reference
    return load_reference(path)


def ck_load_accel(path):
    from .checkpoint import load
    return load(path)


def run_experiment(exp: ExperimentConfig, output: str | None = None, progress: bool = True, checkpoint: bool = False,
                   resume: bool = False, **overrides) -> list:
    """Run every (run, seed) of ``exp``; writes logs, ``results.md``, ``results.json``, ``curves.png``."""
    from . import distributed as ddp

    out_dir = output or exp.output
    writer = ddp.rank() == 0  # under DDP only rank 0 writes logs, tables and plots
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    results: "OrderedDict[str, list]" = OrderedDict()
    t0 = time.perf_counter()
    cfgs = [c.replace(**overrides) if overrides else c for c in exp.expand()]
    for cfg in tqdm(cfgs, desc=exp.name, disable=not progress, file=sys.stderr):
        stem = os.path.join(out_dir, f"{cfg.label}_seed{cfg.seed}")
        # every rank resumes from the checkpoint (only rank 0 writes it and the log)
        results.setdefault(cfg.label, []).append(train_one(cfg, stem + ".jsonl" if writer else None, progress=progress,
                                                           checkpoint=checkpoint, resume=resume, ck_path=stem + ".ckpt"))
    rows = summarize(results)
    if not writer:
        return rows
    table = format_table(rows)
    backend = cfgs[0].backend
    header = (f"# {exp.name}\n\nbackend: {backend}, device: {cfgs[0].device}, seeds: {exp.seeds}, "
              f"wall time: {time.perf_counter() - t0:.1f} s\n\n")
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(header + table + "\n")
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"experiment": exp.name, "seeds": exp.seeds, "rows": rows}, f, indent=1)
    plot(results, os.path.join(out_dir, "curves.png"), exp.name)
    print(f"\n{exp.name} ({backend}, {len(exp.seeds)} seeds), final-epoch test metrics:\n{table}\n"
          f"results, logs and plot in {out_dir}/ ({time.perf_counter() - t0:.1f} s)")
    return rows
