"""Running test workers in fresh processes (their own device count, no jax import here)."""

import os
import socket
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def worker_env(cache_dir: str, num_devices: int | None = None) -> dict:
  """Environment for a CPU worker.

  ``--xla_backend_optimization_level=0`` compiles the tiny step ~5x faster on
  CPU (the comparisons are between runs with the same flags). The persistent
  compilation cache in ``cache_dir`` (one per pytest session) lets later
  workers reuse what earlier ones compiled (initialisers, the 1-device step).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if num_devices:
    # Not XLA_FLAGS' --xla_force_host_platform_device_count: XLA flags are part of
    # the cache key, and the 1-device programs should be shared between workers.
    env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (TESTS, ROOT, os.environ.get("PYTHONPATH")) if p)
  for name in ("NCFM_COORDINATOR", "NCFM_NUM_PROCESSES", "NCFM_PROCESS_ID"):
    env.pop(name, None)
  return env


def run(args: list[str], env: dict, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess:
  """Runs ``args`` from the repository root; with `check`, raises with the output's
  tail on failure."""
  result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"{' '.join(args)} exited with {result.returncode}:\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
  return result


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def cache_dir(tmp_path_factory) -> str:
  """The session's compilation cache (the same path from every test module)."""
  path = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
  path.mkdir(exist_ok=True)
  return str(path)


def default_flags_results(what: str, tmp_path_factory) -> dict:
  """What tests/_default_flags_worker.py computes for `what`, in a process with XLA's
  default flags (none of this process's XLA_FLAGS)."""
  out = tmp_path_factory.mktemp(what) / "out.npz"
  env = worker_env(cache_dir(tmp_path_factory))
  env.pop("XLA_FLAGS")
  run([sys.executable, os.path.join(TESTS, "_default_flags_worker.py"), what, str(out)], env)
  with np.load(out) as results:
    return dict(results)
