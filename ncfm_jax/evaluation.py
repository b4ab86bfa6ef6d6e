"""Evaluation: networks trained from scratch on a set, tested on the real test split.

Sources (`EVAL_SOURCES`, each a section of metrics.json): the distilled set, and two
baselines at the same storage budget: `ipc` random real images per class, and the
synthetic set as initialised; and `file:PATH`, a set distilled elsewhere (an .npz),
recorded under `external` keyed by the file's name. Every source trains for the
same number of optimizer steps (`eval_steps`: the distilled set's budget), so the
baselines are not short-changed. Runs are appended one by one to metrics.json with
the eval settings that produced them, so a killed evaluation resumes and runs made
with other settings are never pooled (docs/design.md section 8).
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import checkpoints
from ncfm_jax import distributed
from ncfm_jax import parameterize
from ncfm_jax import train as train_lib
from ncfm_jax import workdir as wd
from ncfm_jax.errors import InputError

EVAL_SOURCES = {"distilled": "eval", "random_real": "baseline_random_real",
                "init": "baseline_init"}
FILE_PREFIX = "file:"  # eval.source=file:PATH: an .npz distilled elsewhere
EXTERNAL_SECTION = "external"

# Host-sampler stream of the random-real baseline (far from the distillation steps
# 0, 1, 2, ... that a streamed run uses).
RANDOM_REAL_STREAM = 2**40 + 1


def sources_for_mode(config, mode: str) -> list[str]:
  """The sets `mode` evaluates (keys of EVAL_SOURCES)."""
  if mode == "evaluate":
    return [config.eval.source]
  if mode == "all":
    return ["distilled"] + (["random_real", "init"] if config.eval.baselines else [])
  return []


def is_file_source(source: str) -> bool:
  return source.startswith(FILE_PREFIX)


def steps_per_epoch(config, num_classes: int) -> int:
  """Optimizer steps of one epoch of the distilled set (`C * ipc * factor^2` images)."""
  cfg, d = config.eval, config.distill
  distilled_size = num_classes * d.ipc * d.factor**2
  return int(np.ceil(distilled_size / min(cfg.batch_size, distilled_size)))


def eval_steps(config, num_classes: int) -> int:
  """Optimizer steps of every evaluation run: `eval.max_steps`, else `eval.epochs`
  epochs of the distilled set."""
  if config.eval.max_steps:
    return int(config.eval.max_steps)
  return int(config.eval.epochs) * steps_per_epoch(config, num_classes)


def checkpoint_steps(config, num_classes: int) -> int:
  """Steps between the test-set evaluations of a run (and one after the last step):
  `eval.eval_every`, else `eval.epoch_eval_interval` epochs of the distilled set,
  every interval / 50 epochs when ipc > 50 (the release's `evaluate_syn_data`)."""
  if config.eval.get("eval_every"):
    return int(config.eval.eval_every)
  epochs = float(config.eval.epoch_eval_interval)
  if config.distill.ipc > 50:
    epochs /= 50
  return max(1, int(round(epochs * steps_per_epoch(config, num_classes))))


def _section(source: str) -> tuple[str, str | None]:
  """(metrics.json section, key inside it or None) of a source."""
  if is_file_source(source):
    return EXTERNAL_SECTION, os.path.basename(source[len(FILE_PREFIX):])
  return EVAL_SOURCES[source], None


class SetMakers(NamedTuple):
  """What builds the training sets of the evaluation sources (`eval_set`).

  Attributes:
    config: the run's config.
    workdir: where distilled.npz, init.npz and metrics.json are.
    num_classes: C.
    image_shape: (H, W, Ch).
    real_subset: `(stream, per_class) -> uint8 [C, per_class, H, W, Ch]` distinct
      random real images per class, seeded by the stream.
    initial_synthetic: `() -> [C, ipc, H, W, Ch]` in [0, 1], the initial synthetic
      set (when init.npz is not there).
  """
  config: Any
  workdir: str
  num_classes: int
  image_shape: tuple
  real_subset: Callable[[int, int], np.ndarray]
  initial_synthetic: Callable[[], Any]


class TestSet(NamedTuple):
  """The real test split and the normalisation the networks are trained with."""
  images: np.ndarray  # uint8 [N, H, W, Ch]
  labels: np.ndarray  # [N]
  mean: Any
  std: Any


def check_available(sets: SetMakers, source: str) -> None:
  """Raises InputError when `source` names a file, or a distilled set of this
  workdir, that does not exist (the other sources are computed)."""
  if is_file_source(source):
    path = source[len(FILE_PREFIX):]
    if not os.path.exists(path):
      raise InputError(f"eval.source file {path} not found")
  elif source == "distilled" and not os.path.exists(os.path.join(sets.workdir,
                                                                 "distilled.npz")):
    raise InputError(f"{os.path.join(sets.workdir, 'distilled.npz')} not found: run "
                     f"--mode=distill first")


def _external_set(sets: SetMakers, path: str):
  """Decoded training images float32 in [0, 1] and labels of an .npz file."""
  with np.load(path) as stored:
    if "images" not in stored or "labels" not in stored:
      raise InputError(f"{path} needs arrays 'images' [N, H, W, C] and 'labels' [N]; "
                       f"has {sorted(stored.files)}")
    images, labels = stored["images"], np.asarray(stored["labels"]).astype(np.int64)
  images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else (
      images.astype(np.float32))
  if images.ndim != 4 or images.shape[1:] != sets.image_shape or len(labels) != len(images):
    raise InputError(f"{path}: images {images.shape} and labels {labels.shape} do not fit "
                     f"this dataset's [N, {', '.join(map(str, sets.image_shape))}]")
  if labels.min() < 0 or labels.max() >= sets.num_classes:
    raise InputError(f"{path}: labels outside [0, {sets.num_classes})")
  factor = int(sets.config.eval.file_factor)
  if factor > 1:  # factor-tiled stored images, as the authors publish them
    images = np.asarray(parameterize.decode(jnp.asarray(images), factor))
    labels = np.repeat(labels, factor**2)
  return images, labels


def _decoded(stored: np.ndarray, factor: int) -> np.ndarray:
  """Stored synthetic images `[C, ipc, H, W, Ch]` -> decoded `[C * ipc * factor^2, H, W, Ch]`."""
  return np.asarray(parameterize.decode(
      jnp.asarray(stored.reshape((-1,) + stored.shape[2:])), factor))


def eval_set(sets: SetMakers, source: str):
  """(images float32 `[N, H, W, C]` in [0, 1], labels `[N]`) of an evaluation source."""
  d = sets.config.distill
  check_available(sets, source)
  if is_file_source(source):
    return _external_set(sets, source[len(FILE_PREFIX):])
  if source == "random_real":  # ipc real images per class: the same storage budget
    images = sets.real_subset(RANDOM_REAL_STREAM, d.ipc).astype(np.float32) / 255.0
    labels = np.repeat(np.arange(sets.num_classes), d.ipc)
    return images.reshape((-1,) + images.shape[2:]), labels
  if source == "distilled":
    stored = np.load(os.path.join(sets.workdir, "distilled.npz"))["images"]
  else:  # init
    path = os.path.join(sets.workdir, "init.npz")
    stored = np.load(path)["images"] if os.path.exists(path) else np.asarray(
        sets.initial_synthetic())
  labels = np.repeat(np.arange(sets.num_classes), d.ipc * d.factor**2)
  return _decoded(stored, d.factor), labels


def check_settings(config, workdir: str, sources) -> dict:
  """This config's eval settings (`wd.eval_settings`); refuses (WorkdirError) to add
  to or report runs of `sources` made with other settings."""
  metrics = wd.read_json(os.path.join(workdir, "metrics.json"), {})
  settings = wd.eval_settings(config.eval)
  refusal = None
  try:
    for source in sources:
      section, entry = _section(source)
      recorded = metrics.get(section, {})
      recorded = recorded.get(entry, {}) if entry else recorded
      for arch in config.eval.archs:
        wd.check_eval_settings(workdir, section, arch, recorded.get(arch, {}), settings)
  except wd.WorkdirError as err:
    refusal = err
  # Every process stops, or none: process 0's reading decides.
  if not distributed.agree(refusal is None):
    raise refusal or wd.WorkdirError("process 0 refused the recorded eval settings")
  return settings


def train_and_test(key: jax.Array, model, images, targets, eval_config, test: TestSet, *,
                   num_steps: int, every: int, partial: checkpoints.TrainingCheckpoint,
                   desc: str, teacher=None, mesh=None) -> list:
  """Trains `model` from scratch on (`images`, `targets`) and returns its test
  accuracy `[[step, accuracy %], ...]` every `every` steps and after the last. A
  stop signal saves the training and the accuracies so far in `partial`, from
  which the next call resumes."""
  curve = []

  def record(step, variables):
    curve.append([step, train_lib.accuracy(model, variables, test.images, test.labels,
                                           test.mean, test.std)])
  resume, after_chunk = partial.hooks(desc, extras=lambda: {"curve": curve})

  def resume_with_curve(fresh):
    resumed = resume(fresh)
    if resumed is not None:  # the test accuracies it recorded before
      curve.extend(partial.restore(fresh)[1]["curve"])
    return resumed
  train_lib.train_classifier(
      key, model, images, targets, eval_config, num_steps=num_steps, mean=test.mean,
      std=test.std, teacher=teacher, desc=desc, mesh=mesh, checkpoint_every=every,
      on_checkpoint=record, resume=resume_with_curve, after_chunk=after_chunk)
  partial.remove()
  return curve


def evaluate(sets: SetMakers, source: str, *, make_model: Callable[[str], Any],
             test: TestSet, key: jax.Array, teacher=None, mesh=None) -> dict:
  """Trains `eval.num_eval` networks per architecture (`make_model(arch)`) on
  `source`'s set, run r from `fold_in(key, r)`; appends each run to metrics.json as
  it finishes and returns the source's section."""
  config = sets.config
  cfg = config.eval
  section, entry = _section(source)
  images, labels = eval_set(sets, source)
  metrics = wd.read_json(os.path.join(sets.workdir, "metrics.json"), {})
  results = dict(metrics.get(section, {}))
  results = dict(results.get(entry, {})) if entry else results
  num_steps = eval_steps(config, sets.num_classes)
  settings = check_settings(config, sets.workdir, [source])
  every = checkpoint_steps(config, sets.num_classes)
  targets = jax.nn.one_hot(jnp.asarray(labels), sets.num_classes)
  for arch in cfg.archs:
    model = make_model(arch)
    done = results.get(arch, {})
    runs = list(done.get("runs", []))
    curves = list(done.get("checkpoints", []))
    for repeat in range(distributed.agree(len(runs)), cfg.num_eval):
      name = f"{section}{'_' + entry if entry else ''}_{arch}_{repeat}"
      curve = train_and_test(
          jax.random.fold_in(key, repeat), model, jnp.asarray(images), targets, cfg, test,
          num_steps=num_steps, every=every, teacher=teacher, mesh=mesh,
          partial=checkpoints.TrainingCheckpoint(os.path.join(sets.workdir, "partial", name)),
          desc=f"eval {source} {arch} {repeat + 1}/{cfg.num_eval}")
      runs.append(curve[-1][1])
      curves.append(curve)
      results[arch] = run_summary(runs, curves, num_steps, every, settings)
      if entry:
        stored = dict(wd.read_json(os.path.join(sets.workdir, "metrics.json"), {}).get(
            section, {}))
        wd.update_metrics(sets.workdir, **{section: {**stored, entry: results}})
      else:
        wd.update_metrics(sets.workdir, **{section: results})  # resumable per run
      print(f"[eval] {source} {arch} run {repeat + 1}: {curve[-1][1]:.2f}% (best of "
            f"{len(curve)} checkpoints {max(a for _, a in curve):.2f}%)", flush=True)
  return results


def run_summary(runs: list, curves: list, num_steps: int, every: int, settings: dict) -> dict:
  """metrics.json's entry of one source and architecture.

  `mean`/`std`/`runs`: the final test accuracy of each run (our headline);
  `best`: per run the best test accuracy over its checkpoints (every `every` steps
  and the last), the statistic the release reports (selected on the test set);
  `checkpoints`: per run its `[step, accuracy]` pairs."""
  bests = [max(a for _, a in curve) for curve in curves if curve]
  return {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs,
          "best": {"mean": float(np.mean(bests)), "std": float(np.std(bests)),
                   "runs": bests} if len(bests) == len(runs) else None,
          "checkpoints": curves, "checkpoint_every": every, "steps": num_steps,
          "settings": settings}


def result_text(result: dict | None) -> str:
  """``73.10 +- 0.32 (n=3; best of checkpoints 74.05)`` or ``-``."""
  if not result or not result.get("runs"):
    return "-"
  text = f"{result['mean']:.2f} +- {result['std']:.2f} (n={len(result['runs'])}"
  best = result.get("best")
  return text + (f"; best of checkpoints {best['mean']:.2f})" if best else ")")


def missing_runs(config, metrics: dict, source: str) -> bool:
  """True when `source` has fewer than `eval.num_eval` runs for some architecture."""
  section, entry = _section(source)
  done = metrics.get(section, {})
  done = done.get(entry, {}) if entry else done
  return any(len(done.get(arch, {}).get("runs", [])) < config.eval.num_eval
             for arch in config.eval.archs)


def summary_table(metrics: dict) -> str:
  """Markdown table of every evaluated source and architecture ('' when none)."""
  archs = sorted({a for s in EVAL_SOURCES.values() for a in metrics.get(s, {})})
  if not archs:
    return ""
  lines = ["Test accuracy (%): final, mean +- std over runs; then the mean of each run's "
           "best checkpoint (the release's statistic, selected on the test set).",
           "",
           "| arch | NCFM distilled | random real (baseline) | initial set (baseline) |",
           "| --- | --- | --- | --- |"]
  for arch in archs:
    cells = [result_text(metrics.get(section, {}).get(arch))
             for section in EVAL_SOURCES.values()]
    lines.append(f"| {arch} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def print_summary(metrics: dict) -> None:
  """The evaluation table and the distillation's speed, as the CLI ends."""
  table = summary_table(metrics)
  if table:
    print("\n" + table)
  if "distill" in metrics:
    dm = metrics["distill"]
    print(f"\ndistill: {dm['steps']} steps, {dm['seconds_per_step']:.3f} s/step, "
          f"final loss (mean of the last 10 steps) {dm['final_loss']:.2f}")
