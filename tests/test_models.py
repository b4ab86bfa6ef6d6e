"""Tests for ncfm_jax.models: shapes, feature dims, parameter counts, norms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import models

SIZES = ((28, 1), (32, 3), (64, 3))


def _param_count(model, image_size, channels):
  """Parameter count from shapes only (no compilation)."""
  x = jnp.zeros((1, image_size, image_size, channels))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def _expected_convnet_params(channels, side, width, depth, num_classes, norm):
  """ConvNet-D parameters counted by hand: 3x3 kernels + biases, norm scale and bias,
  linear classifier on width * (side / 2^depth)^2 features."""
  norm_params = 0 if norm == "none" else 2 * width
  total, in_channels = 0, channels
  for _ in range(depth):
    total += 3 * 3 * in_channels * width + width + norm_params
    in_channels = width
  features = width * (side // 2**depth) ** 2
  return total + features * num_classes + num_classes


# (image size, channels, depth, width) -> D worked out by hand: the side after the
# first conv (28 px: pad 3, 28 + 6 - 2 = 32; else unchanged), halved per block
# (rounding down), squared, times the width.
@pytest.mark.parametrize(
    "image_size, channels, depth, width, expected_dim",
    [(32, 3, 3, 128, 2048),  # 32 -> 16 -> 8 -> 4: 4 * 4 * 128
     (28, 1, 3, 128, 2048),  # 32 -> 16 -> 8 -> 4: 4 * 4 * 128
     (64, 3, 4, 128, 2048),  # 64 -> 32 -> 16 -> 8 -> 4: 4 * 4 * 128
     (128, 3, 5, 128, 2048),  # 128 -> 64 -> 32 -> 16 -> 8 -> 4: 4 * 4 * 128
     (64, 3, 3, 128, 8192),  # 64 -> 32 -> 16 -> 8: 8 * 8 * 128
     (28, 1, 2, 8, 512),  # 32 -> 16 -> 8: 8 * 8 * 8
     (16, 1, 2, 8, 128),  # 16 -> 8 -> 4: 4 * 4 * 8
     (20, 3, 3, 16, 64),  # 20 -> 10 -> 5 -> 2: 2 * 2 * 16
     (28, 1, 4, 32, 128)],  # 32 -> 16 -> 8 -> 4 -> 2: 2 * 2 * 32
)
def test_convnet_feature_dim(image_size, channels, depth, width, expected_dim):
  model = models.get_model("convnet", 10, depth=depth, width=width, image_size=image_size,
                           channels=channels)
  assert models.feature_dim(model, image_size, channels) == expected_dim


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("image_size, channels", [(32, 3), (28, 1)])
def test_convnet_param_count_by_hand(norm, image_size, channels):
  model = models.get_model("convnet", 10, norm=norm, image_size=image_size,
                           channels=channels)
  expected = _expected_convnet_params(channels, 32, 128, 3, 10, norm)
  assert _param_count(model, image_size, channels) == expected


def test_convnet3_param_counts_literal():
  # 3*3*3*128+128 + 2*(3*3*128*128+128) + 3*256 + 2048*10+10
  assert _param_count(models.get_model("convnet", 10), 32, 3) == 320_010
  # the first conv has a single input channel: 3*3*1*128+128
  assert _param_count(models.get_model("convnet", 10, image_size=28, channels=1),
                      28, 1) == 317_706


@pytest.mark.parametrize(
    "name, norm, expected",
    [
        # 5x5x3x128 + 5x5x128x192 + 3x3x192x256 + 3x3x256x192 + 3x3x192x192 + biases
        # + 3072 x 10 + 10.
        ("alexnet", "none", 1_872_202),
        ("alexnet", "instance", 1_872_202 + 2 * (128 + 192 + 256 + 192 + 192)),
        # The usual CIFAR VGG-11 / ResNet-18 counts (10 classes).
        ("vgg11", "instance", 9_231_114),
        ("vgg11", "batch", 9_231_114),
        ("resnet18", "instance", 11_173_962),
        ("resnet18", "batch", 11_173_962),
    ],
)
def test_cross_arch_param_counts(name, norm, expected):
  assert _param_count(models.get_model(name, 10, norm=norm), 32, 3) == expected


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("image_size, channels", SIZES)
def test_full_size_output_shapes(name, image_size, channels):
  depth = {28: 3, 32: 3, 64: 4}[image_size]
  model = models.get_model(name, 7, depth=depth, image_size=image_size, channels=channels)
  x = jnp.zeros((2, image_size, image_size, channels))

  def forward(x):
    return model.apply(model.init(jax.random.key(0), x), x)

  features, logits = jax.eval_shape(forward, x)
  expected_dim = {
      "convnet": 2048,
      "alexnet": 192 * (max(image_size, 32) // 8) ** 2,
      "vgg11": 512,
      "resnet18": 512,
  }[name]
  assert features.shape == (2, expected_dim)
  assert logits.shape == (2, 7)


TINY_MODULES = {
    "convnet": models.ConvNetTiny,
    "alexnet": models.AlexNetTiny,
    "vgg11": models.VGG11Tiny,
    "resnet18": models.ResNet18Tiny,
}
# rbg keys: Flax init compiles ~5x faster than with threefry keys on CPU.
_KEY = jax.random.key(0, impl="rbg")


def _numpy_variables(model, x, seed=0):
  """Variables of `model` for input `x` filled on the host with numpy (PyTorch-like
  kernel ranges, unit batch statistics): the tests that only run a network skip
  compiling its random initialiser, the slowest part of a small test on CPU."""
  shapes = jax.eval_shape(model.init, _KEY, x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [getattr(entry, "key", "") for entry in path]
    if names[0] == "batch_stats":
      return np.full(leaf.shape, 1.0 if names[-1] == "var" else 0.0, np.float32)
    if len(leaf.shape) >= 2:  # kernels: fan_in is every axis but the last
      bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    base = 1.0 if names[-1] == "scale" else 0.0
    return (base + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize(
    "name, image_size, channels",
    [(name, s, c) for name in TINY_MODULES for s, c in SIZES
     if s != 64 or name in ("convnet", "resnet18")],
)
def test_tiny_models_run_and_instance_norm_is_per_sample(name, image_size, channels):
  model = TINY_MODULES[name](num_classes=5, norm="instance")
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, image_size, image_size, channels)), jnp.float32)
  variables = _numpy_variables(model, x)
  apply = jax.jit(model.apply)
  features, logits = apply(variables, x)
  assert features.ndim == 2 and features.shape[0] == 3
  assert logits.shape == (3, 5)
  assert np.all(np.isfinite(np.asarray(features)))
  assert np.all(np.isfinite(np.asarray(logits)))
  # The logits are the linear classifier applied to the returned features.
  classifier = variables["params"]["classifier"]
  np.testing.assert_allclose(
      logits, features @ classifier["kernel"] + classifier["bias"], rtol=1e-4, atol=1e-5)
  # Instance norm is per sample: sample 0's outputs ignore the rest of the batch.
  other = x.at[1:].set(5.0 * rng.standard_normal(x[1:].shape) + 3.0)
  features_other, _ = apply(variables, other)
  np.testing.assert_allclose(features_other[0], features[0], rtol=1e-4, atol=1e-5)
  assert not np.allclose(features_other[1], features[1])


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_batch_norm_stats_and_batch_dependence(name):
  model = TINY_MODULES[name](num_classes=3, norm="batch")
  rng = np.random.default_rng(1)
  x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((4, 16, 16, 3)), jnp.float32)
  variables = _numpy_variables(model, x)
  assert "batch_stats" in variables
  train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  (features, logits), updates = train_apply(variables, x)
  assert logits.shape == (4, 3)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # In training mode batch norm mixes the batch (unlike instance norm).
  (features_other, _), _ = train_apply(variables, x.at[1:].multiply(3.0))
  assert not np.allclose(features_other[0], features[0], atol=1e-4)
  # Evaluation mode reads the running averages and needs nothing mutable.
  _, eval_logits = jax.jit(model.apply)({**variables, **updates}, x)
  assert np.all(np.isfinite(np.asarray(eval_logits)))
  with pytest.raises(Exception):  # batch_stats not declared mutable (fails when traced)
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)


def test_torch_default_init_bounds():
  model = models.get_model("convnet", 10)
  variables = jax.jit(model.init)(_KEY, jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  for layer, fan_in in [("conv0", 27), ("conv1", 9 * 128), ("classifier", 2048)]:
    bound = 1.0 / np.sqrt(fan_in)
    kernel = np.asarray(params[layer]["kernel"])
    bias = np.asarray(params[layer]["bias"])
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(kernel).max() > 0.99 * bound  # uniform over the whole range
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.05)
  np.testing.assert_array_equal(params["norm0"]["scale"], 1.0)
  np.testing.assert_array_equal(params["norm0"]["bias"], 0.0)


def test_get_model_errors():
  with pytest.raises(ValueError, match="convnet, alexnet, vgg11, resnet18"):
    models.get_model("lenet", 10)
  with pytest.raises(ValueError, match="norm"):
    models.get_model("convnet", 10, norm="layer")
  with pytest.raises(ValueError, match="too small"):
    models.get_model("convnet", 10, depth=6, image_size=32)
  with pytest.raises(ValueError, match="too small"):
    models.get_model("vgg11", 10, image_size=16)
  with pytest.raises(ValueError, match="num_classes"):
    models.get_model("resnet18", 0)


def test_get_model_names_are_case_insensitive_and_types():
  assert isinstance(models.get_model("ConvNet", 10), models.ConvNet)
  assert isinstance(models.get_model("alexnet", 10), models.AlexNet)
  assert isinstance(models.get_model("vgg11", 10), models.VGG)
  assert isinstance(models.get_model("resnet18", 10), models.ResNet)
