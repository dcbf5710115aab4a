"""Datasets beyond MNIST-5k, read with NumPy into the ``reference.data.Split`` both backends consume.

``dataset`` (RunConfig) is one of ``DATASETS``:

* ``mnist5k``: the embedded default (``reference.data``).
* ``cifar10`` / ``cifar100``: the standard Python-pickle folders ``cifar-10-batches-py``
  (``data_batch_1..5``, ``test_batch``) and ``cifar-100-python`` (``train``, ``test``) under
  ``data_root`` (or ``data_root`` itself). Nothing is downloaded; a missing file is an error that
  names the files expected. The pickles are read with an unpickler that only rebuilds NumPy arrays
  and plain containers, so a tampered file cannot run code. Images become float32 [n, 3, 32, 32],
  normalized per channel with the usual CIFAR means and standard deviations; the test split is the
  official test set; ``holdout_per_class`` images per class are taken out of the training set
  (seeded by ``split_seed``), the rest is trained on (or a class-balanced ``train_budget`` of it).
* ``tensors``: an ``.npz`` file (``x_train``, ``y_train``, ``x_test``, ``y_test``, optionally
  ``x_holdout``, ``y_holdout``; read with ``allow_pickle=False``). uint8 inputs are scaled to
  [0, 1]; float inputs are used as they are. (Torch tensors: ``numpy.savez`` them, or give them
  to ``accel.train.train_on_loader`` in a DataLoader.)
* ``imagefolder``: ``data_root/train/<class>/*`` and ``data_root/val/<class>/*`` (or ``test``)
  through torchvision when it is installed (``accel.data``).
* ``synthetic``: class templates plus Gaussian noise, any ``synthetic_shape``, for tests and
  benchmarks; deterministic in ``split_seed``.

``crop_flip`` is the CIFAR augmentation (a random crop of the image padded by ``pad`` pixels, then a
horizontal flip), a pure function of explicit offsets and flags; ``augment_params(seed, epoch, n)``
draws them from ``default_rng([seed, epoch, AUGMENT_STREAM])``, so an epoch's augmentation is a
function of (seed, epoch) only and a resumed run repeats it. ``accel.data.crop_flip`` is its twin.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Optional

import numpy as np

from .data import Split, class_balanced_subset

DATASETS = ("mnist5k", "cifar10", "cifar100", "imagefolder", "tensors", "synthetic")
AUGMENTS = ("none", "crop_flip")
CROP_PAD = 4                 # pixels of padding before the random crop (the standard CIFAR recipe)
AUGMENT_STREAM = 7           # the third word of the augmentation generator's seed

CIFAR = {  # folder, training files, test file, label key, classes, per-channel mean and std
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_SIDE = 32


class DatasetError(ValueError):
    """A dataset that cannot be read: missing files, a bad layout or bad contents."""


# ----------------------------------------------------------------------------- CIFAR

class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes, str, numbers and NumPy arrays; refuses every other global."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file (only NumPy arrays and "
                                     f"plain containers are)")


def _read_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:           # any parse failure of a damaged or foreign file
        raise DatasetError(f"{path} is not a CIFAR batch file (a Python pickle of a dict): {e}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR batch file")
    return obj


def cifar_folder(name: str, data_root: Optional[str]) -> str:
    """The folder holding the CIFAR files: ``data_root/<standard folder>`` or ``data_root`` itself;
    an error naming every expected file when neither has them."""
    folder, train, test, *_ = CIFAR[name]
    if not data_root:
        raise DatasetError(f"dataset={name!r} needs data_root: the folder that holds {folder}/ (nothing is downloaded)")
    files = (*train, test)
    for cand in (os.path.join(data_root, folder), data_root):
        if all(os.path.isfile(os.path.join(cand, f)) for f in files):
            return cand
    cand = os.path.join(data_root, folder) if os.path.isdir(os.path.join(data_root, folder)) else data_root
    missing = [f for f in files if not os.path.isfile(os.path.join(cand, f))]
    raise DatasetError(f"dataset={name!r}: {cand} lacks {missing}; expected the standard Python version of "
                       f"{name.upper()} ({folder}/ with {', '.join(files)}) under data_root={data_root!r}. "
                       f"Nothing is downloaded: fetch and unpack it yourself")


def _cifar_arrays(path: str, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    if b"data" not in d or label_key not in d:
        raise DatasetError(f"{path} has keys {sorted(d)}; a CIFAR batch file has b'data' and {label_key!r}")
    x, y = np.asarray(d[b"data"]), np.asarray(d[label_key])
    side2 = CIFAR_SIDE * CIFAR_SIDE
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * side2:
        raise DatasetError(f"{path}: b'data' must be uint8 [n, {3 * side2}] (R, G, B planes of 32x32), got "
                           f"{x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= n_classes)):
        raise DatasetError(f"{path}: {label_key!r} must be {x.shape[0]} integer labels in 0..{n_classes - 1}")
    return x.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), y.astype(np.int64)


def normalize_images(x: np.ndarray, mean, std, dtype=np.float32) -> np.ndarray:
    """uint8 [n, C, H, W] -> (x / 255 - mean_c) / std_c, computed in float64, then cast."""
    m = np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    return ((x.astype(np.float64) / 255.0 - m) / s).astype(dtype)


def load_cifar(name: str, data_root: Optional[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as uint8 [n, 3, 32, 32] images and int64 labels."""
    folder = cifar_folder(name, data_root)
    _, train, test, key, k, *_ = CIFAR[name]
    parts = [_cifar_arrays(os.path.join(folder, f), key, k) for f in train]
    xt, yt = _cifar_arrays(os.path.join(folder, test), key, k)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt


# ----------------------------------------------------------------------------- splits

def holdout_split(x, y, holdout_per_class: int, seed: int):
    """(x_train, y_train, x_holdout, y_holdout): ``holdout_per_class`` samples of every class drawn
    with ``default_rng(seed)`` (class by class, in label order), the rest kept in order."""
    rng = np.random.default_rng(seed)
    hold = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if holdout_per_class >= rows.size:
            raise DatasetError(f"holdout_per_class={holdout_per_class} leaves no training sample of class {int(c)} "
                               f"({rows.size} samples)")
        hold.append(rows[rng.permutation(rows.size)[:holdout_per_class]])
    hold = np.sort(np.concatenate(hold)) if hold else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(y.size), hold)
    return x[keep], y[keep], x[hold], y[hold]


def _finish(x_tr, y_tr, x_ho, y_ho, x_te, y_te, train_budget, seed) -> Split:
    if train_budget is not None:
        if train_budget > y_tr.size:
            raise DatasetError(f"train_budget={train_budget} is larger than the training set ({y_tr.size} samples)")
        x_tr, y_tr = class_balanced_subset(x_tr, y_tr, train_budget, seed=seed)
    return Split(x_train=x_tr, y_train=y_tr, x_holdout=x_ho, y_holdout=y_ho, x_test=x_te, y_test=y_te)


def cifar_split(cfg) -> Split:
    """CIFAR-10/100 as a Split (see the module docstring)."""
    x, y, xt, yt = load_cifar(cfg.dataset, cfg.data_root)
    _, _, _, _, _, mean, std = CIFAR[cfg.dataset]
    dt = np.float32                  # as MNIST-5k: float32 inputs, cast to the run's dtype on the device
    x_tr, y_tr, x_ho, y_ho = holdout_split(x, y, cfg.holdout_per_class, cfg.split_seed)
    return _finish(normalize_images(x_tr, mean, std, dt), y_tr, normalize_images(x_ho, mean, std, dt), y_ho,
                   normalize_images(xt, mean, std, dt), yt, cfg.train_budget, cfg.split_seed)


def synthetic_arrays(shape, n_classes: int, n: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: label i % n_classes (then shuffled), x = template[label] + N(0, 1) noise, float64.
    The templates are drawn from ``default_rng(seed)``; the samples from ``default_rng([seed, stream])``."""
    templates = np.random.default_rng(seed).standard_normal((n_classes, *shape))
    rng = np.random.default_rng([seed, stream])
    y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    return templates[y] + rng.standard_normal((n, *shape)), y


def synthetic_split(cfg) -> Split:
    shape, k = tuple(cfg.synthetic_shape), cfg.synthetic_classes
    dt = np.float32
    x, y = synthetic_arrays(shape, k, cfg.synthetic_train + k * cfg.holdout_per_class, cfg.split_seed, 1)
    xt, yt = synthetic_arrays(shape, k, cfg.synthetic_test, cfg.split_seed, 2)
    x_tr, y_tr, x_ho, y_ho = holdout_split(x, y, cfg.holdout_per_class, cfg.split_seed)
    return _finish(x_tr.astype(dt), y_tr, x_ho.astype(dt), y_ho, xt.astype(dt), yt, cfg.train_budget, cfg.split_seed)


TENSOR_KEYS = ("x_train", "y_train", "x_test", "y_test")


def tensors_from_arrays(arrays: dict, source: str, cfg) -> Split:
    """A Split from a dict of arrays with ``TENSOR_KEYS`` (and optionally ``x_holdout``, ``y_holdout``)."""
    missing = [k for k in TENSOR_KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"{source} lacks {missing}; dataset='tensors' needs {list(TENSOR_KEYS)} "
                           f"(and optionally x_holdout, y_holdout)")
    dt = np.float32

    def xs(key):
        x = np.asarray(arrays[key])
        if x.dtype == np.uint8:
            return (x.astype(np.float64) / 255.0).astype(dt)
        if x.dtype.kind != "f" or not np.isfinite(x).all():
            raise DatasetError(f"{source}: {key} must hold finite floats or uint8 pixels, got {x.dtype}")
        return x.astype(dt)

    def ys(key, n):
        y = np.asarray(arrays[key])
        if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != n or (y.size and y.min() < 0):
            raise DatasetError(f"{source}: {key} must be {n} non-negative integer labels, got {y.dtype} {y.shape}")
        return y.astype(np.int64)
    x_tr, x_te = xs("x_train"), xs("x_test")
    if x_tr.shape[1:] != x_te.shape[1:] or x_tr.shape[0] == 0:
        raise DatasetError(f"{source}: x_train {x_tr.shape} and x_test {x_te.shape} must hold samples of one shape")
    y_tr, y_te = ys("y_train", x_tr.shape[0]), ys("y_test", x_te.shape[0])
    if "x_holdout" in arrays:
        x_ho = xs("x_holdout")
        y_ho = ys("y_holdout", x_ho.shape[0])
    else:
        x_ho, y_ho = x_tr[:0], y_tr[:0]
    return _finish(x_tr, y_tr, x_ho, y_ho, x_te, y_te, cfg.train_budget, cfg.split_seed)


def tensors_info(path: str) -> tuple[tuple, int]:
    """(sample shape, number of classes) of a ``tensors`` .npz file, reading x_train's header only."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as zf, zf.open("x_train.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape = read(f)[0]
        with np.load(path, allow_pickle=False) as z:
            y = np.asarray(z["y_train"])
    except Exception as e:
        raise DatasetError(f"dataset='tensors': cannot read x_train / y_train of data_root={path!r} (an .npz "
                           f"with x_train, y_train, x_test, y_test): {e}") from None
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.size == 0 or y.min() < 0:
        raise DatasetError(f"{path}: y_train must hold non-negative integer labels, got {y.dtype} {y.shape}")
    return tuple(int(s) for s in shape[1:]), int(y.max()) + 1


def tensors_split(cfg) -> Split:
    path = cfg.data_root
    if not path or not os.path.isfile(path):
        raise DatasetError(f"dataset='tensors' needs data_root = an existing .npz file; "
                           f"got data_root={path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DatasetError(f"{path} is not a NumPy .npz file: {e}") from None
    return tensors_from_arrays(arrays, path, cfg)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder_classes(root: str, part: str) -> list:
    """The class folders of ``root/part`` (sorted, as torchvision's ImageFolder), each with its files."""
    folder = os.path.join(root, part)
    if not os.path.isdir(folder):
        raise DatasetError(f"dataset='imagefolder' expects {folder}/<class>/<images>; {folder} is not a folder")
    out = []
    for c in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
        files = sorted(f.name for f in os.scandir(os.path.join(folder, c))
                       if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
        out.append((c, files))
    if not out or not any(files for _, files in out):
        raise DatasetError(f"{folder} holds no class folder with images ({', '.join(IMAGE_EXTENSIONS)})")
    return out


def image_folder_test_part(root: str) -> str:
    for part in ("val", "test"):
        if os.path.isdir(os.path.join(root, part)):
            return part
    raise DatasetError(f"dataset='imagefolder' expects {os.path.join(root, 'val')}/ (or test/) beside train/")


def train_size(cfg) -> int:
    """The number of training samples of ``cfg`` (what ``RunConfig.n_train`` reads from data_root)."""
    if cfg.train_budget is not None:
        return cfg.train_budget
    if cfg.dataset == "tensors":
        path = cfg.data_root
        try:
            with np.load(path, allow_pickle=False) as z:
                n = int(z["y_train"].shape[0])
        except Exception as e:
            raise DatasetError(f"dataset='tensors': cannot read y_train from data_root={path!r}: {e}") from None
        return n
    if cfg.dataset == "imagefolder":
        classes = image_folder_classes(cfg.data_root, "train")
        return sum(len(f) for _, f in classes) - cfg.holdout_per_class * len(classes)
    known = cfg.known_n_train()
    if known is None:
        raise DatasetError(f"the training-set size of dataset={cfg.dataset!r} is not known")
    return known


def load_split(cfg) -> Split:
    """The Split of ``cfg.dataset`` readable with NumPy alone (every dataset but mnist5k, read by
    ``reference.data``, and imagefolder, which ``accel.data.load_split`` adds through torchvision)."""
    if cfg.dataset in CIFAR:
        return cifar_split(cfg)
    if cfg.dataset == "synthetic":
        return synthetic_split(cfg)
    if cfg.dataset == "tensors":
        return tensors_split(cfg)
    raise DatasetError(f"dataset={cfg.dataset!r} is not read by reference.datasets; use accel.data.load_split")


# ----------------------------------------------------------------------------- augmentation

def augment_name(cfg) -> str:
    """``cfg.augment``, or when unset the dataset's usual one: crop_flip for CIFAR, none otherwise."""
    if getattr(cfg, "augment", None):
        return cfg.augment
    return "crop_flip" if cfg.dataset in CIFAR else "none"


def pad_values(cfg, channels: int) -> np.ndarray:
    """The value of the padding in normalized units (float32, as the data): a black pixel for CIFAR
    ((0 - mean) / std, as when padding before normalizing), 0 for other data."""
    if cfg.dataset in CIFAR:
        _, _, _, _, _, mean, std = CIFAR[cfg.dataset]
        return ((0.0 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)).astype(np.float32)
    return np.zeros(channels, np.float32)


def augment_params(seed: int, epoch: int, n: int, pad: int = CROP_PAD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample (by index in the training set): crop offsets dy, dx in [0, 2 pad] and a flip flag,
    from ``default_rng([seed, epoch, AUGMENT_STREAM])``."""
    rng = np.random.default_rng([seed, epoch, AUGMENT_STREAM])
    off = rng.integers(0, 2 * pad + 1, size=(2, n))
    return off[0].astype(np.int64), off[1].astype(np.int64), rng.random(n) < 0.5


def crop_flip(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, pad: int,
              pad_value: np.ndarray) -> np.ndarray:
    """Images [B, C, H, W] padded by ``pad`` pixels of ``pad_value[c]``, cropped back to H x W at
    offset (dy[b], dx[b]) of the padded image, then flipped left-right where ``flip[b]``:
    out[b, c, i, j] = padded[b, c, i + dy[b], j' + dx[b]] with j' = W - 1 - j if flip[b] else j."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"crop_flip needs images [B, C, H, W], got shape {x.shape}")
    b, c, h, w = x.shape
    dy, dx, flip = np.asarray(dy), np.asarray(dx), np.asarray(flip, bool)
    for name, v in (("dy", dy), ("dx", dx)):
        if v.shape != (b,) or (b and (v.min() < 0 or v.max() > 2 * pad)):
            raise ValueError(f"crop_flip: {name} must hold {b} offsets in [0, {2 * pad}]")
    if flip.shape != (b,):
        raise ValueError(f"crop_flip: flip must hold {b} flags, got shape {flip.shape}")
    pv = np.asarray(pad_value, dtype=x.dtype).reshape(-1)
    if pv.shape != (c,):
        raise ValueError(f"crop_flip: pad_value must hold one value per channel ({c}), got shape {pv.shape}")
    cols = np.where(flip[:, None], w - 1 - np.arange(w)[None, :], np.arange(w)[None, :])
    rows = np.arange(h)[None, :] + dy[:, None] - pad                       # [B, H] rows of x
    cols = cols + dx[:, None] - pad                                         # [B, W] columns of x
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    bi = np.arange(b)[:, None, None]
    got = x[bi, :, np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]   # [B, H, W, C]
    out = np.where(valid[..., None], got, pv[None, None, None, :])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
