"""Compile-time memory plans of the paper's cells: ``python -m ncfm_jax.bench memory``.

For every cell of the paper's Table 3 kind (CIFAR-10 and CIFAR-100 at ipc 1/10/50,
Tiny ImageNet at ipc 1/10/50, Imagenette at ipc 1/10), with the release's real
batch (1024 per class, capped at a class's training images like the pipeline) and
otherwise the cell's config in configs/, the planner (`ncfm_jax.plan`) is asked
for a plan at each budget (default 2 / 8 / 16 / 24 / 40 / 80 GB). Shapes come from
the dataset registry: nothing is loaded. Each candidate plan is compiled once per
cell and reused across the budgets. The figures are XLA's compile-time memory
analysis on the backend this runs on (see `ncfm_jax.plan` for what is counted),
not measured peaks; each row records its ``temp_factor``: run plainly, the CPU
temporaries count once, as on a GPU/TPU; under ``python -m ncfm_jax.allocator``
(tcmalloc, as the pipeline runs on CPU) twice.

By default no candidate is timed (the table needs only the compile-time analysis,
and timing a CPU step at batch_real 500-1024 takes minutes): the plan shown is then
the first fitting candidate in the planner's order (fastest pass policy, largest
block). ``--timed`` times them as a run would.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any, Sequence

import jax

from ncfm_jax import config_lib
from ncfm_jax import plan as plan_lib
from ncfm_jax.bench import common
from ncfm_jax.data import sources
from ncfm_jax.errors import InputError

RELEASE_BATCH_REAL = 1024
BUDGETS_GB = (2, 8, 16, 24, 40, 80)
CELLS = (("cifar10", 1), ("cifar10", 10), ("cifar10", 50),
         ("cifar100", 1), ("cifar100", 10), ("cifar100", 50),
         ("tinyimagenet", 1), ("tinyimagenet", 10), ("tinyimagenet", 50),
         ("imagenette", 1), ("imagenette", 10))


def cell_config(dataset: str, ipc: int, batch_real: int = RELEASE_BATCH_REAL):
  """configs/<dataset>.py at `ipc` with `distill.batch_real` set (not yet capped)."""
  config = config_lib.load_config(f"configs/{dataset}.py:ipc={ipc}")
  config.distill.batch_real = batch_real
  return config


def _parse_cell(text: str) -> tuple[str, int]:
  """``"cifar100:50"`` -> ``("cifar100", 50)``; ValueError when malformed."""
  dataset, sep, ipc = text.partition(":")
  if not dataset or not sep or int(ipc) < 1:
    raise ValueError(text)
  return dataset, int(ipc)


def plan_cell(dataset: str, ipc: int, budgets_gb: Sequence[float], *,
              batch_real: int = RELEASE_BATCH_REAL, timed: bool = False,
              cache_path: str | None = None, log=None) -> dict[str, Any]:
  """One cell's row: its shapes, the unbounded step's planned GB, and per budget
  the chosen plan and its planned GB (or why none fits)."""
  config = cell_config(dataset, ipc, batch_real)
  shape = sources.dataset_shape(config.data)
  d = plan_lib.capped_distill_config(config.distill, [shape.smallest_class],
                                       tag="bench memory")
  spec = plan_lib.make_spec(config, num_classes=shape.num_classes,
                            image_shape=shape.image_shape, train_images=shape.train_images,
                            largest_class=shape.largest_class)
  start = time.perf_counter()
  planner = plan_lib.Planner(spec, d, cache_path=cache_path, log=log)
  unbounded = planner.evaluate(planner.unbounded())
  first_fast = planner.evaluate(planner.policies()[0](shape.num_classes))
  row: dict[str, Any] = {
      "dataset": dataset, "ipc": ipc, "classes": shape.num_classes,
      "image_size": shape.image_shape[0], "batch_real": int(d.batch_real),
      "pool_size": spec.pool_size, "data_on_device": spec.data_on_device,
      # 2 where tcmalloc is preloaded on CPU (as `python -m ncfm_jax.main` does): the
      # temporaries count twice (`plan_lib.temp_factor`).
      "temp_factor": planner.temp_factor,
      "unbounded_gb": unbounded.planned_bytes / plan_lib.GB,
      "unbounded_xla": unbounded.xla,
      "all_classes_default_passes_gb": first_fast.planned_bytes / plan_lib.GB,
      "budgets": {},
  }
  for gb in budgets_gb:
    try:
      choice = planner.choose(int(gb * plan_lib.GB), timed=timed)
    except InputError as err:
      row["budgets"][f"{gb:g}"] = {"planned_gb": None, "error": str(err)}
      continue
    row["budgets"][f"{gb:g}"] = {
        "planned_gb": choice.footprint.planned_bytes / plan_lib.GB,
        "plan": choice.plan._asdict(), "short": choice.plan.short(shape.num_classes),
        "xla": choice.footprint.xla, "peak_piece": choice.footprint.peak_piece,
        "candidates": choice.candidates}
  row["compiles"], row["compile_seconds"] = planner.compile_stats()
  row["seconds"] = time.perf_counter() - start
  return row


def markdown(rows: Sequence[dict[str, Any]], budgets_gb: Sequence[float]) -> str:
  """The table: one row per cell, planned GB (and the plan, `Plan.short`) per budget."""
  head = ["cell", "B", "unbounded GB", "all classes, default passes GB"]
  head += [f"budget {gb:g} GB" for gb in budgets_gb]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [f"{r['dataset']} ipc {r['ipc']}", str(r["batch_real"]),
             f"{r['unbounded_gb']:.1f}", f"{r['all_classes_default_passes_gb']:.1f}"]
    for gb in budgets_gb:
      b = r["budgets"][f"{gb:g}"]
      short = (None if b["planned_gb"] is None
               else plan_lib.Plan(**b["plan"]).short(r["classes"]))
      cells.append("does not fit" if short is None else f"{b['planned_gb']:.2f} ({short})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--cells", default=",".join(f"{d}:{i}" for d, i in CELLS),
                      help="comma list of dataset:ipc (configs/<dataset>.py)")
  parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS_GB),
                      help="comma list of budgets in GB (2^30 bytes)")
  parser.add_argument("--batch-real", type=int, default=RELEASE_BATCH_REAL,
                      help="real images per class (capped at the smallest class)")
  parser.add_argument("--timed", action="store_true",
                      help="time the fitting candidates (minutes per cell on CPU)")
  parser.add_argument("--cache", default=None,
                      help="plan cache file (default: the planner's; '' for none)")
  parser.add_argument("--json", default=None, help="write the rows to this JSON file")


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  budgets = common.parse_list(args.budgets, float, "--budgets", minimum=0.001)
  cells = common.parse_list(args.cells, _parse_cell, "--cells", kind="dataset:ipc")
  for dataset, ipc in cells:  # a config that is not there: refused before any work
    try:
      cell_config(dataset, ipc)
    except FileNotFoundError as err:
      raise InputError(f"--cells={dataset}:{ipc}: {err}") from None
  device = jax.devices()[0]
  print(f"# memory plans: XLA's compile-time analysis on {device.platform} "
        f"({device.device_kind}), jax {jax.__version__}; batch_real {args.batch_real} "
        f"capped at the smallest class; {'timed' if args.timed else 'untimed'} choice",
        flush=True)
  log = lambda line: print("  " + line, file=sys.stderr, flush=True)
  rows = []
  for dataset, ipc in cells:
    row = plan_cell(dataset, ipc, budgets, batch_real=args.batch_real, timed=args.timed,
                    cache_path=args.cache, log=log)
    row.update(device=f"{device.platform}: {device.device_kind}", jax=jax.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               load_avg_1m=os.getloadavg()[0], timed=args.timed)
    rows.append(row)
    print(f"  {dataset} ipc {ipc}: unbounded {row['unbounded_gb']:.1f} GB; "
          f"{row['compiles']} compiles in {row['compile_seconds']:.0f}s", flush=True)
    if args.json:  # after every cell: a long run keeps what it has
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
  print()
  print(markdown(rows, budgets))
  if args.json:
    print(f"rows written to {args.json}")
  return rows

