"""Per-class batches of real images, drawn on the device or on the host.

NCFM matches class by class, so every step needs, for each class c, B real images of
class c. Two ways, with the same output ``uint8 [C, B, H, W, C']`` (C classes, C'
channels):

* ``sample_class_batches``: the uint8 training set lives on the device with a padded
  per-class index table (``make_class_indexed``); drawing is a jittable function of a
  PRNG key, so it runs inside the step with no host round trip.
* ``HostClassSampler``: numpy, for training sets too large for device memory; the
  caller transfers each batch. ``fits_on_device`` decides between the two.

Within a class, every step draws a fresh uniformly random permutation of the class's
images and takes its first B (the release's real batch: the first ``min(B, count)`` of a
permutation, without replacement). Both samplers need B at most the smallest class's
count for B distinct images in every class; ``effective_batch_real`` is that cap. A
larger B repeats the permutation cyclically in the smaller classes (each image then
appears ``floor(B / count)`` or ``ceil(B / count)`` times, never drawn with replacement).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

# Default device budget for the uint8 training images; the config passes its own.
DEFAULT_DEVICE_LIMIT_BYTES = 2 * 1024**3


class ClassIndexedData(NamedTuple):
  """A training set indexed by class, for on-device sampling.

  Attributes:
    images: uint8 [N, H, W, C'].
    class_index: int32 [C, max_count]; row c lists the indices of class c's images,
      padded (with the row's first index) up to the largest class.
    class_counts: int32 [C], the number of valid entries of each row.
  """
  images: jax.Array
  class_index: jax.Array
  class_counts: jax.Array


def class_index_table(labels: np.ndarray, num_classes: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Host-side per-class index table.

  Args:
    labels: int [N] in ``[0, num_classes)``; every class must occur.
    num_classes: C.

  Returns:
    ``(class_index int32 [C, max_count], class_counts int32 [C])``; padding repeats
    the class's first index, so even a padded entry is an image of that class.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels [{labels.min()}, {labels.max()}] out of range [0, {num_classes})")
  counts = np.bincount(labels, minlength=num_classes).astype(np.int32)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f"classes {empty[:10].tolist()} have no images to sample from")
  order = np.argsort(labels, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  # Column j of row c holds the j-th image of class c, or the first one past the end.
  column = np.arange(counts.max())
  positions = starts[:, None] + np.where(column[None, :] < counts[:, None], column[None, :], 0)
  return order[positions].astype(np.int32), counts


def make_class_indexed(images: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> ClassIndexedData:
  """Puts a training set on the device with its per-class index table.

  Args:
    images: uint8 [N, H, W, C'] (host or device array).
    labels: int [N] in ``[0, num_classes)``; every class must have an image.
    num_classes: C.

  Returns:
    ``ClassIndexedData`` of jax arrays.
  """
  chex.assert_rank(images, 4)
  chex.assert_type(images, jnp.uint8)
  if images.shape[0] != np.shape(labels)[0]:
    raise ValueError(f"{images.shape[0]} images but {np.shape(labels)[0]} labels")
  class_index, class_counts = class_index_table(np.asarray(labels), num_classes)
  return ClassIndexedData(jnp.asarray(images), jnp.asarray(class_index),
                          jnp.asarray(class_counts))


def effective_batch_real(batch_real: int, class_counts) -> int:
  """The real batch per class the samplers can draw without repeats.

  ``min(batch_real, min_c count_c)``: the release takes the first ``min(batch_real,
  count_c)`` images of a permutation of class c, so CIFAR-100 and Tiny ImageNet (500
  images per class) get 500 at ``batch_real=1024``. One B for every class keeps the
  batch ``[C, B, ...]`` rectangular.

  Args:
    batch_real: the requested B (``distill.batch_real``), >= 1.
    class_counts: int [C], training images per class (``class_index_table``'s counts).

  Returns:
    B capped at the smallest class's count.

  >>> effective_batch_real(1024, [500, 500, 500])
  500
  """
  counts = np.asarray(class_counts)
  if batch_real < 1:
    raise ValueError(f"batch_real must be >= 1, got {batch_real}")
  if counts.ndim != 1 or counts.size == 0 or counts.min() < 1:
    raise ValueError(f"class_counts must be a non-empty list of positive counts, got {counts}")
  return int(min(batch_real, counts.min()))


def _class_positions(key: jax.Array, count: jax.Array, *, max_count: int,
                     batch_per_class: int, fixed: bool = False) -> jax.Array:
  """B positions in ``[0, count)``: the first B of a random permutation of the
  class (``fixed``: of the class in training-set order), repeated cyclically when
  ``count < B``."""
  if fixed:
    return jnp.arange(batch_per_class) % count
  # The valid positions sorted by i.i.d. uniform scores are a uniformly random
  # permutation; padding scores -1 and comes after every valid position.
  k = min(batch_per_class, max_count)
  scores = jnp.where(jnp.arange(max_count) < count,
                     jax.random.uniform(key, (max_count,)), -1.0)
  _, top = jax.lax.top_k(scores, k)
  return top[jnp.arange(batch_per_class) % jnp.minimum(count, k)]


@functools.partial(jax.jit, static_argnames=("batch_per_class", "fixed"))
def sample_class_batches(key: jax.Array, data: ClassIndexedData,
                         batch_per_class: int, fixed: bool = False) -> jax.Array:
  """Draws ``batch_per_class`` images of every class, on the device.

  Args:
    key: PRNG key.
    data: ``ClassIndexedData`` (from ``make_class_indexed``).
    batch_per_class: B (static).
    fixed: the first B images of each class in training-set order, whatever the
      key (the release's loader: `class_sample(c, batch_real)` every iteration).

  Returns:
    uint8 [C, B, H, W, C']; ``out[c]`` are B distinct images of class c drawn
    uniformly without replacement when the class has at least B images (see
    ``effective_batch_real``), else its permutation repeated cyclically.
  """
  chex.assert_rank([data.images, data.class_index, data.class_counts], [4, 2, 1])
  return sample_class_block(key, data, batch_per_class, 0, data.class_index.shape[0],
                            fixed=fixed)


def sample_class_block(key: jax.Array, data: ClassIndexedData, batch_per_class: int,
                       start: jax.Array | int, size: int, fixed: bool = False) -> jax.Array:
  """Classes ``start .. start + size - 1`` of ``sample_class_batches(key, data, B)``.

  Class c draws with the c-th of ``jax.random.split(key, C)`` whichever block it is
  drawn in, so blocks of a step's batch are exactly its slices (a step over class
  blocks samples one block at a time and never holds the whole ``[C, B, ...]``).

  Args:
    key: PRNG key (the step's).
    data: ``ClassIndexedData`` of C classes.
    batch_per_class: B (static).
    start: first class (may be traced); ``size``: classes in the block (static).

  Returns:
    uint8 [size, B, H, W, C'].
  """
  num_classes, max_count = data.class_index.shape
  take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, size)
  positions = jax.vmap(functools.partial(
      _class_positions, max_count=max_count, batch_per_class=batch_per_class,
      fixed=fixed))(
          take(jax.random.split(key, num_classes)), take(data.class_counts))
  indices = jnp.take_along_axis(take(data.class_index), positions, axis=1)  # [size, B]
  return data.images[indices]


class HostClassSampler:
  """numpy counterpart of ``sample_class_batches`` for host-resident data.

  The draw for a step is a function of ``(seed, step)`` only, so a resumed run that
  passes its step sees the same batches. Without an explicit step, calls continue
  from an internal cursor (0, 1, 2, ...; an explicit step moves it to step + 1).
  Example::

    sampler = HostClassSampler(ds.train_images, ds.train_labels, 10, seed=0)
    batch = sampler.sample(64, step=0)                   # uint8 [10, 64, H, W, C']
    steps = sampler.sample_many(5, 64, start_step=1)     # uint8 [5, 10, 64, H, W, C']
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
               seed: int, fixed: bool = False):
    """Args: images uint8 [N, H, W, C'], labels int [N], num_classes C, seed;
    fixed: every step the first B images of each class (as ``sample_class_batches``)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if images.shape[0] != np.shape(labels)[0]:
      raise ValueError(f"{images.shape[0]} images but {np.shape(labels)[0]} labels")
    self.images = images
    self.class_index, self.class_counts = class_index_table(labels, num_classes)
    self.seed = int(seed)
    self.fixed = bool(fixed)
    self.next_step = 0

  @property
  def num_classes(self) -> int:
    return int(self.class_counts.shape[0])

  def _take_step(self, step: int | None) -> int:
    step = self.next_step if step is None else int(step)
    self.next_step = step + 1
    return step

  def sample_indices(self, batch_per_class: int, step: int | None = None) -> np.ndarray:
    """int [C, B] image indices for ``step`` (same rules as the device sampler)."""
    rng = np.random.default_rng((self.seed, self._take_step(step)))
    rows = []
    for index_row, count in zip(self.class_index, self.class_counts):
      distinct = (np.arange(min(batch_per_class, count)) if self.fixed else
                  rng.choice(count, min(batch_per_class, count), replace=False))
      rows.append(index_row[distinct[np.arange(batch_per_class) % distinct.size]])
    return np.stack(rows)

  def sample(self, batch_per_class: int, step: int | None = None) -> np.ndarray:
    """uint8 [C, B, H, W, C'] images for ``step``; ``out[c]`` are of class c."""
    return self.images[self.sample_indices(batch_per_class, step)]

  def sample_many(self, num_steps: int, batch_per_class: int,
                  start_step: int | None = None) -> np.ndarray:
    """uint8 [T, C, B, H, W, C'] for steps ``start_step .. start_step + T - 1``."""
    first = self.next_step if start_step is None else int(start_step)
    indices = np.stack([self.sample_indices(batch_per_class, first + t)
                        for t in range(num_steps)])
    return self.images[indices]


def fits_on_device(num_bytes: int, limit_bytes: int = DEFAULT_DEVICE_LIMIT_BYTES) -> bool:
  """Whether a training set of ``num_bytes`` may be sampled on the device.

  ``num_bytes`` is e.g. ``dataset.train_images.nbytes``; ``limit_bytes`` comes from
  the config (the budget left for the uint8 images besides models and activations).
  """
  if num_bytes < 0 or limit_bytes < 0:
    raise ValueError(f"byte counts must be >= 0, got {num_bytes}, {limit_bytes}")
  return num_bytes <= limit_bytes
