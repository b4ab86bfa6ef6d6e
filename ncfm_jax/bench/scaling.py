"""Scaling of the sharded distillation step: ``python -m ncfm_jax.bench scaling``.

For each device count n (default 1, 2, 4) a fresh subprocess (CPU: with
``XLA_FLAGS=--xla_force_host_platform_device_count=n``; ``--backend=default``:
the first n accelerators) times the SAME global step (a `step` workload,
default ``cifar10_ipc10_small``: 10 classes x batch_real 64, ConvNet-3 width 128,
32x32x3, ipc 10, factor 2, 4096 Gaussian frequencies, calibration on) in the
layouts of `ncfm_jax.sharding`:

* ``dp``: real batch split along B, synthetic set replicated;
* ``cs``: and the synthetic set split along classes (only when n divides C);
* ``plain``: the run function without a mesh (n = 1 only), against which the
  overhead of the sharded path is reported.

Forced host devices share the same CPU cores (and XLA:CPU already spreads one
device's convolutions over every core), so on CPU this measures the cost of the
partitioning and of the collectives, not a speed-up; real speed-ups need
separate accelerators (``--backend=default`` on a multi-GPU/TPU host).

``--train`` also compares, on 2 devices, ways of using several devices to train
the evaluation classifier (`train.make_train_chunk`): one model data parallel
(batch split) versus an ensemble of models over the evaluation repeats, either
vmapped (the model axis split over the devices) or one model per device via
`jax.shard_map`.

The parent process never starts a JAX backend: with ``--backend=default`` its
children need the accelerators' memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import allocator
from ncfm_jax import config_lib
from ncfm_jax import execution
from ncfm_jax import models
from ncfm_jax import sharding
from ncfm_jax import train as train_lib
from ncfm_jax.bench import common
from ncfm_jax.bench import step as step_bench
from ncfm_jax.errors import InputError

LAYOUTS = ("plain", "dp", "cs")
"""Distillation step layouts: unsharded, data-parallel, class-sharded (sharding.py)."""

DISTILL_COLUMNS = ("devices", "layout", "seconds_per_step", "steps_per_second", "speedup",
                   "overhead_vs_plain", "first_call_seconds")
TRAIN_COLUMNS = ("mode", "models", "devices", "seconds_per_step", "model_steps_per_second",
                 "first_call_seconds")


# ---------------------------------------------------------------- children


def _measure_distill(num_devices: int, workload_name: str, layouts: Sequence[str],
                     steps_per_call: int, repeats: int, use_scan: bool | None,
                     overrides: dict[str, Any]) -> list[dict[str, Any]]:
  """Rows for every layout on the first `num_devices` devices of this process."""
  devices = jax.devices()
  if len(devices) < num_devices:
    raise ValueError(f"{num_devices} devices asked, {len(devices)} present: {devices}")
  workload = dataclasses.replace(step_bench.workload_by_name(workload_name), **overrides)
  config = step_bench.distill_config(workload, steps_per_call=steps_per_call,
                                     use_scan=use_scan)
  state, pool, data, step_fn = step_bench.setup(workload, config)
  mesh = sharding.make_mesh(devices[:num_devices])
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  cases = {}
  for layout in layouts:
    if layout == "plain":
      if num_devices == 1:
        run = execution.make_run_steps(step_fn, config, steps_per_call).run
        cases[layout] = common.ThreadedRun(run, copy(state), pool, data)
    elif layout in ("dp", "cs"):
      class_sharded = layout == "cs"
      if class_sharded and workload.classes % num_devices:
        continue
      run = execution.make_run_steps(step_fn, config, steps_per_call, mesh=mesh,
                                     class_sharded=class_sharded).run
      cases[layout] = common.ThreadedRun(
          run, sharding.shard_state(copy(state), mesh, class_sharded),
          sharding.replicate(pool, mesh), sharding.replicate(data, mesh))
    else:
      raise InputError(f"unknown layout {layout!r}; use {', '.join(LAYOUTS)}")
  timings = common.time_interleaved(cases, repeats)
  rows = []
  for layout, timing in timings.items():
    per_step = [seconds / steps_per_call for seconds in timing.times]
    median = float(np.median(per_step))
    rows.append({
        "devices": num_devices, "layout": layout, "workload": workload.name,
        "global_batch_real": workload.batch_real, "classes": workload.classes,
        "width": workload.width, "use_scan": execution.resolve_use_scan(use_scan),
        "device_kind": devices[0].device_kind, "allocator": allocator.describe(),
        "seconds_per_step": median, "steps_per_second": 1.0 / median,
        "min_seconds_per_step": min(per_step),
        "first_call_seconds": timing.first_call_s,
        "final_loss": float(cases[layout].outputs[1]["loss"][-1])})
  return rows


def _train_cases(num_devices: int, batch_size: int, num_examples: int, steps: int,
                 width: int, depth: int) -> dict[str, tuple[int, common.ThreadedRun]]:
  """name -> (models trained at once, `steps` host calls of one jitted step each)."""
  cfg = config_lib.base_config().eval
  cfg.batch_size = batch_size
  classes, size = 10, 32
  model = models.get_model("convnet", classes, width=width, depth=depth, norm="instance",
                           image_size=size, channels=3)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0, 1, (num_examples, size, size, 3)), jnp.float32)
  targets = jax.nn.one_hot(jnp.asarray(rng.integers(0, classes, num_examples)), classes)
  tx = train_lib.make_optimizer(cfg, steps)
  mean, std = (0.5,) * 3, (0.25,) * 3
  # Every case runs `steps` host calls of ONE jitted step, as train.py's CPU loop
  # does (with use_scan=False the chunk is a Python loop; jitted on a 1-step
  # slice it is the single step, no `lax.scan`, which measured ~10x slower per
  # step here), so that the cases differ only in how the devices are used.
  cfg.use_scan = False
  chunk = train_lib.make_train_chunk(model, tx, cfg, mean, std)
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  rep = sharding.replicated(mesh)

  def init_state(key):
    variables = train_lib.init_variables(key, model, images[:1])
    return train_lib.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                                variables.get("batch_stats", {}),
                                tx.init(variables["params"]))

  def batch_idx(seed):
    return train_lib.epoch_batches(np.random.default_rng(seed), num_examples,
                                   batch_size, steps)

  def host_loop(fn, state, step_args):
    """`steps` calls of ``fn(state, *step_args[t])``, threading the donated state."""
    def steps_of(state):
      losses = None
      for args in step_args:
        state, losses = fn(state, *args)
      return state, losses
    return common.ThreadedRun(steps_of, state)

  keys = jax.random.split(jax.random.PRNGKey(0), steps)[:, None]  # [S, 1, 2]
  idx_single = batch_idx(0)[:, None]  # [S, 1, B]: one 1-step chunk per call
  idx_models = np.stack([batch_idx(m) for m in range(num_devices)], 1)[:, :, None]
  keys_models = jnp.stack([keys] * num_devices, 1)  # [S, M, 1, 2]
  images_rep, targets_rep = sharding.replicate((images, targets), mesh)
  cases = {
      # One model, no mesh.
      "single": (1, host_loop(chunk, init_state(jax.random.PRNGKey(1)), [
          (images, targets, jnp.asarray(idx_single[t]), keys[t]) for t in range(steps)])),
      # One model, data parallel: the chunk splits the batch indices (so the
      # batch) along B itself; everything else replicated.
      "data_parallel": (1, host_loop(
          train_lib.make_train_chunk(model, tx, cfg, mean, std, mesh=mesh),
          sharding.replicate(init_state(jax.random.PRNGKey(1)), mesh),
          [(images_rep, targets_rep, idx_single[t], sharding.replicate(keys[t], mesh))
           for t in range(steps)])),
  }
  # num_devices models (e.g. evaluation repeats) vmapped over their own init,
  # batches and keys, the model axis split over the devices.
  by_model = lambda ndim: sharding.batch_axis_sharding(mesh, ndim, 0)
  vmapped = jax.jit(jax.vmap(chunk, in_axes=(0, None, None, 0, 0)),
                    in_shardings=(by_model(1), rep, rep, by_model(3), by_model(3)),
                    out_shardings=by_model(1), donate_argnums=(0,))
  # Placed as the ensembles return their state (model axis split), so that the
  # state fed back by `ThreadedRun` compiles nothing new after the warm-up call.
  init_models = lambda: jax.device_put(
      jax.vmap(init_state)(jax.random.split(jax.random.PRNGKey(1), num_devices)),
      by_model(1))
  models_args = [(images, targets, jnp.asarray(idx_models[t]), keys_models[t])
                 for t in range(steps)]
  cases["vmapped_ensemble"] = (num_devices, host_loop(vmapped, init_models(), models_args))

  # The same ensemble without vmap: shard_map hands each device its own model
  # (a block of 1 along the model axis) and the plain chunk trains it; no
  # communication at all.
  def one_model_per_device(state, images, targets, idx, keys):
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    new_state, losses = chunk(first(state), images, targets, idx[0], keys[0])
    return jax.tree.map(lambda x: x[None], (new_state, losses))

  spec = jax.sharding.PartitionSpec
  per_device = jax.jit(jax.shard_map(
      one_model_per_device, mesh=mesh, in_specs=(spec("data"), spec(), spec(),
                                                 spec("data"), spec("data")),
      out_specs=spec("data"), check_vma=False), donate_argnums=(0,))
  cases["sharded_ensemble"] = (num_devices, host_loop(per_device, init_models(),
                                                      models_args))
  return cases


def _measure_train(num_devices: int, batch_size: int, num_examples: int, steps: int,
                   repeats: int, width: int, depth: int) -> list[dict[str, Any]]:
  """One model data parallel vs `num_devices` models vmapped / one per device."""
  cases = _train_cases(num_devices, batch_size, num_examples, steps, width, depth)
  timings = common.time_interleaved({name: run for name, (_, run) in cases.items()},
                                    repeats)
  rows = []
  for name, (num_models, _) in cases.items():
    median = timings[name].median / steps
    rows.append({"mode": name, "models": num_models, "seconds_per_step": median,
                 "model_steps_per_second": num_models / median,
                 "first_call_seconds": timings[name].first_call_s,
                 "devices": num_devices, "batch_size": batch_size, "width": width,
                 "depth": depth, "steps_per_call": steps,
                 "allocator": allocator.describe()})
  return rows


# ------------------------------------------------------------------ parent


def _child_rows(argv: list[str], num_devices: int, backend: str) -> list[dict[str, Any]]:
  """`common.run_child` of ``scaling *argv`` on n forced CPU devices or the accelerators."""
  return common.run_child(["scaling", *argv],
                          cpu_devices=num_devices if backend == "cpu" else None)


def run_scaling(device_counts: Sequence[int] = (1, 2, 4),
                workload: str = "cifar10_ipc10_small",
                layouts: Sequence[str] = ("plain", "dp", "cs"),
                steps_per_call: int = 3, repeats: int = 3,
                use_scan: bool | None = None, backend: str = "cpu",
                overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """Steps/s of the sharded step per device count, each count in a fresh process.

  Returns one row per (device count, layout) with ``seconds_per_step``,
  ``steps_per_second``, ``speedup`` (vs the same layout on 1 device) and, for
  ``dp``/``cs`` on 1 device, ``overhead_vs_plain`` (sharded / plain seconds - 1).
  """
  rows = []
  for n in device_counts:
    argv = ["--child-distill", str(n), "--workload", workload,
            "--layouts", ",".join(layouts), "--steps-per-call", str(steps_per_call),
            "--repeats", str(repeats), "--use-scan", str(use_scan),
            "--overrides", json.dumps(overrides or {})]
    rows.extend(_child_rows(argv, n, backend))
  base = {r["layout"]: r["seconds_per_step"] for r in rows if r["devices"] == 1}
  env = common.environment(devices=False)
  for r in rows:
    if r["layout"] in base:
      r["speedup"] = base[r["layout"]] / r["seconds_per_step"]
    if r["devices"] == 1 and r["layout"] != "plain" and "plain" in base:
      r["overhead_vs_plain"] = r["seconds_per_step"] / base["plain"] - 1.0
    r.update(env)
  return rows


def run_train_parallelism(num_devices: int = 2, batch_size: int = 128,
                          num_examples: int = 500, steps: int = 10, repeats: int = 3,
                          width: int = 32, depth: int = 3,
                          backend: str = "cpu") -> list[dict[str, Any]]:
  """Data-parallel classifier step vs a vmapped ensemble, `num_devices` devices.

  Rows: ``single`` (one model, no mesh), ``data_parallel`` (one model, batch
  split), ``vmapped_ensemble`` (``num_devices`` models vmapped, model axis
  split), ``sharded_ensemble`` (``num_devices`` models, shard_map, one per
  device); compare ``model_steps_per_second`` (models x steps per second).
  """
  argv = ["--child-train", str(num_devices), "--batch-size", str(batch_size),
          "--num-examples", str(num_examples), "--steps-per-call", str(steps),
          "--repeats", str(repeats), "--width", str(width), "--depth", str(depth)]
  rows = _child_rows(argv, num_devices, backend)
  env = common.environment(devices=False)
  for r in rows:
    r.update(env)
  return rows


# --------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of ``python -m ncfm_jax.bench scaling``."""
  parser.add_argument("--device-counts", default="1,2,4", help="comma list of n.")
  parser.add_argument("--workload", default="cifar10_ipc10_small")
  parser.add_argument("--layouts", default="plain,dp,cs")
  parser.add_argument("--steps-per-call", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--use-scan", default="None", choices=["None", "True", "False"])
  parser.add_argument("--overrides", default="{}",
                      help='JSON of Workload fields, e.g. \'{"width": 64}\'.')
  parser.add_argument("--backend", default="cpu", choices=["cpu", "default"],
                      help="cpu: forced host devices; default: the first n accelerators.")
  parser.add_argument("--train", action="store_true",
                      help="also time data-parallel vs vmapped-ensemble classifier training.")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--num-examples", type=int, default=500)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--json", default=None, help="write the rows here.")
  parser.add_argument("--child-distill", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--child-train", type=int, default=None, help=argparse.SUPPRESS)


def _parse_overrides(text: str) -> dict[str, Any]:
  """``--overrides`` JSON -> a dict of `step.Workload` fields; InputError otherwise."""
  try:
    overrides = json.loads(text)
  except json.JSONDecodeError:
    raise InputError(f"--overrides={text}: not JSON (e.g. '{{\"width\": 64}}')") from None
  fields = {f.name for f in dataclasses.fields(step_bench.Workload)}
  if not isinstance(overrides, dict) or set(overrides) - fields:
    raise InputError(f"--overrides={text}: not an object of Workload fields "
                     f"({', '.join(sorted(fields))})")
  return overrides


def _use_scan(text: str) -> bool | None:
  return None if text == "None" else text == "True"


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Runs what the flags ask, prints tables, returns the rows."""
  if args.child_distill is not None:
    rows = _measure_distill(args.child_distill, args.workload, args.layouts.split(","),
                            args.steps_per_call, args.repeats, _use_scan(args.use_scan),
                            json.loads(args.overrides))
    common.emit_rows(rows)
    return rows
  if args.child_train is not None:
    rows = _measure_train(args.child_train, args.batch_size, args.num_examples,
                          args.steps_per_call, args.repeats, args.width, args.depth)
    common.emit_rows(rows)
    return rows
  counts = tuple(common.parse_list(args.device_counts, int, "--device-counts", minimum=1))
  layouts = tuple(common.parse_list(args.layouts, str, "--layouts"))
  unknown = sorted(set(layouts) - set(LAYOUTS))
  if unknown:
    raise InputError(f"--layouts: unknown {', '.join(unknown)}; use {', '.join(LAYOUTS)}")
  step_bench.workload_by_name(args.workload)  # refused here, not in a child
  overrides = _parse_overrides(args.overrides)
  rows = run_scaling(counts, args.workload, layouts, args.steps_per_call, args.repeats,
                     _use_scan(args.use_scan), args.backend, overrides)
  print(common.markdown_table(rows, DISTILL_COLUMNS), flush=True)
  if args.train:
    train_rows = run_train_parallelism(2, args.batch_size, args.num_examples,
                                       args.steps_per_call, args.repeats, args.width,
                                       args.depth, args.backend)
    print(common.markdown_table(train_rows, TRAIN_COLUMNS), flush=True)
    rows = rows + train_rows
  print(f"({rows[0]['date']}, jax {rows[0]['jax']}, {rows[0]['cpu_count']} CPUs, "
        f"load {rows[0]['load_avg_1m']:.1f})")
  common.write_json(rows, args.json)
  return rows
