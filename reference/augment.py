"""Data augmentations for the D²-Sparse views T1 / T2 ([D2] §3 "Warm-up", App. B.2.1).

[D2] builds two transformed copies D1 = T1(D), D2 = T2(D) "using different spatial augmentation
strategies"; App. B.2.1 compares CutMix/CutMix, AugMix/AugMix "with varying strengths" (the default)
and CutMix/AugMix. The strengths are NOT GIVEN (docs/methods.md §5.1); the presets here are
``AUGMIX_WEAK`` (severity 1, width 2) and ``AUGMIX_STRONG`` (severity 3, width 3).

This is shared data-pipeline code (NumPy + SciPy only), deterministic given an explicit
``np.random.Generator``; the accel engine wraps its NumPy output in tensors.

Layout. Every batch function takes a NORMALIZED batch ``x`` (``(pixel - 0.1307) / 0.3081``, see
``reference/data.py``) of shape [B, 784] or [B, 1, 28, 28], float32 or float64, and int labels
``y`` [B]; it returns ``(x_aug, y_soft)`` with ``x_aug`` in the layout and dtype of ``x`` and
``y_soft`` [B, n_classes] (dtype of ``x``) with rows summing to 1: one-hot for AugMix and "none",
mixed for CutMix. Inputs are never modified.

Primitive ops work on ONE pixel-space image [H, W] with values in [0, 1] (the batch functions undo
the normalization, clip to [0, 1], apply the ops, and normalize again). Each takes a magnitude in
[0, 1] scaled to the op's range; geometric ops also take a ``sign`` (+1 or -1). Ranges follow the
AugMix paper's operation list: rotate up to 30 degrees, shear up to 0.3, translate up to 1/3 of the
image side, solarize threshold from 256 (nothing) down to 0 (everything) on the 8-bit scale,
posterize from 4 bits down to 1 bit (AugMix goes to 0 bits at severity 10, which blanks the image;
here it stops at 1). Geometric ops act about the image centre (digits stay centred) with
``scipy.ndimage.affine_transform`` (bilinear, order=1, constant 0 = black fill). autocontrast and
equalize have no magnitude (as in AugMix) and ignore it.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from scipy import ndimage

from ._checks import check_int as _check_int
from .data import MNIST_MEAN, MNIST_STD, N_CLASSES

SIDE = 28
N_PIXELS = SIDE * SIDE
PIXEL_LO = (0.0 - MNIST_MEAN) / MNIST_STD   # normalized value of a black pixel
PIXEL_HI = (1.0 - MNIST_MEAN) / MNIST_STD   # normalized value of a white pixel

MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE_FRAC = 1.0 / 3.0


# --------------------------------------------------------------------------- validation helpers

def _check_magnitude(magnitude) -> float:
    try:
        m = float(magnitude)
    except (TypeError, ValueError):
        raise TypeError(f"magnitude must be a number in [0, 1], got {magnitude!r}") from None
    if not (math.isfinite(m) and 0.0 <= m <= 1.0):
        raise ValueError(f"magnitude={magnitude!r} is outside the allowed range [0, 1]")
    return m


def _check_sign(sign) -> float:
    if sign not in (1, -1):
        raise ValueError(f"sign={sign!r} is not allowed; it must be +1 or -1")
    return float(sign)


def _check_image(img) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2 or img.dtype.kind != "f":
        raise ValueError(f"an op expects one pixel-space float image of shape [H, W], got dtype {img.dtype} "
                         f"and shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("the image contains NaN or inf; only finite pixel values in [0, 1] are allowed")
    lo, hi = float(img.min(initial=0.0)), float(img.max(initial=0.0))
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"pixel values lie in [{lo}, {hi}]; ops work in pixel space and need values in [0, 1] "
                         "(undo the normalization first, or use the batch functions)")
    return np.clip(img.astype(np.float64), 0.0, 1.0)


def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a positive number, got {alpha!r}") from None
    if not (math.isfinite(a) and a > 0.0):
        raise ValueError(f"alpha={alpha!r} is not allowed; it must be a finite number > 0")
    return a


def _check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not (depth == -1 or depth >= 1):
        raise ValueError(f"depth={depth!r} is not allowed; it must be -1 (random 1..3 ops per chain) or an integer >= 1")
    return int(depth)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. view_rng(seed, epoch, view)), got {type(rng).__name__}")
    return rng


def _check_batch(x, y, n_classes) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate (x, y, n_classes); return (x as [B, 784] view, y as int64, n_classes)."""
    n_classes = _check_int(n_classes, "n_classes", 1)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a float32 or float64 normalized batch, got dtype {x.dtype}")
    if not ((x.ndim == 2 and x.shape[1] == N_PIXELS) or (x.ndim == 4 and x.shape[1:] == (1, SIDE, SIDE))):
        raise ValueError(f"x has shape {x.shape}; allowed layouts are [B, {N_PIXELS}] and [B, 1, {SIDE}, {SIDE}]")
    if not np.all(np.isfinite(x)):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"x contains {bad} non-finite value(s) (NaN or inf); only finite values are allowed")
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TypeError(f"y must be a 1-D integer label array, got dtype {y.dtype} and shape {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels; they must match")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels lie in [{int(y.min())}, {int(y.max())}]; with n_classes={n_classes} "
                         f"they must lie in [0, {n_classes - 1}]")
    return x.reshape(x.shape[0], N_PIXELS), y.astype(np.int64), n_classes


def _one_hot(y: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    out = np.zeros((y.shape[0], n_classes), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Normalized values -> pixel values in [0, 1] (float64, clipped)."""
    return np.clip(np.asarray(x, dtype=np.float64) * MNIST_STD + MNIST_MEAN, 0.0, 1.0)


def from_pixels(p: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Pixel values in [0, 1] -> normalized values (computed in float64, cast to ``dtype``)."""
    return ((np.asarray(p, dtype=np.float64) - MNIST_MEAN) / MNIST_STD).astype(dtype)


# --------------------------------------------------------------------------- primitive ops

def _affine_about_centre(img: np.ndarray, matrix: np.ndarray, shift=(0.0, 0.0)) -> np.ndarray:
    """out[o] = img[matrix @ (o - c) + c + shift] (bilinear, black outside), c = image centre."""
    c = (np.array(img.shape, dtype=np.float64) - 1.0) / 2.0
    offset = c - matrix @ c + np.asarray(shift, dtype=np.float64)
    out = ndimage.affine_transform(img, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def rotate(img, magnitude, sign=1):
    """Rotate by ``sign * 30 * magnitude`` degrees about the centre."""
    img, m, s = _check_image(img), _check_magnitude(magnitude), _check_sign(sign)
    t = math.radians(s * MAX_ROTATE_DEG * m)
    mat = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return _affine_about_centre(img, mat)


def shear_x(img, magnitude, sign=1):
    """Horizontal shear: out[r, c] = img[r, c + k (r - centre)], k = ``sign * 0.3 * magnitude``."""
    img, m, s = _check_image(img), _check_magnitude(magnitude), _check_sign(sign)
    return _affine_about_centre(img, np.array([[1.0, 0.0], [s * MAX_SHEAR * m, 1.0]]))


def shear_y(img, magnitude, sign=1):
    """Vertical shear: out[r, c] = img[r + k (c - centre), c], k = ``sign * 0.3 * magnitude``."""
    img, m, s = _check_image(img), _check_magnitude(magnitude), _check_sign(sign)
    return _affine_about_centre(img, np.array([[1.0, s * MAX_SHEAR * m], [0.0, 1.0]]))


def translate_x(img, magnitude, sign=1):
    """Shift the content by ``sign * magnitude * W/3`` pixels along the columns (black fill)."""
    img, m, s = _check_image(img), _check_magnitude(magnitude), _check_sign(sign)
    return _affine_about_centre(img, np.eye(2), shift=(0.0, -s * m * img.shape[1] * MAX_TRANSLATE_FRAC))


def translate_y(img, magnitude, sign=1):
    """Shift the content by ``sign * magnitude * H/3`` pixels along the rows (black fill)."""
    img, m, s = _check_image(img), _check_magnitude(magnitude), _check_sign(sign)
    return _affine_about_centre(img, np.eye(2), shift=(-s * m * img.shape[0] * MAX_TRANSLATE_FRAC, 0.0))


def autocontrast(img, magnitude=0.0):
    """Stretch the image linearly so its darkest pixel is 0 and its brightest 1 (no magnitude;
    a constant image is returned unchanged)."""
    img = _check_image(img)
    _check_magnitude(magnitude)
    if img.size == 0 or float(img.max()) <= float(img.min()):
        return img.copy()
    lo, hi = float(img.min()), float(img.max())
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _to_levels(img: np.ndarray) -> np.ndarray:
    return np.rint(img * 255.0).astype(np.int64)


def equalize(img, magnitude=0.0):
    """Histogram equalization on the 8-bit levels: level v -> round(255 (cdf(v) - cdf_min) /
    (N - cdf_min)), cdf_min = count of the darkest level present (no magnitude; an image with a
    single level is returned unchanged)."""
    img = _check_image(img)
    _check_magnitude(magnitude)
    lv = _to_levels(img)
    if lv.size == 0:
        return img.copy()
    cdf = np.cumsum(np.bincount(lv.ravel(), minlength=256))
    cdf_min, n = int(cdf[lv.min()]), lv.size
    if cdf_min == n:
        return img.copy()
    lut = np.clip(np.rint((cdf - cdf_min) / (n - cdf_min) * 255.0), 0, 255)
    return lut[lv] / 255.0


def solarize(img, magnitude):
    """Invert (p -> 1 - p) every pixel whose 8-bit level is >= 256 (1 - magnitude); magnitude 0
    inverts nothing, magnitude 1 inverts everything."""
    img, m = _check_image(img), _check_magnitude(magnitude)
    thresh = 256.0 * (1.0 - m)
    return np.where(img * 255.0 >= thresh, 1.0 - img, img)


def posterize(img, magnitude):
    """Keep the top ``bits = max(1, 4 - int(4 magnitude))`` bits of each 8-bit level."""
    img, m = _check_image(img), _check_magnitude(magnitude)
    shift = 8 - max(1, 4 - int(4 * m))
    return ((_to_levels(img) >> shift) << shift) / 255.0


OPS: dict[str, Callable] = {
    "autocontrast": autocontrast, "equalize": equalize, "posterize": posterize, "rotate": rotate,
    "solarize": solarize, "shear_x": shear_x, "shear_y": shear_y,
    "translate_x": translate_x, "translate_y": translate_y,
}
AUGMIX_OPS: tuple[str, ...] = tuple(OPS)
SIGNED_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})


def apply_op(name: str, img, magnitude, rng: np.random.Generator | None = None):
    """Apply op ``name``; for a geometric op the sign is drawn as ``rng.choice([-1, 1])`` (+1 if no rng)."""
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; allowed ops are {AUGMIX_OPS}")
    if name in SIGNED_OPS:
        sign = 1 if rng is None else int(_check_rng(rng).choice([-1, 1]))
        return OPS[name](img, magnitude, sign)
    return OPS[name](img, magnitude)


# --------------------------------------------------------------------------- batch augmentations

AUGMIX_WEAK = dict(severity=1, width=2)
AUGMIX_STRONG = dict(severity=3, width=3)


def augmix(x, y, rng, severity=3, width=3, depth=-1, alpha=1.0, n_classes=N_CLASSES):
    """AugMix (Hendrycks et al., 2020, Algorithm 1) on each image; labels stay one-hot.

    Per image, in batch order, the draws are: w ~ Dirichlet(alpha * 1_width); m ~ Beta(alpha, alpha);
    then for each of the ``width`` chains: its length d (``depth``, or ``rng.integers(1, 4)`` when
    depth=-1), and for each op: ``rng.integers(len(AUGMIX_OPS))``, magnitude
    ``rng.uniform(0.1, severity) / 10`` and, for a geometric op, a sign ``rng.choice([-1, 1])``.
    mix = sum_i w_i chain_i(orig); out = m * orig + (1 - m) * mix (in pixel space, equivalent to
    mixing normalized images since the weights sum to 1). ``orig`` is the input clipped to the pixel
    range [0, 1]. ([D2] App. B.2.1 uses AugMix as the default T1/T2.)
    """
    x2, y, n_classes = _check_batch(x, y, n_classes)
    rng = _check_rng(rng)
    severity = _check_int(severity, "severity", 1, 10)
    width = _check_int(width, "width", 1)
    depth = _check_depth(depth)
    alpha = _check_alpha(alpha)
    out = np.empty((x2.shape[0], N_PIXELS), dtype=np.float64)
    for b in range(x2.shape[0]):
        orig = to_pixels(x2[b]).reshape(SIDE, SIDE)
        ws = rng.dirichlet([alpha] * width)
        m = rng.beta(alpha, alpha)
        mix = np.zeros_like(orig)
        for i in range(width):
            img = orig
            d = depth if depth > 0 else int(rng.integers(1, 4))
            for _ in range(d):
                name = AUGMIX_OPS[int(rng.integers(len(AUGMIX_OPS)))]
                img = apply_op(name, img, rng.uniform(0.1, severity) / 10.0, rng)
            mix += ws[i] * img
        out[b] = (m * orig + (1.0 - m) * np.clip(mix, 0.0, 1.0)).ravel()
    x_aug = from_pixels(out, x2.dtype).reshape(np.shape(x))
    return x_aug, _one_hot(y, n_classes, x2.dtype)


def cutmix(x, y, rng, alpha=1.0, n_classes=N_CLASSES):
    """CutMix (Yun et al., 2019, Algorithm A1): one lambda and one box for the whole batch.

    Draws: lam ~ Beta(alpha, alpha); partner = ``rng.permutation(B)``; box centre
    (``rng.integers(28)``, ``rng.integers(28)``); box side ``round(28 sqrt(1 - lam))`` per axis,
    clipped to the image. Image b gets the box pasted from image partner[b] (normalized values copied
    exactly); its label is ``(1 - a) onehot(y_b) + a onehot(y_partner[b])`` with a = the box's actual
    area / 784 (after clipping).
    """
    x2, y, n_classes = _check_batch(x, y, n_classes)
    rng = _check_rng(rng)
    alpha = _check_alpha(alpha)
    B = x2.shape[0]
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(B)
    cy, cx = int(rng.integers(SIDE)), int(rng.integers(SIDE))
    cut = int(round(SIDE * math.sqrt(1.0 - lam)))
    r0, r1 = max(cy - cut // 2, 0), min(cy - cut // 2 + cut, SIDE)
    c0, c1 = max(cx - cut // 2, 0), min(cx - cut // 2 + cut, SIDE)
    imgs = x2.reshape(B, SIDE, SIDE).copy()
    imgs[:, r0:r1, c0:c1] = x2.reshape(B, SIDE, SIDE)[perm, r0:r1, c0:c1]
    a = (r1 - r0) * (c1 - c0) / N_PIXELS
    y_soft = (1.0 - a) * _one_hot(y, n_classes, np.float64) + a * _one_hot(y[perm], n_classes, np.float64)
    return imgs.reshape(np.shape(x)), y_soft.astype(x2.dtype)


def no_augment(x, y, rng=None, n_classes=N_CLASSES):
    """The identity view: a copy of ``x`` and one-hot labels (``rng`` is not used)."""
    x2, y, n_classes = _check_batch(x, y, n_classes)
    return np.array(x, copy=True), _one_hot(y, n_classes, x2.dtype)


# --------------------------------------------------------------------------- views

VIEWS: tuple[str, ...] = ("augmix_weak", "augmix_strong", "cutmix", "none")
_VIEW_FN = {"augmix_weak": (augmix, AUGMIX_WEAK), "augmix_strong": (augmix, AUGMIX_STRONG),
            "cutmix": (cutmix, {}), "none": (no_augment, {})}
_VIEW_KW = {augmix: ("severity", "width", "depth", "alpha", "n_classes"),
            cutmix: ("alpha", "n_classes"), no_augment: ("n_classes",)}


def make_view(name: str, **kw) -> Callable:
    """A view ``view(x, y, rng) -> (x_aug, y_soft)`` by name (one of ``VIEWS``); ``kw`` override the
    preset (e.g. ``make_view("augmix_weak", alpha=0.5)``) and are validated here."""
    if name not in _VIEW_FN:
        raise ValueError(f"unknown view {name!r}; allowed views are {VIEWS}")
    fn, preset = _VIEW_FN[name]
    unknown = sorted(set(kw) - set(_VIEW_KW[fn]))
    if unknown:
        raise TypeError(f"view {name!r} got unknown option(s) {unknown}; allowed options are {list(_VIEW_KW[fn])}")
    params = {**preset, **kw}
    # validate now, so a typo fails at construction rather than at the first batch
    _check_int(params.get("n_classes", N_CLASSES), "n_classes", 1)
    if "severity" in params:
        _check_int(params["severity"], "severity", 1, 10)
    if "width" in params:
        _check_int(params["width"], "width", 1)
    if "depth" in params:
        _check_depth(params["depth"])
    if "alpha" in params:
        _check_alpha(params["alpha"])

    def view(x, y, rng):
        return fn(x, y, rng, **params)

    view.__name__ = f"view_{name}"
    view.params = dict(params)
    return view


def view_rng(seed: int, epoch: int, view_index: int) -> np.random.Generator:
    """``np.random.default_rng([seed, epoch, view_index, 0xA06])``: one stream per (seed, epoch, view)."""
    seed = _check_int(seed, "seed", 0)
    epoch = _check_int(epoch, "epoch", 0)
    view_index = _check_int(view_index, "view_index", 0)
    return np.random.default_rng([seed, epoch, view_index, 0xA06])
