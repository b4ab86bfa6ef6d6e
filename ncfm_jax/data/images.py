"""Decoding and resizing single images on the host (PIL).

One resize rule for every source: scale the shorter side to ``size`` (bilinear; PIL
antialiases when it shrinks) and cut the centred ``size x size`` square, the usual
ImageNet evaluation transform. Square inputs are simply resized; inputs already
``size x size`` are returned untouched.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
from PIL import Image

from ncfm_jax.errors import InputError

# PIL mode for each channel count of a uint8 [H, W, C] image.
_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}


def pil_mode(channels: int) -> str:
  """PIL mode (``"L"`` or ``"RGB"``) for 1 or 3 channels."""
  if channels not in _MODE_FOR_CHANNELS:
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  return _MODE_FOR_CHANNELS[channels]


def _fit(image: Image.Image, size: int) -> Image.Image:
  """Shorter side to ``size`` (bilinear, antialiased), then the centred square."""
  width, height = image.size
  if (width, height) == (size, size):
    return image
  scale = size / min(width, height)
  new_w = max(size, round(width * scale))
  new_h = max(size, round(height * scale))
  image = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return image.crop((left, top, left + size, top + size))


def _to_array(image: Image.Image) -> np.ndarray:
  """PIL image -> uint8 [H, W, C] (C = 1 for mode L)."""
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] (C in {1, 3}) -> uint8 [size, size, C] by the module's rule."""
  if image.shape[:2] == (size, size):
    return image
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  return _to_array(_fit(pil, size))


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, size, size, C]; a no-op when already that size."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((images.shape[0], size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_array(image, size)
  return out


def decode_image(data: bytes | str | os.PathLike, *, channels: int,
                 size: int | None, name: str) -> np.ndarray:
  """Decodes an encoded image (bytes or a file path) to uint8 [H, W, channels].

  Args:
    data: encoded JPEG/PNG bytes, or a path to such a file.
    channels: 1 (grey) or 3 (RGB); colour is converted as needed.
    size: output side (see the module rule), or None to keep the decoded size.
    name: what to call the image in an error (file path or dataset/index).

  Raises:
    ValueError: naming ``name`` when the image cannot be decoded.
  """
  mode = pil_mode(channels)
  try:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
      if size is not None and image.format == "JPEG":
        # Let libjpeg decode at a reduced scale (sides stay >= size): much faster
        # for large photographs, and the final resize still antialiases.
        image.draft(None, (size, size))
      image = image.convert(mode)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
    raise InputError(f"cannot decode image {name}: {err}") from err
  if size is not None:
    image = _fit(image, size)
  return _to_array(image)


def decode_many(items: Sequence, decode: Callable[..., np.ndarray],
                num_workers: int) -> list[np.ndarray]:
  """``[decode(item) for item in items]`` on a thread pool (PIL releases the GIL)."""
  if num_workers <= 1 or len(items) < 2:
    return [decode(item) for item in items]
  with futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
    return list(pool.map(decode, items))
