"""`sincos` against float64 NumPy on the same float32 inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax.sincos import sincos


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e5, 2.0**21 / 4])
def test_matches_float64_within_1e_7(scale):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal(200_000) * scale).astype(np.float32)
  # Quadrant edges and signed zeros, where a reduction's off-by-one shows.
  edges = np.arange(-16, 17, dtype=np.float64) * np.pi / 4
  x = np.concatenate([x, edges.astype(np.float32), np.nextafter(edges, 100).astype(
      np.float32), np.float32([0.0, -0.0, 1e-30, -1e-38])])
  sin_x, cos_x = jax.jit(sincos)(x)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(np.asarray(sin_x, np.float64), np.sin(x64), rtol=0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(cos_x, np.float64), np.cos(x64), rtol=0, atol=1e-7)
  assert sin_x.dtype == jnp.float32 and sin_x.shape == x.shape


def test_bounded_beyond_its_range_and_nan_when_not_finite():
  x = np.float32([2.0**22, -3e7, 1e12, -3.4e38, np.inf, -np.inf, np.nan])
  sin_x, cos_x = (np.asarray(v) for v in sincos(x))
  assert np.all(np.abs(sin_x[:4]) <= 1) and np.all(np.abs(cos_x[:4]) <= 1)
  assert np.all(np.isnan(sin_x[4:])) and np.all(np.isnan(cos_x[4:]))


def test_derivatives_are_cos_and_minus_sin():
  x = jnp.float32([0.3, -2.0, 5.0, 40.0])
  grad = jax.grad(lambda v: jnp.sum(sincos(v)[0]) + 2.0 * jnp.sum(sincos(v)[1]))(x)
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(grad, np.cos(x64) - 2.0 * np.sin(x64), atol=2e-7)


def test_other_dtypes_take_jnp():
  x = jnp.asarray([0.5, 7.0], jnp.bfloat16)
  sin_x, cos_x = sincos(x)
  assert sin_x.dtype == jnp.bfloat16
  np.testing.assert_array_equal(sin_x, jnp.sin(x))
  np.testing.assert_array_equal(cos_x, jnp.cos(x))
