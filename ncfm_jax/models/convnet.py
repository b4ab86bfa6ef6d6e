"""ConvNet-D, the dataset-distillation standard network (docs/design.md section 9).

`depth` blocks of [3x3 conv (bias) -> norm -> ReLU -> 2x2 pool stride 2], flatten ->
features -> linear classifier, as `ConvNet` in the DC/DSA/DM/MTT code bases and the
NCFM release. For 28x28 inputs the first conv pads 3 instead of 1 (28 + 6 - 2 = 32), so
the blocks see 32x32 and the feature dimension matches CIFAR:

  D = width * (H_eff / 2^depth)^2,  H_eff = 32 for 28-pixel inputs, else H

(ConvNet-3 on 32x32x3 or 28x28x1: 128 * 4 * 4 = 2048; ConvNet-4 on 64 px and
ConvNet-5 on 128 px: 2048 as well). Pool sizes round down like PyTorch's pooling.
"""

import functools

import chex
import flax.linen as nn
import jax

from ncfm_jax.models import common

POOLINGS = ("avg", "max", "none")


class ConvNet(nn.Module):
  """ConvNet-D. `__call__(x [B, H, W, C], train) -> (features [B, D], logits [B, K])`.

  Attributes:
    num_classes: K, outputs of the classifier.
    width: channels of every conv (128 in the literature).
    depth: number of conv blocks (3 for 32 px, 4 for 64 px, 5 for 128 px).
    norm: one of common.NORMS ("instance" is the standard).
    pooling: "avg" (standard), "max" or "none" (no downsampling).
    first_conv_padding: padding of the first conv; None = 3 for 28-pixel inputs, else 1.
  """

  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  first_conv_padding: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(x, 4)
    common.check_norm(self.norm)
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
    pad0 = common.first_padding(x, 1, 3, self.first_conv_padding)
    for d in range(self.depth):
      x = common.conv(x, self.width, 3, padding=pad0 if d == 0 else 1, name=f"conv{d}")
      x = common.normalize(x, self.norm, train=train, name=f"norm{d}")
      x = nn.relu(x)
      if self.pooling == "avg":
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      elif self.pooling == "max":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = common.flatten(x)
    logits = common.dense(features, self.num_classes, name="classifier")
    return features, logits


ConvNet3 = functools.partial(ConvNet, depth=3)
ConvNet4 = functools.partial(ConvNet, depth=4)
ConvNet5 = functools.partial(ConvNet, depth=5)
ConvNetTiny = functools.partial(ConvNet, width=8, depth=2)
"""Only for tests: 8 channels, two blocks."""
