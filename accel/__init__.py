"""twinsparse accel: the PyTorch engine (Sparsifier, methods, densities, models, training, CLI)."""
from . import densities, methods
from .sparsifier import Sparsifier

__all__ = ["Sparsifier", "methods", "densities"]
