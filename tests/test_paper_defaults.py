"""Defaults that follow the papers (docs/methods.md), checked against values worked out by hand from
the papers' text: AC/DC's phase plan for 150 and 200 epochs, the warm-up + cosine and cyclic-cosine
learning rates at chosen iterations, the Sup-tickets stage schedules of Table 7, DST-EE's last mask
update, the exploitation degree of Eq. 3, CrAM's mixed steps and uniform first/last-dense pruning,
D²-Sparse's mask initialisation between states, SyncBatchNorm under DDP; and bad input."""
import math

import numpy as np
import pytest
import torch

import twinsparse.accel.ops as AO
import twinsparse.reference.ops as RO
from twinsparse.accel import distributed as ddp
from twinsparse.accel.cram_optimizer import CrAM
from twinsparse.accel.engine import AccelEngine
from twinsparse.accel.exploitation import measure
from twinsparse.accel.models import mlp_from_reference
from twinsparse.accel.runner import load_split
from twinsparse.reference.config import ConfigError, RunConfig
from twinsparse.reference.cram_ops import base_step_at, topk_compression
from twinsparse.reference.cram_options import training_compressions, uniform_topk
from twinsparse.reference.cram_procedure import cram_step
from twinsparse.reference.d2sparse import state_masks
from twinsparse.reference.engine import ReferenceEngine
from twinsparse.reference.exploitation import exploitation_degree, exploitation_pair, grown_positions
from twinsparse.reference.methods import from_run_config
from twinsparse.reference.nn import init_mlp, mlp_forward, softmax_cross_entropy
from twinsparse.reference.schedules import LRSchedule, lr_at, stage_collects, stage_lr


# ----------------------------------------------------------------------------- AC/DC phase plan

def _thesis_plan(epochs):
    """[TH] §3.4.1 written out by hand: W 10, then C 5 / D 5 alternating (starting and ending with
    C), final D 10, final C 15; [TH] §3.4.3: the phase lengths are kept when training longer."""
    phases, t, k = [("W", 0, 10)], 10, 1
    while t + 5 + 10 + 15 < epochs:            # C_k, D_k while the block still has room after them
        phases += [(f"C{k}", t, t + 5), (f"D{k}", t + 5, t + 10)]
        t, k = t + 10, k + 1
    phases += [(f"C{k}", t, t + 5), (f"D{k}", t + 5, t + 15), (f"C{k + 1}", t + 15, t + 30)]
    assert t + 30 == epochs
    return phases


@pytest.mark.parametrize("epochs,alternating,last_c", [(150, 23, 13), (200, 33, 18)])
def test_acdc_default_plan_keeps_the_thesis_lengths(epochs, alternating, last_c):
    cfg = RunConfig(method="acdc", density=0.1, epochs=epochs).validate()
    got = [(p.name, p.start, p.end) for p in cfg.acdc_phase_plan()]
    assert got == _thesis_plan(epochs)
    assert len(got) == 1 + alternating + 2 and got[-1] == (f"C{last_c}", epochs - 15, epochs)
    kinds = [p.kind for p in cfg.acdc_phase_plan()]
    dense = sum(p.length for p, k in zip(cfg.acdc_phase_plan(), kinds) if k == "dense")
    assert dense == epochs // 2          # "an equal number of epochs of dense and sparse training"


def test_acdc_scaled_plan_is_an_option_and_short_runs_name_it():
    cfg = RunConfig(method="acdc", density=0.1, epochs=150, acdc_plan="scaled").validate()
    plan = [(p.name, p.length) for p in cfg.acdc_phase_plan()]
    # 10/5/5/10/15 x 1.5 rounded half up: W 15, C/D 8, final D 15, 5 C/D pairs, final C 150-15-15-48-40 = 32
    assert len(plan) == 14 and plan[0] == ("W", 15) and plan[1] == ("C1", 8) and plan[-2:] == [("D6", 15), ("C7", 32)]
    with pytest.raises(ConfigError, match=r"do not fit epochs=10.*smallest budget that fits is 40.*acdc_plan='scaled'"):
        RunConfig(method="acdc", density=0.1, epochs=10).validate()
    with pytest.raises(ConfigError, match=r"acdc_plan='halved' is not allowed"):
        RunConfig(method="acdc", density=0.1, epochs=100, acdc_plan="halved").validate()
    m = from_run_config(RunConfig(method="acdc", density=0.1, epochs=150).validate(), 150 * 4, 4)
    assert [p.name for p in m.phases][-3:] == ["C12", "D12", "C13"]


# ----------------------------------------------------------------------------- learning rates

def test_warmup_cosine_at_chosen_iterations():
    """AC/DC ImageNet ([TH] App. A.2): 100 epochs, warm-up 5 epochs to 0.256, cosine after, per epoch;
    5005 iterations per epoch (1.28M images / batch 256)."""
    s = LRSchedule("warmup_cosine", steps_per_epoch=5005, warmup_epochs=5)
    T = 100 * 5005
    assert lr_at(0, T, 0.256, s) == pytest.approx(0.0512)            # epoch 0: 0.256 * 1/5
    assert lr_at(5004, T, 0.256, s) == pytest.approx(0.0512)         # still epoch 0
    assert lr_at(5005, T, 0.256, s) == pytest.approx(0.1024)         # epoch 1: 2/5
    assert lr_at(4 * 5005, T, 0.256, s) == pytest.approx(0.256)      # epoch 4: the peak
    assert lr_at(5 * 5005, T, 0.256, s) == pytest.approx(0.256)      # epoch 5: cos(0)
    assert lr_at(24 * 5005 + 17, T, 0.256, s) == pytest.approx(0.23155417, rel=1e-7)   # (1 + cos(pi/5)) / 2
    # CrAM ImageNet ([TH] §5.4): peak 0.2; epoch 62: (1 + cos(0.6 pi)) / 2 = 0.3454915
    assert lr_at(62 * 5005, T, 0.2, s) == pytest.approx(0.0690983, rel=1e-6)


def test_cyclic_cosine_at_chosen_iterations():
    """Sparse Cocktail CIFAR-10 ([SC] Table 5): 150 epochs, CyclicCosineDecay(init_epoch=100, interval=10,
    min_lr=0.001, restart_lr=0.01), base 0.1, per epoch; 391 iterations per epoch (50000 / 128)."""
    s = LRSchedule("cyclic_cosine", steps_per_epoch=391, cycle_init_epochs=100, cycle_interval=10,
                   min_lr=0.001, restart_lr=0.01)
    T = 150 * 391
    at = {e: lr_at(e * 391 + 200, T, 0.1, s) for e in (0, 50, 99, 100, 105, 110, 149)}
    assert at[0] == pytest.approx(0.1)
    assert at[50] == pytest.approx(0.0505)                            # 0.001 + 0.099 / 2
    assert at[99] == pytest.approx(0.00102443, rel=1e-5)               # 0.001 + 0.099 (1 + cos(0.99 pi)) / 2
    assert at[100] == pytest.approx(0.01) and at[110] == pytest.approx(0.01)    # restarts
    assert at[105] == pytest.approx(0.0055)                           # 0.001 + 0.009 / 2
    assert at[149] == pytest.approx(0.00122025, rel=1e-5)              # 0.001 + 0.009 (1 + cos(0.9 pi)) / 2


def test_stage_schedules_of_table7():
    """C = 8, range [0.001, 0.005]: Eq. 3 rises then falls; FGE falls then rises (lowest at mid-cycle);
    SWA falls linearly and jumps back. Tickets at each cycle's lowest rate."""
    lo, hi = 0.001, 0.005
    assert [stage_lr(i, 8, lo, hi, "eq3") for i in (1, 4, 8)] == pytest.approx([0.002, 0.005, 0.001])
    assert [stage_lr(i, 8, lo, hi, "fge") for i in (1, 4, 8, 9)] == pytest.approx([0.004, 0.001, 0.005, 0.004])
    assert [stage_lr(i, 8, lo, hi, "swa") for i in (1, 8, 9)] == pytest.approx([0.0045, 0.001, 0.0045])
    assert [i for i in range(1, 25) if stage_collects(i, 8, "fge")] == [4, 12, 20]
    assert [i for i in range(1, 25) if stage_collects(i, 8, "swa")] == [8, 16, 24]
    assert [i for i in range(1, 25) if stage_collects(i, 8, "eq3")] == [8, 16, 24]


def test_schedule_defaults_follow_the_papers():
    name = lambda **kw: RunConfig(**kw).validate().lr_schedule_name()
    assert name(method="acdc", density=0.1, epochs=100) == "warmup_cosine"
    assert name(procedure="cram") == "warmup_cosine"
    assert name(procedure="cocktail", hidden=[32, 32]) == "cyclic_cosine"
    assert name(method="rigl", density=0.1, suptickets=True) == "step"
    assert name(method="dst_ee", density=0.1) == "cosine"
    assert name(method="acdc", density=0.1, epochs=100, lr_schedule="cosine") == "cosine"


@pytest.mark.parametrize("kw,msg", [
    (dict(lr_schedule="warmup"), r"lr_schedule='warmup' is not allowed"),
    (dict(method="acdc", density=0.1, epochs=5, acdc_plan="scaled"), r"lr_warmup_epochs=5 leaves no cosine phase"),
    (dict(lr_cycle_interval=0), r"lr_cycle_interval=0 must be an integer >= 1"),
    (dict(lr_min=-0.1), r"lr_min=-0.1 is outside"),
    (dict(st_lr_schedule="triangle"), r"st_lr_schedule='triangle' is not allowed"),
])
def test_bad_schedule_config(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw).validate()


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match=r"warmup_epochs=-1 must be an integer >= 0"):
        LRSchedule("warmup_cosine", warmup_epochs=-1)
    with pytest.raises(ValueError, match=r"schedule='swa' is not allowed"):
        LRSchedule("swa")
    with pytest.raises(ValueError, match=r"stage schedule 'cosine' is not allowed"):
        stage_lr(1, 8, kind="cosine")
    with pytest.raises(ValueError, match=r"cycle length C=0"):
        stage_collects(1, 0, "fge")


# ----------------------------------------------------------------------------- DST-EE window

def test_dst_ee_updates_until_the_end_as_in_alg1():
    """15 epochs x 55 iterations = 825, Delta T = 25: Alg. 1 updates while t < 825 -> last at 800 with
    the drop fraction unchanged; RigL stops at floor(0.75 * 825) = 618 -> last at 600."""
    base = dict(density=0.05, epochs=15, delta_t=25, drop_fraction=0.3)
    last = lambda m: max(t for t in range(1, 826) if m.due(t))
    ee = from_run_config(RunConfig(method="dst_ee", **base).validate(), 825, 55)
    rigl = from_run_config(RunConfig(method="rigl", **base).validate(), 825, 55)
    assert (last(ee), ee.fraction(800)) == (800, 0.3)
    assert last(rigl) == 600 and rigl.fraction(600) < 0.03
    pinned = from_run_config(RunConfig(method="dst_ee", t_end_fraction=0.75, fraction_schedule="cosine",
                                       **base).validate(), 825, 55)
    assert last(pinned) == 600          # the window the committed DST-EE results used


# ----------------------------------------------------------------------------- Sup-tickets options

def test_suptickets_options_reach_the_method():
    cfg = RunConfig(method="rigl", density=0.1, suptickets=True, st_n_tickets=3, st_cycle_epochs=1.0,
                    st_lr_schedule="swa", st_explore_at_stage_start=True, epochs=10).validate()
    m = from_run_config(cfg, 100, 10)          # T0 = 100 - 3 x 10 = 70
    assert (m.stage_start, m.explore_at_stage_start, m.lr_schedule) == (70, True, "swa")
    assert m.due(71) and not m.collects(71) and m.collects(80) and m.lr_override(80) == pytest.approx(0.001)
    plain = from_run_config(cfg.replace(st_explore_at_stage_start=False, st_lr_schedule="eq3"), 100, 10)
    assert not plain.due(71) and plain.lr_override(75) == pytest.approx(0.005)


# ----------------------------------------------------------------------------- exploitation degree

def test_exploitation_pair_by_hand():
    w = {"a": np.array([[1.0, 0.0], [0.0, 2.0]])}
    g = {"a": np.array([[0.5, -1.0], [3.0, 7.0]])}
    grown = grown_positions({"a": np.array([[True, True], [True, True]])},
                            {"a": np.array([[True, False], [False, True]])})
    assert grown["a"].tolist() == [[False, True], [True, False]]
    base, probe = exploitation_pair(w, g, grown, 0.1)
    assert base["a"].tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert probe["a"] == pytest.approx(np.array([[1.0, 0.1], [-0.3, 2.0]]))
    assert exploitation_degree(2.5, 2.0) == 0.5
    with pytest.raises(ValueError, match=r"kept\['a'\] holds positions outside masks\['a'\]"):
        grown_positions({"a": np.zeros((2, 2), bool)}, {"a": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match=r"lr=-0.1 must be a finite learning rate"):
        exploitation_pair(w, g, grown, -0.1)
    with pytest.raises(ValueError, match=r"loss_probe=nan must be a finite loss"):
        exploitation_degree(1.0, float("nan"))


def test_measure_equals_the_reference_loss_difference_and_restores_the_model():
    params, buffers = init_mlp((6, 5, 3), batchnorm=True, seed=2)
    model = mlp_from_reference(params, buffers).double()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6)), rng.integers(0, 3, 8)
    names = ["fc.0.weight", "fc.1.weight"]
    masks = {n: rng.random(params[n].shape) < 0.6 for n in names}
    kept = {n: masks[n] & (rng.random(params[n].shape) < 0.5) for n in names}
    grads = {n: rng.normal(size=params[n].shape) for n in names}
    base, probe = exploitation_pair({n: params[n] for n in names}, grads, grown_positions(masks, kept), 0.05)
    losses = [float(softmax_cross_entropy(mlp_forward({**params, **net}, buffers, x, train=True)[0], y)[0])
              for net in (base, probe)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = measure(model, names, {n: torch.from_numpy(m) for n, m in masks.items()},
                  {n: torch.from_numpy(k) for n, k in kept.items()}, {n: torch.from_numpy(g) for n, g in grads.items()},
                  0.05, [(torch.from_numpy(x), torch.from_numpy(y))], torch.nn.functional.cross_entropy)
    assert got == pytest.approx(losses[0] - losses[1], rel=1e-9, abs=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dst_ee_runs_log_the_exploitation_degree_beside_r():
    from twinsparse.accel.train import train_accel
    cfg = RunConfig(method="dst_ee", density=0.1, epochs=2, train_budget=200, batch_size=50, hidden=[16],
                    delta_t=2, test_per_class=20, dtype="float64").validate()
    out = train_accel(cfg, load_split(cfg))
    assert len(out["updates"]) >= 3 and all(math.isfinite(u["exploitation_degree"]) for u in out["updates"])
    off = train_accel(cfg.replace(ee_exploitation_degree=False), load_split(cfg))
    assert all("exploitation_degree" not in u for u in off["updates"])


# ----------------------------------------------------------------------------- CrAM

def test_cram_base_steps_are_seeded_and_mix_at_the_given_rate():
    assert not any(base_step_at(3, t, 0.0) for t in range(1, 200))
    assert all(base_step_at(3, t, 1.0) for t in range(1, 200))
    picks = [base_step_at(3, t, 0.3) for t in range(1, 2001)]
    assert picks == [base_step_at(3, t, 0.3) for t in range(1, 2001)]
    assert 0.25 < np.mean(picks) < 0.35
    with pytest.raises(ValueError, match=r"base_prob=1.5 is outside the allowed range \[0, 1\]"):
        base_step_at(3, 1, 1.5)


def test_cram_step_with_base_prob_one_is_the_plain_step_on_both_backends():
    params, buffers = init_mlp((6, 5, 3), batchnorm=False, seed=1)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 6)), rng.integers(0, 3, 8)
    kw = dict(lr=0.1, momentum=0.9, t=1, seed=0, compressions=["topk:0.5"])
    mixed = cram_step(params, buffers, {}, x, y, mode="cram", base_prob=1.0, **kw)
    plain = cram_step(params, buffers, {}, x, y, mode="sgd", **kw)
    assert mixed[3]["base_step"] and all(np.array_equal(mixed[0][n], plain[0][n]) for n in params)
    model = mlp_from_reference(params, buffers).double()
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), ["topk:0.5"], base_prob=1.0)

    def closure():
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        return loss
    opt.zero_grad() if hasattr(opt, "zero_grad") else model.zero_grad()
    opt.step(closure)
    assert opt.last["base_step"]
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), plain[0][n], rtol=1e-12, atol=1e-12)


def test_cram_uniform_keeps_the_first_and_last_layer_dense():
    cfg = RunConfig(procedure="cram", cram_compressions=["topk:0.7:uniform", "topk:0.5"]).validate()
    comps = training_compressions(cfg)
    assert comps[0].first_last_dense and comps[0].distribution == "uniform" and not comps[1].first_last_dense
    assert uniform_topk(cfg.replace(cram_uniform_first_last_dense=False), 0.9, "uniform").first_last_dense is False
    w = {f"fc.{i}.weight": np.random.default_rng(i).normal(size=(8, 8)) for i in range(3)}
    from twinsparse.reference.cram_ops import compress
    out, _ = compress(w, uniform_topk(cfg, 0.75, "uniform"))
    assert [int(np.count_nonzero(out[n])) for n in w] == [64, 16, 64]   # only the middle layer pruned, 75%
    with pytest.raises(ConfigError, match=r"hidden=\[16\] has 2 layers, so uniform Top-K would prune none"):
        RunConfig(procedure="cram", hidden=[16]).validate()
    with pytest.raises(ConfigError, match=r"cram_base_prob=0.5 mixes plain steps"):
        RunConfig(procedure="cram", cram_mode="sgd", cram_base_prob=0.5).validate()
    with pytest.raises(ConfigError, match=r"cram_base_prob=-0.1 is outside"):
        RunConfig(procedure="cram", cram_base_prob=-0.1).validate()


# ----------------------------------------------------------------------------- D²-Sparse masks

def test_d2_prune_from_previous_masks_agree_on_both_engines():
    cfg = RunConfig(procedure="d2sparse", method="rigl", density=0.2, hidden=[24, 12], train_budget=60,
                    test_per_class=20, batch_size=16, d2_mask_init="prune_from_previous", drop_fraction=0.25,
                    dtype="float64").validate()
    split = load_split(cfg)
    ref, acc = ReferenceEngine(cfg, split), AccelEngine(cfg, split)
    net = ref.init_net(cfg, split.x_train.shape[1], 10)
    acc.init_net(cfg, split.x_train.shape[1], 10)
    names = ref.prunable(net)
    m_ref = state_masks(ref, cfg, net, 0.2, seed=5)
    m_acc = state_masks(acc, cfg, {n: torch.from_numpy(v) for n, v in net.items()}, 0.2, seed=5)
    other = state_masks(ref, cfg, net, 0.2, seed=6)
    for n in names:
        assert np.array_equal(m_ref[n], m_acc[n].cpu().numpy())
    mag = RO.magnitude_masks({n: net[n] for n in names}, {n: m_ref[n].mean() for n in names})
    for n in names:   # 75% of each layer's kept weights are its largest |w|; the rest are random positions
        k = int(m_ref[n].sum())
        top = np.argsort(-np.abs(net[n]).reshape(-1), kind="stable")[: k - int(math.floor(0.25 * k))]
        assert m_ref[n].reshape(-1)[top].all() and mag[n].sum() == k
    assert any(not np.array_equal(m_ref[n], other[n]) for n in names)     # branches differ by their seed
    rnd = state_masks(ref, cfg.replace(d2_mask_init="random"), net, 0.2, seed=5)
    assert [int(rnd[n].sum()) for n in names] == [int(m_ref[n].sum()) for n in names]   # same ERK counts
    with pytest.raises(ConfigError, match=r"d2_mask_init='previous' is not allowed"):
        cfg.replace(d2_mask_init="previous")


# ----------------------------------------------------------------------------- DDP BatchNorm

def test_sync_batchnorm_on_cuda_nccl_only_and_parameters_kept():
    assert ddp.uses_sync_batchnorm("cuda", "nccl") and ddp.uses_sync_batchnorm("cuda:1", "nccl")
    assert not ddp.uses_sync_batchnorm("cpu", "gloo") and not ddp.uses_sync_batchnorm("cuda", "gloo")
    params, buffers = init_mlp((6, 5, 3), batchnorm=True, seed=0)
    model = mlp_from_reference(params, buffers)
    held = {n: p for n, p in model.named_parameters()}
    out = ddp.sync_batchnorm(model)
    assert out is model and any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is torch.nn.BatchNorm1d for m in model.modules())
    assert all(p is held[n] for n, p in model.named_parameters())        # the optimizer still holds them
    with pytest.raises(TypeError, match="not a bare BatchNorm layer"):
        ddp.sync_batchnorm(torch.nn.BatchNorm1d(3))


def test_ddp_backend_choice(monkeypatch):
    monkeypatch.setenv("TWINSPARSE_DDP_BACKEND", "mpi")
    with pytest.raises(ValueError, match=r"TWINSPARSE_DDP_BACKEND='mpi' is not allowed"):
        ddp.default_backend()
    monkeypatch.setenv("TWINSPARSE_DDP_BACKEND", "gloo")
    assert ddp.default_backend() == "gloo"
    monkeypatch.delenv("TWINSPARSE_DDP_BACKEND")
    assert ddp.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
