"""Selecting the prunable set by name (pure name logic; accel applies it to a torch model).

docs/methods.md §1.1: by default the weights of the layer types that compute a product of weights and
inputs (``accel.prunable.DEFAULT_TYPES``). ``include`` / ``exclude`` take parameter names
(``fc.0.weight``), module names (``fc.0``), fnmatch patterns (``layer4.*``), the tokens
``"first"`` / ``"last"`` (first / last weight of the default set, in registration order), or a
callable ``name -> bool`` (accel turns module types and ``(name, param)`` predicates into one).

``names`` are all the candidates (every weight that may be pruned, in order); ``default`` the
subset pruned when ``include`` is empty (None: all of them). An ``include`` entry selects among
all candidates, so it can opt in a weight that is not pruned by default (an embedding, an RNN
weight). A pattern that matches no candidate is an error, so a typo never silently changes what
is pruned.
"""
from __future__ import annotations

from fnmatch import fnmatchcase


def _matches(pattern: str, pname: str, order: list) -> bool:
    if pattern == "first":
        return bool(order) and pname == order[0]
    if pattern == "last":
        return bool(order) and pname == order[-1]
    module = pname.rsplit(".", 1)[0]
    return fnmatchcase(pname, pattern) or fnmatchcase(module, pattern)


def _describe(entry) -> str:
    return repr(entry) if isinstance(entry, str) else getattr(entry, "twinsparse_label", None) or repr(entry)


def _select(patterns, names: list, default: list, role: str) -> set:
    if isinstance(patterns, str) or not hasattr(patterns, "__iter__"):
        raise TypeError(f"{role} must be a list of names/patterns, got {patterns!r}")
    chosen = set()
    for pat in patterns:
        if isinstance(pat, str):
            hit = {n for n in names if _matches(pat, n, default)}
        elif callable(pat):
            hit = {n for n in names if pat(n)}
        else:
            raise TypeError(f"{role} entries must be strings (names, patterns, 'first' or 'last'), module types or "
                            f"predicates, got {pat!r}")
        if not hit:
            raise ValueError(f"{role} {'pattern' if isinstance(pat, str) else 'entry'} {_describe(pat)} matches no "
                             f"prunable weight; prunable weights are {names}")
        chosen |= hit
    return chosen


def select_prunable(names: list, include=None, exclude=None, default=None) -> list:
    """The candidate names to prune, in order, after include/exclude (see the module docstring)."""
    names = list(names)
    if not names:
        raise ValueError("the prunable set is empty: the model has no trainable weight of rank >= 2 "
                         "(Linear, Conv, attention projections, embeddings, RNN weights)")
    default = names if default is None else [n for n in names if n in set(default)]
    if include:
        keep = _select(include, names, default, "include")
    elif default:
        keep = set(default)
    else:
        raise ValueError(f"none of the model's weights is pruned by default (Linear, Conv, ConvTranspose and "
                         f"attention projections are); select some with include=[...]: the weights of rank >= 2 "
                         f"are {names}")
    if exclude:
        keep -= _select(exclude, names, default, "exclude")
    out = [n for n in names if n in keep]
    if not out:
        raise ValueError(f"the prunable set is empty after include={include!r} exclude={exclude!r}; "
                         f"prunable weights are {names}")
    return out
