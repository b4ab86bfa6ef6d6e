"""Choosing which examples of a split to keep: class subsets and per-class caps.

Every source applies the same rules (here) so that a quick run picks the same images
whichever loader read them:

* ``classes``: original class indices to keep, relabelled ``0..k-1`` in the order given.
* ``max_per_class``: keep the first ``n`` examples of each kept class (source order).
* ``max_total``: then keep the first ``n`` of what is left (used for the test split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ncfm_jax.errors import InputError


class Selection(NamedTuple):
  """Which examples to keep (``None`` everywhere keeps everything).

  Attributes:
    classes: original class indices to keep, relabelled ``0..k-1`` in this order.
    max_train_per_class: keep the first n training examples of each class.
    max_test: keep the first n test examples (after the class filter).
  """
  classes: tuple[int, ...] | None = None
  max_train_per_class: int | None = None
  max_test: int | None = None


def resolve_classes(classes: Sequence[int] | None, num_classes: int,
                    dataset: str) -> tuple[int, ...]:
  """Validates a class subset; ``None`` means all ``num_classes`` classes in order."""
  if classes is None:
    return tuple(range(num_classes))
  kept = tuple(int(c) for c in classes)
  if not kept:
    raise InputError(f"{dataset}: data.classes is empty; give at least one class index")
  bad = [c for c in kept if not 0 <= c < num_classes]
  if bad:
    raise InputError(
        f"{dataset}: data.classes {bad} out of range [0, {num_classes})")
  if len(set(kept)) != len(kept):
    raise InputError(f"{dataset}: data.classes {list(kept)} has duplicates")
  return kept


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """Raises if ``labels`` is not 1-d integer with every value in ``[0, num_classes)``."""
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise InputError(
        f"{where}: labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
  if labels.size:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
      raise InputError(
          f"{where}: label values [{low}, {high}] out of range [0, {num_classes})")


def select_indices(labels: np.ndarray, kept: Sequence[int], num_classes: int, *,
                   max_per_class: int | None = None,
                   max_total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the examples to keep and their new labels.

  Args:
    labels: int [N] original labels, all in ``[0, num_classes)``.
    kept: original class indices to keep; class ``kept[j]`` becomes label ``j``.
    num_classes: number of original classes.
    max_per_class: keep at most the first n examples of each kept class.
    max_total: then keep at most the first n examples overall.

  Returns:
    ``(indices int64 [M], new_labels int32 [M])`` with indices increasing, so the
    source order is preserved.
  """
  remap = np.full(num_classes, -1, np.int64)
  remap[np.asarray(kept, np.int64)] = np.arange(len(kept))
  new_labels = remap[labels]
  keep = new_labels >= 0
  if max_per_class is not None:
    # Rank of each example within its class: stable sort by label, then position
    # in the run of equal labels.
    order = np.argsort(new_labels, kind="stable")
    sorted_labels = new_labels[order]
    run_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - run_start
    keep &= rank < max_per_class
  indices = np.flatnonzero(keep)
  if max_total is not None:
    indices = indices[:max_total]
  return indices, new_labels[indices].astype(np.int32)


def take(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """``array[indices]``, without a copy when ``indices`` keeps every row in order."""
  if indices.shape[0] == array.shape[0]:  # increasing and complete: the identity
    return array
  return array[indices]
