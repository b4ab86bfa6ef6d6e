"""Image folders: ``root/<split>/<class>/**/*.{jpg,jpeg,png}`` (any letter case).

Splits are ``train`` and ``test``; ``val`` is accepted as the test split (Tiny ImageNet,
Imagenette). Images are found recursively under each class directory, so the official
Tiny ImageNet train layout ``train/<wnid>/images/*.JPEG`` works as it is. Classes are
the sorted directory names unless the caller fixes the order (ImageNet subsets follow
their WordNet id list). Both splits must hold the same classes, and every class
directory at least one image.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ncfm_jax.data import images as images_lib
from ncfm_jax.data import selection as selection_lib
from ncfm_jax.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TRAIN_SPLIT = "train"
TEST_SPLITS = ("test", "val")


def find_root(candidates: Sequence[str | os.PathLike]) -> Path | None:
  """The first candidate directory that has a ``train`` sub-directory."""
  for candidate in candidates:
    if (Path(candidate) / TRAIN_SPLIT).is_dir():
      return Path(candidate)
  return None


def find_test_split_dir(root: Path, test_split: str | None) -> Path:
  """``root/test`` or ``root/val`` (or ``root/<test_split>`` when given)."""
  if test_split is not None:
    names = (test_split,)
  else:
    names = tuple(name for name in TEST_SPLITS if (root / name).is_dir())
    if len(names) > 1:
      raise InputError(
          f"{root} has both test/ and val/; set data.test_split to the labelled one")
    if not names:
      raise InputError(f"{root} has no test/ or val/ split directory")
  if not (root / names[0]).is_dir():
    raise InputError(f"test split directory {root / names[0]} does not exist")
  return root / names[0]


def _class_dirs(split_dir: Path) -> list[str]:
  # Hidden directories (.ipynb_checkpoints, ...) are not classes.
  return sorted(p.name for p in split_dir.iterdir()
                if p.is_dir() and not p.name.startswith("."))


def _class_files(class_dir: Path) -> list[Path]:
  files = sorted(p for p in class_dir.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise InputError(
        f"class directory {class_dir} is empty (no {'/'.join(IMAGE_SUFFIXES)} images)")
  return files


def class_counts(split_dir: Path) -> list[int]:
  """Image files per class directory of a split (sorted class names), nothing decoded."""
  return [sum(1 for p in (split_dir / name).rglob("*")
              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
          for name in _class_dirs(split_dir)]


def list_split(split_dir: Path, class_names: Sequence[str]
               ) -> tuple[list[Path], np.ndarray]:
  """All image files of a split, class-major, and their labels int32 [N]."""
  files, labels = [], []
  for label, name in enumerate(class_names):
    class_files = _class_files(split_dir / name)
    files += class_files
    labels += [label] * len(class_files)
  return files, np.asarray(labels, np.int32)


def folder_classes(train_dir: Path, test_dir: Path,
                   class_order: Sequence[str] | None) -> tuple[str, ...]:
  """The class names of both splits, checked to agree (and with ``class_order``)."""
  train_classes, test_classes = _class_dirs(train_dir), _class_dirs(test_dir)
  if not train_classes:
    raise InputError(f"{train_dir} has no class sub-directories")
  if set(train_classes) != set(test_classes):
    only_train = sorted(set(train_classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(train_classes))
    raise InputError(
        f"class directories differ between {train_dir} and {test_dir}: only in "
        f"{train_dir.name}: {only_train[:5]}, only in {test_dir.name}: {only_test[:5]}")
  if class_order is None:
    return tuple(train_classes)
  if set(class_order) != set(train_classes):
    missing = sorted(set(class_order) - set(train_classes))
    extra = sorted(set(train_classes) - set(class_order))
    raise InputError(
        f"{train_dir}: class directories do not match the expected classes: "
        f"missing {missing[:5]}, unexpected {extra[:5]}")
  return tuple(class_order)


def _decode_files(files: Sequence[Path], *, image_size: int | None, channels: int,
                  num_workers: int) -> np.ndarray:
  decode = functools.partial(_decode_path, image_size=image_size, channels=channels)
  decoded = images_lib.decode_many(files, decode, num_workers)
  if image_size is None and decoded:
    first = decoded[0].shape
    for path, image in zip(files, decoded):
      if image.shape != first:
        raise InputError(
            f"{path}: image size {image.shape[:2]} differs from {files[0]} "
            f"{first[:2]}; set data.image_size to resize")
  if not decoded:
    return np.zeros((0, image_size or 0, image_size or 0, channels), np.uint8)
  return np.stack(decoded)


def _decode_path(path: Path, *, image_size: int | None, channels: int) -> np.ndarray:
  return images_lib.decode_image(path, channels=channels, size=image_size, name=str(path))


def load_folder(root: Path, *, selection: selection_lib.Selection,
                image_size: int | None, channels: int, test_split: str | None,
                num_workers: int, class_order: Sequence[str] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
  """Reads the train and test splits of an image folder.

  Only the selected files are decoded (class subset and caps are applied to the
  file lists first, with the rules of ``selection.py``).

  Args:
    root: directory holding ``train/`` and ``test/`` (or ``val/``).
    selection: classes to keep and caps.
    image_size: output side (shorter side resized, centre crop), or None to keep
      the stored size (all images must then agree).
    channels: 1 or 3 (images are converted).
    test_split: name of the test split directory, or None for test/ or val/.
    num_workers: decoding threads.
    class_order: the expected classes in label order, or None for sorted names.

  Returns:
    ``(train_images uint8 [N, S, S, C], train_labels int32 [N], test_images,
    test_labels, class_names)`` with labels relabelled to the selected classes.

  Raises:
    ValueError: naming the file, class or directory at fault (corrupt image,
      empty class directory, class sets that differ between splits).
  """
  train_dir, test_dir = root / TRAIN_SPLIT, find_test_split_dir(root, test_split)
  all_classes = folder_classes(train_dir, test_dir, class_order)
  kept = selection_lib.resolve_classes(selection.classes, len(all_classes), str(root))
  decode = functools.partial(_decode_files, image_size=image_size, channels=channels,
                             num_workers=num_workers)
  arrays = []
  for split_dir, caps in ((train_dir, dict(max_per_class=selection.max_train_per_class)),
                          (test_dir, dict(max_total=selection.max_test))):
    files, labels = list_split(split_dir, all_classes)
    indices, new_labels = selection_lib.select_indices(
        labels, kept, len(all_classes), **caps)
    arrays += [decode([files[i] for i in indices]), new_labels]
  return (*arrays, tuple(all_classes[c] for c in kept))
