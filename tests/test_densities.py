"""Layer-wise densities (docs/methods.md §1.4): uniform, ER, ERK, global magnitude, and the accel specs."""
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import twinsparse.accel.densities as AD
from twinsparse.reference.densities import (DISTRIBUTIONS, er_densities, erk_densities, global_magnitude_densities,
                                 layer_densities_for, uniform_densities)


def resnet18_shapes():
    """Prunable conv/fc weights of a ResNet-18 (ImageNet), in registration order."""
    s = {"conv1": (64, 3, 7, 7)}
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            stride_in = cin if block == 0 else cout
            s[f"layer{stage}.{block}.conv1"] = (cout, stride_in, 3, 3)
            s[f"layer{stage}.{block}.conv2"] = (cout, cout, 3, 3)
            if block == 0 and stride_in != cout:
                s[f"layer{stage}.{block}.downsample"] = (cout, stride_in, 1, 1)
        cin = cout
    s["fc"] = (1000, 512)
    return s


def kept(shapes, dens, names=None):
    names = list(shapes) if names is None else names
    return sum(dens[n] * math.prod(shapes[n]) for n in names)


def assert_hits_target(shapes, dens, density, names=None):
    names = list(shapes) if names is None else names
    total = sum(math.prod(shapes[n]) for n in names)
    # exact in densities, and within one weight per layer once rounded to counts (docs/methods.md §1.2)
    assert kept(shapes, dens, names) == pytest.approx(density * total, rel=1e-9, abs=1e-6)
    counts = sum(math.floor(dens[n] * math.prod(shapes[n]) + 0.5) for n in names)
    assert abs(counts - density * total) <= len(names)
    assert all(0.0 <= dens[n] <= 1.0 for n in shapes)


MIXED = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "conv3": (64, 32, 3, 3), "fc": (10, 64)}


# ----------------------------------------------------------------------------- uniform

def test_uniform_values_and_exclude():
    assert uniform_densities(MIXED, 0.3) == {n: 0.3 for n in MIXED}
    out = uniform_densities(MIXED, 0.3, exclude=["conv1", "fc"])
    assert out == {"conv1": 1.0, "conv2": 0.3, "conv3": 0.3, "fc": 1.0}
    assert list(out) == list(MIXED)


# ----------------------------------------------------------------------------- ER / ERK

@pytest.mark.parametrize("fn", [er_densities, erk_densities])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.3, 0.5, 0.9])
def test_er_erk_hit_target_and_stay_below_one(fn, density):
    shapes = resnet18_shapes()
    dens = fn(shapes, density)
    assert list(dens) == list(shapes)
    assert_hits_target(shapes, dens, density)
    assert max(dens.values()) <= 1.0


def test_erk_resnet18_allocates_more_to_small_layers():
    shapes = resnet18_shapes()
    dens = erk_densities(shapes, 0.1)
    assert dens["conv1"] > dens["layer1.0.conv1"] > dens["layer4.1.conv2"]
    assert dens["layer2.0.downsample"] > dens["layer2.0.conv1"]     # 1x1 kernel: larger ratio


def test_erk_iterative_dense_exclusion():
    """A huge first layer (64 x 4096) goes dense at once; only after the re-solve does the second
    layer exceed 1 too. A single pass (clip at 1, no re-solve) would miss the target."""
    shapes = {"fc1": (64, 4096), "fc2": (128, 784), "fc3": (512, 1024)}
    dens = erk_densities(shapes, 0.8)
    assert dens["fc1"] == 1.0 and dens["fc2"] == 1.0 and dens["fc3"] < 1.0
    assert_hits_target(shapes, dens, 0.8)
    # the first solve alone leaves fc2 below 1, so only iteration makes it dense
    size = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    eps = 0.8 * sum(size.values()) / sum(raw[n] * size[n] for n in shapes)
    assert eps * raw["fc1"] > 1.0 and eps * raw["fc2"] < 1.0
    clipped = {n: min(1.0, eps * raw[n]) for n in shapes}
    assert kept(shapes, clipped) < 0.8 * sum(size.values()) - 1000


def test_erk_power_scale_zero_is_uniform():
    dens = erk_densities(resnet18_shapes(), 0.2, power_scale=0.0)
    assert all(d == pytest.approx(0.2, rel=1e-12) for d in dens.values())


def test_er_and_erk_differ_for_conv_agree_for_linear():
    er, erk = er_densities(MIXED, 0.2), erk_densities(MIXED, 0.2)
    assert any(abs(er[n] - erk[n]) > 1e-3 for n in MIXED)
    lin = {"a": (300, 784), "b": (100, 300), "c": (10, 100)}
    er, erk = er_densities(lin, 0.2), erk_densities(lin, 0.2)
    assert all(er[n] == pytest.approx(erk[n], rel=1e-12) for n in lin)


def test_er_uses_dims_zero_and_one():
    """ER ignores the kernel: two conv layers with the same (O, I) but other kernels get equal densities."""
    shapes = {"a": (32, 16, 3, 3), "b": (32, 16, 5, 5), "c": (64, 64, 3, 3)}
    dens = er_densities(shapes, 0.1)
    assert dens["a"] == pytest.approx(dens["b"], rel=1e-12)
    assert erk_densities(shapes, 0.1)["a"] > erk_densities(shapes, 0.1)["b"]


@pytest.mark.parametrize("fn", [er_densities, erk_densities])
def test_density_edges(fn):
    assert fn(MIXED, 0.0) == {n: 0.0 for n in MIXED}
    assert fn(MIXED, 1.0) == {n: 1.0 for n in MIXED}


@pytest.mark.parametrize("fn", [er_densities, erk_densities])
def test_overrides_counted_in_budget(fn):
    shapes = resnet18_shapes()
    dens = fn(shapes, 0.1, overrides={"fc": 1.0, "conv1": 0.5})
    assert dens["fc"] == 1.0 and dens["conv1"] == 0.5
    assert_hits_target(shapes, dens, 0.1)


@pytest.mark.parametrize("fn", [er_densities, erk_densities])
def test_exclude_not_counted_in_budget(fn):
    shapes = resnet18_shapes()
    dens = fn(shapes, 0.1, exclude=("conv1", "fc"))
    assert dens["conv1"] == 1.0 and dens["fc"] == 1.0
    pruned = [n for n in shapes if n not in ("conv1", "fc")]
    assert_hits_target(shapes, dens, 0.1, names=pruned)
    assert kept(shapes, dens) > 0.1 * sum(math.prod(s) for s in shapes.values())


def test_inputs_not_mutated():
    shapes, overrides, exclude = resnet18_shapes(), {"fc": 1.0}, ["conv1"]
    before = (copy.deepcopy(shapes), dict(overrides), list(exclude))
    erk_densities(shapes, 0.1, overrides=overrides, exclude=exclude)
    er_densities(shapes, 0.1, overrides=overrides, exclude=exclude)
    assert (shapes, overrides, exclude) == before


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("fn", [uniform_densities, er_densities, erk_densities])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_density_raises(fn, bad):
    with pytest.raises(ValueError, match="density"):
        fn(MIXED, bad)


@pytest.mark.parametrize("fn", [uniform_densities, er_densities, erk_densities])
def test_shape_errors(fn):
    with pytest.raises(ValueError, match="empty"):
        fn({}, 0.5)
    with pytest.raises(ValueError, match=r"'bias'.*\(10,\)"):
        fn({"w": (10, 5), "bias": (10,)}, 0.5)
    assert set(fn({"c1d": (4, 3, 3), "c3d": (4, 3, 2, 2, 2)}, 0.5)) == {"c1d", "c3d"}   # any rank >= 2
    with pytest.raises(ValueError, match="positive"):
        fn({"w": (0, 5)}, 0.5)
    with pytest.raises(TypeError):
        fn([(10, 5)], 0.5)


@pytest.mark.parametrize("fn", [uniform_densities, er_densities, erk_densities])
def test_exclude_errors(fn):
    with pytest.raises(ValueError, match="nope"):
        fn(MIXED, 0.5, exclude=["nope"])
    with pytest.raises(ValueError, match="every layer is excluded"):
        fn(MIXED, 0.5, exclude=list(MIXED))
    with pytest.raises(TypeError, match="single string"):
        fn(MIXED, 0.5, exclude="conv1")


@pytest.mark.parametrize("fn", [er_densities, erk_densities])
def test_override_errors(fn):
    with pytest.raises(ValueError, match="nope"):
        fn(MIXED, 0.5, overrides={"nope": 1.0})
    with pytest.raises(ValueError, match="override for layer 'fc'"):
        fn(MIXED, 0.5, overrides={"fc": 1.2})
    with pytest.raises(ValueError, match="both excluded"):
        fn(MIXED, 0.5, overrides={"fc": 1.0}, exclude=["fc"])
    # budget left negative: keeping the biggest layer dense exceeds a 10% target
    with pytest.raises(ValueError, match="infeasible"):
        fn(MIXED, 0.1, overrides={"conv3": 1.0})
    # the rest would need density > 1 even when dense
    with pytest.raises(ValueError, match="infeasible"):
        fn(MIXED, 0.95, overrides={"conv3": 0.0})
    with pytest.raises(TypeError):
        fn(MIXED, 0.5, overrides=[("fc", 1.0)])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_erk_bad_power_scale(bad):
    with pytest.raises(ValueError, match="power_scale"):
        erk_densities(MIXED, 0.5, power_scale=bad)


def test_dispatch():
    assert set(DISTRIBUTIONS) == {"uniform", "er", "erk"}
    assert layer_densities_for("erk", MIXED, 0.2, power_scale=0.0) == pytest.approx(uniform_densities(MIXED, 0.2))
    with pytest.raises(ValueError, match=r"'erkk'.*\['er', 'erk', 'uniform'\]"):
        layer_densities_for("erkk", MIXED, 0.2)


# ----------------------------------------------------------------------------- global magnitude

def test_global_magnitude_densities_hand_example():
    w = {"a": np.array([[1.0, 5.0]]), "b": np.array([[3.0, -4.0, 2.0, 0.0]])}
    assert global_magnitude_densities(w, 0.5) == {"a": 0.5, "b": 0.5}      # 5, -4, 3 kept
    tw = {k: torch.tensor(v) for k, v in w.items()}
    assert AD.global_magnitude_densities(tw, 0.5) == {"a": 0.5, "b": 0.5}
    assert global_magnitude_densities(w, 1.0) == {"a": 1.0, "b": 1.0}


# ----------------------------------------------------------------------------- accel specs

def _weights(shapes):
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def test_specs_resolve_like_reference():
    shapes = MIXED
    w = _weights(shapes)
    assert AD.erk(0.1).resolve(w) == erk_densities(shapes, 0.1)
    assert AD.er(0.1, overrides={"fc": 1.0}).resolve(w) == er_densities(shapes, 0.1, overrides={"fc": 1.0})
    assert AD.uniform(0.3, exclude=["fc"]).resolve(w) == uniform_densities(shapes, 0.3, exclude=["fc"])
    assert AD.erk(0.2, power_scale=0.5, exclude=["conv1"]).resolve(w) == \
        erk_densities(shapes, 0.2, power_scale=0.5, exclude=["conv1"])
    gm = AD.global_magnitude(0.2).resolve(w)
    assert gm == global_magnitude_densities({n: t.numpy() for n, t in w.items()}, 0.2)
    total = sum(t.numel() for t in w.values())
    assert sum(gm[n] * w[n].numel() for n in w) == math.floor(0.2 * total + 0.5)


def test_spec_validation_and_config():
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="density"):
            AD.erk(bad)
    with pytest.raises(ValueError, match="power_scale"):
        AD.erk(0.1, power_scale=-1)
    spec = AD.from_config("erk", 0.1, power_scale=1.0, exclude=["fc"])
    assert spec == AD.erk(0.1, exclude=("fc",))
    assert (spec.kind, spec.density, spec.options["exclude"]) == ("erk", 0.1, ("fc",))
    with pytest.raises(ValueError, match=r"'erkk'.*global_magnitude"):
        AD.from_config("erkk", 0.1)
    with pytest.raises(TypeError, match=r"power_scal.*allowed"):
        AD.from_config("erk", 0.1, power_scal=1.0)
    with pytest.raises(TypeError, match="exclude"):
        AD.from_config("global_magnitude", 0.1, exclude=["fc"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.density = 0.5
    with pytest.raises(ValueError, match="nope"):
        AD.erk(0.1, exclude=["nope"]).resolve(_weights(MIXED))
