"""Differentiable Siamese augmentation (DSA family), random-resized-crop and CutMix
(docs/design.md section 7).

(Over 400 lines: each op with its range and the shared bilinear resampling.)

Pure functions of `(key, images [B, H, W, C])` on normalised images, differentiable
w.r.t. the pixels, jittable and vmappable; the strategy string is static (Python).

Ops (ranges are DSAParams fields, defaults from the DSA/IDC/NCFM releases):
  flip        x[:, :, ::-1] with probability flip_prob.
  brightness  x + (u - 0.5) * brightness.
  saturation  (x - m_c) * (u * saturation) + m_c,   m_c = mean over channels (per pixel).
  contrast    (x - m) * (u + contrast) + m,         m = mean over H, W, C (per image).
  color       brightness, then saturation, then contrast.
  crop        integer translation by (ty, tx), |t| <= round(crop_pad_ratio * size), with
              zeros shifted in (the release's "pad then random crop").
  scale       zoom with x and y factors in [1/scale_ratio, scale_ratio] about the centre.
  rotate      rotation by an angle in [-rotate_degrees, rotate_degrees] about the centre.
  cutout      a zeroed square of side round(cutout_ratio * size) at a random centre
              (clipped at the borders).
u ~ U(0, 1). Scale and rotate resample bilinearly with zero padding on the
`align_corners=True` grid, i.e. `F.affine_grid` + `F.grid_sample` as in the release.

Order (IDC/NCFM `DiffAug`): flip -> colour -> ONE geometric op drawn uniformly from those
listed among crop/scale/rotate (`lax.switch`, so one call compiles once) -> cutout.

Modes: `per_sample=False` draws ONE set of parameters per call, shared by every image
(Siamese matching: call with the same key for the real and the synthetic images of a
class and they get the same transform; the draw does not depend on the batch size).
`per_sample=True` draws independent parameters per image (network training). The op
choice is per call in both modes.

`random_resized_crop` (per sample, network training only) and `cutmix` are separate
functions; the training step applies them as the release does: random-resized-crop,
then DSA, then CutMix.

Efficiency: the affine warps compute one bilinear sampling grid (4 source indices and
weights per output pixel) and gather each output pixel's 4 neighbours; in shared mode the
grid is computed once for the whole batch. Crop is a pad + slice, colour ops and cutout
are elementwise. (dm_pix.affine_transform interpolates trilinearly over H, W and C, 8
gathers per output value, and blanks every sample whose centre leaves the image; it was
~15x slower here on [2560, 32, 32, 3] and differs from grid_sample at the borders.)
Random-resized-crop is separable: two gathers of two rows or columns each, O(H W C)
per image (jax.image.scale_and_translate contracts dense [H, H] and [W, W] resampling
matrices, O(H W C (H + W)), and dm_pix.affine_transform has the costs above).
"""

from collections.abc import Callable
import functools
import math
from typing import NamedTuple

import chex
import dm_pix
import jax
import jax.numpy as jnp

GEOMETRIC_OPS = ("crop", "scale", "rotate")
COLOR_OPS = ("brightness", "saturation", "contrast")
OPS = ("flip", "color", *COLOR_OPS, *GEOMETRIC_OPS, "cutout")
"""Valid tokens of a strategy string ("color" = brightness + saturation + contrast)."""

IDENTITY_STRATEGIES = ("", "none")


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 `[..., H, W, C]` or float in [0, 1] -> `(x - mean) / std` in float32
  (every augmentation here works on normalised images)."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images - mean) / std


class DSAParams(NamedTuple):
  """Ranges of the DSA ops (release defaults)."""

  flip_prob: float = 0.5
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5
  crop_pad_ratio: float = 0.125
  scale_ratio: float = 1.2
  rotate_degrees: float = 15.0
  cutout_ratio: float = 0.5


DEFAULT_DSA_PARAMS = DSAParams()

# Every random quantity of one call comes from ONE uniform draw of shape [rows, columns]
# (rows = B per sample, 1 shared): one RNG kernel to compile and run instead of one per
# op. Each op reads its own column(s); the geometric ops share two columns because only
# one of them runs per call. The op choice is read from row 0.
_COLUMNS = ("flip", "brightness", "saturation", "contrast", "geometric_a", "geometric_b",
            "cutout_y", "cutout_x", "choice")


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """Validated ops of a strategy string, in application order, without duplicates.

  "color" expands to its three ops. "" and "none" give (). Unknown token -> ValueError.
  >>> parse_strategy("color_crop_cutout")
  ('brightness', 'saturation', 'contrast', 'crop', 'cutout')
  """
  if strategy.lower() in IDENTITY_STRATEGIES:
    return ()
  tokens = strategy.split("_")
  for token in tokens:
    if token not in OPS:
      raise ValueError(f"unknown augmentation op {token!r} in strategy {strategy!r}; "
                       f"valid ops: {', '.join(OPS)}")
  listed = set(tokens)
  if "color" in listed:
    listed.update(COLOR_OPS)
  order = ("flip", *COLOR_OPS, *GEOMETRIC_OPS, "cutout")
  return tuple(op for op in order if op in listed)


def _draw_uniforms(key: jax.Array, batch: int, per_sample: bool) -> dict[str, jax.Array]:
  """U(0, 1) draws by column name: each [B] per sample, [] shared (independent of B)."""
  rows = batch if per_sample else 1
  u = jax.random.uniform(key, (rows, len(_COLUMNS)), jnp.float32)
  draws = {name: u[:, i] if per_sample else u[0, i] for i, name in enumerate(_COLUMNS)}
  draws["choice"] = u[0, _COLUMNS.index("choice")]
  return draws


def _uniform_int(u: jax.Array, low: int, high: int) -> jax.Array:
  """Integer uniform on [low, high] (inclusive) from u ~ U(0, 1)."""
  value = low + jnp.floor(u * (high - low + 1)).astype(jnp.int32)
  return jnp.clip(value, low, high)


def _uniform_range(u: jax.Array, low: float, high: float) -> jax.Array:
  return low + u * (high - low)


def _per_image(value: jax.Array) -> jax.Array:
  """[] or [B] -> broadcastable against [B, H, W, C]."""
  return jnp.reshape(value, value.shape + (1, 1, 1))


def _flip(u, images, params: DSAParams):
  coin = u["flip"] < params.flip_prob
  return jnp.where(_per_image(coin), dm_pix.flip_left_right(images), images)


def _brightness(u, images, params: DSAParams):
  delta = (u["brightness"] - 0.5) * params.brightness
  return dm_pix.adjust_brightness(images, _per_image(delta))


def _saturation(u, images, params: DSAParams):
  # dm_pix.adjust_saturation works in HSV on [0, 1] RGB; DSA scales the deviation from
  # the channel mean of normalised images, which is what is written here.
  mean = _channel_mean(images)
  return (images - mean) * _per_image(u["saturation"] * params.saturation) + mean


@jax.custom_vjp
def _channel_mean(images: jax.Array) -> jax.Array:
  """Mean over the (few) channels broadcast back: [B, H, W, C] -> [B, H, W, C].

  A sum of channel slices: XLA on CPU reduces a size-3 minor axis ~15x slower than
  this elementwise form (measured on [2560, 32, 32, 3]). The map is symmetric
  (per pixel it is the matrix 1 1^T / C), so its VJP is itself; autodiff's VJP would
  bring that minor-axis reduction back (saturation value+grad ~6x slower, measured).
  Reverse mode only (a custom_vjp): jax.jvp through saturation is not supported.
  """
  channels = images.shape[-1]
  mean = sum(images[..., c:c + 1] for c in range(channels)) / channels
  return jnp.broadcast_to(mean, images.shape)


_channel_mean.defvjp(lambda x: (_channel_mean(x), None),
                     lambda _, g: (_channel_mean(g),))


def _contrast(u, images, params: DSAParams):
  # dm_pix.adjust_contrast takes per-channel means; DSA uses one mean per image.
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) * _per_image(u["contrast"] + params.contrast) + mean


def _max_shift(size: int, ratio: float) -> int:
  """int(size * ratio + 0.5), the release's rounding of pixel counts."""
  return int(size * ratio + 0.5)


def _crop(u, images, params: DSAParams):
  """out[i, j] = x[i + ty, j + tx] (zero outside), ty, tx integers in [-s, s]:
  pad by s with zeros, then a dynamic slice per image (one slice when shared)."""
  _, h, w, c = images.shape
  sh, sw = _max_shift(h, params.crop_pad_ratio), _max_shift(w, params.crop_pad_ratio)
  ty = _uniform_int(u["geometric_a"], -sh, sh)
  tx = _uniform_int(u["geometric_b"], -sw, sw)
  padded = jnp.pad(images, ((0, 0), (sh, sh), (sw, sw), (0, 0)))

  def shift(image, ty, tx):
    return jax.lax.dynamic_slice(image, (sh + ty, sw + tx, 0), (h, w, c))

  in_axes = (0, 0, 0) if ty.ndim else (0, None, None)
  return jax.vmap(shift, in_axes=in_axes)(padded, ty, tx)


def _bilinear_grid(matrix: jax.Array, height: int, width: int):
  """Sampling grid of the warp `src = matrix @ dst` in normalised coordinates.

  Coordinates are normalised to [-1, 1] with -1 and 1 at the centres of the border
  pixels (PyTorch `align_corners=True`); `matrix` [2, 2] acts on (x, y) = (column, row),
  as the 2x2 part of an `F.affine_grid` theta.

  Returns:
    indices: int32 [4, height * width] into the image padded with one zero pixel on each
      side and flattened to [(height + 2) * (width + 2)] rows.
    weights: float32 [4, height * width], bilinear weights of those 4 neighbours; samples
      outside the image blend with the zero border (`grid_sample(padding_mode="zeros")`).
  """
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  y_n = (jnp.arange(height, dtype=jnp.float32)[:, None] - cy) / max(cy, 0.5)
  x_n = (jnp.arange(width, dtype=jnp.float32)[None, :] - cx) / max(cx, 0.5)
  src_x = (matrix[0, 0] * x_n + matrix[0, 1] * y_n) * cx + cx
  src_y = (matrix[1, 0] * x_n + matrix[1, 1] * y_n) * cy + cy
  # Clamp into [-1, size] so every sample far outside reads only the zero border.
  src_x = jnp.clip(src_x, -1.0, width)
  src_y = jnp.clip(src_y, -1.0, height)
  x0 = jnp.clip(jnp.floor(src_x), -1.0, width - 1.0)
  y0 = jnp.clip(jnp.floor(src_y), -1.0, height - 1.0)
  fx, fy = src_x - x0, src_y - y0
  row_stride = width + 2
  base = (y0.astype(jnp.int32) + 1) * row_stride + (x0.astype(jnp.int32) + 1)
  indices = jnp.stack([base, base + 1, base + row_stride, base + row_stride + 1])
  weights = jnp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
  return indices.reshape(4, -1), weights.reshape(4, -1)


def _warp_image(image: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
  """Bilinear resampling of one image [H, W, C] on a grid from _bilinear_grid."""
  h, w, c = image.shape
  rows = jnp.pad(image, ((1, 1), (1, 1), (0, 0))).reshape(-1, c)
  out = sum(weights[k][:, None] * rows.at[indices[k]].get(mode="promise_in_bounds")
            for k in range(4))
  return out.reshape(h, w, c)


def _affine_warp(images: jax.Array, matrices: jax.Array) -> jax.Array:
  """Warps [B, H, W, C] by `matrices` [2, 2] (shared) or [B, 2, 2] (one per image)."""
  _, h, w, _ = images.shape
  if matrices.ndim == 2:
    indices, weights = _bilinear_grid(matrices, h, w)
    return jax.vmap(_warp_image, in_axes=(0, None, None))(images, indices, weights)
  indices, weights = jax.vmap(_bilinear_grid, in_axes=(0, None, None))(matrices, h, w)
  return jax.vmap(_warp_image)(images, indices, weights)


def _scale(u, images, params: DSAParams):
  lo, hi = 1.0 / params.scale_ratio, params.scale_ratio
  sx = _uniform_range(u["geometric_a"], lo, hi)
  sy = _uniform_range(u["geometric_b"], lo, hi)
  zero = jnp.zeros_like(sx)
  matrices = jnp.stack([jnp.stack([sx, zero], -1), jnp.stack([zero, sy], -1)], -2)
  return _affine_warp(images, matrices)


def _rotate(u, images, params: DSAParams):
  limit = params.rotate_degrees * math.pi / 180.0
  angle = _uniform_range(u["geometric_a"], -limit, limit)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  matrices = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  return _affine_warp(images, matrices)


def _cutout(u, images, params: DSAParams):
  """Zeroes rows [cy - s//2, cy - s//2 + s) x columns likewise, clipped to the image;
  centres cy in [0, H - 1 + (1 - s % 2)] as in the release."""
  _, h, w, _ = images.shape
  size_h, size_w = _max_shift(h, params.cutout_ratio), _max_shift(w, params.cutout_ratio)
  cy = _uniform_int(u["cutout_y"], 0, h - size_h % 2)
  cx = _uniform_int(u["cutout_x"], 0, w - size_w % 2)
  top = jnp.reshape(cy - size_h // 2, cy.shape + (1, 1))
  left = jnp.reshape(cx - size_w // 2, cx.shape + (1, 1))
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = ((rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w))
  return images * (~inside)[..., None].astype(images.dtype)


_OP_FUNCTIONS: dict[str, Callable] = {
    "flip": _flip,
    "brightness": _brightness,
    "saturation": _saturation,
    "contrast": _contrast,
    "crop": _crop,
    "scale": _scale,
    "rotate": _rotate,
    "cutout": _cutout,
}


def augment(
    key: jax.Array,
    images: jax.Array,
    strategy: str,
    *,
    per_sample: bool,
    params: DSAParams = DEFAULT_DSA_PARAMS,
) -> jax.Array:
  """Applies the DSA ops of `strategy` to normalised images.

  Args:
    key: PRNG key; the output is a deterministic function of (key, images).
    images: float [B, H, W, C], normalised (mean/std) images.
    strategy: ops joined by "_" (see OPS), e.g. "color_crop_cutout"; "" or "none" for
      the identity. Flip, colour ops and cutout are applied when listed; ONE of the
      listed crop/scale/rotate is drawn per call.
    per_sample: False for one parameter draw shared by the whole call (Siamese
      matching), True for independent draws per image (network training).
    params: op ranges.

  Returns:
    Augmented images [B, H, W, C], same dtype.

  Raises:
    ValueError: an unknown op in `strategy`.
  """
  ops = parse_strategy(strategy)
  chex.assert_rank(images, 4)
  if not ops:
    return images
  u = _draw_uniforms(key, images.shape[0], per_sample)
  for op in ops:
    if op in ("flip", *COLOR_OPS):
      images = _OP_FUNCTIONS[op](u, images, params)
  geometric = [op for op in ops if op in GEOMETRIC_OPS]
  if len(geometric) == 1:
    images = _OP_FUNCTIONS[geometric[0]](u, images, params)
  elif geometric:
    # One op drawn uniformly per call; lax.switch keeps it one compiled program.
    choice = _uniform_int(u["choice"], 0, len(geometric) - 1)
    branches = [functools.partial(_OP_FUNCTIONS[op], params=params) for op in geometric]
    images = jax.lax.switch(choice, branches, u, images)
  if "cutout" in ops:
    images = _cutout(u, images, params)
  return images


RRC_SCALE = (0.5, 1.0)
"""(release) Random-resized-crop area fraction range (torchvision's default is 0.08-1)."""
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""Random-resized-crop aspect-ratio (w / h) range, torchvision's default."""


def _rrc_boxes(u: jax.Array, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> tuple[jax.Array, ...]:
  """torchvision's `RandomResizedCrop.get_params`, all attempts at once.

  Args:
    u: U(0, 1) draws [B, attempts, 4]: area fraction, log aspect, top, left.
    height, width: image size.
    scale, ratio: area fraction and aspect-ratio (w / h) ranges.

  Returns:
    (top, left, h, w) int32 [B]: per image, the first attempt whose box fits in the
    image, else the centre crop of the whole image clamped to `ratio`.
  """
  area = height * width * _uniform_range(u[..., 0], *scale)
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(_uniform_range(u[..., 1], log_lo, log_hi))
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # half to even, as round()
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  top = _uniform_int(u[..., 2], 0, height - h)
  left = _uniform_int(u[..., 3], 0, width - w)
  first = jnp.argmax(fits, axis=-1)[:, None]
  found = fits.any(axis=-1)
  if width / height < ratio[0]:
    fallback_w, fallback_h = width, int(round(width / ratio[0]))
  elif width / height > ratio[1]:
    fallback_w, fallback_h = int(round(height * ratio[1])), height
  else:
    fallback_w, fallback_h = width, height
  fallback = ((height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h, fallback_w)
  return tuple(jnp.where(found, jnp.take_along_axis(value, first, axis=-1)[:, 0], default)
               for value, default in zip((top, left, h, w), fallback))


def _resize_axis(start: jax.Array, length: jax.Array, size: int):
  """Bilinear resampling of `[start, start + length)` to `size` samples along one axis.

  Half-pixel centres, clamped inside the crop (`F.interpolate(align_corners=False)` of
  the cropped image): sample k reads `src = start + (k + 0.5) * length / size - 0.5`.

  Returns:
    (i0, i1 int32 [B, size], f float32 [B, size]): value = (1 - f) x[i0] + f x[i1].
  """
  start = start.astype(jnp.float32)[:, None]
  last = start + length.astype(jnp.float32)[:, None] - 1.0
  src = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * (last - start + 1.0) / size - 0.5
  src = jnp.clip(src, start, last)
  i0 = jnp.floor(src)
  return i0.astype(jnp.int32), jnp.minimum(i0 + 1.0, last).astype(jnp.int32), src - i0


def random_resized_crop(
    key: jax.Array,
    images: jax.Array,
    *,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
    attempts: int = 10,
) -> jax.Array:
  """torchvision's `RandomResizedCrop(size, scale, ratio)` per image, output at the input size.

  For each image: area fraction s ~ U(scale), aspect r = exp(U(log ratio)), box
  w = round(sqrt(s H W r)), h = round(sqrt(s H W / r)); the first of `attempts` draws
  that fits gets a uniform top-left corner, else the centre crop (see `_rrc_boxes`).
  The box is resized bilinearly to H x W (half-pixel centres, edges clamped inside the
  box; only upsampling, as the box fits in the image, so antialiasing plays no part).

  Args:
    key: PRNG key; one box per image.
    images: float [B, H, W, C] (normalised or not: resampling is a convex
      combination of pixels, so it commutes with the mean/std normalisation).
    scale: area fraction range (release: 0.5-1).
    ratio: aspect-ratio (w / h) range.
    attempts: draws before the centre-crop fallback (torchvision: 10).

  Returns:
    [B, H, W, C], same dtype; differentiable w.r.t. the pixels. With
    `scale=(1, 1), ratio=(1, 1)` a square image comes back unchanged.
  """
  chex.assert_rank(images, 4)
  b, h, w, _ = images.shape
  u = jax.random.uniform(key, (b, attempts, 4), jnp.float32)
  return _crop_resize(images, *_rrc_boxes(u, h, w, scale, ratio))


def _crop_resize(images: jax.Array, top: jax.Array, left: jax.Array, box_h: jax.Array,
                 box_w: jax.Array) -> jax.Array:
  """Box `[top, top + box_h) x [left, left + box_w)` of each image (int [B] each),
  resized bilinearly to the image size: two separable gathers of two rows/columns."""
  _, h, w, _ = images.shape
  y0, y1, fy = _resize_axis(top, box_h, h)
  x0, x1, fx = _resize_axis(left, box_w, w)
  fy = fy.astype(images.dtype)[:, :, None, None]
  fx = fx.astype(images.dtype)[:, None, :, None]

  def take(x, index, axis):
    return jnp.take_along_axis(x, index, axis=axis, mode="promise_in_bounds")

  rows = (take(images, y0[:, :, None, None], 1) * (1 - fy)
          + take(images, y1[:, :, None, None], 1) * fy)
  return (take(rows, x0[:, None, :, None], 2) * (1 - fx)
          + take(rows, x1[:, None, :, None], 2) * fx)


def cutmix(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    prob: float = 0.5,
    beta: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """CutMix (Yun et al. 2019) for a whole batch, as in the release's training loop.

  With probability `prob` (one draw per call): lam ~ Beta(beta, beta); a box of side
  int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam)) centred at a uniform pixel (clipped to
  the image) is pasted from the batch permuted by a random permutation `p`, and

    labels' = (1 - a) * labels + a * labels[p],   a = (clipped box area) / (H W).

  Otherwise images and labels are returned unchanged.

  Args:
    key: PRNG key.
    images: [B, H, W, C].
    labels: [B, K] one-hot or soft labels.
    prob: probability of mixing this batch.
    beta: Beta distribution parameter.

  Returns:
    (images [B, H, W, C], labels [B, K] float) with every label row summing as before.
  """
  chex.assert_rank(images, 4)
  chex.assert_rank(labels, 2)
  chex.assert_equal_shape_prefix((images, labels), 1)
  b, h, w, _ = images.shape
  key_apply, key_lam, key_perm, key_y, key_x = jax.random.split(key, 5)
  apply = jax.random.uniform(key_apply) < prob
  if isinstance(beta, (int, float)) and beta == 1.0:
    lam = jax.random.uniform(key_lam)  # Beta(1, 1) is U(0, 1); compiles much faster
  else:
    lam = jax.random.beta(key_lam, beta, beta)
  cut_ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(h * cut_ratio).astype(jnp.int32)
  cut_w = jnp.floor(w * cut_ratio).astype(jnp.int32)
  cy = jax.random.randint(key_y, (), 0, h)
  cx = jax.random.randint(key_x, (), 0, w)
  y1, y2 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  x1, x2 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2) & apply
  perm = jax.random.permutation(key_perm, b)
  mixed_images = jnp.where(box[None, :, :, None], images[perm], images)
  pasted = jnp.where(apply, (y2 - y1) * (x2 - x1) / (h * w), 0.0).astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  mixed_labels = (1.0 - pasted) * labels + pasted * labels[perm]
  return mixed_images, mixed_labels
