"""NCFD gradient time and memory vs F and freq_chunk: ``python -m ncfm_jax.bench ncfd``.

Times ``jax.jit(jax.value_and_grad(ncfd, argnums=1))`` (the gradient w.r.t. the
synthetic features, as in the distillation step) for real ``[N, D]``, syn
``[M, D]`` (L2-normalised Gaussian) and ``t ~ N(0, I) [F, D]``, with and without
frequency chunking. Each configuration runs in a fresh subprocess so that the
process-wide peak memory counters (CPU: ``ru_maxrss``; GPU: the allocator's
``peak_bytes_in_use``) belong to that configuration alone.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp

from ncfm_jax.bench import common
from ncfm_jax.errors import InputError
from ncfm_jax.ncfd import gaussian_frequencies
from ncfm_jax.ncfd import ncfd


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of ``python -m ncfm_jax.bench ncfd``."""
  parser.add_argument("--num-real", type=int, default=1024, help="N real rows.")
  parser.add_argument("--num-syn", type=int, default=40, help="M synthetic rows.")
  parser.add_argument("--dim", type=int, default=2048, help="feature dim D.")
  parser.add_argument("--freqs", type=str, default="1024,4096,16384",
                      help="comma list of F.")
  parser.add_argument("--chunks", type=str, default="none,1024",
                      help="comma list of freq_chunk values ('none' = one block).")
  parser.add_argument("--runs", type=int, default=10, help="timed runs (>= 1).")
  parser.add_argument("--warmup", type=int, default=2, help="untimed runs.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--in-process", action="store_true",
                      help="no subprocess per configuration (peak memory then accumulates).")
  parser.add_argument("--json", type=str, default=None, help="write rows here.")
  # Internal: measure exactly one configuration "F:chunk" and emit its row.
  parser.add_argument("--single", type=str, default=None, help=argparse.SUPPRESS)


def _parse_chunk(text: str) -> int | None:
  return None if text.lower() in ("none", "0", "") else int(text)


def measure(num_real: int, num_syn: int, dim: int, num_freqs: int,
            freq_chunk: int | None, num_runs: int, num_warmup: int,
            seed: int) -> dict[str, Any]:
  """Times one ``value_and_grad`` configuration in this process.

  Returns:
    One row: the shapes, ``compile_s``, ``median_ms`` / ``min_ms`` /
    ``max_ms`` per call, XLA's temp buffer (``xla_temp_mib``), the RSS
    increases during compilation and during the calls, the device peak (GPU)
    and the `common.environment`.
  """
  key_real, key_syn, key_t = jax.random.split(jax.random.PRNGKey(seed), 3)
  unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  real = unit(jax.random.normal(key_real, (num_real, dim)))
  syn = unit(jax.random.normal(key_syn, (num_syn, dim)))
  t = gaussian_frequencies(key_t, num_freqs, dim)
  jax.block_until_ready((real, syn, t))

  loss = functools.partial(ncfd, freq_chunk=freq_chunk)
  step = jax.jit(jax.value_and_grad(loss, argnums=1))
  with common.RssWindow() as compile_rss:
    start = time.perf_counter()
    compiled = step.lower(real, syn, t).compile()
    compile_s = time.perf_counter() - start
  temp_bytes = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)

  with common.RssWindow() as run_rss:
    timing = common.time_calls(lambda: compiled(real, syn, t), num_runs, num_warmup)
  device_peak = common.device_peak_bytes()
  mib = lambda n: None if n is None else n / common.MIB
  return {
      **common.environment(),
      "N": num_real, "M": num_syn, "D": dim, "F": num_freqs,
      "freq_chunk": freq_chunk if freq_chunk is not None else "none",
      "compile_s": compile_s,
      "median_ms": 1e3 * timing.median,
      "min_ms": 1e3 * min(timing.times),
      "max_ms": 1e3 * max(timing.times),
      "runs": num_runs,
      "xla_temp_mib": mib(temp_bytes),
      "peak_rss_mib": mib(common.peak_rss_bytes()),
      "compile_rss_mib": mib(compile_rss.increase_bytes),
      "run_rss_mib": mib(run_rss.increase_bytes),
      "rss_exact": run_rss.exact,
      "device_peak_mib": mib(device_peak),
  }


def _print_header(args: argparse.Namespace) -> None:
  env = common.environment()
  print("# ncfd benchmark: value_and_grad w.r.t. syn, jit, float32")
  print(f"device: {env['device']} x{env['num_devices']}; jax {env['jax']}"
        f" (jaxlib {env['jaxlib']}); python {env['python']}; {env['cpu_count']} CPUs;"
        f" load avg {env['load_avg_1m']}; {env['date']}")
  print(f"real [{args.num_real}, {args.dim}], syn [{args.num_syn}, {args.dim}],"
        f" {args.runs} timed runs after {args.warmup} warm-up;"
        f" {'in one process' if args.in_process else 'one subprocess per row'}",
        flush=True)


def _print_table(rows: list[dict[str, Any]]) -> None:
  on_gpu = any(r["device_peak_mib"] is not None for r in rows)
  columns = ["F", "freq_chunk", "compile_s", "median_ms", "min_ms", "max_ms",
             "xla_temp_mib"]
  columns += (["device_peak_mib"] if on_gpu
              else ["run_rss_mib", "compile_rss_mib", "peak_rss_mib"])
  print()
  print(common.markdown_table(rows, columns))
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


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Measures every (F, chunk) of the flags, prints a table, returns the rows."""
  if args.runs < 1:
    raise InputError(f"--runs must be >= 1, got {args.runs}.")
  shape_args = [f"--num-real={args.num_real}", f"--num-syn={args.num_syn}",
                f"--dim={args.dim}", f"--runs={args.runs}", f"--warmup={args.warmup}",
                f"--seed={args.seed}"]
  measure_here = functools.partial(measure, args.num_real, args.num_syn, args.dim,
                                   num_runs=args.runs, num_warmup=args.warmup,
                                   seed=args.seed)
  if args.single is not None:  # child process: one configuration
    freqs, chunk = args.single.split(":")
    rows = [measure_here(int(freqs), _parse_chunk(chunk))]
    common.emit_rows(rows)
    return rows

  all_freqs = common.parse_list(args.freqs, int, "--freqs", minimum=1)
  chunks = common.parse_list(args.chunks, _parse_chunk, "--chunks", minimum=1,
                             kind="an int or none")
  _print_header(args)
  rows = []
  for freqs in all_freqs:
    for chunk in chunks:
      if args.in_process:
        row = measure_here(freqs, chunk)
      else:
        chunk_arg = "none" if chunk is None else str(chunk)
        row, = common.run_child(["ncfd", *shape_args, f"--single={freqs}:{chunk_arg}"])
      rows.append(row)
      print(f"  F={freqs} chunk={row['freq_chunk']}: {row['median_ms']:.1f} ms",
            flush=True)
  _print_table(rows)
  common.write_json(rows, args.json)
  return rows
