"""The full jitted distillation step: ``python -m ncfm_jax.bench step``.

Seconds per step, FLOPs per step (XLA's cost analysis), the achieved FLOP rate
against this device's dense matmul rate, and peak memory, for the workloads of
`WORKLOADS` (the paper's Table 3 settings). Random uint8 images stand in for the
dataset and randomly initialised ConvNets for the pool: the content of either
does not change the cost of a step. The step runs as the pipeline runs it: with
the memory planner's plan (`ncfm_jax.plan`, budget `distill.memory_budget_gb`,
default half the RAM on CPU) through `execution.make_run_steps` (on CPU, class
blocks as a host loop of jitted pieces); ``--plan=off`` runs the config as given
(all classes in one step). Each workload runs in a fresh subprocess (peak memory
is per process), and the planner's trials in a child of it. `scaling` reuses
`Workload`, `setup` and
`distill_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax import execution
from ncfm_jax import models
from ncfm_jax import plan as plan_lib
from ncfm_jax import train as train_lib
from ncfm_jax.bench import common
from ncfm_jax.data import sampling
from ncfm_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Workload:
  """One distillation setting: data shape, ConvNet, synthetic set, real batch."""
  name: str
  classes: int
  image_size: int
  channels: int
  depth: int
  ipc: int
  batch_real: int
  num_freqs: int = 4096
  width: int = 128
  factor: int = 2
  psi: bool = False
  pool_size: int = 2
  images_per_class: int = 300  # of random "real" data to sample from


WORKLOADS = {
    "cifar10_ipc10": Workload("cifar10_ipc10", 10, 32, 3, 3, 10, 256),
    "cifar10_ipc10_psi": Workload("cifar10_ipc10_psi", 10, 32, 3, 3, 10, 256, psi=True),
    "cifar100_ipc50": Workload("cifar100_ipc50", 100, 32, 3, 3, 50, 256),
    "imagenette_ipc10": Workload("imagenette_ipc10", 10, 128, 3, 5, 10, 128),
    # The paper's Table 3 cells at the release's real batch: 1024 per class, capped
    # at the class's 500 training images (launch/gpu_bench.sh).
    "cifar100_ipc10_release": Workload("cifar100_ipc10_release", 100, 32, 3, 3, 10, 500,
                                       images_per_class=500),
    "cifar100_ipc50_release": Workload("cifar100_ipc50_release", 100, 32, 3, 3, 50, 500,
                                       images_per_class=500),
    "tinyimagenet_ipc10_release": Workload("tinyimagenet_ipc10_release", 200, 64, 3, 4, 10,
                                           500, images_per_class=500),
    "tinyimagenet_ipc50_release": Workload("tinyimagenet_ipc50_release", 200, 64, 3, 4, 50,
                                           500, images_per_class=500),
}


def small_variant(workload: Workload) -> Workload:
  """The CPU-sized variant: batch_real 64 per class."""
  return dataclasses.replace(workload, name=workload.name + "_small", batch_real=64,
                             images_per_class=80)


def workload_by_name(name: str) -> Workload:
  """A `WORKLOADS` entry by name; ``X_small`` is `small_variant` of X."""
  base = name[:-len("_small")] if name.endswith("_small") else name
  if base not in WORKLOADS:
    raise InputError(f"unknown workload {name!r}; valid: {sorted(WORKLOADS)} (+ '_small')")
  return small_variant(WORKLOADS[base]) if name != base else WORKLOADS[base]


def distill_config(workload: Workload, **overrides: Any) -> ml_collections.ConfigDict:
  """The ``distill`` config section of `workload`, then `overrides` (any key)."""
  config = config_lib.base_config().distill
  config.ipc = workload.ipc
  config.factor = workload.factor
  config.batch_real = workload.batch_real
  config.num_freqs = workload.num_freqs
  config.sampler = "psi" if workload.psi else "gaussian"
  config.calibration_weight = 1.0
  config.augment = "color_crop_cutout"
  for key, value in overrides.items():
    config[key] = value
  return config


def setup(workload: Workload, config: ml_collections.ConfigDict):
  """``(state, pool, data, step_fn)`` for `workload` with random content
  (`step_fn`: a `distill.DistillStep`).

  data: `sampling.ClassIndexedData` of ``images_per_class`` random uint8
  images per class; pool: ``pool_size`` random (pretrained, current) ConvNet
  pairs; state: synthetic images ``[C, ipc, H, W, Ch]`` uniform in [0, 1).
  """
  model = models.get_model("convnet", workload.classes, width=workload.width,
                           depth=workload.depth, norm="instance",
                           image_size=workload.image_size, channels=workload.channels)
  shape = (workload.image_size, workload.image_size, workload.channels)
  example = jnp.zeros((1,) + shape)
  members = [(train_lib.init_variables(jax.random.PRNGKey(2 * i), model, example),
              train_lib.init_variables(jax.random.PRNGKey(2 * i + 1), model, example))
             for i in range(workload.pool_size)]
  pool = distill.stack_pool(members)
  feature_dim = int(model.apply(members[0][0], example)[0].shape[-1])
  rng = np.random.default_rng(0)
  n = workload.images_per_class
  images = rng.integers(0, 256, (workload.classes * n,) + shape, dtype=np.uint8)
  labels = np.repeat(np.arange(workload.classes), n)
  data = sampling.make_class_indexed(images, labels, workload.classes)
  syn = jax.random.uniform(jax.random.PRNGKey(1), (workload.classes, workload.ipc) + shape)
  state = distill.init_state(jax.random.PRNGKey(0), syn, feature_dim, config)
  mean, std = (0.5,) * workload.channels, (0.25,) * workload.channels
  # The DistillStep, not its .step: a plan's class blocks run through its blocks.
  step_fn = distill.make_distill_step(model, config, mean, std, feature_dim)
  return state, pool, data, step_fn


def flops_per_step(workload: Workload, steps_per_call: int, use_scan: bool,
                   overrides: dict[str, Any], state, pool, data) -> float:
  """FLOPs of ONE step, from XLA's cost analysis of the lowered single step.

  Lowered, not compiled: the same count on every backend (after compilation,
  GPU convolutions become cuDNN calls that the analysis does not count), and
  no extra compile. The single step is analysed because a scan's (or a
  ``lax.map``'s) body is counted once: the step is built unchunked, all classes in
  one step and without ``remat_syn``'s recomputation (not useful work) to count the
  same math whatever the plan. The per-class update is counted as the batched step
  with the same calibration (the same passes; it adds C optimizer updates of the
  images, elementwise work the count leaves out).
  """
  unchunked = distill_config(workload, steps_per_call=steps_per_call, use_scan=use_scan,
                             **dict(overrides, real_chunk=0, syn_chunk=0, freq_chunk=None,
                                    remat_syn=False, class_block=0, update_mode="batched"))
  *_, plain_step = setup(workload, unchunked)
  step = execution.make_run_steps(plain_step, unchunked, 1).jitted(state, data, single_step=True)
  cost = step.lower(state, pool, data).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def workload_spec(workload: Workload, config) -> plan_lib.StepSpec:
  """The planner's view of `workload` (its random training set sits on the device)."""
  full = config_lib.base_config()
  full.model.width, full.model.depth = workload.width, workload.depth
  full.pretrain.num_models = workload.pool_size
  full.distill = config
  return plan_lib.make_spec(
      full, num_classes=workload.classes,
      image_shape=(workload.image_size, workload.image_size, workload.channels),
      train_images=workload.classes * workload.images_per_class,
      largest_class=workload.images_per_class, mean=(0.5,) * workload.channels,
      std=(0.25,) * workload.channels)


def reference_plans(workload: Workload, config) -> dict[str, float]:
  """Planned GB without planning: everything at once (``unbounded``) and all
  classes at once with this backend's default pass sizes."""
  planner = plan_lib.Planner(workload_spec(workload, config), config)
  unbounded = planner.evaluate(planner.unbounded()).planned_bytes
  default = planner.evaluate(planner.policies()[0](workload.classes)).planned_bytes
  return {"unbounded_planned_gb": unbounded / plan_lib.GB,
          "all_classes_default_passes_planned_gb": default / plan_lib.GB}


def _plan_in_child(workload: Workload, config: dict) -> None:
  config = ml_collections.ConfigDict(config)
  plan_lib.choose(workload_spec(workload, config), config)
  reference_plans(workload, config)  # their analyses cached too: no compile in the parent


def planned_config(workload: Workload, config) -> tuple[Any, dict[str, Any]]:
  """`config` with the planner's plan applied, and the row's plan entries.

  Where the planner caches its choices, the candidates are compiled and timed in
  a child process first, so that neither their memory nor their code counts in
  this process's peak; the choice here then comes from the cache.
  """
  if plan_lib.default_cache_path():
    child = multiprocessing.get_context("spawn").Process(
        target=_plan_in_child, args=(workload, config.to_dict()))
    child.start()
    child.join()
  choice = plan_lib.choose(workload_spec(workload, config), config)
  print(choice.summary(), flush=True)
  entries = dict(plan=choice.to_json(),
                 planned_gb=choice.footprint.planned_bytes / plan_lib.GB,
                 **reference_plans(workload, config))
  return choice.plan.apply(config, workload.classes), entries


def measure(workload: Workload, steps_per_call: int, repeats: int, use_scan: bool,
            unroll: int = 1, plan: bool = True, **overrides: Any) -> dict[str, Any]:
  """Times `repeats` calls of `steps_per_call` steps after one warm-up call, with
  the planner's plan (`plan`), else the config as given.

  Returns:
    One row: ``seconds_per_step`` (median, min, max), ``first_call_seconds``
    (compile + one call), ``gflops_per_step``, ``achieved_gflops``,
    ``matmul_gflops``, ``fraction_of_matmul`` (median over the calls of achieved / the
    matmul rate timed right after the call),
    ``peak_memory_mb``, the last step's loss, and ``plan`` / ``planned_gb`` (None
    without planning) with the unplanned steps' planned GB.
  """
  config = distill_config(workload, steps_per_call=steps_per_call,
                          use_scan=use_scan, unroll=unroll, **overrides)
  plan_entries: dict[str, Any] = {"plan": None, "planned_gb": None}
  if plan:
    config, plan_entries = planned_config(workload, config)
  state, pool, data, step_fn = setup(workload, config)
  flops = flops_per_step(workload, steps_per_call, use_scan, overrides, state, pool, data)
  run = common.ThreadedRun(execution.make_run_steps(step_fn, config, steps_per_call).run,
                           state, pool, data)
  start = time.perf_counter()
  jax.block_until_ready(run())  # warm-up: compiles
  first_call = time.perf_counter() - start
  peak_with_compile = common.peak_memory_mb()
  matmul_fn, matmul_flops = common.matmul_probe(count=5)
  jax.block_until_ready(matmul_fn())  # compiles
  # Each timed call is followed by a matmul: on a shared machine whose speed drifts,
  # the ratio is taken call by call against the rate of the moment.
  with common.RssWindow() as window:  # the timed calls' own peak on CPU
    timing = common.time_interleaved({"step": run, "matmul": matmul_fn}, repeats, warmup=0)
  per_step = [seconds / steps_per_call for seconds in timing["step"].times]
  matmul_rates = [matmul_flops / seconds / 1e9 for seconds in timing["matmul"].times]
  median = float(np.median(per_step))
  matmul = float(np.median(matmul_rates))
  achieved = flops / median / 1e9
  fractions = [flops / seconds / 1e9 / rate for seconds, rate in zip(per_step, matmul_rates)]
  return {
      "workload": workload.name,
      "device": str(jax.devices()[0].device_kind),
      "steps_per_call": steps_per_call,
      "use_scan": use_scan,
      "seconds_per_step": {"median": median, "min": float(min(per_step)),
                           "max": float(max(per_step)), "all": per_step},
      "first_call_seconds": first_call,  # compile + one call
      "gflops_per_step": flops / 1e9,
      "achieved_gflops": achieved,
      "matmul_gflops": matmul,
      # Median over the timed calls of (achieved / the matmul rate right after it).
      "fraction_of_matmul": float(np.median(fractions)),
      "matmul_gflops_per_call": matmul_rates,
      # From setup on (inputs, compilation, the warm-up call); then the timed calls'
      # alone (on CPU, memory the allocator kept from before counts in both).
      "peak_memory_mb": peak_with_compile,
      "timed_calls_peak_memory_mb": (
          (window.start + window.increase_bytes) / common.MIB
          if window.exact and jax.devices()[0].platform == "cpu" else peak_with_compile),
      "final_loss": float(np.asarray(run.outputs[1]["loss"])[-1]),
      **plan_entries,
  }


# --------------------------------------------------------------------------
# CLI.


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of ``python -m ncfm_jax.bench step``."""
  parser.add_argument("--workload", default="cifar10_ipc10,cifar10_ipc10_psi",
                      help=f"comma list of {sorted(WORKLOADS)}")
  parser.add_argument("--small", action="store_true",
                      help="CPU-sized variant: batch_real 64 per class")
  parser.add_argument("--steps-per-call", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls (>= 5)")
  parser.add_argument("--scan", choices=("auto", "true", "false"), default="auto",
                      help="lax.scan over the steps of a call (auto: not on CPU)")
  parser.add_argument("--unroll", type=int, default=1)
  parser.add_argument("--set", action="append", default=[],
                      help="distill config override KEY=VALUE (e.g. freq_chunk=1024)")
  parser.add_argument("--plan", choices=("auto", "off"), default="auto",
                      help="auto: the memory planner's plan (as the pipeline); off: the "
                           "config as given, all classes in one step")
  parser.add_argument("--in-process", action="store_true",
                      help="no subprocess per workload (peak memory then accumulates)")
  parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--json", default=None, help="write the rows to this JSON file")


def parse_override(text: str) -> tuple[str, Any]:
  """``"freq_chunk=1024"`` -> ``("freq_chunk", 1024)``: the value converted to the
  type of that ``distill`` field; ``none`` is None for a field that may be None
  (``augment=none`` stays the string). An unknown field or a value of the wrong
  type raises InputError."""
  key, sep, value = text.partition("=")
  fields = config_lib.base_config().distill
  if not sep or key not in fields:
    raise InputError(f"--set={text}: the distill config has no field {key!r} "
                     f"(use --set=FIELD=VALUE; fields: {', '.join(sorted(fields))})")
  kind = fields.get_type(key)
  if value.lower() == "none" and fields[key] is None:
    return key, None
  if kind is str:
    return key, value
  if kind is bool:
    if value.lower() not in ("true", "false", "1", "0"):
      raise InputError(f"--set={text}: {key} is a boolean (true or false)")
    return key, value.lower() in ("true", "1")
  try:
    return key, kind(value)
  except (TypeError, ValueError):
    expected = common.TYPE_NAMES.get(kind, kind.__name__)
    raise InputError(f"--set={text}: {key} takes {expected}") from None


def _measure_named(args: argparse.Namespace, name: str) -> dict[str, Any]:
  workload = small_variant(WORKLOADS[name]) if args.small else WORKLOADS[name]
  use_scan = execution.resolve_use_scan(None if args.scan == "auto" else args.scan == "true")
  overrides = dict(parse_override(item) for item in args.set)
  row = measure(workload, args.steps_per_call, args.repeats, use_scan,
                unroll=args.unroll, plan=args.plan == "auto", **overrides)
  row.update(common.environment(), overrides=overrides)
  return row


def _print_table(rows: list[dict[str, Any]], steps_per_call: int) -> None:
  table = [dict(workload=r["workload"], s_per_step=r["seconds_per_step"]["median"],
                min_s=r["seconds_per_step"]["min"], max_s=r["seconds_per_step"]["max"],
                first_call_s=r["first_call_seconds"], gflop_per_step=r["gflops_per_step"],
                achieved_gflops=r["achieved_gflops"], matmul_gflops=r["matmul_gflops"],
                ratio=r["fraction_of_matmul"], peak_mb=r["peak_memory_mb"],
                timed_peak_mb=r.get("timed_calls_peak_memory_mb"),
                planned_mb=None if r.get("planned_gb") is None else r["planned_gb"] * 1024,
                plan=(r.get("plan") or {}).get("described", "as given"),
                scan=r["use_scan"]) for r in rows]
  print()
  print(common.markdown_table(table, list(table[0])))
  print()
  print("s_per_step: median (min, max) of the timed calls, each call = "
        f"{steps_per_call} steps; first_call_s: compile + the warm-up call; "
        "gflop_per_step: XLA cost analysis of one step; ratio: median over the calls "
        "of achieved / matmul (float32 matmul, 2048^3 on CPU and 8192^3 (TF32) on GPU, "
        "5 of them timed after each call); peak_mb: peak host RSS on CPU (from setup "
        "on; timed_peak_mb: during the timed calls), peak_bytes_in_use on GPU; planned_mb: "
        "XLA's compile-time plan of the chosen step (--plan=auto).")


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Measures every ``--workload``, prints a table, returns the rows."""
  if args.repeats < 5:
    raise InputError(f"--repeats must be >= 5, got {args.repeats}")
  names = [n.strip() for n in args.workload.split(",") if n.strip()]
  for name in names:
    if name not in WORKLOADS:
      raise InputError(f"unknown --workload {name!r}; valid: {sorted(WORKLOADS)}")
  for item in args.set:  # refused here, before any child process starts
    parse_override(item)
  if args.single is not None:  # child process: one workload
    rows = [_measure_named(args, args.single)]
    common.emit_rows(rows)
    return rows

  env = common.environment()
  print("# step benchmark: the full jitted distillation step (augmentation, blended "
        "extractor forward on real and synthetic images, NCFD, psi ascent, "
        "calibration, optimizer updates)")
  print("Random uint8 images and randomly initialised ConvNets: content does not "
        "change the cost of a step.")
  print(f"device: {env['device']} x{env['num_devices']}; jax {env['jax']}; "
        f"{env['cpu_count']} CPUs; load avg {env['load_avg_1m']}; {env['date']}",
        flush=True)
  passthrough = [f"--steps-per-call={args.steps_per_call}", f"--repeats={args.repeats}",
                 f"--scan={args.scan}", f"--unroll={args.unroll}", f"--plan={args.plan}"]
  passthrough += ["--small"] if args.small else []
  passthrough += [f"--set={item}" for item in args.set]
  rows = []
  for name in names:
    if args.in_process:
      row = _measure_named(args, name)
    else:
      row, = common.run_child(["step", f"--workload={name}", f"--single={name}",
                               *passthrough])
    rows.append(row)
    print(f"  {row['workload']}: {row['seconds_per_step']['median']:.3f} s/step", flush=True)
  _print_table(rows, args.steps_per_call)
  common.write_json(rows, args.json)
  return rows
