"""D²-Sparse views (reference/augment.py): AugMix, CutMix, primitive ops, view factory, view RNG."""
import math

import numpy as np
import pytest

from twinsparse.reference import augment as A
from twinsparse.reference import data as D

TOL = 1e-5


@pytest.fixture(scope="module")
def batch():
    s = D.split_mnist5k(dtype=np.float64)
    idx = np.random.default_rng(0).permutation(s.y_train.size)[:48]   # mixed classes
    x, y = s.x_train[idx], s.y_train[idx]
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _one_hot(y, k=10):
    return np.eye(k)[y]


# ---------------------------------------------------------------------------- shapes, dtypes, determinism

@pytest.mark.parametrize("name", A.VIEWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("images", [False, True])
def test_views_preserve_shape_dtype_and_give_label_distributions(batch, name, dtype, images):
    x, y = batch
    x = x.astype(dtype)
    if images:
        x = D.as_images(x)
    xa, ys = A.make_view(name)(x, y, A.view_rng(0, 0, 0))
    assert xa.shape == x.shape and xa.dtype == np.dtype(dtype)
    assert ys.shape == (y.size, 10) and ys.dtype == np.dtype(dtype)
    assert np.all(ys >= 0) and np.allclose(ys.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(ys[np.arange(y.size), y] >= 0.5 - 1e-6) or name == "cutmix"


@pytest.mark.parametrize("name", ["augmix_weak", "augmix_strong", "cutmix"])
def test_same_seed_same_output_different_seed_different(batch, name):
    x, y = batch
    view = A.make_view(name)
    a1, l1 = view(x, y, A.view_rng(3, 1, 0))
    a2, l2 = view(x, y, A.view_rng(3, 1, 0))
    b1, m1 = view(x, y, A.view_rng(3, 1, 1))
    assert np.array_equal(a1, a2) and np.array_equal(l1, l2)
    assert not np.array_equal(a1, b1)


def test_layouts_and_dtypes_follow_the_same_draws(batch):
    x, y = batch
    flat, _ = A.augmix(x, y, np.random.default_rng(5))
    img, _ = A.augmix(D.as_images(x), y, np.random.default_rng(5))
    f32, _ = A.augmix(x.astype(np.float32), y, np.random.default_rng(5))
    assert np.array_equal(img.reshape(flat.shape), flat)
    assert np.allclose(f32, flat, atol=1e-4)


def test_inputs_are_not_mutated(batch):
    x, y = batch                       # read-only: any in-place write would raise
    x4 = D.as_images(np.array(x))
    x4_copy, y_copy = x4.copy(), np.array(y)
    for name in A.VIEWS:
        A.make_view(name)(x, y, A.view_rng(0, 0, 0))
        A.make_view(name)(x4, y, A.view_rng(0, 0, 0))
    assert np.array_equal(x4, x4_copy) and np.array_equal(y, y_copy)


def test_empty_batch():
    x, y = np.zeros((0, 784)), np.zeros(0, dtype=np.int64)
    for name in A.VIEWS:
        xa, ys = A.make_view(name)(x, y, A.view_rng(0, 0, 0))
        assert xa.shape == (0, 784) and ys.shape == (0, 10)


# ---------------------------------------------------------------------------- CutMix

@pytest.mark.parametrize("seed", range(12))
def test_cutmix_labels_equal_the_pasted_box_area(seed):
    B = 16
    x = np.repeat(np.arange(B, dtype=np.float64)[:, None] * 0.1, 784, axis=1)   # image i is all 0.1*i
    y = np.random.default_rng(100 + seed).integers(0, 10, size=B)
    alpha = [0.3, 1.0, 4.0][seed % 3]
    xa, ys = A.cutmix(x, y, np.random.default_rng(seed), alpha=alpha)
    pasted = xa != x
    boxes = {tuple(np.flatnonzero(row)) for row in pasted if row.any()}
    assert len(boxes) <= 1                      # one box for the whole batch
    if boxes:                                   # the box is a rectangle
        rr, cc = np.nonzero(pasted[pasted.any(axis=1)][0].reshape(28, 28))
        assert rr.size == (rr.max() - rr.min() + 1) * (cc.max() - cc.min() + 1)
    for i in range(B):
        frac = pasted[i].mean()
        partner = int(round(xa[i][pasted[i]][0] / 0.1)) if frac else i
        assert np.all(xa[i][pasted[i]] == x[partner][0])
        expect = (1 - frac) * _one_hot(y[i]) + frac * _one_hot(y[partner])
        if partner == i:                        # a self-paste changes no pixel; its label stays one-hot
            expect = _one_hot(y[i])
        assert np.allclose(ys[i], expect, atol=1e-12)


def test_cutmix_mixes_labels_on_real_digits(batch):
    x, y = batch
    mixed = 0
    for seed in range(10):
        xa, ys = A.cutmix(x, y, np.random.default_rng(seed))
        mixed += int(np.sum(ys.max(axis=1) < 1))
        assert np.all(ys[np.arange(y.size), y] >= ys.max(axis=1) - 1.0)    # own label keeps its share
        changed = np.any(xa != x, axis=1)
        assert np.all(ys[changed].max(axis=1) < 1) or np.all(np.isin(y[changed], y))
    assert mixed > 0


def test_cutmix_area_follows_beta_lambda():
    x = np.zeros((2, 784))
    x[1] = 1.0
    y = np.array([0, 1])
    areas = []
    for seed in range(400):
        _, ys = A.cutmix(x, y, np.random.default_rng(seed), alpha=1.0)
        areas.append(min(ys[0, 0], ys[0, 1]) if ys[0].max() < 1 else 0.0)
    # lambda ~ U(0,1): the box side is 28 sqrt(1 - lambda), clipped at the border -> mean area < 0.5
    assert 0.05 < np.mean(areas) < 0.5


# ---------------------------------------------------------------------------- AugMix

def test_augmix_changes_images_but_labels_stay_one_hot(batch):
    x, y = batch
    for preset in (A.AUGMIX_WEAK, A.AUGMIX_STRONG):
        xa, ys = A.augmix(x, y, np.random.default_rng(1), **preset)
        changed = np.abs(xa - x).max(axis=1) > 1e-3
        assert changed.mean() > 0.8
        assert np.array_equal(ys, _one_hot(y))


def test_strong_augmix_changes_more_than_weak(batch):
    x, y = batch
    weak = np.mean([np.abs(A.make_view("augmix_weak")(x, y, A.view_rng(s, 0, 0))[0] - x).mean() for s in range(3)])
    strong = np.mean([np.abs(A.make_view("augmix_strong")(x, y, A.view_rng(s, 0, 0))[0] - x).mean() for s in range(3)])
    assert strong > 1.2 * weak


def test_augmix_is_the_documented_mixture():
    """Re-draw the documented stream for one image: out = m*orig + (1-m)*sum_i w_i chain_i(orig)."""
    p = np.zeros((28, 28))
    p[8:20, 12:16] = 1.0
    p[8:11, 9:19] = 0.6
    x = A.from_pixels(p.reshape(1, 784))
    xa, _ = A.augmix(x, np.array([3]), np.random.default_rng(9), severity=5, width=2, depth=2, alpha=0.7)
    rng = np.random.default_rng(9)
    ws, m = rng.dirichlet([0.7, 0.7]), rng.beta(0.7, 0.7)
    mix = np.zeros_like(p)
    for w in ws:
        img = p
        for _ in range(2):
            name = A.AUGMIX_OPS[int(rng.integers(len(A.AUGMIX_OPS)))]
            img = A.apply_op(name, img, rng.uniform(0.1, 5) / 10, rng)
        mix += w * img
    assert np.allclose(A.to_pixels(xa).reshape(28, 28), m * p + (1 - m) * mix, atol=1e-12)


def test_augmix_stays_in_the_normalized_pixel_range(batch):
    x, y = batch
    wild = np.array(x) * 3.0 - 1.0            # values outside the pixel range get clipped first
    for xx in (x, wild):
        xa, _ = A.augmix(xx, y, np.random.default_rng(2), severity=10, width=4, depth=3, alpha=0.5)
        assert xa.min() >= A.PIXEL_LO - TOL and xa.max() <= A.PIXEL_HI + TOL
    x32 = x.astype(np.float32)
    xa, _ = A.augmix(x32, y, np.random.default_rng(2), **A.AUGMIX_STRONG)
    assert xa.min() >= A.PIXEL_LO - TOL and xa.max() <= A.PIXEL_HI + TOL


# ---------------------------------------------------------------------------- primitive ops

@pytest.fixture(scope="module")
def pix():
    return np.random.default_rng(4).random((28, 28))


@pytest.mark.parametrize("name", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y", "solarize"])
def test_magnitude_zero_ops_are_identity(pix, name):
    for sign in ((1, -1) if name in A.SIGNED_OPS else (None,)):
        out = A.OPS[name](pix, 0.0) if sign is None else A.OPS[name](pix, 0.0, sign)
        assert np.allclose(out, pix, atol=1e-12)
    assert not np.allclose(A.apply_op(name, pix, 0.5), pix, atol=1e-3)


@pytest.mark.parametrize("name", A.AUGMIX_OPS)
@pytest.mark.parametrize("mag", [0.0, 0.3, 1.0])
def test_ops_keep_pixels_in_unit_range_and_shape(pix, name, mag):
    out = A.apply_op(name, pix, mag, np.random.default_rng(0))
    assert out.shape == pix.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_translate_moves_content_by_the_scaled_amount():
    img = np.zeros((28, 28))
    img[10, 12] = 1.0
    m = 3 / (28 / 3)                                    # 3 pixels
    assert A.translate_x(img, m, 1)[10, 15] == pytest.approx(1.0, abs=1e-9)
    assert A.translate_x(img, m, -1)[10, 9] == pytest.approx(1.0, abs=1e-9)
    assert A.translate_y(img, m, 1)[13, 12] == pytest.approx(1.0, abs=1e-9)
    assert A.translate_y(img, 1.0, 1).sum() == pytest.approx(1.0, abs=1e-9)   # 9.33 px: split over two pixels


def test_rotate_turns_by_30_degrees_at_full_magnitude():
    img = np.zeros((28, 28))
    img[13:15, 22:24] = 1.0                             # a blob 9 px right of the centre (13.5, 13.5)

    def angle(a):
        r, c = np.indices(a.shape)
        return math.degrees(math.atan2(-((a * r).sum() / a.sum() - 13.5), (a * c).sum() / a.sum() - 13.5))

    assert abs(angle(A.rotate(img, 1.0, 1))) == pytest.approx(30.0, abs=1.5)
    assert angle(A.rotate(img, 1.0, 1)) == pytest.approx(-angle(A.rotate(img, 1.0, -1)), abs=1e-6)
    assert abs(angle(A.rotate(img, 0.5, 1))) == pytest.approx(15.0, abs=1.5)


def test_shear_x_tilts_a_vertical_line():
    img = np.zeros((28, 28))
    img[4:24, 13:15] = 1.0
    out = A.shear_x(img, 1.0, 1)
    col = lambda row: (out[row] * np.arange(28)).sum() / out[row].sum()
    # out[r, c] = img[r, c + 0.3 (r - 13.5)]: the line sits at 13.5 - 0.3 (r - 13.5)
    assert col(4) == pytest.approx(13.5 + 0.3 * 9.5, abs=0.05)
    assert col(23) == pytest.approx(13.5 - 0.3 * 9.5, abs=0.05)
    assert np.allclose(A.shear_y(img.T, 1.0, 1), out.T, atol=1e-12)


def test_solarize_posterize_autocontrast_equalize(pix):
    assert np.allclose(A.solarize(pix, 1.0), 1 - pix)
    half = A.solarize(pix, 0.5)
    assert np.allclose(half[pix * 255 >= 128], 1 - pix[pix * 255 >= 128]) and np.allclose(half[pix * 255 < 128], pix[pix * 255 < 128])
    assert set(np.unique(A.posterize(pix, 1.0) * 255).round(6)) <= {0.0, 128.0}
    assert len(np.unique(A.posterize(pix, 0.0))) <= 16
    dull = 0.3 + 0.2 * pix
    ac = A.autocontrast(dull)
    assert ac.min() == 0.0 and ac.max() == pytest.approx(1.0) and np.allclose(ac, (dull - dull.min()) / np.ptp(dull))
    assert np.array_equal(A.autocontrast(np.full((28, 28), 0.4)), np.full((28, 28), 0.4))
    eq = A.equalize(dull)
    order = np.argsort(dull, axis=None, kind="stable")
    assert np.all(np.diff(eq.ravel()[order]) >= 0)      # monotone in the input level
    assert eq.min() == 0.0 and eq.max() == 1.0
    hist = np.histogram(eq, bins=4, range=(0, 1))[0]
    assert hist.min() > 0.15 * eq.size                  # the histogram is spread out


# ---------------------------------------------------------------------------- views and RNG

def test_none_view_returns_the_input_and_one_hot(batch):
    x, y = batch
    xa, ys = A.make_view("none")(x, y, A.view_rng(0, 0, 0))
    assert np.array_equal(xa, x) and xa is not x and np.array_equal(ys, _one_hot(y))


def test_make_view_presets_and_overrides(batch):
    x, y = batch
    assert A.VIEWS == ("augmix_weak", "augmix_strong", "cutmix", "none")
    assert A.make_view("augmix_weak").params["severity"] == 1 and A.make_view("augmix_weak").params["width"] == 2
    assert A.make_view("augmix_strong").params["severity"] == 3 and A.make_view("augmix_strong").params["width"] == 3
    got = A.make_view("augmix_strong", alpha=0.5)(x, y, np.random.default_rng(7))
    want = A.augmix(x, y, np.random.default_rng(7), severity=3, width=3, alpha=0.5)
    assert np.array_equal(got[0], want[0])
    with pytest.raises(ValueError, match="augmix_weak.*cutmix.*none"):
        A.make_view("mixup")
    with pytest.raises(TypeError, match="sevrity"):
        A.make_view("augmix_weak", sevrity=2)
    with pytest.raises(ValueError, match="severity=0"):
        A.make_view("augmix_strong", severity=0)
    with pytest.raises(TypeError, match="severity"):
        A.make_view("cutmix", severity=2)


def test_view_rng_is_a_stream_per_seed_epoch_view():
    a = A.view_rng(1, 2, 0).random(4)
    assert np.array_equal(a, np.random.default_rng([1, 2, 0, 0xA06]).random(4))
    assert np.array_equal(a, A.view_rng(1, 2, 0).random(4))
    assert not np.array_equal(a, A.view_rng(1, 2, 1).random(4))
    assert not np.array_equal(a, A.view_rng(1, 3, 0).random(4))
    with pytest.raises(ValueError, match="epoch=-1"):
        A.view_rng(0, -1, 0)


# ---------------------------------------------------------------------------- bad input

def _bad_cases():
    x, y = np.zeros((4, 784)), np.array([0, 1, 2, 3])
    nan = x.copy()
    nan[1, 5] = np.nan
    g = np.random.default_rng(0)
    return [
        (lambda: A.augmix(x, y, g, severity=0), ValueError, r"severity=0.*\[1, 10\]"),
        (lambda: A.augmix(x, y, g, severity=11), ValueError, r"severity=11"),
        (lambda: A.augmix(x, y, g, width=0), ValueError, r"width=0.*>= 1"),
        (lambda: A.augmix(x, y, g, depth=0), ValueError, r"depth=0"),
        (lambda: A.augmix(x, y, g, alpha=0.0), ValueError, r"alpha=0.0.*> 0"),
        (lambda: A.cutmix(x, y, g, alpha=-1), ValueError, r"alpha=-1"),
        (lambda: A.cutmix(x, y, g, alpha=float("nan")), ValueError, r"alpha=nan"),
        (lambda: A.augmix(np.zeros((4, 28, 28)), y, g), ValueError, r"\(4, 28, 28\).*\[B, 784\]"),
        (lambda: A.cutmix(np.zeros((4, 783)), y, g), ValueError, r"\(4, 783\)"),
        (lambda: A.cutmix(np.zeros((4, 784), dtype=np.uint8), y, g), TypeError, r"uint8"),
        (lambda: A.augmix(nan, y, g), ValueError, r"NaN"),
        (lambda: A.cutmix(nan, y, g), ValueError, r"NaN"),
        (lambda: A.no_augment(nan, y), ValueError, r"NaN"),
        (lambda: A.augmix(x, np.array([0, 1, 2, 10]), g), ValueError, r"\[0, 10\].*\[0, 9\]"),
        (lambda: A.cutmix(x, np.array([0, -1, 2, 3]), g), ValueError, r"\[-1, 3\]"),
        (lambda: A.cutmix(x, y, g, n_classes=3), ValueError, r"n_classes=3"),
        (lambda: A.augmix(x, y[:3], g), ValueError, r"4 images but y has 3"),
        (lambda: A.augmix(x, y.astype(float), g), TypeError, r"integer label"),
        (lambda: A.augmix(x, y, 0), TypeError, r"Generator"),
        (lambda: A.rotate(np.zeros((28, 28)), 1.5), ValueError, r"magnitude=1.5.*\[0, 1\]"),
        (lambda: A.rotate(np.zeros((28, 28)), 0.5, sign=2), ValueError, r"sign=2"),
        (lambda: A.solarize(np.full((28, 28), 2.0), 0.5), ValueError, r"\[0, 1\]"),
        (lambda: A.apply_op("contrast", np.zeros((28, 28)), 0.5), ValueError, r"contrast.*autocontrast"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_inputs_raise_clear_errors(i):
    fn, exc, pattern = _bad_cases()[i]
    with pytest.raises(exc, match=pattern):
        fn()
