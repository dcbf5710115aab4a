"""Sparse-training methods, each a small class on the shared Sparsifier machinery."""
from .base import InitContext, Method
from .dense import Dense
from .static import Static

METHODS = {"dense": Dense, "static": Static}


def build(name: str, **options) -> Method:
    """Method by name, e.g. ``build("static", init="snip")``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {sorted(METHODS)}")
    return METHODS[name](**options)


__all__ = ["Method", "InitContext", "Dense", "Static", "METHODS", "build"]
