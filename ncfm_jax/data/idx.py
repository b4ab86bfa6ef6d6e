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
from typing import NamedTuple

import numpy as np

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


def _read_bytes(path: Path) -> bytes:
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] != _GZIP_MAGIC:
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as err:
    raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err


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
  raw = _read_bytes(path)
  expected_magic = bytes([0, 0, _UBYTE, ndim])
  if len(raw) < 4:
    raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
  if raw[:4] != expected_magic:
    raise ValueError(
        f"{path}: bad IDX magic number 0x{raw[:4].hex()}, expected "
        f"0x{expected_magic.hex()} (unsigned byte, {ndim} dimensions)")
  header_len = 4 + 4 * ndim
  if len(raw) < header_len:
    raise ValueError(f"{path}: truncated IDX header ({len(raw)} < {header_len} bytes)")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  expected_len = header_len + int(np.prod(dims, dtype=np.int64))
  if len(raw) < expected_len:
    raise ValueError(
        f"{path}: truncated IDX file: header says {dims} ({expected_len} bytes), "
        f"file has {len(raw)} bytes")
  if len(raw) > expected_len:
    raise ValueError(
        f"{path}: {len(raw) - expected_len} unexpected trailing bytes after IDX data {dims}")
  # Copy so the caller owns a writable array, not a view of the bytes object.
  return np.frombuffer(raw, np.uint8, offset=header_len).reshape(dims).copy()


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
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
        f"{images_path}: {images.shape[0]} images but {labels_path} has "
        f"{labels.shape[0]} labels")
  if labels.size and labels.max() >= num_classes:
    raise ValueError(
        f"{labels_path}: label {int(labels.max())} out of range [0, {num_classes})")
  return images[..., None], labels.astype(np.int32)


def load_idx(files: IdxFiles, num_classes: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Reads both splits.

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
