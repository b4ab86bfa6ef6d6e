"""The NCFM min-max distillation step: pure functions of a state pytree.

One iteration (docs/design.md section 4):
  1. pick a pool member uniformly and `b ~ U(0, 1)`; extractor = b*init + (1-b)*trained;
  2. per class, a fresh batch of `batch_real` real images and the class's decoded
     synthetic images, augmented with ONE shared draw per class (siamese DSA);
  3. features of both through the blended extractor, L2-normalised;
  4. a class's match loss is `loss_scale * NCFD(real_c, syn_c, t)`, t from psi or
     N(0, I) (`loss="mmd"`: DM's ||mean real_c - mean syn_c||^2 on the raw
     features, unscaled); the calibration loss is the trained member's
     cross-entropy on the synthetic images (images only);
  5. the images descend (AdamW or SGD, reduce-on-plateau); psi ascends.

The pieces below compose into the iteration `distill.update_mode` asks for; they
differ only in where the optimizer update happens:

* `"per_class"` (the authors' release, `condenser/compute_loss.py`): for each
  class in turn, its loss, its gradient and one optimizer update of the WHOLE
  synthetic tensor (zero gradient outside the class; with Adam every class's
  pixels still move through the first moment), and one psi ascent step; then
  `calibration_iters` passes of per-class updates from the calibration loss
  (`calibration_mode="separate"`); the pixels are clamped to [0, 1] once, before
  the classes; reduce-on-plateau sees the iteration's mean loss per class.
  `class_update` and `calibration_update` are the loop bodies: in `lax.scan`
  (`per_class_step`) or from the host (`execution`).
* `"batched"`: all classes in one forward/backward and ONE update of both players
  (`batched_step`), or the same gradient summed over blocks of classes for
  bounded memory (`block_gradients`, `blocked_step`); pixels clamped after the
  update. A different optimizer trajectory from the release's, not an equivalent.

Differences from the release, on purpose (docs/results.md, "Differences from the release"):
psi really ascends (the release's +g/-g cancel); a fresh real batch each step; one
frequency draw shared by the classes of a step; no weight gradients of the frozen
extractor; seeded.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ncfm_jax import augment as augment_lib
from ncfm_jax import execution
from ncfm_jax import parameterize
from ncfm_jax import sampler as sampler_lib
from ncfm_jax.augment import normalize
from ncfm_jax.ncfd import class_mmd, class_ncfd, gaussian_frequencies

UPDATES = ("per_class", "batched")
IMAGE_OPTIMIZERS = ("adamw", "sgd")
PLATEAU_MONITORS = ("loss", "fixed_ncfd", "calibration", "none")

# fold_in stream of the monitor's fixed frequencies (never a step number).
_MONITOR_STREAM = 2**31 - 1


class DistillState(NamedTuple):
  """Everything that changes during distillation (checkpointed as one pytree)."""
  step: jax.Array  # int32 scalar
  syn_images: jax.Array  # [C, ipc, H, W, Ch], stored (factor-tiled), in [0, 1]
  image_opt_state: Any  # (the optimizer's state, reduce-on-plateau's state)
  psi_params: Any  # {} when the sampler is gaussian or the loss is mmd
  psi_batch_stats: Any
  psi_opt_state: Any
  key: jax.Array  # base key; step s uses fold_in(key, s)


class Pool(NamedTuple):
  """The frozen extractors: Flax variables stacked on a leading `[P]` axis."""
  init_variables: Any
  trained_variables: Any


class StepContext(NamedTuple):
  """What the step's functions need besides arrays (Python values, static under jit).

  Attributes:
    model: the Flax extractor, `apply(variables, images) -> (features, logits)`.
    config: the `distill` config section.
    mean, std: normalisation statistics of the dataset.
    feature_dim: D.
  """
  model: Any
  config: Any
  mean: Any
  std: Any
  feature_dim: int


class StepDraws(NamedTuple):
  """A step's draws shared by every class: the extractor, frequencies and keys."""
  blended: Any  # variables of b * init + (1 - b) * trained
  trained: Any  # variables of the trained member (calibration)
  t: jax.Array  # frequencies [F, D] ([0, D] for mmd, or drawn per class: see `_class_t`)
  aug_keys: jax.Array  # one siamese augmentation key per class [C]
  monitor_t: jax.Array  # fixed frequencies of the psi-free plateau monitor ([0, D] unused)


class LossTerms(NamedTuple):
  """A step's (or a block's) loss terms, each summed over its classes."""
  match: jax.Array  # loss_scale * NCFD (or DM's MMD): what the images descend
  calibration: jax.Array  # the trained member's cross-entropy on the synthetic images
  monitor: jax.Array  # what reduce-on-plateau watches (`distill.plateau_monitor`)


class BlockGradients(NamedTuple):
  """One block's (or the summed) gradients and loss terms."""
  syn: jax.Array  # d loss / d stored images of the block [K, ipc, H, W, Ch]
  t: jax.Array  # d match / d frequencies [F, D] ([0, D] without psi: not needed)
  terms: LossTerms


# ------------------------------------------------------------------ settings


def uses_psi(distill_config) -> bool:
  return distill_config.loss == "ncfd" and distill_config.sampler == "psi"


def psi_settings(distill_config) -> dict:
  """psi's architecture fields (`sampler.FrequencySampler`) from the config."""
  return {"variant": distill_config.psi_variant,
          "hidden_dim": int(distill_config.psi_hidden_dim),
          "noise_dim": int(distill_config.psi_noise_dim),
          "group_size": int(distill_config.psi_group_size)}


def image_inner_optimizer(distill_config) -> optax.GradientTransformation:
  """The images' optimizer before the plateau scale: AdamW (torch's decoupled
  weight decay), or SGD with momentum and coupled weight decay (torch's `SGD`)."""
  name = distill_config.get("optimizer", "adamw")
  if name == "adamw":
    return optax.adamw(distill_config.lr, weight_decay=distill_config.weight_decay)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(distill_config.weight_decay),
                       optax.sgd(distill_config.lr, momentum=distill_config.momentum))
  raise ValueError(f"distill.optimizer must be one of {IMAGE_OPTIMIZERS}, got {name!r}")


def plateau(distill_config) -> optax.GradientTransformationExtraArgs:
  """Reduce-on-plateau (release: x0.5 after 500 flat iterations, torch's relative
  threshold 1e-4); `plateau_monitor="none"` keeps the learning rate fixed."""
  fixed = distill_config.get("plateau_monitor", "loss") == "none"
  return optax.contrib.reduce_on_plateau(
      factor=distill_config.plateau_factor, patience=distill_config.plateau_patience,
      min_scale=1.0 if fixed else 0.0)


def image_optimizer(distill_config) -> optax.GradientTransformationExtraArgs:
  """`image_inner_optimizer`, then the plateau scale: the state is their pair."""
  return optax.chain(image_inner_optimizer(distill_config), plateau(distill_config))


def psi_optimizer(distill_config) -> optax.GradientTransformation:
  return optax.sgd(distill_config.psi_lr, momentum=distill_config.psi_momentum)


def monitor_frequencies(key: jax.Array, distill_config, feature_dim: int) -> jax.Array:
  """The psi-free monitor's frequencies `[F, D]` ~ N(0, I), the same at every step
  (`[0, D]` unless `plateau_monitor="fixed_ncfd"`)."""
  if distill_config.get("plateau_monitor", "loss") != "fixed_ncfd":
    return jnp.zeros((0, feature_dim))
  return gaussian_frequencies(jax.random.fold_in(key, _MONITOR_STREAM),
                              distill_config.num_freqs, feature_dim)


def stack_pool(members: list[tuple[dict, dict]]) -> Pool:
  """[(init_variables, trained_variables), ...] -> Pool with a leading [P] axis."""
  inits = [m[0] for m in members]
  trained = [m[1] for m in members]
  stack = lambda *xs: jnp.stack(xs)
  return Pool(jax.tree.map(stack, *inits), jax.tree.map(stack, *trained))


def init_state(key: jax.Array, syn_images: jax.Array, feature_dim: int,
               distill_config) -> DistillState:
  """Initial state for `syn_images` `[C, ipc, H, W, Ch]` in [0, 1]."""
  k_psi, k_run = jax.random.split(key)
  syn_images = jnp.asarray(syn_images, jnp.float32)
  if uses_psi(distill_config):
    psi_params, psi_stats = sampler_lib.init_sampler(
        k_psi, distill_config.num_freqs, feature_dim, **psi_settings(distill_config))
  else:
    psi_params, psi_stats = {}, {}
  return DistillState(
      step=jnp.zeros((), jnp.int32),
      syn_images=syn_images,
      image_opt_state=image_optimizer(distill_config).init(syn_images),
      psi_params=psi_params,
      psi_batch_stats=psi_stats,
      psi_opt_state=psi_optimizer(distill_config).init(psi_params),
      key=k_run)


# ------------------------------------------------------------------ features


def _l2_normalize(feats: jax.Array) -> jax.Array:
  return feats / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)


def _embed(ctx: StepContext, variables, images):
  """`[C, n, H, W, Ch]` normalised -> (features `[C, n, D]`, logits `[C, n, K]`)."""
  classes, n = images.shape[:2]
  feats, logits = ctx.model.apply(
      variables, images.reshape((classes * n,) + images.shape[2:]), train=False)
  # DM matches the means of the raw features; the NCFD takes them on the unit sphere.
  feats = _l2_normalize(feats) if ctx.config.loss == "ncfd" else feats
  return feats.reshape(classes, n, -1), logits.reshape(classes, n, -1)


def _embed_in_chunks(ctx: StepContext, variables, images, chunk: int):
  """`[B, C, H, W, Ch]` -> features `[B, C, D]`, `chunk` images per class per
  forward pass (0: all B at once). Chunks bound the activation memory; each takes
  a stride of B, so a B-sharded batch keeps every device busy per chunk."""
  batch = images.shape[0]
  if chunk <= 0 or chunk >= batch:
    return _embed(ctx, variables, images)[0]
  strided = images.reshape((chunk, batch // chunk) + images.shape[1:])
  feats = jax.lax.map(lambda part: _embed(ctx, variables, part)[0],
                      jnp.swapaxes(strided, 0, 1))
  return jnp.swapaxes(feats, 0, 1).reshape((batch,) + feats.shape[2:])


def _augment_per_class(ctx: StepContext, keys, images):
  """One siamese draw per class: `keys` `[K]`, `images` `[K, n, H, W, Ch]`."""
  return jax.vmap(lambda k, x: augment_lib.augment(k, x, ctx.config.augment,
                                                   per_sample=False))(keys, images)


def real_features(ctx: StepContext, blended, real_images, aug_keys) -> jax.Array:
  """uint8 `[K, B, H, W, Ch]` real images of K classes -> features `[K, B, D]`
  (no gradient), in `execution.resolve_real_chunk` passes along B."""
  real = _augment_per_class(ctx, aug_keys, normalize(real_images, ctx.mean, ctx.std))
  chunk = execution.resolve_real_chunk(ctx.config.get("real_chunk"), real.shape[1],
                                       real.shape[0], real.shape[2] * real.shape[3])
  # Flattened B-major, so a real batch split along B (sharding.py) stays split
  # through the forward pass instead of being all-gathered.
  feats = _embed_in_chunks(ctx, blended, jnp.swapaxes(real, 0, 1), chunk)
  return jax.lax.stop_gradient(jnp.swapaxes(feats, 0, 1))


def synthetic_features(ctx: StepContext, blended, trained, syn):
  """`[C, M, H, W, Ch]` -> (blended features `[C, M, D]`, trained logits `[C, M, K]`
  or None without calibration), in `execution.resolve_syn_chunk` passes along M.

  The passes are unrolled (fastest on XLA:CPU, but XLA keeps every pass's
  activations for the backward pass), or with `distill.remat_syn` run one after
  another in `lax.map` and recomputed in the backward pass: the activation
  memory of one pass.
  """
  cfg = ctx.config

  def one_pass(part):
    feats = _embed(ctx, blended, part)[0]
    return feats, (_embed(ctx, trained, part)[1] if cfg.calibration_weight else None)
  per_class = syn.shape[1]
  remat = bool(cfg.get("remat_syn"))
  chunk = execution.resolve_syn_chunk(cfg.get("syn_chunk"), per_class, syn.shape[0],
                                      syn.shape[2] * syn.shape[3],
                                      max_passes=per_class if remat else 8)
  chunk = chunk if 0 < chunk < per_class else per_class
  if remat:
    parts = jnp.moveaxis(syn.reshape((syn.shape[0], per_class // chunk, chunk)
                                     + syn.shape[2:]), 1, 0)  # [P, C, chunk, ...]
    outs = jax.lax.map(jax.checkpoint(one_pass), parts)
    return jax.tree.map(
        lambda x: jnp.moveaxis(x, 0, 1).reshape((syn.shape[0], per_class) + x.shape[3:]),
        outs)
  outs = [one_pass(syn[:, i:i + chunk]) for i in range(0, per_class, chunk)]
  return jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=1), *outs)


def _decoded(ctx: StepContext, syn_images) -> jax.Array:
  """Stored `[K, ipc, H, W, Ch]` -> decoded, normalised `[K, ipc * factor^2, H, W, Ch]`."""
  classes, ipc = syn_images.shape[:2]
  factor = int(ctx.config.factor)
  decoded = parameterize.decode(
      syn_images.reshape((classes * ipc,) + syn_images.shape[2:]), factor)
  decoded = decoded.reshape((classes, ipc * factor**2) + decoded.shape[1:])
  return normalize(decoded, ctx.mean, ctx.std)


# ------------------------------------------------------------------ losses


def frequencies(ctx: StepContext, psi_params, psi_stats, key, num_classes: int = 0):
  """`t` `[F, D]` shared by every class, or `[C, F, D]` with
  `frequency_draw="per_class"` (the release draws per class as it loops them)."""
  cfg = ctx.config

  def draw(k):
    if uses_psi(cfg):
      return sampler_lib.sample(psi_params, psi_stats, k, num_freqs=cfg.num_freqs,
                                dim=ctx.feature_dim, **psi_settings(cfg))
    return gaussian_frequencies(k, cfg.num_freqs, ctx.feature_dim)
  if cfg.get("frequency_draw", "shared") == "per_class":
    return jax.vmap(draw)(jax.random.split(key, num_classes))
  return draw(key)


def _separate_calibration(cfg) -> bool:
  return cfg.get("calibration_mode", "folded") == "separate"


def class_terms(ctx: StepContext, syn_images, t, real_feats, draws: StepDraws, aug_keys,
                labels) -> LossTerms:
  """LossTerms of the classes `labels` `[K]`, each summed over them.

  Args:
    syn_images: their stored images `[K, ipc, H, W, Ch]`.
    t: frequencies `[F, D]`, or `[K, F, D]` one draw per class (None for mmd).
    real_feats: their real features `[K, B, D]` (`real_features`).
    draws: the step's extractors and the monitor's frequencies.
    aug_keys: their siamese augmentation keys `[K]`.
  """
  cfg = ctx.config
  syn = _augment_per_class(ctx, aug_keys, _decoded(ctx, syn_images))
  syn_feats, logits = synthetic_features(ctx, draws.blended, draws.trained, syn)
  if cfg.loss == "ncfd" and t.ndim == 3:  # one draw per class
    per_class = jax.vmap(lambda r, y, tc: class_ncfd(
        r[None], y[None], tc, alpha=cfg.alpha, beta=cfg.beta,
        freq_chunk=cfg.freq_chunk)[0])(real_feats, syn_feats, t)
  elif cfg.loss == "ncfd":
    per_class = class_ncfd(real_feats, syn_feats, t, alpha=cfg.alpha,
                           beta=cfg.beta, freq_chunk=cfg.freq_chunk)
  elif cfg.loss == "mmd":
    per_class = class_mmd(real_feats, syn_feats)
  else:
    raise ValueError(f"unknown distill.loss {cfg.loss!r}; use ncfd or mmd")
  # The release's x300 per-class scale belongs to its NCFD; DM's MMD has none.
  match = (cfg.loss_scale if cfg.loss == "ncfd" else 1.0) * jnp.sum(per_class)
  calibration = jnp.zeros(())
  if cfg.calibration_weight and not _separate_calibration(cfg):
    labels = jnp.broadcast_to(labels[:, None], logits.shape[:2])
    # Per-class mean cross-entropy summed over classes, like the match loss.
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    calibration = jnp.sum(jnp.mean(ce, axis=1))
  monitor = {"loss": match, "calibration": calibration, "none": match}.get(
      cfg.get("plateau_monitor", "loss"))
  if monitor is None:  # fixed_ncfd: the NCFD at fixed Gaussian frequencies, psi-free
    monitor = cfg.loss_scale * jnp.sum(class_ncfd(
        jax.lax.stop_gradient(real_feats), jax.lax.stop_gradient(syn_feats), draws.monitor_t,
        alpha=cfg.alpha, beta=cfg.beta, freq_chunk=cfg.freq_chunk))
  return LossTerms(match, calibration, monitor)


def _objective(ctx: StepContext, terms: LossTerms) -> jax.Array:
  """What the images descend: the match loss plus the folded calibration."""
  return terms.match + ctx.config.calibration_weight * terms.calibration


def calibration_loss(ctx: StepContext, syn_images, trained, key, labels) -> jax.Array:
  """The trained member's cross-entropy on `syn_images` `[K, ipc, H, W, Ch]` (one
  augmentation draw per class from `key`), per-class means summed over `labels` `[K]`."""
  syn = _augment_per_class(ctx, jax.random.split(key, syn_images.shape[0]),
                           _decoded(ctx, syn_images))
  logits = _embed(ctx, trained, syn)[1]
  labels = jnp.broadcast_to(labels[:, None], logits.shape[:2])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(jnp.mean(ce, axis=1))


# ------------------------------------------------------------------ draws


def _member(pool: Pool, key: jax.Array):
  """A random member's (blended, trained) variables, `b ~ U(0, 1)`."""
  k_member, k_blend = jax.random.split(key)
  num_members = jax.tree.leaves(pool.trained_variables)[0].shape[0]
  index = jax.random.randint(k_member, (), 0, num_members)
  take = lambda tree: jax.tree.map(lambda x: x[index], tree)
  init, trained = take(pool.init_variables), take(pool.trained_variables)
  b = jax.random.uniform(k_blend)
  blended = jax.tree.map(lambda i, t: b * i + (1.0 - b) * t, init, trained)
  return blended, trained


def _frequencies_per_class(cfg) -> bool:
  """The per-class update draws t inside each class (psi moves between classes)."""
  return cfg.loss == "ncfd" and execution.update_mode(cfg) == "per_class" and (
      uses_psi(cfg) or cfg.get("frequency_draw", "shared") == "per_class")


def step_draws(ctx: StepContext, state: DistillState, pool: Pool) -> StepDraws:
  """The draws of `state.step`: member and blend, frequencies, augmentation keys."""
  cfg = ctx.config
  keys = execution.step_keys(state.key, state.step)
  blended, trained = _member(pool, keys.member)
  no_t = jnp.zeros((0, ctx.feature_dim))
  t = (frequencies(ctx, state.psi_params, state.psi_batch_stats, keys.frequencies)
       if cfg.loss == "ncfd" and not _frequencies_per_class(cfg) else no_t)
  num_classes = state.syn_images.shape[0]
  return StepDraws(blended, trained, t, jax.random.split(keys.augment, num_classes),
                   monitor_frequencies(state.key, cfg, ctx.feature_dim))


def _no_frequency_gradient(t: jax.Array) -> jax.Array:
  """`[0, D]`: what a block returns for d match / d t when no psi needs it."""
  return jnp.zeros((0,) + t.shape[1:], t.dtype)


def _metrics(terms: LossTerms, image_opt_state) -> dict:
  return {"loss": terms.match, "calibration": terms.calibration, "monitor": terms.monitor,
          "lr_scale": optax.tree_utils.tree_get(image_opt_state, "scale")}


# ------------------------------------------------------------------ batched update


def apply_gradients(ctx: StepContext, state: DistillState, image_grads, psi_grads,
                    terms: LossTerms):
  """Both players' optimizer updates from the gradients of the step's loss; pixels
  clamped to [0, 1] after the update."""
  cfg = ctx.config
  updates, image_opt_state = image_optimizer(cfg).update(
      image_grads, state.image_opt_state, state.syn_images, value=terms.monitor)
  syn_images = jnp.clip(optax.apply_updates(state.syn_images, updates), 0.0, 1.0)
  # psi is not in the calibration term, so psi_grads is d(match)/d(psi): ascend.
  psi_updates, psi_opt_state = psi_optimizer(cfg).update(
      jax.tree.map(jnp.negative, psi_grads), state.psi_opt_state, state.psi_params)
  psi_params = optax.apply_updates(state.psi_params, psi_updates)
  new_state = DistillState(state.step + 1, syn_images, image_opt_state, psi_params,
                           state.psi_batch_stats, psi_opt_state, state.key)
  return new_state, _metrics(terms, image_opt_state)


def _scaled_image_update(ctx: StepContext, state: DistillState, image_grads) -> DistillState:
  """One optimizer update of the images at the plateau's current scale, which it
  leaves as it is (the plateau counts iterations, not updates); no clamp."""
  inner_state, plateau_state = state.image_opt_state
  updates, inner_state = image_inner_optimizer(ctx.config).update(
      image_grads, inner_state, state.syn_images)
  updates = optax.tree_utils.tree_get(plateau_state, "scale") * updates
  return state._replace(syn_images=optax.apply_updates(state.syn_images, updates),
                        image_opt_state=(inner_state, plateau_state))


def separate_calibration_updates(ctx: StepContext, state: DistillState, trained):
  """The batched step's `calibration_mode="separate"`: after the match update,
  `calibration_iters` image updates from the trained member's cross-entropy, each on
  a fresh augmentation draw, clamped. Returns (state, the first update's loss)."""
  cfg = ctx.config
  classes = state.syn_images.shape[0]
  base = execution.step_keys(state.key, state.step - 1).calibration
  first = None
  for i in range(int(cfg.get("calibration_iters", 1))):
    key = base if i == 0 else jax.random.fold_in(base, i)
    calibration, grads = jax.value_and_grad(calibration_loss, argnums=1)(
        ctx, state.syn_images, trained, key, jnp.arange(classes))
    state = _scaled_image_update(ctx, state, cfg.calibration_weight * grads)
    state = state._replace(syn_images=jnp.clip(state.syn_images, 0.0, 1.0))
    first = calibration if first is None else first
  return state, first


def batched_step(ctx: StepContext, state: DistillState, pool: Pool, real_batch: jax.Array):
  """All classes in one forward and backward pass, one update of each player.

  `real_batch` uint8 `[C, B, H, W, Ch]`; returns (state, metrics) with metrics
  `{"loss", "calibration", "monitor", "lr_scale"}`."""
  cfg = ctx.config
  draws = step_draws(ctx, state, pool)
  real_feats = real_features(ctx, draws.blended, real_batch, draws.aug_keys)
  k_freq = execution.step_keys(state.key, state.step).frequencies
  classes = state.syn_images.shape[0]

  def loss_fn(syn_images, psi_params):
    t = (frequencies(ctx, psi_params, state.psi_batch_stats, k_freq, classes)
         if cfg.loss == "ncfd" else None)
    terms = class_terms(ctx, syn_images, t, real_feats, draws, draws.aug_keys,
                        jnp.arange(classes))
    return _objective(ctx, terms), terms

  (_, terms), (image_grads, psi_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.syn_images, state.psi_params)
  new_state, metrics = apply_gradients(ctx, state, image_grads, psi_grads, terms)
  if _separate_calibration(cfg) and cfg.calibration_weight:
    new_state, metrics["calibration"] = separate_calibration_updates(
        ctx, new_state, draws.trained)
  return new_state, metrics


def evaluate(ctx: StepContext, state: DistillState, pool: Pool, real_batch: jax.Array):
  """LossTerms of `state` with the randomness of its step, nothing updated."""
  draws = step_draws(ctx, state, pool)
  real_feats = real_features(ctx, draws.blended, real_batch, draws.aug_keys)
  classes = state.syn_images.shape[0]
  t = (frequencies(ctx, state.psi_params, state.psi_batch_stats,
                   execution.step_keys(state.key, state.step).frequencies, classes)
       if ctx.config.loss == "ncfd" else None)
  return class_terms(ctx, state.syn_images, t, real_feats, draws, draws.aug_keys,
                     jnp.arange(classes))


# ------------------------------------------------------------------ class blocks


def block_gradients(ctx: StepContext, syn_images, real_block, draws: StepDraws,
                    block: jax.Array, block_size: int) -> BlockGradients:
  """Gradients of block `block` (classes block*K .. block*K + K - 1, K = `block_size`
  static): w.r.t. its stored images `[K, ...]` and the frequencies `[F, D]`, with
  its loss terms, from its real images `real_block` uint8 `[K, B, ...]`. Only the
  block's activations are alive at once. The match loss is a sum of per-class
  terms and a class's images enter only its own, so the step's gradient is the sum
  of the blocks' (psi's is pulled back once from the summed `t` gradient: `finish`)."""
  cfg = ctx.config
  take = lambda x: jax.lax.dynamic_slice_in_dim(x, block * block_size, block_size)
  aug_keys = take(draws.aug_keys)
  real_feats = real_features(ctx, draws.blended, real_block, aug_keys)
  labels = block * block_size + jnp.arange(block_size)

  def loss_fn(syn_block, t):
    terms = class_terms(ctx, syn_block, t if cfg.loss == "ncfd" else None, real_feats,
                        draws, aug_keys, labels)
    return _objective(ctx, terms), terms

  if uses_psi(cfg):
    (_, terms), (syn_grads, t_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(take(syn_images), draws.t)
  else:  # nothing upstream of Gaussian frequencies: their gradient is wasted work
    (_, terms), syn_grads = jax.value_and_grad(loss_fn, has_aux=True)(
        take(syn_images), draws.t)
    t_grads = _no_frequency_gradient(draws.t)
  return BlockGradients(syn_grads, t_grads, terms)


def zero_gradients(ctx: StepContext, syn_images, draws: StepDraws) -> BlockGradients:
  """Zeros to sum the blocks' gradients into (`syn` `[C, ...]`)."""
  t_zeros = jnp.zeros_like(draws.t) if uses_psi(ctx.config) else _no_frequency_gradient(
      draws.t)
  return BlockGradients(jnp.zeros_like(syn_images), t_zeros,
                        LossTerms(jnp.zeros(()), jnp.zeros(()), jnp.zeros(())))


def finish_blocks(ctx: StepContext, state: DistillState, grads: BlockGradients):
  """The batched update from the blocks' summed gradients."""
  psi_grads = {}
  if uses_psi(ctx.config):
    k_freq = execution.step_keys(state.key, state.step).frequencies
    _, pullback = jax.vjp(lambda p: frequencies(ctx, p, state.psi_batch_stats, k_freq),
                          state.psi_params)
    (psi_grads,) = pullback(grads.t)
  return apply_gradients(ctx, state, grads.syn, psi_grads, grads.terms)


def blocked_step(ctx: StepContext, state: DistillState, pool: Pool, real_batch: jax.Array,
                 block_size: int):
  """`batched_step` over blocks of `block_size` classes, one `lax.scan` iteration
  each: a block's gradient is taken inside its iteration (no transposed scan)."""
  num_blocks = state.syn_images.shape[0] // block_size
  draws = step_draws(ctx, state, pool)

  def body(carry, block):
    real_block = jax.lax.dynamic_slice_in_dim(real_batch, block * block_size, block_size)
    grads = block_gradients(ctx, state.syn_images, real_block, draws, block, block_size)
    carry = jax.tree.map(jnp.add, carry, grads._replace(syn=jnp.zeros(())))
    return carry, grads.syn

  zeros = zero_gradients(ctx, state.syn_images, draws)._replace(syn=jnp.zeros(()))
  summed, syn_grads = jax.lax.scan(body, zeros, jnp.arange(num_blocks))
  return finish_blocks(ctx, state, summed._replace(syn=syn_grads.reshape(
      state.syn_images.shape)))


# ------------------------------------------------------------------ per-class update


def begin_classes(ctx: StepContext, state: DistillState, pool: Pool):
  """The per-class iteration's start: pixels clamped to [0, 1] (the release clamps
  here, once per iteration), the step's draws, zero loss sums.
  Returns (state, draws, sums)."""
  state = state._replace(syn_images=jnp.clip(state.syn_images, 0.0, 1.0))
  zero = jnp.zeros(())
  return state, step_draws(ctx, state, pool), LossTerms(zero, zero, zero)


def _class_t(ctx: StepContext, psi_params, psi_stats, draws: StepDraws, key, c):
  """Class c's frequencies: the step's draw, or drawn now from psi's current
  parameters (one shared key, or the c-th of a split with `frequency_draw="per_class"`)."""
  cfg = ctx.config
  if cfg.loss != "ncfd":
    return None
  if not _frequencies_per_class(cfg):
    return draws.t
  if cfg.get("frequency_draw", "shared") == "per_class":
    key = jax.random.split(key, draws.aug_keys.shape[0])[c]
  if uses_psi(cfg):
    return sampler_lib.sample(psi_params, psi_stats, key, num_freqs=cfg.num_freqs,
                              dim=ctx.feature_dim, **psi_settings(cfg))
  return gaussian_frequencies(key, cfg.num_freqs, ctx.feature_dim)


def _one_class_gradient(syn_images, class_grads, c):
  """`[1, ...]` gradient of class c placed in zeros of the whole tensor `[C, ...]`."""
  return jax.lax.dynamic_update_slice_in_dim(
      jnp.zeros_like(syn_images), class_grads.astype(syn_images.dtype), c, 0)


def class_update(ctx: StepContext, state: DistillState, sums: LossTerms, real_class,
                 draws: StepDraws, c: jax.Array):
  """Class c's update: its loss from its real images `real_class` uint8
  `[1, B, H, W, Ch]`, one optimizer update of the whole synthetic tensor with its
  gradient, and with psi one ascent step of psi on the same loss.
  Returns (state, sums + its loss terms)."""
  cfg = ctx.config
  aug_key = jax.lax.dynamic_slice_in_dim(draws.aug_keys, c, 1)
  real_feats = real_features(ctx, draws.blended, real_class, aug_key)
  k_freq = execution.step_keys(state.key, state.step).frequencies

  def loss_fn(syn_class, psi_params):
    t = _class_t(ctx, psi_params, state.psi_batch_stats, draws, k_freq, c)
    terms = class_terms(ctx, syn_class, t, real_feats, draws, aug_key, c[None])
    return _objective(ctx, terms), terms

  syn_class = jax.lax.dynamic_slice_in_dim(state.syn_images, c, 1)
  (_, terms), (syn_grads, psi_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(syn_class, state.psi_params)
  state = _scaled_image_update(ctx, state, _one_class_gradient(state.syn_images,
                                                               syn_grads, c))
  if uses_psi(cfg):
    psi_updates, psi_opt_state = psi_optimizer(cfg).update(
        jax.tree.map(jnp.negative, psi_grads), state.psi_opt_state, state.psi_params)
    state = state._replace(psi_params=optax.apply_updates(state.psi_params, psi_updates),
                           psi_opt_state=psi_opt_state)
  return state, jax.tree.map(jnp.add, sums, terms)


def calibration_update(ctx: StepContext, state: DistillState, sums: LossTerms,
                       draws: StepDraws, c: jax.Array, round_: jax.Array):
  """Class c's calibration update in calibration round `round_`: the trained
  member's cross-entropy on its images (a fresh augmentation draw), one optimizer
  update of the whole tensor with `calibration_weight` x its gradient."""
  key = jax.random.fold_in(execution.step_keys(state.key, state.step).calibration,
                           round_ * draws.aug_keys.shape[0] + c)
  syn_class = jax.lax.dynamic_slice_in_dim(state.syn_images, c, 1)
  calibration, grads = jax.value_and_grad(calibration_loss, argnums=1)(
      ctx, syn_class, draws.trained, key, c[None])
  grads = ctx.config.calibration_weight * grads
  state = _scaled_image_update(ctx, state, _one_class_gradient(state.syn_images, grads, c))
  return state, sums._replace(calibration=sums.calibration + calibration)


def calibration_rounds(cfg) -> int:
  """Per-class calibration passes of an iteration (`calibration_iters` when separate)."""
  if not (cfg.calibration_weight and _separate_calibration(cfg)):
    return 0
  return int(cfg.get("calibration_iters", 1))


def finish_classes(ctx: StepContext, state: DistillState, sums: LossTerms):
  """The iteration's end: reduce-on-plateau sees the iteration's mean loss per class
  (match plus weighted calibration, the release's `current_loss`), the step counts
  one. Returns (state, metrics)."""
  cfg = ctx.config
  classes = state.syn_images.shape[0]
  monitor = {"loss": _objective(ctx, sums) / classes, "calibration": sums.calibration,
             "none": sums.match}.get(cfg.get("plateau_monitor", "loss"), sums.monitor)
  inner_state, plateau_state = state.image_opt_state
  _, plateau_state = plateau(cfg).update(jnp.zeros(()), plateau_state, value=monitor)
  state = state._replace(step=state.step + 1, image_opt_state=(inner_state, plateau_state))
  return state, _metrics(sums._replace(monitor=monitor), state.image_opt_state)


def per_class_step(ctx: StepContext, state: DistillState, pool: Pool, real_batch: jax.Array):
  """The release's iteration in one jitted function: `class_update` for every class
  in one `lax.scan` (one class's activations alive at a time), then the calibration
  rounds in another. `real_batch` uint8 `[C, B, H, W, Ch]`."""
  state, draws, sums = begin_classes(ctx, state, pool)
  classes = state.syn_images.shape[0]

  def match_body(carry, c):
    real_class = jax.lax.dynamic_slice_in_dim(real_batch, c, 1)
    return class_update(ctx, *carry, real_class, draws, c), None

  (state, sums), _ = jax.lax.scan(match_body, (state, sums), jnp.arange(classes))
  rounds = calibration_rounds(ctx.config)
  if rounds:
    def calibration_body(carry, i):
      return calibration_update(ctx, *carry, draws, i % classes, i // classes), None
    (state, sums), _ = jax.lax.scan(calibration_body, (state, sums),
                                    jnp.arange(rounds * classes))
  return finish_classes(ctx, state, sums)


# ------------------------------------------------------------------ the step


class ClassBlocks(NamedTuple):
  """The batched step over blocks of classes (`block_gradients`), bound to a context.

  Attributes:
    begin: `(state, pool) -> StepDraws`.
    block_gradients: `(syn_images, real_block, draws, block, block_size) -> BlockGradients`.
    finish: `(state, summed BlockGradients) -> (state, metrics)`.
    step: `(state, pool, real_batch, block_size) -> (state, metrics)`, the blocks
      in one `lax.scan` (GPU/TPU); a host loop of the pieces suits XLA:CPU
      (`execution.make_host_block_step`).
    zeros: `(syn_images, draws) -> BlockGradients` of zeros to sum into.
  """
  begin: Callable
  block_gradients: Callable
  finish: Callable
  step: Callable
  zeros: Callable


class ClassUpdates(NamedTuple):
  """The per-class iteration's pieces, bound to a context, for a host loop
  (`execution.make_host_class_step`): `begin(state, pool) -> (state, draws, sums)`,
  `update(state, sums, real_class, draws, c)`, `calibrate(state, sums, draws, c,
  round)` -> (state, sums), `finish(state, sums) -> (state, metrics)`, and `rounds`,
  the calibration rounds per iteration."""
  begin: Callable
  update: Callable
  calibrate: Callable
  finish: Callable
  rounds: int


class DistillStep(NamedTuple):
  """The step of one config and its pieces.

  Attributes:
    step: `(state, pool, real_batch) -> (state, metrics)`, `real_batch` uint8
      `[C, B, H, W, Ch]`: `per_class_step` or `batched_step` (`distill.update_mode`).
    evaluate: `(state, pool, real_batch) -> LossTerms` of `state` with the
      randomness of its step, nothing updated.
    blocks: the batched step over blocks of classes (bounded memory).
    classes: the per-class iteration's pieces (host loop).
  """
  step: Callable
  evaluate: Callable
  blocks: ClassBlocks
  classes: ClassUpdates


def make_distill_step(model, distill_config, mean, std, feature_dim: int) -> DistillStep:
  """The pure, jittable step for `model`'s features; every number it uses comes
  from `distill_config`."""
  update = execution.update_mode(distill_config)
  if update not in UPDATES:
    raise ValueError(f"distill.update_mode must be one of {UPDATES}, got {update!r}")
  ctx = StepContext(model, distill_config, mean, std, feature_dim)
  bind = lambda fn: functools.partial(fn, ctx)
  blocks = ClassBlocks(begin=bind(step_draws), block_gradients=bind(block_gradients),
                       finish=bind(finish_blocks), step=bind(blocked_step),
                       zeros=bind(zero_gradients))
  classes = ClassUpdates(begin=bind(begin_classes), update=bind(class_update),
                         calibrate=bind(calibration_update), finish=bind(finish_classes),
                         rounds=calibration_rounds(distill_config))
  step = per_class_step if update == "per_class" else batched_step
  return DistillStep(bind(step), bind(evaluate), blocks, classes)
