"""The paper, cell by cell: ``python -m ncfm_jax.reproduce --cells=... --out=DIR``.

(Over 400 lines: cell parsing, budgets, the device estimate and table.md are one
CLI; the estimate could move to its own module at the next change.)

A cell is ``dataset:ipc=N`` (e.g. ``cifar10:ipc=10``), the run of the config
``configs/<dataset>.py:ipc=N`` (further config arguments may follow the ipc:
``fashion_mnist:ipc=10,quick``; the cell's ipc wins over a preset's). Each cell
is one ``python -m ncfm_jax.main`` run in ``DIR/<cell>`` (`ncfm_jax.grid`): the
pool, distillation at the release's budget, then evaluation with the paper's
protocol: `--num-eval` networks (the paper: 10) trained from scratch on the
distilled set, ConvNet, and with `--cross-arch` also AlexNet, VGG-11 and
ResNet-18 (paper Table 4: trained on the ConvNet-distilled set). The
random-real and initial-set baselines are not run.

``--fraction=F`` runs the fraction F of the cell's distillation steps,
pretraining epochs (or steps) and evaluation epochs (or steps), each rounded,
at least 1; the cell's workdir is then ``DIR/<cell>_f<F>``. Arguments the
driver does not know, ``--config.x.y=v``, are passed to every cell's CLI run
(e.g. ``--config.data.data_dir=...``; an override that changes what a finished
workdir computed is refused there by the CLI: use another ``--out``).

Before running, it prints an estimate of each cell's time on this device
(``--estimate-only``: and stops): a child process times a few distillation,
pool-training and evaluation-training steps of that cell's shapes on random
data, and the steps and compilations are extrapolated to the cell's budget
(`extrapolate`). After every cell it rewrites ``DIR/table.md`` from every cell
in DIR: the paper's value (`PAPER`, `PAPER_NO_CURATION`, `PAPER_CROSS_ARCH`),
ours (mean +- std over the evaluation runs), the budget used, the device and
the wall time. Re-running resumes: finished cells are read back, an interrupted
one resumes from its workdir's checkpoints, and a cell rerun with more
evaluation (``--cross-arch``, a larger ``--num-eval``) reuses its pool and
distilled set and trains only the networks it lacks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
from absl import flags as absl_flags
from ml_collections import config_flags

from ncfm_jax import allocator
from ncfm_jax import config_lib
from ncfm_jax import evaluation
from ncfm_jax import grid
from ncfm_jax.errors import InputError
from ncfm_jax.progress import format_seconds

TABLE = "table.md"
_SIDECAR = "reproduce.json"  # in a cell's workdir: its budget, device, wall time, estimate
_ROW_MARKER = "REPRODUCE_ROW "
CROSS_ARCHS = ("convnet", "alexnet", "vgg11", "resnet18")
ARCH_NAMES = {"convnet": "ConvNet", "alexnet": "AlexNet", "vgg11": "VGG-11",
              "resnet18": "ResNet-18"}
DEFAULT_NUM_EVAL = 10  # the paper: "All experiments were conducted with 10 evaluations"


class Reported(NamedTuple):
  """A published accuracy, mean +- std (%)."""
  mean: float
  std: float | None = None

  def __str__(self) -> str:
    return f"{self.mean:.1f}" + (f" +- {self.std:.1f}" if self.std is not None else "")


class DatasetInfo(NamedTuple):
  """What a cell's dataset is: its paper ipcs and table, and sizes for the estimate."""
  ipcs: tuple[int, ...]
  num_classes: int
  train_images: int  # of the full training split (ImageNet subsets: about)
  table: str | None  # the paper's table holding its ConvNet values


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo((1, 10, 50), 10, 50_000, "Table 1"),
    "cifar100": DatasetInfo((1, 10, 50), 100, 50_000, "Table 1"),
    "tinyimagenet": DatasetInfo((1, 10, 50), 200, 100_000, "Table 1"),
    "imagenette": DatasetInfo((1, 10), 10, 9_469, "Table 2"),
    "imagewoof": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imagefruit": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imagemeow": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imagesquawk": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "imageyellow": DatasetInfo((1, 10), 10, 13_000, "Table 2"),
    "fashion_mnist": DatasetInfo((1, 10, 50), 10, 60_000, None),
}
_CHANNELS = {"fashion_mnist": 1}  # every other dataset: 3

# NCFM with a ConvNet, the paper's Table 1 (CIFAR-10/100, Tiny ImageNet at 64 px)
# and Table 2 (ImageNet subsets at 128 px): test accuracy (%), mean +- std.
PAPER: dict[str, dict[int, Reported]] = {
    "cifar10": {1: Reported(49.5, 0.3), 10: Reported(71.8, 0.3), 50: Reported(77.4, 0.3)},
    "cifar100": {1: Reported(34.4, 0.5), 10: Reported(48.7, 0.3), 50: Reported(54.7, 0.2)},
    "tinyimagenet": {1: Reported(18.2, 0.5), 10: Reported(26.8, 0.6),
                     50: Reported(29.6, 0.5)},
    "imagenette": {1: Reported(53.4, 1.6), 10: Reported(77.6, 1.0)},
    "imagewoof": {1: Reported(27.2, 1.1), 10: Reported(48.4, 1.3)},
    "imagefruit": {1: Reported(29.2, 0.7), 10: Reported(44.8, 1.5)},
    "imagemeow": {1: Reported(34.6, 0.7), 10: Reported(58.2, 1.2)},
    "imagesquawk": {1: Reported(41.6, 1.2), 10: Reported(72.8, 0.9)},
    "imageyellow": {1: Reported(46.6, 1.5), 10: Reported(74.2, 1.4)},
}
# The paper's Table 5 (NCFM with psi, "without additional data curation steps
# (such as fine-tuning or soft label integration)"): the cells it lists.
PAPER_NO_CURATION: dict[str, dict[int, Reported]] = {
    "cifar10": {10: Reported(68.9), 50: Reported(77.4)},
    "cifar100": {10: Reported(48.7), 50: Reported(54.4)},
    "tinyimagenet": {1: Reported(12.0), 10: Reported(24.3), 50: Reported(26.5)},
    "imagefruit": {10: Reported(41.4)},
    "imagemeow": {10: Reported(54.4)},
    "imagesquawk": {10: Reported(70.8)},
    "imageyellow": {10: Reported(69.2)},
}
# The paper's Table 4: CIFAR-10 distilled with ConvNet-3, networks of each
# architecture trained on it.
PAPER_CROSS_ARCH: dict[str, dict[int, dict[str, Reported]]] = {
    "cifar10": {
        10: {"convnet": Reported(71.8, 0.3), "alexnet": Reported(67.9, 0.5),
             "vgg11": Reported(68.0, 0.3), "resnet18": Reported(67.7, 0.5)},
        50: {"convnet": Reported(77.4, 0.3), "alexnet": Reported(75.5, 0.3),
             "vgg11": Reported(75.5, 0.3), "resnet18": Reported(73.8, 0.2)},
    },
}


# --------------------------------------------------------------------------
# Cells and their configs.


class CellSpec(NamedTuple):
  """One cell of ``--cells``: dataset, ipc and further config arguments."""
  dataset: str
  ipc: int
  extra: tuple[str, ...] = ()  # config arguments after the ipc, e.g. ("tiny",)

  @property
  def config_spec(self) -> str:
    """The CLI's ``--config``: ``configs/<dataset>.py:ipc=N[,extra]``."""
    return f"configs/{self.dataset}.py:" + ",".join((f"ipc={self.ipc}", *self.extra))

  def name(self, fraction: float) -> str:
    """Its workdir: ``cifar10_ipc10``, ``fashion_mnist_ipc1_tiny_f0.01``."""
    extra = "".join("_" + re.sub(r"[^A-Za-z0-9.]", "", arg) for arg in self.extra)
    return f"{self.dataset}_ipc{self.ipc}{extra}" + (f"_f{fraction:g}" if fraction != 1 else "")


def parse_cells(text: str) -> list[CellSpec]:
  """``"cifar10:ipc=10,cifar100:ipc=50"`` -> cells; an item without a ``:``
  continues the cell before it (``"fashion_mnist:ipc=1,tiny"``).

  Raises:
    InputError: a malformed cell, an unknown dataset, an ipc the paper has not,
      or a repeated cell; one line naming it and what is valid.
  """
  groups: list[list[str]] = []
  for item in (i.strip() for i in text.split(",")):
    if not item:
      continue
    if ":" in item or not groups:
      groups.append([item])
    else:
      groups[-1].append(item)
  if not groups:
    raise InputError("--cells is empty; e.g. --cells=cifar10:ipc=10,cifar100:ipc=50")
  cells = []
  for dataset_arg, *rest in groups:
    dataset, _, first = dataset_arg.partition(":")
    args = [first, *rest] if first else rest
    ipcs = [a for a in args if a.startswith("ipc=")]
    where = f"{dataset}:{','.join(args)}" if args else dataset
    if dataset not in DATASETS:
      raise InputError(f"--cells: unknown dataset {dataset!r} in {where!r}; "
                       f"valid: {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    valid = ", ".join(map(str, info.ipcs))
    if len(ipcs) != 1 or not ipcs[0][len("ipc="):].isdigit():
      raise InputError(f"--cells: {where!r} needs one ipc=N, e.g. {dataset}:ipc={info.ipcs[-1]}")
    ipc = int(ipcs[0][len("ipc="):])
    if ipc not in info.ipcs:
      raise InputError(f"--cells: {dataset} has no paper cell at ipc={ipc}; valid ipc: {valid}")
    cells.append(CellSpec(dataset, ipc, tuple(a for a in args if not a.startswith("ipc="))))
  seen = set()
  for cell in cells:
    if cell in seen:
      raise InputError(f"--cells: {cell.config_spec} is listed twice")
    seen.add(cell)
  return cells


def _one_line(text: str) -> str:
  """The last line of an error text (a traceback's is the error), without its class."""
  lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
  return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1] if lines else text)


def load_config(spec: str, flags: Sequence[str]) -> ml_collections.ConfigDict:
  """The config the CLI builds from ``--config=spec`` and the ``--config.x=v`` `flags`.

  Raises:
    InputError: a config argument or an override the CLI would refuse (one line).
  """
  try:
    path = config_lib.resolve_config(spec)
  except FileNotFoundError as err:
    raise InputError(str(err)) from err
  argv = ["reproduce", f"--config={path}", *flags]
  values = absl_flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "the cell's config",
                                           flag_values=values, sys_argv=argv)
  try:
    values(argv)
    return holder.value
  except absl_flags.Error as err:
    raise InputError(f"{spec}: {_one_line(str(err))}") from err
  except (AttributeError, KeyError, TypeError, ValueError) as err:  # a --config.x override
    text = str(err).replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    if len(text) > 1 and text[0] == text[-1] == "'":  # KeyError's repr-quoted text
      text = text[1:-1]
    raise InputError(f"{spec}: bad config override: {text}") from err


def num_classes(config, dataset: str) -> int:
  """Classes of the cell's run: ``data.classes`` when set, else the dataset's."""
  classes = config.data.classes
  return len(classes) if classes else DATASETS[dataset].num_classes


def train_images(config, dataset: str) -> int:
  """The training images of the run, from the dataset's size (about, for ImageNet
  subsets) and ``data.classes`` / ``data.max_train_per_class``."""
  info = DATASETS[dataset]
  per_class = info.train_images // info.num_classes
  if config.data.max_train_per_class:
    per_class = min(per_class, int(config.data.max_train_per_class))
  return per_class * num_classes(config, dataset)


def budget_flags(config, fraction: float) -> list[str]:
  """Overrides that run the fraction of `config`'s distillation steps, pretraining
  epochs (or ``max_steps``) and evaluation epochs (or ``max_steps``); [] at 1."""
  if fraction == 1:
    return []
  def scaled(n):
    return max(1, round(n * fraction))
  out = [f"--config.distill.steps={scaled(config.distill.steps)}"]
  for section in ("pretrain", "eval"):
    cfg = config[section]
    field = "max_steps" if cfg.max_steps else "epochs"
    out.append(f"--config.{section}.{field}={scaled(cfg[field])}")
  return out


class Plan(NamedTuple):
  """A cell as it will run: its grid cell, its config and the full budget's."""
  spec: CellSpec
  cell: grid.Cell
  config: ml_collections.ConfigDict  # with the fraction applied
  full: ml_collections.ConfigDict  # the same at fraction 1


def plan(spec: CellSpec, *, fraction: float, num_eval: int, cross_arch: bool,
         passthrough: Sequence[str]) -> Plan:
  """The CLI run of `spec`: its flags are the cell's ipc, the evaluation protocol,
  the `passthrough` overrides, then the fraction's budget (of the config those give).

  Raises:
    InputError: from `load_config`.
  """
  archs = CROSS_ARCHS if cross_arch else ("convnet",)
  protocol = [f"--config.distill.ipc={spec.ipc}",
              *(f"--config.eval.archs={arch}" for arch in archs),
              f"--config.eval.num_eval={num_eval}", "--config.eval.baselines=False"]
  flags = [*protocol, *passthrough]
  full = load_config(spec.config_spec, flags)
  flags += budget_flags(full, fraction)
  config = load_config(spec.config_spec, flags) if fraction != 1 else full
  return Plan(spec, grid.Cell(spec.name(fraction), spec.config_spec, tuple(flags)), config, full)


def budget(p: Plan, fraction: float) -> dict[str, Any]:
  """What `p` runs against the full budget, as the table states it."""
  def units(cfg) -> tuple[int, int, str]:
    field = "max_steps" if p.full[cfg].max_steps else "epochs"
    return int(p.config[cfg][field]), int(p.full[cfg][field]), field.replace("max_", "")
  classes = num_classes(p.config, p.spec.dataset)
  return {"fraction": fraction,
          "distill_steps": [int(p.config.distill.steps), int(p.full.distill.steps)],
          "pool": [int(p.config.pretrain.num_models), *units("pretrain")],
          "eval": [*units("eval"), evaluation.eval_steps(p.config, classes)],
          "num_eval": int(p.config.eval.num_eval),
          "archs": list(p.config.eval.archs)}


def budget_text(b: Mapping[str, Any], distilled_steps: int | None = None) -> str:
  """``distill 200/20000 steps; pool 20 x 1/60 epochs; eval 10/1000 epochs (40 steps);
  fraction 0.01`` (`distilled_steps`: the steps the run recorded, if known)."""
  steps, full = b["distill_steps"]
  if distilled_steps is not None:
    steps = distilled_steps
  pool_models, pool_used, pool_full, pool_unit = b["pool"]
  eval_used, eval_full, eval_unit, eval_steps = b["eval"]
  return (f"distill {steps}/{full} steps; pool {pool_models} x {pool_used}/{pool_full} "
          f"{pool_unit}; eval {eval_used}/{eval_full} {eval_unit} ({eval_steps} steps); "
          f"fraction {b['fraction']:g}")


# --------------------------------------------------------------------------
# The estimate.


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

  Distillation: the cell's `distill.make_distill_step` run by
  `execution.make_run_steps` over a pool of one random network, sampling real
  batches from ``batch_real`` random uint8 images per class. Pool and evaluation
  training: `train.make_train_chunk` on a ``2 x batch`` random training set and
  on a random set of the distilled set's size ``[C * ipc * factor^2, H, W, Ch]``.
  Each is one first call of `steps` steps (compiles) and one timed call.

  Returns:
    ``{"pretrain": s, "distill": s, "eval": {arch: s}}`` per step, and the
    same under ``"compile"``: seconds of compilation (see `_seconds_per_step`).
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
  size, channels = int(config.data.image_size), _CHANNELS.get(dataset, 3)
  shape = (size, size, channels)
  mean, std = (0.5,) * channels, (0.25,) * channels
  m = config.model

  def make(arch):
    return models.get_model(arch, classes, width=m.width, depth=m.depth, norm=m.norm,
                            image_size=size, channels=channels)

  rng = np.random.default_rng(0)
  d = config.distill.copy_and_resolve_references()
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
  return {**pick(0), "compile": pick(1)}


def _device() -> str:
  """This process's first accelerator (initialises the backend: child processes only)."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"cpu ({os.cpu_count()} cores)"
  count = jax.device_count()
  return f"{device.platform}: {device.device_kind}" + (f" x{count}" if count > 1 else "")


def _measure_child(plans: Sequence[Plan], steps: int) -> None:
  """The child process's part: a row with the device, then one per plan measured."""
  print(_ROW_MARKER + json.dumps({"device": _device()}), flush=True)
  for p in plans if steps else []:
    row = {"cell": p.cell.name, "seconds": measure(p.config, p.spec.dataset, steps)}
    print(_ROW_MARKER + json.dumps(row), flush=True)


def run_measurement(argv: Sequence[str], names: Sequence[str], steps: int
                    ) -> tuple[str, dict[str, dict], str | None]:
  """Runs `_measure_child` for the cells `names` of the command line `argv` in a
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
  rows = [json.loads(line[len(_ROW_MARKER):]) for line in done.stdout.splitlines()
          if line.startswith(_ROW_MARKER)]
  device = rows[0]["device"] if rows else "unknown device"
  seconds = {row["cell"]: row["seconds"] for row in rows[1:]}
  failure = None
  if done.returncode:
    failure = _one_line(done.stderr or done.stdout or f"exit {done.returncode}")
  return device, seconds, failure


def estimate_line(p: Plan, seconds: Mapping[str, Any], parts: Mapping[str, float]) -> str:
  """``cifar10_ipc10: pool 20 x 11700 steps x 0.012 s = 46m48s; ...; total ...``."""
  c = p.config
  pool_steps = parts["pool"] / max(c.pretrain.num_models * seconds["pretrain"], 1e-12)
  eval_steps = evaluation.eval_steps(c, num_classes(c, p.spec.dataset))
  items = [f"pool {c.pretrain.num_models} x {pool_steps:.0f} steps x "
           f"{seconds['pretrain']:.3g} s = {format_seconds(parts['pool'])}",
           f"distill {c.distill.steps} steps x {seconds['distill']:.3g} s = "
           f"{format_seconds(parts['distill'])}"]
  items += [f"eval {arch} {c.eval.num_eval} x {eval_steps} steps x "
            f"{seconds['eval'][arch]:.3g} s = {format_seconds(parts['eval ' + arch])}"
            for arch in c.eval.archs]
  if "compile" in parts:
    runs = c.pretrain.num_models + 1 + c.eval.num_eval * len(c.eval.archs)
    items.append(f"compilation x {runs} = {format_seconds(parts['compile'])}")
  return f"{p.cell.name}: " + "; ".join(items) + (
      f"; total {format_seconds(sum(parts.values()))}")


# --------------------------------------------------------------------------
# The table.


def _ours(metrics: Mapping[str, Any], arch: str) -> str:
  result = metrics.get("eval", {}).get(arch)
  if not result or not result.get("runs"):
    return "-"
  return f"{result['mean']:.1f} +- {result['std']:.1f} (n={len(result['runs'])})"


def tables(results: Mapping[str, dict], sidecars: Mapping[str, dict], header: str) -> str:
  """``table.md``: a ConvNet row per cell, and a cross-architecture table for cells
  evaluated on more than ConvNet.

  Args:
    results: cell name -> its metrics.json (``results.json``).
    sidecars: cell name -> its ``reproduce.json`` (dataset, ipc, budget, device,
      wall and estimated seconds); cells without one are not listed.
    header: the first lines (command, date).
  """
  def order(name):
    s = sidecars[name]
    return (list(DATASETS).index(s["dataset"]), s["ipc"], name)
  names = sorted((n for n in sidecars if "dataset" in sidecars[n]), key=order)
  lines = [header, "",
           "ConvNet test accuracy (%): the paper's (Table 1: CIFAR-10/100, Tiny ImageNet; "
           "Table 2: ImageNet subsets; Table 5: without data curation such as soft labels) "
           "and ours, mean +- std over n networks trained from scratch on the distilled set "
           "(hard labels). Budget: what ran against the release's.", "",
           "| cell | paper | paper, Table 5 | ours | budget | device | wall time |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  cross = []
  for name in names:
    s, metrics = sidecars[name], results.get(name, {})
    dataset, ipc = s["dataset"], s["ipc"]
    paper = PAPER.get(dataset, {}).get(ipc)
    no_curation = PAPER_NO_CURATION.get(dataset, {}).get(ipc)
    wall = format_seconds(s["wall_seconds"]) if s.get("wall_seconds") else "-"
    if s.get("estimate_seconds"):
      wall += f" (estimate {format_seconds(s['estimate_seconds'])})"
    distilled = metrics.get("distill", {}).get("steps")
    lines.append(f"| {name} | {paper or '-'} | {no_curation or '-'} | "
                 f"{_ours(metrics, 'convnet')} | {budget_text(s['budget'], distilled)} | "
                 f"{s.get('device', '-')} | {wall} |")
    if set(metrics.get("eval", {})) - {"convnet"}:
      cross.append(name)
  if cross:
    lines += ["", "Cross-architecture (paper Table 4: CIFAR-10, ConvNet-distilled): ours "
              "(paper), networks of each architecture trained on the ConvNet-distilled set.",
              "", "| cell | " + " | ".join(ARCH_NAMES[a] for a in CROSS_ARCHS) + " |",
              "| --- |" + " --- |" * len(CROSS_ARCHS)]
    for name in cross:
      s = sidecars[name]
      paper = PAPER_CROSS_ARCH.get(s["dataset"], {}).get(s["ipc"], {})
      lines.append(f"| {name} | " + " | ".join(
          f"{_ours(results[name], arch)} ({paper[arch] if arch in paper else '-'})"
          for arch in CROSS_ARCHS) + " |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Command line.


def _sidecar_path(out: str, name: str) -> str:
  return os.path.join(out, name, _SIDECAR)


def _publish(out: str, header: str) -> str:
  """Rewrites ``out/table.md`` from ``results.json`` and the cells' sidecars."""
  results = grid.read_json(os.path.join(out, grid.RESULTS), {})
  names = [n for n in sorted(os.listdir(out)) if os.path.isfile(_sidecar_path(out, n))]
  text = tables(results, {n: grid.read_json(_sidecar_path(out, n), {}) for n in names}, header)
  with open(os.path.join(out, TABLE), "w") as f:
    f.write(text)
  return text


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m ncfm_jax.reproduce", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cells", required=True,
                      help="comma list of dataset:ipc=N, e.g. cifar10:ipc=10,cifar100:ipc=50")
  parser.add_argument("--out", required=True, help="directory of the cells (resumable)")
  parser.add_argument("--fraction", type=float, default=1.0,
                      help="of the distillation steps, pretraining and evaluation epochs")
  parser.add_argument("--num-eval", type=int, default=DEFAULT_NUM_EVAL,
                      help="networks trained per architecture (the paper: 10)")
  parser.add_argument("--cross-arch", action="store_true",
                      help="also evaluate AlexNet, VGG-11, ResNet-18 (paper Table 4)")
  parser.add_argument("--estimate-steps", type=int, default=2,
                      help="steps per timed call of the estimate (0: no estimate)")
  parser.add_argument("--estimate-only", action="store_true",
                      help="print the estimate and stop")
  parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the cells of `argv` (default ``sys.argv[1:]``); 0 when every cell finished,
  1 when one failed, 2 for bad arguments (one line)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args, passthrough = _parser().parse_known_args(argv)
  try:
    unknown = [a for a in passthrough if not a.startswith("--config.")]
    if unknown:
      raise InputError(f"unknown argument {unknown[0]!r} (config overrides are "
                       f"--config.SECTION.FIELD=VALUE)")
    if not 0 < args.fraction <= 1:
      raise InputError(f"--fraction must be in (0, 1], got {args.fraction:g}")
    if args.num_eval < 1 or args.estimate_steps < 0:
      raise InputError("--num-eval must be >= 1 and --estimate-steps >= 0")
    plans = [plan(spec, fraction=args.fraction, num_eval=args.num_eval,
                  cross_arch=args.cross_arch, passthrough=passthrough)
             for spec in parse_cells(args.cells)]
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  if args.measure is not None:  # the estimate's child process
    wanted = args.measure.split(",")
    _measure_child([p for p in plans if p.cell.name in wanted], args.estimate_steps)
    return 0

  out = args.out
  os.makedirs(out, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  header = (f"# NCFM reproduction\n\nLast command: `python -m ncfm_jax.reproduce "
            f"{' '.join(argv)}`, {now:%Y-%m-%d %H:%M} UTC")
  pending = {p.cell.name for p in plans if not grid.finished(p.cell, out)}
  for p in plans:
    if p.cell.name not in pending:
      print(f"[reproduce] {p.cell.name}: finished earlier, read back", flush=True)
  measured = [p for p in plans if args.estimate_only or p.cell.name in pending]
  device, estimates = _estimate(args, passthrough, measured) if measured else (
      "unknown device", {})
  if args.estimate_only:
    return 0

  failures = []
  for p in plans:
    if p.cell.name in pending:
      _run_recorded(p, out, budget(p, args.fraction), device, estimates.get(p.cell.name),
                    failures)
    else:
      failures += grid.run_grid([p.cell], out, prefix="[reproduce]").failures
    text = _publish(out, header)
  print("\n" + text, flush=True)
  if failures:
    print(f"error: {len(failures)} of {len(plans)} cells failed", file=sys.stderr)
    return 1
  return 0


def _estimate(args: argparse.Namespace, passthrough: Sequence[str], plans: Sequence[Plan]
              ) -> tuple[str, dict[str, float]]:
  """Prints the estimate of `plans` (`run_measurement`, `extrapolate`); returns the
  device and cell name -> estimated seconds."""
  child_argv = [f"--cells={args.cells}", f"--out={args.out}", f"--fraction={args.fraction!r}",
                f"--num-eval={args.num_eval}", *(["--cross-arch"] if args.cross_arch else []),
                *passthrough]
  device, seconds, failure = run_measurement(child_argv, [p.cell.name for p in plans],
                                             args.estimate_steps)
  if failure:
    print(f"[reproduce] the estimate's measurement failed: {failure}", flush=True)
  if seconds:
    print(f"[reproduce] estimate on this device ({device}), extrapolated from "
          f"{args.estimate_steps} timed steps of each phase on random data of each "
          f"cell's shapes (not counted: data loading, checkpoints, test accuracy):",
          flush=True)
  estimates = {}
  for p in plans:
    if p.cell.name in seconds:
      parts = extrapolate(p.config, p.spec.dataset, seconds[p.cell.name])
      estimates[p.cell.name] = sum(parts.values())
      print("  " + estimate_line(p, seconds[p.cell.name], parts), flush=True)
  return device, estimates


def _run_recorded(p: Plan, out: str, planned: dict, device: str, estimate: float | None,
                  failures: list[str]) -> None:
  """Runs `p` (`grid.run_grid`), its sidecar recording the budget, the devices and
  the wall time of every attempt (an interrupted one's too)."""
  path = _sidecar_path(out, p.cell.name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sidecar = grid.read_json(path, {})
  devices = [d for d in sidecar.get("device", "").split(" + ") if d]
  sidecar.update(dataset=p.spec.dataset, ipc=p.spec.ipc, budget=planned,
                 device=" + ".join(devices + ([device] if device not in devices else [])))
  if estimate is not None:
    sidecar["estimate_seconds"] = estimate
  grid.write_json(path, sidecar)
  start = time.time()
  try:
    failures += grid.run_grid([p.cell], out, prefix="[reproduce]").failures
  finally:
    sidecar["wall_seconds"] = sidecar.get("wall_seconds", 0.0) + time.time() - start
    grid.write_json(path, sidecar)


if __name__ == "__main__":
  sys.exit(main())
