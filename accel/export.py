"""Export of a trained sparse model (issue 7): channel slimming, 2:4 semi-structured weights, and a
mask bank file holding many named mask sets.

* ``slim_channels(model, masks)``: a smaller copy of an ``MLP``, ``SmallCNN`` or ``VGG16`` with the
  dead output units / channels physically removed (rows of their layer, the matching BatchNorm
  entries and the matching input columns / channels of the next layer). The slimmed model equals the
  masked model in eval mode (BatchNorm running statistics). The rule is below, at ``slim_channels``.
* ``semi_structured_supported(device)`` / ``export_semi_structured(model, masks)``: every eligible
  ``nn.Linear`` weight becomes a ``torch.sparse`` semi-structured (2:4) tensor; this needs an NVIDIA
  GPU with compute capability >= 8.0 and float16 / bfloat16 weights, and is a clear ``RuntimeError``
  anywhere else. ``check_export_accuracy`` compares an export with the masked model.
* ``save_mask_bank`` / ``load_mask_bank``: one file, many named mask sets (``"unstructured/0.2"``,
  ``"nm/2:4"``, ``"channel/0.1"``), bit-packed, written atomically; ``MaskBank.apply(model, name)``.
* ``export_checkpoint`` / ``load_exported``: what ``twinsparse export`` runs.
"""
from __future__ import annotations

import copy
import io
import json
import os
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinsparse.reference.checkpoint import CheckpointError, write_atomic
from .models import MLP, SmallCNN, VGG16

__all__ = ["slim_channels", "SlimReport", "apply_masks", "param_count", "semi_structured_supported",
           "export_semi_structured", "is_two_four", "check_export_accuracy", "save_mask_bank", "load_mask_bank",
           "MaskBank", "MaskBankError", "UnknownMaskSetError", "export_checkpoint", "load_exported",
           "EXPORT_FORMATS", "MASK_BANK_FORMAT", "MASK_BANK_VERSION"]


# ----------------------------------------------------------------------------- masks, counting
def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_masks(model: nn.Module, masks: Optional[Mapping]) -> dict:
    """Validate a dict param-name -> mask against ``model`` (every entry before any use)."""
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of parameter name -> boolean tensor (or None), got {type(masks).__name__}")
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name parameter(s) {unknown} that the model does not have; "
                         f"its weights are {[n for n in params if n.endswith('weight')]}")
    out = {}
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask {n!r} must be a torch.Tensor, got {type(m).__name__}")
        if tuple(m.shape) != tuple(params[n].shape):
            raise ValueError(f"mask {n!r} has shape {tuple(m.shape)} but the parameter has shape {tuple(params[n].shape)}")
        if m.dtype != torch.bool:
            if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(f"mask {n!r} must be boolean or 0/1 valued")
            m = m != 0
        out[n] = m
    return out


def apply_masks(model: nn.Module, masks: Optional[Mapping]) -> nn.Module:
    """Multiply the named parameters by their masks in place (all validated first); returns ``model``."""
    masks = _check_masks(model, masks)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(device=params[n].device, dtype=params[n].dtype))
    return model


# ----------------------------------------------------------------------------- channel slimming
_PASS = (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class _Stage:
    """One Linear / Conv2d and the elementwise ops that follow it (("bn", module name) or ("relu", None))."""
    name: str
    post: list = field(default_factory=list)

    @property
    def bn(self) -> Optional[str]:
        return next((n for kind, n in self.post if kind == "bn"), None)


def _chain(model: nn.Module) -> list:
    """The model as a chain of stages; the last stage is the classifier (never slimmed)."""
    if isinstance(model, MLP):
        n = len(model.fc)
        return [_Stage(f"fc.{i}", ([("bn", f"bn.{i}")] if model.batchnorm else []) + [("relu", None)])
                for i in range(n - 1)] + [_Stage(f"fc.{n - 1}")]
    if isinstance(model, (SmallCNN, VGG16)):
        stages, closed = [], True      # closed: a pool / flatten came after the last stage's ops
        for i, mod in enumerate(model.features):
            name = f"features.{i}"
            if isinstance(mod, nn.Conv2d):
                if mod.groups != 1:
                    raise TypeError(f"slim_channels: grouped convolution {name} (groups={mod.groups}) is not supported")
                stages.append(_Stage(name))
                closed = False
            elif isinstance(mod, (nn.BatchNorm2d, nn.ReLU)):
                if not stages or closed:
                    raise TypeError(f"slim_channels: {type(mod).__name__} {name} does not directly follow a conv")
                stages[-1].post.append(("bn", name) if isinstance(mod, nn.BatchNorm2d) else ("relu", None))
            elif isinstance(mod, _PASS):
                closed = True
            else:
                raise TypeError(f"slim_channels: module {name} ({type(mod).__name__}) is not supported")
        if not stages:
            raise TypeError("slim_channels: the model has no conv layer in .features")
        return stages + [_Stage("classifier")]
    raise TypeError(f"slim_channels supports accel.models MLP, SmallCNN and VGG16 (chains without skip "
                    f"connections); got {type(model).__name__}")


def _constants(model: nn.Module, stage: _Stage) -> torch.Tensor:
    """The value every output of each unit/channel takes when its weights are all zero:
    post-ops (eval-mode BatchNorm, ReLU) applied to the bias (0 without one)."""
    layer = model.get_submodule(stage.name)
    w = layer.weight
    x = (layer.bias.detach().clone() if layer.bias is not None
         else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    for kind, name in stage.post:
        if kind == "relu":
            x = F.relu(x)
            continue
        bn = model.get_submodule(name)
        if bn.running_mean is None:
            raise TypeError(f"slim_channels: BatchNorm {name} does not track running statistics, so eval mode "
                            f"uses batch statistics and a channel cannot be removed exactly")
        x = F.batch_norm(x.reshape(1, -1), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                         bn.eps).reshape(-1)
    return x


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _new_layer(old: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> nn.Module:
    """A copy of a Linear / Conv2d keeping output ``rows`` and input ``cols`` (index tensors)."""
    kw = dict(device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(old, nn.Linear):
        new = nn.Linear(len(cols), len(rows), bias=old.bias is not None, **kw)
    else:
        new = nn.Conv2d(len(cols), len(rows), old.kernel_size, old.stride, old.padding, old.dilation, 1,
                        old.bias is not None, old.padding_mode, **kw)
    with torch.no_grad():
        new.weight.copy_(old.weight[rows][:, cols])
        if old.bias is not None:
            new.bias.copy_(old.bias[rows])
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def _new_bn(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(old)(len(keep), eps=old.eps, momentum=old.momentum, affine=old.affine,
                    track_running_stats=old.track_running_stats, device=old.running_mean.device,
                    dtype=old.running_mean.dtype)
    with torch.no_grad():
        if old.affine:
            new.weight.copy_(old.weight[keep])
            new.bias.copy_(old.bias[keep])
        new.running_mean.copy_(old.running_mean[keep])
        new.running_var.copy_(old.running_var[keep])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new


@dataclass
class SlimReport:
    """What ``slim_channels`` kept and removed, per layer (``layers``: one dict per stage)."""
    layers: list
    params_before: int
    params_after: int

    def as_dict(self) -> dict:
        return {"layers": [dict(r) for r in self.layers], "params_before": self.params_before,
                "params_after": self.params_after}

    def __str__(self) -> str:
        head = f"{'layer':<14}{'kind':<8}{'units':>7}{'kept':>7}{'zero':>6}{'folded':>8}{'unused':>8}{'kept const':>12}"
        rows = [head] + [f"{r['layer']:<14}{r['kind']:<8}{r['before']:>7}{r['after']:>7}{r['removed_zero']:>6}"
                         f"{r['removed_folded']:>8}{r['removed_unused']:>8}{r['kept_constant']:>12}" for r in self.layers]
        frac = self.params_after / self.params_before if self.params_before else 1.0
        rows.append(f"params: before {self.params_before}, after {self.params_after} ({frac:.1%} of before)")
        return "\n".join(rows)


@torch.no_grad()
def slim_channels(model: nn.Module, masks: Optional[Mapping] = None) -> nn.Module:
    """A channel-slimmed copy of ``model`` (``MLP``, ``SmallCNN`` or ``VGG16``) for inference.

    ``masks``: dict parameter name -> boolean (or 0/1) tensor, e.g. ``Sparsifier.masks``; ``None``
    uses the weights as they are (their zeros). The copy holds the masked weights; the input model
    is not modified. The result is in eval mode and carries ``.slim_report`` (a ``SlimReport``).

    The rule. Let unit / channel ``j`` of a hidden Linear / Conv2d be followed by its elementwise ops
    (eval-mode BatchNorm with running statistics, ReLU) and feed the next layer (directly, or through
    max-pool / adaptive pool / flatten; at the conv -> flatten -> Linear transition channel ``j``
    feeds the ``S = in_features / C`` consecutive input columns ``j*S .. j*S+S-1``). ``j`` is removed
    exactly when

    1. *unused*: the next layer's weights reading ``j`` (its input column / channel ``j``, over
       the next layer's kept outputs) are all zero -- ``j`` contributes nothing; or
    2. *zero*: its own weight row / filter is all zero, so it outputs the constant
       ``c_j = post_ops(bias_j)`` (bias 0 if none) everywhere, and ``c_j == 0`` -- nothing to fold; or
    3. *folded*: its weight row / filter is all zero, ``c_j != 0``, and the next layer is a Linear
       with a bias: ``c_j`` is folded exactly into it, ``b_next += W_next[:, cols(j)].sum(1) * c_j``
       (max / adaptive pooling and flatten keep a constant map constant).

    A conv channel with a non-zero constant that feeds another conv is kept: with zero padding its
    constant map is not constant after the next conv (the borders see the padding), so it cannot be
    folded into a bias. The classifier's outputs are never removed (only its input columns), nor
    the network's inputs. If every unit of a layer qualifies, the first one is kept (a layer
    cannot be empty). Layers are decided from the classifier backwards, so a unit used only by
    removed units is itself unused. Outputs equal the masked model's in eval mode in exact
    arithmetic for finite inputs; in floating point only the order of additions (and the rounding
    of a folded product) changes.
    """
    stages = _chain(model)
    masks = _check_masks(model, masks)
    slim = apply_masks(copy.deepcopy(model), masks).eval()
    before = param_count(slim)
    mods = {s.name: slim.get_submodule(s.name) for s in stages}
    keep = [None] * len(stages)
    keep[-1] = torch.arange(mods[stages[-1].name].weight.shape[0], device=mods[stages[-1].name].weight.device)
    records, folds = [None] * len(stages), {}
    for k in range(len(stages) - 2, -1, -1):
        layer, nxt = mods[stages[k].name], mods[stages[k + 1].name]
        w = layer.weight
        c_out = w.shape[0]
        wn = nxt.weight[keep[k + 1]]                                  # the next layer's kept outputs
        if isinstance(nxt, nn.Linear):
            if wn.shape[1] % c_out:
                raise TypeError(f"slim_channels: {stages[k + 1].name} has {wn.shape[1]} inputs, not a multiple "
                                f"of the {c_out} channels of {stages[k].name}")
            per = wn.reshape(wn.shape[0], c_out, wn.shape[1] // c_out)   # [O, C, S]
            reads = (per != 0).any(dim=2).any(dim=0)
        else:
            reads = (wn != 0).reshape(wn.shape[0], wn.shape[1], -1).any(dim=2).any(dim=0)
        unused = ~reads
        const_out = ~(w != 0).reshape(c_out, -1).any(dim=1)
        c = _constants(slim, stages[k])
        foldable = isinstance(nxt, nn.Linear) and nxt.bias is not None
        zero = const_out & (c == 0) & ~unused
        folded = const_out & (c != 0) & ~unused & foldable
        remove = unused | zero | folded
        if bool(remove.all()):
            remove[0] = zero[0] = folded[0] = unused[0] = False
        if bool(folded.any()):   # b_next += sum_j W_next[:, cols(j)] c_j over the folded units
            full = nxt.weight.reshape(nxt.weight.shape[0], c_out, -1).sum(dim=2)
            folds[stages[k + 1].name] = full[:, folded] @ c[folded]
        keep[k] = torch.nonzero(~remove).flatten()
        records[k] = {"layer": stages[k].name, "kind": type(layer).__name__, "before": c_out,
                      "after": int(keep[k].numel()), "removed_zero": int(zero.sum()),
                      "removed_folded": int(folded.sum()), "removed_unused": int(unused.sum()),
                      "kept_constant": int((const_out & ~remove).sum())}
    for name, delta in folds.items():
        mods[name].bias.add_(delta)
    n_in = mods[stages[0].name].weight.shape[1]
    for k, st in enumerate(stages):
        old = mods[st.name]
        cols = torch.arange(n_in, device=old.weight.device) if k == 0 else keep[k - 1]
        if k > 0 and isinstance(old, nn.Linear):  # expand channel j to its S input columns
            s = old.weight.shape[1] // mods[stages[k - 1].name].weight.shape[0]
            cols = (cols[:, None] * s + torch.arange(s, device=cols.device)).flatten()
        _set_module(slim, st.name, _new_layer(old, keep[k], cols))
        if st.bn is not None:
            _set_module(slim, st.bn, _new_bn(slim.get_submodule(st.bn), keep[k]))
    last = mods[stages[-1].name]
    records[-1] = {"layer": stages[-1].name, "kind": type(last).__name__, "before": last.weight.shape[0],
                   "after": last.weight.shape[0], "removed_zero": 0, "removed_folded": 0, "removed_unused": 0,
                   "kept_constant": 0}
    if isinstance(slim, MLP):
        slim.sizes = (slim.sizes[0],) + tuple(int(kp.numel()) for kp in keep)
    slim.eval()
    slim.slim_report = SlimReport(records, before, param_count(slim))
    return slim


# ----------------------------------------------------------------------------- 2:4 semi-structured
SEMI_DTYPES = (torch.float16, torch.bfloat16)


def _cusparselt() -> bool:
    b = getattr(torch.backends, "cusparselt", None)
    return bool(b is not None and b.is_available())


def _semi_class():
    """The torch subclass ``to_sparse_semi_structured`` would use (cuSPARSELt when present, else CUTLASS)."""
    sp = torch.sparse
    if getattr(sp.SparseSemiStructuredTensor, "_FORCE_CUTLASS", False) or not _cusparselt():
        return sp.SparseSemiStructuredTensorCUTLASS
    return sp.SparseSemiStructuredTensorCUSPARSELT


def semi_structured_supported(device=None) -> tuple[bool, str]:
    """(True, description) when 2:4 semi-structured weights run on ``device`` (default: the current
    CUDA device), else (False, the reason: no CUDA, not a CUDA device, capability < 8.0, old torch)."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return False, (f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU; "
                       f"2:4 semi-structured sparsity needs an NVIDIA GPU with compute capability >= 8.0")
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if dev.type != "cuda":
        return False, (f"device {dev} is not a CUDA device; 2:4 semi-structured sparsity runs on NVIDIA GPUs "
                       f"(move the model with .cuda())")
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    name = torch.cuda.get_device_name(idx)
    if (major, minor) < (8, 0):
        return False, (f"{name} has compute capability {major}.{minor}; 2:4 semi-structured sparse kernels "
                       f"need >= 8.0 (Ampere or newer)")
    backend = "cuSPARSELt" if _semi_class().__name__.endswith("CUSPARSELT") else "CUTLASS"
    return True, f"{name} (compute capability {major}.{minor}), backend {backend}"


def is_two_four(w: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive weights along the input dim of [O, I]."""
    return w.dim() == 2 and w.shape[1] % 4 == 0 and bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _semi_min_shape(cls, dtype) -> tuple[int, int]:
    cons = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(dtype)
    return (cons.sparse_min_rows, cons.sparse_min_cols) if cons is not None else (32, 64)


def _why_not_semi(w: torch.Tensor, cls) -> Optional[str]:
    rows, cols = _semi_min_shape(cls, w.dtype)
    o, i = w.shape
    if o < rows or o % rows or i < cols or i % cols:
        return f"shape {tuple(w.shape)}: needs rows a multiple of {rows} and columns a multiple of {cols}"
    if not is_two_four(w):
        return "weights are not 2:4 along the input dimension"
    return None


def export_semi_structured(model: nn.Module, masks: Optional[Mapping] = None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A copy of ``model`` whose eligible ``nn.Linear`` weights are semi-structured (2:4) sparse tensors.

    Eligible: (masked) weight 2:4 along the input dim, shape a multiple of the kernel's minimum block
    (from torch's constraints for the backend in use), dtype float16 / bfloat16 (``dtype`` converts
    the copy), model on a CUDA device with compute capability >= 8.0. Other layers stay dense; the
    copy carries ``.semi_structured_report`` ({"converted": [...], "dense": {name: reason}}). Anywhere
    2:4 cannot run this raises ``RuntimeError`` naming the reason, and nothing is modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    p0 = next(model.parameters(), None)
    if p0 is None:
        raise ValueError("the model has no parameters")
    ok, reason = semi_structured_supported(p0.device if torch.cuda.is_available() else None)
    if not ok:
        raise RuntimeError(f"2:4 semi-structured export is not possible here: {reason}")
    want = p0.dtype if dtype is None else dtype
    if want not in SEMI_DTYPES:
        raise RuntimeError(f"2:4 semi-structured export needs float16 or bfloat16 weights, the model is {want}; "
                           f"pass dtype=torch.float16 (or convert with model.half())")
    masks = _check_masks(model, masks)
    out = apply_masks(copy.deepcopy(model).to(dtype=want), masks).eval()
    cls = _semi_class()
    converted, dense = [], {}
    with torch.no_grad():
        for name, mod in out.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            why = _why_not_semi(mod.weight, cls)
            if why is not None:
                dense[name] = why
                continue
            mod.weight = nn.Parameter(cls.from_dense(mod.weight.detach().contiguous()), requires_grad=False)
            converted.append(name)
    out.semi_structured_report = {"converted": converted, "dense": dense, "backend": cls.__name__}
    return out


@torch.no_grad()
def check_export_accuracy(masked_model: nn.Module, exported_model: nn.Module, x: torch.Tensor) -> dict:
    """Eval-mode outputs of both models on ``x`` (moved to each model's device and dtype):
    max / mean absolute difference (float32), the reference's max |output|, and argmax agreement."""
    outs = []
    for m in (masked_model, exported_model):
        p = next(m.parameters())
        was = m.training
        m.eval()
        try:
            outs.append(m(x.to(device=p.device, dtype=p.dtype)).detach().to("cpu", torch.float64))
        finally:
            m.train(was)
    a, b = outs
    if a.shape != b.shape:
        raise ValueError(f"the models' outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).abs()
    agree = (a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean() if a.dim() >= 1 and a.numel() else torch.tensor(1.0)
    return {"max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.numel() else 0.0,
            "max_abs_ref": float(a.abs().max()) if a.numel() else 0.0,
            "argmax_agreement": float(agree), "n": int(a.shape[0]) if a.dim() else 1}


# ----------------------------------------------------------------------------- mask bank
MASK_BANK_FORMAT = "twinsparse-maskbank"
MASK_BANK_VERSION = 1
_HEADER = "__maskbank__"


class MaskBankError(ValueError):
    """A mask bank file or request that cannot be used (corrupt file, wrong shapes, ...)."""


class UnknownMaskSetError(MaskBankError, KeyError):
    """A mask set name that the bank does not hold (a KeyError too)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _mask_to_numpy(m, where: str) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        t = m.detach().cpu()
        if t.dtype != torch.bool:
            if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
                raise ValueError(f"{where} must be boolean or 0/1 valued (dtype {t.dtype})")
            t = t != 0
        return t.numpy()
    if isinstance(m, np.ndarray):
        if m.dtype != np.bool_:
            if m.dtype.kind not in "biuf" or not np.all((m == 0) | (m == 1)):
                raise ValueError(f"{where} must be boolean or 0/1 valued (dtype {m.dtype})")
            m = m != 0
        return m
    raise TypeError(f"{where} must be a boolean torch.Tensor or NumPy array, got {type(m).__name__}")


def save_mask_bank(path: str, bank: Mapping[str, Mapping[str, torch.Tensor]], meta: Optional[dict] = None) -> None:
    """Write many named mask sets (name -> {param name -> bool tensor}) to one file, atomically.

    Format (``MASK_BANK_FORMAT`` version ``MASK_BANK_VERSION``): a compressed ``.npz`` archive with
    a JSON header (format tag, version, ``meta``, per set the parameter names and shapes) and one
    ``np.packbits`` array per mask (8 mask entries per byte, C order). Everything is validated first.
    """
    if not isinstance(bank, Mapping) or not bank:
        raise ValueError("bank must be a non-empty dict of set name -> {parameter name -> mask}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (JSON-serializable) or None, got {type(meta).__name__}")
    sets, arrays = [], {}
    for i, (name, masks) in enumerate(bank.items()):
        if not isinstance(name, str) or not name:
            raise TypeError(f"mask set names must be non-empty strings, got {name!r}")
        if not isinstance(masks, Mapping) or not masks:
            raise ValueError(f"mask set {name!r} must be a non-empty dict of parameter name -> mask")
        layers = []
        for j, (pname, m) in enumerate(masks.items()):
            if not isinstance(pname, str):
                raise TypeError(f"mask set {name!r}: parameter names must be strings, got {pname!r}")
            a = _mask_to_numpy(m, f"mask set {name!r}, mask {pname!r}")
            arrays[f"m{i}_{j}"] = np.packbits(a.reshape(-1))
            layers.append([pname, list(a.shape)])
        sets.append({"name": name, "layers": layers})
    header = {"format": MASK_BANK_FORMAT, "version": MASK_BANK_VERSION, "meta": meta if meta is not None else {},
              "sets": sets}
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must be JSON-serializable: {e}") from None
    buf = io.BytesIO()
    np.savez_compressed(buf, **{_HEADER: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}, **arrays)
    write_atomic(path, buf.getvalue())


class MaskBank:
    """The mask sets of one mask bank file (see ``load_mask_bank``); masks are kept bit-packed."""

    def __init__(self, path: str, meta: dict, sets: dict, packed: dict):
        self.path, self.meta = path, meta
        self._sets, self._packed = sets, packed          # name -> [(param, shape)], name -> [packed]

    def names(self) -> list:
        return list(self._sets)

    def __contains__(self, name) -> bool:
        return name in self._sets

    def __len__(self) -> int:
        return len(self._sets)

    def _check_name(self, name) -> None:
        if name not in self._sets:
            raise UnknownMaskSetError(f"mask bank {self.path} has no mask set {name!r}; available: {self.names()}")

    def shapes(self, name: str) -> dict:
        self._check_name(name)
        return {p: tuple(s) for p, s in self._sets[name]}

    def masks(self, name: str, device=None) -> dict:
        """The mask set ``name`` as dict parameter name -> bool tensor."""
        self._check_name(name)
        out = {}
        for (p, shape), packed in zip(self._sets[name], self._packed[name]):
            n = math.prod(shape)
            out[p] = torch.from_numpy(np.unpackbits(packed, count=n).astype(bool).reshape(shape)).to(device or "cpu")
        return out

    def density(self, name: str) -> float:
        masks = self.masks(name)
        total = sum(m.numel() for m in masks.values())
        return float(sum(int(m.sum()) for m in masks.values())) / total if total else 1.0

    def apply(self, model: nn.Module, name: str) -> dict:
        """Multiply the named weights of ``model`` by mask set ``name`` in place; every name and shape
        is checked before any weight changes. Returns the masks (e.g. for ``Sparsifier.set_masks``)."""
        masks = self.masks(name)
        params = dict(model.named_parameters())
        missing = [p for p in masks if p not in params]
        if missing:
            raise MaskBankError(f"mask set {name!r} names parameter(s) {missing} that the model "
                                f"({type(model).__name__}) does not have; its parameters are {list(params)}")
        for p, m in masks.items():
            if tuple(m.shape) != tuple(params[p].shape):
                raise MaskBankError(f"mask set {name!r}: {p!r} has shape {tuple(m.shape)} in the bank but "
                                    f"{tuple(params[p].shape)} in the model")
        apply_masks(model, masks)
        return masks

    def __repr__(self) -> str:
        return f"MaskBank({self.path!r}, sets={self.names()})"


def load_mask_bank(path: str) -> MaskBank:
    """Read a mask bank written by ``save_mask_bank``; a clear ``MaskBankError`` for a file that is
    not a mask bank, is truncated or corrupt, or was written by a newer format version."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"PK"):
        raise MaskBankError(f"{path} is not a mask bank file (expected a {MASK_BANK_FORMAT} .npz archive)")
    corrupt = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, UnicodeDecodeError, KeyError)
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        files = set(npz.files)
    except corrupt as e:
        raise MaskBankError(f"mask bank {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    if _HEADER not in files:
        raise MaskBankError(f"{path} is not a mask bank file (a zip archive without a {MASK_BANK_FORMAT} header)")
    try:
        header = json.loads(npz[_HEADER].tobytes().decode("utf-8"))
        arrays = {k: npz[k] for k in files if k != _HEADER}
    except corrupt as e:
        raise MaskBankError(f"mask bank {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != MASK_BANK_FORMAT:
        raise MaskBankError(f"{path} is not a mask bank file (format tag {header.get('format') if isinstance(header, dict) else None!r})")
    if header.get("version") != MASK_BANK_VERSION:
        raise MaskBankError(f"mask bank {path} has format version {header.get('version')!r}; this twinsparse "
                            f"reads version {MASK_BANK_VERSION}")
    sets, packed = {}, {}
    try:
        for i, s in enumerate(header["sets"]):
            layers = [(str(p), tuple(int(d) for d in shape)) for p, shape in s["layers"]]
            arrs = [arrays[f"m{i}_{j}"] for j in range(len(layers))]
            for (p, shape), a in zip(layers, arrs):
                if a.dtype != np.uint8 or a.ndim != 1 or a.size != -(-math.prod(shape) // 8):
                    raise ValueError(f"packed mask {p!r} of set {s['name']!r} does not hold {math.prod(shape)} bits")
            sets[str(s["name"])], packed[str(s["name"])] = layers, arrs
    except (KeyError, TypeError, ValueError) as e:
        raise MaskBankError(f"mask bank {path} is corrupt ({type(e).__name__}: {e})") from None
    return MaskBank(path, header.get("meta", {}), sets, packed)


# ----------------------------------------------------------------------------- checkpoint export (CLI)
EXPORT_FORMATS = ("dense", "slim", "2:4")
EXPORT_KIND = "twinsparse-export"


def _model_from_checkpoint(path: str):
    from twinsparse.reference.config import RunConfig, run_to_dict
    from twinsparse.reference.config_keys import coerce_run_fields
    from . import checkpoint as ckpt
    from .train import build_model_for
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
    (architecture, masks, report; ``accel.export_files``).

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
    from .export_files import json_path, write_export
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
    from .export_files import json_path, load_export
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
