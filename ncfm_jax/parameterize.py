"""Synthetic-set parameterisation by multi-formation (docs/design.md section 6; IDC, Kim et al.
2022, as used by the NCFM release with factor 2).

A stored image of size H x W holds factor x factor tiles; `decode` cuts the tiles and
resizes each bilinearly back to H x W, so `ipc` stored images per class give
`ipc * factor^2` training images with the label of their class.

Tile boundaries: tile row i covers rows [floor(i H / f), floor((i + 1) H / f)), tile
column j likewise with W; when H is not divisible by f the tiles differ in size by at
most one pixel. (The release pads the image to a multiple of f with 0.5 and cuts equal
tiles instead; the floor rule keeps every pixel in exactly one tile and needs no padding.)
Tiles are ordered row-major within an image and images are kept together ("image-major"):
output index b * f^2 + i * f + j is tile (i, j) of stored image b.

Resizing is `jax.image.resize(..., "bilinear")`, half-pixel centres (PyTorch
`nn.Upsample(mode="bilinear")`, `align_corners=False`); the "mix" init downsizes with the
same kernel, antialiased.
"""

import chex
import jax
import jax.numpy as jnp

INIT_MODES = ("mix", "real", "noise")
RESIZE_METHOD = "bilinear"


def _check_factor(factor: int, height: int, width: int) -> None:
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
  if factor > min(height, width):
    raise ValueError(f"factor {factor} exceeds the image size {height}x{width}")


def tile_bounds(size: int, factor: int) -> tuple[tuple[int, int], ...]:
  """[start, stop) of each of `factor` tiles along an axis of `size` pixels.

  >>> tile_bounds(28, 3)
  ((0, 9), (9, 18), (18, 28))
  """
  edges = [(i * size) // factor for i in range(factor + 1)]
  return tuple(zip(edges[:-1], edges[1:]))


def decode(images: jax.Array, factor: int) -> jax.Array:
  """Cuts each image into factor x factor tiles and resizes every tile to H x W.

  Args:
    images: [B, H, W, C] stored (multi-formation) images.
    factor: tiles per side; 1 is the identity.

  Returns:
    [B * factor^2, H, W, C]; index b * factor^2 + i * factor + j is tile (i, j)
    (row i, column j) of image b, bilinearly upsampled.
  """
  chex.assert_rank(images, 4)
  b, h, w, c = images.shape
  _check_factor(factor, h, w)
  if factor == 1:
    return images
  n = b * factor * factor
  if h % factor == 0 and w % factor == 0:
    # Equal tiles: one reshape and one batched resize.
    th, tw = h // factor, w // factor
    tiles = images.reshape(b, factor, th, factor, tw, c).transpose(0, 1, 3, 2, 4, 5)
    return jax.image.resize(tiles.reshape(n, th, tw, c), (n, h, w, c), RESIZE_METHOD)
  resized = [
      jax.image.resize(images[:, y0:y1, x0:x1, :], (b, h, w, c), RESIZE_METHOD)
      for y0, y1 in tile_bounds(h, factor)
      for x0, x1 in tile_bounds(w, factor)
  ]
  return jnp.stack(resized, axis=1).reshape(n, h, w, c)


def decode_labels(labels: jax.Array, factor: int) -> jax.Array:
  """Repeats each label factor^2 times, in `decode`'s order.

  Args:
    labels: [B] class indices or [B, K] (soft) labels.
    factor: tiles per side.

  Returns:
    [B * factor^2] or [B * factor^2, K].
  """
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
  chex.assert_rank(labels, {1, 2})
  return jnp.repeat(labels, factor * factor, axis=0)


def _encode_tiles(images: jax.Array, factor: int, height: int, width: int) -> jax.Array:
  """Inverse layout of `decode`: [N * f^2, H', W', C] images -> [N, H, W, C] mosaics.

  Image n * f^2 + i * f + j is downsized (antialiased bilinear) into tile (i, j) of
  mosaic n.
  """
  total, _, _, c = images.shape
  n = total // (factor * factor)
  grouped = images.reshape(n, factor, factor, *images.shape[1:])
  rows = []
  for i, (y0, y1) in enumerate(tile_bounds(height, factor)):
    row = [
        jax.image.resize(grouped[:, i, j], (n, y1 - y0, x1 - x0, c), RESIZE_METHOD,
                         antialias=True)
        for j, (x0, x1) in enumerate(tile_bounds(width, factor))
    ]
    rows.append(jnp.concatenate(row, axis=2))
  return jnp.concatenate(rows, axis=1)


def _random_subsets(key: jax.Array, num_classes: int, n: int, k: int) -> jax.Array:
  """[C, k] distinct indices in [0, n) per class, uniformly at random."""
  keys = jax.random.split(key, num_classes)
  return jax.vmap(lambda kk: jax.random.permutation(kk, n)[:k])(keys)


def init_synthetic(
    key: jax.Array,
    real_by_class: jax.Array,
    ipc: int,
    factor: int,
    mode: str,
) -> jax.Array:
  """Initial stored synthetic images.

  Args:
    key: PRNG key.
    real_by_class: float [C, n, H, W, C'] real images in [0, 1], n per class.
    ipc: stored images per class.
    factor: multi-formation factor (tiles per side).
    mode: "mix": ipc * factor^2 distinct random real images of the class, each downsized
      into one tile, so that `decode` returns them downsized-then-upsized (needs
      n >= ipc * factor^2); "real": ipc distinct random real images of the class, unchanged
      (n >= ipc); "noise": U(0, 1) pixels.

  Returns:
    float32 [C, ipc, H, W, C'] in [0, 1]; class c's images come from real_by_class[c].

  Raises:
    ValueError: factor < 1 (or larger than the image), ipc < 1, an unknown mode, or too
      few real images per class for the mode.
  """
  chex.assert_rank(real_by_class, 5)
  chex.assert_type(real_by_class, float)
  num_classes, n, h, w, c = real_by_class.shape
  _check_factor(factor, h, w)
  if not isinstance(ipc, int) or ipc < 1:
    raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}")
  if mode not in INIT_MODES:
    raise ValueError(f"init mode must be one of {INIT_MODES}, got {mode!r}")
  if mode == "noise":
    return jax.random.uniform(key, (num_classes, ipc, h, w, c), jnp.float32)
  needed = ipc * factor * factor if mode == "mix" else ipc
  if n < needed:
    raise ValueError(f"init mode {mode!r} needs {needed} real images per class "
                     f"(ipc {ipc}, factor {factor}), got {n}")
  chosen = _random_subsets(key, num_classes, n, needed)
  picked = jnp.take_along_axis(real_by_class, chosen[:, :, None, None, None], axis=1)
  picked = picked.astype(jnp.float32)
  if mode == "real":
    return picked
  mosaics = _encode_tiles(picked.reshape(num_classes * needed, h, w, c), factor, h, w)
  return jnp.clip(mosaics, 0.0, 1.0).reshape(num_classes, ipc, h, w, c)
