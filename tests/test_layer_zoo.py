"""Every weight a researcher may want sparse: discovery by type, name and predicate; densities and
mask operators for any rank; the output / reduction dimension of each layer type checked against
torch's own forward; 2:4 masks of an attention projection checked against torch's semi-structured
layout rules."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import twinsparse.accel.masks as AM
import twinsparse.reference.masks as RM
from twinsparse.accel import densities as D
from twinsparse.accel.prunable import discover_prunable, output_dims, reduction_dims
from twinsparse.accel.sparsifier import Sparsifier


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.c1 = nn.Conv1d(16, 8, 3, padding=1)
        self.c3 = nn.Conv3d(8, 8, 2)
        self.ct = nn.ConvTranspose2d(8, 4, 3)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.lstm = nn.LSTM(16, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.fc = nn.Linear(8 + 4 + 8, 5)
        nn.init.uniform_(self.emb.weight, -0.2, 0.2)       # the scale of the other layers (global magnitude)

    def forward(self, tokens):
        h = self.emb(tokens)                                   # [B, T, 16]
        a, _ = self.attn(h, h, h)
        c = self.c1(a.transpose(1, 2))                         # [B, 8, T]
        b, t = c.shape[0], c.shape[2]
        v = self.c3(c.reshape(b, 8, 1, 1, t).expand(b, 8, 2, 2, t).contiguous())
        up = self.ct(v.mean(-1))                               # [B, 4, ., .]
        r, _ = self.lstm(a)
        g, _ = self.gru(r)
        return self.fc(torch.cat([c.mean(-1), up.mean((-1, -2)), g[:, -1]], 1))


DEFAULT = ["c1.weight", "c3.weight", "ct.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"]


def _zoo(seed=0):
    torch.manual_seed(seed)
    return Zoo()


# ----------------------------------------------------------------------------- discovery

def test_default_set_and_opt_in_by_type_pattern_and_predicate():
    m = _zoo()
    assert list(discover_prunable(m)) == DEFAULT
    assert list(discover_prunable(m, include=["*in_proj_weight"])) == ["attn.in_proj_weight"]
    assert list(discover_prunable(m, include=[nn.Embedding, nn.LSTM])) == \
        ["emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    got = discover_prunable(m, include=[lambda name, p: p.dim() == 2 and p.shape[0] % 8 == 0])
    assert list(got) == [n for n, p in m.named_parameters() if p.dim() == 2 and p.shape[0] % 8 == 0]
    assert "gru.weight_hh_l0" in got and "emb.weight" in got
    assert list(discover_prunable(m, exclude=[nn.MultiheadAttention, "first"])) == \
        ["c3.weight", "ct.weight", "attn.out_proj.weight", "fc.weight"]


def test_discovery_errors_name_the_bad_entry():
    m = _zoo()
    with pytest.raises(ValueError, match="module type GRU matches no prunable weight"):
        discover_prunable(nn.Sequential(nn.Linear(3, 3)), include=[nn.GRU])
    with pytest.raises(TypeError, match="must return True or False"):
        discover_prunable(m, include=[lambda n, p: 1])
    with pytest.raises(TypeError, match="nn.Module subclass"):
        discover_prunable(m, include=[int])
    with pytest.raises(ValueError, match="pruned by default.*include"):
        discover_prunable(nn.Sequential(nn.Embedding(4, 4)))
    with pytest.raises(ValueError, match="sparse=True"):
        discover_prunable(nn.Sequential(nn.Embedding(4, 4, sparse=True), nn.Linear(4, 2)), include=[nn.Embedding])


def test_lazy_modules_get_a_clear_error_until_their_first_forward():
    m = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"module '0' \(LazyLinear\).*forward pass"):
        Sparsifier(m, opt, density=0.5)
    m(torch.randn(2, 5))                                       # shapes are known now
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert list(Sparsifier(m, opt, density=0.5).params) == ["0.weight", "2.weight"]


def test_tied_embedding_and_head_are_one_default_weight_under_the_head_name():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight
    assert list(discover_prunable(LM())) == ["head.weight"]


# ----------------------------------------------------------------------------- densities and training

RULES = [0.3, D.uniform(0.3), D.er(0.3), D.erk(0.3), D.erk(0.3, power_scale=0.5), D.global_magnitude(0.6)]


@pytest.mark.parametrize("density", RULES, ids=["float", "uniform", "er", "erk", "erk-p0.5", "global"])
def test_every_density_rule_trains_the_zoo_with_pruned_weights_exactly_zero(density):
    m = _zoo()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2)
    sp = Sparsifier(m, opt, density=density, method="set" if isinstance(density, float) else "static",
                    include=[*DEFAULT, nn.Embedding, nn.LSTM, nn.GRU], total_steps=4)
    assert {p.dim() for p in sp.params.values()} == {2, 3, 4, 5}
    tokens = torch.randint(0, 32, (3, 6))
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(m(tokens), torch.tensor([0, 1, 2])).backward()
        sp.step()
    total = sum(p.numel() for p in sp.params.values())
    kept = sum(int(sp.masks[n].sum()) for n in sp.params)
    for n, p in sp.params.items():
        assert not p[~sp.masks[n]].any(), n                   # pruned weights stay exactly 0
        assert int(sp.masks[n].sum()) == math.floor(sp.densities[n] * p.numel() + 0.5), n
    assert abs(kept / total - (0.6 if isinstance(density, D.DensitySpec) and density.kind == "global_magnitude"
                               else 0.3)) < 0.01


def test_erk_accepts_any_rank_and_rejects_rank_one():
    shapes = {"conv1d": (8, 4, 3), "conv3d": (8, 8, 2, 2, 2), "attn": (48, 16)}
    got = D.erk_densities(shapes, 0.2)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    eps = 0.2 * sum(math.prod(s) for s in shapes.values()) / sum(raw[n] * math.prod(s) for n, s in shapes.items())
    assert got == pytest.approx({n: eps * raw[n] for n in shapes})
    with pytest.raises(ValueError, match=r"'bias' has shape \(8,\).*rank >= 2"):
        D.erk_densities({"bias": (8,), **shapes}, 0.2)


# ----------------------------------------------------------------------------- dims vs torch semantics

def _probe(fwd, weight, x, in_dim_of_x, c, out_index):
    """Feed an input that is non-zero only at input channel ``c``; return the indices of the weight
    entries that receive gradient from the outputs selected by ``out_index``."""
    x = torch.zeros_like(x)
    idx = [slice(None)] * x.dim()
    idx[in_dim_of_x] = c
    x[tuple(idx)] = torch.rand(x[tuple(idx)].shape) + 0.5
    weight.grad = None
    fwd(x)[out_index].sum().backward()
    return weight.grad.nonzero()


CASES = [  # (module, forward, input, channel dim of the input, output index builder)
    (lambda: nn.Linear(6, 8), lambda m: m, (2, 6), 1, lambda o: (slice(None), o)),
    (lambda: nn.Conv1d(4, 8, 3), lambda m: m, (2, 4, 7), 1, lambda o: (slice(None), o)),
    (lambda: nn.Conv2d(4, 8, 3, groups=1), lambda m: m, (2, 4, 6, 6), 1, lambda o: (slice(None), o)),
    (lambda: nn.Conv3d(4, 8, 2), lambda m: m, (2, 4, 3, 3, 3), 1, lambda o: (slice(None), o)),
    (lambda: nn.ConvTranspose1d(4, 8, 3), lambda m: m, (2, 4, 5), 1, lambda o: (slice(None), o)),
    (lambda: nn.ConvTranspose2d(4, 8, 3, stride=2), lambda m: m, (2, 4, 3, 3), 1, lambda o: (slice(None), o)),
    (lambda: nn.ConvTranspose3d(4, 8, 2), lambda m: m, (2, 4, 2, 2, 2), 1, lambda o: (slice(None), o)),
]


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: type(CASES[i][0]()).__name__)
def test_output_and_reduction_dims_match_torch_forward(case):
    make, fwd, shape, in_dim, out_ix = CASES[case]
    torch.manual_seed(case)
    mod = nn.Sequential(make())
    name = "0.weight"
    o_dim, r_dim = output_dims(mod)[name], reduction_dims(mod)[name]
    for c, o in ((1, 5), (3, 2)):
        hits = _probe(fwd(mod), mod[0].weight, torch.zeros(shape), in_dim, c, out_ix(o))
        assert len(hits) and set(hits[:, r_dim].tolist()) == {c}, "the layer sums over input channels along this dim"
        assert set(hits[:, o_dim].tolist()) == {o}, "this dim indexes the outputs"


def test_attention_projection_dims_match_torch_forward():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    with torch.no_grad():                 # one key: softmax = 1, so the output is out_proj(W_v x + b_v)
        mha.out_proj.weight.copy_(torch.eye(8))
    mod = nn.Sequential(mha)
    name = "0.in_proj_weight"
    assert (output_dims(mod)[name], reduction_dims(mod)[name]) == (0, 1)
    for c, o in ((1, 5), (6, 2)):
        hits = _probe(lambda x: mha(x, x, x)[0], mha.in_proj_weight, torch.zeros(1, 3, 8), 2, c,
                      (slice(None), slice(None), o))
        assert set(hits[:, 1].tolist()) == {c} and set(hits[:, 0].tolist()) == {16 + o}   # the value rows


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_rnn_input_weights_sum_over_dim_one(cls):
    torch.manual_seed(0)
    rnn = cls(6, 4)
    mod = nn.Sequential(rnn)
    dims = reduction_dims(mod, ["0.weight_ih_l0", "0.weight_hh_l0"])
    assert dims == {"0.weight_ih_l0": 1, "0.weight_hh_l0": 1}
    hits = _probe(lambda x: rnn(x)[0], rnn.weight_ih_l0, torch.zeros(1, 2, 6), 2, 3, (slice(None), slice(None), 1))
    assert set(hits[:, 1].tolist()) == {3}
    assert {r % 4 for r in hits[:, 0].tolist()} == {1}       # the gates of hidden unit 1


def test_embedding_dims_are_those_of_its_tied_output_projection():
    emb = nn.Embedding(10, 6)
    mod = nn.Sequential(emb)
    assert (output_dims(mod, ["0.weight"]), reduction_dims(mod, ["0.weight"])) == ({"0.weight": 0}, {"0.weight": 1})
    hits = _probe(lambda h: F.linear(h, emb.weight), emb.weight, torch.zeros(2, 6), 1, 4, (slice(None), 7))
    assert hits.tolist() == [[7, 4]]


# ----------------------------------------------------------------------------- N:M and channels per layer type

def test_nm_masks_of_the_zoo_group_along_each_reduction_dim_on_both_backends():
    m = _zoo()
    names = [*DEFAULT, "emb.weight", "lstm.weight_ih_l0"]
    ws = {n: p.detach() for n, p in m.named_parameters() if n in names}
    axes = reduction_dims(m, list(ws))
    assert axes["ct.weight"] == 0 and all(v == 1 for n, v in axes.items() if n != "ct.weight")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        acc, dense = AM.nm_masks(ws, 2, 4, axis=axes)
        ref, dense_r = RM.nm_masks({n: w.numpy() for n, w in ws.items()}, 2, 4, axis=axes)
    assert dense == dense_r == []
    for n, w in ws.items():
        np.testing.assert_array_equal(acc[n].numpy(), ref[n], err_msg=n)
        groups = acc[n].movedim(axes[n], -1).reshape(-1, 4)
        assert (groups.sum(1) == 2).all(), n                   # 2 of every 4 along the reduction dim
        kept = w.abs().movedim(axes[n], -1).reshape(-1, 4)
        lo = torch.where(groups, kept, torch.inf).min(1).values
        hi = torch.where(groups, -torch.inf, kept).max(1).values
        assert (lo >= hi).all(), n                             # the larger magnitudes of each group


def test_channel_masks_of_a_conv_transpose_remove_output_channels():
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(6, 4, 3)
    mod = nn.Sequential(ct)
    dims = output_dims(mod)
    mask = AM.channel_masks({"0.weight": ct.weight.detach()}, {"0.weight": 0.5}, dims)["0.weight"]
    ref = RM.channel_masks({"0.weight": ct.weight.detach().numpy()}, {"0.weight": 0.5}, dims)["0.weight"]
    np.testing.assert_array_equal(mask.numpy(), ref)
    with torch.no_grad():
        ct.weight.mul_(mask)
    y = ct(torch.randn(2, 6, 5, 5))
    dead = [o for o in range(4) if not mask[:, o].any()]
    assert len(dead) == 2
    for o in range(4):                                         # a removed channel outputs its bias only
        assert torch.equal(y[:, o], torch.full_like(y[:, o], float(ct.bias[o].detach()))) == (o in dead)


# ----------------------------------------------------------------------------- 2:4 and torch's semi-structured layout

def _semi_structured_layout_ok(w: torch.Tensor) -> bool:
    """The checks ``torch.sparse.to_sparse_semi_structured`` makes before compressing (dims,
    contiguity, dtype and the minimum shape of torch's own table), and an exact round trip through
    torch's CUTLASS compression (which keeps at most 2 values of every 4 along a row)."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS as CUTLASS
    from torch.sparse._semi_structured_conversions import (sparse_semi_structured_from_dense_cutlass,
                                                           sparse_semi_structured_to_dense_cutlass)
    if w.dim() != 2 or not w.is_contiguous() or w.dtype not in CUTLASS._DTYPE_SHAPE_CONSTRAINTS:
        return False
    c = CUTLASS._DTYPE_SHAPE_CONSTRAINTS[w.dtype]
    rows, cols = w.shape
    if rows < c.sparse_min_rows or rows % c.sparse_min_rows or cols < c.sparse_min_cols or cols % c.sparse_min_cols:
        return False
    packed, meta = sparse_semi_structured_from_dense_cutlass(w)
    return torch.equal(sparse_semi_structured_to_dense_cutlass(packed, meta), w)


def test_two_four_masks_of_an_attention_projection_fit_the_semi_structured_layout():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4)
    mod = nn.Sequential(mha)
    names = ["0.in_proj_weight", "0.out_proj.weight"]
    ws = {n: p.detach() for n, p in mod.named_parameters() if n in names}
    masks, dense = AM.nm_masks(ws, 2, 4, axis=reduction_dims(mod, names))
    assert dense == []
    for n in names:
        w = (ws[n] * masks[n]).half()
        assert _semi_structured_layout_ok(w), n
        wrong = (ws[n] * AM.nm_mask(ws[n], 2, 4, axis=0)).half()     # groups along the output dim instead
        assert not _semi_structured_layout_ok(wrong), n


@pytest.mark.gpu
def test_two_four_attention_projection_compresses_on_cuda():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs an NVIDIA GPU with compute capability >= 8.0")
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4).cuda().half()
    mod = nn.Sequential(mha)
    w = mha.in_proj_weight.detach()
    mask = AM.nm_masks({"0.in_proj_weight": w}, 2, 4, axis=reduction_dims(mod, ["0.in_proj_weight"]))[0]
    dense = (w * mask["0.in_proj_weight"]).contiguous()
    sparse = torch.sparse.to_sparse_semi_structured(dense)
    x = torch.randn(128, 64, device="cuda", dtype=torch.half)
    torch.testing.assert_close(F.linear(x, sparse), F.linear(x, dense), rtol=1e-2, atol=1e-2)
