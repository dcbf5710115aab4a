"""Channel slimming (issue 7): ``slim_channels(model, masks)`` is a smaller copy of an ``MLP``,
``SmallCNN`` or ``VGG16`` with the dead output units / channels physically removed (rows of their
layer, the matching BatchNorm entries and the matching input columns / channels of the next layer).
The slimmed model equals the masked model in eval mode (BatchNorm running statistics). The rule is
below, at ``slim_channels``; ``SlimReport`` is what it kept and removed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import MLP, SmallCNN, VGG16
from .masking import apply_masks, check_masks, param_count

__all__ = ["slim_channels", "SlimReport"]


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
    masks = check_masks(model, masks)
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
