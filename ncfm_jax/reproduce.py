"""The paper, cell by cell: ``python -m ncfm_jax.reproduce --cells=... [--out=DIR]``.

A cell is ``dataset:ipc=N`` (e.g. ``cifar10:ipc=10``), the run of the config
``configs/<dataset>.py:ipc=N`` (further config arguments may follow the ipc:
``fashion_mnist:ipc=10,quick``; the cell's ipc wins over a preset's). Each cell
is one ``python -m ncfm_jax.main`` run in ``DIR/<cell>`` (`ncfm_jax.grid`; DIR
defaults to ``workdirs/reproduce``): the
pool, distillation at the release's budget, then evaluation with the paper's
protocol: `--num-eval` networks (the paper: 10) trained from scratch on the
distilled set, ConvNet, and with `--cross-arch` also AlexNet, VGG-11 and
ResNet-18 (paper Table 4: trained on the ConvNet-distilled set). The
random-real and initial-set baselines are not run. ``--as-released`` also turns on
the release's behaviours that the paper configs change on purpose (`AS_RELEASED`),
in workdirs ``DIR/<cell>_released``, so one table shows the paper, the release as
shipped and ours.

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
(`ncfm_jax.estimate`). After every cell it rewrites ``DIR/table.md`` from every
cell in DIR (`paper.tables`): the paper's value (`ncfm_jax.paper`),
ours (mean +- std over the evaluation runs: the final accuracy, and the best over
each run's checkpoints as the release reports it), the budget used, the device and
the wall time. Re-running resumes: finished cells are read back, an interrupted
one resumes from its workdir's checkpoints, and a cell rerun with more
evaluation (``--cross-arch``, a larger ``--num-eval``) reuses its pool and
distilled set and trains only the networks it lacks.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
from absl import flags as absl_flags
from ml_collections import config_flags

from ncfm_jax import config_lib
from ncfm_jax import estimate
from ncfm_jax import evaluation
from ncfm_jax import grid
from ncfm_jax import paper
from ncfm_jax import workdir as wd
from ncfm_jax.errors import InputError
from ncfm_jax.errors import config_override_message
from ncfm_jax.errors import one_line
from ncfm_jax.paper import CROSS_ARCHS, DATASETS, num_classes

TABLE = "table.md"
AS_RELEASED = (
    # The release's behaviours that the paper configs change on purpose (docs/results.md,
    # "Differences from the release"), for `--as-released`.
    "--config.distill.sampler=gaussian",  # its yaml: sampling_net False
    "--config.distill.frequency_draw=per_class",  # one draw per class as it loops them
    "--config.distill.real_sampling=first",  # class_sample(c, batch_real): the same images
    "--config.distill.update_mode=per_class",
    "--config.distill.calibration_mode=separate",
)
_SIDECAR = "reproduce.json"  # in a cell's workdir: its budget, device, wall time, estimate
DEFAULT_NUM_EVAL = 10  # the paper: "All experiments were conducted with 10 evaluations"


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
    raise InputError(f"{spec}: {one_line(str(err))}") from err
  except (AttributeError, KeyError, TypeError, ValueError) as err:  # a --config.x override
    raise InputError(f"{spec}: {config_override_message(err, flags)}") from err


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
         passthrough: Sequence[str], as_released: bool = False) -> Plan:
  """The CLI run of `spec`: its flags are the cell's ipc, the evaluation protocol,
  with `as_released` the release's behaviours (`AS_RELEASED`; workdir suffix
  ``_released``), the `passthrough` overrides, then the fraction's budget (of the
  config those give).

  Raises:
    InputError: from `load_config`.
  """
  archs = CROSS_ARCHS if cross_arch else ("convnet",)
  protocol = [f"--config.distill.ipc={spec.ipc}",
              *(f"--config.eval.archs={arch}" for arch in archs),
              f"--config.eval.num_eval={num_eval}", "--config.eval.baselines=False"]
  flags = [*protocol, *(AS_RELEASED if as_released else ()), *passthrough]
  full = load_config(spec.config_spec, flags)
  flags += budget_flags(full, fraction)
  config = load_config(spec.config_spec, flags) if fraction != 1 else full
  name = spec.name(fraction) + ("_released" if as_released else "")
  return Plan(spec, grid.Cell(name, spec.config_spec, tuple(flags)), config, full)


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


# --------------------------------------------------------------------------
# Command line.


def _sidecar_path(out: str, name: str) -> str:
  return os.path.join(out, name, _SIDECAR)


def _publish(out: str, header: str) -> str:
  """Rewrites ``out/table.md`` from ``results.json`` and the cells' sidecars."""
  results = grid.read_json(os.path.join(out, grid.RESULTS), {})
  names = [n for n in sorted(os.listdir(out)) if os.path.isfile(_sidecar_path(out, n))]
  sidecars = {n: grid.read_json(_sidecar_path(out, n), {}) for n in names}
  text = paper.tables(results, sidecars, header)
  with open(os.path.join(out, TABLE), "w") as f:
    f.write(text)
  return text


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m ncfm_jax.reproduce", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cells", required=True,
                      help="comma list of dataset:ipc=N, e.g. cifar10:ipc=10,cifar100:ipc=50")
  parser.add_argument("--out", default=os.path.join(config_lib.DEFAULT_WORKDIRS, "reproduce"),
                      help="directory of the cells (resumable; default workdirs/reproduce)")
  parser.add_argument("--fraction", type=float, default=1.0,
                      help="of the distillation steps, pretraining and evaluation epochs")
  parser.add_argument("--num-eval", type=int, default=DEFAULT_NUM_EVAL,
                      help="networks trained per architecture (the paper: 10)")
  parser.add_argument("--cross-arch", action="store_true",
                      help="also evaluate AlexNet, VGG-11, ResNet-18 (paper Table 4)")
  parser.add_argument("--as-released", action="store_true",
                      help="the release as shipped: psi off, one frequency draw per class, "
                           "the same first batch_real real images every iteration "
                           "(workdirs <cell>_released)")
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
    grid.check_overrides(passthrough)
    if not 0 < args.fraction <= 1:
      raise InputError(f"--fraction must be in (0, 1], got {args.fraction:g}")
    if args.num_eval < 1 or args.estimate_steps < 0:
      raise InputError("--num-eval must be >= 1 and --estimate-steps >= 0")
    wd.check_directory(args.out, "--out")
    plans = [plan(spec, fraction=args.fraction, num_eval=args.num_eval,
                  cross_arch=args.cross_arch, passthrough=passthrough,
                  as_released=args.as_released)
             for spec in parse_cells(args.cells)]
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  if args.measure is not None:  # the estimate's child process
    wanted = args.measure.split(",")
    estimate.measure_child([p for p in plans if p.cell.name in wanted], args.estimate_steps)
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
  """Prints the estimate of `plans` (`estimate.run_measurement`,
  `estimate.extrapolate`); returns the
  device and cell name -> estimated seconds."""
  child_argv = [f"--cells={args.cells}", f"--out={args.out}", f"--fraction={args.fraction!r}",
                f"--num-eval={args.num_eval}", *(["--cross-arch"] if args.cross_arch else []),
                *(["--as-released"] if args.as_released else []),
                *passthrough]
  device, seconds, failure = estimate.run_measurement(child_argv, [p.cell.name for p in plans],
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
      parts = estimate.extrapolate(p.config, p.spec.dataset, seconds[p.cell.name])
      estimates[p.cell.name] = sum(parts.values())
      print("  " + estimate.estimate_line(p, seconds[p.cell.name], parts), flush=True)
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
