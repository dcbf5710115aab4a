"""The models the benchmark times: ResNet weight-shape lists and a model made of given shapes."""
from __future__ import annotations

import torch.nn as nn

__all__ = ["resnet18_shapes", "resnet50_shapes", "ShapeNet"]


def resnet18_shapes(width: int = 64, num_classes: int = 10) -> list[tuple]:
    """Prunable weight shapes (Conv/Linear, PyTorch layout) of accel.models.ResNet18 (CIFAR form)."""
    from ..models import ResNet18
    model = ResNet18(in_channels=3, num_classes=num_classes, width=width)
    return [tuple(p.shape) for p in model.parameters() if p.dim() > 1]


def resnet50_shapes(width: int = 64, num_classes: int = 1000) -> list[tuple]:
    """Prunable weight shapes of the ImageNet ResNet-50 (accel.models.ResNet50, torchvision's
    layout): 7x7 stem, stages of 3/4/6/3 bottlenecks (1x1, 3x3, 1x1, 1x1 projection in each first
    block), fc. Built without allocating the model."""
    shapes = [(width, 3, 7, 7)]
    cin = width
    for mult, blocks in ((1, 3), (2, 4), (4, 6), (8, 3)):
        w = mult * width
        for b in range(blocks):
            shapes += [(w, cin, 1, 1), (w, w, 3, 3), (4 * w, w, 1, 1)]
            if b == 0:
                shapes.append((4 * w, cin, 1, 1))
            cin = 4 * w
    shapes.append((num_classes, cin))
    return shapes


class ShapeNet(nn.Module):
    """Conv (+ BatchNorm affine) / Linear layers with the given weight shapes, for timing a step or
    a mask update without a forward pass (the caller sets the gradients)."""

    def __init__(self, shapes):
        super().__init__()
        layers = []
        for s in shapes:
            if len(s) == 4:
                layers += [nn.Conv2d(s[1], s[0], s[2], bias=False), nn.BatchNorm2d(s[0])]
            else:
                layers.append(nn.Linear(s[1], s[0]))
        self.layers = nn.Sequential(*layers)
