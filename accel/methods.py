"""Sparse-training methods for the Sparsifier. They are written once, backend-agnostic, in
``reference.methods`` and call the twin operators through ``accel.ops`` here."""
from twinsparse.reference.methods import (ACDC, DSTEE, GMP, INITS, METHODS, SET, SNFS, Dense, DropGrow, GraNet,  # noqa: F401
                               InitContext, Method, Preset, RigL, Static, SupTickets, Update, build)

__all__ = ["Method", "InitContext", "Update", "DropGrow", "Dense", "Static", "SET", "RigL", "SNFS", "GraNet",
           "DSTEE", "GMP", "ACDC", "SupTickets", "Preset", "METHODS", "INITS", "build"]
