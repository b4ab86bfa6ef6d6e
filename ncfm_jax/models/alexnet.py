"""AlexNet for 32-pixel images, as used for cross-architecture evaluation in dataset
distillation (the DC/DSA/DM/MTT `networks.py` `AlexNet` / `AlexNetBN`).

Layers (widths 128, 192, 256, 192, 192):

  conv 5x5 pad 2 -> [norm] -> ReLU -> maxpool 2
  conv 5x5 pad 2 -> [norm] -> ReLU -> maxpool 2
  conv 3x3 pad 1 -> [norm] -> ReLU
  conv 3x3 pad 1 -> [norm] -> ReLU
  conv 3x3 pad 1 -> [norm] -> ReLU -> maxpool 2
  flatten -> features -> linear classifier

The literature's `AlexNet` has no norm (`norm="none"` here) and `AlexNetBN` has batch
norm after each conv (`norm="batch"`); "instance" puts instance norm at the same places.
28-pixel inputs: the first conv pads 4 (28 + 8 - 4 = 32), as the references do for
1-channel inputs, so every input of size 28 or 32 gives 192 * 4 * 4 = 3072 features.
Larger inputs are flattened as they are (D = 192 * (H / 8)^2; the MTT rule for 64 px).
"""

import functools

import chex
import flax.linen as nn
import jax

from ncfm_jax.models import common


class AlexNet(nn.Module):
  """AlexNet. `__call__(x [B, H, W, C], train) -> (features [B, D], logits [B, K])`.

  Attributes:
    num_classes: K.
    norm: one of common.NORMS; "none" reproduces the literature's AlexNet.
    widths: channels of the five convs.
    first_conv_padding: None = 4 for 28-pixel inputs, else 2.
  """

  num_classes: int
  norm: str = "none"
  widths: tuple[int, int, int, int, int] = (128, 192, 256, 192, 192)
  first_conv_padding: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(x, 4)
    common.check_norm(self.norm)
    if len(self.widths) != 5:
      raise ValueError(f"AlexNet needs 5 widths, got {self.widths}")
    kernels = (5, 5, 3, 3, 3)
    pool_after = (True, True, False, False, True)
    pad0 = common.first_padding(x, 2, 4, self.first_conv_padding)
    for i, (width, kernel, pool) in enumerate(zip(self.widths, kernels, pool_after)):
      padding = pad0 if i == 0 else kernel // 2
      x = common.conv(x, width, kernel, padding=padding, name=f"conv{i}")
      x = common.normalize(x, self.norm, train=train, name=f"norm{i}")
      x = nn.relu(x)
      if pool:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = common.flatten(x)
    logits = common.dense(features, self.num_classes, name="classifier")
    return features, logits


AlexNetTiny = functools.partial(AlexNet, widths=(8, 8, 8, 8, 8))
"""Only for tests."""
