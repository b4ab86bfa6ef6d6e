"""MNIST-format IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.

IDX layout (http://yann.lecun.com/exdb/mnist/): 4 magic bytes ``0x00 0x00 TYPE NDIM``
(TYPE ``0x08`` = unsigned byte, the only type these datasets use), then NDIM big-endian
uint32 dimensions, then ``prod(dims)`` bytes of row-major data. Image files are
``idx3`` ([N, H, W]), label files ``idx1`` ([N]).

File names looked for (each optionally ending in ``.gz``):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (also the ``train-images.idx3-ubyte`` spelling).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from ncfm_jax.errors import InputError

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# (split prefix in the file names, kind, number of dimensions)
_FILES = {
    "train_images": ("train", "images", 3),
    "train_labels": ("train", "labels", 1),
    "test_images": ("t10k", "images", 3),
    "test_labels": ("t10k", "labels", 1),
}


class IdxFiles(NamedTuple):
  """Paths of the four IDX files of a dataset."""
  train_images: Path
  train_labels: Path
  test_images: Path
  test_labels: Path


def _open(path: Path) -> BinaryIO:
  """The file, decompressed on the fly when it starts with the gzip magic."""
  with open(path, "rb") as f:
    compressed = f.read(2) == _GZIP_MAGIC
  return gzip.open(path, "rb") if compressed else open(path, "rb")


def _read_into(f: BinaryIO, out: np.ndarray, chunk_bytes: int = 1 << 20) -> int:
  """Fills ``out`` from ``f``; returns the number of bytes read.

  Chunked, because gzip's ``readinto`` decompresses into a temporary as large as
  the request: this keeps the peak at about one copy of the data.
  """
  view = memoryview(out.reshape(-1)).cast("B")
  filled = 0
  while filled < view.nbytes:
    count = f.readinto(view[filled:filled + chunk_bytes])
    if not count:
      break
    filled += count
  return filled


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """Reads one unsigned-byte IDX file into a uint8 array of shape ``dims``.

  Args:
    path: the file (gzip-compressed or raw, detected from its first bytes).
    ndim: the expected number of dimensions (3 for images, 1 for labels).

  Returns:
    uint8 array of the shape stored in the header, e.g. [60000, 28, 28].

  Raises:
    ValueError: naming the file, for a wrong magic number, a truncated file or
      trailing bytes.
  """
  path = Path(path)
  expected_magic = bytes([0, 0, _UBYTE, ndim])
  try:
    with _open(path) as f:
      magic = f.read(4)
      if len(magic) < 4:
        raise InputError(f"{path}: truncated IDX file ({len(magic)} bytes, no header)")
      if magic != expected_magic:
        raise InputError(
            f"{path}: bad IDX magic number 0x{magic.hex()}, expected "
            f"0x{expected_magic.hex()} (unsigned byte, {ndim} dimensions)")
      raw_dims = f.read(4 * ndim)
      if len(raw_dims) < 4 * ndim:
        raise InputError(f"{path}: truncated IDX header")
      dims = tuple(int(d) for d in np.frombuffer(raw_dims, ">u4"))
      out = np.empty(dims, np.uint8)
      filled = _read_into(f, out)
      if filled < out.size:
        raise InputError(
            f"{path}: truncated IDX file: header says {dims} ({out.size} bytes of data), "
            f"file has {filled}")
      if f.read(1):
        raise InputError(f"{path}: unexpected trailing bytes after IDX data {dims}")
  except (EOFError, gzip.BadGzipFile, zlib.error) as err:
    raise InputError(f"{path}: corrupt or truncated gzip stream ({err})") from err
  return out


def _find_file(directory: Path, prefix: str, kind: str, ndim: int) -> Path | None:
  for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
    for name in (stem, stem + ".gz"):
      if (directory / name).is_file():
        return directory / name
  return None


def find_idx_files(directories: Sequence[str | os.PathLike]) -> IdxFiles | None:
  """The first directory holding all four IDX files, or None if none does."""
  for directory in directories:
    directory = Path(directory)
    found = {field: _find_file(directory, *spec) for field, spec in _FILES.items()}
    if all(found.values()):
      return IdxFiles(**found)
  return None


def _read_split(images_path: Path, labels_path: Path,
                num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if images.shape[0] != labels.shape[0]:
    raise InputError(
        f"{images_path}: {images.shape[0]} images but {labels_path} has "
        f"{labels.shape[0]} labels")
  if num_classes is not None and labels.size and labels.max() >= num_classes:
    raise InputError(
        f"{labels_path}: label {int(labels.max())} out of range [0, {num_classes})")
  return images[..., None], labels.astype(np.int32)


def load_idx(files: IdxFiles, num_classes: int | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Reads both splits (labels checked against ``num_classes`` unless None).

  Returns:
    ``(train_images uint8 [N, H, W, 1], train_labels int32 [N], test_images,
    test_labels)``.

  Raises:
    ValueError: naming the file, for a malformed file, an image/label count
      mismatch or a label outside ``[0, num_classes)``.
  """
  train = _read_split(files.train_images, files.train_labels, num_classes)
  test = _read_split(files.test_images, files.test_labels, num_classes)
  return (*train, *test)
