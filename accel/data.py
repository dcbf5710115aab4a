"""Data for the accel engine: every ``dataset`` of ``reference.datasets`` (ImageFolder through
torchvision), the input pipelines (host batches, or the training set resident on the GPU with the
CIFAR crop + flip done there), and ``LoaderData``, what a user's own DataLoader gives the training
loop (``accel.train.train_on_loader``).

Pipelines. Both yield the batches of ``reference.data.batch_order(n, seed, epoch)`` and augment them
with ``reference.datasets.augment_params(seed, epoch, n)``, so an epoch's batches are a function of
(seed, epoch) alone and a resumed run repeats them bit for bit. The host pipeline augments NumPy
batches with ``reference.datasets.crop_flip``; the device pipeline keeps the whole training set on
the GPU and cuts, crops and flips each batch there (``crop_flip``, this module: the twin, an exact
gather, so both pipelines give identical batches).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from twinsparse.reference import datasets as RD
from twinsparse.reference.config import RunConfig
from twinsparse.reference.data import N_PIXELS, Split, as_images, batch_order, class_balanced_subset, split_mnist5k
from .kernels.tables import upload

DTYPES = {"float32": torch.float32, "float64": torch.float64}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- datasets

def load_split(cfg: RunConfig) -> Split:
    """The train / holdout / test split of ``cfg.dataset`` as NumPy arrays (float32 inputs)."""
    if cfg.dataset == "mnist5k":
        split = split_mnist5k(test_per_class=cfg.test_per_class, holdout_per_class=cfg.holdout_per_class,
                              seed=cfg.split_seed)
        if cfg.train_budget is not None:
            x, y = class_balanced_subset(split.x_train, split.y_train, cfg.train_budget, seed=cfg.split_seed)
            split = Split(x_train=x, y_train=y, x_holdout=split.x_holdout, y_holdout=split.y_holdout,
                          x_test=split.x_test, y_test=split.y_test)
        return split
    if cfg.dataset == "imagefolder":
        return image_folder_split(cfg)
    return RD.load_split(cfg)


def image_folder_split(cfg: RunConfig) -> Split:
    """``data_root/train/<class>/*`` and ``data_root/val/<class>/*`` (or ``test``) read with torchvision,
    resized (shorter side) and center-cropped to ``image_size``, normalized with the ImageNet
    statistics, held in memory: meant for folders that fit in memory (larger ones: a DataLoader of
    your own through ``accel.train.train_on_loader``)."""
    try:
        from torchvision import datasets as tvd, transforms as T
    except ImportError:
        raise RD.DatasetError("dataset='imagefolder' reads images with torchvision, which is not installed; "
                              "`pip install torchvision`, or pass your own DataLoader to "
                              "accel.train.train_on_loader") from None
    root = cfg.data_root
    RD.image_folder_classes(root, "train")              # clear errors for a missing / empty folder
    test_part = RD.image_folder_test_part(root)
    tf = T.Compose([T.Resize(cfg.image_size), T.CenterCrop(cfg.image_size), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def read(part):
        ds = tvd.ImageFolder(f"{root}/{part}", transform=tf)
        xs = [ds[i][0].numpy() for i in range(len(ds))]
        return np.stack(xs).astype(np.float32), np.asarray(ds.targets, np.int64), ds.classes
    x, y, classes = read("train")
    xt, yt, classes_t = read(test_part)
    if classes_t != classes:
        raise RD.DatasetError(f"{root}/{test_part} has classes {classes_t} but {root}/train has {classes}")
    x_tr, y_tr, x_ho, y_ho = RD.holdout_split(x, y, cfg.holdout_per_class, cfg.split_seed)
    return RD._finish(x_tr, y_tr, x_ho, y_ho, xt, yt, cfg.train_budget, cfg.split_seed)


def data_info(cfg: RunConfig) -> tuple[tuple, int]:
    """(shape of one sample, number of classes) of ``cfg.dataset`` without loading the data (the
    files are checked: a missing CIFAR file is an error here, before anything is written)."""
    if cfg.dataset == "mnist5k":
        shape, k = (N_PIXELS,), 10
    elif cfg.dataset in RD.CIFAR:
        RD.cifar_folder(cfg.dataset, cfg.data_root)
        shape, k = (3, RD.CIFAR_SIDE, RD.CIFAR_SIDE), RD.CIFAR[cfg.dataset][4]
    elif cfg.dataset == "synthetic":
        shape, k = tuple(cfg.synthetic_shape), cfg.synthetic_classes
    elif cfg.dataset == "imagefolder":
        shape, k = (3, cfg.image_size, cfg.image_size), len(RD.image_folder_classes(cfg.data_root, "train"))
    else:
        shape, k = RD.tensors_info(cfg.data_root)
    if cfg.backend == "reference":
        shape = (math.prod(shape),)
    return shape, k


def flat(split: Split) -> Split:
    """Every sample as one row of features (the reference MLP's input)."""
    f = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    return Split(f(split.x_train), split.y_train, f(split.x_holdout), split.y_holdout, f(split.x_test), split.y_test)


def sample_shape(split: Split) -> tuple:
    """The shape of one input sample: (features,) or (C, H, W)."""
    return tuple(int(s) for s in split.x_train.shape[1:])


def image_shape(shape: tuple) -> tuple:
    """(C, H, W) of a sample shape: images as they are, MNIST-style flat rows of a square number of
    pixels as one channel; anything else is an error naming the shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return 1, side, side
    raise ValueError(f"a convolutional model needs image inputs [C, H, W] (or square grayscale rows), got samples "
                     f"of shape {shape}; use model='mlp' for feature vectors")


# ----------------------------------------------------------------------------- augmentation (twin)

def crop_flip(x: torch.Tensor, dy, dx, flip, pad: int, pad_value) -> torch.Tensor:
    """Twin of ``reference.datasets.crop_flip`` on a tensor (any device): the same gather, exact."""
    if x.dim() != 4:
        raise ValueError(f"crop_flip needs images [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = x.device
    dy, dx = torch.as_tensor(dy, device=dev).long(), torch.as_tensor(dx, device=dev).long()
    flip = torch.as_tensor(flip, device=dev).bool()
    pv = torch.as_tensor(pad_value, device=dev).to(x.dtype).reshape(-1)
    if pv.numel() != c:
        raise ValueError(f"crop_flip: pad_value must hold one value per channel ({c}), got {pv.numel()}")
    j = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], w - 1 - j[None, :], j[None, :]) + dx[:, None] - pad     # [B, W]
    rows = torch.arange(h, device=dev)[None, :] + dy[:, None] - pad                          # [B, H]
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    bi = torch.arange(b, device=dev)[:, None, None]
    got = x[bi, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]      # [B, H, W, C]
    return torch.where(valid[..., None], got, pv).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- pipelines

def model_input(cfg: RunConfig, x) -> torch.Tensor:
    """A NumPy batch as the model's input tensor (MNIST rows as [B, 1, 28, 28] images for conv
    models); tensors already on the device pass through."""
    if isinstance(x, torch.Tensor):
        return x
    if cfg.model != "mlp" and x.ndim == 2 and x.shape[1] == N_PIXELS:
        x = as_images(x)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=cfg.device, dtype=DTYPES[cfg.dtype])


def model_target(cfg: RunConfig, y) -> torch.Tensor:
    """int labels as int64, soft labels [B, K] in the model's dtype; device tensors pass through."""
    if isinstance(y, torch.Tensor):
        return y
    t = torch.from_numpy(np.ascontiguousarray(y)).to(cfg.device)
    return t.to(DTYPES[cfg.dtype]) if t.is_floating_point() else t


@dataclass(frozen=True)
class Augment:
    """Crop + flip settings of a run (None when the run does not augment)."""
    pad: int
    pad_value: np.ndarray

    @staticmethod
    def of(cfg: RunConfig, x: np.ndarray) -> Optional["Augment"]:
        if RD.augment_name(cfg) == "none":
            return None
        if x.ndim != 4:
            raise ValueError(f"augment='crop_flip' needs image data [n, C, H, W]; dataset={cfg.dataset!r} gives "
                             f"samples of shape {tuple(x.shape[1:])}")
        return Augment(RD.CROP_PAD, RD.pad_values(cfg, x.shape[1]))


def host_batches(cfg: RunConfig, x: np.ndarray, y: np.ndarray):
    """NumPy batches in ``batch_order``, crop + flipped on the host when the run augments."""
    aug = Augment.of(cfg, x)
    n, bs = len(y), cfg.batch_size

    def batches(epoch):
        order = batch_order(n, cfg.seed, epoch)
        params = RD.augment_params(cfg.seed, epoch, n, aug.pad) if aug else None
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            xb = x[idx]
            if aug:
                xb = RD.crop_flip(xb, params[0][idx], params[1][idx], params[2][idx], aug.pad, aug.pad_value)
            yield [(xb, y[idx])]
    return batches


def device_batches(cfg: RunConfig, x: np.ndarray, y: np.ndarray):
    """The same batches with the training set resident on the device: one copy of the data, one
    small upload of the epoch's order and augmentation draws, then every batch is an
    ``index_select`` (and a crop + flip gather) on the device, so a step waits for nothing on the host."""
    dev = torch.device(cfg.device)
    aug = Augment.of(cfg, x)
    X, Y = model_input(cfg, x), model_target(cfg, y)
    n, bs = len(y), cfg.batch_size

    def batches(epoch):
        order = upload(torch.from_numpy(batch_order(n, cfg.seed, epoch)), dev)
        if aug:
            dy, dx, fl = (upload(torch.from_numpy(np.ascontiguousarray(a)), dev)
                          for a in RD.augment_params(cfg.seed, epoch, n, aug.pad))
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            xb = X.index_select(0, idx)
            if aug:
                xb = crop_flip(xb, dy.index_select(0, idx), dx.index_select(0, idx), fl.index_select(0, idx),
                               aug.pad, aug.pad_value)
            yield [(xb, Y.index_select(0, idx))]
    return batches


def make_batches(cfg: RunConfig, x: np.ndarray, y: np.ndarray, resident: bool):
    """``device_batches`` when ``resident`` (a CUDA run without DDP), else ``host_batches``."""
    return (device_batches if resident else host_batches)(cfg, x, y)


# ----------------------------------------------------------------------------- your own DataLoader

@dataclass
class LoaderData:
    """What ``train_accel`` needs of the data when a DataLoader feeds it: the test set (or None)
    and the number of steps per epoch."""
    x_test: Optional[torch.Tensor]
    y_test: Optional[np.ndarray]
    n_train: Optional[int]
    steps_per_epoch: int
