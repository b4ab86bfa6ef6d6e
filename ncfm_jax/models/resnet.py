"""ResNet-18 with the CIFAR stem, as used for cross-architecture evaluation in dataset
distillation (the DC/DSA/DM/MTT `networks.py` `ResNet18` (instance norm) /
`ResNet18BN` (batch norm)).

Stem: 3x3 conv (stride 1, pad 1, no bias) -> norm -> ReLU, no max pool. Four stages of
BasicBlocks [2, 2, 2, 2] with 64, 128, 256, 512 channels, strides 1, 2, 2, 2; a block is
conv3x3(stride) -> norm -> ReLU -> conv3x3 -> norm, plus the identity or a 1x1 strided
conv -> norm projection when the shape changes, then ReLU. Global average pooling ->
512 features -> linear classifier. At 32 px the last map is 4x4 and the references'
`avg_pool2d(out, 4)` is exactly this global average; 28-pixel inputs run unchanged
(28 -> 14 -> 7 -> 4, as the references do), and 64/128-pixel inputs pool their larger
last map adaptively to 1x1 (the stem stays the CIFAR one at every size).
"""

import functools

import chex
import flax.linen as nn
import jax

from ncfm_jax.models import common


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection; `[B, H, W, C] -> [B, H/s, W/s, planes]`."""

  planes: int
  stride: int
  norm: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = common.conv(x, self.planes, 3, padding=1, stride=self.stride, use_bias=False,
                      name="conv1")
    out = nn.relu(common.normalize(out, self.norm, train=train, name="norm1"))
    out = common.conv(out, self.planes, 3, padding=1, use_bias=False, name="conv2")
    out = common.normalize(out, self.norm, train=train, name="norm2")
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = common.conv(x, self.planes, 1, padding=0, stride=self.stride,
                             use_bias=False, name="shortcut_conv")
      shortcut = common.normalize(shortcut, self.norm, train=train, name="shortcut_norm")
    return nn.relu(out + shortcut)


class ResNet(nn.Module):
  """ResNet (BasicBlocks). `__call__(x [B, H, W, C], train) -> (features [B, D], logits)`.

  Attributes:
    num_classes: K.
    stage_sizes: blocks per stage ((2, 2, 2, 2) for ResNet-18).
    width: channels of the first stage; stage s has width * 2^s. D = width * 8.
    norm: one of common.NORMS; "instance" (default) is the literature's ResNet18,
      "batch" its ResNet18BN.
  """

  num_classes: int
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  width: int = 64
  norm: str = "instance"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(x, 4)
    common.check_norm(self.norm)
    x = common.conv(x, self.width, 3, padding=1, use_bias=False, name="stem_conv")
    x = nn.relu(common.normalize(x, self.norm, train=train, name="stem_norm"))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2**stage, stride, self.norm,
                       name=f"stage{stage}_block{block}")(x, train)
    features = common.global_avg_pool(x)
    logits = common.dense(features, self.num_classes, name="classifier")
    return features, logits


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet18Tiny = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), width=4)
"""Only for tests: ResNet-18 layout with 4 base channels."""
