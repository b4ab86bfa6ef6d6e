"""VGG-11 as used for cross-architecture evaluation in dataset distillation (the DC/DSA/
DM/MTT `networks.py` `VGG11` (instance norm) / `VGG11BN` (batch norm)).

Config 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M: each number is a 3x3 conv
(pad 1, bias) -> norm -> ReLU, each M a 2x2 max pool; then global average pooling ->
512 features -> one linear classifier. At 32 px the last map is 1x1, so the global
average pool is the references' flatten; for larger inputs (64, 128 px) it is adaptive
average pooling to 1x1 (the references' fixed 512-input classifier fails there).
28-pixel inputs: the first conv pads 3 (as the references do for 1-channel inputs), so
the stack sees 32x32.
"""

import functools

import chex
import flax.linen as nn
import jax

from ncfm_jax.models import common

VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
  """VGG. `__call__(x [B, H, W, C], train) -> (features [B, D], logits [B, K])`.

  Attributes:
    num_classes: K.
    config: conv widths and "M" (max pool) entries, in order.
    norm: one of common.NORMS; "instance" (default) is the literature's VGG11.
    first_conv_padding: None = 3 for 28-pixel inputs, else 1.
  """

  num_classes: int
  config: tuple[int | str, ...] = VGG11_CONFIG
  norm: str = "instance"
  first_conv_padding: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(x, 4)
    common.check_norm(self.norm)
    pad0 = common.first_padding(x, 1, 3, self.first_conv_padding)
    conv_index = 0
    for entry in self.config:
      if entry == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      padding = pad0 if conv_index == 0 else 1
      x = common.conv(x, int(entry), 3, padding=padding, name=f"conv{conv_index}")
      x = common.normalize(x, self.norm, train=train, name=f"norm{conv_index}")
      x = nn.relu(x)
      conv_index += 1
    features = common.global_avg_pool(x)
    logits = common.dense(features, self.num_classes, name="classifier")
    return features, logits


VGG11 = functools.partial(VGG, config=VGG11_CONFIG)
VGG11Tiny = functools.partial(
    VGG, config=(8, "M", 8, "M", 8, 8, "M", 8, 8, "M", 8, 8, "M"))
"""Only for tests: VGG-11 layout with 8 channels everywhere."""
