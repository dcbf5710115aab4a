"""twinsparse accel: the PyTorch engine (Sparsifier, methods, densities, models, training, CLI)."""
from . import densities, methods
from .sparsifier import Sparsifier
from .cram_optimizer import CrAM

__all__ = ["Sparsifier", "CrAM", "methods", "densities"]
