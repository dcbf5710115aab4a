"""The files ``twinsparse export`` writes: a plain state_dict and a JSON description, no pickled code.

* ``<out>``: the exported weights as a flat dict name -> tensor: a ``.safetensors`` file when the
  ``safetensors`` package is installed (and ``<out>`` does not end in ``.pt`` / ``.pth``), else
  ``torch.save`` of the dict, which ``torch.load(..., weights_only=True)`` reads.
* ``<out without its extension>.json``: what it takes to rebuild the module: the model name, its
  config, the input shape and class count, every layer's type and weight shape (a slimmed export
  has narrower layers), the masks (bit-packed, base64), the 2:4 layers and the export report.

Both files are written together (``safeio.write_atomic_group``). ``load_export(out)`` rebuilds the
module: the architecture of the config, the layers resized to the shapes in the JSON, then the
weights loaded with ``weights_only=True`` (or safetensors).
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from twinsparse.reference import safeio
from twinsparse.reference.checkpoint import CheckpointError
from .semi_structured import export_semi_structured

EXPORT_FORMAT = "twinsparse-export"
EXPORT_VERSION = 1


def json_path(out: str) -> str:
    root, ext = os.path.splitext(out)
    if ext.lower() == ".json":
        raise ValueError(f"--out {out!r} would be overwritten by the export's own JSON; name the weights file "
                         f"(model.safetensors or model.pt)")
    return root + ".json"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        return None
    return st


def weights_format(out: str) -> str:
    """'safetensors' when the package is installed and ``out`` is not a .pt / .pth name, else 'torch'."""
    if os.path.splitext(out)[1].lower() in (".pt", ".pth"):
        return "torch"
    return "safetensors" if _safetensors() is not None else "torch"


def _pack(mask: torch.Tensor) -> dict:
    m = mask.detach().to("cpu", torch.bool).numpy()
    return {"shape": list(m.shape), "kept": int(m.sum()),
            "bits": base64.b64encode(np.packbits(m.reshape(-1)).tobytes()).decode("ascii")}


def unpack_mask(entry: dict) -> torch.Tensor:
    """A mask of the JSON (``masks[name]``) as a bool tensor."""
    n = math.prod(entry["shape"])
    bits = np.frombuffer(base64.b64decode(entry["bits"]), dtype=np.uint8)
    if bits.size != -(-n // 8):
        raise CheckpointError(f"a mask of shape {entry['shape']} needs {-(-n // 8)} bytes, the JSON holds {bits.size}")
    return torch.from_numpy(np.unpackbits(bits)[:n].astype(bool).reshape(entry["shape"]))


def layer_table(model: nn.Module) -> dict:
    """name -> {type, weight shape} of every module that holds a weight (what a slim export resizes)."""
    out = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and name:
            out[name] = {"type": type(mod).__name__, "shape": list(w.shape)}
    return out


def write_export(out: str, model: nn.Module, cfg: dict, input_shape, num_classes: int, fmt: str,
                 masks: Optional[Mapping], semi: list, report: dict) -> dict:
    """Write ``out`` and its JSON together; returns the paths written."""
    meta_path = json_path(out)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    kind = weights_format(out)
    if kind == "safetensors":
        data = _safetensors().save({k: v.clone() for k, v in sd.items()})
    else:
        buf = io.BytesIO()
        torch.save(sd, buf)
        data = buf.getvalue()
    meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "export": fmt, "weights_file": os.path.basename(out),
            "weights_format": kind, "model": cfg.get("model"), "config": cfg,
            "input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes),
            "layers": layer_table(model), "masks": {n: _pack(m) for n, m in (masks or {}).items()},
            "semi_structured": list(semi), "report": {k: v for k, v in report.items() if k != "out"}}
    safeio.write_atomic_group({out: data, meta_path: (json.dumps(meta, indent=1) + "\n").encode("utf-8")})
    return {"weights": out, "json": meta_path}


def _read_meta(out: str) -> dict:
    path = json_path(out)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{out} has no {os.path.basename(path)} beside it: that file describes the "
                              f"architecture and masks of a twinsparse export") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not the JSON of a twinsparse export")
    if meta.get("version") != EXPORT_VERSION:
        raise CheckpointError(f"{path} is export version {meta.get('version')!r}; this twinsparse reads version "
                              f"{EXPORT_VERSION}")
    return meta


def read_weights(out: str, kind: str) -> dict:
    """The state_dict of an export: safetensors, or ``torch.load(weights_only=True)``."""
    try:
        if kind == "safetensors":
            st = _safetensors()
            if st is None:
                raise CheckpointError(f"{out} is a safetensors file and the safetensors package is not installed")
            return st.load_file(out)
        return torch.load(out, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged file
        raise CheckpointError(f"export weights {out} are unreadable or truncated ({type(e).__name__}: {e})") from None


def _resized(mod: nn.Module, shape: list) -> nn.Module:
    """A module of ``mod``'s type with a weight of ``shape`` (what slim_channels does to a layer)."""
    if tuple(mod.weight.shape) == tuple(shape):
        return mod
    bias = getattr(mod, "bias", None) is not None
    if isinstance(mod, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=bias)
    if isinstance(mod, nn.Conv2d):
        return nn.Conv2d(shape[1] * mod.groups, shape[0], mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                         mod.groups, bias)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return type(mod)(shape[0], eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                         track_running_stats=mod.track_running_stats)
    raise CheckpointError(f"the export resizes a {type(mod).__name__} to {shape}, which only Linear, Conv2d and "
                          f"BatchNorm layers can be")


def load_export(out: str, device=None) -> nn.Module:
    """The module of a ``write_export`` pair, in eval mode; a 2:4 export becomes semi-structured again
    on a supported CUDA ``device``."""
    from twinsparse.reference.config import RunConfig
    from twinsparse.reference.config_keys import coerce_run_fields
    from ..train import build_model_for
    meta = _read_meta(out)
    cfg = RunConfig(**coerce_run_fields(meta["config"], f"{json_path(out)}")).validate().replace(device="cpu")
    model = build_model_for(cfg, tuple(meta["input_shape"]), meta["num_classes"])
    for name, info in meta["layers"].items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{json_path(out)} names layer {name!r}, which model={cfg.model!r} lacks") from None
        new = _resized(mod, info["shape"])
        if new is not mod:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    if hasattr(model, "sizes") and "fc.0" in meta["layers"]:      # the MLP's record of its widths
        model.sizes = (model.sizes[0],) + tuple(meta["layers"][f"fc.{i}"]["shape"][0]
                                                for i in range(len(model.sizes) - 1))
    sd = read_weights(out, meta["weights_format"])
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(next(iter(dtypes)))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {out} do not fit the architecture of {json_path(out)}: {e}") from None
    model.export_masks = {n: unpack_mask(e) for n, e in meta["masks"].items()}
    if device is not None:
        model = model.to(device)
        if meta["export"] == "2:4" and torch.device(device).type == "cuda":
            model = export_semi_structured(model)
    return model.eval()
