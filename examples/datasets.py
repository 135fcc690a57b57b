"""The examples' datasets: MNIST, Fashion-MNIST and CIFAR-10, normalised and split.

Where the images come from, in order:

1. `data_dir`, when given, and then only there (a `data_dir` without the files is an error,
   not a reason to use other data): IDX files (`train-images-idx3-ubyte[.gz]`, ...; MNIST and
   Fashion-MNIST; when both copies of a file are there, the .gz one, and the other if it
   cannot be read) or the CIFAR-10 Python batches (`data_batch_1` ... `test_batch`, directly in
   `data_dir` or in `data_dir/cifar-10-batches-py`).
2. Fashion-MNIST only: the Debian package `dataset-fashion-mnist`
   (`/usr/share/datasets/fashion-mnist`), which is how the examples run without internet.
3. `keras.datasets` (downloads on first use, then `~/.keras/datasets`).

When none of them works, `DatasetNotFoundError` names every option that was tried.

Images are scaled to [0, 1] and then standardised per channel with the mean and standard
deviation of the training split (`standardize=True`), so the validation and test splits never
leak into the statistics. The validation split is a seeded random subset of the training set.

Example:
>>> data = load("fashion_mnist", validation_split=0.1, max_train=2000, max_test=500)
>>> data.x_train.shape, data.x_val.shape, data.x_test.shape
((1800, 28, 28, 1), (200, 28, 28, 1), (500, 28, 28, 1))
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import warnings

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10  # all three
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(FileNotFoundError):
    """No source of the dataset could be read (offline, no local files)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset split three ways; images are float32 NHWC, labels int64 class indices.

    Attributes:
        name: "mnist", "fashion_mnist" or "cifar10".
        source: where the images were read from (a directory or "keras.datasets").
        x_train, y_train, x_val, y_val, x_test, y_test: the splits.
        mean, std: the per-channel statistics used to standardise (0 and 1 when not).
        x_unused, y_unused: training images that `max_train` left out (the next ones in the
            seeded order, up to `max_unused`), standardised as the others: a second held-out
            sample that no phase trains on or selects with. Empty without `max_train`.
    """

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    x_unused: np.ndarray | None = None
    y_unused: np.ndarray | None = None

    def __post_init__(self):
        if self.x_unused is None:  # frozen: set the empty split through object.__setattr__
            object.__setattr__(self, "x_unused", self.x_train[:0])
            object.__setattr__(self, "y_unused", self.y_train[:0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (the MNIST format), gzip-compressed or not.

    Args:
        path: the file; a name ending in ".gz" is decompressed.

    Returns:
        The array with the file's dtype and shape.

    Example:
    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
    (10000,)
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"Cannot read the IDX file ({type(e).__name__}: {e}). Expected an IDX file, "
            f"gzip-compressed if its name ends in .gz. Received: path={path!r}"
        ) from None
    if data[:2] == _GZIP_MAGIC:
        what = ("its decompressed content starts with the gzip magic bytes 1f 8b, so it "
                "looks compressed twice" if path.endswith(".gz") else
                "it starts with the gzip magic bytes 1f 8b, so it looks gzip-compressed")
        raise ValueError(
            f"Not an IDX file: {what}. Expected an uncompressed IDX file, or a "
            "gzip-compressed one whose name ends in .gz (rename it, or gunzip it). "
            f"Received: path={path!r}"
        )
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            "Not an IDX file: expected the magic bytes 0x00 0x00 <type> <ndim>. "
            f"Received: path={path!r} starting with {data[:4]!r}"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"IDX file is truncated: its header announces {ndim} dimensions ({header} header "
            f"bytes) but the file has {len(data)} bytes. Received: path={path!r}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(shape) * dtype.itemsize  # Python ints: np.prod overflows int64
    if len(data) - header != size:
        raise ValueError(
            f"IDX file is truncated or corrupt: its header says shape {shape}, i.e. {size:,} "
            f"bytes of data, but the file has {len(data) - header:,} bytes after the "
            f"{header}-byte header. Received: path={path!r}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _candidates(directory: str, name: str) -> list[str]:
    """The copies of one IDX file in `directory`: `name`.gz first, then `name`."""
    paths = [os.path.join(directory, c) for c in (name + ".gz", name)]
    return [p for p in paths if os.path.isfile(p)]


def _read_idx_copies(paths: list[str], ndim: int) -> np.ndarray:
    """The first of `paths` that reads as an `ndim`-D IDX array; a copy that fails is only
    an error when no other copy reads (a good raw file beside a corrupt .gz is used, with a
    warning naming the bad one); when none reads, the error names every copy's problem."""
    errors = []
    for path in paths:
        try:
            array = read_idx(path)
            if array.ndim != ndim:
                raise ValueError(
                    f"{'Images' if ndim == 3 else 'Labels'} must be a {ndim}-D IDX array "
                    f"({'count, height, width' if ndim == 3 else 'count'}). Received: shape "
                    f"{array.shape} in {path!r}")
        except ValueError as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"Using {path!r}: the other copy cannot be used. {errors[0]}",
                          stacklevel=5)
        return array
    if len(errors) == 1:
        raise ValueError(errors[0])
    raise ValueError(f"None of the {len(paths)} copies of {os.path.basename(paths[-1])} can "
                     "be used: " + " / ".join(f"({i + 1}) {e}" for i, e in enumerate(errors)))


def _missing_files(name: str, directory: str) -> list[str]:
    """The files of `name` that `directory` lacks (CIFAR-10: in the more complete of
    `directory` and its cifar-10-batches-py)."""
    if name == "cifar10":
        missing = [[b for b in CIFAR_BATCHES if not os.path.isfile(os.path.join(d, b))]
                   for d in (directory, os.path.join(directory, "cifar-10-batches-py"))]
        return min(missing, key=len)
    return [f + "[.gz]" for f in IDX_FILES.values() if not _candidates(directory, f)]


def _load_idx_dir(directory: str):
    paths = {key: _candidates(directory, name) for key, name in IDX_FILES.items()}
    if not all(paths.values()):
        return None
    ndims = {"x_train": 3, "y_train": 1, "x_test": 3, "y_test": 1}
    arrays = {key: _read_idx_copies(p, ndims[key]) for key, p in paths.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _load_cifar_dir(directory: str):
    for d in (directory, os.path.join(directory, "cifar-10-batches-py")):
        if all(os.path.isfile(os.path.join(d, b)) for b in CIFAR_BATCHES):
            parts = []
            for b in CIFAR_BATCHES:
                path = os.path.join(d, b)
                try:
                    with open(path, "rb") as f:
                        batch = pickle.load(f, encoding="bytes")
                    x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                    y = np.asarray(batch[b"labels"])
                except Exception as e:  # truncated, not a pickle, other keys, other sizes
                    raise ValueError(
                        "A CIFAR-10 batch must be the pickled dict of the python version "
                        "(b'data': N x 3072 uint8, b'labels': N ints). Received: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:120]} reading "
                        f"{path!r}") from None
                parts.append((x.transpose(0, 2, 3, 1), y))
            x_train = np.concatenate([p[0] for p in parts[:5]])
            y_train = np.concatenate([p[1] for p in parts[:5]])
            return (x_train, y_train), parts[5]
    return None


def _load_raw(name: str, data_dir: str | None, allow_download: bool):
    """Returns ((x_train, y_train), (x_test, y_test)) as uint8 images and the source."""
    tried = []
    files = (", ".join(CIFAR_BATCHES) if name == "cifar10"
             else ", ".join(f + "[.gz]" for f in IDX_FILES.values()))
    if data_dir:  # asked for by name: only there (no silent fall-back to other data)
        raw = _load_cifar_dir(data_dir) if name == "cifar10" else _load_idx_dir(data_dir)
        if raw is None:
            missing = _missing_files(name, data_dir)
            total = len(CIFAR_BATCHES) if name == "cifar10" else len(IDX_FILES)
            what = (f"no {name} files" if len(missing) == total else
                    f"{total - len(missing)} of the {total} {name} files, missing "
                    + ", ".join(missing))
            raise DatasetNotFoundError(
                f"`data_dir` has {what}. Expected {files} in it. Received: "
                f"data_dir={data_dir!r}, which holds {sorted(os.listdir(data_dir))[:8]}"
            )
        return raw, data_dir
    local_dirs = [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else []
    for directory in local_dirs:
        if os.path.isdir(directory):
            raw = _load_cifar_dir(directory) if name == "cifar10" else _load_idx_dir(directory)
            if raw is not None:
                return raw, directory
        what = "CIFAR-10 Python batches" if name == "cifar10" else "IDX files"
        tried.append(f"{what} in {directory!r} (not found)")
    if allow_download:
        import keras

        try:
            return getattr(keras.datasets, name).load_data(), "keras.datasets"
        except Exception as e:  # keras raises a bare Exception on a failed download.
            tried.append(f"keras.datasets.{name} ({type(e).__name__}: {str(e)[:120]})")
    else:
        tried.append(f"keras.datasets.{name} (downloads disabled)")
    hint = ("install the Debian package dataset-fashion-mnist, " if name == "fashion_mnist"
            else "")
    raise DatasetNotFoundError(
        f"Could not load the dataset {name!r}. Tried: {'; '.join(tried)}. Expected: "
        f"{hint}pass --data_dir (data_dir=) with {files}, or connect to the internet so that "
        f"keras.datasets can download it. Received: name={name!r}, data_dir={data_dir!r}"
    )


def _prepare_images(x: np.ndarray, pad_to: int | None, channels: int | None) -> np.ndarray:
    x = np.asarray(x, np.float32) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    if pad_to is not None:
        h, w = x.shape[1:3]
        if pad_to < max(h, w):
            raise ValueError(
                f"`pad_to` must be at least the image size {h}x{w}. Received: pad_to={pad_to}"
            )
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        x = np.pad(x, ((0, 0), (top, pad_to - h - top), (left, pad_to - w - left), (0, 0)))
    if channels is not None and channels != x.shape[-1]:
        if x.shape[-1] != 1:
            raise ValueError(
                "`channels` can only replicate a single-channel image. "
                f"Received: channels={channels} for images with {x.shape[-1]} channels"
            )
        x = np.repeat(x, channels, axis=-1)
    return x


def _check_arrays(name, source, x_train, y_train, x_test, y_test) -> None:
    """Images in both sets, one label per image, labels in [0, 10), one image size."""
    for part, x, y in (("training", x_train, y_train), ("test", x_test, y_test)):
        y = np.asarray(y).reshape(-1)
        if not len(x):
            raise ValueError(f"The {name} {part} set must have at least one image. Received: "
                             f"0 images from {source}")
        if len(x) != len(y):
            raise ValueError(
                f"The {name} {part} set must have one label per image. Received: {len(x)} "
                f"images and {len(y)} labels from {source}")
        if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise ValueError(
                f"The {name} {part} labels must be class indices in [0, {NUM_CLASSES}). "
                f"Received: labels in [{y.min()}, {y.max()}] from {source}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"The {name} training and test images must have one size. Received: "
            f"{x_train.shape[1:]} and {x_test.shape[1:]} from {source}")


def load(name: str = "fashion_mnist", data_dir: str | None = None, validation_split: float = 0.1,
         seed: int = 0, max_train: int | None = None, max_test: int | None = None,
         standardize: bool = True, pad_to: int | None = None, channels: int | None = None,
         allow_download: bool = True, max_unused: int = 10000) -> Dataset:
    """Loads, normalises and splits a dataset.

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        data_dir: a directory with the dataset's files (see the module docstring); when
            given, the only place the data is read from.
        validation_split: the fraction of the (possibly truncated) training set held out for
            validation, in [0, 1).
        seed: seeds the shuffle of the training set before the split and the truncation.
        max_train: keep at most this many training images (before the split); None keeps all.
        max_test: keep the first `max_test` test images; None keeps all.
        standardize: subtract the training split's per-channel mean and divide by its std
            after scaling to [0, 1]; otherwise images stay in [0, 1].
        pad_to: zero-pad the images to `pad_to` x `pad_to` (Fashion-MNIST for the CIFAR nets).
        channels: replicate single-channel images to this many channels.
        allow_download: try keras.datasets when no local files are found.
        max_unused: keep up to this many of the training images that `max_train` leaves out
            (`x_unused`, the next ones in the seeded order; 0: none). They change nothing else:
            the splits and the statistics are the same with any value.

    Returns:
        A `Dataset` with float32 NHWC images and int64 labels.

    Example:
    >>> data = load("fashion_mnist", pad_to=32, channels=3, max_train=100, max_test=10)
    >>> data.input_shape
    (32, 32, 3)
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset. Expected one of {DATASETS}. Received: name={name!r}")
    if (isinstance(validation_split, (bool, np.bool_))
            or not isinstance(validation_split, (int, float, np.integer, np.floating))
            or not 0.0 <= float(validation_split) < 1.0):
        raise ValueError(
            "`validation_split` must be a number in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    if (isinstance(max_unused, (bool, np.bool_)) or not isinstance(max_unused, (int, np.integer))
            or max_unused < 0):
        raise ValueError(f"`max_unused` must be an integer >= 0. Received: "
                         f"max_unused={max_unused!r}")
    for arg, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and (isinstance(value, (bool, np.bool_))
                                  or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(
                f"`{arg}` must be a positive integer or None. Received: {arg}={value!r}"
            )
    max_train = None if max_train is None else int(max_train)
    max_test = None if max_test is None else int(max_test)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DatasetNotFoundError(
            f"`data_dir` is not a directory. Expected a directory with the {name} files. "
            f"Received: data_dir={data_dir!r}"
        )
    ((x_train, y_train), (x_test, y_test)), source = _load_raw(name, data_dir, allow_download)
    _check_arrays(name, source, x_train, y_train, x_test, y_test)
    y_train = np.asarray(y_train, np.int64).reshape(-1)
    y_test = np.asarray(y_test, np.int64).reshape(-1)

    order = np.random.default_rng(seed).permutation(len(x_train))
    unused = order[len(order):]
    if max_train is not None:
        order, unused = order[:max_train], order[max_train:max_train + int(max_unused)]
    x_unused, y_unused = x_train[unused], y_train[unused]
    x_train, y_train = x_train[order], y_train[order]
    if max_test is not None:
        x_test, y_test = x_test[:max_test], y_test[:max_test]
    n_val = int(round(len(x_train) * float(validation_split)))
    n_fit = len(x_train) - n_val
    if n_fit < 1:
        raise ValueError(
            "The validation split leaves no training images. "
            f"Received: validation_split={validation_split} of {len(x_train)} images"
        )

    x_train = _prepare_images(x_train, pad_to, channels)
    x_test = _prepare_images(x_test, pad_to, channels)
    x_unused = _prepare_images(x_unused, pad_to, channels)
    x_fit, x_val = x_train[:n_fit], x_train[n_fit:]
    y_fit, y_val = y_train[:n_fit], y_train[n_fit:]
    channels_n = x_fit.shape[-1]
    if standardize:
        mean = x_fit.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        std = x_fit.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        std = np.maximum(std, 1e-6)
    else:
        mean = np.zeros(channels_n, np.float32)
        std = np.ones(channels_n, np.float32)

    def norm(x):
        return ((x - mean) / std).astype(np.float32)

    return Dataset(name=name, source=source, x_train=norm(x_fit), y_train=y_fit,
                   x_val=norm(x_val), y_val=y_val, x_test=norm(x_test), y_test=y_test,
                   mean=mean, std=std, x_unused=norm(x_unused), y_unused=y_unused)
