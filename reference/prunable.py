"""Selecting the prunable set by name (pure name logic; accel applies it to a torch model).

docs/methods.md §1.1: conv and linear weights by default. ``include`` / ``exclude`` take parameter
names (``fc.0.weight``), module names (``fc.0``), fnmatch patterns (``layer4.*``) or the tokens
``"first"`` / ``"last"`` (first / last prunable layer in registration order). A pattern that
matches nothing is an error, so a typo never silently changes what is pruned.
"""
from __future__ import annotations

from fnmatch import fnmatchcase


def _matches(pattern: str, pname: str, names: list) -> bool:
    if pattern == "first":
        return pname == names[0]
    if pattern == "last":
        return pname == names[-1]
    module = pname.rsplit(".", 1)[0]
    return fnmatchcase(pname, pattern) or fnmatchcase(module, pattern)


def _select(patterns, names: list, role: str) -> set:
    if isinstance(patterns, str):
        raise TypeError(f"{role} must be a list of names/patterns, got the string {patterns!r}")
    chosen = set()
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"{role} entries must be strings (names, patterns, 'first' or 'last'), got {pat!r}")
        hit = {n for n in names if _matches(pat, n, names)}
        if not hit:
            raise ValueError(f"{role} pattern {pat!r} matches no prunable weight; prunable weights are {names}")
        chosen |= hit
    return chosen


def select_prunable(names: list, include=None, exclude=None) -> list:
    """The candidate names to prune, in order, after include/exclude."""
    names = list(names)
    if not names:
        raise ValueError("the prunable set is empty: the model has no trainable Linear/Conv weights")
    keep = set(names) if not include else _select(include, names, "include")
    if exclude:
        keep -= _select(exclude, names, "exclude")
    out = [n for n in names if n in keep]
    if not out:
        raise ValueError(f"the prunable set is empty after include={include!r} exclude={exclude!r}; "
                         f"prunable weights are {names}")
    return out
