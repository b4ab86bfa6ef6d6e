"""Tests for ncfm_jax.data.sampling: per-class batches on the device and on the host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import data
from ncfm_jax.data import sampling

# Class sizes: class 2 has fewer images than the batch of 4 (its permutation repeats).
_COUNTS = (5, 8, 3, 6)
_BATCH = 4


def _indexed_images(counts=_COUNTS, seed=0):
  """uint8 [N, 2, 3, 1] images whose pixels all equal their own index, shuffled labels."""
  labels = np.repeat(np.arange(len(counts)), counts)
  labels = np.random.default_rng(seed).permutation(labels)
  n = labels.size
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 3, 1))
  return np.ascontiguousarray(images), labels


def _image_ids(batch) -> np.ndarray:
  """The index encoded in each image of a [C, B, H, W, 1] batch -> int [C, B]."""
  batch = np.asarray(batch)
  assert (batch == batch[:, :, :1, :1, :]).all()  # images are constant
  return batch[:, :, 0, 0, 0].astype(int)


def test_class_index_table_pads_with_class_members():
  labels = np.array([1, 0, 1, 2, 1, 0])
  index, counts = sampling.class_index_table(labels, 3)
  np.testing.assert_array_equal(counts, [2, 3, 1])
  np.testing.assert_array_equal(index, [[1, 5, 1], [0, 2, 4], [3, 3, 3]])


def test_make_class_indexed_rejects_empty_class_and_bad_labels():
  images, labels = _indexed_images()
  with pytest.raises(ValueError, match=r"classes \[4\] have no images"):
    data.make_class_indexed(images, labels, 5)
  with pytest.raises(ValueError, match="out of range"):
    data.make_class_indexed(images, labels, 3)


def test_sample_class_batches_shape_membership_and_uniqueness():
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))
  assert indexed.class_index.dtype == jnp.int32 and indexed.class_counts.dtype == jnp.int32
  batch = data.sample_class_batches(jax.random.key(0), indexed, _BATCH)
  assert batch.shape == (len(_COUNTS), _BATCH, 2, 3, 1)
  assert batch.dtype == jnp.uint8
  ids = _image_ids(batch)
  for c, count in enumerate(_COUNTS):
    assert (labels[ids[c]] == c).all()
    if count >= _BATCH:
      assert len(set(ids[c])) == _BATCH  # without replacement


def test_sample_class_batches_is_deterministic_and_key_dependent():
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))
  first = data.sample_class_batches(jax.random.key(1), indexed, _BATCH)
  again = data.sample_class_batches(jax.random.key(1), indexed, _BATCH)
  other = data.sample_class_batches(jax.random.key(2), indexed, _BATCH)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_sample_class_batches_inside_a_jitted_step():
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))

  @jax.jit
  def step(key, indexed):  # as inside a training step: B fixed by the caller
    return data.sample_class_batches(key, indexed, batch_per_class=_BATCH)

  key = jax.random.key(3)
  np.testing.assert_array_equal(step(key, indexed),
                                data.sample_class_batches(key, indexed, _BATCH))


def test_sample_class_batches_is_uniform():
  """Under vmap over keys: each image of a class is drawn B / count times per step on
  average, both without replacement (count >= B) and with replacement (count < B)."""
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))
  draws = 3000
  keys = jax.random.split(jax.random.key(4), draws)
  ids = jax.vmap(lambda k: data.sample_class_batches(k, indexed, _BATCH))(keys)
  ids = np.asarray(ids)[:, :, :, 0, 0, 0].astype(int)  # [draws, C, B]
  for c, count in enumerate(_COUNTS):
    frequency = np.bincount(ids[:, c].ravel(), minlength=labels.size)[labels == c] / draws
    expected = _BATCH / count
    np.testing.assert_allclose(frequency, expected, atol=0.06 * expected + 0.02)
  # Position in the batch is uniform too (random order, not sorted).
  first_slot = np.bincount(ids[:, 1, 0], minlength=labels.size)[labels == 1] / draws
  np.testing.assert_allclose(first_slot, 1 / _COUNTS[1], atol=0.03)


def _two_byte_images(counts, seed=0):
  """uint8 [N, 1, 2, 1] images encoding their index (hi, lo bytes), shuffled labels."""
  labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
  ids = np.arange(labels.size)
  images = np.stack([ids // 256, ids % 256], axis=-1).astype(np.uint8)
  return images.reshape(-1, 1, 2, 1), labels


def _two_byte_ids(batch) -> np.ndarray:
  batch = np.asarray(batch).astype(int)
  return batch[..., 0, 0, 0] * 256 + batch[..., 0, 1, 0]


def test_effective_batch_real():
  assert sampling.effective_batch_real(1024, [500] * 100) == 500  # CIFAR-100
  assert sampling.effective_batch_real(1024, np.array([1300, 732, 1300])) == 732
  assert sampling.effective_batch_real(256, [5000] * 10) == 256  # CIFAR-10: no cap
  assert data.effective_batch_real(4, _COUNTS) == 3
  for bad in ((0, [5]), (4, []), (4, [3, 0])):
    with pytest.raises(ValueError):
      sampling.effective_batch_real(*bad)


@pytest.mark.parametrize("counts", [(500, 700, 500), _COUNTS])
def test_batch_at_the_cap_is_without_replacement(counts):
  """B = effective_batch_real: B distinct images in every class, on the device and the
  host; a class of exactly B images comes back whole (a permutation of it)."""
  images, labels = _two_byte_images(counts)
  batch = sampling.effective_batch_real(1024, counts)
  indexed = data.make_class_indexed(images, labels, len(counts))
  host = data.HostClassSampler(images, labels, len(counts), seed=0)
  for ids in (_two_byte_ids(data.sample_class_batches(jax.random.key(6), indexed, batch)),
              _two_byte_ids(host.sample(batch, step=0))):
    assert ids.shape == (len(counts), batch)
    for c, count in enumerate(counts):
      assert (labels[ids[c]] == c).all()
      assert len(set(ids[c])) == batch  # no duplicate within a class's batch
      if count == batch:
        assert set(ids[c]) == set(np.flatnonzero(labels == c))


def test_batch_larger_than_a_class_repeats_its_permutation():
  """B above a class's count: every image of the class, each floor(B / count) or
  ceil(B / count) times (a permutation repeated; no draw with replacement)."""
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))
  host = data.HostClassSampler(images, labels, len(_COUNTS), seed=0)
  for step in range(5):
    for ids in (_image_ids(data.sample_class_batches(jax.random.key(step), indexed, 12)),
                _image_ids(host.sample(12, step=step))):
      assert ids.shape == (len(_COUNTS), 12)
      for c, count in enumerate(_COUNTS):
        assert (labels[ids[c]] == c).all()
        times = np.bincount(ids[c], minlength=labels.size)[labels == c]
        assert times.min() == 12 // count and times.max() == -(-12 // count)
        # The first `count` entries are one permutation of the class.
        assert set(ids[c, :count]) == set(np.flatnonzero(labels == c))


def test_host_sampler_matches_device_contract():
  images, labels = _indexed_images()
  sampler = data.HostClassSampler(images, labels, len(_COUNTS), seed=0)
  batch = sampler.sample(_BATCH, step=0)
  device = data.sample_class_batches(
      jax.random.key(0), data.make_class_indexed(images, labels, len(_COUNTS)), _BATCH)
  assert batch.shape == device.shape and batch.dtype == np.uint8
  ids = _image_ids(batch)
  for c, count in enumerate(_COUNTS):
    assert (labels[ids[c]] == c).all()
    if count >= _BATCH:
      assert len(set(ids[c])) == _BATCH
  np.testing.assert_array_equal(batch, sampler.sample(_BATCH, step=0))  # (seed, step)
  assert not np.array_equal(batch, sampler.sample(_BATCH, step=1))
  other_seed = data.HostClassSampler(images, labels, len(_COUNTS), seed=1)
  assert not np.array_equal(batch, other_seed.sample(_BATCH, step=0))


def test_host_sampler_many_steps_and_cursor():
  images, labels = _indexed_images()
  sampler = data.HostClassSampler(images, labels, len(_COUNTS), seed=7)
  many = sampler.sample_many(3, _BATCH, start_step=5)
  assert many.shape == (3, len(_COUNTS), _BATCH, 2, 3, 1)
  for t in range(3):
    np.testing.assert_array_equal(many[t], sampler.sample(_BATCH, step=5 + t))
  # Without steps, calls continue from the last step: 8, 9, ...
  fresh = data.HostClassSampler(images, labels, len(_COUNTS), seed=7)
  fresh.sample_many(8, _BATCH)
  np.testing.assert_array_equal(fresh.sample_many(2, _BATCH), sampler.sample_many(2, _BATCH))


def test_fits_on_device():
  assert data.fits_on_device(10, limit_bytes=10)
  assert not data.fits_on_device(11, limit_bytes=10)
  assert data.fits_on_device(50000 * 32 * 32 * 3)  # CIFAR-10 under the 2 GiB default
  with pytest.raises(ValueError):
    data.fits_on_device(-1)


@pytest.mark.parametrize("start, size", [(0, 4), (1, 2), (3, 1)])
def test_a_class_block_is_the_same_slice_of_the_steps_batch(start, size):
  # The host block loop draws one block at a time; its images must be the step's.
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))
  key = jax.random.PRNGKey(5)
  whole = sampling.sample_class_batches(key, indexed, _BATCH)
  block = jax.jit(sampling.sample_class_block, static_argnums=(2, 4))(
      key, indexed, _BATCH, jnp.int32(start), size)
  np.testing.assert_array_equal(block, whole[start:start + size])


def test_fixed_batches_are_each_class_s_first_images_on_device_and_host():
  """`real_sampling="first"`: the release's `class_sample(c, batch_real)` takes
  `cls_idx[c][:batch_real]`, the class's first images in training-set order, every
  iteration (data/dataloader.py:95-97@34a81d7a)."""
  images, labels = _indexed_images()
  indexed = data.make_class_indexed(images, labels, len(_COUNTS))
  first = [np.flatnonzero(labels == c) for c in range(len(_COUNTS))]
  want = np.stack([f[np.arange(_BATCH) % f.size] for f in first])
  for key in (0, 1):
    ids = _image_ids(data.sample_class_batches(jax.random.key(key), indexed, _BATCH,
                                               fixed=True))
    np.testing.assert_array_equal(ids, want)
  host = data.HostClassSampler(images, labels, len(_COUNTS), seed=0, fixed=True)
  for step in (0, 5):
    np.testing.assert_array_equal(_image_ids(host.sample(_BATCH, step=step)), want)
