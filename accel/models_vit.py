"""A small Vision Transformer (Dosovitskiy et al. 2021, arXiv:2010.11929) whose attention
projections are prunable (``nn.MultiheadAttention`` input projections and ``out_proj``, the MLP
Linears, the patch embedding convolution and the head are all in the default prunable set).

Layout: a p x p stride-p convolution cuts the image into patches and embeds each in ``dim``
features; a learned class token and position embedding are added; ``depth`` pre-norm blocks
(LayerNorm -> multi-head self-attention -> residual, LayerNorm -> Linear-GELU-Linear -> residual);
a final LayerNorm and a Linear head on the class token. The patch size defaults to the divisor of
the image side that gives closest to 64 patches (4 for 28 x 28 and 32 x 32 inputs).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .model_inputs import positive_int, to_images


def default_patch(h: int, w: int, target: int = 64) -> int:
    """The divisor p of gcd(h, w) whose (h/p)(w/p) patches are closest to ``target`` (larger p on ties)."""
    g = math.gcd(h, w)
    return min((p for p in range(1, g + 1) if g % p == 0), key=lambda p: (abs(h * w // (p * p) - target), -p))


class Block(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """See the module docstring. ``image_size``: an int (square) or (H, W); both must divide by the
    patch size."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size=32, patch_size=None,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        h, w = positive_int(h, "image height"), positive_int(w, "image width")
        p = default_patch(h, w) if patch_size is None else positive_int(patch_size, "patch_size")
        if h % p or w % p:
            raise ValueError(f"patch_size={p} does not divide the image size {h} x {w}")
        dim, heads = positive_int(dim, "dim"), positive_int(heads, "heads")
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.image_size, self.patch_size = (h, w), p
        n = (h // p) * (w // p)
        self.patch = nn.Conv2d(self.in_channels, dim, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, positive_int(mlp_ratio, "mlp_ratio"))
                                      for _ in range(positive_int(depth, "depth"))])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, positive_int(num_classes, "num_classes"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_images(x, self.in_channels)
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(f"input images are {tuple(x.shape[2:])} but the ViT was built for {self.image_size}")
        t = self.patch(x).flatten(2).transpose(1, 2)                       # [B, N, dim]
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(t))[:, 0])
