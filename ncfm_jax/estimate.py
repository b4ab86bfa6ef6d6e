"""How long a paper cell will take on this device, before it runs: a child process
times a few steps of each phase (pool training, distillation, evaluation training)
on random data of the cell's shapes (`measure`), and `extrapolate` scales them to the
cell's budget. Content does not change a step's cost, so no dataset is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ncfm_jax import allocator
from ncfm_jax import evaluation
from ncfm_jax.errors import one_line
from ncfm_jax.paper import CHANNELS, num_classes, train_images
from ncfm_jax.progress import format_seconds

ROW_MARKER = "REPRODUCE_ROW "
"""Prefix of the child process's JSON rows on stdout."""


def extrapolate(config, dataset: str, seconds: Mapping[str, Any]) -> dict[str, float]:
  """Seconds of each phase of a run of `config`, from measured seconds per step.

  Args:
    config: the cell's config (budget applied).
    dataset: its `DATASETS` key (class count, training-set size).
    seconds: ``{"pretrain": s, "distill": s, "eval": {arch: s}}`` per step, and
      optionally ``"compile"``: the same keys, seconds of a first call beyond
      its steps (`measure`).

  Returns:
    ``{"pool": s, "distill": s, "eval <arch>": s, ..., "compile": s}``: pool =
    members x (``max_steps`` or epochs x train images // batch) x s; distill =
    steps x s; eval = ``num_eval`` x `evaluation.eval_steps` x s per
    architecture; compile = one compilation per pool member, one for the
    distillation, one per evaluation run (each trains with a freshly jitted step).
  """
  p = config.pretrain
  pool_steps = p.max_steps or p.epochs * max(1, train_images(config, dataset) // p.batch_size)
  eval_steps = evaluation.eval_steps(config, num_classes(config, dataset))
  out = {"pool": p.num_models * pool_steps * seconds["pretrain"],
         "distill": config.distill.steps * seconds["distill"]}
  for arch in config.eval.archs:
    out[f"eval {arch}"] = config.eval.num_eval * eval_steps * seconds["eval"][arch]
  first = seconds.get("compile")
  if first:
    out["compile"] = (p.num_models * first["pretrain"] + first["distill"] + sum(
        config.eval.num_eval * first["eval"][arch] for arch in config.eval.archs))
  return out


def _seconds_per_step(run, state, steps: int) -> tuple[float, float]:
  """(seconds per step, compilation seconds) of `run(state) -> (state, out)`, a call
  of `steps` steps: a first call (compiles), then a timed one; the compilation is
  what the first took beyond the second."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  state, out = run(state)
  jax.block_until_ready((state, out))
  first = time.perf_counter() - start
  start = time.perf_counter()
  state, out = run(state)
  jax.block_until_ready((state, out))
  second = time.perf_counter() - start
  return second / steps, max(0.0, first - second)


def _train_seconds(model, train_config, images, classes: int, mean, std, steps: int
                   ) -> tuple[float, float]:
  """`_seconds_per_step` of classifier training (`train.make_train_chunk`) on `images`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ncfm_jax import train  # pylint: disable=g-import-not-at-top
  example = jnp.zeros((1,) + images.shape[1:])
  variables = train.init_variables(jax.random.PRNGKey(0), model, example)
  tx = train.make_optimizer(train_config, 10 * steps)
  params = variables["params"]
  state = train.TrainState(jnp.zeros((), jnp.int32), params,
                           variables.get("batch_stats", {}), tx.init(params))
  chunk = train.make_train_chunk(model, tx, train_config, mean, std)
  labels = np.arange(images.shape[0]) % classes
  targets = jax.nn.one_hot(jnp.asarray(labels), classes)
  batch_idx = jnp.asarray(train.epoch_batches(np.random.default_rng(0), images.shape[0],
                                              train_config.batch_size, steps))
  keys = jax.random.split(jax.random.PRNGKey(1), steps)
  return _seconds_per_step(lambda s: chunk(s, images, targets, batch_idx, keys), state, steps)


def measure(config, dataset: str, steps: int) -> dict[str, Any]:
  """Seconds per step of each phase of `config`, on random data of its shapes.

  Distillation: the step the pipeline runs (`planned_distill`: ``batch_real``
  capped at the smallest class, the memory plan applied) by
  `execution.make_run_steps` over a pool of one random network, sampling real
  batches from ``batch_real`` random uint8 images per class. Pool and evaluation
  training: `train.make_train_chunk` on a ``2 x batch`` random training set and
  on a random set of the distilled set's size ``[C * ipc * factor^2, H, W, Ch]``.
  Each is one first call of `steps` steps (compiles) and one timed call.

  Returns:
    ``{"pretrain": s, "distill": s, "eval": {arch: s}}`` per step, the same under
    ``"compile"``: seconds of compilation (see `_seconds_per_step`), and ``"plan"``:
    the distillation's plan (`Plan.describe`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ncfm_jax import distill  # pylint: disable=g-import-not-at-top
  from ncfm_jax import execution  # pylint: disable=g-import-not-at-top
  from ncfm_jax import models  # pylint: disable=g-import-not-at-top
  from ncfm_jax import train  # pylint: disable=g-import-not-at-top
  from ncfm_jax.data import sampling  # pylint: disable=g-import-not-at-top

  classes = num_classes(config, dataset)
  size, channels = int(config.data.image_size), CHANNELS.get(dataset, 3)
  shape = (size, size, channels)
  mean, std = (0.5,) * channels, (0.25,) * channels
  m = config.model

  def make(arch):
    return models.get_model(arch, classes, width=m.width, depth=m.depth, norm=m.norm,
                            image_size=size, channels=channels)

  rng = np.random.default_rng(0)
  d, described = planned_distill(config, dataset, mean, std)
  model = make(m.name)
  example = jnp.zeros((1,) + shape)
  variables = train.init_variables(jax.random.PRNGKey(0), model, example)
  pool = distill.stack_pool([(variables, variables)])  # weights do not change the cost
  feature_dim = models.feature_dim(model, size, channels)
  real = rng.integers(0, 256, (classes * d.batch_real,) + shape, dtype=np.uint8)
  data = sampling.make_class_indexed(real, np.repeat(np.arange(classes), d.batch_real), classes)
  syn = jax.random.uniform(jax.random.PRNGKey(1), (classes, d.ipc) + shape)
  state = distill.init_state(jax.random.PRNGKey(0), syn, feature_dim, d)
  step = distill.make_distill_step(model, d, mean, std, feature_dim)
  run = execution.make_run_steps(step, d, steps).run
  timed = {"distill": _seconds_per_step(lambda s: run(s, pool, data), state, steps)}

  pool_set = jnp.asarray(rng.integers(0, 256, (2 * config.pretrain.batch_size,) + shape,
                                      dtype=np.uint8))
  timed["pretrain"] = _train_seconds(model, config.pretrain, pool_set, classes, mean, std,
                                     steps)
  distilled = jnp.asarray(rng.random((classes * d.ipc * d.factor**2,) + shape, np.float32))
  evals = {arch: _train_seconds(make(arch), config.eval, distilled, classes, mean, std, steps)
           for arch in config.eval.archs}
  def pick(i):  # 0: seconds per step, 1: compilation
    return {"distill": timed["distill"][i], "pretrain": timed["pretrain"][i],
            "eval": {arch: value[i] for arch, value in evals.items()}}
  return {**pick(0), "compile": pick(1), "plan": described}


def planned_distill(config, dataset: str, mean, std):
  """(the cell's distill config as the pipeline runs it, its plan described): its
  `batch_real` capped at the smallest class (`paper.train_images`), the memory plan
  chosen for its budget (`plan.choose`, the pipeline's choice on one device)."""
  from ncfm_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  classes = num_classes(config, dataset)
  per_class = train_images(config, dataset) // classes
  shape = (int(config.data.image_size),) * 2 + (CHANNELS.get(dataset, 3),)
  d = plan_lib.capped_distill_config(config.distill, [per_class], tag="estimate")
  spec = plan_lib.make_spec(config, num_classes=classes, image_shape=shape,
                            train_images=per_class * classes, largest_class=per_class,
                            mean=mean, std=std)
  choice = plan_lib.choose(spec, d, log=None)
  return choice.plan.apply(d, classes), choice.plan.describe(classes)


def device_name() -> str:
  """This process's first accelerator (initialises the backend: child processes only)."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"cpu ({os.cpu_count()} cores)"
  count = jax.device_count()
  return f"{device.platform}: {device.device_kind}" + (f" x{count}" if count > 1 else "")


def measure_child(plans: Sequence[Any], steps: int) -> None:
  """The child process's part: a row with the device, then one per plan measured."""
  print(ROW_MARKER + json.dumps({"device": device_name()}), flush=True)
  for p in plans if steps else []:
    row = {"cell": p.cell.name, "seconds": measure(p.config, p.spec.dataset, steps)}
    print(ROW_MARKER + json.dumps(row), flush=True)


def run_measurement(argv: Sequence[str], names: Sequence[str], steps: int
                    ) -> tuple[str, dict[str, dict], str | None]:
  """Runs `measure_child` for the cells `names` of the command line `argv` in a
  child process (with `steps` 0: the device only).

  The parent never starts a JAX backend itself: on a GPU that would hold the
  memory its CLI children need.

  Returns:
    (device, cell name -> seconds per step, the child's failure or None).
  """
  command = [sys.executable, "-m", "ncfm_jax.reproduce", *argv,
             f"--measure={','.join(names)}", f"--estimate-steps={steps}"]
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        env=allocator.with_tcmalloc(os.environ))
  rows = [json.loads(line[len(ROW_MARKER):]) for line in done.stdout.splitlines()
          if line.startswith(ROW_MARKER)]
  device = rows[0]["device"] if rows else "unknown device"
  seconds = {row["cell"]: row["seconds"] for row in rows[1:]}
  failure = None
  if done.returncode:
    failure = one_line(done.stderr or done.stdout or f"exit {done.returncode}")
  return device, seconds, failure


def estimate_line(p, seconds: Mapping[str, Any], parts: Mapping[str, float]) -> str:
  """``cifar10_ipc10: pool 20 x 11700 steps x 0.012 s = 46m48s; ...; total ...``."""
  c = p.config
  pool_steps = parts["pool"] / max(c.pretrain.num_models * seconds["pretrain"], 1e-12)
  eval_steps = evaluation.eval_steps(c, num_classes(c, p.spec.dataset))
  items = [f"pool {c.pretrain.num_models} x {pool_steps:.0f} steps x "
           f"{seconds['pretrain']:.3g} s = {format_seconds(parts['pool'])}",
           f"distill {c.distill.steps} steps x {seconds['distill']:.3g} s = "
           f"{format_seconds(parts['distill'])}"
           + (f" ({seconds['plan']})" if seconds.get("plan") else "")]
  items += [f"eval {arch} {c.eval.num_eval} x {eval_steps} steps x "
            f"{seconds['eval'][arch]:.3g} s = {format_seconds(parts['eval ' + arch])}"
            for arch in c.eval.archs]
  if "compile" in parts:
    runs = c.pretrain.num_models + 1 + c.eval.num_eval * len(c.eval.archs)
    items.append(f"compilation x {runs} = {format_seconds(parts['compile'])}")
  return f"{p.cell.name}: " + "; ".join(items) + (
      f"; total {format_seconds(sum(parts.values()))}")
