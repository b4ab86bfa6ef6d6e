"""What every benchmark shares: environment, timing, child processes, memory, tables.

One copy of each helper, used by the `ncfd`, `step` and `scaling` subcommands:

* `environment`: the machine and software a row was measured on;
* `time_calls` / `time_interleaved`: seconds per call after warm-up, each call
  blocked until its outputs are ready;
* `ThreadedRun`: calls a run function that donates its state, feeding it back;
* `emit_rows` / `run_child`: a measurement in a fresh ``python -m
  ncfm_jax.bench`` process (optionally with n forced CPU devices), whose rows
  come back on marked stdout lines;
* `RssWindow`, `peak_rss_bytes`, `device_peak_bytes`, `peak_memory_mb`;
* `matmul_gflops`: the dense matmul rate a step's FLOP rate is compared with;
* `markdown_table`, `write_json`;
* `parse_list`: a comma-list flag, refused in one line (InputError) when malformed.

The run functions being timed are the library's own (`execution.make_run_steps`).
"""

from __future__ import annotations

import datetime
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ncfm_jax import allocator
from ncfm_jax.errors import InputError

MIB = 2**20
_ROW_MARKER = "BENCH_ROW "


# --------------------------------------------------------------------------
# Flags.

TYPE_NAMES = {int: "an int", float: "a number"}
"""How a flag's error names the type it expected."""


def parse_list(text: str, convert: Callable[[str], Any], flag: str,
               minimum: float | None = None, kind: str | None = None) -> list[Any]:
  """``"1,2,4"`` -> ``[convert("1"), ...]`` for the flag `flag` (empty items
  skipped). A value `convert` refuses (ValueError; `kind` says what was
  expected), one below `minimum`, or no value at all raises InputError naming
  the flag and the value."""
  values = []
  for item in (part.strip() for part in text.split(",")):
    if not item:
      continue
    try:
      value = convert(item)
    except (TypeError, ValueError):
      expected = kind or TYPE_NAMES.get(convert, "valid")
      raise InputError(f"{flag}: {item!r} is not {expected}") from None
    if minimum is not None and value is not None and value < minimum:
      raise InputError(f"{flag}: {item!r} is below {minimum:g}")
    values.append(value)
  if not values:
    raise InputError(f"{flag}: no value given")
  return values


# --------------------------------------------------------------------------
# Environment.


def environment(devices: bool = True) -> dict[str, Any]:
  """The software, host and (if `devices`) accelerator a row was measured on.

  Args:
    devices: also describe ``jax.devices()[0]``, the device count and the
      allocator. False keeps the JAX backend uninitialised: a parent process
      whose children use the accelerators must not claim its memory first.

  Returns:
    ``jax``, ``jaxlib``, ``python``, ``cpu_count``, ``load_avg_1m``, ``date``
    and, with `devices`, ``device``, ``num_devices``, ``allocator``.
  """
  env = {
      "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"),
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
  }
  if devices:
    device = jax.devices()[0]
    env.update(device=f"{device.platform}: {device.device_kind}",
               num_devices=jax.device_count(), allocator=allocator.describe())
  return env


# --------------------------------------------------------------------------
# Timing.


class Timing(NamedTuple):
  """Seconds of the first warm-up call (compile + run) and of each timed call."""
  first_call_s: float | None
  times: list[float]

  @property
  def median(self) -> float:
    return statistics.median(self.times)


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def time_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int,
                     warmup: int = 1) -> dict[str, Timing]:
  """Times `repeats` calls of each function after `warmup` untimed calls.

  The functions take turns (one call of each per round), so that a change in
  the machine's load hits every one alike. Each call is blocked until its
  outputs are ready (`jax.block_until_ready`): JAX dispatches asynchronously.

  Args:
    fns: name -> a function of no arguments (close over the inputs; see
      `ThreadedRun` for functions that donate their state).
    repeats: timed calls per function (>= 1).
    warmup: untimed calls first; the first one (which compiles) is reported as
      ``first_call_s``.

  Returns:
    name -> `Timing`; ``Timing.median`` is the number to report.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  first = {name: None for name in fns}
  for i in range(warmup):
    for name, fn in fns.items():
      seconds = _timed(fn)
      if i == 0:
        first[name] = seconds
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(_timed(fn))
  return {name: Timing(first[name], times[name]) for name in fns}


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
  """`time_interleaved` of one function: e.g. ``time_calls(f, 10).median``."""
  return time_interleaved({"fn": fn}, repeats, warmup)["fn"]


class ThreadedRun:
  """``run(state, *args)`` called again and again on the state it last returned.

  The run functions donate their state (``donate_argnums=(0,)``): the state
  passed in is deleted, so each call must get the one the previous returned.
  ``outputs`` holds the last call's ``(state, metrics)``.
  """

  def __init__(self, run: Callable[..., tuple[Any, Any]], state: Any, *args: Any):
    self._run, self._args = run, args
    self.outputs = (state, None)

  def __call__(self) -> tuple[Any, Any]:
    self.outputs = self._run(self.outputs[0], *self._args)
    return self.outputs


def matmul_probe(size: int | None = None, count: int = 1) -> tuple[Callable[[], Any], float]:
  """`(fn, flops)`: `count` jitted dense float32 matmuls of this device, their FLOPs.

  XLA's default precision, i.e. TF32 on NVIDIA GPUs; ``[size, size]`` operands,
  2048 on CPU and 8192 elsewhere (large enough to reach the peak rate).
  """
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return (lambda: [matmul(a, b) for _ in range(count)]), 2.0 * size**3 * count


def matmul_gflops(size: int | None = None, repeats: int = 10) -> float:
  """Dense float32 matmul rate of this device, GFLOP/s (median of `repeats`)."""
  fn, flops = matmul_probe(size)
  return flops / time_calls(fn, repeats).median / 1e9


# --------------------------------------------------------------------------
# Memory.


def peak_rss_bytes() -> int:
  """This process's peak resident set size so far (``ru_maxrss``; monotone)."""
  scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
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


class RssWindow:
  """Peak RSS increase over a code region: ``with RssWindow() as w: ...``.

  ``w.increase_bytes`` is exact where VmHWM can be reset at the start
  (``w.exact``); otherwise a lower bound from the monotone ``ru_maxrss``.
  """

  def __enter__(self) -> "RssWindow":
    gc.collect()
    self.exact = _reset_peak_rss()
    self.start = _proc_status_bytes("VmRSS") if self.exact else peak_rss_bytes()
    self.increase_bytes = None
    return self

  def __exit__(self, *exc_info: Any) -> None:
    end = _proc_status_bytes("VmHWM") if self.exact else peak_rss_bytes()
    self.increase_bytes = max(end - self.start, 0)


def device_peak_bytes() -> int | None:
  """The allocator's ``peak_bytes_in_use`` on device 0; None where not reported (CPU)."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return (stats or {}).get("peak_bytes_in_use")


def peak_memory_mb() -> float:
  """Peak device memory on accelerators, peak host RSS on CPU, MiB."""
  device_peak = device_peak_bytes()
  if jax.devices()[0].platform != "cpu" and device_peak is not None:
    return device_peak / MIB
  return peak_rss_bytes() / MIB


# --------------------------------------------------------------------------
# Child processes.


def emit_rows(rows: Sequence[dict[str, Any]]) -> None:
  """Prints `rows` on marked stdout lines, for the parent's `run_child`."""
  for row in rows:
    print(_ROW_MARKER + json.dumps(row), flush=True)


def run_child(argv: Sequence[str], *, cpu_devices: int | None = None) -> list[dict[str, Any]]:
  """Runs ``python -m ncfm_jax.bench *argv`` in a fresh process; returns its rows.

  A fresh process per measurement keeps the process-wide peak memory counters
  (``ru_maxrss``, ``peak_bytes_in_use``) to that measurement alone, and is the
  only way to choose the device count: XLA reads it once, at backend start.
  The child runs with tcmalloc preloaded where available (see
  `ncfm_jax.allocator`) and emits its rows with `emit_rows`.

  Args:
    argv: the subcommand and its flags.
    cpu_devices: if set, the child runs on the CPU with this many forced host
      devices (``--xla_force_host_platform_device_count``); otherwise it sees
      the devices this process would.

  Raises:
    RuntimeError: the child failed or emitted no row (its stderr tail attached).
  """
  env = allocator.with_tcmalloc(os.environ)
  if cpu_devices is not None:
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(
        flags + [f"--xla_force_host_platform_device_count={cpu_devices}"])
  command = [sys.executable, "-m", "ncfm_jax.bench", *argv]
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  rows = [json.loads(line[len(_ROW_MARKER):]) for line in done.stdout.splitlines()
          if line.startswith(_ROW_MARKER)]
  if done.returncode != 0 or not rows:
    raise RuntimeError(f"benchmark subprocess failed ({done.returncode}): "
                       f"{' '.join(command)}\n{done.stderr[-3000:]}")
  return rows


# --------------------------------------------------------------------------
# Output.


def _format(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """A markdown table of `columns` over `rows` (missing or None -> "-").

  >>> print(markdown_table([{"F": 1024, "ms": 0.5}], ["F", "ms"]))
  | F | ms |
  |---|---|
  | 1024 | 0.5 |
  """
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_format(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def write_json(rows: Sequence[dict[str, Any]], path: str | None) -> None:
  """Writes `rows` to `path` (if given) and says so."""
  if path:
    with open(path, "w") as f:
      json.dump(list(rows), f, indent=2)
    print(f"rows written to {path}")
