"""Discovery of the prunable set of a torch model, and the dimensions of each prunable weight.

Candidates are every trainable parameter of rank >= 2 (``named_parameters`` order). Pruned by
default (``DEFAULT_TYPES``): the weights of Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and
MultiheadAttention's input projections (``in_proj_weight``, or ``q/k/v_proj_weight``; its
``out_proj`` is a Linear). Opt-in, through ``include``: embeddings, RNN / LSTM / GRU weights and
any other parameter of rank >= 2. ``include`` / ``exclude`` entries are names, module names,
fnmatch patterns, ``"first"`` / ``"last"`` (``reference.prunable``), module types
(``nn.Embedding``: the rank >= 2 weights held directly by modules of that type) or predicates
``f(name, param) -> bool``.

``reduction_dims`` / ``output_dims`` state, per layer type, which dimension of the weight the
layer's product sums over (the GEMM reduction dimension, along which N:M groups run) and which
indexes its outputs (the filters of channel pruning); tests/test_layer_zoo.py checks every row
against torch's own forward.
"""
from __future__ import annotations

import torch.nn as nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from twinsparse.reference.prunable import select_prunable

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
# module type -> the weight attributes pruned by default
DEFAULT_TYPES = {nn.Linear: ("weight",), **{t: ("weight",) for t in _CONV + _CONV_T},
                 nn.MultiheadAttention: _MHA_WEIGHTS}
PRUNABLE_TYPES = tuple(DEFAULT_TYPES)            # (kept for callers that test isinstance)
OPT_IN_TYPES = (nn.Embedding, nn.EmbeddingBag, nn.RNNBase)

# (output dim, reduction dim) of a weight by the type of the module that holds it:
#   Linear [O, I], MultiheadAttention projections [3E or E, E], RNN weight_ih / weight_hh / weight_hr
#   [gates*H, I]: y = x W^T sums over dim 1.  Conv [O, I/g, *k]: sums over input channels (dim 1) and
#   the kernel window.  ConvTranspose [I, O/g, *k]: each output sums over the input channels, dim 0,
#   and its outputs are indexed by dim 1.  Embedding [V, D]: a lookup sums over nothing; dim 1 is the
#   one a tied output projection (logits = h E^T) sums over.  Any other parameter: dims 0 and 1.
_DIMS_T = (1, 0)
_DIMS = (0, 1)


def _check_initialized(model: nn.Module) -> None:
    for mname, mod in model.named_modules():
        lazy = isinstance(mod, LazyModuleMixin) and mod.has_uninitialized_params()
        if lazy or any(isinstance(p, UninitializedParameter) for p in mod.parameters(recurse=False)):
            raise ValueError(f"module {mname or '<root>'!r} ({type(mod).__name__}) has uninitialized (lazy) "
                             f"parameters: their shapes are only known after the first forward pass. Run one "
                             f"forward pass (model(example_input)) before building the Sparsifier and the optimizer")


def candidates(model: nn.Module) -> dict:
    """Ordered dict name -> (owning module, attribute, Parameter) of every trainable parameter of
    rank >= 2. A parameter shared by several modules (tied weights) appears once, under the first
    name whose module prunes it by default (else its first name)."""
    _check_initialized(model)
    found: dict = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod.named_parameters(recurse=False):
            if p is not None and p.requires_grad and p.dim() >= 2:
                found.setdefault(id(p), []).append((f"{mname}.{attr}" if mname else attr, mod, attr, p))
    owners = {}
    for uses in found.values():
        name, mod, attr, p = next((u for u in uses if _is_default(u[1], u[2])), uses[0])
        owners.setdefault(name, (mod, attr, p))
    return owners


def _is_default(mod: nn.Module, attr: str) -> bool:
    return any(isinstance(mod, t) and attr in attrs for t, attrs in DEFAULT_TYPES.items())


def _as_name_test(entry, pool: dict):
    """A module type or an ``f(name, param)`` predicate as a ``name -> bool`` test; strings pass."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, type) and issubclass(entry, nn.Module):
        test = lambda n: isinstance(pool[n][0], entry)  # noqa: E731
        test.twinsparse_label = f"module type {entry.__name__}"
        return test
    if isinstance(entry, type):
        raise TypeError(f"a type in include/exclude must be an nn.Module subclass, got {entry.__name__}")
    if callable(entry):
        def test(n):
            got = entry(n, pool[n][2])
            if not isinstance(got, bool):
                raise TypeError(f"the include/exclude predicate {entry!r} must return True or False, got {got!r} "
                                f"for {n!r}")
            return got
        test.twinsparse_label = f"predicate {getattr(entry, '__name__', entry)!r}"
        return test
    return entry            # reference.prunable names the bad entry


def _entries(entries, pool):
    if entries is None or isinstance(entries, str) or not hasattr(entries, "__iter__"):
        return entries
    return [_as_name_test(e, pool) for e in entries]


def _check_sparse_grads(chosen: dict, pool: dict) -> None:
    for n in chosen:
        mod = pool[n][0]
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and mod.sparse:
            raise ValueError(f"{n!r} belongs to an {type(mod).__name__} with sparse=True, whose gradients are sparse "
                             f"tensors the Sparsifier cannot mask; build it with sparse=False or exclude it")


def discover_prunable(model: nn.Module, include=None, exclude=None) -> dict:
    """Ordered dict name -> Parameter of the weights to prune (see the module docstring)."""
    pool = candidates(model)
    default = [n for n, (mod, attr, _) in pool.items() if _is_default(mod, attr)]
    names = select_prunable(list(pool), _entries(include, pool), _entries(exclude, pool), default=default)
    chosen = {n: pool[n][2] for n in names}
    _check_sparse_grads(chosen, pool)
    return chosen


def layer_dims(model: nn.Module, names=None) -> dict:
    """name -> (output dim, reduction dim) of each prunable weight (default: ``discover_prunable``)."""
    pool = candidates(model)
    names = list(discover_prunable(model)) if names is None else list(names)
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise ValueError(f"{unknown} name no trainable weight of rank >= 2 of the model; those are {list(pool)}")
    return {n: _DIMS_T if isinstance(pool[n][0], _CONV_T) else _DIMS for n in names}


def reduction_dims(model: nn.Module, names=None) -> dict:
    """name -> the dimension each weight's layer sums over: the ``axis`` N:M groups run along
    (``accel.masks.nm_masks(weights, 2, 4, axis=reduction_dims(model))``)."""
    return {n: d[1] for n, d in layer_dims(model, names).items()}


def output_dims(model: nn.Module, names=None) -> dict:
    """name -> the dimension that indexes each weight's outputs (the filters of channel pruning)."""
    return {n: d[0] for n, d in layer_dims(model, names).items()}
