"""Tests of the sampling network psi (ncfm_jax.sampler)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ncfm_jax.ncfd import ncfd
from ncfm_jax import sampler

F, D = 64, 24  # K = 4 mixture components


def _unit_rows(rng, n, d, shift=0.0):
  x = rng.normal(size=(n, d)) + shift
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)


def _feature_sets(seed=0):
  rng = np.random.default_rng(seed)
  return _unit_rows(rng, 48, D), _unit_rows(rng, 8, D, shift=0.4)


def _sample(params, batch_stats, key, variant):
  return sampler.sample(params, batch_stats, key, num_freqs=F, dim=D, variant=variant)


@pytest.mark.parametrize("variant", sampler.VARIANTS)
def test_sample_shape_dtype_determinism(variant):
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), F, D, variant=variant)
  key = jax.random.PRNGKey(1)
  t = _sample(params, batch_stats, key, variant)
  assert t.shape == (F, D) and t.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(t)))
  np.testing.assert_array_equal(_sample(params, batch_stats, key, variant), t)
  assert not np.allclose(_sample(params, batch_stats, jax.random.PRNGKey(2), variant), t)
  # Training-mode BatchNorm: the running statistics do not affect sampling.
  shifted_stats = jax.tree.map(lambda s: s + 3.0, batch_stats)
  np.testing.assert_allclose(_sample(params, shifted_stats, key, variant), t, rtol=1e-6, atol=1e-6)


def test_release_rows_repeat_16_times():
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), F, D, variant="release")
  t = _sample(params, batch_stats, jax.random.PRNGKey(1), "release")
  groups = np.asarray(t).reshape(F // 16, 16, D)
  np.testing.assert_array_equal(groups, np.broadcast_to(groups[:, :1], groups.shape))
  assert len({row.tobytes() for row in groups[:, 0]}) == F // 16  # K distinct rows
  assert float(jnp.max(jnp.abs(t))) < 1.0  # base_scale * tanh


def test_mixture_is_a_scale_mixture_of_normals():
  module = sampler.make_sampler(F, D)
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), F, D)
  key = jax.random.PRNGKey(5)
  t = _sample(params, batch_stats, key, "mixture")
  # Recompute psi's scales from the same noise: t_{k,j} / s_k must be N(0, 1) draws.
  noise_key, _ = jax.random.split(key)
  noise = jax.random.normal(noise_key, (module.num_components, module.noise_dim))
  scales, _ = module.apply(
      {"params": params, "batch_stats": batch_stats}, noise, train=True, mutable=["batch_stats"]
  )
  assert scales.shape == (F // 16, D)
  assert float(scales.min()) > np.exp(-1.0) and float(scales.max()) < np.exp(1.0)
  eps = np.asarray(t).reshape(F // 16, 16, D) / np.asarray(scales)[:, None, :]
  assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1.0) < 0.1
  # Default scales are O(1): <t, x> for unit x is of the same order as with t ~ N(0, I).
  real, _ = _feature_sets()
  proj_std = float(jnp.std(t @ real.T))
  assert 0.5 < proj_std < 2.5, proj_std


@pytest.mark.parametrize("variant", sampler.VARIANTS)
def test_gradient_reaches_every_psi_parameter(variant):
  real, syn = _feature_sets()
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), F, D, variant=variant)
  loss = lambda p: ncfd(
      real, syn, sampler.sample(p, batch_stats, jax.random.PRNGKey(3), num_freqs=F, dim=D, variant=variant)
  )
  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert len(leaves) == 8  # 3 Dense kernels, last Dense bias, 2 x BatchNorm (scale, bias)
  for path, leaf in leaves:
    assert bool(jnp.all(jnp.isfinite(leaf))), path
    assert float(jnp.abs(leaf).max()) > 0, path


def test_ascent_on_psi_increases_ncfd(variant="mixture"):
  real, syn = _feature_sets(1)
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), F, D, variant=variant)
  eval_keys = jax.random.split(jax.random.PRNGKey(100), 8)

  def ncfd_at(p, key):
    return ncfd(real, syn, sampler.sample(p, batch_stats, key, num_freqs=F, dim=D, variant=variant))

  mean_ncfd = jax.jit(lambda p: jax.vmap(functools.partial(ncfd_at, p))(eval_keys).mean())
  optimizer = optax.sgd(0.5, momentum=0.5)

  @jax.jit
  def ascent_step(p, opt_state, key):
    grads = jax.grad(ncfd_at)(p, key)
    updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  before = float(mean_ncfd(params))
  opt_state = optimizer.init(params)
  for step in range(15):  # a fresh draw every step, as in distillation
    params, opt_state = ascent_step(params, opt_state, jax.random.PRNGKey(step))
  after = float(mean_ncfd(params))  # on held-out draws
  assert after > 1.1 * before, (before, after)


def test_sample_and_update_moves_running_stats():
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), F, D)
  key = jax.random.PRNGKey(1)
  t, new_stats = sampler.sample_and_update(params, batch_stats, key, num_freqs=F, dim=D)
  np.testing.assert_allclose(t, _sample(params, batch_stats, key, "mixture"), rtol=1e-6, atol=1e-6)
  assert jax.tree.structure(new_stats) == jax.tree.structure(batch_stats)
  assert any(
      not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(batch_stats))
  )


def test_configuration_errors():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="num_freqs=40"):
    sampler.init_sampler(key, 40, D)
  with pytest.raises(ValueError, match="num_freqs=8"):
    sampler.init_sampler(key, 8, D, variant="release")
  params, batch_stats = sampler.init_sampler(key, F, D)
  with pytest.raises(ValueError, match="num_freqs=72"):
    sampler.sample(params, batch_stats, key, num_freqs=72, dim=D)
  with pytest.raises(ValueError, match="variant"):
    sampler.init_sampler(key, F, D, variant="gaussian")
  with pytest.raises(ValueError, match="noise must have shape"):
    sampler.make_sampler(F, D).init(key, jnp.zeros((3, 64)))


def test_single_component():
  # F = 16: K = 1, BatchNorm over one row makes psi's output noise-independent
  # (a learned fixed scale vector), but sampling and gradients still work.
  params, batch_stats = sampler.init_sampler(jax.random.PRNGKey(0), 16, 3, hidden_dim=8, noise_dim=5)
  t = sampler.sample(params, batch_stats, jax.random.PRNGKey(1), num_freqs=16, dim=3, hidden_dim=8, noise_dim=5)
  assert t.shape == (16, 3) and bool(jnp.all(jnp.isfinite(t))) and bool(jnp.all(t != 0))
