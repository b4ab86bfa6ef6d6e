"""`sincos` against float64 NumPy on the same float32 inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _default_flags_worker
import _spawn
from ncfm_jax.sincos import sincos


@pytest.fixture(scope="module")
def default_flags(tmp_path_factory):
  """sincos compiled with XLA's default flags, as users run it: its reduction's
  accuracy beyond |x| ~ 1e4 rests on the multiply-subtracts being fused into FMAs,
  which launch/test.sh's faster-compiling optimisation level 0 does not do."""
  return _spawn.default_flags_results("sincos", tmp_path_factory)


@pytest.mark.parametrize("index", range(len(_default_flags_worker.SINCOS_SCALES)))
def test_matches_float64_within_1e_7(default_flags, index):
  x64 = _default_flags_worker.sincos_inputs(_default_flags_worker.SINCOS_SCALES[index]).astype(
      np.float64)
  sin_x, cos_x = default_flags[f"sin_{index}"], default_flags[f"cos_{index}"]
  np.testing.assert_allclose(sin_x.astype(np.float64), np.sin(x64), rtol=0, atol=1e-7)
  np.testing.assert_allclose(cos_x.astype(np.float64), np.cos(x64), rtol=0, atol=1e-7)
  assert sin_x.dtype == np.float32 and sin_x.shape == x64.shape


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
