"""Real datasets that install offline, as float32 NumPy arrays.

* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes),
  always available after ``pip install optzoo``.
* ``fashion-mnist``: the full Fashion-MNIST (60k/10k, 28x28) from the Debian
  package ``dataset-fashion-mnist`` (IDX ``.gz`` files under
  ``/usr/share/datasets/fashion-mnist``). When absent, :class:`DatasetError`
  says how to install it.

Every loader returns a :class:`Dataset` with images in NHWC layout scaled to
``[0, 1]`` and int32 labels; the train/test split is fixed by ``seed`` so the
same seed always gives the same split.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
from typing import Iterator, Optional

import numpy as np

from optzoo._src import optional

__all__ = [
    "Dataset",
    "DatasetError",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_INSTALL",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "batches",
    "batch_order",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = (
    "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
    " (Debian/Ubuntu), or without root: apt-get download dataset-fashion-mnist"
    " && dpkg-deb -x dataset-fashion-mnist_*.deb DIR and set"
    " OPTZOO_FASHION_MNIST_DIR=DIR/usr/share/datasets/fashion-mnist"
)
DATASETS = ("digits", "fashion-mnist")


class DatasetError(RuntimeError):
  """A dataset is unknown or not installed; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset split into train and test parts.

  Attributes:
    name: dataset name.
    x_train, x_test: float32 images, shape ``(n, height, width, 1)`` in [0, 1].
    y_train, y_test: int32 labels in ``[0, num_classes)``.
    num_classes: number of classes.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple:
    return tuple(self.x_train.shape[1:])

  @property
  def num_features(self) -> int:
    return int(np.prod(self.x_train.shape[1:]))

  def subset(self, n_train: Optional[int] = None, n_test: Optional[int] = None
             ) -> "Dataset":
    """The first ``n_train`` / ``n_test`` examples (the split is already shuffled)."""
    return dataclasses.replace(
        self,
        x_train=self.x_train[:n_train], y_train=self.y_train[:n_train],
        x_test=self.x_test[:n_test], y_test=self.y_test[:n_test])

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, train={self.x_train.shape},"
            f" test={self.x_test.shape}, classes={self.num_classes})")


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(x))
  n_test = int(round(len(x) * test_fraction))
  test, train = perm[:n_test], perm[n_test:]
  return x[train], y[train], x[test], y[test]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """scikit-learn's 8x8 digits, 0-16 pixel values scaled to [0, 1].

  Args:
    test_fraction: share of the 1797 images held out for testing.
    seed: seed of the (fixed) shuffled split.
  """
  _sk_load = optional.import_optional(  # local: slow import
      "sklearn.datasets", "optzoo.nn.load_digits").load_digits

  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
  d = _sk_load()
  x = (d.images.astype(np.float32) / 16.0)[..., None]
  y = d.target.astype(np.int32)
  x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction, seed)
  return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


def _read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (``.gz`` or plain): images (magic 2051) or labels (2049)."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  magic = int.from_bytes(data[:4], "big")
  if magic == 2049:
    n = int.from_bytes(data[4:8], "big")
    arr = np.frombuffer(data, np.uint8, count=n, offset=8)
  elif magic == 2051:
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    arr = np.frombuffer(data, np.uint8, count=n * h * w, offset=16).reshape(n, h, w)
  else:
    raise DatasetError(f"{path} is not an IDX image/label file (magic {magic}).")
  return arr


def _find(directory: str, stem: str) -> Optional[str]:
  for name in (stem + ".gz", stem):
    p = os.path.join(directory, name)
    if os.path.exists(p):
      return p
  return None


def load_fashion_mnist(directory: Optional[str] = None) -> Dataset:
  """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

  Args:
    directory: folder with the four IDX files; default
      ``$OPTZOO_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``.

  Raises:
    DatasetError: the files are missing (the message says how to install them).
  """
  directory = directory or os.environ.get("OPTZOO_FASHION_MNIST_DIR",
                                          FASHION_MNIST_DIR)
  stems = {
      "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
      "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
  paths = {k: _find(directory, s) for k, s in stems.items()}
  missing = [stems[k] for k, p in paths.items() if p is None]
  if missing:
    raise DatasetError(
        f"Fashion-MNIST not found in {directory} (missing {missing[0]}.gz)."
        f" Install it with: {FASHION_MNIST_INSTALL}")
  arrs = {k: _read_idx(p) for k, p in paths.items()}
  to_x = lambda a: (a.astype(np.float32) / 255.0)[..., None]
  return Dataset("fashion-mnist", to_x(arrs["x_train"]),
                 arrs["y_train"].astype(np.int32), to_x(arrs["x_test"]),
                 arrs["y_test"].astype(np.int32), 10)


def load_dataset(name: str, seed: int = 0) -> Dataset:
  """Loads ``"digits"`` or ``"fashion-mnist"`` (see the module docstring)."""
  key = name.lower().replace("_", "-")
  if key in ("digits", "sklearn-digits"):
    return load_digits(seed=seed)
  if key in ("fashion-mnist", "fashionmnist", "fmnist"):
    return load_fashion_mnist()
  raise DatasetError(
      f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int,
            epoch: int = 0, drop_last: bool = True
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Shuffled minibatches; the order depends only on ``(seed, epoch)``.

  With ``drop_last`` every batch has exactly ``batch_size`` rows, so a jitted
  train step compiles once.
  """
  perm = batch_order(len(x), batch_size, seed=seed, epoch=epoch,
                     drop_last=drop_last)
  for i in range(0, len(perm), batch_size):
    idx = perm[i:i + batch_size]
    yield x[idx], y[idx]


def batch_order(n: int, batch_size: int, *, seed: int, epoch: int = 0,
                drop_last: bool = True) -> np.ndarray:
  """The example indices of one epoch of :func:`batches`, batch after batch."""
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be >= 1, got {batch_size!r}.")
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[:n - (n % batch_size if drop_last else 0)]
