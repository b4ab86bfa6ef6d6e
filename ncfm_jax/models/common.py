"""Layers shared by the networks: PyTorch-default initialisers and the norm switch.

Private to `ncfm_jax.models`; import the networks from the package instead.

Initialisation follows PyTorch's defaults (the release and the DC/DSA/DM/MTT code bases
train PyTorch modules with their default init): conv and dense kernels and biases are
`U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (kaiming_uniform with a = sqrt(5) gives exactly this
bound for the kernel). This matters beyond evaluation because the distillation blends
`b * init + (1 - b) * trained` parameters (docs/design.md section 4), so the scale of the
initial parameters shapes the features that are matched.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("instance", "batch", "group", "none")
"""Accepted values of every network's `norm` field."""

GROUP_NORM_GROUPS = 4
"""Groups of the "group" norm (DC/DSA `groupnorm`: `nn.GroupNorm(4, C)`)."""

NORM_EPSILON = 1e-5
"""PyTorch's GroupNorm / BatchNorm epsilon."""

BATCH_NORM_MOMENTUM = 0.9
"""Flax momentum (decay of the running average) equal to PyTorch's momentum 0.1."""

# Variance 1/(3 fan_in) uniform == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default bias init `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for a layer."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(
    x: jax.Array,
    features: int,
    kernel: int,
    *,
    padding: int,
    stride: int = 1,
    use_bias: bool = True,
    name: str,
) -> jax.Array:
  """Square `kernel` x `kernel` convolution with symmetric PyTorch-style zero padding.

  Explicit padding (not "SAME") so that strided convolutions sample the same pixels as
  `torch.nn.Conv2d(padding=padding)`. Must be called inside a compact module.
  """
  fan_in = kernel * kernel * x.shape[-1]
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      use_bias=use_bias,
      kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(fan_in),
      name=name,
  )(x)


def dense(x: jax.Array, features: int, *, name: str) -> jax.Array:
  """Linear layer `x @ W + b` with PyTorch's default init. `x` is `[B, D]`."""
  return nn.Dense(
      features,
      kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(x.shape[-1]),
      name=name,
  )(x)


def check_norm(norm: str) -> None:
  """Raises ValueError when `norm` is not one of NORMS."""
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class InstanceNorm(nn.InstanceNorm):
  """Per-sample, per-channel normalisation over H, W with an affine map (`scale`, `bias`).

  `flax.linen.InstanceNorm` with PyTorch's epsilon and the two-pass variance
  E[(x - E[x])^2] (`use_fast_variance=False`). On the distillation pass (input
  gradient of ConvNet-3 width 128, 100 images, XLA:CPU) it is as fast as a hand-written
  version with plain reductions and faster as a single layer; flax's default one-pass
  variance is slower there. Figures and command: results/bench_norm_cpu_2026-12-02.json
  (`python -m ncfm_jax.bench norm`).
  """
  epsilon: float = NORM_EPSILON
  use_fast_variance: bool = False


def normalize(x: jax.Array, norm: str, *, train: bool, name: str) -> jax.Array:
  """Applies the named normalisation to `x` `[B, H, W, C]`.

  - "instance": InstanceNorm (per sample, per channel over H, W), affine; what the DD
    code bases call `instancenorm` (`nn.GroupNorm(C, C)`).
  - "group": GroupNorm with GROUP_NORM_GROUPS groups, affine.
  - "batch": BatchNorm; batch statistics when `train` (needs `mutable=["batch_stats"]`),
    running averages otherwise.
  - "none": identity.
  """
  check_norm(norm)
  if norm == "instance":
    return InstanceNorm(name=name)(x)
  if norm == "group":
    return nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, epsilon=NORM_EPSILON, name=name)(x)
  if norm == "batch":
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=NORM_EPSILON,
        name=name,
    )(x)
  return x


def first_padding(x: jax.Array, default: int, padding_28: int, override: int | None) -> int:
  """Padding of a network's first conv: `override` if set, else `padding_28` for 28-pixel
  inputs (so MNIST-like images reach the 32-pixel geometry), else `default`."""
  if override is not None:
    return override
  return padding_28 if x.shape[1] == 28 else default


def flatten(x: jax.Array) -> jax.Array:
  """`[B, ...]` -> `[B, prod(...)]`."""
  return x.reshape(x.shape[0], -1)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """`[B, H, W, C]` -> `[B, C]`, mean over H and W (adaptive average pooling to 1x1)."""
  return jnp.mean(x, axis=(1, 2))
