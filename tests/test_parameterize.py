"""Tests for ncfm_jax.parameterize: multi-formation decode and synthetic init."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import parameterize as par

_RNG = np.random.default_rng(0)
# Jitted once per static configuration: eager resizes compile op by op (slow on CPU).
_decode = jax.jit(par.decode, static_argnums=1)
_init = jax.jit(par.init_synthetic, static_argnums=(2, 3, 4))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _down_up(images, tile_shape, full_shape):
  """Images downsized (antialiased) to tile_shape then upsized back to full_shape."""
  n, c = images.shape[0], images.shape[-1]
  small = jax.image.resize(images, (n, *tile_shape, c), "bilinear", antialias=True)
  return jax.image.resize(small, (n, *full_shape, c), "bilinear")


def _tile_constant_images(b, h, w, factor, channels=2):
  """Images whose tile (i, j) of image n is the constant 100 n + 10 i + j."""
  images = np.zeros((b, h, w, channels), np.float32)
  for n in range(b):
    for i, (y0, y1) in enumerate(par.tile_bounds(h, factor)):
      for j, (x0, x1) in enumerate(par.tile_bounds(w, factor)):
        images[n, y0:y1, x0:x1] = 100 * n + 10 * i + j
  return jnp.asarray(images)


def _bilinear_upsample_reference(tile, height, width):
  """Half-pixel-centre bilinear upsampling of [h, w, C] to [height, width, C], edge
  clamped (PyTorch `Upsample(mode="bilinear", align_corners=False)`)."""
  h, w, _ = tile.shape

  def axis_weights(out_size, in_size):
    src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    matrix[np.arange(out_size), low] += 1 - (src - low)
    matrix[np.arange(out_size), high] += src - low
    return matrix

  return np.einsum("yh,xw,hwc->yxc", axis_weights(height, h), axis_weights(width, w), tile)


def test_tile_bounds():
  assert par.tile_bounds(32, 2) == ((0, 16), (16, 32))
  assert par.tile_bounds(28, 3) == ((0, 9), (9, 18), (18, 28))
  assert par.tile_bounds(5, 1) == ((0, 5),)


@pytest.mark.parametrize("h, w, factor", [(16, 16, 2), (10, 10, 3), (12, 9, 2)])
def test_decode_shape_and_image_major_order(h, w, factor):
  images = _tile_constant_images(3, h, w, factor)
  decoded = np.asarray(_decode(images, factor))
  assert decoded.shape == (3 * factor**2, h, w, 2)
  for n in range(3):
    for i in range(factor):
      for j in range(factor):
        # Bilinear upsampling of a constant tile is that constant.
        np.testing.assert_allclose(decoded[n * factor**2 + i * factor + j],
                                   100 * n + 10 * i + j, rtol=1e-6)


def test_decode_matches_resizing_each_tile():
  images = jnp.asarray(_RNG.uniform(size=(2, 10, 10, 3)), jnp.float32)
  decoded = _decode(images, 3)
  tiles = [(y, x) for y in par.tile_bounds(10, 3) for x in par.tile_bounds(10, 3)]
  for t, ((y0, y1), (x0, x1)) in enumerate(tiles):
    tile = np.asarray(images[:, y0:y1, x0:x1])
    for n in range(2):
      expected = _bilinear_upsample_reference(tile[n], 10, 10)
      np.testing.assert_allclose(decoded[n * 9 + t], expected, atol=1e-5)


def test_decode_factor_one_is_identity():
  images = jnp.asarray(_RNG.uniform(size=(3, 8, 8, 1)), jnp.float32)
  np.testing.assert_array_equal(par.decode(images, 1), images)


def test_decode_is_differentiable():
  images = jnp.asarray(_RNG.uniform(size=(2, 8, 8, 3)), jnp.float32)
  weights = jnp.asarray(_RNG.standard_normal((8, 8, 8, 3)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(par.decode(x, 2) * weights)))(images)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)) and np.all(np.abs(grad).sum(axis=(1, 2, 3)) > 0)
  # Upsampling conserves mass: a unit cotangent gives every pixel the same gradient.
  ones_grad = jax.grad(lambda x: jnp.sum(par.decode(x, 2)))(images)
  np.testing.assert_allclose(ones_grad, 4.0, rtol=1e-5)


def test_decode_labels():
  np.testing.assert_array_equal(par.decode_labels(jnp.array([0, 1, 2]), 2),
                                [0] * 4 + [1] * 4 + [2] * 4)
  soft = jnp.array([[1.0, 0.0], [0.25, 0.75]])
  np.testing.assert_array_equal(par.decode_labels(soft, 3), np.repeat(soft, 9, axis=0))
  np.testing.assert_array_equal(par.decode_labels(jnp.array([4, 5]), 1), [4, 5])


def _real_by_class(num_classes=3, n=6, h=12, w=12, channels=3):
  """Distinct images; class c's pixels lie in [c / C, (c + 1) / C)."""
  base = _RNG.uniform(size=(num_classes, n, h, w, channels))
  offsets = np.arange(num_classes)[:, None, None, None, None]
  return jnp.asarray((base + offsets) / num_classes, jnp.float32)


def test_mix_init_round_trip():
  real = _real_by_class()
  ipc, factor = 1, 2
  syn = _init(jax.random.key(0), real, ipc, factor, "mix")
  assert syn.shape == (3, ipc, 12, 12, 3) and syn.dtype == jnp.float32
  decoded = np.asarray(_decode(syn.reshape(-1, 12, 12, 3), factor))
  # Every real image downsized into a 6x6 tile and upsized back.
  round_trip = np.asarray(_down_up(real.reshape(-1, 12, 12, 3), (6, 6), (12, 12)))
  round_trip = round_trip.reshape(3, 6, 12, 12, 3)
  for c in range(3):
    used = []
    for t in range(factor**2):
      errors = np.abs(round_trip[c] - decoded[c * factor**2 + t]).max(axis=(1, 2, 3))
      assert errors.min() < 1e-5, "a decoded tile is not a round-tripped real image"
      used.append(int(errors.argmin()))
    assert len(set(used)) == factor**2  # distinct real images


def test_mix_init_non_divisible_size_round_trip():
  real = _real_by_class(num_classes=1, n=9, h=10, w=10, channels=1)
  syn = _init(jax.random.key(1), real, 1, 3, "mix")
  decoded = np.asarray(_decode(syn[0], 3))
  assert decoded.shape == (9, 10, 10, 1)
  tiles = [(y, x) for y in par.tile_bounds(10, 3) for x in par.tile_bounds(10, 3)]
  used = []
  for t, ((y0, y1), (x0, x1)) in enumerate(tiles):
    candidates = np.asarray(_down_up(real[0], (y1 - y0, x1 - x0), (10, 10)))
    errors = np.abs(candidates - decoded[t]).max(axis=(1, 2, 3))
    assert errors.min() < 1e-5
    used.append(int(errors.argmin()))
  assert sorted(used) == list(range(9))  # all 9 real images, each once


def test_real_init_takes_distinct_real_images_of_the_class():
  real = _real_by_class()
  syn = np.asarray(_init(jax.random.key(0), real, 4, 2, "real"))
  assert syn.shape == (3, 4, 12, 12, 3)
  real = np.asarray(real)
  for c in range(3):
    picked = [int(np.flatnonzero((real[c] == image).all(axis=(1, 2, 3)))[0])
              for image in syn[c]]
    assert len(set(picked)) == 4
  other = np.asarray(_init(jax.random.key(1), jnp.asarray(real), 4, 2, "real"))
  assert not np.array_equal(other, syn)


def test_noise_init():
  syn = np.asarray(_init(jax.random.key(0), _real_by_class(), 2, 2, "noise"))
  assert syn.shape == (3, 2, 12, 12, 3)
  assert syn.min() >= 0.0 and syn.max() <= 1.0 and syn.std() > 0.2


def test_errors():
  real = _real_by_class(n=6)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="factor"):
    par.init_synthetic(key, real, 1, 0, "mix")
  with pytest.raises(ValueError, match="ipc"):
    par.init_synthetic(key, real, 0, 2, "mix")
  with pytest.raises(ValueError, match="needs 8 real images"):
    par.init_synthetic(key, real, 2, 2, "mix")
  with pytest.raises(ValueError, match="needs 7 real images"):
    par.init_synthetic(key, real, 7, 2, "real")
  with pytest.raises(ValueError, match="init mode"):
    par.init_synthetic(key, real, 1, 2, "zeros")
  with pytest.raises(ValueError, match="factor"):
    par.decode(real[0], 0)
  with pytest.raises(ValueError, match="exceeds"):
    par.decode(real[0], 13)
  with pytest.raises(ValueError, match="factor"):
    par.decode_labels(jnp.array([0, 1]), 0)
