"""Trajectory checks: the same MLP training run on both backends.

float64, same init (reference.nn.init_mlp), same NumPy batches, 60 iterations: the masks must be
identical and every parameter within the float64 tolerance after every single step. The dynamic
cases (SET with injected random scores, RigL, DST-EE, SNFS, GraNet) update the masks every 8
iterations, so each run makes >= 5 mask updates, and the update records must match too. The AC/DC
cases run 12 epochs of 5 iterations (phase changes at epoch starts, momentum reset at decompressions).
Device "simt" runs the accel side on CPU tensors with the CUDA kernels executed by the SIMT emulator
(accel/kernels/simt): the fused masked SGD step every iteration, the top-k / N:M / DST-EE / CIA kernels
at every mask update, compared with the reference exactly as the torch path is.
"""
import contextlib

import numpy as np
import pytest
import torch

from twinsparse.accel import kernels
from twinsparse.accel.runner import load_split
from twinsparse.accel.train import train_accel
from twinsparse.accel.kernels import simt
from twinsparse.conformance.tolerances import assert_derived_close, tolerance
from twinsparse.reference.config import RunConfig
from twinsparse.reference.train import train_reference

DEVICES = ["cpu", "simt"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = {
    "static-erk-random": dict(method="static", density=0.1, distribution="erk", mask_init="random"),
    "static-uniform-magnitude-bn": dict(method="static", density=0.2, distribution="uniform",
                                        mask_init="magnitude", batchnorm=True, nesterov=True),
    "static-snip-global": dict(method="static", density=0.15, distribution="erk", mask_init="snip"),
    "dense-bn": dict(method="dense", batchnorm=True),
    "set-injected": dict(method="set", density=0.1, delta_t=8, drop_fraction=0.4),
    "rigl": dict(method="rigl", density=0.1, delta_t=8, drop_fraction=0.4),
    "rigl-step-on-update-bn": dict(method="rigl", density=0.2, delta_t=8, step_on_update=True, batchnorm=True,
                                   fraction_schedule="linear"),
    "dst_ee": dict(method="dst_ee", density=0.1, delta_t=8, drop_fraction=0.4, c=1e-2, eps=0.5),
    "dst_ee-zeros-text": dict(method="dst_ee", density=0.1, delta_t=8, c=1e-2, counter_init="zeros",
                              exploration_form="text", fraction_schedule="constant"),
    "snfs-redistribute": dict(method="snfs", density=0.1, delta_t=8, redistribute=True),
    "granet": dict(method="granet", density=0.05, init_density=0.3, delta_t=8, prune_end_fraction=0.5),
    "gmp-global": dict(method="gmp", density=0.05, delta_t=8, prune_end_fraction=0.6),
    "gmp-layer-bn": dict(method="gmp", density=0.1, delta_t=6, prune_end_fraction=0.6, gmp_scope="layer",
                         batchnorm=True),
    # Sup-tickets: 2 tickets of C = 5 iterations in the last 10 of the 60 iterations
    "suptickets-rigl-cia-bn": dict(method="rigl", density=0.1, delta_t=8, batchnorm=True, suptickets=True,
                                   st_n_tickets=2, st_cycle_epochs=0.25),
    "suptickets-set-caa-global": dict(method="set", density=0.1, delta_t=8, suptickets=True, st_n_tickets=2,
                                      st_cycle_epochs=0.25, st_averaging="caa", st_prune_scope="global"),
    # the superposing stage with FGE's cyclical rate (tickets at mid-cycle) and an exploration at its start
    # (SET base: RigL's 30% exploration regrows into gradient plateaus of constant pixels, where the two
    # backends' last-bit rounding, not the tie rule, orders equal values)
    "suptickets-set-fge-explore": dict(method="set", density=0.1, delta_t=8, suptickets=True, st_n_tickets=2,
                                       st_cycle_epochs=0.25, st_lr_schedule="fge", st_explore_at_stage_start=True),
    "suptickets-static-cima-var-bn": dict(method="static", density=0.2, batchnorm=True, suptickets=True,
                                          st_n_tickets=2, st_cycle_epochs=0.25, st_averaging="cima",
                                          st_bn_avg="var", st_prune_each_step=False),
    # AC/DC: 12 epochs of 5 iterations (batch 128 of 640); phases W C D C D C D C D(final) C(final)
    # (scaled lengths) -> 9 mask updates: 5 compressions, 4 decompressions with the momentum reset
    "acdc-global": dict(method="acdc", density=0.1, epochs=12, batch_size=128),
    "acdc-uniform-bn-nesterov": dict(method="acdc", density=0.2, epochs=12, batch_size=128, batchnorm=True,
                                     nesterov=True, acdc_distribution="uniform"),
    # explicit lengths, no warm-up (C1 compresses the initialisation at t = 1), first & last layers dense
    "acdc-first-last-dense": dict(method="acdc", density=0.05, epochs=12, batch_size=128, acdc_warmup=0,
                                  acdc_compressed=2, acdc_decompressed=1, acdc_final_decompressed=2,
                                  acdc_final_compressed=2, acdc_distribution="first_last_dense"),
    "acdc-nm24": dict(method="acdc", density=0.5, epochs=12, batch_size=128, acdc_distribution="nm24"),
}


# cases that add scalar logic only (LR, timing of updates): their kernels are those of the other cases,
# so they run on the CPU device only (the emulated kernels cost about 10 s a case)
SCALAR_ONLY = ("suptickets-set-fge-explore",)


def _injected_set(cfg, total):
    """SET whose random grow scores are injected (the same arrays for both backends)."""
    from twinsparse.reference.methods import from_run_config

    base = from_run_config(cfg, total)
    rng_cache = {}

    def source(shapes, t):
        if t not in rng_cache:
            rng = np.random.default_rng(1000 + t)
            rng_cache[t] = {n: rng.integers(0, 5, size=s).astype(np.float64) for n, s in shapes.items()}  # many ties
        return rng_cache[t]
    return type(base)(**{**{k: getattr(base, k) for k in base.__dataclass_fields__}, "random_source": source})


@pytest.mark.parametrize("case,device", [(c, d) for c in CASES for d in DEVICES
                                         if not (d == "simt" and (CASES[c]["method"] == "dense"   # no kernel in dense
                                                                  or c in SCALAR_ONLY))])
def test_static_training_trajectory_matches(case, device):
    backend, emulated = contextlib.nullcontext(), None
    if device == "simt":
        if simt.unavailable_reason() is not None:
            pytest.skip(f"SIMT emulator: {simt.unavailable_reason()}")
        emulated = simt.SimtBackend(seed=2)
        backend, device = kernels.use_backend(emulated), "cpu"
    base = dict(label=case, dtype="float64", hidden=[48, 24], epochs=3, batch_size=32, train_budget=640,
                lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", device=device, seed=3,
                acdc_plan="scaled")   # 60 iterations: AC/DC's thesis plan needs >= 40 epochs
    cfg = RunConfig(**{**base, **CASES[case]}).validate()  # a case may change epochs x batch (60 iterations)
    split = load_split(cfg)
    make = (lambda: _injected_set(cfg, 60)) if case == "set-injected" else (lambda: None)
    ref_steps = []
    ref = train_reference(cfg, split, method=make(), on_step=lambda s, params, masks: ref_steps.append(
        ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in masks.items()})))
    acc_steps = []
    with backend:
        acc = train_accel(cfg, split, method=make(), on_step=lambda s, model, sp: acc_steps.append(
            ({k: v.detach().cpu().numpy().copy() for k, v in model.named_parameters()},
             {k: v.cpu().numpy().copy() for k, v in sp.masks.items()})))
    assert len(ref_steps) == len(acc_steps) == 60
    if emulated is not None:  # the fused optimizer step ran on the emulated kernel (not on skipped update steps)
        assert sum(k.startswith("masked_sgd") for k, _ in emulated.log) >= 60 - len(acc["updates"]), \
            sorted({k for k, _ in emulated.log})
    tol = tolerance(np.float64)
    for step, ((rp, rm), (ap, am)) in enumerate(zip(ref_steps, acc_steps), start=1):
        assert list(rm) == list(am)
        for name in rm:
            assert np.array_equal(rm[name], am[name]), f"step {step}: mask {name} differs"
        assert list(rp) == list(ap)
        for name in rp:
            np.testing.assert_allclose(ap[name], rp[name], err_msg=f"step {step}: {name}", **tol)
            if name in rm:
                assert np.all(ap[name][~am[name]] == 0), f"step {step}: pruned weights of {name} revived"
    # the mask-update records (fraction, counts, density, R, mask change: counts and count ratios) are equal
    assert len(ref["updates"]) == len(acc["updates"])
    if CASES[case]["method"] not in ("dense", "static"):
        assert len(ref["updates"]) >= 5
    if CASES[case].get("suptickets"):  # the same tickets, ultimate ticket and its masks
        rs, as_ = ref["state"], acc["sparsifier"].method_state
        assert rs["t"] == as_["t"] == 2
        for r_net, a_net in zip(rs["tickets"] + [rs["ultimate"]], as_["tickets"] + [as_["ultimate"]]):
            assert sorted(r_net) == sorted(a_net)
            for name in r_net:
                np.testing.assert_allclose(a_net[name].cpu().numpy(), r_net[name], err_msg=name, **tol)
        for name in rs["ultimate_masks"]:
            assert np.array_equal(rs["ultimate_masks"][name], as_["ultimate_masks"][name].cpu().numpy())
        assert ref["history"][-1]["suptickets"]["ultimate"]["acc"] == acc["history"][-1]["suptickets"]["ultimate"]["acc"]
    for r, a in zip(ref["updates"], acc["updates"]):
        assert r.keys() == a.keys()
        for k in r:
            if k == "exploitation_degree":   # DST-EE Eq. 3: a difference of two losses, each backend's own sums
                assert_derived_close(r[k], a[k], k)
            else:
                assert r[k] == a[k], (k, r, a)
    if CASES[case]["method"] == "dst_ee":    # logged with every update, beside R
        assert all("exploitation_degree" in u for u in ref["updates"])
    # the evaluation numbers of both backends agree too: density and accuracy (count / n) exactly,
    # NLL and ECE (sums in a backend's own order) within the derived tolerance
    assert len(ref["history"]) == len(acc["history"]) > 0
    for r, a in zip(ref["history"], acc["history"]):
        assert r["density"] == a["density"]
        assert r["test_acc"] == a["test_acc"]
        assert_derived_close(r["test_nll"], a["test_nll"], "test_nll")
        assert_derived_close(r["test_ece"], a["test_ece"], "test_ece")
