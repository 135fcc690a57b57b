"""Tests of examples/datasets.py: IDX reading, local sources, normalisation, splits, errors."""

import contextlib
import gzip
import os
import pickle

import numpy as np
import pytest

from examples import datasets


def _write_idx(path, array, compress=True):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    array = np.asarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


def _fake_idx_dir(directory, n_train=50, n_test=20, seed=0, compress=True):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    suffix = ".gz" if compress else ""
    for key, name in datasets.IDX_FILES.items():
        _write_idx(os.path.join(directory, name + suffix), arrays[key], compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    path = str(tmp_path / ("a.idx.gz" if compress else "a.idx"))
    _write_idx(path, a, compress)
    np.testing.assert_array_equal(datasets.read_idx(path), a)


def test_read_idx_big_endian_int32(tmp_path):
    a = np.array([1, -2, 70000], dtype=">i4")
    path = str(tmp_path / "b.idx")
    _write_idx(path, a, compress=False)
    out = datasets.read_idx(path)
    np.testing.assert_array_equal(out, [1, -2, 70000])
    assert out.dtype.isnative


def test_read_idx_rejects_non_idx(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="Not an IDX file"):
        datasets.read_idx(str(path))


def test_read_idx_rejects_truncated(tmp_path):
    path = str(tmp_path / "t.idx")
    _write_idx(path, np.zeros((4, 4), np.uint8), compress=False)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        datasets.read_idx(path)


def test_load_from_data_dir_normalises_and_splits(tmp_path):
    raw = _fake_idx_dir(str(tmp_path), n_train=50, n_test=20)
    data = datasets.load("mnist", data_dir=str(tmp_path), validation_split=0.2, seed=3,
                         allow_download=False)
    assert data.source == str(tmp_path)
    assert data.x_train.shape == (40, 28, 28, 1) and data.x_val.shape == (10, 28, 28, 1)
    assert data.x_test.shape == (20, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    # NumPy oracle: the same seeded permutation, scaling and training-split statistics.
    order = np.random.default_rng(3).permutation(50)
    x = raw["x_train"][order].astype(np.float32)[..., None] / 255.0
    mean, std = x[:40].mean(), x[:40].std()
    np.testing.assert_allclose(data.x_train, (x[:40] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(data.x_val, (x[40:] - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(data.y_val, raw["y_train"][order][40:])
    np.testing.assert_allclose(data.x_test[..., 0],
                               (raw["x_test"] / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(data.y_test, raw["y_test"])
    assert abs(float(data.x_train.mean())) < 1e-4
    assert abs(float(data.x_train.std()) - 1.0) < 1e-3


def test_unused_training_images_are_the_next_in_the_seeded_order(tmp_path):
    """x_unused: the training images max_train left out, the next ones in the seeded order,
    prepared and standardised as the others; the other splits do not depend on it."""
    raw = _fake_idx_dir(str(tmp_path), n_train=50, n_test=20)
    kw = dict(data_dir=str(tmp_path), validation_split=0.2, seed=3, max_train=30,
              pad_to=32, allow_download=False)
    data = datasets.load("mnist", max_unused=12, **kw)
    order = np.random.default_rng(3).permutation(50)
    x = raw["x_train"][order].astype(np.float32)[..., None] / 255.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    mean, std = x[:24].mean(), x[:24].std()
    np.testing.assert_allclose(data.x_unused, (x[30:42] - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(data.y_unused, raw["y_train"][order][30:42])
    assert data.y_unused.dtype == np.int64
    for max_unused, n in ((0, 0), (100, 20)):  # 0: none; more than are left: all 20
        other = datasets.load("mnist", max_unused=max_unused, **kw)
        assert other.x_unused.shape == (n, 32, 32, 1) and len(other.y_unused) == n
        for split in ("x_train", "y_train", "x_val", "y_val", "x_test"):
            np.testing.assert_array_equal(getattr(other, split), getattr(data, split))
    everything = datasets.load("mnist", max_unused=12, **{**kw, "max_train": None})
    assert everything.x_unused.shape == (0, 32, 32, 1) and everything.y_unused.shape == (0,)
    with pytest.raises(ValueError, match=r"`max_unused` must be an integer >= 0. "
                                         r"Received: max_unused=-1"):
        datasets.load("mnist", max_unused=-1, **kw)


def test_load_uncompressed_truncated_padded_rgb(tmp_path):
    _fake_idx_dir(str(tmp_path), compress=False)
    data = datasets.load("fashion_mnist", data_dir=str(tmp_path), max_train=30, max_test=5,
                         validation_split=0.0, standardize=False, pad_to=32, channels=3,
                         allow_download=False)
    assert data.x_train.shape == (30, 32, 32, 3) and data.x_val.shape == (0, 32, 32, 3)
    assert data.x_test.shape == (5, 32, 32, 3) and data.input_shape == (32, 32, 3)
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    np.testing.assert_array_equal(data.x_train[:, :2], 0.0)  # the 2-pixel zero border
    np.testing.assert_array_equal(data.x_train[..., 0], data.x_train[..., 2])


def test_load_is_seeded(tmp_path):
    _fake_idx_dir(str(tmp_path))
    a = datasets.load("mnist", data_dir=str(tmp_path), seed=5, allow_download=False)
    b = datasets.load("mnist", data_dir=str(tmp_path), seed=5, allow_download=False)
    c = datasets.load("mnist", data_dir=str(tmp_path), seed=6, allow_download=False)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)


def test_load_cifar_batches(tmp_path):
    rng = np.random.default_rng(0)
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    first = None
    for name in datasets.CIFAR_BATCHES:
        x = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
        first = x if first is None else first
        with open(sub / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": list(rng.integers(0, 10, 4))}, f)
    data = datasets.load("cifar10", data_dir=str(tmp_path), validation_split=0.0,
                         standardize=False, seed=0, allow_download=False)
    assert data.x_train.shape == (20, 32, 32, 3) and data.x_test.shape == (4, 32, 32, 3)
    order = np.random.default_rng(0).permutation(20)
    i = int(np.where(order == 0)[0][0])  # where the first image of data_batch_1 went
    expected = first[0].reshape(3, 32, 32).transpose(1, 2, 0) / 255.0
    np.testing.assert_allclose(data.x_train[i], expected, atol=1e-6)


@pytest.mark.skipif(not os.path.isdir(datasets.DEBIAN_FASHION_MNIST),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    data = datasets.load("fashion_mnist", max_train=1000, max_test=100, allow_download=False)
    assert data.source == datasets.DEBIAN_FASHION_MNIST
    assert data.x_train.shape == (900, 28, 28, 1) and data.x_test.shape == (100, 28, 28, 1)
    assert set(np.unique(data.y_train)) <= set(range(10))
    assert len(np.unique(data.y_train)) == 10


def test_missing_dataset_names_the_options():
    with pytest.raises(datasets.DatasetNotFoundError,
                       match=r"Could not load the dataset 'mnist'.*--data_dir.*internet"):
        datasets.load("mnist", allow_download=False)
    with pytest.raises(datasets.DatasetNotFoundError, match=r"data_batch_1.*test_batch"):
        datasets.load("cifar10", allow_download=False)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10"])
def test_a_data_dir_without_the_files_is_an_error_not_a_fallback(tmp_path, name):
    """With --data_dir, Fashion-MNIST came from the Debian package (or a download) when the
    directory had no files: a run on other data than the one asked for."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(datasets.DatasetNotFoundError,
                       match=rf"`data_dir` has no {name} files\. Expected .* Received: "
                             rf"data_dir='{tmp_path}', which holds \['notes.txt'\]"):
        datasets.load(name, data_dir=str(tmp_path))


def test_missing_data_dir(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError, match="`data_dir` is not a directory"):
        datasets.load("mnist", data_dir=str(tmp_path / "nope"))


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "svhn"}, "Unknown dataset"),
    ({"validation_split": 1.0}, r"`validation_split` must be a number in \[0, 1\)"),
    ({"validation_split": "0.5"}, r"Received: validation_split='0.5'"),
    ({"max_train": 0}, "`max_train` must be a positive integer"),
    ({"max_train": True}, r"Received: max_train=True"),
    ({"max_test": 2.5}, "`max_test` must be a positive integer"),
    ({"pad_to": 20}, "`pad_to` must be at least the image size"),
    ({"max_train": 1, "validation_split": 0.9}, "leaves no training images"),
])
def test_argument_errors(tmp_path, kwargs, match):
    _fake_idx_dir(str(tmp_path))
    kwargs = {"name": "mnist", "data_dir": str(tmp_path), "allow_download": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        datasets.load(**kwargs)


def test_channels_of_rgb_images_cannot_change(tmp_path):
    with pytest.raises(ValueError, match="can only replicate a single-channel image"):
        datasets._prepare_images(np.zeros((1, 4, 4, 3), np.uint8), None, 1)


def _idx_dir_with(tmp_path, **replace):
    """_fake_idx_dir with some arrays replaced (uncompressed files)."""
    arrays = _fake_idx_dir(tmp_path, compress=False)
    for key, array in replace.items():
        _write_idx(os.path.join(tmp_path, datasets.IDX_FILES[key]), array, compress=False)
    return arrays


@pytest.mark.parametrize("replace, match", [
    ({"y_test": np.zeros(15, np.uint8)}, r"test set must have one label per image. "
                                         r"Received: 20 images and 15 labels"),
    ({"y_train": np.zeros(70, np.uint8)}, r"training set must have one label per image. "
                                          r"Received: 50 images and 70 labels"),
    ({"y_train": np.full(50, 197, np.uint8)}, r"labels must be class indices in \[0, 10\). "
                                              r"Received: labels in \[197, 197\]"),
    ({"x_test": np.zeros((20, 32, 32), np.uint8)}, r"training and test images must have one "
                                                   r"size. Received: \(28, 28\) and \(32, 32\)"),
    ({"x_train": np.zeros(50, np.uint8)}, r"Images must be a 3-D IDX array .* Received: shape "
                                          r"\(50,\)"),
])
def test_inconsistent_files_are_refused_by_name(tmp_path, replace, match):
    """Were: accepted (labels dropped or out of range, sizes mixed) or raw IndexError /
    AxisError."""
    _idx_dir_with(tmp_path, **replace)
    with pytest.raises(ValueError, match=match):
        datasets.load("fashion_mnist", data_dir=str(tmp_path))


def test_unreadable_gzip_names_the_file(tmp_path):
    """Were: EOFError / BadGzipFile without the path."""
    path = tmp_path / "t.gz"
    _write_idx(str(path), np.zeros((3, 2, 2), np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:-6])  # truncated
    with pytest.raises(ValueError, match=r"Cannot read the IDX file \(EOFError.*t\.gz'"):
        datasets.read_idx(str(path))
    plain = tmp_path / "p.gz"
    _write_idx(str(plain), np.zeros((3, 2, 2), np.uint8), compress=False)  # not gzip
    with pytest.raises(ValueError, match=r"Cannot read the IDX file \(BadGzipFile.*p\.gz'"):
        datasets.read_idx(str(plain))
    short = tmp_path / "s.idx"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match=r"header announces 3 dimensions \(16 header bytes\) "
                                         r"but the file has 6 bytes"):
        datasets.read_idx(str(short))


def test_numpy_integers_are_sizes(tmp_path):
    """max_train=np.int64(5) was refused (isinstance int)."""
    _fake_idx_dir(str(tmp_path))
    data = datasets.load("fashion_mnist", data_dir=str(tmp_path), max_train=np.int64(20),
                         max_test=np.int32(5), validation_split=np.float32(0.25))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (15, 5, 5)


@pytest.mark.parametrize("content", [b"garbage", None, "keys"])
def test_unreadable_cifar_batches_are_a_value_error(tmp_path, content):
    rng = np.random.default_rng(0)
    for name in datasets.CIFAR_BATCHES:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": [1, 2, 3, 4]}, f)
    bad = tmp_path / datasets.CIFAR_BATCHES[2]
    if content == "keys":
        bad.write_bytes(pickle.dumps({b"images": 1}))
    else:
        bad.write_bytes(content or bad.read_bytes()[:50])  # None: truncated
    with pytest.raises(ValueError, match=r"A CIFAR-10 batch must be the pickled dict .*"
                                         + datasets.CIFAR_BATCHES[2]):
        datasets.load("cifar10", data_dir=str(tmp_path), allow_download=False)


def test_an_empty_test_set_is_refused_at_load_time(tmp_path):
    _fake_idx_dir(str(tmp_path), n_test=0)
    with pytest.raises(ValueError, match="test set must have at least one image. Received: 0"):
        datasets.load("fashion_mnist", data_dir=str(tmp_path), allow_download=False)


def test_a_data_dir_with_some_of_the_files_names_the_missing_ones(tmp_path):
    """Was: "`data_dir` has no fashion_mnist files" with 2 of the 4 there, none named."""
    _fake_idx_dir(str(tmp_path))
    for key in ("x_test", "y_test"):
        os.remove(tmp_path / (datasets.IDX_FILES[key] + ".gz"))
    with pytest.raises(datasets.DatasetNotFoundError,
                       match=r"`data_dir` has 2 of the 4 fashion_mnist files, missing "
                             r"t10k-images-idx3-ubyte\[\.gz\], t10k-labels-idx1-ubyte\[\.gz\]\. "
                             r"Expected "):
        datasets.load("fashion_mnist", data_dir=str(tmp_path), allow_download=False)
    (tmp_path / datasets.CIFAR_BATCHES[0]).write_bytes(b"")
    with pytest.raises(datasets.DatasetNotFoundError,
                       match=r"has 1 of the 6 cifar10 files, missing data_batch_2, "):
        datasets.load("cifar10", data_dir=str(tmp_path), allow_download=False)


def test_gzip_data_without_the_gz_suffix_is_named(tmp_path):
    """Was: "Not an IDX file ... starting with b'\\x1f\\x8b\\x08\\x00'", no hint."""
    path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(str(path), np.zeros((2, 3, 3), np.uint8), compress=True)
    with pytest.raises(ValueError, match=r"Not an IDX file: it starts with the gzip magic bytes "
                                         r"1f 8b, so it looks gzip-compressed\. Expected .*\.gz"):
        datasets.read_idx(str(path))


@pytest.mark.parametrize("bad", [".gz", ""])
def test_a_good_copy_beside_a_corrupt_one_is_used(tmp_path, bad):
    """Was: the .gz was always read, so a good raw file beside a corrupt .gz never was."""
    raw = _fake_idx_dir(str(tmp_path), compress=True)
    _fake_idx_dir(str(tmp_path), compress=False)
    corrupt = tmp_path / (datasets.IDX_FILES["x_train"] + bad)
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    warned = (pytest.warns(UserWarning, match=r"the other copy cannot be used\. .*"
                                              + os.path.basename(corrupt))
              if bad == ".gz" else contextlib.nullcontext())  # a good .gz is read first
    with warned:
        data = datasets.load("mnist", data_dir=str(tmp_path), validation_split=0.0,
                             standardize=False, allow_download=False)
    order = np.random.default_rng(0).permutation(len(raw["x_train"]))
    np.testing.assert_allclose(data.x_train[..., 0], raw["x_train"][order] / 255.0, atol=1e-6)
    other = tmp_path / (datasets.IDX_FILES["x_train"] + (".gz" if not bad else ""))
    other.write_bytes(b"\x00\x00\x08")  # both copies unusable: both problems are named
    with pytest.raises(ValueError, match=r"None of the 2 copies of train-images-idx3-ubyte "
                                         r"can be used: \(1\) .*\(2\) "):
        datasets.load("mnist", data_dir=str(tmp_path), allow_download=False)


@pytest.mark.parametrize("shape", [(2 ** 31, 2 ** 31, 4), (2 ** 32 - 1, 2 ** 32 - 1)])
def test_huge_header_dimensions_are_a_size_error(tmp_path, shape):
    """np.prod overflowed: the first passed the size check (2**64 wrapped to 0) and failed in
    numpy's reshape, the second printed a negative byte count."""
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 8, len(shape)])
                     + b"".join(n.to_bytes(4, "big") for n in shape) + b"\x00")
    size = 1
    for n in shape:
        size *= n
    with pytest.raises(ValueError, match=rf"header says shape \({shape[0]}, .*, i\.e\. "
                                         rf"{size:,} bytes of data, but the file has 1 bytes "):
        datasets.read_idx(str(path))


def _keras_like(n_train, n_test, shape, label_shape, seed=0):
    """Arrays shaped and typed as keras.datasets.<name>.load_data() returns them."""
    rng = np.random.default_rng(seed)
    return ((rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
             rng.integers(0, 10, (n_train, *label_shape), dtype=np.uint8)),
            (rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
             rng.integers(0, 10, (n_test, *label_shape), dtype=np.uint8)))


@pytest.mark.parametrize("name, shape, label_shape", [
    ("mnist", (28, 28), ()),              # uint8 (N, 28, 28), labels (N,)
    ("cifar10", (32, 32, 3), (1,)),       # uint8 (N, 32, 32, 3), labels (N, 1)
])
def test_mnist_and_cifar10_come_through_keras_datasets(monkeypatch, name, shape, label_shape):
    """Without local files, MNIST and CIFAR-10 are keras.datasets' load_data (a download, or
    Keras's cache); here load_data is replaced by arrays of the same shapes and dtypes."""
    import keras

    raw = _keras_like(40, 12, shape, label_shape)
    calls = []
    monkeypatch.setattr(getattr(keras.datasets, name), "load_data",
                        lambda: calls.append(name) or raw)
    data = datasets.load(name, validation_split=0.25, seed=3, standardize=False)
    assert calls == [name] and data.source == "keras.datasets"
    channels = shape[2] if len(shape) == 3 else 1
    assert data.x_train.shape == (30, shape[0], shape[1], channels)
    assert data.x_val.shape == (10, shape[0], shape[1], channels)
    assert data.x_test.shape == (12, shape[0], shape[1], channels)
    assert data.y_train.shape == (30,) and data.y_test.shape == (12,)
    assert data.y_train.dtype == np.int64
    order = np.random.default_rng(3).permutation(40)
    np.testing.assert_array_equal(data.y_train, raw[0][1].reshape(-1)[order[:30]])
    np.testing.assert_array_equal(data.y_test, raw[1][1].reshape(-1))
    np.testing.assert_allclose(data.x_test[0].reshape(shape),
                               raw[1][0][0].astype(np.float32) / 255.0, atol=1e-6)


def test_a_failed_download_names_what_was_tried_and_the_options(monkeypatch):
    import keras

    def offline():  # what keras.utils.get_file raises when the URL cannot be fetched
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(datasets.DatasetNotFoundError,
                       match=r"Could not load the dataset 'cifar10'\. Tried: "
                             r"keras\.datasets\.cifar10 \(Exception: URL fetch failure.*"
                             r"Expected: pass --data_dir \(data_dir=\) with data_batch_1.*"
                             r"or connect to the internet"):
        datasets.load("cifar10")
