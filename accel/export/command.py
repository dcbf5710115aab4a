"""What ``twinsparse export`` runs: ``export_checkpoint`` rebuilds the model of an accel training
checkpoint, exports it as ``dense``, ``slim`` (``export.slim``) or ``2:4`` (``export.semi_structured``)
and writes the files of ``export.files``; ``format_export_report`` is what the command prints;
``load_exported`` reads an export back (also the earlier pickled format).
"""
from __future__ import annotations

import copy
import os
from typing import Mapping

import torch
import torch.nn as nn

from twinsparse.reference.checkpoint import CheckpointError
from .files import json_path, load_export, write_export
from .masking import apply_masks, param_count
from .semi_structured import export_semi_structured, semi_structured_supported
from .slim import SlimReport, slim_channels

__all__ = ["export_checkpoint", "format_export_report", "load_exported", "EXPORT_FORMATS", "EXPORT_KIND"]


EXPORT_FORMATS = ("dense", "slim", "2:4")
EXPORT_KIND = "twinsparse-export"


def _model_from_checkpoint(path: str):
    from twinsparse.reference.config import RunConfig, run_to_dict
    from twinsparse.reference.config_keys import coerce_run_fields
    from .. import checkpoint as ckpt
    from ..train import build_model_for
    payload = ckpt.load(path)
    if "stages" in payload:
        raise CheckpointError(f"checkpoint {path} is the stage checkpoint of procedure "
                              f"{payload.get('procedure')!r}; export takes the checkpoint of a single training run")
    missing = [k for k in ("config", "model", "sparsifier") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is not a training checkpoint")
    cfg = RunConfig(**coerce_run_fields(payload["config"], f"checkpoint {path}")).validate().replace(device="cpu")
    sd = payload["model"]
    mats = [k for k, v in sd.items() if k.endswith(".weight") and getattr(v, "dim", lambda: 0)() == 2]
    if not mats:
        raise CheckpointError(f"checkpoint {path}: the model state has no Linear weight")
    # the data's sample shape and class count (checkpoints before they were recorded: the widths of the
    # first and last Linear, i.e. MNIST rows)
    shape = tuple(payload.get("input_shape") or (int(sd[mats[0]].shape[1]),))
    n_classes = int(payload.get("num_classes") or sd[mats[-1]].shape[0])
    model = build_model_for(cfg, shape, n_classes)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its model state does not fit model={cfg.model!r} "
                              f"rebuilt from its config ({e})") from None
    sp = payload["sparsifier"]
    masks = sp.get("masks") if isinstance(sp, Mapping) else None
    return model.eval(), masks, run_to_dict(cfg), shape, n_classes


def export_checkpoint(path: str, fmt: str, out: str, dtype: str = "float16") -> dict:
    """Load an accel training checkpoint, rebuild its model, export it as ``fmt`` and write ``out``
    (a plain state_dict: safetensors when installed, else torch.save of the dict) and its JSON
    (architecture, masks, report; ``accel.export.files``).

    ``dense``: the model with its masks applied; ``slim``: ``slim_channels``; ``2:4``: the masked
    model in ``dtype`` on CUDA, checked by ``export_semi_structured`` (the file stores the dense
    masked weights and the JSON the names of the 2:4 layers; ``load_exported`` converts them again).
    Returns a report dict (params before / after, per-layer details, the files written).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format={fmt!r} is not allowed; choose one of {list(EXPORT_FORMATS)}")
    if fmt == "2:4":
        ok, reason = semi_structured_supported()
        if not ok:
            raise RuntimeError(f"--format 2:4 cannot run here: {reason}")
        if dtype not in ("float16", "bfloat16"):
            raise ValueError(f"dtype={dtype!r} is not allowed for 2:4; choose float16 or bfloat16")
    json_path(out)                       # a bad --out name is an error before any work
    model, masks, cfg, shape, n_classes = _model_from_checkpoint(path)
    before = param_count(model)
    report = {"format": fmt, "source": str(path), "params_before": before}
    semi = []
    if fmt == "slim":
        exported = slim_channels(model, masks)
        report["layers"] = exported.slim_report.as_dict()["layers"]
    else:
        exported = apply_masks(copy.deepcopy(model), masks).eval()
        if fmt == "2:4":
            dt = getattr(torch, dtype)
            exported = exported.to(device="cuda", dtype=dt)
            semi_model = export_semi_structured(exported, None)
            semi = semi_model.semi_structured_report["converted"]
            report["semi_structured"] = semi_model.semi_structured_report
            exported = exported.cpu()
    report["params_after"] = param_count(exported)
    report["nonzero_after"] = int(sum(int((p != 0).sum()) for p in exported.parameters()))
    written = write_export(out, exported, cfg, shape, n_classes, fmt, masks, semi, report)
    report["out"], report["json"] = str(out), written["json"]
    return report


def format_export_report(report: dict) -> str:
    lines = [f"export {report['format']}: {report['source']} -> {report.get('out', '?')} (weights) and "
             f"{report.get('json', '?')} (architecture, masks)"]
    if report.get("layers"):
        lines.append(str(SlimReport(report["layers"], report["params_before"], report["params_after"])).rsplit("\n", 1)[0])
    if report.get("semi_structured"):
        s = report["semi_structured"]
        lines.append(f"2:4 layers: {s['converted'] or 'none'}; dense: " +
                     (", ".join(f"{k} ({v})" for k, v in s["dense"].items()) or "none"))
    frac = report["params_after"] / report["params_before"] if report["params_before"] else 1.0
    lines.append(f"params before: {report['params_before']}, after: {report['params_after']} ({frac:.1%}); "
                 f"non-zero after: {report['nonzero_after']}")
    return "\n".join(lines)


def load_exported(path: str, device=None) -> nn.Module:
    """The module written by ``export_checkpoint`` (its weights read with ``weights_only=True`` or
    safetensors, the architecture from the JSON beside it); a 2:4 export is converted again when
    ``device`` is a supported CUDA device (else returned dense, masked, in its half-precision dtype).
    Files of the earlier pickled format (no JSON beside them) are still read."""
    if os.path.exists(json_path(path)):
        return load_export(path, device)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"export file {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("kind") != EXPORT_KIND:
        raise CheckpointError(f"{path} is not a twinsparse export file: an export keeps its architecture and masks "
                              f"in {os.path.basename(json_path(path))} beside it, which is missing")
    model = payload["model"]
    if device is not None:
        model = model.to(device)
        if payload["format"] == "2:4" and torch.device(device).type == "cuda":
            model = export_semi_structured(model)
    return model.eval()
