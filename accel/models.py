"""Models for accel training: the MLP twin of ``reference.nn`` and small / CIFAR-style conv nets.

* ``MLP``: Linear -> BatchNorm1d (optional) -> ReLU per hidden layer, then a Linear; parameter
  names ``fc.i.*`` and ``bn.i.*`` match ``reference.nn.init_mlp`` one-to-one.
* ``SmallCNN``: three conv3x3-BN-ReLU stages (two 2x2 max-pools), global average pool, Linear.
* ``ResNet18``: He et al. 2016 (arXiv:1512.03385) BasicBlock ResNet-18 in the CIFAR form
  (3x3 stride-1 stem, no max-pool, stages [2, 2, 2, 2] with widths 64, 128, 256, 512).
* ``ResNet50``: the ImageNet form (7x7 stem, max-pool, Bottleneck stages [3, 4, 6, 3], 25.6M
  parameters), laid out as torchvision's.
* ``ViT`` (accel/models_vit.py): a small Vision Transformer whose attention projections are prunable.
* ``VGG16``: Simonyan & Zisserman 2015 (arXiv:1409.1556) configuration D with BatchNorm,
  CIFAR form (adaptive average pool to 1x1, one Linear head); max-pools use ``ceil_mode``
  so 28x28 inputs also reach 1x1.
Conv layers followed by BatchNorm carry no bias (BN's shift makes it redundant).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from twinsparse.reference.nn import check_sizes, buffer_names, param_names
from .model_inputs import positive_int, to_images
from .models_vit import ViT


# ----------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    """Linear -> BatchNorm1d (if ``batchnorm``) -> ReLU per hidden layer, final Linear -> logits."""

    def __init__(self, sizes=(784, 300, 100, 10), batchnorm: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.sizes = check_sizes(sizes)
        self.batchnorm = bool(batchnorm)
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        if self.batchnorm:
            self.bn = nn.ModuleList(nn.BatchNorm1d(s, eps=bn_eps, momentum=bn_momentum) for s in self.sizes[1:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != self.sizes[0]:
            raise ValueError(f"input has shape {tuple(x.shape)} ({h.shape[1]} features) but the MLP expects {self.sizes[0]}")
        for i, fc in enumerate(self.fc):
            h = fc(h)
            if i < len(self.fc) - 1:
                if self.batchnorm:
                    h = self.bn[i](h)
                h = F.relu(h)
        return h


def _infer_sizes(params) -> tuple[tuple[int, ...], bool]:
    n = 0
    while f"fc.{n}.weight" in params:
        n += 1
    if n == 0:
        raise ValueError(f"params has no 'fc.0.weight'; expected MLP keys, got {list(params)}")
    sizes = (int(params["fc.0.weight"].shape[1]),) + tuple(int(params[f"fc.{i}.weight"].shape[0]) for i in range(n))
    return sizes, "bn.0.weight" in params


def mlp_from_reference(params, buffers, sizes=None, batchnorm=None, bn_eps: float = 1e-5,
                       bn_momentum: float = 0.1) -> MLP:
    """An ``MLP`` holding exactly the given weights and buffers (NumPy arrays or tensors).

    dtype and device follow ``params['fc.0.weight']``; ``sizes``/``batchnorm`` default to what
    the keys and shapes say, and are checked against them when given.
    """
    got_sizes, got_bn = _infer_sizes(params)
    if sizes is not None and tuple(sizes) != got_sizes:
        raise ValueError(f"sizes={tuple(sizes)} but the params describe sizes={got_sizes}")
    if batchnorm is not None and bool(batchnorm) != got_bn:
        raise ValueError(f"batchnorm={batchnorm} but the params {'have' if got_bn else 'lack'} bn.* entries")
    w0 = torch.as_tensor(params["fc.0.weight"])
    model = MLP(got_sizes, got_bn, bn_eps=bn_eps, bn_momentum=bn_momentum).to(device=w0.device, dtype=w0.dtype)
    for what, src, names, dst in (("params", params, param_names(len(got_sizes) - 1, got_bn), dict(model.named_parameters())),
                                  ("buffers", buffers, buffer_names(len(got_sizes) - 1, got_bn), dict(model.named_buffers()))):
        if sorted(src) != sorted(names):
            raise ValueError(f"{what} keys {list(src)} do not match the MLP; expected {names}")
        with torch.no_grad():
            for k in names:
                v = torch.as_tensor(src[k], device=w0.device)
                if v.numel() != dst[k].numel():
                    raise ValueError(f"{what}[{k!r}] has shape {tuple(v.shape)}; expected {tuple(dst[k].shape)}")
                dst[k].copy_(v.reshape(dst[k].shape))
    return model


def mlp_to_reference(model: MLP):
    """(params, buffers) as NumPy dicts in ``named_parameters()`` / ``named_buffers()`` order, dtype kept."""
    if not isinstance(model, MLP):
        raise TypeError(f"model must be an accel.models.MLP, got {type(model).__name__}")
    params = {k: p.detach().cpu().numpy().copy() for k, p in model.named_parameters()}
    buffers = {k: b.detach().cpu().numpy().copy() for k, b in model.named_buffers()}
    return params, buffers


def mlp_loss_and_grads(params, buffers, x, y, train: bool = True, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
    """Twin of ``reference.nn.mlp_loss_and_grads`` by torch autograd: (loss, grads, new_buffers, logits)."""
    model = mlp_from_reference(params, buffers, bn_eps=bn_eps, bn_momentum=bn_momentum)
    model.train(bool(train))
    w0 = model.fc[0].weight
    x = torch.as_tensor(x, device=w0.device).to(w0.dtype)
    y = torch.as_tensor(y, device=w0.device)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y.to(w0.dtype) if y.is_floating_point() else y.long())
        loss.backward()
    grads = {k: p.grad.detach() for k, p in model.named_parameters()}
    new_buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    return loss.detach(), grads, new_buffers, logits.detach()


# ----------------------------------------------------------------------------- SmallCNN
def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """conv3x3(C->w)-BN-ReLU-maxpool2, conv3x3(w->2w)-BN-ReLU-maxpool2, conv3x3(2w->4w)-BN-ReLU,
    global average pool, Linear(4w -> num_classes); w = ``width`` (16 by default)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        w = positive_int(width, "width")
        self.features = nn.Sequential(*_conv_bn_relu(self.in_channels, w), nn.MaxPool2d(2),
                                      *_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
                                      *_conv_bn_relu(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * w, positive_int(num_classes, "num_classes"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(to_images(x, self.in_channels)))


# ----------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    """Two conv3x3-BN with a ReLU between, added to the shortcut, then ReLU (He et al. 2016, Fig. 2).
    The shortcut is a 1x1 conv + BN when the stride or the width changes, else the identity."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: conv3x3 stem (stride 1, no max-pool), 4 stages of 2 BasicBlocks with
    widths w, 2w, 4w, 8w (w = ``width`` = 64) and strides 1, 2, 2, 2, average pool, Linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        w = positive_int(width, "width")
        self.stem = nn.Sequential(*_conv_bn_relu(self.in_channels, w))
        blocks, cin = [], w
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            blocks += [BasicBlock(cin, mult * w, stride), BasicBlock(mult * w, mult * w, 1)]
            cin = mult * w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, positive_int(num_classes, "num_classes"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(to_images(x, self.in_channels)))
        return self.fc(torch.flatten(self.pool(h), 1))


# ----------------------------------------------------------------------------- ResNet-50 (ImageNet form)
class Bottleneck(nn.Module):
    """conv1x1 (width) - conv3x3 (width, carrying the stride) - conv1x1 (4 x width), each with BN,
    ReLU between, added to the shortcut, then ReLU: He et al. 2016, Fig. 5, with the stride on the
    3x3 convolution (the layout torchvision's ResNet-50 uses)."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ResNet50(nn.Module):
    """ImageNet-form ResNet-50 (He et al. 2016, Table 1): 7x7 stride-2 stem, 3x3 stride-2 max-pool,
    stages of 3 / 4 / 6 / 3 Bottlenecks with widths w, 2w, 4w, 8w (w = ``width`` = 64; strides 1,
    2, 2, 2), global average pool, Linear. 25.6M parameters at the defaults (1000 classes)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        w = positive_int(width, "width")
        self.conv1 = nn.Conv2d(self.in_channels, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], w
        for mult, blocks, stride in ((1, 3, 1), (2, 4, 2), (4, 6, 2), (8, 3, 2)):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, mult * w, stride if b == 0 else 1))
                cin = mult * w * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, positive_int(num_classes, "num_classes"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.maxpool(F.relu(self.bn1(self.conv1(to_images(x, self.in_channels)))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(torch.flatten(self.pool(h), 1))


# ----------------------------------------------------------------------------- VGG-16
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 (configuration D) with BatchNorm: conv3x3-BN-ReLU per number in ``VGG16_CONFIG``,
    MaxPool2d(2, ceil_mode=True) per "M", average pool to 1x1, Linear(512 -> num_classes).
    ``width`` scales every channel count by width/64 (64 = the paper's widths)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        w = positive_int(width, "width")
        layers, cin = [], self.in_channels
        for v in VGG16_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                cout = max(1, v * w // 64)
                layers += _conv_bn_relu(cin, cout)
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, positive_int(num_classes, "num_classes"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(to_images(x, self.in_channels))
        return self.classifier(torch.flatten(self.pool(h), 1))


# ----------------------------------------------------------------------------- factory
_BUILDERS = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18, "resnet50": ResNet50, "vgg16": VGG16, "vit": ViT}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, **kw) -> nn.Module:
    """A model by name (one of ``MODEL_NAMES``); keyword arguments go to its constructor.

    Defaults: "mlp" -> MLP((784, 300, 100, 10)); "cnn" -> SmallCNN for 1x28x28;
    "resnet18" / "vgg16" -> 3-channel CIFAR form (pass in_channels=1 for MNIST); "resnet50" ->
    the ImageNet form (3 x 224 x 224, 1000 classes); "vit" -> a small ViT for 3 x 32 x 32
    (``image_size``, ``in_channels``). ``accel.train.build_model_for`` infers the input channels
    and image size from the data.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, one of {MODEL_NAMES}; got {name!r}")
    key = name.lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed names: {', '.join(MODEL_NAMES)}")
    try:
        return _BUILDERS[key](**kw)
    except TypeError as e:
        raise TypeError(f"bad keyword arguments for model {name!r}: {e}") from None
