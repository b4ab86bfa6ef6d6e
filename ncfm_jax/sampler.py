"""The sampling network psi: a learned distribution of NCFD frequencies.

psi is the "max" player of NCFM (CVPR 2025, section 4.2.2; docs/design.md section 3).
It maps a fixed-shape batch of Gaussian noise ``[K, noise_dim]`` through three
Dense layers (BatchNorm after the first two; LeakyReLU(0.2), LeakyReLU(0.2),
Tanh) to K rows in ``(-1, 1)^D``, K = num_freqs / group_size (group_size = 16
as in the paper). Two variants turn those rows into frequencies ``t [F, D]``:

* ``"mixture"`` (default, the paper's scale mixture of normals): row k gives a
  positive scale vector ``s_k = base_scale * exp(log_scale_range * tanh(.))``
  and ``t_{k,j} = s_k * eps_{k,j}``, ``eps ~ N(0, I)``, j = 1..group_size.
  Reparameterised: gradients reach psi through ``s_k``.
* ``"release"`` (the public release): row k is a frequency
  ``base_scale * tanh(.)`` and is repeated group_size times.

Scale of the mixture. Features are L2-normalised, so with ``t ~ N(0, s^2 I)``
the projection ``<t, x>`` is ``N(0, sum_d s_d^2 x_d^2)``; the w/o-psi baseline
(``s = 1``) gives ``N(0, 1)``, where cos/sin resolve feature differences of
order 1. ``exp(log_scale_range * tanh(.))`` keeps every scale positive, centred
(multiplicatively) on that baseline, and bounded in ``base_scale *
[e^-r, e^r]`` (r = 1: about [0.37, 2.72]): the adversary can neither shrink t
to 0 (every ECF -> 1, no signal) nor blow it up to the regime where the ECFs of
finite samples are pure noise and the NCFD only measures sample size.

BatchNorm runs in training mode on the noise batch (batch statistics, as in the
release); running statistics are never needed to sample. With K = 1 (F = 16)
the batch statistics make psi's output independent of the noise, i.e. psi then
learns one fixed scale vector.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VARIANTS = ("mixture", "release")


class FrequencySampler(nn.Module):
  """psi: noise ``[K, noise_dim]`` -> K rows ``[K, dim]`` (scales or frequencies).

  Attributes:
    num_freqs: F, a multiple of ``group_size``.
    dim: D, the feature dimension.
    hidden_dim: width of the two hidden Dense layers.
    noise_dim: width of the input noise.
    variant: ``"mixture"`` (rows are positive scales) or ``"release"`` (rows
      are frequencies).
    group_size: frequencies per row (16 in the paper and the release).
    base_scale: centre of the mixture scales / amplitude of release rows.
    log_scale_range: mixture scales lie in ``base_scale * [e^-r, e^r]``.
    leaky_slope: negative slope of the two LeakyReLUs.
    bn_momentum: BatchNorm running-average momentum (unused for sampling).
  """

  num_freqs: int
  dim: int
  hidden_dim: int = 128
  noise_dim: int = 64
  variant: str = "mixture"
  group_size: int = 16
  base_scale: float = 1.0
  log_scale_range: float = 1.0
  leaky_slope: float = 0.2
  bn_momentum: float = 0.9

  @property
  def num_components(self) -> int:
    """K = num_freqs / group_size."""
    return self.num_freqs // self.group_size

  def check_config(self) -> None:
    """Raises ValueError for an unusable configuration."""
    if self.variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}.")
    if self.group_size < 1:
      raise ValueError(f"group_size must be >= 1, got {self.group_size}.")
    if self.num_freqs < self.group_size or self.num_freqs % self.group_size:
      raise ValueError(
          f"num_freqs={self.num_freqs} must be a positive multiple of"
          f" group_size={self.group_size}."
      )
    if self.dim < 1:
      raise ValueError(f"dim must be >= 1, got {self.dim}.")

  @nn.compact
  def __call__(self, noise: jax.Array, train: bool = True) -> jax.Array:
    """``noise [K, noise_dim]`` -> ``[K, dim]`` scales (mixture) or rows (release)."""
    self.check_config()
    expected = (self.num_components, self.noise_dim)
    if noise.shape != expected:
      raise ValueError(f"noise must have shape {expected}, got {noise.shape}.")
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum
    )
    # No bias before BatchNorm: its mean subtraction would cancel it exactly.
    h = nn.Dense(self.hidden_dim, use_bias=False)(noise)
    h = nn.leaky_relu(norm()(h), self.leaky_slope)
    h = nn.Dense(self.hidden_dim, use_bias=False)(h)
    h = nn.leaky_relu(norm()(h), self.leaky_slope)
    h = jnp.tanh(nn.Dense(self.dim)(h))  # [K, D] in (-1, 1)
    if self.variant == "mixture":
      return self.base_scale * jnp.exp(self.log_scale_range * h)
    return self.base_scale * h


def make_sampler(
    num_freqs: int, dim: int, variant: str = "mixture", **module_kw: Any
) -> FrequencySampler:
  """Builds and validates a :class:`FrequencySampler`."""
  module = FrequencySampler(
      num_freqs=num_freqs, dim=dim, variant=variant, **module_kw
  )
  module.check_config()
  return module


def _frequencies(
    module: FrequencySampler, rows: jax.Array, eps_key: jax.Array
) -> jax.Array:
  """psi's rows ``[K, D]`` -> frequencies ``t [F, D]`` (F = K * group_size)."""
  num_rows, dim = rows.shape
  if module.variant == "release":
    return jnp.repeat(rows, module.group_size, axis=0)
  eps = jax.random.normal(
      eps_key, (num_rows, module.group_size, dim), dtype=rows.dtype
  )
  return (rows[:, None, :] * eps).reshape(num_rows * module.group_size, dim)


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(module: FrequencySampler, key: jax.Array) -> Any:
  # Jitted (the module is hashable): one compile per configuration instead of
  # op-by-op dispatch of every initializer.
  noise = jnp.zeros((module.num_components, module.noise_dim), jnp.float32)
  return module.init(key, noise, train=True)


@functools.partial(jax.jit, static_argnums=0)
def _sample_with(
    module: FrequencySampler, params: Any, batch_stats: Any, key: jax.Array
) -> tuple[jax.Array, Any]:
  noise_key, eps_key = jax.random.split(key)
  noise = jax.random.normal(
      noise_key, (module.num_components, module.noise_dim), jnp.float32
  )
  rows, updates = module.apply(
      {"params": params, "batch_stats": batch_stats},
      noise,
      train=True,
      mutable=["batch_stats"],
  )
  return _frequencies(module, rows, eps_key), updates["batch_stats"]


def init_sampler(
    key: jax.Array,
    num_freqs: int,
    dim: int,
    variant: str = "mixture",
    **module_kw: Any,
) -> tuple[Any, Any]:
  """Initial psi variables.

  Args:
    key: PRNG key.
    num_freqs: F, a multiple of 16 (``group_size``).
    dim: D, the feature dimension.
    variant: ``"mixture"`` or ``"release"``.
    **module_kw: other :class:`FrequencySampler` attributes (pass the same ones
      to :func:`sample`).

  Returns:
    ``(params, batch_stats)``.
  """
  module = make_sampler(num_freqs, dim, variant, **module_kw)
  variables = _init_variables(module, key)
  return variables["params"], variables["batch_stats"]


def sample_and_update(
    params: Any,
    batch_stats: Any,
    key: jax.Array,
    *,
    num_freqs: int,
    dim: int,
    variant: str = "mixture",
    **module_kw: Any,
) -> tuple[jax.Array, Any]:
  """Draws frequencies from psi and returns BatchNorm's updated running stats.

  ``noise ~ N(0, I) [K, noise_dim]``; ``rows = psi(noise)`` with BatchNorm in
  training mode; mixture: ``t_{k,j} = rows_k * eps_{k,j}``, release:
  ``t_{k,j} = rows_k``. Differentiable w.r.t. ``params``.

  Args:
    params, batch_stats: from :func:`init_sampler`.
    key: PRNG key (split into the noise key and the eps key).
    num_freqs, dim, variant, **module_kw: as given to :func:`init_sampler`.

  Returns:
    ``(t [F, D], new_batch_stats)``.

  References:
    NCFM (CVPR 2025), section 4.2.2 (scale mixture of normals, K = F / 16).
  """
  module = make_sampler(num_freqs, dim, variant, **module_kw)
  return _sample_with(module, params, batch_stats, key)


def sample(
    params: Any,
    batch_stats: Any,
    key: jax.Array,
    *,
    num_freqs: int,
    dim: int,
    variant: str = "mixture",
    **module_kw: Any,
) -> jax.Array:
  """Frequencies ``t [F, D]`` from psi; see :func:`sample_and_update`.

  BatchNorm uses the noise batch's statistics, so the running statistics are
  neither needed nor updated.
  """
  t, _ = sample_and_update(
      params,
      batch_stats,
      key,
      num_freqs=num_freqs,
      dim=dim,
      variant=variant,
      **module_kw,
  )
  return t
