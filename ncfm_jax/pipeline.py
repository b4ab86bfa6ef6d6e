"""The three phases on a workdir: pretrain the pool, distill, evaluate.

Each phase is resumable: re-running the same command continues from the last
Orbax checkpoint (pool members, distillation state) or the last finished
evaluation run (metrics.json).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ncfm_jax import data as data_lib
from ncfm_jax import distill as distill_lib
from ncfm_jax import distributed
from ncfm_jax import models
from ncfm_jax import parameterize
from ncfm_jax import sharding
from ncfm_jax import train as train_lib
from ncfm_jax import workdir as wd
from ncfm_jax.progress import Progress, format_seconds

MODES = ("all", "pretrain", "distill", "evaluate")
EVAL_SOURCES = {"distilled": "eval", "random_real": "baseline_random_real",
                "init": "baseline_init"}


# Host-sampler streams for the initial set and the random-real baseline (far from
# the distillation steps 0, 1, 2, ... that a streamed run uses).
_INIT_STREAM = 2**40
_RANDOM_REAL_STREAM = 2**40 + 1


class PhaseError(RuntimeError):
  """A phase cannot run (missing prerequisite, non-finite loss, bad checkpoint)."""


def validate_config(config) -> None:
  """One clear ValueError for the first bad field."""
  d = config.distill
  if d.ipc < 1:
    raise ValueError(f"distill.ipc must be >= 1, got {d.ipc}")
  if d.factor < 1:
    raise ValueError(f"distill.factor must be >= 1, got {d.factor}")
  if d.loss not in ("ncfd", "mmd"):
    raise ValueError(f"distill.loss must be ncfd or mmd, got {d.loss!r}")
  if d.sampler not in ("psi", "gaussian"):
    raise ValueError(f"distill.sampler must be psi or gaussian, got {d.sampler!r}")
  if d.init not in ("mix", "real", "noise"):
    raise ValueError(f"distill.init must be mix, real or noise, got {d.init!r}")
  if distill_lib.uses_psi(d) and d.num_freqs % 16:
    raise ValueError(
        f"distill.num_freqs={d.num_freqs} must be a multiple of 16 with sampler=psi")
  if d.real_chunk and (d.real_chunk < 0 or d.batch_real % d.real_chunk):
    raise ValueError(f"distill.real_chunk={d.real_chunk} must divide "
                     f"distill.batch_real={d.batch_real}")
  if d.syn_chunk and (d.syn_chunk < 0 or (d.ipc * d.factor**2) % d.syn_chunk):
    raise ValueError(f"distill.syn_chunk={d.syn_chunk} must divide ipc * factor^2 "
                     f"= {d.ipc * d.factor**2}")
  if d.num_freqs < 1 or d.batch_real < 1 or d.steps < 0:
    raise ValueError("distill.num_freqs and distill.batch_real must be >= 1, steps >= 0")
  if config.pretrain.num_models < 1:
    raise ValueError(f"pretrain.num_models must be >= 1, got {config.pretrain.num_models}")
  if config.eval.source not in EVAL_SOURCES:
    raise ValueError(f"eval.source must be one of {sorted(EVAL_SOURCES)}, "
                     f"got {config.eval.source!r}")
  for arch in [config.model.name, *config.eval.archs]:
    if arch not in models.MODEL_NAMES:
      raise ValueError(f"unknown model {arch!r}; valid: {', '.join(models.MODEL_NAMES)}")


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

  # ----------------------------------------------------------------- pretrain
  def pool_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(self.path("pool")),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

  def pretrain_done(self) -> bool:
    if not distributed.agree(os.path.isdir(self.path("pool"))):
      return False
    steps = set(self.pool_manager().all_steps())
    return steps >= set(range(self.config.pretrain.num_models))

  def pretrain(self) -> list[float]:
    cfg = self.config.pretrain
    manager = self.pool_manager()
    done = set(manager.all_steps())
    accuracies = dict(wd.read_json(self.path("pool_accuracy.json"), {}))
    images = jnp.asarray(self.dataset.train_images)
    targets = self.onehot(self.dataset.train_labels)
    steps = cfg.max_steps or cfg.epochs * max(1, images.shape[0] // cfg.batch_size)
    example = train_lib.normalize(images[:1], self.mean, self.std)
    for member in range(cfg.num_models):
      if member in done:
        continue
      key = jax.random.fold_in(jax.random.fold_in(self.key, 1), member)
      init = train_lib.init_variables(jax.random.fold_in(key, 0), self.model, example)
      trained = train_lib.train_classifier(
          jax.random.fold_in(key, 1), self.model, images, targets, cfg,
          num_steps=steps, mean=self.mean, std=self.std, init_variables_=init,
          desc=f"pretrain {member + 1}/{cfg.num_models}", mesh=self.mesh)
      acc = train_lib.accuracy(self.model, trained, self.dataset.test_images,
                               self.dataset.test_labels, self.mean, self.std)
      # Host numpy (the same on every process): what a multi-process save accepts.
      manager.save(member, args=ocp.args.StandardSave(
          sharding.to_host({"init": init, "trained": trained})))
      manager.wait_until_finished()
      accuracies[str(member)] = acc
      wd.write_json(self.path("pool_accuracy.json"), accuracies)
      print(f"[pretrain] member {member}: test accuracy {acc:.2f}%", flush=True)
    manager.close()
    return [accuracies[k] for k in sorted(accuracies, key=int)]

  def load_pool(self) -> distill_lib.Pool:
    if not self.pretrain_done():
      raise PhaseError(f"the pool in {self.path('pool')} is incomplete: run --mode=pretrain")
    manager = self.pool_manager()
    example = train_lib.normalize(jnp.zeros((1,) + self.image_shape, jnp.uint8),
                                  self.mean, self.std)
    abstract_vars = jax.eval_shape(
        lambda: train_lib.init_variables(jax.random.PRNGKey(0), self.model, example))
    target = {"init": abstract_vars, "trained": abstract_vars}
    members = []
    try:
      for member in range(self.config.pretrain.num_models):
        try:
          restored = manager.restore(member, args=ocp.args.StandardRestore(target))
        except Exception as err:  # orbax raises several types for bad files
          raise PhaseError(f"pool checkpoint {member} in {self.path('pool')} is "
                           f"unreadable ({_first_line(err)})") from err
        members.append((restored["init"], restored["trained"]))
    finally:
      manager.close()
    return distill_lib.stack_pool(members)

  # ------------------------------------------------------------------ distill
  def class_indexed(self):
    return data_lib.make_class_indexed(self.dataset.train_images,
                                       self.dataset.train_labels, self.num_classes)

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

  def distill_manager(self) -> ocp.CheckpointManager:
    d = self.config.distill
    return ocp.CheckpointManager(
        os.path.abspath(self.path("distill_ckpt")),
        options=ocp.CheckpointManagerOptions(max_to_keep=d.keep_checkpoints, create=True))

  def feature_dim(self) -> int:
    example = jnp.zeros((1,) + self.image_shape, jnp.float32)
    feats, _ = jax.eval_shape(
        lambda: self.model.apply(
            train_lib.init_variables(jax.random.PRNGKey(0), self.model, example),
            example, train=False))
    return int(feats.shape[-1])

  def distill(self) -> dict:
    d = self.config.distill
    pool = self.load_pool()
    init_images = self.initial_synthetic()
    if not os.path.exists(self.path("init.npz")):
      wd.save_npz(self.path("init.npz"), images=np.asarray(init_images))
    feature_dim = self.feature_dim()
    state = distill_lib.init_state(jax.random.fold_in(self.key, 3), init_images,
                                   feature_dim, d)

    manager = self.distill_manager()
    history = {"loss": [], "calibration": [], "seconds": 0.0}
    latest = manager.latest_step()
    if latest is not None:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      if self.mesh is not None:  # restore straight onto this run's mesh
        abstract = sharding.abstract_arrays(
            state, sharding.state_shardings(state, self.mesh, d.class_sharded))
      try:
        state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
      except Exception as err:  # orbax raises several types for bad files
        manager.close()
        raise PhaseError(f"distillation checkpoint {latest} in {self.path('distill_ckpt')} "
                         f"is unreadable ({_first_line(err)})") from err
      state = distill_lib.DistillState(*state) if not isinstance(
          state, distill_lib.DistillState) else state
      stored = wd.read_json(self.path("distill_history.json"), history)
      history = {"loss": stored["loss"][:latest], "calibration": stored["calibration"][:latest],
                 "seconds": stored.get("seconds", 0.0)}
      print(f"[distill] resumed from step {latest}", flush=True)

    on_device = data_lib.fits_on_device(self.dataset.train_images.nbytes,
                                        d_limit_bytes(self.config))
    class_data = self.class_indexed() if on_device else None
    step_fn = distill_lib.make_distill_step(self.model, d, self.mean, self.std, feature_dim)
    per_call = max(1, int(d.steps_per_call))
    run_fns = {}
    mesh = self.mesh
    if mesh is not None:  # data parallel over every device (README "many devices")
      print(f"[distill] real batch split over {mesh.size} devices", flush=True)
      state = sharding.shard_state(state, mesh, d.class_sharded)
      pool = sharding.replicate(pool, mesh)
      class_data = sharding.replicate(class_data, mesh) if on_device else None
    host_sampler = None if on_device else data_lib.HostClassSampler(
        self.dataset.train_images, self.dataset.train_labels, self.num_classes,
        seed=self.config.seed)
    step = int(state.step)
    progress = Progress("distill", d.steps, start=step)
    start = time.perf_counter()
    seconds_before = history["seconds"]
    while step < d.steps:
      n = min(per_call, d.steps - step)
      # Align calls to checkpoint boundaries so a save never lands mid-call.
      n = min(n, d.checkpoint_every - step % d.checkpoint_every)
      if n not in run_fns:
        run_fns[n] = (distill_lib.make_run_steps(step_fn, d, n) if mesh is None else
                      sharding.make_sharded_run_steps(step_fn, d, n, mesh, d.class_sharded))
      if on_device:
        source = class_data
      else:
        batches = host_sampler.sample_many(n, d.batch_real, start_step=step)
        source = jnp.asarray(batches) if mesh is None else sharding.put_streamed(batches, mesh)
      state, metrics = run_fns[n](state, pool, source)
      losses = np.asarray(metrics["loss"])
      if not np.all(np.isfinite(losses)):
        bad = step + int(np.argmin(np.isfinite(losses)))
        raise PhaseError(f"non-finite distillation loss at step {bad}; "
                         f"try a smaller distill.lr (now {d.lr})")
      history["loss"].extend(losses.tolist())
      history["calibration"].extend(np.asarray(metrics["calibration"]).tolist())
      step += n
      history["seconds"] = seconds_before + time.perf_counter() - start
      if step % d.checkpoint_every == 0 or step == d.steps:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        wd.write_json(self.path("distill_history.json"), history)
      progress.update(step, loss=losses[-1],
                      calib=float(np.asarray(metrics["calibration"])[-1]),
                      lr_scale=float(np.asarray(metrics["lr_scale"])[-1]))
    manager.close()

    syn = sharding.to_host(state.syn_images)
    decoded = np.asarray(parameterize.decode(
        jnp.asarray(syn.reshape((-1,) + syn.shape[2:])), d.factor))
    labels = np.repeat(np.arange(self.num_classes), d.ipc * d.factor**2)
    wd.save_npz(self.path("distilled.npz"), images=syn, decoded=wd.to_uint8(decoded),
                labels=labels, class_names=np.asarray(self.dataset.class_names))
    wd.save_image_grid(self.path("distilled.png"),
                       decoded.reshape((self.num_classes, -1) + decoded.shape[1:]))
    if history["loss"]:
      wd.save_loss_plot(self.path("loss.png"), history)
    distributed.barrier("ncfm:distilled.npz written")  # evaluation reads it everywhere
    steps_run = len(history["loss"])
    summary = {"steps": steps_run, "seconds": history["seconds"],
               "seconds_per_step": history["seconds"] / max(1, steps_run),
               "final_loss": float(np.mean(history["loss"][-10:])) if steps_run else None}
    wd.update_metrics(self.workdir, distill=summary)
    print(f"[distill] {steps_run} steps in {format_seconds(summary['seconds'])} "
          f"({summary['seconds_per_step']:.3f} s/step)", flush=True)
    return summary

  # ----------------------------------------------------------------- evaluate
  def eval_set(self, source: str):
    """(images float32 [N, H, W, C] in [0, 1], labels [N]) for an evaluation source."""
    d = self.config.distill
    if source == "distilled":
      path = self.path("distilled.npz")
      if not os.path.exists(path):
        raise PhaseError(f"{path} not found: run --mode=distill first")
      stored = np.load(path)["images"]
    elif source == "init":
      path = self.path("init.npz")
      if os.path.exists(path):
        stored = np.load(path)["images"]
      else:
        stored = np.asarray(self.initial_synthetic())
    else:  # random_real: ipc real images per class, the same storage budget
      images = self.real_subset(_RANDOM_REAL_STREAM, d.ipc).astype(np.float32) / 255.0
      labels = np.repeat(np.arange(self.num_classes), d.ipc)
      return images.reshape((-1,) + images.shape[2:]), labels
    factor = d.factor
    decoded = parameterize.decode(jnp.asarray(stored.reshape((-1,) + stored.shape[2:])),
                                  factor)
    labels = np.repeat(np.arange(self.num_classes), d.ipc * factor**2)
    return np.asarray(decoded), labels

  def check_eval_settings(self, sources) -> dict:
    """This config's eval settings (`wd.eval_settings`); refuses (WorkdirError) to add
    to or report runs of `sources` made with other settings."""
    metrics = wd.read_json(self.path("metrics.json"), {})
    settings = wd.eval_settings(self.config.eval)
    refusal = None
    try:
      for source in sources:
        section = EVAL_SOURCES[source]
        for arch in self.config.eval.archs:
          wd.check_eval_settings(self.workdir, section, arch,
                                 metrics.get(section, {}).get(arch, {}), settings)
    except wd.WorkdirError as err:
      refusal = err
    # Every process stops, or none: process 0's reading decides.
    if not distributed.agree(refusal is None):
      raise refusal or wd.WorkdirError("process 0 refused the recorded eval settings")
    return settings

  def evaluate(self, source: str) -> dict:
    cfg = self.config.eval
    section = EVAL_SOURCES[source]
    images, labels = self.eval_set(source)
    metrics = wd.read_json(self.path("metrics.json"), {})
    results = dict(metrics.get(section, {}))
    per_epoch = int(np.ceil(images.shape[0] / min(cfg.batch_size, images.shape[0])))
    num_steps = cfg.max_steps or cfg.epochs * per_epoch
    settings = self.check_eval_settings([source])
    teacher = self.teacher() if cfg.soft_labels else None
    for arch in cfg.archs:
      model = self.make_model(arch)
      runs = list(results.get(arch, {}).get("runs", []))
      for repeat in range(distributed.agree(len(runs)), cfg.num_eval):
        key = jax.random.fold_in(jax.random.fold_in(self.key, 5), repeat)
        variables = train_lib.train_classifier(
            key, model, jnp.asarray(images), self.onehot(labels), cfg,
            num_steps=num_steps, mean=self.mean, std=self.std, teacher=teacher,
            desc=f"eval {source} {arch} {repeat + 1}/{cfg.num_eval}", mesh=self.mesh)
        acc = train_lib.accuracy(model, variables, self.dataset.test_images,
                                 self.dataset.test_labels, self.mean, self.std)
        runs.append(acc)
        results[arch] = {"mean": float(np.mean(runs)), "std": float(np.std(runs)),
                         "runs": runs, "settings": settings}
        wd.update_metrics(self.workdir, **{section: results})  # resumable per run
        print(f"[eval] {source} {arch} run {repeat + 1}: {acc:.2f}%", flush=True)
    return results

  def teacher(self):
    """Soft-label teacher: the first trained pool member (inference mode)."""
    pool = self.load_pool()
    trained = jax.tree.map(lambda x: x[0], pool.trained_variables)
    if self.mesh is not None:  # used inside the data-parallel training step
      trained = sharding.replicate(sharding.to_host(trained), self.mesh)
    return train_lib.make_logits_fn(self.model, trained, self.mean, self.std)


def _first_line(err: Exception) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def d_limit_bytes(config) -> int:
  return int(config.data.device_limit_mb) * 2**20


def eval_sources(config, mode: str) -> list[str]:
  """The sets `mode` evaluates (keys of EVAL_SOURCES)."""
  if mode == "evaluate":
    return [config.eval.source]
  if mode == "all":
    return ["distilled"] + (["random_real", "init"] if config.eval.baselines else [])
  return []


def run(config, workdir: str, mode: str = "all") -> dict:
  """Runs `mode` on `workdir`; returns metrics.json's content."""
  if mode not in MODES:
    raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
  validate_config(config)
  known = wd.check_config(workdir, config)
  r = Run(config, workdir)  # loads the data: bad data fails before anything is written
  r.check_eval_settings(eval_sources(config, mode))
  if not known:
    wd.write_config(workdir, config)
  metrics = wd.read_json(r.path("metrics.json"), {})
  wd.update_metrics(workdir, dataset=r.dataset.name, ipc=int(config.distill.ipc),
                    config=wd.result_defining(config))

  if mode == "pretrain" or (mode == "all" and not r.pretrain_done()):
    accuracies = r.pretrain()
    wd.update_metrics(workdir, pretrain={"accuracy": accuracies})
  distilled = distributed.agree(os.path.exists(r.path("distilled.npz")))
  if mode == "distill" or (mode == "all" and not distilled):
    r.distill()
  if mode == "evaluate":
    r.evaluate(config.eval.source)
  elif mode == "all":
    metrics = wd.read_json(r.path("metrics.json"), {})
    for source in eval_sources(config, mode):
      done = metrics.get(EVAL_SOURCES[source], {})
      if distributed.agree(any(len(done.get(a, {}).get("runs", [])) < config.eval.num_eval
                               for a in config.eval.archs)):
        r.evaluate(source)
  metrics = wd.read_json(r.path("metrics.json"), {})
  print_summary(metrics)
  return metrics


def print_summary(metrics: dict) -> None:
  archs = sorted({a for s in EVAL_SOURCES.values() for a in metrics.get(s, {})})
  if not archs:
    return
  print("\n| arch | NCFM distilled | random real (baseline) | initial set (baseline) |")
  print("| --- | --- | --- | --- |")
  for arch in archs:
    cells = []
    for section in EVAL_SOURCES.values():
      r = metrics.get(section, {}).get(arch)
      cells.append(f"{r['mean']:.2f} +- {r['std']:.2f} (n={len(r['runs'])})" if r else "-")
    print(f"| {arch} | " + " | ".join(cells) + " |")
  if "distill" in metrics:
    dm = metrics["distill"]
    print(f"\ndistill: {dm['steps']} steps, {dm['seconds_per_step']:.3f} s/step, "
          f"final loss (mean of the last 10 steps) {dm['final_loss']:.2f}")
