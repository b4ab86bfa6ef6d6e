"""Tests for ncfm_jax.augment: DSA ops, shared/per-sample modes, random-resized-crop, CutMix."""

import functools
import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from ncfm_jax import augment as aug

SINGLE_OPS = ("flip", "color", "brightness", "saturation", "contrast", "crop", "scale",
              "rotate", "cutout")
FULL = "color_crop_cutout_flip_scale_rotate"
_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.standard_normal((6, 16, 16, 3)), jnp.float32)


@functools.lru_cache(maxsize=None)
def _jitted(strategy, per_sample, params=aug.DEFAULT_DSA_PARAMS):
  return jax.jit(functools.partial(aug.augment, strategy=strategy, per_sample=per_sample,
                                   params=params))


def _key(seed):
  # rbg keys: their random draws compile several times faster on CPU than threefry's;
  # the augmentations accept any key type (threefry is covered by a test below).
  return jax.random.key(seed, impl="rbg")


def _run(strategy, per_sample, seed, x=X, params=aug.DEFAULT_DSA_PARAMS):
  return np.asarray(_jitted(strategy, per_sample, params)(_key(seed), x))


def _shift(image, ty, tx):
  """Reference integer translation: out[i, j] = image[i + ty, j + tx], zero outside."""
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  for i in range(h):
    for j in range(w):
      if 0 <= i + ty < h and 0 <= j + tx < w:
        out[i, j] = image[i + ty, j + tx]
  return out


def _grid_sample_reference(image, matrix):
  """Loop version of F.affine_grid(theta=[matrix | 0], align_corners=True) followed by
  F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True); [H, W, C]."""
  h, w, _ = image.shape
  out = np.zeros_like(image)

  def pixel(y, x):
    return image[y, x] if 0 <= y < h and 0 <= x < w else 0.0

  for i in range(h):
    for j in range(w):
      xn, yn = 2 * j / (w - 1) - 1, 2 * i / (h - 1) - 1
      sx = (matrix[0, 0] * xn + matrix[0, 1] * yn + 1) * (w - 1) / 2
      sy = (matrix[1, 0] * xn + matrix[1, 1] * yn + 1) * (h - 1) / 2
      x0, y0 = int(np.floor(sx)), int(np.floor(sy))
      fx, fy = sx - x0, sy - y0
      out[i, j] = ((1 - fy) * (1 - fx) * pixel(y0, x0) + (1 - fy) * fx * pixel(y0, x0 + 1)
                   + fy * (1 - fx) * pixel(y0 + 1, x0) + fy * fx * pixel(y0 + 1, x0 + 1))
  return out


def test_parse_strategy():
  assert aug.parse_strategy("color_crop_cutout") == (
      "brightness", "saturation", "contrast", "crop", "cutout")
  assert aug.parse_strategy("cutout_flip_crop") == ("flip", "crop", "cutout")
  assert aug.parse_strategy("none") == ()
  assert aug.parse_strategy("") == ()
  with pytest.raises(ValueError, match="'blur'"):
    aug.parse_strategy("color_blur")
  with pytest.raises(ValueError, match="'blur'"):
    aug.augment(jax.random.key(0), X, "crop_blur", per_sample=False)


@pytest.mark.parametrize("strategy", ["none", ""])
@pytest.mark.parametrize("per_sample", [False, True])
def test_identity(strategy, per_sample):
  out = aug.augment(jax.random.key(0), X, strategy, per_sample=per_sample)
  np.testing.assert_array_equal(out, X)


@pytest.mark.parametrize(
    "strategy, per_sample", [(FULL, False), (FULL, True), ("color_crop_cutout", False)])
def test_shape_dtype_and_determinism(strategy, per_sample):
  out = _run(strategy, per_sample, 0)
  assert out.shape == X.shape and out.dtype == np.float32
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out, _run(strategy, per_sample, 0))
  assert not np.allclose(out, _run(strategy, per_sample, 1))
  assert not np.allclose(out, X)


def test_shared_mode_is_siamese_and_per_sample_is_not():
  same = jnp.broadcast_to(X[:1], X.shape)
  for seed in range(3):
    shared = _run(FULL, False, seed, same)
    for b in range(1, X.shape[0]):
      np.testing.assert_allclose(shared[b], shared[0], atol=1e-6)
    independent = _run(FULL, True, seed, same)
    assert not all(np.allclose(independent[b], independent[0]) for b in range(1, 6))


def test_shared_draw_does_not_depend_on_batch():
  # Real and synthetic batches of a class differ in size but must get one transform.
  for seed in range(3):
    np.testing.assert_allclose(_run(FULL, False, seed, X[:2]), _run(FULL, False, seed)[:2],
                               atol=1e-6)


@pytest.mark.parametrize(
    "strategy, per_sample", [(op, False) for op in SINGLE_OPS] + [(FULL, True)])
def test_gradient_wrt_pixels_finite_and_nonzero(strategy, per_sample):
  weights = jnp.asarray(_RNG.standard_normal(X.shape), jnp.float32)
  grad = jax.jit(jax.grad(
      lambda x: jnp.sum(aug.augment(_key(3), x, strategy, per_sample=per_sample)
                        * weights)))(X)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  assert np.abs(grad).sum() > 0


def test_channel_mean_vjp_matches_finite_differences():
  # _channel_mean carries a hand-written VJP (for speed); check it numerically and
  # against the plain mean.
  x = X[:2, :6, :6]
  check_grads(aug._channel_mean, (x,), order=1, modes=["rev"])
  np.testing.assert_allclose(aug._channel_mean(x),
                             jnp.broadcast_to(x.mean(-1, keepdims=True), x.shape), atol=1e-6)


def test_flip_is_all_or_nothing_in_shared_mode():
  outcomes = set()
  for seed in range(8):
    out = _run("flip", False, seed)
    if np.array_equal(out, np.asarray(X)):
      outcomes.add("kept")
    else:
      np.testing.assert_array_equal(out, np.asarray(X)[:, :, ::-1])
      outcomes.add("flipped")
  assert outcomes == {"kept", "flipped"}


def test_colour_ops_within_ranges():
  x = jnp.asarray(_RNG.standard_normal((256, 4, 4, 3)), jnp.float32)
  xn = np.asarray(x)
  # brightness: x + (u - 0.5) * 1.0, one offset per image in [-0.5, 0.5]
  delta = _run("brightness", True, 0, x) - xn
  per_image = delta.mean(axis=(1, 2, 3))
  np.testing.assert_allclose(delta, per_image[:, None, None, None] + 0 * delta, atol=1e-5)
  assert per_image.min() >= -0.5 and per_image.max() <= 0.5
  assert per_image.min() < -0.4 and per_image.max() > 0.4
  # saturation: (x - m_c) * s + m_c, m_c the channel mean, s in [0, 2]
  m_c = xn.mean(axis=-1, keepdims=True)
  out = _run("saturation", True, 0, x)
  s = ((out - m_c) * (xn - m_c)).sum(axis=(1, 2, 3)) / ((xn - m_c) ** 2).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(out, (xn - m_c) * s[:, None, None, None] + m_c, atol=1e-5)
  assert s.min() >= 0 and s.max() <= 2 and s.min() < 0.2 and s.max() > 1.8
  # contrast: (x - m) * c + m, m the image mean, c in [0.5, 1.5]
  m = xn.mean(axis=(1, 2, 3), keepdims=True)
  out = _run("contrast", True, 0, x)
  c = ((out - m) * (xn - m)).sum(axis=(1, 2, 3)) / ((xn - m) ** 2).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(out, (xn - m) * c[:, None, None, None] + m, atol=1e-5)
  assert c.min() >= 0.5 and c.max() <= 1.5 and c.min() < 0.6 and c.max() > 1.4


def test_cutout_zeroes_a_square_of_half_the_side():
  ones = jnp.ones((64, 16, 16, 1))
  out = _run("cutout", True, 0, ones)[..., 0]
  full_squares = 0
  for mask in out == 0:
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    np.testing.assert_array_equal(mask, np.outer(rows, cols))  # one rectangle
    assert rows.sum() <= 8 and cols.sum() <= 8
    touches_border = rows[0] or rows[-1] or cols[0] or cols[-1]
    if not touches_border:
      assert mask.sum() == 8 * 8
      full_squares += 1
  assert full_squares > 0
  shared = _run("cutout", False, 0, ones)[..., 0]
  assert np.all(shared == shared[0]) and (shared[0] == 0).sum() > 0


def test_crop_is_an_integer_shift_with_zero_fill():
  x = np.asarray(X[..., :1])
  out = _run("crop", True, 0, jnp.asarray(x))
  max_shift = int(16 * 0.125 + 0.5)
  shifts = []
  for b in range(x.shape[0]):
    matches = [(ty, tx) for ty in range(-max_shift, max_shift + 1)
               for tx in range(-max_shift, max_shift + 1)
               if np.array_equal(out[b], _shift(x[b], ty, tx))]
    assert matches, f"image {b} is not an integer shift"
    shifts.append(matches[0])
  assert any(s != (0, 0) for s in shifts)


def test_warp_matches_grid_sample_reference():
  image = _RNG.standard_normal((9, 7, 2)).astype(np.float32)
  angle, sx, sy = 0.3, 1.15, 0.9
  matrix = np.array([[np.cos(angle) * sx, -np.sin(angle)],
                     [np.sin(angle), np.cos(angle) * sy]], np.float32)
  warp = jax.jit(aug._affine_warp)
  out = warp(jnp.asarray(image)[None], jnp.asarray(matrix))[0]
  np.testing.assert_allclose(out, _grid_sample_reference(image, matrix), atol=1e-5)
  # Per-image matrices give the same result as the shared one.
  per_image = warp(jnp.asarray(image)[None], jnp.asarray(matrix)[None])[0]
  np.testing.assert_allclose(per_image, out, atol=1e-6)


def test_warp_quarter_turn_equals_rot90():
  quarter = jnp.array([[0.0, -1.0], [1.0, 0.0]])
  out = jax.jit(aug._affine_warp)(X, quarter)
  np.testing.assert_allclose(out, jnp.rot90(X, k=1, axes=(1, 2)), atol=1e-5)


def test_zero_ranges_give_identity():
  params = aug.DSAParams(scale_ratio=1.0, rotate_degrees=0.0)
  for op in ("scale", "rotate"):
    np.testing.assert_allclose(_run(op, True, 0, params=params), X, atol=1e-5)


def test_one_geometric_op_drawn_per_call():
  kinds = set()
  for seed in range(10):
    out = _run("crop_rotate", False, seed)
    is_shift = any(np.array_equal(out[0], _shift(np.asarray(X[0]), ty, tx))
                   for ty in range(-2, 3) for tx in range(-2, 3))
    kinds.add("crop" if is_shift else "rotate")
  assert kinds == {"crop", "rotate"}


def test_jit_and_vmap_with_threefry_keys():
  keys = jax.random.split(jax.random.key(5), 3)  # the default key type
  images = jnp.stack([X, -X, 2 * X])
  batched = jax.jit(jax.vmap(
      lambda k, x: aug.augment(k, x, "color_crop_cutout", per_sample=False)))(keys, images)
  for i in range(3):
    np.testing.assert_allclose(
        batched[i], _jitted("color_crop_cutout", False)(keys[i], images[i]), atol=1e-5)


def test_cutmix_mixes_labels_by_box_area():
  b, h, w = 8, 16, 16
  images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None],
                            (b, h, w, 1))
  labels = jax.nn.one_hot(jnp.arange(b), b)
  fn = jax.jit(lambda key, x, y, prob: aug.cutmix(key, x, y, prob=prob, beta=1.0))
  areas = set()
  for seed in range(6):
    out_images, out_labels = map(np.asarray, fn(_key(seed), images, labels, 1.0))
    np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, atol=1e-6)
    pasted = out_images[..., 0] != np.arange(b)[:, None, None]
    box = pasted.any(axis=0)
    for i in range(b):
      if not pasted[i].any():  # the permutation kept image i in place
        np.testing.assert_allclose(out_labels[i], labels[i], atol=1e-6)
        continue
      np.testing.assert_array_equal(pasted[i], box)  # one box for the whole batch
      source = int(out_images[i, ..., 0][box][0])
      np.testing.assert_array_equal(out_images[i, ..., 0][box], source)
      np.testing.assert_allclose(out_labels[i, i], 1 - box.mean(), atol=1e-6)
      np.testing.assert_allclose(out_labels[i, source], box.mean(), atol=1e-6)
    areas.add(round(float(box.mean()), 4))
  assert len(areas) > 1
  never = fn(_key(0), images, labels, 0.0)
  np.testing.assert_array_equal(never[0], images)
  np.testing.assert_array_equal(never[1], labels)


# ---------------------------------------------------------------- random-resized-crop

def _torchvision_box(u, height, width, scale=aug.RRC_SCALE, ratio=aug.RRC_RATIO):
  """Loop version of torchvision's RandomResizedCrop.get_params on the uniforms
  u [attempts, 4] (area fraction, log aspect, top, left); (top, left, h, w)."""
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for s, a, t, l in np.asarray(u, np.float64):
    area = height * width * (scale[0] + s * (scale[1] - scale[0]))
    aspect = math.exp(log_lo + a * (log_hi - log_lo))
    w = int(round(math.sqrt(area * aspect)))
    h = int(round(math.sqrt(area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(t * (height - h + 1)), int(l * (width - w + 1)), h, w
  if width / height < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif width / height > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height,width", [(32, 32), (16, 24)])
def test_rrc_boxes_match_torchvision(height, width):
  u = jax.random.uniform(_key(20), (400, 10, 4))
  boxes = np.stack([np.asarray(b) for b in aug._rrc_boxes(u, height, width, aug.RRC_SCALE,
                                                           aug.RRC_RATIO)], -1)
  expected = np.array([_torchvision_box(row, height, width) for row in np.asarray(u)])
  np.testing.assert_array_equal(boxes, expected)
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (top + h <= height).all()
  assert (left >= 0).all() and (left + w <= width).all()
  area = h * w / (height * width)
  assert area.min() > 0.45 and area.max() <= 1.0 and area.std() > 0.1
  assert len(set(top)) > 2 and len(set(left)) > 2  # the corner is drawn


def test_rrc_boxes_fallback_is_the_centre_crop():
  u = jax.random.uniform(_key(21), (3, 10, 4))
  # Square image, aspect 2 only: no box of the whole area fits -> centre, ratio clamped.
  boxes = aug._rrc_boxes(u, 16, 16, (1.0, 1.0), (2.0, 2.0))
  np.testing.assert_array_equal(np.stack(boxes, -1), [[4, 0, 8, 16]] * 3)
  # A 16 x 4 image: no box of area >= 32 fits in 4 columns -> 4 x round(4 / 0.75) = 5.
  boxes = aug._rrc_boxes(u, 16, 4, aug.RRC_SCALE, aug.RRC_RATIO)
  np.testing.assert_array_equal(np.stack(boxes, -1), [[5, 0, 5, 4]] * 3)


def test_crop_resize_matches_crop_then_jax_image_resize():
  """Bilinear, half-pixel centres, edges clamped inside the box: jax.image.resize of
  the cropped box (which renormalises its weights at the edges) gives the same."""
  images = jnp.asarray(_RNG.standard_normal((5, 12, 10, 3)), jnp.float32)
  boxes = np.array([[0, 0, 12, 10], [3, 2, 7, 5], [0, 9, 12, 1], [11, 0, 1, 10],
                    [5, 4, 6, 6]])
  out = np.asarray(aug._crop_resize(images, *boxes.T))
  for image, result, (top, left, h, w) in zip(np.asarray(images), out, boxes):
    crop = image[top:top + h, left:left + w]
    np.testing.assert_allclose(
        result, jax.image.resize(crop, image.shape, "linear"), atol=1e-5)
  np.testing.assert_array_equal(out[0], images[0])  # the whole image: unchanged


def test_random_resized_crop_per_sample_deterministic_and_differentiable():
  one = jnp.asarray(_RNG.standard_normal((1, 16, 16, 3)), jnp.float32)
  batch = jnp.repeat(one, 6, axis=0)
  rrc = jax.jit(aug.random_resized_crop)
  out = np.asarray(rrc(_key(22), batch))
  assert out.shape == batch.shape and out.dtype == np.float32
  assert len({o.tobytes() for o in out}) == 6  # one box per image
  np.testing.assert_array_equal(out, rrc(_key(22), batch))
  assert not np.array_equal(out, rrc(_key(23), batch))
  # The documented draw: one [B, attempts, 4] uniform.
  u = jax.random.uniform(_key(22), (6, 10, 4))
  np.testing.assert_allclose(
      out, aug._crop_resize(batch, *aug._rrc_boxes(u, 16, 16, aug.RRC_SCALE, aug.RRC_RATIO)),
      atol=1e-6)
  identity = aug.random_resized_crop(_key(22), batch, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(identity, batch)
  check_grads(lambda x: aug.random_resized_crop(_key(24), x), (X[:2, :8, :8],), order=1,
              modes=["rev"])
