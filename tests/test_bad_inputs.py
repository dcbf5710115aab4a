"""Bad inputs and corrupt files across the library, as one table: each row names the call, the
exception type and a regex its message must match. Every object a row hands to ``watch`` must be
exactly as it was after the rejected call (nothing half-applied; for an output folder: no file
added, removed or changed, the lock released).

The table covers 90 bad inputs (``test_the_table_says_how_many_inputs_it_covers`` keeps this
number true)."""
import contextlib
import copy
import errno
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from twinsparse.accel import checkpoint as ack
from twinsparse.accel import densities as D
from twinsparse.accel import merge as MG
from twinsparse.accel import metrics as MET
from twinsparse.accel.export import (MaskBankError, UnknownMaskSetError, export_semi_structured, load_mask_bank,
                          save_mask_bank, slim_channels)
from twinsparse.accel.masks import channel_mask, magnitude_mask, nm_mask
from twinsparse.accel.methods import RigL, Static
from twinsparse.accel.models import MLP, ResNet18, build_model
from twinsparse.accel.sparsifier import Sparsifier
from twinsparse.accel.rundir import RunDirectoryError, RunLock
from twinsparse.accel.runner import run_experiment, train_one
from twinsparse.reference import checkpoint as rck
from twinsparse.reference import safeio
from twinsparse.reference.config import ConfigError, RunConfig, run_to_dict
from twinsparse.reference.experiment_file import ExperimentConfig, load_experiment, parse_experiment
from twinsparse.reference.schedules import lr_at
from twinsparse.reference.train import Diverged

CKPT_CFG = dict(hidden=[8], epochs=1, batch_size=50, train_budget=50, method="static", density=0.5)


# ----------------------------------------------------------------------------- helpers
def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP((12, 8, 4))


def _sp(method="static", density=0.5, model=None, **kw):
    model = _mlp() if model is None else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if method == "rigl":
        method = RigL(delta_t=1, t_end=10)
    return Sparsifier(model, opt, density=density, method=method, **kw)


def _good_masks(sp):
    return {n: m.clone() for n, m in sp.masks.items()}


def _backward(sp, nan=False):
    x, y = torch.randn(6, 12), torch.randint(0, 4, (6,))
    sp.optimizer.zero_grad()
    F.cross_entropy(sp.model(x), y).backward()
    if nan:
        sp.params["fc.1.weight"].grad[0, 0] = float("nan")


def _accel_ckpt(tmp, cfg=None):
    """A checkpoint holding the config of ``cfg`` (what resume checks first) and a small model."""
    cfg = cfg or RunConfig(**CKPT_CFG).validate()
    path = str(tmp / "run.ckpt")
    ack.save(path, {"config": run_to_dict(cfg), "epoch": 1, "model": _mlp().state_dict()})
    return path


def _truncate(path, frac=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * frac)])
    return path


def _bank(tmp):
    m = _mlp()                                   # also seeds the random masks below
    path = str(tmp / "bank.npz")
    save_mask_bank(path, {"unstructured/0.5": {"fc.0.weight": torch.rand(8, 12) < 0.5,
                                               "fc.1.weight": torch.rand(4, 8) < 0.5},
                          "nm/2:4": {"fc.0.weight": nm_mask(m.fc[0].weight.detach(), 2, 4)}})
    return path


def _snapshot(obj):
    if isinstance(obj, Sparsifier):
        return {"masks": _snapshot(obj.masks), "model": _snapshot(obj.model), "step": obj.step_count,
                "opt": copy.deepcopy(obj.optimizer.state_dict()), "state": copy.deepcopy(obj.method_state)}
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach().clone() for k, v in obj.state_dict().items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, str):          # a file path: its bytes
        return Path(obj).read_bytes()
    if isinstance(obj, Path):         # a folder: every file and subfolder below it (the lock file too)
        return {str(p.relative_to(obj)): (p.read_bytes() if p.is_file() else "<dir>") for p in sorted(obj.rglob("*"))}
    if obj is None or isinstance(obj, (int, float)):
        return obj
    raise TypeError(type(obj))


def _equal(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return False
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())     # bitwise-equal values, NaN == NaN
    return a == b


class Watch:
    def __init__(self):
        self.items = []

    def __call__(self, obj):
        self.items.append((obj, _snapshot(obj)))
        return obj

    def unchanged(self):
        return all(_equal(snap, _snapshot(obj)) for obj, snap in self.items)


# ----------------------------------------------------------------------------- the cases
def _set_masks_wrong_shape(tmp, watch):
    sp = watch(_sp())
    masks = _good_masks(sp)
    masks["fc.0.weight"] = torch.ones(8, 11, dtype=torch.bool)
    sp.set_masks(masks)


def _set_masks_wrong_name(tmp, watch):
    sp = watch(_sp())
    masks = _good_masks(sp)
    masks["fc.9.weight"] = masks.pop("fc.1.weight")
    sp.set_masks(masks)


def _set_masks_non_boolean(tmp, watch):
    sp = watch(_sp())
    masks = _good_masks(sp)
    masks["fc.1.weight"] = torch.full((4, 8), 0.5)
    sp.set_masks(masks)


def _set_masks_not_tensor(tmp, watch):
    sp = watch(_sp())
    masks = _good_masks(sp)
    masks["fc.1.weight"] = masks["fc.1.weight"].tolist()
    sp.set_masks(masks)


def _nan_gradient(tmp, watch):
    sp = _sp()
    _backward(sp)
    sp.step()                # a good first step creates the optimizer state
    _backward(sp, nan=True)
    sp.step()                # skipped on the device (tests/test_sparsifier.py: it changes nothing) ...
    watch(sp)
    sp.check_nonfinite()     # ... and the error comes at the next sync point


def _step_without_backward(tmp, watch):
    sp = watch(_sp(method=Static(init="snip")))   # SNIP builds its masks from the first gradients
    sp.step()


def _step_after_squash(tmp, watch):
    sp = _sp()
    sp.squash()
    _backward(sp)
    watch(sp.model)
    sp.step()


def _state_of_other_method(tmp, watch):
    state = _sp().state_dict()
    sp = watch(_sp("rigl"))
    sp.load_state_dict(state)


def _state_garbage(tmp, watch):
    sp = watch(_sp())
    sp.load_state_dict({"masks": {}})


def _optimizer_missing_params(tmp, watch):
    model = watch(_mlp())
    Sparsifier(model, torch.optim.SGD(model.fc[0].parameters(), lr=0.1), density=0.5, method="static")


def _sparsifier(density=0.5, **kw):
    def call(tmp, watch):
        model = watch(_mlp())
        Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), density=density, **kw)
    return call


def _resume_other_run(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.train import train_accel
    path = watch(_accel_ckpt(tmp))
    cfg = RunConfig(**{**CKPT_CFG, "hidden": [16]}).validate()     # another model: hidden width 16
    train_accel(cfg, load_split(cfg), checkpoint=path, resume=True)


def _resume_truncated(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.train import train_accel
    path = watch(_truncate(_accel_ckpt(tmp)))
    cfg = RunConfig(**{**CKPT_CFG, "epochs": 2}).validate()
    train_accel(cfg, load_split(cfg), checkpoint=path, resume=True)


def _torch_file_not_checkpoint(tmp, watch):
    path = str(tmp / "x.ckpt")
    torch.save({"weights": torch.zeros(2)}, path)
    ack.load(watch(path))


def _accel_ckpt_as_reference(tmp, watch):
    rck.load_reference(watch(_accel_ckpt(tmp)))


def _cli_export_truncated(tmp, watch):
    from twinsparse.accel.export import export_checkpoint
    export_checkpoint(watch(_truncate(_accel_ckpt(tmp), 0.3)), "slim", str(tmp / "out.pt"))


PROC_CFG = dict(CKPT_CFG, procedure="imp", method="dense", density=1.0, imp_iterations=1, imp_rewind_epoch=0)


def _proc_ckpt(tmp):
    """A finished IMP procedure's stage checkpoint."""
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.backends import run_procedure
    cfg = RunConfig(**PROC_CFG).validate()
    path = str(tmp / "proc.ckpt")
    run_procedure(cfg, load_split(cfg), checkpoint=path)
    return path


def _procedure_from_run_ckpt(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.backends import run_procedure
    path = watch(_accel_ckpt(tmp))
    cfg = RunConfig(**PROC_CFG).validate()
    run_procedure(cfg, load_split(cfg), checkpoint=path, resume=True)


def _run_from_procedure_ckpt(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.train import train_accel
    path = watch(_proc_ckpt(tmp))
    cfg = RunConfig(**CKPT_CFG).validate()
    train_accel(cfg, load_split(cfg), checkpoint=path, resume=True)


def _procedure_other_config(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.backends import run_procedure
    path = watch(_proc_ckpt(tmp))
    cfg = RunConfig(**{**PROC_CFG, "imp_rate": 0.5}).validate()
    run_procedure(cfg, load_split(cfg), checkpoint=path, resume=True)


def _export_procedure_ckpt(tmp, watch):
    from twinsparse.accel.export import export_checkpoint
    export_checkpoint(watch(_proc_ckpt(tmp)), "dense", str(tmp / "out.pt"))


def _bank_unknown_name(tmp, watch):
    model = watch(_mlp())
    load_mask_bank(_bank(tmp)).apply(model, "channel/0.1")


def _bank_truncated(tmp, watch):
    load_mask_bank(watch(_truncate(_bank(tmp))))


def _bank_flipped_bytes(tmp, watch):
    path = _bank(tmp)
    data = bytearray(Path(path).read_bytes())
    data[60:70] = bytes(10)                      # inside the first member's compressed data
    Path(path).write_bytes(bytes(data))
    load_mask_bank(watch(path))


def _bank_not_a_bank(tmp, watch):
    path = str(tmp / "ckpt.pt")
    torch.save({"x": 1}, path)                   # a zip archive too, but no mask bank header
    load_mask_bank(watch(path))


def _bank_wrong_shape(tmp, watch):
    model = watch(MLP((12, 8, 5)))               # fc.0 fits, fc.1 is (5, 8): nothing is applied
    load_mask_bank(_bank(tmp)).apply(model, "unstructured/0.5")


def _bank_bad_values(tmp, watch):
    save_mask_bank(str(tmp / "b.npz"), {"a": {"fc.0.weight": torch.full((8, 12), 2.0)}})


def _slim_wrong_mask(tmp, watch):
    model = watch(_mlp())
    slim_channels(model, {"fc.0.weight": torch.ones(12, 8, dtype=torch.bool)})


def _slim_resnet(tmp, watch):
    slim_channels(watch(ResNet18(width=2)))


def _semi_structured_here(tmp, watch):
    export_semi_structured(watch(_mlp()))


# ---- the output folder of the runner (a finished tiny experiment, then a rejected second call)
RUN = dict(hidden=[8], epochs=2, batch_size=50, train_budget=100, test_per_class=20, method="static", density=0.5)
IMP = dict(procedure="imp", method="dense", density=1.0, imp_iterations=1, imp_rewind_epoch=1)


def _exp(out, backend="accel", label="a", **kw):
    return ExperimentConfig(name="t", output=str(out), seeds=[0],
                            runs=[RunConfig(label=label, backend=backend, **{**RUN, **kw}).validate()])


def _experiment(tmp, checkpoint=True, **kw):
    """A finished experiment in ``tmp/out``: (folder, log path, checkpoint path)."""
    out = tmp / "out"
    run_experiment(_exp(out, **kw), output=str(out), progress=False, checkpoint=checkpoint)
    return out, str(out / "a_seed0.jsonl"), str(out / "a_seed0.ckpt")


def _again(out, resume=True, **kw):
    run_experiment(_exp(out, **{k: v for k, v in kw.items() if k != "checkpoint"}), output=str(out), progress=False,
                   checkpoint=kw.get("checkpoint", True), resume=resume)


def _resume_damaged(**kw):
    def call(tmp, watch):
        out, _, ck = _experiment(tmp, **kw)
        _truncate(ck)
        watch(out)
        _again(out, **kw)
    return call


def _resume_other_config(tmp, watch):
    out = watch(_experiment(tmp)[0])
    _again(out, lr=0.1)


def _setup_error_after_a_run(tmp, watch):
    out = watch(_experiment(tmp)[0])
    _again(out, resume=False, exclude=["nosuchlayer"])


def _fresh_run_over_an_earlier_one(tmp, watch):
    out = watch(_experiment(tmp)[0])
    _again(out, resume=False)


def _resume_log_of_another_config(tmp, watch):
    out = watch(_experiment(tmp, checkpoint=False)[0])
    _again(out, checkpoint=False, lr=0.1)


def _train_one_over_an_earlier_log(tmp, watch):
    out, log, _ = _experiment(tmp)
    watch(out)
    train_one(RunConfig(label="a", **RUN).validate(), log, progress=False)


def _second_writer(tmp, watch):
    out = watch(_experiment(tmp)[0])
    with RunLock(str(out)):
        _again(out)


@contextlib.contextmanager
def _failing_writes(name, err):
    """Writes to the file ``name`` fail with ``err`` (half of the bytes reach the file first)."""
    real = safeio.write_all

    def write(fd, data, path):
        if Path(path).name == name:
            real(fd, bytes(data)[: len(data) // 2], path)
            raise OSError(err, errno.errorcode[err] if err != errno.ENOSPC else "No space left on device")
        real(fd, data, path)
    safeio.write_all = write
    try:
        yield
    finally:
        safeio.write_all = real


def _results_on_a_full_disk(tmp, watch):
    out = watch(_experiment(tmp)[0])
    with _failing_writes("results.json", errno.ENOSPC):
        _again(out)


def _flipped_weight_bytes(backend):
    def call(tmp, watch):
        out, _, ck = _experiment(tmp, backend=backend, epochs=3)
        w = (ack.load(ck)["model"]["fc.0.weight"].numpy() if backend == "accel"
             else rck.load_reference(ck)["params"]["fc.0.weight"])
        data = bytearray(Path(ck).read_bytes())
        at = data.find(w.tobytes()[:64])
        data[at + 9] ^= 0x10                     # one flipped bit inside the weight tensor's bytes
        Path(ck).write_bytes(bytes(data))
        watch(out)
        _again(out, backend=backend, epochs=3)
    return call


def _nonfinite_checkpoint(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.accel.train import train_accel
    cfg = RunConfig(**CKPT_CFG).validate()
    sd = _mlp().state_dict()
    sd["fc.1.weight"][0, 0] = float("nan")
    path = str(tmp / "run.ckpt")
    ack.save(path, {"config": run_to_dict(cfg), "epoch": 1, "model": sd})
    watch(path)
    train_accel(cfg.replace(epochs=2), load_split(cfg), checkpoint=path, resume=True)


def _runner_rejects(**kw):
    """A fresh experiment with a bad setting: rejected before the output folder exists."""
    def call(tmp, watch):
        watch(tmp)
        run_experiment(_exp(tmp / "out", **kw), output=str(tmp / "out"), progress=False)
    return call


def _reference_tiny_density(tmp, watch):
    from twinsparse.accel.runner import load_split
    from twinsparse.reference.train import train_reference
    cfg = RunConfig(backend="reference", **{**CKPT_CFG, "density": 1e-9}).validate()
    train_reference(cfg, load_split(cfg))


def _diverged_with_skip(tmp, watch):
    run_experiment(_exp(tmp / "out", nonfinite="skip", lr=1e6, method="dense", density=1.0), output=str(tmp / "out"),
                   progress=False)


def _binary_config(tmp, watch):
    path = tmp / "weights.toml"
    path.write_bytes(bytes(range(256)))
    load_experiment(watch(str(path)))


def _weights(**kw):
    return torch.randn(8, 12, **kw)


def _nan_weights():
    w = _weights()
    w[2, 3] = float("nan")
    return w


CASES = [
    # ---- masks into the Sparsifier (weights, masks and optimizer state stay as they were)
    ("set_masks-wrong-shape", _set_masks_wrong_shape, ValueError,
     r"mask 'fc.0.weight' has shape \(8, 11\) but the weight has shape \(8, 12\)"),
    ("set_masks-wrong-name", _set_masks_wrong_name, ValueError,
     r"masks must name exactly the prunable weights \['fc.0.weight', 'fc.1.weight'\].*fc.9.weight"),
    ("set_masks-non-boolean", _set_masks_non_boolean, ValueError, r"mask 'fc.1.weight' must be boolean or 0/1"),
    ("set_masks-not-a-tensor", _set_masks_not_tensor, TypeError, r"mask 'fc.1.weight' must be a torch.Tensor, got list"),
    ("step-nan-gradient", _nan_gradient, ValueError, r"gradients at iteration 2 .*non-finite"),
    ("step-without-backward", _step_without_backward, RuntimeError, r"no gradient on any parameter.*call loss.backward\(\) before step\(\)"),
    ("step-after-squash", _step_after_squash, RuntimeError, r"squashed"),
    ("load_state_dict-other-method", _state_of_other_method, ValueError, r"state is for method 'static'.*'rigl'"),
    ("load_state_dict-garbage", _state_garbage, ValueError, r"not a Sparsifier state dict"),
    ("optimizer-misses-weights", _optimizer_missing_params, ValueError,
     r"the optimizer does not hold the prunable weight\(s\) \['fc.1.weight'\]"),
    # ---- densities, method names, seeds, options
    ("density-0", _sparsifier(0.0, method="static"), ValueError, r"density=0.0 is outside the allowed range \(0, 1\]"),
    ("density-1.5", _sparsifier(1.5, method="static"), ValueError, r"density=1.5 is outside the allowed range"),
    ("density-nan", _sparsifier(float("nan"), method="static"), ValueError, r"density=nan is outside the allowed range"),
    ("density-string", _sparsifier("half", method="static"), TypeError, r"density must be a number in \[0, 1\]"),
    ("density-dict-wrong-names", _sparsifier({"fc.0.weight": 0.5}, method="static"), ValueError,
     r"density dict must name exactly.*missing: \['fc.1.weight'\]"),
    ("density-for-dense", _sparsifier(0.5, method="dense"), ValueError, r"method 'dense' keeps every weight"),
    ("unknown-method", _sparsifier(method="rigel"), ValueError, r"unknown method 'rigel'; available methods: \["),
    ("seed-negative", _sparsifier(method="static", seed=-1), ValueError, r"seed=-1 must be an integer >= 0"),
    ("nonfinite-policy", _sparsifier(method="static", nonfinite="ignore"), ValueError,
     r"nonfinite='ignore' is not allowed; choose one of \['raise', 'skip'\]"),
    ("exclude-matches-nothing", _sparsifier(method="static", exclude=["conv*"]), ValueError,
     r"exclude pattern 'conv\*' matches no prunable weight"),
    ("erk-unknown-kind", lambda t, w: D.from_config("erx", 0.1), ValueError, r"unknown density kind 'erx'; allowed"),
    ("erk-unknown-option", lambda t, w: D.from_config("erk", 0.1, power=2), TypeError, r"unknown option\(s\) \['power'\]"),
    # ---- run configs and TOML
    ("config-density-0", lambda t, w: RunConfig(method="static", density=0.0).validate(), ConfigError,
     r"density=0.0 is outside the allowed range \(0.0, 1.0\]"),
    ("config-density-nan", lambda t, w: RunConfig(method="static", density=math.nan).validate(), ConfigError,
     r"density=nan must be a finite number"),
    ("config-unknown-method", lambda t, w: RunConfig(method="rigel").validate(), ConfigError,
     r"method='rigel' is not allowed; choose one of \['dense', 'static'"),
    ("config-seed-negative", lambda t, w: RunConfig(seed=-1).validate(), ConfigError, r"seed=-1 must be an integer >= 0"),
    ("config-dense-with-density", lambda t, w: RunConfig(density=0.5).validate(), ConfigError,
     r"density=0.5 with method='dense'"),
    ("toml-unknown-key", lambda t, w: parse_experiment('[[run]]\nmethod="static"\ndensty=0.1\n', "x.toml"), ConfigError,
     r"unknown key 'densty' in \[\[run\]\] #1 of x.toml; allowed keys: \["),
    ("toml-wrong-type", lambda t, w: parse_experiment('[[run]]\nmethod="static"\ndensity="0.1"\n', "x.toml"),
     ConfigError, r"density='0.1' in \[\[run\]\] #1 of x.toml must be a number"),
    ("toml-syntax", lambda t, w: parse_experiment('[[run]\nmethod=', "x.toml"), ConfigError, r"x.toml is not valid TOML"),
    ("toml-unknown-section", lambda t, w: parse_experiment('[defualts]\nepochs=1\n', "x.toml"), ConfigError,
     r"unknown section\(s\) \['defualts'\]"),
    # ---- mask operators
    ("nm-n-greater-than-m", lambda t, w: nm_mask(w(_weights()), 5, 4), ValueError,
     r"N:M keep count n=5 is not allowed with m=4; need 0 <= n <= m"),
    ("nm-not-dividing", lambda t, w: nm_mask(w(torch.randn(4, 6)), 2, 4), ValueError,
     r"N:M groups of m=4 do not divide the layer of shape \(4, 6\)"),
    ("nm-non-integer", lambda t, w: nm_mask(w(_weights()), 2.0, 4), TypeError, r"N:M n must be an integer"),
    ("magnitude-nan-weights", lambda t, w: magnitude_mask(w(_nan_weights()), 0.5), ValueError, r"non-finite"),
    ("magnitude-density-1.5", lambda t, w: magnitude_mask(w(_weights()), 1.5), ValueError,
     r"density=1.5 is outside the allowed range \[0, 1\]"),
    ("channel-1d-weight", lambda t, w: channel_mask(w(torch.randn(8)), 0.5), ValueError,
     r"channel pruning needs a weight with an output dimension"),
    # ---- checkpoints (the file on disk is untouched)
    ("checkpoint-truncated-resume", _resume_truncated, rck.CheckpointError, r"unreadable or truncated"),
    ("checkpoint-from-another-model", _resume_other_run, rck.CheckpointError,
     r"is from another run \(hidden: \[8\] in the checkpoint vs \[16\] now"),
    ("checkpoint-not-twinsparse", _torch_file_not_checkpoint, rck.CheckpointError, r"not a twinsparse accel checkpoint"),
    ("checkpoint-accel-as-reference", _accel_ckpt_as_reference, rck.CheckpointError,
     r"not a twinsparse reference checkpoint \(it is a torch zip file"),
    ("export-truncated-checkpoint", _cli_export_truncated, rck.CheckpointError, r"unreadable or truncated"),
    ("procedure-resume-from-training-checkpoint", _procedure_from_run_ckpt, rck.CheckpointError,
     r"is the checkpoint of a single training run, not of a multi-phase procedure \(procedure='imp'\)"),
    ("training-resume-from-procedure-checkpoint", _run_from_procedure_ckpt, rck.CheckpointError,
     r"was written by procedure='imp', this run is procedure='train'"),
    ("procedure-checkpoint-other-config", _procedure_other_config, rck.CheckpointError,
     r"is from another run \(imp_rate: 0.2 in the checkpoint vs 0.5 now\)"),
    ("export-procedure-checkpoint", _export_procedure_ckpt, rck.CheckpointError,
     r"is the stage checkpoint of procedure 'imp'; export takes the checkpoint of a single training run"),
    # ---- mask bank
    ("maskbank-unknown-name", _bank_unknown_name, UnknownMaskSetError,
     r"no mask set 'channel/0.1'; available: \['unstructured/0.5', 'nm/2:4'\]"),
    ("maskbank-truncated", _bank_truncated, MaskBankError, r"truncated or corrupt"),
    ("maskbank-corrupt-bytes", _bank_flipped_bytes, MaskBankError, r"truncated or corrupt"),
    ("maskbank-not-a-bank", _bank_not_a_bank, MaskBankError, r"is not a mask bank file"),
    ("maskbank-shape-mismatch", _bank_wrong_shape, MaskBankError,
     r"'fc.1.weight' has shape \(4, 8\) in the bank but \(5, 8\) in the model"),
    ("maskbank-non-boolean", _bank_bad_values, ValueError, r"must be boolean or 0/1 valued"),
    # ---- export
    ("slim-mask-wrong-shape", _slim_wrong_mask, ValueError,
     r"mask 'fc.0.weight' has shape \(12, 8\) but the parameter has shape \(8, 12\)"),
    ("slim-unsupported-model", _slim_resnet, TypeError, r"slim_channels supports .*got ResNet18"),
    ("semi-structured-here", _semi_structured_here, RuntimeError,
     r"2:4 semi-structured export (is not possible here: (no CUDA device|device cpu is not a CUDA device)|needs float16)"),
    # ---- models, merges, metrics, schedules
    ("model-unknown-name", lambda t, w: build_model("resnet51"), ValueError, r"unknown model 'resnet51'; allowed names"),
    ("mlp-wrong-input-width", lambda t, w: _mlp()(torch.randn(3, 10)), ValueError,
     r"input has shape \(3, 10\) \(10 features\) but the MLP expects 12"),
    ("interpolate-alpha-1.5", lambda t, w: MG.interpolate(w(_mlp().state_dict()), _mlp(1).state_dict(), 1.5),
     ValueError, r"alpha=1.5 is outside the allowed range \[0, 1\]"),
    ("accuracy-label-out-of-range", lambda t, w: MET.accuracy(torch.randn(3, 4), torch.tensor([0, 1, 7])), ValueError,
     r"labels y must be in \[0, 3\]"),
    ("lr-step-outside", lambda t, w: lr_at(11, 10, 0.1, "cosine"), ValueError, r"step=11 is outside \[0, total_steps=10\]"),
    ("lr-unknown-schedule", lambda t, w: lr_at(1, 10, 0.1, "cosin"), ValueError, r"schedule='cosin' is not allowed"),
    # ---- the output folder (issue "nothing lost, nothing silent"): a rejected call leaves it exactly as it was
    ("resume-damaged-checkpoint-keeps-the-log", _resume_damaged(), rck.CheckpointError, r"unreadable or truncated"),
    ("resume-damaged-reference-checkpoint-keeps-the-log", _resume_damaged(backend="reference"), rck.CheckpointError,
     r"unreadable or truncated"),
    ("resume-damaged-imp-checkpoint-keeps-the-log", _resume_damaged(**IMP), rck.CheckpointError,
     r"unreadable or truncated"),
    ("resume-with-another-config-keeps-the-log", _resume_other_config, rck.CheckpointError,
     r"a_seed0.ckpt is from another run \(lr: 0.05 in the checkpoint vs 0.1 now\)"),
    ("setup-error-after-a-run-keeps-the-log", _setup_error_after_a_run, ValueError,
     r"exclude pattern 'nosuchlayer' matches no prunable weight"),
    ("fresh-run-over-an-earlier-run", _fresh_run_over_an_earlier_one, RunDirectoryError,
     r"a_seed0.jsonl already exists \(and 2 more file\(s\) of that run\): it belongs to an earlier run. Use --resume"),
    ("resume-log-of-another-config", _resume_log_of_another_config, RunDirectoryError,
     r"log .*a_seed0.jsonl is from another run \(lr: 0.05 in the log vs 0.1 now\)"),
    ("train_one-over-an-earlier-log", _train_one_over_an_earlier_log, RunDirectoryError, r"a_seed0.jsonl already exists"),
    ("second-writer-in-one-folder", _second_writer, RunDirectoryError,
     r"output folder .*out is in use by another twinsparse process \(pid \d+ on "),
    ("results-json-on-a-full-disk", _results_on_a_full_disk, OSError,
     r"\[Errno 28\] writing .*out/results.json failed: No space left on device; the previous file is unchanged"),
    ("checkpoint-flipped-weight-bit", _flipped_weight_bytes("accel"), rck.CheckpointError,
     r"a_seed0.ckpt is corrupt: entry 'model/fc.0.weight' does not match the checksum"),
    ("reference-checkpoint-flipped-weight-bit", _flipped_weight_bytes("reference"), rck.CheckpointError,
     r"a_seed0.ckpt is corrupt: entry 'params/fc.0.weight' does not match the checksum"),
    ("checkpoint-nonfinite-weights", _nonfinite_checkpoint, rck.CheckpointError,
     r"holds 1 non-finite value\(s\) \(NaN or inf\) in entry 'model/fc.1.weight'"),
    # ---- zero densities: one rule at every door
    ("erk-density-0", lambda t, w: D.erk(0.0), ValueError, r"density=0.0 keeps no weight in any layer"),
    ("density-override-0", _sparsifier(D.erk(0.5, overrides={"fc.1.weight": 0.0}), method="static"), ValueError,
     r"would keep 0 weights in 1 of 2 layer\(s\): 'fc.1.weight' \(density 0 of 32 weights"),
    ("density-1e-9-sparsifier", _sparsifier(1e-9, method="static"), ValueError, r"would keep 0 weights in 2 of 2 layer"),
    ("density-1e-9-run", _runner_rejects(density=1e-9), ValueError,
     r"density erk\(1e-09\) would keep 0 weights in 2 of 2 layer\(s\)"),
    ("density-1e-9-reference", _reference_tiny_density, ValueError, r"density=1e-09 \(erk\) would keep 0 weights"),
    # ---- run labels and experiment names name files
    ("label-escapes-the-output", lambda t, w: RunConfig(label="../escaped").validate(), ConfigError,
     r"label='../escaped' is not allowed: it names files"),
    ("label-with-a-slash-rejected-before-any-run", lambda t, w: parse_experiment(
        '[[run]]\nlabel="fine"\n[[run]]\nlabel="a/b"\n', "x.toml"), ConfigError,
     r"\[\[run\]\] #2 \(a/b\) of x.toml: label='a/b' is not allowed"),
    ("label-empty", lambda t, w: RunConfig(label="").validate(), ConfigError, r"label='' is not allowed"),
    ("experiment-name-not-a-string", lambda t, w: parse_experiment('[experiment]\nname = 5\n[[run]]\n', "x.toml"),
     ConfigError, r"name=5 in \[experiment\] of x.toml must be a string"),
    # ---- accepted silently before
    ("delta_t-beyond-the-run", _runner_rejects(method="rigl", density=0.2, delta_t=1000), ConfigError,
     r"delta_t=1000 leaves no mask update in this run: method 'rigl'"),
    ("batch-larger-than-the-training-set", lambda t, w: RunConfig(batch_size=101, train_budget=100).validate(),
     ConfigError, r"batch_size=101 is larger than the training set \(100 samples = train_budget\)"),
    ("sparsifier-density-string", _sparsifier("0.5", method="static"), TypeError,
     r"density must be a number in \[0, 1\], got str '0.5'"),
    ("erk-density-string", lambda t, w: D.erk("0.5"), TypeError, r"density must be a number in \[0, 1\], got str"),
    ("nonfinite-skip-run-diverges", _diverged_with_skip, Diverged,
     r"run 'a' \(seed 0\) diverged in epoch \d+: .* hold NaN or inf after iteration \d+; \d+ iteration\(s\) had been "
     r"skipped for non-finite gradients \(nonfinite='skip'\)"),
    ("binary-config-file", _binary_config, ConfigError, r"weights.toml is not a TOML text file: byte 128"),
    ("resume-and-overwrite", lambda t, w: run_experiment(_exp(t / "o"), output=str(t / "o"), resume=True,
                                                          overwrite=True), ValueError, r"choose one"),
]


@pytest.mark.parametrize("case_id,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_and_changes_nothing(case_id, call, exc, match, tmp_path):
    watch = Watch()
    with pytest.raises(exc, match=match):
        call(tmp_path, watch)
    assert watch.unchanged(), f"{case_id}: a rejected call modified its inputs"


def test_the_table_says_how_many_inputs_it_covers():
    stated = re.search(r"The table covers (\d+) bad inputs", __doc__)
    assert stated and int(stated.group(1)) == len(CASES), f"the docstring says {stated and stated.group(1)}, " \
                                                          f"the table holds {len(CASES)} rows"


def test_the_table_covers_the_brief(tmp_path):
    ids = {c[0] for c in CASES}
    assert len(ids) == len(CASES)
    for must in ("checkpoint-truncated-resume", "checkpoint-from-another-model", "set_masks-wrong-shape",
                 "set_masks-wrong-name", "set_masks-non-boolean", "density-0", "density-1.5", "density-nan",
                 "unknown-method", "toml-unknown-key", "nm-n-greater-than-m", "seed-negative",
                 "maskbank-unknown-name", "maskbank-truncated"):
        assert must in ids
    watch = Watch()                     # and the watcher does notice a change
    model, path = watch(_mlp()), watch(_accel_ckpt(tmp_path))
    assert watch.unchanged()
    with torch.no_grad():
        model.fc[0].weight[0, 0] += 1
    assert not watch.unchanged()
    watch = Watch()
    watch(path)
    _truncate(path, 0.9)
    assert not watch.unchanged()
