"""twinsparse: sparse neural-network training, every method written twice.

The three parts install under this name (nothing generic goes into site-packages):

* ``twinsparse.reference``: the readable NumPy twin (no torch needed to import it);
* ``twinsparse.accel``: the PyTorch engine for real training (CPU or CUDA);
* ``twinsparse.conformance``: the registry that proves the two agree.

``import twinsparse`` gives the public API of the engine, loaded on first use so that importing
``twinsparse.reference`` alone never imports torch::

    from twinsparse import Sparsifier, densities, methods, models
"""
from __future__ import annotations

import importlib
import os

# In a source checkout the parts are the sibling folders reference/, accel/ and conformance/ of this
# one; an installed copy has them inside this folder (pyproject.toml maps them there).
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_HERE)
if not os.path.isdir(os.path.join(_HERE, "accel")) and all(
        os.path.isfile(os.path.join(_CHECKOUT, part, "__init__.py")) for part in ("reference", "accel", "conformance")):
    __path__.append(_CHECKOUT)  # noqa: F821 (a package's __path__)

__version__ = "0.1.0"

_PUBLIC = {  # name -> (module, attribute or None for the module itself)
    "Sparsifier": ("twinsparse.accel.sparsifier", "Sparsifier"),
    "CrAM": ("twinsparse.accel.cram_optimizer", "CrAM"),
    "densities": ("twinsparse.accel.densities", None),
    "methods": ("twinsparse.accel.methods", None),
    "models": ("twinsparse.accel.models", None),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'twinsparse' has no attribute {name!r}; the public API is {__all__}")
    module, attr = _PUBLIC[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
