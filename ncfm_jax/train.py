"""Training a classifier from scratch: shared by pretraining the pool and evaluation.

Both phases train the same way (docs/design.md sections 7 and 8): per-sample DSA
augmentation, CutMix, soft or one-hot targets, a multi-step learning-rate decay
(`lr_decay_fractions`, `lr_decay_factor`), random-resized-crop when `rrc`.
Steps run in chunks: `lax.scan` over
`steps_per_call` steps per host call, batch indices prepared on the host from one
permutation per epoch (a few KB per call; images stay on the device).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncfm_jax import augment as augment_lib
from ncfm_jax import execution
from ncfm_jax import sharding
from ncfm_jax.augment import normalize
from ncfm_jax.progress import Progress


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  batch_stats: Any  # {} for models without batch norm
  opt_state: Any


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  """SGD (momentum) or AdamW with a multi-step learning-rate decay.

  The learning rate is `opt_config.lr`, multiplied by `opt_config.lr_decay_factor` at
  each step `int(f * total_steps)` for f in `opt_config.lr_decay_fractions` (torch's
  `MultiStepLR`): (0.2, 0.4, 0.6, 0.8) and 0.5 halve it at each fifth (the release's
  evaluation), (2/3, 5/6) and 0.2 are the release's pool pretraining.
  """
  boundaries = {}
  for fraction in opt_config.lr_decay_fractions:
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"lr_decay_fractions must lie in [0, 1], got {fraction}")
    # Rounded first so that e.g. 0.7 * 90 is step 63, not 62.
    boundary = int(round(total_steps * fraction, 6))
    if boundary > 0:  # coinciding boundaries compound
      boundaries[boundary] = boundaries.get(boundary, 1.0) * opt_config.lr_decay_factor
  schedule = optax.piecewise_constant_schedule(opt_config.lr, boundaries)
  if opt_config.optimizer == "sgd":
    return optax.chain(
        optax.add_decayed_weights(opt_config.weight_decay),
        optax.sgd(schedule, momentum=opt_config.momentum, nesterov=False))
  if opt_config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=opt_config.weight_decay)
  raise ValueError(f"unknown optimizer {opt_config.optimizer!r}; use sgd or adamw")


def init_variables(key: jax.Array, model, example: jax.Array) -> dict:
  """Flax variables `{'params': ..., ['batch_stats': ...]}` for `example` `[1, H, W, C]`."""
  return dict(model.init(key, example, train=False))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of `-sum_k targets_k log softmax(logits)_k`; logits `[B, K]`."""
  return optax.softmax_cross_entropy(logits, targets).mean()


def _apply_train(model, params, batch_stats, images):
  """Forward in training mode; returns (logits, new batch_stats)."""
  if batch_stats:
    (_, logits), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True,
        mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  _, logits = model.apply({"params": params}, images, train=True)
  return logits, batch_stats


class Teacher(NamedTuple):
  """A soft-label teacher: `model` in inference mode with `variables`."""
  model: Any
  variables: Any


def make_train_chunk(model, tx, train_config, mean, std, teacher: Teacher | None = None,
                     mesh=None):
  """Builds `chunk(state, images, targets, batch_idx [S, B], keys [S]) -> (state, losses [S])`.

  `images` uint8 or float in [0, 1] `[N, H, W, C]`, `targets` `[N, K]` (one-hot
  or soft). A `teacher`, when given, replaces the targets by its softmax at
  `train_config.soft_label_temperature` on the very batch the student sees
  (after augmentation and CutMix); its variables are an argument of the jitted
  step, not constants baked into it.

  With a `mesh` the steps are data parallel (`sharding.data_parallel_train_chunk`):
  `batch_idx` split along B over the devices, everything else replicated; the
  gradient and batch-norm means over B become all-reduces, so a step is the
  single-device step. The state, images, targets and keys must be placed with
  `sharding.replicate` (`train_classifier` does); host `batch_idx` are split here.
  """
  strategy = train_config.augment
  temperature = float(train_config.get("soft_label_temperature", 1.0))

  def step(state: TrainState, images, targets, idx, key, teacher_variables):
    k_aug, k_mix = jax.random.split(key)
    x = normalize(images[idx], mean, std)
    y = targets[idx]
    if train_config.rrc:
      k_aug, k_rrc = jax.random.split(k_aug)
      x = augment_lib.random_resized_crop(k_rrc, x)
    x = augment_lib.augment(k_aug, x, strategy, per_sample=True)
    x, y = augment_lib.cutmix(k_mix, x, y, prob=train_config.cutmix_prob,
                              beta=train_config.cutmix_beta)
    if teacher is not None:
      logits = teacher.model.apply(teacher_variables, x, train=False)[1]
      y = jax.nn.softmax(jax.lax.stop_gradient(logits) / temperature)

    def loss_fn(params):
      logits, new_stats = _apply_train(model, params, state.batch_stats, x)
      return soft_cross_entropy(logits, y), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, new_stats, opt_state), loss

  def place(batch_idx, axis):
    """Host batch indices, split along B over the mesh (as they are without one)."""
    if mesh is None:
      return batch_idx
    return sharding.shard_batch_axis(np.asarray(batch_idx), mesh, axis)

  def compile_(fn, batch_axis):
    if mesh is None:
      return jax.jit(fn, donate_argnums=(0,))
    return sharding.data_parallel_train_chunk(fn, mesh, batch_axis=batch_axis)

  teacher_variables = teacher.variables if teacher is not None else None
  if mesh is not None and teacher is not None:  # read inside the data-parallel step
    teacher_variables = sharding.replicate(sharding.to_host(teacher_variables), mesh)

  if execution.resolve_use_scan(train_config.get("use_scan", None)):
    def chunk(state, images, targets, batch_idx, keys, teacher_variables):
      def body(carry, xs):
        return step(carry, images, targets, *xs, teacher_variables)
      return jax.lax.scan(body, state, (batch_idx, keys))
    jitted_chunk = compile_(chunk, batch_axis=1)
    return lambda state, images, targets, batch_idx, keys: jitted_chunk(
        state, images, targets, place(batch_idx, 1), keys, teacher_variables)

  jitted_step = compile_(step, batch_axis=0)

  def loop(state, images, targets, batch_idx, keys):
    losses = []
    for idx, key in zip(batch_idx, keys):
      state, loss = jitted_step(state, images, targets, place(idx, 0), key,
                                teacher_variables)
      losses.append(loss)
    return state, jnp.stack(losses)
  return loop


def epoch_batches(rng: np.random.Generator, num_examples: int, batch_size: int,
                  num_steps: int) -> np.ndarray:
  """`[num_steps, batch]` indices: consecutive slices of per-epoch permutations."""
  batch_size = min(batch_size, num_examples)
  per_epoch = num_examples // batch_size
  rows = []
  while len(rows) < num_steps:
    perm = rng.permutation(num_examples)
    rows.extend(perm[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch))
  return np.stack(rows[:num_steps]).astype(np.int32)


def _variables(state: TrainState, mesh) -> dict:
  """Flax variables of a training state (host numpy arrays with a mesh)."""
  out = {"params": state.params}
  if state.batch_stats:
    out["batch_stats"] = state.batch_stats
  return sharding.to_host(out) if mesh is not None else out


def train_classifier(key: jax.Array, model, images, targets, train_config, *,
                     num_steps: int, mean, std, teacher: Teacher | None = None,
                     desc: str = "train", init_variables_=None,
                     log_every_seconds: float = 10.0, mesh=None,
                     checkpoint_every: int | None = None, on_checkpoint=None,
                     resume=None, after_chunk=None):
  """Trains `model` from scratch on (`images`, `targets`); returns Flax variables.

  Args:
    key: PRNG key (initialisation, augmentation, batch order).
    model: a Flax module returning `(features, logits)`.
    images: `[N, H, W, C]` uint8 or float32 in [0, 1], device-resident.
    targets: `[N, K]` one-hot or soft labels.
    train_config: a config section with optimizer, lr, momentum, weight_decay,
      lr_decay_fractions, lr_decay_factor, batch_size, rrc, augment, cutmix_prob,
      cutmix_beta, steps_per_call.
    num_steps: optimizer steps.
    init_variables_: start from these variables instead of a fresh init.
    mesh: train data parallel over this mesh's devices (see `make_train_chunk`)
      when the batch divides over them; the variables come back as host numpy
      arrays then (identical on every process).
    checkpoint_every, on_checkpoint: `on_checkpoint(step, variables)` after every
      `checkpoint_every` steps (None: none) and after the last (the release tests
      its evaluation networks so); the steps taken do not depend on it.
    resume: `resume(fresh_state) -> (state, steps done) | None`: continue a training
      stopped part-way (`checkpoints.TrainingCheckpoint.hooks`); the batches and
      keys are those of the uninterrupted run.
    after_chunk: `after_chunk(state, steps done)` after every host call (it may
      save the state and raise to stop the run).
  """
  images = jnp.asarray(images)
  targets = jnp.asarray(targets, jnp.float32)
  k_init, k_steps, k_order = jax.random.split(key, 3)
  if init_variables_ is not None:
    # Copy: the training state is donated, and the caller keeps its variables.
    variables = jax.tree.map(jnp.copy, init_variables_)
  else:
    variables = init_variables(k_init, model, normalize(images[:1], mean, std))
  tx = make_optimizer(train_config, num_steps)
  params = variables["params"]
  state = TrainState(jnp.zeros((), jnp.int32), params,
                     variables.get("batch_stats", {}), tx.init(params))
  done = 0
  if resume is not None:
    resumed = resume(state)
    if resumed is not None:
      state, done = resumed
  order_seed = int(jax.random.randint(k_order, (), 0, 2**31 - 1))
  batch_idx = epoch_batches(np.random.default_rng(order_seed), images.shape[0],
                            train_config.batch_size, num_steps)
  step_keys = jax.random.split(k_steps, num_steps)
  if mesh is not None and batch_idx.shape[1] % mesh.size:
    mesh = None  # e.g. a 10-image synthetic set on 4 devices: not worth splitting
  if mesh is not None:
    state, images, targets, step_keys = sharding.replicate(
        (state, images, targets, step_keys), mesh)
  else:
    batch_idx = jnp.asarray(batch_idx)
  chunk_fn = make_train_chunk(model, tx, train_config, mean, std, teacher, mesh)
  per_call = max(1, int(train_config.steps_per_call))
  progress = Progress(desc, num_steps, every_seconds=log_every_seconds, start=done)
  every = int(checkpoint_every or 0) if on_checkpoint is not None else 0
  while done < num_steps:
    n = min(per_call, num_steps - done)
    if every:  # a call ends on a checkpoint
      n = min(n, every - done % every)
    state, losses = chunk_fn(state, images, targets, batch_idx[done:done + n],
                             step_keys[done:done + n])
    done += n
    progress.update(done, loss=float(losses[-1]))
    if on_checkpoint is not None and ((every and done % every == 0) or done == num_steps):
      on_checkpoint(done, _variables(state, mesh))
    if after_chunk is not None and done < num_steps:
      after_chunk(state, done)
  return _variables(state, mesh)


@functools.partial(jax.jit, static_argnums=0)
def _predict(model, variables, images, mean, std):
  """Class predictions `[B]` for uint8 `images` `[B, H, W, C]`: one compiled function
  per architecture and image shape, the weights an argument (not constants)."""
  logits = model.apply(variables, normalize(images, mean, std), train=False)[1]
  return jnp.argmax(logits, axis=-1)


def accuracy(model, variables, images, labels, mean, std,
             batch_size: int = 1000) -> float:
  """Top-1 accuracy in percent of `model` on uint8 `images` `[N, H, W, C]`."""
  images = np.asarray(images)
  labels = np.asarray(labels)
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  num = images.shape[0]
  correct = 0
  for start in range(0, num, batch_size):
    batch = images[start:start + batch_size]
    pad = batch_size - batch.shape[0]
    if pad:  # one compiled shape for every batch
      batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
    pred = np.asarray(_predict(model, variables, batch, mean, std))[:batch_size - pad]
    correct += int((pred == labels[start:start + batch_size]).sum())
  return 100.0 * correct / num
