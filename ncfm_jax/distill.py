"""The NCFM min-max distillation step: a pure function of a state pytree.

(Over 400 lines: the state, the all-classes step and the class-block step share
the closures of one config; the release-behaviour options ride on them.)

One step (docs/design.md section 4):
  1. pick a pool member uniformly and `b ~ U(0, 1)`; extractor = b*init + (1-b)*trained;
  2. per class, a fresh batch of `batch_real` real images and the class's decoded
     synthetic images, augmented with ONE shared draw per class (siamese DSA);
  3. one batched forward for all real images (no gradient) and one for all
     synthetic images; features L2-normalised;
  4. loss = sum_c loss_scale * NCFD(real_c, syn_c, t), t from psi or N(0, I)
     (`loss="mmd"`: DM's sum_c ||mean real_c - mean syn_c||^2 on the raw, not
     normalised, features, unscaled); plus the calibration cross-entropy of the
     trained member on the synthetic images (images only);
  5. one backward gives both players' gradients: the images descend (AdamW +
     reduce-on-plateau, then clamped to [0, 1]); psi ascends (SGD + momentum).

Differences from the release, on purpose: all classes in one step (the release
loops classes with one optimizer step each; images of different classes are
disjoint parameters, so with Adam the per-class updates are the same up to the
shared extractor draw); psi really ascends (the release's +g/-g cancel); a fresh
real batch each step; no weight gradients of the frozen extractor; seeded.
"""

from __future__ import annotations

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


class DistillState(NamedTuple):
  """Everything that changes during distillation (checkpointed as one pytree)."""
  step: jax.Array  # int32 scalar
  syn_images: jax.Array  # [C, ipc, H, W, Ch], stored (factor-tiled), in [0, 1]
  image_opt_state: Any
  psi_params: Any  # {} when the sampler is gaussian or the loss is mmd
  psi_batch_stats: Any
  psi_opt_state: Any
  key: jax.Array  # base key; step s uses fold_in(key, s)


class Pool(NamedTuple):
  """The frozen extractors: Flax variables stacked on a leading `[P]` axis."""
  init_variables: Any
  trained_variables: Any


def stack_pool(members: list[tuple[dict, dict]]) -> Pool:
  """[(init_variables, trained_variables), ...] -> Pool with a leading [P] axis."""
  inits = [m[0] for m in members]
  trained = [m[1] for m in members]
  stack = lambda *xs: jnp.stack(xs)
  return Pool(jax.tree.map(stack, *inits), jax.tree.map(stack, *trained))


def uses_psi(distill_config) -> bool:
  return distill_config.loss == "ncfd" and distill_config.sampler == "psi"


PLATEAU_MONITORS = ("loss", "fixed_ncfd", "calibration", "none")

# fold_in stream of the monitor's fixed frequencies (never a step number).
_MONITOR_STREAM = 2**31 - 1


def image_optimizer(distill_config) -> optax.GradientTransformationExtraArgs:
  """AdamW with reduce-on-plateau (release: x0.5 after 500 flat steps of the match
  loss); `plateau_monitor="none"` keeps the learning rate fixed."""
  fixed = distill_config.get("plateau_monitor", "loss") == "none"
  return optax.chain(
      image_tx_adam(distill_config),
      optax.contrib.reduce_on_plateau(
          factor=distill_config.plateau_factor, patience=distill_config.plateau_patience,
          min_scale=1.0 if fixed else 0.0))


def image_tx_adam(distill_config) -> optax.GradientTransformation:
  """The AdamW part of `image_optimizer` (its first state in the chain)."""
  return optax.adamw(distill_config.lr, weight_decay=distill_config.weight_decay)


def monitor_frequencies(key: jax.Array, distill_config, feature_dim: int) -> jax.Array:
  """The psi-free monitor's frequencies `[F, D]` ~ N(0, I), the same at every step
  (`[0, D]` unless `plateau_monitor="fixed_ncfd"`)."""
  if distill_config.get("plateau_monitor", "loss") != "fixed_ncfd":
    return jnp.zeros((0, feature_dim))
  return gaussian_frequencies(jax.random.fold_in(key, _MONITOR_STREAM),
                              distill_config.num_freqs, feature_dim)


def psi_optimizer(distill_config) -> optax.GradientTransformation:
  return optax.sgd(distill_config.psi_lr, momentum=distill_config.psi_momentum)


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


def _no_frequency_gradient(t: jax.Array) -> jax.Array:
  """`[0, D]`: what a block returns for d match / d t when no psi needs it."""
  return jnp.zeros((0,) + t.shape[1:], t.dtype)


def _l2_normalize(feats: jax.Array) -> jax.Array:
  return feats / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)


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


class StepDraws(NamedTuple):
  """A step's draws shared by every class: the extractor, frequencies and keys."""
  blended: Any  # variables of b * init + (1 - b) * trained
  trained: Any  # variables of the trained member (calibration)
  t: jax.Array  # frequencies [F, D] ([0, D] for mmd)
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


class ClassBlocks(NamedTuple):
  """The step split over blocks of classes (activation memory of one block).

  The match loss is a sum of per-class terms and a class's images enter only
  its own terms, so the gradient is the sum of per-block gradients; psi and the
  extractor draw are shared (`begin`), psi's gradient is pulled back once from
  the summed frequency gradient (`finish`).

  Attributes:
    begin: `(state, pool) -> StepDraws`.
    block_gradients: `(syn_images, real_block, draws, block, block_size) ->
      BlockGradients` of classes `block * block_size ...` (block traced, size static)
      from their real images `real_block` uint8 `[block_size, B, H, W, Ch]`.
    finish: `(state, summed BlockGradients) -> (state, metrics)`.
    step: `(state, pool, real_batch, block_size) -> (state, metrics)`, the blocks
      in one `lax.scan` (GPU/TPU); a host loop of the three above suits XLA:CPU
      (`execution.make_host_block_step`).
    zeros: `(syn_images, draws) -> BlockGradients` of zeros, `syn` `[C, ...]`: the
      sum that a host loop adds the blocks' gradients to.
  """
  begin: Callable
  block_gradients: Callable
  finish: Callable
  step: Callable
  zeros: Callable


class DistillStep(NamedTuple):
  """The step and a read-only view of it, built from one config.

  Attributes:
    step: `(state, pool, real_batch) -> (state, metrics)`, `real_batch` uint8
      `[C, B, H, W, Ch]`; metrics `{"loss", "calibration", "lr_scale"}`; all
      classes in one batched forward and backward.
    evaluate: `(state, pool, real_batch) -> LossTerms` of `state` with the
      randomness of its step, nothing updated.
    blocks: the same step over blocks of classes (bounded memory).
  """
  step: Callable
  evaluate: Callable
  blocks: ClassBlocks


def psi_settings(distill_config) -> dict:
  """psi's architecture fields (`sampler.FrequencySampler`) from the config."""
  return {"variant": distill_config.psi_variant,
          "hidden_dim": int(distill_config.psi_hidden_dim),
          "noise_dim": int(distill_config.psi_noise_dim),
          "group_size": int(distill_config.psi_group_size)}


def make_distill_step(model, distill_config, mean, std, feature_dim: int) -> DistillStep:
  """The pure, jittable min-max step for `model`'s features; every number it
  uses comes from `distill_config`."""
  cfg = distill_config
  factor = int(cfg.factor)
  strategy = cfg.augment
  with_psi = uses_psi(cfg)
  per_class_draw = cfg.get("frequency_draw", "shared") == "per_class"
  separate_calibration = cfg.get("calibration_mode", "folded") == "separate"
  image_tx = image_optimizer(cfg)
  image_adam = image_tx_adam(cfg)
  psi_tx = psi_optimizer(cfg)

  def embed(variables, images):
    """`[C, n, H, W, Ch]` normalised -> L2-normalised features `[C, n, D]`."""
    classes, n = images.shape[:2]
    feats, logits = model.apply(variables, images.reshape((classes * n,) + images.shape[2:]),
                                train=False)
    # DM matches the means of the raw features; the NCFD takes them on the unit sphere.
    feats = _l2_normalize(feats) if cfg.loss == "ncfd" else feats
    return (feats.reshape(classes, n, -1),
            logits.reshape(classes, n, -1))

  def embed_in_chunks(variables, images, chunk):
    """`[B, C, H, W, Ch]` -> features `[B, C, D]`, `chunk` images per class per
    forward pass (None: all B at once). Chunks bound the activation memory; each
    takes a stride of B, so a B-sharded batch keeps every device busy per chunk."""
    batch = images.shape[0]
    if chunk <= 0 or chunk >= batch:
      return embed(variables, images)[0]
    strided = images.reshape((chunk, batch // chunk) + images.shape[1:])
    feats = jax.lax.map(lambda part: embed(variables, part)[0], jnp.swapaxes(strided, 0, 1))
    return jnp.swapaxes(feats, 0, 1).reshape((batch,) + feats.shape[2:])

  def augment_per_class(keys, images):
    return jax.vmap(lambda k, x: augment_lib.augment(k, x, strategy, per_sample=False))(
        keys, images)

  def embed_synthetic(blended, trained, syn):
    """`[C, M, H, W, Ch]` -> (blended features `[C, M, D]`, trained logits `[C, M, K]`
    or None without calibration), in `resolve_syn_chunk` passes along M.

    The passes are unrolled (fastest on XLA:CPU, but XLA keeps every pass's
    activations for the backward pass), or with `distill.remat_syn` run one
    after another in `lax.map` and recomputed in the backward pass: the
    activation memory of one pass (imagenette_ipc10 at batch_real 64 on CPU:
    20 GB of temporaries unrolled).
    """
    def one_pass(part):
      feats = embed(blended, part)[0]
      return feats, (embed(trained, part)[1] if cfg.calibration_weight else None)
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

  def frequencies(psi_params, psi_stats, key, num_classes: int = 0):
    """`t` `[F, D]` shared by every class, or `[C, F, D]` with
    `frequency_draw="per_class"` (the release draws per class as it loops them)."""
    def draw(k):
      if with_psi:
        return sampler_lib.sample(psi_params, psi_stats, k, num_freqs=cfg.num_freqs,
                                  dim=feature_dim, **psi_settings(cfg))
      return gaussian_frequencies(k, cfg.num_freqs, feature_dim)
    if per_class_draw:
      return jax.vmap(draw)(jax.random.split(key, num_classes))
    return draw(key)

  def match_terms(syn_images, t, real_feats, blended, trained, aug_keys, labels,
                  monitor_t) -> LossTerms:
    """LossTerms of the classes `labels` `[K]`: their stored images
    `[K, ipc, H, W, Ch]`, real features `[K, B, D]` and augmentation keys `[K]`;
    `t` `[F, D]` (None for mmd); `monitor_t` the plateau monitor's frequencies."""
    classes, ipc = syn_images.shape[:2]
    decoded = parameterize.decode(
        syn_images.reshape((classes * ipc,) + syn_images.shape[2:]), factor)
    decoded = decoded.reshape((classes, ipc * factor**2) + decoded.shape[1:])
    syn = augment_per_class(aug_keys, normalize(decoded, mean, std))
    syn_feats, logits = embed_synthetic(blended, trained, syn)
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
    if cfg.calibration_weight and not separate_calibration:
      labels = jnp.broadcast_to(labels[:, None], logits.shape[:2])
      # Per-class mean cross-entropy summed over classes, like the match loss.
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      calibration = jnp.sum(jnp.mean(ce, axis=1))
    monitor = {"loss": match, "calibration": calibration, "none": match}.get(
        cfg.get("plateau_monitor", "loss"))
    if monitor is None:  # fixed_ncfd: the NCFD at fixed Gaussian frequencies, psi-free
      monitor = cfg.loss_scale * jnp.sum(class_ncfd(
          jax.lax.stop_gradient(real_feats), jax.lax.stop_gradient(syn_feats), monitor_t,
          alpha=cfg.alpha, beta=cfg.beta, freq_chunk=cfg.freq_chunk))
    return LossTerms(match, calibration, monitor)

  def separate_calibration_update(state: DistillState, trained, key):
    """The release's calibration: after the match update, one more image update from
    the trained member's cross-entropy on a fresh augmentation draw (same AdamW,
    at the plateau's current scale, which counts the step once)."""
    classes = state.syn_images.shape[0]

    def cross_entropy(syn_images):
      decoded = parameterize.decode(
          syn_images.reshape((-1,) + syn_images.shape[2:]), factor)
      decoded = decoded.reshape((classes, -1) + decoded.shape[1:])
      syn = augment_per_class(jax.random.split(key, classes), normalize(decoded, mean, std))
      logits = embed(trained, syn)[1]
      labels = jnp.broadcast_to(jnp.arange(classes)[:, None], logits.shape[:2])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.sum(jnp.mean(ce, axis=1))

    calibration, grads = jax.value_and_grad(cross_entropy)(state.syn_images)
    adam_state, plateau_state = state.image_opt_state  # the chain's two states
    updates, adam_state = image_adam.update(cfg.calibration_weight * grads, adam_state,
                                            state.syn_images)
    updates = optax.tree_utils.tree_get(plateau_state, "scale") * updates
    syn_images = jnp.clip(optax.apply_updates(state.syn_images, updates), 0.0, 1.0)
    return state._replace(syn_images=syn_images,
                          image_opt_state=(adam_state, plateau_state)), calibration

  def losses(syn_images, psi_params, psi_stats, real_feats, blended, trained, keys):
    aug_keys, k_freq, monitor_t = keys
    t = (frequencies(psi_params, psi_stats, k_freq, syn_images.shape[0])
         if cfg.loss == "ncfd" else None)
    terms = match_terms(syn_images, t, real_feats, blended, trained, aug_keys,
                        jnp.arange(syn_images.shape[0]), monitor_t)
    return terms.match + cfg.calibration_weight * terms.calibration, terms

  def _prepare(state, pool, real_batch):
    """Per-step randomness, the extractor draw and the real features (no gradient)."""
    keys = execution.step_keys(state.key, state.step)
    aug_keys = jax.random.split(keys.augment, real_batch.shape[0])
    blended, trained = _member(pool, keys.member)
    real = augment_per_class(aug_keys, normalize(real_batch, mean, std))
    # Flattened B-major, so a real batch split along B (sharding.py) stays split
    # through the forward pass instead of being all-gathered.
    chunk = execution.resolve_real_chunk(cfg.get("real_chunk"), real_batch.shape[1],
                                         real_batch.shape[0],
                                         real_batch.shape[2] * real_batch.shape[3])
    real_feats = embed_in_chunks(blended, jnp.swapaxes(real, 0, 1), chunk)
    real_feats = jnp.swapaxes(real_feats, 0, 1)
    return (jax.lax.stop_gradient(real_feats), blended, trained,
            (aug_keys, keys.frequencies, monitor_frequencies(state.key, cfg, feature_dim)))

  def evaluate(state: DistillState, pool: Pool, real_batch: jax.Array):
    """LossTerms of `state` with the randomness of its step (for tests)."""
    real_feats, blended, trained, keys = _prepare(state, pool, real_batch)
    _, aux = losses(state.syn_images, state.psi_params, state.psi_batch_stats,
                    real_feats, blended, trained, keys)
    return aux

  def apply_gradients(state, image_grads, psi_grads, terms: LossTerms):
    """Both players' optimizer updates from the gradients of the step's loss."""
    updates, image_opt_state = image_tx.update(
        image_grads, state.image_opt_state, state.syn_images, value=terms.monitor)
    syn_images = jnp.clip(optax.apply_updates(state.syn_images, updates), 0.0, 1.0)

    # psi is not in the calibration term, so psi_grads is d(match)/d(psi): ascend.
    psi_updates, psi_opt_state = psi_tx.update(
        jax.tree.map(jnp.negative, psi_grads), state.psi_opt_state, state.psi_params)
    psi_params = optax.apply_updates(state.psi_params, psi_updates)

    new_state = DistillState(state.step + 1, syn_images, image_opt_state, psi_params,
                             state.psi_batch_stats, psi_opt_state, state.key)
    metrics = {"loss": terms.match, "calibration": terms.calibration,
               "monitor": terms.monitor,
               "lr_scale": optax.tree_utils.tree_get(image_opt_state, "scale")}
    return new_state, metrics

  def distill_step(state: DistillState, pool: Pool, real_batch: jax.Array):
    real_feats, blended, trained, keys = _prepare(state, pool, real_batch)
    grad_fn = jax.value_and_grad(losses, argnums=(0, 1), has_aux=True)
    (_, terms), (image_grads, psi_grads) = grad_fn(
        state.syn_images, state.psi_params, state.psi_batch_stats, real_feats,
        blended, trained, keys)
    new_state, metrics = apply_gradients(state, image_grads, psi_grads, terms)
    if separate_calibration and cfg.calibration_weight:
      new_state, metrics["calibration"] = separate_calibration_update(
          new_state, trained, execution.step_keys(state.key, state.step).calibration)
    return new_state, metrics

  # ------------------------------------------------------------ class blocks
  def begin(state: DistillState, pool: Pool) -> StepDraws:
    keys = execution.step_keys(state.key, state.step)
    blended, trained = _member(pool, keys.member)
    t = (frequencies(state.psi_params, state.psi_batch_stats, keys.frequencies)
         if cfg.loss == "ncfd" else jnp.zeros((0, feature_dim)))
    num_classes = state.syn_images.shape[0]
    return StepDraws(blended, trained, t, jax.random.split(keys.augment, num_classes),
                     monitor_frequencies(state.key, cfg, feature_dim))

  def block_gradients(syn_images, real_block, draws: StepDraws, block: jax.Array,
                      block_size: int):
    """Gradients of block `block` (classes block*K .. block*K + K - 1): w.r.t. its
    stored images `[K, ...]` and the frequencies `[F, D]`, with its match and
    calibration, from its real images `real_block` `[K, B, ...]`. Only the block's
    activations are alive at once."""
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, block * block_size, block_size)
    aug_keys = take(draws.aug_keys)
    real = augment_per_class(aug_keys, normalize(real_block, mean, std))
    chunk = execution.resolve_real_chunk(cfg.get("real_chunk"), real.shape[1], block_size,
                                         real.shape[2] * real.shape[3])
    real_feats = jax.lax.stop_gradient(jnp.swapaxes(
        embed_in_chunks(draws.blended, jnp.swapaxes(real, 0, 1), chunk), 0, 1))
    labels = block * block_size + jnp.arange(block_size)

    def loss_fn(syn_block, t):
      terms = match_terms(syn_block, t if cfg.loss == "ncfd" else None, real_feats,
                          draws.blended, draws.trained, aug_keys, labels, draws.monitor_t)
      return terms.match + cfg.calibration_weight * terms.calibration, terms

    if with_psi:
      (_, terms), (syn_grads, t_grads) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(take(syn_images), draws.t)
    else:  # nothing upstream of Gaussian frequencies: their gradient is wasted work
      (_, terms), syn_grads = jax.value_and_grad(loss_fn, has_aux=True)(
          take(syn_images), draws.t)
      t_grads = _no_frequency_gradient(draws.t)
    return BlockGradients(syn_grads, t_grads, terms)

  def finish(state: DistillState, grads: BlockGradients):
    """The update from the blocks' summed gradients (`syn` `[C, ...]`, the rest summed)."""
    psi_grads = {}
    if with_psi:
      k_freq = execution.step_keys(state.key, state.step).frequencies
      _, pullback = jax.vjp(lambda p: frequencies(p, state.psi_batch_stats, k_freq),
                            state.psi_params)
      (psi_grads,) = pullback(grads.t)
    return apply_gradients(state, grads.syn, psi_grads, grads.terms)

  def blocked_step(state: DistillState, pool: Pool, real_batch: jax.Array, block_size: int):
    """The step with the classes in blocks of `block_size`, one `lax.scan` iteration
    each: a block's gradient is taken inside its iteration (no transposed scan)."""
    num_blocks = state.syn_images.shape[0] // block_size
    draws = begin(state, pool)

    def body(carry, block):
      real_block = jax.lax.dynamic_slice_in_dim(real_batch, block * block_size, block_size)
      grads = block_gradients(state.syn_images, real_block, draws, block, block_size)
      carry = jax.tree.map(jnp.add, carry, grads._replace(syn=jnp.zeros(())))
      return carry, grads.syn

    zeros_ = zeros(state.syn_images, draws)._replace(syn=jnp.zeros(()))
    summed, syn_grads = jax.lax.scan(body, zeros_, jnp.arange(num_blocks))
    syn_grads = syn_grads.reshape(state.syn_images.shape)
    return finish(state, summed._replace(syn=syn_grads))

  def zeros(syn_images, draws: StepDraws) -> BlockGradients:
    t_zeros = jnp.zeros_like(draws.t) if with_psi else _no_frequency_gradient(draws.t)
    return BlockGradients(jnp.zeros_like(syn_images), t_zeros,
                          LossTerms(jnp.zeros(()), jnp.zeros(()), jnp.zeros(())))

  return DistillStep(distill_step, evaluate,
                     ClassBlocks(begin, block_gradients, finish, blocked_step, zeros))
