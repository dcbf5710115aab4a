"""``twinsparse bench``: the engine and the kernels timed against what they must beat.

    twinsparse bench [--quick] [--device auto|cpu|cuda] [--out DIR] [--repeats N]
                     [--sections step update e2e quickstart hotpaths] [--density 0.1]

Every figure is measured in this one run, on this one device, and reported as a ratio to its
baseline (docs/engine.md explains each):

* step: the Sparsifier's optimizer step on ResNet-50's 25.6M parameters (SGD-momentum and AdamW,
  static ERK masks, the NaN/inf guard on) against torch's fused dense step, the same step with
  the guard off / the kernels off, and the per-layer loop of the sparse_learning library;
* update: one whole-model RigL update against a per-layer ``torch.topk`` loop;
* e2e: ImageNet-form ResNet-50 training steps (channels_last; bf16 autocast on CUDA): dense,
  static sparse, and RigL with an update every 100 steps amortised over 200;
* quickstart: the README's first command on CUDA and on the CPU (needs both);
* hotpaths: global / per-layer top-k, RigL drop-and-grow, N:M 2:4, UMG, DST-EE, CIA against the
  bandwidth floor (bytes that must move / the measured device-to-device copy bandwidth) and
  against ``torch.topk`` / a stable ``torch.sort``.

Timing: CUDA events on the current stream (medians), inputs rotated through more memory than the
L2 cache holds, a warm-up before every measurement. Output: ``DIR/<device>.log`` (what is printed)
and ``DIR/<device>.json`` (every number, the ratio keys, the device name and the versions),
written atomically; ``DIR`` defaults to ``runs/bench`` (committed results: ``--out
experiments/results/bench``). ``--quick`` shrinks every model (channel widths / 8) and repeats: a
smoke run of about a minute on a CPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys

import torch

from twinsparse.reference.safeio import write_atomic_group
from .. import kernels
from .engine import e2e_rows, quickstart_row, step_rows, update_rows
from .hotpaths import hot_path_rows
from .shapes import ShapeNet, resnet18_shapes, resnet50_shapes
from .timing import Clock, copy_bandwidth, device_name

__all__ = ["main", "run", "add_arguments", "resnet18_shapes", "resnet50_shapes", "ShapeNet", "RATIO_KEYS"]

SECTIONS = ("step", "update", "e2e", "quickstart", "hotpaths")
RATIO_KEYS = ("step_sgd_over_fused_dense", "step_adamw_over_fused_dense", "rigl_update_ms_resnet50",
              "rigl_update_over_peer_loop", "e2e_static_over_dense", "e2e_rigl100_over_dense",
              "quickstart_cuda_over_cpu", "topk_global_over_read_floor", "topk_global_over_torch_topk",
              "topk_segmented_over_floor", "drop_grow_over_floor", "nm_model_fraction_of_copy_bw",
              "nm_8192_fraction_of_copy_bw", "umg_over_floor", "dst_ee_over_floor", "cia_over_floor")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="every model narrowed (widths / 8), few repeats: a smoke run")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="what to time (default: all)")
    p.add_argument("--density", type=float, default=0.1, help="ERK density of the sparse models (default 0.1)")
    p.add_argument("--repeats", type=int, help="timed runs per measurement (default 3 quick, 20 full)")
    p.add_argument("--out", default="runs/bench", help="folder of <device>.log and <device>.json (default runs/bench)")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "device"


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


class _Report:
    def __init__(self):
        self.lines: list = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def run(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("twinsparse: error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if not (isinstance(args.density, float) and 0.0 < args.density < 1.0):
        print(f"twinsparse: error: --density {args.density} must be in (0, 1)", file=sys.stderr)
        return 2
    if args.repeats is not None and args.repeats < 1:
        print(f"twinsparse: error: --repeats {args.repeats} must be >= 1", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    cuda = dev.type == "cuda"
    repeats = args.repeats or (3 if args.quick else 20)
    width = 8 if args.quick else 64
    clock = Clock(dev)
    say = _Report()
    name = device_name(dev)
    versions = {"torch": torch.__version__, "cupy": None, "kernels": kernels.available() if cuda else False,
                "kernels_reason": None if cuda and kernels.available() else
                (kernels.unavailable_reason() if cuda else "device is the CPU")}
    if cuda and kernels.available():
        versions["cupy"] = kernels.loader._import_cupy().__version__
    say(f"twinsparse bench{' --quick' if args.quick else ''} on {name}: torch {versions['torch']}, "
        f"CUDA kernels {'CuPy ' + versions['cupy'] if versions['cupy'] else 'off (' + str(versions['kernels_reason']) + ')'}, "
        f"median of {repeats}, {datetime.datetime.now().isoformat(timespec='seconds')}")
    mb = (64 if args.quick else 1024) if cuda else (16 if args.quick else 256)
    bw = copy_bandwidth(clock, mb << 20, repeats)
    say(f"copy bandwidth (device to device, read + write): {bw / 1e9:.1f} GB/s over {mb} MiB")
    data = {"device": name, "device_type": dev.type, "quick": bool(args.quick), "width": width, "density": args.density,
            "repeats": repeats, "copy_bandwidth_bytes_per_s": bw, **versions, "rows": {}}
    keys = dict.fromkeys(RATIO_KEYS)
    ms = lambda s: f"{s * 1e3:9.3f} ms"  # noqa: E731

    if "step" in args.sections:
        for opt in ("sgd", "adamw"):
            r = step_rows(clock, width, repeats, opt, args.density)
            data["rows"][f"step_{opt}"] = r
            keys[f"step_{opt}_over_fused_dense"] = _ratio(r["ours"], r["dense_fused"])
            say(f"\n[step] {opt.upper()} on ResNet-50 ({r['params']} parameters), static ERK {args.density}:")
            say(f"  dense, torch fused=True            {ms(r['dense_fused'])}")
            say(f"  dense, torch default               {ms(r['dense_default'])}")
            say(f"  Sparsifier.step ({r['ours_path']:>6s})         {ms(r['ours'])}  {r['ours'] / r['dense_fused']:6.2f}x dense "
                f"fused   ({r['ours_launches']} launches, {r['ours_syncs']} host syncs)")
            say(f"  Sparsifier.step, guard off         {ms(r['ours_no_guard'])}  {r['ours_no_guard'] / r['dense_fused']:6.2f}x")
            say(f"  Sparsifier.step, kernels off       {ms(r['ours_torch_ops'])}  {r['ours_torch_ops'] / r['dense_fused']:6.2f}x")
            say(f"  peer: per-layer mask loop          {ms(r['peer_loop'])}  {r['peer_loop'] / r['ours']:6.2f}x ours")
    if "update" in args.sections:
        r = update_rows(clock, width, repeats, args.density)
        data["rows"]["rigl_update"] = r
        keys["rigl_update_ms_resnet50"] = r["ours"] * 1e3
        keys["rigl_update_over_peer_loop"] = _ratio(r["ours"], r["peer_loop"])
        say(f"\n[update] one whole-model RigL update (drop 0.3, grow by |g|), ResNet-50 ({r['layers']} layers, "
            f"{r['weights']} weights):")
        say(f"  Sparsifier                         {ms(r['ours'])}  ({r['ours_launches']} launches, "
            f"{r['ours_syncs']} host sync)")
        say(f"  Sparsifier, kernels off            {ms(r['ours_torch_ops'])}")
        say(f"  peer: per-layer torch.topk loop    {ms(r['peer_loop'])}  {r['peer_loop'] / r['ours']:6.2f}x ours")
    if "e2e" in args.sections:
        batch, res = (4, 64) if args.quick else ((128, 224) if cuda else (16, 112))
        steps, dt = (20, 10) if args.quick else (200, 100)
        r = e2e_rows(clock, width, batch, res, max(3, repeats // 2), steps, dt, args.density)
        data["rows"]["e2e"] = {**r, "batch": batch, "resolution": res, "rigl_steps": steps, "rigl_delta_t": dt}
        keys["e2e_static_over_dense"] = _ratio(r["static"], r["dense"])
        keys["e2e_rigl100_over_dense"] = _ratio(r["rigl_total"], r["dense_total"])
        say(f"\n[e2e] ResNet-50 training step, batch {batch}, {res}x{res}, channels_last"
            f"{', bf16 autocast' if cuda else ''}, SGD momentum:")
        for label in ("dense", "dense_fused", "static"):
            say(f"  {label:34s} {ms(r[label])}  {r[label] / r['dense']:6.3f}x dense")
        say(f"  RigL dT={dt}, {steps} steps ({r['rigl_updates']} updates)  {ms(r['rigl_total'])}/step  "
            f"{r['rigl_total'] / r['dense_total']:6.3f}x dense over the same steps")
    if "quickstart" in args.sections:
        if cuda:
            r = quickstart_row(["cuda", "cpu"])
            data["rows"]["quickstart"] = r
            keys["quickstart_cuda_over_cpu"] = _ratio(r["cuda"], r["cpu"])
            say(f"\n[quickstart] twinsparse run experiments/quickstart.toml: cuda {r['cuda']:.1f} s, "
                f"cpu {r['cpu']:.1f} s ({r['cuda'] / r['cpu']:.2f}x)")
        else:
            say("\n[quickstart] needs a CUDA device (compares it with the CPU): skipped")
    if "hotpaths" in args.sections:
        r = hot_path_rows(clock, width, repeats, bw, args.density)
        data["rows"]["hotpaths"] = r
        keys.update({
            "topk_global_over_read_floor": _ratio(r["topk_global"], r["topk_global_floor"]),
            "topk_global_over_torch_topk": _ratio(r["topk_global"], r["torch_topk"]),
            "topk_segmented_over_floor": _ratio(r["topk_segmented"], r["topk_segmented_floor"]),
            "drop_grow_over_floor": _ratio(r["drop_grow"], r["drop_grow_floor"]),
            "nm_model_fraction_of_copy_bw": _ratio(r["nm_model_bytes"] / r["nm_model"], bw),
            "nm_8192_fraction_of_copy_bw": _ratio(r["nm_big_bytes"] / r["nm_big"], bw) if r["nm_big_side"] == 8192
            else None,
            "umg_over_floor": _ratio(r["umg"], r["umg_floor"]),
            "dst_ee_over_floor": _ratio(r["dst_ee"], r["dst_ee_floor"]),
            "cia_over_floor": _ratio(r["cia"], r["cia_floor"])})
        say(f"\n[hot paths] ResNet-50 weights ({r['weights']}, {r['layers']} layers), float32, density {args.density}; "
            f"floor = bytes that must move / copy bandwidth:")
        for label, t, f in (("global top-k, k = 10 %", "topk_global", "topk_global_floor"),
                            ("segmented top-k per layer", "topk_segmented", "topk_segmented_floor"),
                            ("RigL drop and grow", "drop_grow", "drop_grow_floor"),
                            ("UMG channel scores", "umg", "umg_floor"), ("DST-EE scores", "dst_ee", "dst_ee_floor"),
                            ("Sup-tickets CIA average", "cia", "cia_floor")):
            say(f"  {label:34s} {ms(r[t])}  {r[t] / r[f]:8.1f}x floor ({ms(r[f]).strip()})")
        say(f"  torch.topk(sorted=False)           {ms(r['torch_topk'])}   (global top-k / torch.topk = "
            f"{r['topk_global'] / r['torch_topk']:.2f})")
        say(f"  stable torch.sort                  {ms(r['torch_sort_stable'])}")
        say(f"  N:M 2:4, every eligible layer      {ms(r['nm_model'])}  {r['nm_model_bytes'] / r['nm_model'] / bw:6.2f} "
            f"of copy bandwidth")
        say(f"  N:M 2:4, one {r['nm_big_side']}x{r['nm_big_side']}            {ms(r['nm_big'])}  "
            f"{r['nm_big_bytes'] / r['nm_big'] / bw:6.2f} of copy bandwidth")
    data.update({k: (None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                 for k, v in keys.items()})
    say("\nratios (the keys of the JSON): " + ", ".join(f"{k}={'n/a' if v is None else f'{v:.4g}'}"
                                                         for k, v in keys.items()))
    slug = _slug(name)
    os.makedirs(args.out, exist_ok=True)
    log, js = os.path.join(args.out, f"{slug}.log"), os.path.join(args.out, f"{slug}.json")
    write_atomic_group({log: ("\n".join(say.lines) + "\n").encode(),
                        js: (json.dumps(data, indent=1, default=str) + "\n").encode()})
    print(f"wrote {log} and {js}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="twinsparse bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
