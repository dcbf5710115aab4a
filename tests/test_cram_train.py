"""CrAM training ([TH] Alg. 2; docs/methods.md §7.1, §7.2, §7.5): the accel optimizer wrapper, the reference step,
the 'cram' procedure from the CLI, and bad input."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twinsparse.accel import cram_ops as AC
from twinsparse.accel.cli import main
from twinsparse.accel.cram_optimizer import CrAM, frozen_bn_stats
from twinsparse.accel.models import mlp_from_reference
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.cram_ops import sample_compression, topk_compression
from twinsparse.reference.cram_options import parse_compression, parse_compressions, parse_eval_patterns
from twinsparse.reference.cram_procedure import cram_step
from twinsparse.reference.nn import init_mlp, mlp_forward



def _model(bn=True, seed=0):
    params, buffers = init_mlp((20, 16, 12, 4), batchnorm=bn, seed=seed)
    return mlp_from_reference(params, buffers)


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(n, 20))), torch.from_numpy(rng.integers(0, 4, n))


class Capture(torch.optim.SGD):
    """SGD with lr 0 that records the gradients it is asked to apply."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step()


def _closure(model, x, y, log=None):
    def closure():
        if log is not None:
            log.append(model.fc[0].weight.detach().clone())
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def _grads_at(model, state, x, y):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.train()
    loss = F.cross_entropy(m(x), y)
    return dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(loss, list(m.parameters()))))


# ----------------------------------------------------------------------------- BN statistics

@pytest.mark.parametrize("mode,comps", [("cram", ["topk:0.7"]), ("sam", []), ("csam", ["topk:0.5"]),
                                        ("cram", ["nm:2:4", "quant:4"])])
@pytest.mark.parametrize("bn_momentum", [0.1, None])
def test_perturbed_pass_leaves_bn_running_stats_untouched(mode, comps, bn_momentum):
    model = _model()
    for m in model.bn:
        m.momentum = bn_momentum
    x, y = _batch()
    plain = copy.deepcopy(model)
    first_point = plain
    if mode == "csam":  # C-SAM's first (tracked) pass is at C(theta)
        names = ["fc.0.weight", "fc.1.weight", "fc.2.weight"]
        out, _ = AC.compress({n: p.detach() for n, p in plain.named_parameters() if n in names}, topk_compression(0.5))
        with torch.no_grad():
            for n, p in plain.named_parameters():
                if n in out:
                    p.copy_(out[n])
    plain.train()
    with torch.no_grad():
        first_point(x)                                   # one train-mode forward at the first point
    opt = CrAM(model, Capture(model.parameters()), comps, rho=0.5, mode=mode)
    opt.step(_closure(model, x, y))
    want = dict(plain.named_buffers())
    for n, b in model.named_buffers():
        assert torch.equal(b, want[n]), n                # bit-identical: the perturbed pass changed nothing
    assert all(int(m.num_batches_tracked) == 1 for m in model.bn)
    assert all(m.track_running_stats for m in model.bn)  # the switch is restored


def test_frozen_bn_stats_restores_the_flags_on_error():
    model = _model()
    with pytest.raises(RuntimeError):
        with frozen_bn_stats(model.bn):
            assert not any(m.track_running_stats for m in model.bn)
            raise RuntimeError("boom")
    assert all(m.track_running_stats for m in model.bn)


def test_reference_step_returns_the_buffers_of_the_first_forward_only():
    params, buffers = init_mlp((20, 16, 12, 4), batchnorm=True, seed=1)
    x, y = (a.numpy() for a in _batch(1))
    snapshot = {k: v.copy() for k, v in {**params, **buffers}.items()}
    new_p, new_b, bufs, info = cram_step(params, buffers, {}, x, y, lr=0.1, momentum=0.9, compressions=["topk:0.7"],
                                         rho=0.5, t=1)
    _, _, want = mlp_forward(params, buffers, x, train=True)
    for k in want:
        assert np.array_equal(new_b[k], want[k]), k
    assert all(np.array_equal(v, {**params, **buffers}[k]) for k, v in snapshot.items())  # inputs untouched
    assert info["compression"] == topk_compression(0.7) and info["refreshed"]
    assert set(bufs) == set(params)


# ----------------------------------------------------------------------------- the update

@pytest.mark.parametrize("plus,sparse_grad", [(True, True), (True, False), (False, True), (False, False)])
def test_update_is_masked_gtilde_plus_g(plus, sparse_grad):
    model = _model(seed=2)
    x, y = _batch(2)
    theta = copy.deepcopy(model.state_dict())
    C, rho = topk_compression(0.6), 0.3
    opt = CrAM(model, Capture(model.parameters()), [C], rho=rho, plus=plus, sparse_grad=sparse_grad)
    opt.step(_closure(model, x, y))
    names = [n for n, _ in model.named_parameters()]
    params = {n: theta[n] for n in names}
    g = _grads_at(model, theta, x, y)
    point, masks = AC.cram_point(params, g, rho, C, prunable=["fc.0.weight", "fc.1.weight", "fc.2.weight"])
    g_t = _grads_at(model, {**theta, **point}, x, y)
    for i, n in enumerate(names):
        want = g_t[n] * masks[n] if (sparse_grad and n in masks) else g_t[n]
        want = want + g[n] if plus else want
        torch.testing.assert_close(opt.base.seen[0][i], want, rtol=1e-12, atol=1e-14, msg=n)
    for n, p in model.named_parameters():      # theta restored (the base optimizer has lr 0)
        assert torch.equal(p.detach(), theta[n]), n


def test_sparse_grad_zeroes_the_gradient_off_the_mask_and_leaves_other_tensors_dense():
    model = _model(bn=False, seed=3)
    x, y = _batch(3)
    opt = CrAM(model, Capture(model.parameters()), ["topk:0.8"], rho=0.2, plus=False, sparse_grad=True)
    opt.step(_closure(model, x, y))
    masks = opt.last["masks"]
    seen = dict(zip([n for n, _ in model.named_parameters()], opt.base.seen[0]))
    for n, m in masks.items():
        assert torch.all(seen[n][~m] == 0), n
        assert torch.count_nonzero(seen[n][m]) > 0, n
    assert torch.count_nonzero(seen["fc.0.bias"]) > 0           # biases pass through C and the masking
    model2 = _model(bn=False, seed=3)                             # the same start, dense intermediate gradients
    dense = CrAM(model2, Capture(model2.parameters()), ["topk:0.8"], rho=0.2, plus=False, sparse_grad=False)
    dense.step(_closure(model2, x, y))
    g0 = dense.base.seen[0][0]
    assert torch.count_nonzero(g0[~masks["fc.0.weight"]]) > 0     # without SG the pruned coordinates get gradient


def test_topk_plus_with_rho_zero_masks_at_theta_itself():
    model = _model(bn=False, seed=4)
    x, y = _batch(4)
    w = model.fc[0].weight.detach().clone()
    log = []
    opt = CrAM(model, Capture(model.parameters()), ["topk:0.5"], rho=0.0)
    opt.step(_closure(model, x, y, log))
    _, want = AC.compress({n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")},
                          topk_compression(0.5))
    assert torch.equal(opt.last["masks"]["fc.0.weight"], want["fc.0.weight"])
    assert torch.equal(log[1] != 0, want["fc.0.weight"] & (w != 0))   # the second pass ran at C(theta)


# ----------------------------------------------------------------------------- tau

def test_tau_reuses_the_last_mask_between_refreshes():
    model = _model(bn=False, seed=5)
    x, y = _batch(5)
    log = []
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.5), ["topk:0.5"], rho=0.1, tau=3)
    refreshed, masks = [], []
    for _ in range(7):
        opt.step(_closure(model, x, y, log))
        refreshed.append(opt.last["refreshed"])
        masks.append(opt.last["masks"]["fc.0.weight"].clone())
    assert refreshed == [True, False, False, True, False, False, True]
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    for s in (1, 2):   # the perturbed point of a reuse step is supported on the old mask
        assert not torch.any(log[2 * s + 1][~masks[0]] != 0)
    assert not torch.equal(masks[0], masks[3])          # lr 0.5: the refreshed mask moved


def test_tau_keeps_one_mask_per_sparsity_level():
    model = _model(bn=False, seed=6)
    x, y = _batch(6)
    comps = parse_compressions(["topk:0.5", "topk:0.9"])
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.1), comps, rho=0.1, tau=4, seed=11)
    born, want, got = {}, [], []
    for t in range(1, 16):          # docs/methods.md §7.2: a level's mask is recomputed when drawn and >= tau steps old
        c = sample_compression(comps, 11, t)
        fresh = c not in born or t - born[c] >= 4
        if fresh:
            born[c] = t
        want.append(fresh)
        opt.step(_closure(model, x, y))
        assert opt.last["compression"] == c
        got.append(opt.last["refreshed"])
    assert got == want and 2 < sum(want) < 15


def test_state_dict_resumes_the_mask_cache_and_the_step_count():
    x, y = _batch(7)
    comps = ["topk:0.5", "topk:0.8"]

    def make():
        m = _model(seed=7)
        return m, CrAM(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), comps, rho=0.1, tau=3, seed=2)
    m1, o1 = make()
    for _ in range(8):
        o1.step(_closure(m1, x, y))
    m2, o2 = make()
    for _ in range(4):
        o2.step(_closure(m2, x, y))
    state, weights = o2.state_dict(), copy.deepcopy(m2.state_dict())
    m3, o3 = make()
    m3.load_state_dict(weights)
    o3.load_state_dict(state)
    for _ in range(4):
        o3.step(_closure(m3, x, y))
    for (n, a), b in zip(m1.state_dict().items(), m3.state_dict().values()):
        assert torch.equal(a, b), n


# ----------------------------------------------------------------------------- other optimizers, param lists

def test_wrapper_works_around_adam_and_trains():
    model = _model(seed=8)
    x, y = _batch(8, n=64)
    opt = CrAM(model, torch.optim.Adam(model.parameters(), lr=1e-2), ["topk:0.5", "topk:0.7", "topk:0.9"], rho=0.05)
    losses = [float(opt.step(_closure(model, x, y)).detach()) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    assert all("exp_avg" in opt.base.state[p] for p in model.parameters())
    assert repr(opt).startswith("CrAM(mode='cram'")


def test_adam_run_config_trains_on_accel():
    from twinsparse.accel.cram_procedure import train_cram_accel
    from twinsparse.accel.runner import load_split
    cfg = RunConfig(procedure="cram", optimizer="adam", lr=1e-3, epochs=1, hidden=[16], train_budget=100,
                    batch_size=25, batchnorm=True, cram_compressions=["topk:0.7"], lr_schedule="cosine",
                    cram_uniform_first_last_dense=False).validate()
    out = train_cram_accel(cfg, load_split(cfg))
    assert isinstance(out["optimizer"], torch.optim.Adam) and out["cram"].t == 4
    with pytest.raises(ConfigError, match="optimizer='sgd' only"):
        cfg.replace(backend="reference")


def test_parameter_list_and_named_pairs():
    model = _model(bn=False, seed=9)
    x, y = _batch(9)
    opt = CrAM(list(model.parameters()), Capture(model.parameters()), ["topk:0.5"], rho=0.1)
    assert opt.prunable == ["0", "2", "4"]            # tensors with >= 2 dims
    opt.step(_closure(model, x, y))
    named = CrAM(list(model.named_parameters()), Capture(model.parameters()), ["nm:2:4"], rho=0.1,
                 prunable=["fc.0.weight"])
    named.step(_closure(model, x, y))
    assert list(named.last["masks"]) == ["fc.0.weight"]


def test_sgd_mode_is_one_plain_step():
    model = _model(seed=10)
    ref = copy.deepcopy(model)
    x, y = _batch(10)
    calls = []

    def closure():
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    CrAM(model, torch.optim.SGD(model.parameters(), lr=0.1), mode="sgd").step(closure)
    base = torch.optim.SGD(ref.parameters(), lr=0.1)
    F.cross_entropy(ref(x), y).backward()
    base.step()
    assert len(calls) == 1
    for (n, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n


def test_non_finite_update_raises_and_leaves_the_weights():
    model = _model(bn=False, seed=11)
    x, y = _batch(11)
    before = copy.deepcopy(model.state_dict())
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.1), ["topk:0.5"], rho=0.1, check_finite=True)

    def closure():
        loss = F.cross_entropy(model(x), y) * float("nan")
        loss.backward()
        return loss
    with pytest.raises(ValueError, match="non-finite"):
        opt.step(closure)
    assert opt.t == 0                                     # the failed step is not counted
    for n, v in model.state_dict().items():
        assert torch.equal(v, before[n]), n


# ----------------------------------------------------------------------------- bad input

def test_bad_wrapper_arguments():
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"rho=-0.1 is outside the allowed range \[0, inf\)"):
        CrAM(model, sgd, ["topk:0.5"], rho=-0.1)
    with pytest.raises(ValueError, match="set of compression methods is empty"):
        CrAM(model, sgd, [], rho=0.1)
    with pytest.raises(ValueError, match="set of compressions is empty|is empty"):
        CrAM(model, sgd, [], rho=0.1, mode="csam")
    with pytest.raises(ValueError, match="mode='adam' is not allowed"):
        CrAM(model, sgd, ["topk:0.5"], rho=0.1, mode="adam")
    with pytest.raises(ValueError, match="plus=True is not defined for mode='sam'"):
        CrAM(model, sgd, rho=0.1, mode="sam", plus=True)
    with pytest.raises(ValueError, match="tau=5 .* mode='cram' only"):
        CrAM(model, sgd, rho=0.1, mode="sam", tau=5)
    with pytest.raises(ValueError, match="tau=0"):
        CrAM(model, sgd, ["topk:0.5"], tau=0)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        CrAM(model, object(), ["topk:0.5"])
    with pytest.raises(ValueError, match="unknown parameter"):
        CrAM(model, sgd, ["topk:0.5"], prunable=["fc.9.weight"])
    with pytest.raises(ValueError, match="compression 'topk:1.2'"):
        CrAM(model, sgd, ["topk:1.2"])
    with pytest.raises(TypeError, match="needs a closure"):
        CrAM(model, sgd, ["topk:0.5"]).step(None)
    params, buffers = init_mlp((20, 8, 4), seed=0)
    x, y = (a.numpy() for a in _batch())
    with pytest.raises(ValueError, match="rho=-1"):
        cram_step(params, buffers, {}, x, y, lr=0.1, compressions=["topk:0.5"], rho=-1, t=1)
    with pytest.raises(ValueError, match="compression methods is empty|compressions is empty"):
        cram_step(params, buffers, {}, x, y, lr=0.1, compressions=[], rho=0.1, t=1)


@pytest.mark.parametrize("spec,n,first", [("topk:0.5", 1, topk_compression(0.5)),
                                          ("topk:0.3-0.35", 6, topk_compression(0.3)),
                                          ("topk:0.7:uniform", 1, topk_compression(0.7, "uniform")),
                                          ("nm:2:4", 1, AC.nm_compression(2, 4)), ("quant:4", 1, AC.quant_compression(4))])
def test_parse_compression(spec, n, first):
    got = parse_compression(spec)
    assert len(got) == n and got[0] == first


@pytest.mark.parametrize("spec,msg", [("topk", "write 'topk:SPARSITY'"), ("topk:abc", "not a number"),
                                      ("topk:0.5:rows", "distribution 'rows'"), ("nm:4:2", "nm:4:2"),
                                      ("quant:1", "bits=1"), ("prune:0.5", "unknown kind 'prune'"),
                                      ("topk:0.9-0.3", "empty"), ("topk:0.305-0.4", "multiples of 0.01")])
def test_bad_compression_specs(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_compression(spec)


def test_eval_patterns():
    assert [n for n, _ in parse_eval_patterns(["global", "uniform", "nm:2:4", "quant:4"])] == \
        ["global", "uniform", "nm:2:4", "quant:4"]
    with pytest.raises(ValueError, match="eval pattern 'topk:0.5' is not allowed"):
        parse_eval_patterns(["topk:0.5"])
    with pytest.raises(ValueError, match="repeat"):
        parse_eval_patterns(["global", "global"])


@pytest.mark.parametrize("changes,msg", [
    (dict(method="static", density=0.1), "procedure='cram' trains a dense model"),
    (dict(cram_tau=0), "cram_tau=0"), (dict(cram_mode="adam"), "cram_mode|mode='adam'"),
    (dict(cram_rho=-0.5), "cram_rho=-0.5"), (dict(cram_compressions=[]), "compressions is empty"),
    (dict(cram_eval_sparsities=[1.0]), r"entry 1.0 is outside the allowed range \[0, 1\)"),
    (dict(cram_eval_patterns=["rows"]), "eval pattern 'rows'"),
    (dict(cram_mode="csam", cram_tau=3), "cram_tau=3"), (dict(cram_mode="sam", cram_plus=True), "plus=True"),
    (dict(cram_bnt_batch_size=1), "cram_bnt_batch_size=1")])
def test_bad_cram_config(changes, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(procedure="cram", **changes).validate()


def test_sam_and_sgd_need_no_compressions():
    RunConfig(procedure="cram", cram_mode="sam", cram_compressions=[]).validate()
    RunConfig(procedure="cram", cram_mode="sgd", cram_compressions=[]).validate()


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("backend", ["accel", "reference"])
def test_cram_procedure_from_the_cli(tmp_path, backend):
    out = tmp_path / backend
    argv = ["train", "--procedure", "cram", "--batchnorm", "--epochs", "2", "--lr-warmup-epochs", "1", "--hidden", "24", "12",
            "--train-budget", "120", "--batch-size", "30", "--backend", backend, "--dtype", "float64",
            "--cram-compressions", "topk:0.5", "topk:0.9", "--cram-eval-sparsities", "0.5", "0.9",
            "--cram-eval-patterns", "global", "nm:2:4", "--cram-bnt-batches", "4", "--cram-bnt-samples", "100",
            "--output", str(out), "--no-progress"]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "run_seed0.jsonl").read_text().splitlines()]
    assert lines[0]["config"]["procedure"] == "cram" and lines[0]["config"]["cram_compressions"] == ["topk:0.5", "topk:0.9"]
    epochs = lines[1:]
    assert [r["epoch"] for r in epochs] == [1, 2] and "oneshot" not in epochs[0]
    rows = epochs[-1]["oneshot"]
    assert [(r["pattern"], r["sparsity"]) for r in rows] == [("global", 0.5), ("global", 0.9), ("nm:2:4", 0.5)]
    assert all(0 <= r["test_acc"] <= 1 and 0 <= r["test_acc_bnt"] <= 1 for r in rows)
    assert rows[1]["density"] == pytest.approx(0.1, abs=1e-3)
    assert json.loads((out / "results.json").read_text())["rows"][0]["density"] == 1.0


def test_cram_dry_run_and_bad_flags(capsys, tmp_path):
    assert main(["train", "--procedure", "cram", "--cram-mode", "csam", "--cram-compressions", "topk:0.3-0.9",
                 "--dry-run", "--output", str(tmp_path / "x")]) == 0
    text = capsys.readouterr().out
    assert "procedure cram" in text and "C-SAM" in text and "61 compression(s)" in text
    with pytest.raises(SystemExit):
        main(["train", "--procedure", "cram", "--cram-mode", "adam"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["train", "--procedure", "cram", "--cram-rho", "-1", "--no-progress"]) == 2
    assert "cram_rho=-1.0" in capsys.readouterr().err
    assert main(["run", "experiments/cram/cram_vs_sgd.toml", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("procedure cram") == 5
