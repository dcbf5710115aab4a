"""The input checks every ``accel.models`` network shares (``models.py`` and ``models_vit.py`` both
import them): ``to_images`` reshapes flat rows into square images and checks the channels;
``positive_int`` checks a size argument."""
from __future__ import annotations

import math

import numpy as np
import torch


def to_images(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """[B, C*H*W] with H = W -> [B, C, H, W]; 4-D input is passed through after a channel check."""
    if x.dim() == 2:
        side = math.isqrt(x.shape[1] // in_channels) if x.shape[1] % in_channels == 0 else 0
        if side * side * in_channels != x.shape[1]:
            raise ValueError(f"flat input of width {x.shape[1]} is not {in_channels} x H x H square images")
        x = x.reshape(x.shape[0], in_channels, side, side)
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"input must be [B, {in_channels}, H, W] (or flat [B, {in_channels}*H*W]), got {tuple(x.shape)}")
    return x


def positive_int(v, name: str) -> int:
    """``v`` as an int when it is a positive integer (not a bool); else a ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)
