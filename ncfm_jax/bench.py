"""Micro-benchmarks: ``python -m ncfm_jax.bench <subcommand> [--json PATH]``.

Subcommands live in ``SUBCOMMANDS`` (name -> ``Subcommand``); add one by
writing its ``add_arguments`` and ``run`` and registering it there.

``ncfd``: time ``jax.jit(jax.value_and_grad(ncfd, argnums=1))`` (gradient w.r.t.
the synthetic features, as in the distillation step) for real ``[N, D]``, syn
``[M, D]`` (L2-normalised Gaussian) and ``t ~ N(0, I) [F, D]``, with and without
frequency chunking. Each configuration runs in a fresh subprocess so that the
process-wide peak memory counters (CPU: ``ru_maxrss``; GPU: the allocator's
``peak_bytes_in_use``) belong to that configuration alone.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ncfm_jax import allocator
from ncfm_jax.ncfd import gaussian_frequencies, ncfd

_ROW_MARKER = "BENCH_ROW "
_MIB = 2**20


class Subcommand(NamedTuple):
  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace], list[dict[str, Any]]]


# --------------------------------------------------------------------------
# Shared helpers.


def _peak_rss_bytes() -> int:
  # ru_maxrss is KiB on Linux, bytes on macOS; monotone over the process.
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _proc_status_bytes(field: str) -> int | None:
  """``VmRSS`` / ``VmHWM`` (peak RSS) of this process from /proc, in bytes."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False if unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    return False
  return _proc_status_bytes("VmHWM") is not None


class _RssWindow:
  """Peak RSS increase over a code region (VmHWM reset at its start)."""

  def __enter__(self) -> "_RssWindow":
    gc.collect()
    self.exact = _reset_peak_rss()
    self.start = _proc_status_bytes("VmRSS") if self.exact else _peak_rss_bytes()
    self.increase_bytes = None
    return self

  def __exit__(self, *exc_info: Any) -> None:
    end = _proc_status_bytes("VmHWM") if self.exact else _peak_rss_bytes()
    # Without the reset ru_maxrss is monotone: this is a lower bound (often 0).
    self.increase_bytes = max(end - self.start, 0)


def _device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _environment() -> dict[str, Any]:
  device = jax.devices()[0]
  return {
      "device": f"{device.platform}: {device.device_kind}",
      "num_devices": jax.device_count(),
      "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "python": platform.python_version(),
      "allocator": allocator.describe(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%d %H:%M UTC"
      ),
  }


def _time_calls(
    fn: Callable[[], Any], num_runs: int, num_warmup: int
) -> list[float]:
  """Seconds per call of ``fn`` (blocked until ready), after warm-up calls."""
  for _ in range(num_warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(num_runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def _markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  def fmt(value: Any) -> str:
    if value is None:
      return "-"
    if isinstance(value, float):
      return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _run_isolated(argv: Sequence[str]) -> dict[str, Any]:
  """Runs ``python -m ncfm_jax.bench *argv`` and returns its marked JSON row."""
  command = [sys.executable, "-m", "ncfm_jax.bench", *argv]
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        env=allocator.with_tcmalloc(os.environ))
  for line in done.stdout.splitlines():
    if line.startswith(_ROW_MARKER):
      return json.loads(line[len(_ROW_MARKER) :])
  raise RuntimeError(
      f"benchmark subprocess failed ({done.returncode}): {' '.join(command)}\n"
      f"{done.stderr[-3000:]}"
  )


# --------------------------------------------------------------------------
# ncfd subcommand.


def _ncfd_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--num-real", type=int, default=1024, help="N real rows.")
  parser.add_argument("--num-syn", type=int, default=40, help="M synthetic rows.")
  parser.add_argument("--dim", type=int, default=2048, help="feature dim D.")
  parser.add_argument(
      "--freqs", type=str, default="1024,4096,16384", help="comma list of F."
  )
  parser.add_argument(
      "--chunks",
      type=str,
      default="none,1024",
      help="comma list of freq_chunk values ('none' = one block).",
  )
  parser.add_argument("--runs", type=int, default=10, help="timed runs (>= 1).")
  parser.add_argument("--warmup", type=int, default=2, help="untimed runs.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--in-process",
      action="store_true",
      help="no subprocess per configuration (peak memory then accumulates).",
  )
  parser.add_argument("--json", type=str, default=None, help="write rows here.")
  # Internal: measure exactly one configuration "F:chunk" and print its row.
  parser.add_argument("--single", type=str, default=None, help=argparse.SUPPRESS)


def _parse_chunk(text: str) -> int | None:
  return None if text.lower() in ("none", "0", "") else int(text)


def _measure_ncfd(
    num_real: int,
    num_syn: int,
    dim: int,
    num_freqs: int,
    freq_chunk: int | None,
    num_runs: int,
    num_warmup: int,
    seed: int,
) -> dict[str, Any]:
  """Times one ``value_and_grad`` configuration in this process."""
  key_real, key_syn, key_t = jax.random.split(jax.random.PRNGKey(seed), 3)
  unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  real = unit(jax.random.normal(key_real, (num_real, dim)))
  syn = unit(jax.random.normal(key_syn, (num_syn, dim)))
  t = gaussian_frequencies(key_t, num_freqs, dim)
  jax.block_until_ready((real, syn, t))

  loss = functools.partial(ncfd, freq_chunk=freq_chunk)
  step = jax.jit(jax.value_and_grad(loss, argnums=1))
  with _RssWindow() as compile_rss:
    start = time.perf_counter()
    compiled = step.lower(real, syn, t).compile()
    compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp_bytes = getattr(analysis, "temp_size_in_bytes", None)

  with _RssWindow() as run_rss:
    times = _time_calls(lambda: compiled(real, syn, t), num_runs, num_warmup)
  device_peak = _device_peak_bytes()
  return {
      **_environment(),
      "N": num_real,
      "M": num_syn,
      "D": dim,
      "F": num_freqs,
      "freq_chunk": freq_chunk if freq_chunk is not None else "none",
      "compile_s": compile_s,
      "median_ms": 1e3 * statistics.median(times),
      "min_ms": 1e3 * min(times),
      "max_ms": 1e3 * max(times),
      "runs": num_runs,
      "xla_temp_mib": None if temp_bytes is None else temp_bytes / _MIB,
      "peak_rss_mib": _peak_rss_bytes() / _MIB,
      "compile_rss_mib": compile_rss.increase_bytes / _MIB,
      "run_rss_mib": run_rss.increase_bytes / _MIB,
      "rss_exact": run_rss.exact,
      "device_peak_mib": None if device_peak is None else device_peak / _MIB,
  }


def _run_ncfd(args: argparse.Namespace) -> list[dict[str, Any]]:
  if args.runs < 1:
    raise ValueError(f"--runs must be >= 1, got {args.runs}.")
  shape_args = [
      f"--num-real={args.num_real}",
      f"--num-syn={args.num_syn}",
      f"--dim={args.dim}",
      f"--runs={args.runs}",
      f"--warmup={args.warmup}",
      f"--seed={args.seed}",
  ]
  measure = functools.partial(
      _measure_ncfd,
      args.num_real,
      args.num_syn,
      args.dim,
      num_runs=args.runs,
      num_warmup=args.warmup,
      seed=args.seed,
  )
  if args.single is not None:  # child process: one configuration
    freqs, chunk = args.single.split(":")
    row = measure(int(freqs), _parse_chunk(chunk))
    print(_ROW_MARKER + json.dumps(row), flush=True)
    return [row]

  env = _environment()
  print("# ncfd benchmark: value_and_grad w.r.t. syn, jit, float32")
  print(f"device: {env['device']} x{env['num_devices']}; jax {env['jax']}"
        f" (jaxlib {env['jaxlib']});"
        f" python {env['python']}; {env['cpu_count']} CPUs;"
        f" load avg {env['load_avg_1m']}; {env['date']}")
  print(f"real [{args.num_real}, {args.dim}], syn [{args.num_syn}, {args.dim}],"
        f" {args.runs} timed runs after {args.warmup} warm-up;"
        f" {'in one process' if args.in_process else 'one subprocess per row'}",
        flush=True)
  rows = []
  for freqs in (int(f) for f in args.freqs.split(",")):
    for chunk_text in args.chunks.split(","):
      chunk = _parse_chunk(chunk_text)
      if args.in_process:
        row = measure(freqs, chunk)
      else:
        chunk_arg = "none" if chunk is None else str(chunk)
        row = _run_isolated(["ncfd", *shape_args, f"--single={freqs}:{chunk_arg}"])
      rows.append(row)
      print(f"  F={freqs} chunk={row['freq_chunk']}: {row['median_ms']:.1f} ms",
            flush=True)

  on_gpu = any(r["device_peak_mib"] is not None for r in rows)
  columns = ["F", "freq_chunk", "compile_s", "median_ms", "min_ms", "max_ms",
             "xla_temp_mib"]
  columns += (
      ["device_peak_mib"] if on_gpu else ["run_rss_mib", "compile_rss_mib", "peak_rss_mib"]
  )
  print()
  print(_markdown_table(rows, columns))
  print()
  print("xla_temp_mib: XLA's temp buffer size of the compiled program.")
  if on_gpu:
    print("device_peak_mib: the allocator's peak_bytes_in_use in that subprocess.")
  else:
    exact = all(r["rss_exact"] for r in rows)
    how = ("VmHWM reset via /proc/self/clear_refs" if exact
           else "ru_maxrss, monotone: lower bounds")
    print(f"run_rss_mib / compile_rss_mib: peak RSS increase during the warm-up +"
          f" timed runs / during compilation, over the RSS just before ({how});"
          f" peak_rss_mib: the subprocess's ru_maxrss (runtime, inputs, compile, runs).")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
    print(f"rows written to {args.json}")
  return rows


# --------------------------------------------------------------------------
# step subcommand: the full distillation step (ncfm_jax/bench_step.py).


def _step_arguments(parser: argparse.ArgumentParser) -> None:
  from ncfm_jax import bench_step  # pylint: disable=g-import-not-at-top
  parser.add_argument("--workload", default="cifar10_ipc10,cifar10_ipc10_psi",
                      help=f"comma list of {sorted(bench_step.WORKLOADS)}")
  parser.add_argument("--small", action="store_true",
                      help="CPU-sized variant: batch_real 64 per class")
  parser.add_argument("--steps-per-call", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls (>= 5)")
  parser.add_argument("--scan", choices=("auto", "true", "false"), default="auto",
                      help="lax.scan over the steps of a call (auto: not on CPU)")
  parser.add_argument("--unroll", type=int, default=1)
  parser.add_argument("--plan", choices=("auto", "off"), default="auto",
                      help="auto: the memory planner's plan (distill.memory_budget_gb, "
                      "via --set); off: the config as given, all classes in one step")
  parser.add_argument("--set", action="append", default=[],
                      help="distill config override KEY=VALUE (e.g. freq_chunk=1024)")
  parser.add_argument("--in-process", action="store_true",
                      help="no subprocess per workload (peak memory then accumulates)")
  parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--json", default=None, help="write the rows to this JSON file")


def _parse_override(text: str) -> tuple[str, Any]:
  key, _, value = text.partition("=")
  for convert in (int, float):
    try:
      return key, convert(value)
    except ValueError:
      pass
  return key, {"none": None, "true": True, "false": False}.get(value.lower(), value)


def _measure_step(args: argparse.Namespace, name: str) -> dict[str, Any]:
  from ncfm_jax import bench_step  # pylint: disable=g-import-not-at-top
  from ncfm_jax import execution  # pylint: disable=g-import-not-at-top
  workload = bench_step.WORKLOADS[name]
  if args.small:
    workload = bench_step.small_variant(workload)
  use_scan = execution.resolve_use_scan(None if args.scan == "auto" else args.scan == "true")
  overrides = dict(_parse_override(item) for item in args.set)
  row = bench_step.run(workload, args.steps_per_call, args.repeats, use_scan,
                       unroll=args.unroll, plan=args.plan == "auto", **overrides)
  row.update(_environment(), overrides=overrides)
  return row


def _run_step(args: argparse.Namespace) -> list[dict[str, Any]]:
  from ncfm_jax import bench_step  # pylint: disable=g-import-not-at-top
  if args.repeats < 5:
    raise ValueError(f"--repeats must be >= 5, got {args.repeats}")
  names = [n.strip() for n in args.workload.split(",") if n.strip()]
  for name in names:
    if name not in bench_step.WORKLOADS:
      raise ValueError(f"unknown --workload {name!r}; valid: {sorted(bench_step.WORKLOADS)}")
  if args.single is not None:  # child process: one workload
    row = _measure_step(args, args.single)
    print(_ROW_MARKER + json.dumps(row), flush=True)
    return [row]

  env = _environment()
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
      row = _measure_step(args, name)
    else:
      row = _run_isolated(["step", f"--workload={name}", f"--single={name}", *passthrough])
    rows.append(row)
    print(f"  {row['workload']}: {row['seconds_per_step']['median']:.3f} s/step", flush=True)
  table = [dict(workload=r["workload"], s_per_step=r["seconds_per_step"]["median"],
                min_s=r["seconds_per_step"]["min"], max_s=r["seconds_per_step"]["max"],
                first_call_s=r["first_call_seconds"], gflop_per_step=r["gflops_per_step"],
                achieved_gflops=r["achieved_gflops"], matmul_gflops=r["matmul_gflops"],
                ratio=r["fraction_of_matmul"], peak_mb=r["peak_memory_mb"],
                planned_mb=None if r.get("planned_gb") is None else r["planned_gb"] * 1024,
                plan=None if r.get("plan") is None else r["plan"]["described"],
                scan=r["use_scan"]) for r in rows]
  print()
  print(_markdown_table(table, list(table[0])))
  print()
  print("s_per_step: median (min, max) of the timed calls, each call = "
        f"{args.steps_per_call} steps; first_call_s: compile + the warm-up call; "
        "gflop_per_step: XLA cost analysis of one step; ratio = achieved / matmul "
        "(float32 matmul, 2048^3 on CPU and 8192^3 (TF32) on GPU, measured in the same process); peak_mb: peak host "
        "RSS on CPU (from the planned step's setup on: the planner's trials excluded), "
        "peak_bytes_in_use on GPU; planned_mb: the plan's compile-time bytes (ncfm_jax/plan.py).")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
    print(f"rows written to {args.json}")
  return rows


# --------------------------------------------------------------------------
# CLI.

SUBCOMMANDS: dict[str, Subcommand] = {
    "ncfd": Subcommand(
        help="NCFD value_and_grad time and memory vs F and freq_chunk.",
        add_arguments=_ncfd_arguments,
        run=_run_ncfd,
    ),
    "step": Subcommand(
        help="Full distillation step: s/step, FLOPs, GFLOP/s vs matmul, peak memory.",
        add_arguments=_step_arguments,
        run=_run_step,
    ),
    "scaling": Subcommand(
        help="Sharded step on 1, 2, 4 forced host devices; overhead vs the plain step.",
        add_arguments=lambda parser: _scaling().add_arguments(parser),
        run=lambda args: _scaling().run_from_args(args),
    ),
}


def _scaling():
  from ncfm_jax import bench_scaling  # pylint: disable=g-import-not-at-top
  return bench_scaling


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ncfm_jax.bench", description=__doc__.splitlines()[0]
  )
  subparsers = parser.add_subparsers(dest="command", required=True)
  for name, command in SUBCOMMANDS.items():
    sub = subparsers.add_parser(name, help=command.help)
    command.add_arguments(sub)
    sub.set_defaults(run=command.run)
  args = parser.parse_args(argv)
  args.run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
