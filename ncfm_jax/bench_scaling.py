"""Scaling of the sharded distillation step: `python -m ncfm_jax.bench_scaling`.

For each device count n (default 1, 2, 4) a fresh subprocess (CPU: with
``XLA_FLAGS=--xla_force_host_platform_device_count=n``; ``--backend=default``:
the first n accelerators) times the SAME global step (a `bench_step` workload,
default ``cifar10_ipc10_small``: 10 classes x batch_real 64, ConvNet-3 width 128,
32x32x3, ipc 10, factor 2, 4096 Gaussian frequencies, calibration on) in the
layouts of `ncfm_jax.sharding`:

* ``dp``: real batch split along B, synthetic set replicated;
* ``cs``: and the synthetic set split along classes (only when n divides C);
* ``plain``: `distill.make_run_steps` without a mesh (n = 1 only), against which
  the overhead of the sharded path is reported.

Forced host devices share the same CPU cores (and XLA:CPU already spreads one
device's convolutions over every core), so on CPU this measures the cost of the
partitioning and of the collectives, not a speed-up; real speed-ups need
separate accelerators (``--backend=default`` on a multi-GPU/TPU host).

``run_train_parallelism`` (``--train``) compares, on 2 forced CPU devices, ways of
using several devices to train the evaluation classifier
(`train.make_train_chunk`): one model data parallel (batch split) versus an
ensemble of models over the evaluation repeats, either vmapped (the model axis
split over the devices) or one model per device via `jax.shard_map`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

_ROW_MARKER = "SCALING_ROW "


# ---------------------------------------------------------------- children


def _time_runs(cases: dict[str, list], steps_per_call: int,
               repeats: int) -> dict[str, dict[str, Any]]:
  """Seconds per step of each ``name -> [run, state, pool, source]`` (state donated).

  One warm-up call each, then the cases take turns, so that a change in the
  machine's load hits every case alike.
  """
  import jax  # pylint: disable=g-import-not-at-top

  def call(case):
    run, state, pool, source = case
    start = time.perf_counter()
    state, metrics = run(state, pool, source)
    jax.block_until_ready((state, metrics))
    case[1] = state
    return time.perf_counter() - start, metrics

  first = {name: call(case)[0] for name, case in cases.items()}
  per_step = {name: [] for name in cases}
  losses = {}
  for _ in range(repeats):
    for name, case in cases.items():
      seconds, metrics = call(case)
      per_step[name].append(seconds / steps_per_call)
      losses[name] = float(metrics["loss"][-1])
  out = {}
  for name, times in per_step.items():
    median = statistics.median(times)
    out[name] = {"seconds_per_step": median, "steps_per_second": 1.0 / median,
                 "min_seconds_per_step": min(times), "first_call_seconds": first[name],
                 "final_loss": losses[name]}
  return out


def _workload(name: str):
  """A `bench_step` workload by name; ``X_small`` is `bench_step.small_variant` of X."""
  from ncfm_jax import bench_step  # pylint: disable=g-import-not-at-top
  base = name[:-len("_small")] if name.endswith("_small") else name
  if base not in bench_step.WORKLOADS:
    raise ValueError(f"unknown workload {name!r}; valid: "
                     f"{sorted(bench_step.WORKLOADS)} (+ '_small')")
  workload = bench_step.WORKLOADS[base]
  return bench_step.small_variant(workload) if name != base else workload


def _measure_distill(num_devices: int, workload_name: str, layouts: Sequence[str],
                     steps_per_call: int, repeats: int, use_scan: bool | None,
                     overrides: dict[str, Any]) -> list[dict[str, Any]]:
  """Rows for every layout on the first `num_devices` devices of this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ncfm_jax import allocator, bench_step, distill, sharding  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  if len(devices) < num_devices:
    raise ValueError(f"{num_devices} devices asked, {len(devices)} present: {devices}")
  workload = dataclasses.replace(_workload(workload_name), **overrides)
  config = bench_step.distill_config(workload, steps_per_call=steps_per_call,
                                     use_scan=use_scan)
  state, pool, data, step_fn = bench_step.setup(workload, config)
  mesh = sharding.make_mesh(devices[:num_devices])
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  cases = {}
  for layout in layouts:
    if layout == "plain":
      if num_devices == 1:
        cases[layout] = [distill.make_run_steps(step_fn, config, steps_per_call),
                         copy(state), pool, data]
    elif layout in ("dp", "cs"):
      class_sharded = layout == "cs"
      if class_sharded and workload.classes % num_devices:
        continue
      cases[layout] = [
          sharding.make_sharded_run_steps(step_fn, config, steps_per_call, mesh,
                                          class_sharded),
          sharding.shard_state(copy(state), mesh, class_sharded),
          sharding.replicate(pool, mesh), sharding.replicate(data, mesh)]
    else:
      raise ValueError(f"unknown layout {layout!r}; use plain, dp or cs")
  timings = _time_runs(cases, steps_per_call, repeats)
  return [{"devices": num_devices, "layout": layout, "workload": workload.name,
           "global_batch_real": workload.batch_real, "classes": workload.classes,
           "width": workload.width, "use_scan": distill.resolve_use_scan(use_scan),
           "device_kind": devices[0].device_kind, "allocator": allocator.describe(),
           **timing}
          for layout, timing in timings.items()]


def _measure_train(num_devices: int, batch_size: int, num_examples: int, steps: int,
                   repeats: int, width: int, depth: int) -> list[dict[str, Any]]:
  """One model data parallel vs `num_devices` models vmapped (one per device)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ncfm_jax import allocator, config_lib, models, sharding  # pylint: disable=g-import-not-at-top
  from ncfm_jax import train as train_lib  # pylint: disable=g-import-not-at-top

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

  keys = jax.random.split(jax.random.PRNGKey(0), steps)[:, None]  # [S, 1, 2]
  idx_single = batch_idx(0)[:, None]  # [S, 1, B]: one 1-step chunk per call
  idx_models = np.stack([batch_idx(m) for m in range(num_devices)], 1)[:, :, None]
  keys_models = jnp.stack([keys] * num_devices, 1)  # [S, M, 1, 2]

  images_rep, targets_rep = sharding.replicate((images, targets), mesh)
  # name -> (models trained at once, jitted 1-step chunk, initial state, per-step args)
  cases = {
      # One model, no mesh.
      "single": (1, chunk, lambda: init_state(jax.random.PRNGKey(1)),
                 lambda t: (images, targets, jnp.asarray(idx_single[t]), keys[t])),
      # One model, data parallel: batch indices (so the batch) split along B.
      "data_parallel": (
          1, sharding.data_parallel_train_chunk(chunk, mesh, batch_size),
          lambda: sharding.replicate(init_state(jax.random.PRNGKey(1)), mesh),
          lambda t: (images_rep, targets_rep,
                     sharding.shard_batch_axis(idx_single[t], mesh, axis=1),
                     sharding.replicate(keys[t], mesh))),
  }
  # num_devices models (e.g. evaluation repeats) vmapped over their own init,
  # batches and keys, the model axis split over the devices.
  by_model = lambda ndim: sharding.batch_axis_sharding(mesh, ndim, 0)
  vmapped = jax.jit(jax.vmap(chunk, in_axes=(0, None, None, 0, 0)),
                    in_shardings=(by_model(1), rep, rep, by_model(3), by_model(3)),
                    out_shardings=by_model(1), donate_argnums=(0,))
  init_models = lambda: jax.vmap(init_state)(
      jax.random.split(jax.random.PRNGKey(1), num_devices))
  models_args = lambda t: (images, targets, jnp.asarray(idx_models[t]), keys_models[t])
  cases["vmapped_ensemble"] = (num_devices, vmapped, init_models, models_args)

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
  cases["sharded_ensemble"] = (num_devices, per_device, init_models, models_args)

  def call(fn, make_state, step_args):
    """Seconds for `steps` host calls of one step each, from a fresh state."""
    state = make_state()
    args = [step_args(t) for t in range(steps)]
    jax.block_until_ready((state, args))
    start = time.perf_counter()
    for t in range(steps):
      state, losses = fn(state, *args[t])
    jax.block_until_ready((state, losses))
    return time.perf_counter() - start

  first = {name: call(*case[1:]) for name, case in cases.items()}
  per_step = {name: [] for name in cases}
  for _ in range(repeats):  # cases take turns (load drift hits all alike)
    for name, case in cases.items():
      per_step[name].append(call(*case[1:]) / steps)
  rows = []
  for name, (num_models, _, _, _) in cases.items():
    median = statistics.median(per_step[name])
    rows.append({"mode": name, "models": num_models, "seconds_per_step": median,
                 "model_steps_per_second": num_models / median,
                 "first_call_seconds": first[name]})
  for row in rows:
    row.update(devices=num_devices, batch_size=batch_size, width=width, depth=depth,
               steps_per_call=steps, allocator=allocator.describe())
  return rows


# ------------------------------------------------------------------ parent


def _environment() -> dict[str, Any]:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return {"jax": importlib.metadata.version("jax"), "cpu_count": os.cpu_count(),
          "load_avg_1m": os.getloadavg()[0],
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _child(argv: Sequence[str], num_devices: int, backend: str) -> list[dict[str, Any]]:
  from ncfm_jax import allocator  # pylint: disable=g-import-not-at-top
  env = allocator.with_tcmalloc(os.environ)
  if backend == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={num_devices}"])
  command = [sys.executable, "-m", "ncfm_jax.bench_scaling", *argv]
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  rows = [json.loads(line[len(_ROW_MARKER):]) for line in done.stdout.splitlines()
          if line.startswith(_ROW_MARKER)]
  if done.returncode != 0 or not rows:
    raise RuntimeError(f"scaling subprocess failed ({done.returncode}): "
                       f"{' '.join(command)}\n{done.stderr[-3000:]}")
  return rows


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
    rows.extend(_child(argv, n, backend))
  base = {r["layout"]: r["seconds_per_step"] for r in rows if r["devices"] == 1}
  for r in rows:
    if r["layout"] in base:
      r["speedup"] = base[r["layout"]] / r["seconds_per_step"]
    if r["devices"] == 1 and r["layout"] != "plain" and "plain" in base:
      r["overhead_vs_plain"] = r["seconds_per_step"] / base["plain"] - 1.0
  env = _environment()
  for r in rows:
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
  rows = _child(argv, num_devices, backend)
  env = _environment()
  for r in rows:
    r.update(env)
  return rows


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  def fmt(v):
    if v is None:
      return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


DISTILL_COLUMNS = ("devices", "layout", "seconds_per_step", "steps_per_second", "speedup",
                   "overhead_vs_plain", "first_call_seconds")
TRAIN_COLUMNS = ("mode", "models", "devices", "seconds_per_step", "model_steps_per_second",
                 "first_call_seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `python -m ncfm_jax.bench_scaling` (and of `bench scaling`)."""
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


def _use_scan(text: str) -> bool | None:
  return None if text == "None" else text == "True"


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Runs what the flags ask, prints tables, returns the rows."""
  if args.child_distill is not None:
    rows = _measure_distill(args.child_distill, args.workload, args.layouts.split(","),
                            args.steps_per_call, args.repeats, _use_scan(args.use_scan),
                            json.loads(args.overrides))
  elif args.child_train is not None:
    rows = _measure_train(args.child_train, args.batch_size, args.num_examples,
                          args.steps_per_call, args.repeats, args.width, args.depth)
  else:
    counts = tuple(int(n) for n in args.device_counts.split(","))
    rows = run_scaling(counts, args.workload, tuple(args.layouts.split(",")),
                       args.steps_per_call, args.repeats, _use_scan(args.use_scan),
                       args.backend, json.loads(args.overrides))
    print(_table(rows, DISTILL_COLUMNS), flush=True)
    if args.train:
      train_rows = run_train_parallelism(2, args.batch_size, args.num_examples,
                                         args.steps_per_call, args.repeats, args.width,
                                         args.depth, args.backend)
      print(_table(train_rows, TRAIN_COLUMNS), flush=True)
      rows = rows + train_rows
    print(f"({rows[0]['date']}, jax {rows[0]['jax']}, {rows[0]['cpu_count']} CPUs, "
          f"load {rows[0]['load_avg_1m']:.1f})")
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return rows
  for row in rows:
    print(_ROW_MARKER + json.dumps(row), flush=True)
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ncfm_jax.bench_scaling",
                                   description=__doc__.splitlines()[0])
  add_arguments(parser)
  run_from_args(parser.parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())
