"""The three phases on a workdir: pretrain the pool, distill, evaluate.

Each phase is resumable: re-running the same command continues from the last
Orbax checkpoint (pool members, distillation state) or the last finished
evaluation run (metrics.json). How steps run is `execution`'s business, Orbax's
layout `checkpoints`', evaluation `evaluation`'s; this module orders the phases.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import checkpoints
from ncfm_jax import data as data_lib
from ncfm_jax import distill as distill_lib
from ncfm_jax import distributed
from ncfm_jax import evaluation
from ncfm_jax import execution
from ncfm_jax import models
from ncfm_jax import parameterize
from ncfm_jax import plan as plan_lib
from ncfm_jax import preemption
from ncfm_jax import sharding
from ncfm_jax import train as train_lib
from ncfm_jax import workdir as wd
from ncfm_jax.augment import normalize
from ncfm_jax.config_lib import validate_config
from ncfm_jax.errors import InputError
from ncfm_jax.progress import Progress, format_seconds

MODES = ("all", "pretrain", "distill", "evaluate", "plan")

# Host-sampler stream of the initial synthetic set (far from the distillation
# steps 0, 1, 2, ... that a streamed run uses).
_INIT_STREAM = 2**40


class Run:
  """Holds what every phase needs: config, workdir, data and the model."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    start = time.perf_counter()
    self.dataset = data_lib.load_dataset(config.data)
    train_images = self.dataset.train_images
    self.num_classes = len(self.dataset.class_names)
    self.image_shape = tuple(train_images.shape[1:])
    print(f"[data] {self.dataset.name}: train {train_images.shape}, "
          f"test {self.dataset.test_images.shape}, {self.num_classes} classes "
          f"({time.perf_counter() - start:.1f}s)", flush=True)
    self.mean, self.std = self.dataset.mean, self.dataset.std
    self.model = self.make_model(config.model.name)
    self.key = jax.random.PRNGKey(config.seed)
    self._planned = None
    # Several devices: every phase runs data parallel over all of them.
    self.mesh = sharding.make_mesh() if jax.device_count() > 1 else None
    if self.mesh is not None:
      print(f"[devices] {distributed.describe()}; data parallel over {self.mesh.size} "
            f"devices", flush=True)

  def make_model(self, name: str):
    m = self.config.model
    return models.get_model(name, self.num_classes, width=m.width, depth=m.depth,
                            norm=m.norm, image_size=self.image_shape[0],
                            channels=self.image_shape[2])

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def onehot(self, labels) -> jnp.ndarray:
    return jax.nn.one_hot(jnp.asarray(labels), self.num_classes)

  def example(self) -> jnp.ndarray:
    return normalize(jnp.zeros((1,) + self.image_shape, jnp.uint8), self.mean, self.std)

  # ----------------------------------------------------------------- pretrain
  def pretrain_done(self) -> bool:
    saved = checkpoints.saved_members(self.path("pool"))
    return distributed.agree(saved >= set(range(self.config.pretrain.num_models)))

  def pretrain(self) -> list[float]:
    cfg = self.config.pretrain
    done = checkpoints.saved_members(self.path("pool"))
    accuracies = dict(wd.read_json(self.path("pool_accuracy.json"), {}))
    images = jnp.asarray(self.dataset.train_images)
    targets = self.onehot(self.dataset.train_labels)
    steps = cfg.max_steps or cfg.epochs * max(1, images.shape[0] // cfg.batch_size)
    for member in sorted(set(range(cfg.num_models)) - done):
      key = jax.random.fold_in(jax.random.fold_in(self.key, 1), member)
      init = train_lib.init_variables(jax.random.fold_in(key, 0), self.model, self.example())
      partial = checkpoints.TrainingCheckpoint(self.path("partial", f"pool_{member}"))
      resume, after_chunk = partial.hooks(f"pretraining of pool member {member}")
      trained = train_lib.train_classifier(
          jax.random.fold_in(key, 1), self.model, images, targets, cfg,
          num_steps=steps, mean=self.mean, std=self.std, init_variables_=init,
          desc=f"pretrain {member + 1}/{cfg.num_models}", mesh=self.mesh,
          resume=resume, after_chunk=after_chunk)
      acc = train_lib.accuracy(self.model, trained, self.dataset.test_images,
                               self.dataset.test_labels, self.mean, self.std)
      checkpoints.save_member(self.path("pool"), member, init, trained)
      partial.remove()
      accuracies[str(member)] = acc
      wd.write_json(self.path("pool_accuracy.json"), accuracies)
      print(f"[pretrain] member {member}: test accuracy {acc:.2f}%", flush=True)
    return [accuracies[k] for k in sorted(accuracies, key=int)]

  def load_pool(self) -> distill_lib.Pool:
    if not self.pretrain_done():
      raise InputError(f"the pool in {self.path('pool')} is incomplete: run --mode=pretrain")
    abstract = jax.eval_shape(
        lambda: train_lib.init_variables(jax.random.PRNGKey(0), self.model, self.example()))
    return checkpoints.load_pool(self.path("pool"), abstract,
                                 self.config.pretrain.num_models)

  # ----------------------------------------------------------------- evaluate
  def set_makers(self) -> evaluation.SetMakers:
    """What evaluation builds its training sets from (this run's data and samplers)."""
    return evaluation.SetMakers(self.config, self.workdir, self.num_classes,
                                self.image_shape, self.real_subset, self.initial_synthetic)

  def evaluate(self, mode: str) -> None:
    """`--mode=evaluate`: `eval.source` again; `--mode=all`: the missing runs of the
    distilled set (and the baselines)."""
    metrics = wd.read_json(self.path("metrics.json"), {})
    test = evaluation.TestSet(self.dataset.test_images, self.dataset.test_labels,
                              self.mean, self.std)
    teacher = None
    if self.config.eval.soft_labels:  # the first trained pool member, inference mode
      teacher = train_lib.Teacher(self.model, jax.tree.map(
          lambda x: x[0], self.load_pool().trained_variables))
    for source in evaluation.sources_for_mode(self.config, mode):
      if mode == "evaluate" or distributed.agree(
          evaluation.missing_runs(self.config, metrics, source)):
        evaluation.evaluate(self.set_makers(), source, make_model=self.make_model,
                            test=test, key=jax.random.fold_in(self.key, 5),
                            teacher=teacher, mesh=self.mesh)

  # ------------------------------------------------------------------ distill
  def real_subset(self, stream: int, per_class: int) -> np.ndarray:
    """uint8 `[C, per_class, H, W, Ch]` distinct random real images per class (host,
    seeded by (seed, stream): the same whether or not the data sits on the device)."""
    sampler = data_lib.HostClassSampler(self.dataset.train_images, self.dataset.train_labels,
                                        self.num_classes, seed=self.config.seed)
    return sampler.sample(per_class, step=stream)

  def initial_synthetic(self) -> jnp.ndarray:
    """`[C, ipc, H, W, Ch]` in [0, 1], deterministic for the seed; saved as init.npz."""
    d = self.config.distill
    needed = d.ipc * (d.factor**2 if d.init == "mix" else 1)
    real = jnp.asarray(self.real_subset(_INIT_STREAM, needed), jnp.float32) / 255.0
    return parameterize.init_synthetic(jax.random.fold_in(self.key, 2), real, d.ipc,
                                       d.factor, d.init)

  def distill_config(self):
    """`config.distill` with `batch_real` capped at the smallest class."""
    return plan_lib.capped_distill_config(
        self.config.distill, np.bincount(self.dataset.train_labels, minlength=self.num_classes))

  def planned_distill_config(self):
    """`distill_config()` with the memory plan applied (`plan.Planner`, once per run),
    written to plan.json."""
    if self._planned is None:
      self._planned = self._plan(self.distill_config())
    return self._planned

  def _plan(self, d):
    # Several devices (or processes) must run one program: no timing, which could
    # choose differently in each process.
    choice = plan_lib.choose(plan_lib.make_spec(
        self.config, num_classes=self.num_classes, image_shape=self.image_shape,
        train_images=int(self.dataset.train_images.shape[0]),
        largest_class=int(np.bincount(self.dataset.train_labels).max()),
        mean=self.mean, std=self.std), d,
        timed=self.mesh is None and bool(d.get("plan_timing", True)))
    print(choice.summary(), flush=True)
    os.makedirs(self.workdir, exist_ok=True)
    wd.write_json(self.path("plan.json"), choice.to_json())
    return choice.plan.apply(d, self.num_classes)

  def distill(self) -> dict:
    d = self.planned_distill_config()
    pool = self.load_pool()
    init_images = self.initial_synthetic()
    if not os.path.exists(self.path("init.npz")):
      wd.save_npz(self.path("init.npz"), images=np.asarray(init_images))
    feature_dim = models.feature_dim(self.model, self.image_shape[0], self.image_shape[2])
    state = distill_lib.init_state(jax.random.fold_in(self.key, 3), init_images,
                                   feature_dim, d)
    history = dict(checkpoints.EMPTY_HISTORY, loss=[], calibration=[])
    with checkpoints.DistillCheckpoints(self.path("distill_ckpt"), d.keep_checkpoints) as store:
      restored = store.restore_latest(state, mesh=self.mesh, class_sharded=d.class_sharded)
      if restored is not None:
        state, history = restored
        print(f"[distill] resumed from step {int(state.step)}", flush=True)
      state = self._distill_steps(d, state, pool, history, store, feature_dim)
    return self._save_distilled(d, state, history)

  def _distill_steps(self, d, state, pool, history, store, feature_dim):
    """Runs the remaining steps, checkpointing state and history together."""
    step_fn = distill_lib.make_distill_step(self.model, d, self.mean, self.std, feature_dim)
    source_for = execution.real_batch_source(
        self.dataset.train_images, self.dataset.train_labels, self.num_classes,
        batch_real=d.batch_real, seed=self.config.seed,
        device_limit_bytes=int(self.config.data.device_limit_mb) * 2**20, mesh=self.mesh,
        fixed=execution.fixed_real(d))
    if self.mesh is not None:
      print(f"[distill] real batch split over {self.mesh.size} devices", flush=True)
    step = int(state.step)
    progress = Progress("distill", d.steps, start=step)
    start, seconds_before = time.perf_counter(), history["seconds"]
    for state, metrics in execution.distill_in_calls(
        step_fn, d, state, pool, source_for, mesh=self.mesh, class_sharded=d.class_sharded):
      losses = np.asarray(metrics["loss"])
      if not np.all(np.isfinite(losses)):
        bad = step + int(np.argmin(np.isfinite(losses)))
        raise InputError(f"non-finite distillation loss at step {bad}; "
                         f"try a smaller distill.lr (now {d.lr})")
      history["loss"].extend(losses.tolist())
      history["calibration"].extend(np.asarray(metrics["calibration"]).tolist())
      step += losses.shape[0]
      history["seconds"] = seconds_before + time.perf_counter() - start
      saved = step % d.checkpoint_every == 0 or step == d.steps
      if saved:
        store.save(step, state, history)
      progress.update(step, loss=losses[-1],
                      calib=float(np.asarray(metrics["calibration"])[-1]),
                      lr_scale=float(np.asarray(metrics["lr_scale"])[-1]))
      if step < d.steps and preemption.stop_here():
        if not saved:
          store.save(step, state, history)
        raise preemption.stopped(f"distillation at step {step}/{d.steps}",
                                 f"checkpoint in {store.directory}")
    return state

  def _save_distilled(self, d, state, history) -> dict:
    # The per-class update clamps before an iteration, not after: clamp the last.
    wd.save_distilled(self.workdir, np.clip(sharding.to_host(state.syn_images), 0.0, 1.0),
                      d.factor, self.dataset.class_names, history)
    distributed.barrier("ncfm:distilled.npz written")  # evaluation reads it everywhere
    summary = wd.distill_summary(history)
    wd.update_metrics(self.workdir, distill=summary)
    print(f"[distill] {summary['steps']} steps in {format_seconds(summary['seconds'])} "
          f"({summary['seconds_per_step']:.3f} s/step)", flush=True)
    return summary


def run(config, workdir: str, mode: str = "all") -> dict:
  """Runs `mode` on `workdir`; returns metrics.json's content."""
  if mode not in MODES:
    raise InputError(f"--mode must be one of {MODES}, got {mode!r}")
  wd.check_directory(workdir)
  validate_config(config, model_names=models.MODEL_NAMES,
                  eval_sources=tuple(evaluation.EVAL_SOURCES))
  known = wd.check_config(workdir, config)
  if mode == "plan":  # from the registry's shapes: nothing loaded
    result = plan_lib.plan_from_registry(config)
    os.makedirs(workdir, exist_ok=True)
    wd.write_json(os.path.join(workdir, "plan.json"), result)
    return result
  r = Run(config, workdir)  # loads the data: bad data fails before anything is written
  evaluation.check_settings(config, workdir, evaluation.sources_for_mode(config, mode))
  if mode == "evaluate":  # a set that is not there stops before anything is written
    evaluation.check_available(r.set_makers(), config.eval.source)
  if mode == "distill" or (mode == "all" and not distributed.agree(
      os.path.exists(r.path("distilled.npz")))):
    r.planned_distill_config()  # a budget that no plan fits stops before any work
  if not known:
    wd.write_config(workdir, config)
  wd.update_metrics(workdir, dataset=r.dataset.name, ipc=int(config.distill.ipc),
                    config=wd.result_defining(config))

  with preemption.watch():  # SIGTERM / SIGINT: save where the run is, then stop
    if mode == "pretrain" or (mode == "all" and not r.pretrain_done()):
      wd.update_metrics(workdir, pretrain={"accuracy": r.pretrain()})
    distilled = distributed.agree(os.path.exists(r.path("distilled.npz")))
    if mode == "distill" or (mode == "all" and not distilled):
      r.distill()
    r.evaluate(mode)
  metrics = wd.read_json(r.path("metrics.json"), {})
  evaluation.print_summary(metrics)
  return metrics

