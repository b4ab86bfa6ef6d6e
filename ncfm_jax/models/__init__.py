"""Networks (Flax linen, NHWC, float32 normalised inputs) and `get_model`.

Every network's `__call__(x [B, H, W, C], train=False)` returns
`(features [B, D], logits [B, num_classes])`; the features are the classifier's input.
Batch-norm variants need `mutable=["batch_stats"]` when `train=True`.

Example:
  >>> model = get_model("convnet", 10, image_size=32, channels=3)
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  >>> features, logits = model.apply(variables, images)     # [B, 2048], [B, 10]
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncfm_jax.models.alexnet import AlexNet
from ncfm_jax.models.alexnet import AlexNetTiny
from ncfm_jax.models.common import NORMS
from ncfm_jax.models.convnet import ConvNet
from ncfm_jax.models.convnet import ConvNet3
from ncfm_jax.models.convnet import ConvNet4
from ncfm_jax.models.convnet import ConvNet5
from ncfm_jax.models.convnet import ConvNetTiny
from ncfm_jax.models.resnet import BasicBlock
from ncfm_jax.models.resnet import ResNet
from ncfm_jax.models.resnet import ResNet18
from ncfm_jax.models.resnet import ResNet18Tiny
from ncfm_jax.models.vgg import VGG
from ncfm_jax.models.vgg import VGG11
from ncfm_jax.models.vgg import VGG11_CONFIG
from ncfm_jax.models.vgg import VGG11Tiny

MODEL_NAMES = ("convnet", "alexnet", "vgg11", "resnet18")

# Number of 2x downsamplings each fixed architecture needs to fit (input side >= 2^n).
_MIN_DOWNSAMPLINGS = {"alexnet": 3, "vgg11": 5, "resnet18": 0}


def _effective_size(image_size: int) -> int:
  """Side seen after the first conv: 28-pixel inputs are padded to 32 (see the models)."""
  return 32 if image_size == 28 else image_size


def get_model(
    name: str,
    num_classes: int,
    *,
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    image_size: int = 32,
    channels: int = 3,
) -> nn.Module:
  """Builds a network by name.

  Args:
    name: one of MODEL_NAMES: "convnet" (ConvNet-D), "alexnet", "vgg11", "resnet18".
    num_classes: number of logits K.
    width: ConvNet channels (ConvNet only; the other networks have fixed widths).
    depth: ConvNet blocks (ConvNet only; 3 for 32 px, 4 for 64 px, 5 for 128 px).
    norm: one of NORMS, applied to whichever network is built ("none" gives the
      literature's AlexNet, "instance" its VGG11 and ResNet18, "batch" the *BN ones).
    image_size: input side H = W; checked against the network's downsampling.
    channels: input channels C (the modules infer it; checked to be positive).

  Returns:
    An unbound Flax module; `apply(variables, x [B, H, W, C], train)` gives
    `(features [B, D], logits [B, K])`.

  Raises:
    ValueError: unknown name or norm, or a size the network cannot take.
  """
  key = name.lower()
  if key not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if channels < 1:
    raise ValueError(f"channels must be >= 1, got {channels}")
  size = _effective_size(image_size)
  if key == "convnet":
    if width < 1 or depth < 1:
      raise ValueError(f"ConvNet width and depth must be >= 1, got {width}, {depth}")
    if size < 2**depth:
      raise ValueError(f"image_size {image_size} is too small for ConvNet depth {depth}")
    return ConvNet(num_classes=num_classes, width=width, depth=depth, norm=norm)
  if image_size < 1 or size < 2 ** _MIN_DOWNSAMPLINGS[key]:
    raise ValueError(f"image_size {image_size} is too small for {key}")
  if key == "alexnet":
    return AlexNet(num_classes=num_classes, norm=norm)
  if key == "vgg11":
    return VGG11(num_classes=num_classes, norm=norm)
  return ResNet18(num_classes=num_classes, norm=norm)


def feature_dim(model: nn.Module, image_size: int, channels: int) -> int:
  """Feature dimension D of `model` on `[1, image_size, image_size, channels]` inputs.

  Shape-only (jax.eval_shape): no parameters are materialised and nothing is compiled.
  """
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)

  def _features(x):
    variables = model.init(jax.random.key(0), x)
    return model.apply(variables, x)[0]

  return int(jax.eval_shape(_features, x).shape[-1])


__all__ = (
    "AlexNet",
    "AlexNetTiny",
    "BasicBlock",
    "ConvNet",
    "ConvNet3",
    "ConvNet4",
    "ConvNet5",
    "ConvNetTiny",
    "MODEL_NAMES",
    "NORMS",
    "ResNet",
    "ResNet18",
    "ResNet18Tiny",
    "VGG",
    "VGG11",
    "VGG11_CONFIG",
    "VGG11Tiny",
    "feature_dim",
    "get_model",
)
