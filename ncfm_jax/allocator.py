"""tcmalloc for the processes we start: XLA:CPU runs much faster with it.

XLA:CPU allocates every step's large temporary buffers afresh. glibc's malloc
hands blocks that large straight back to the kernel, so the next step
page-faults the same memory in again; tcmalloc keeps and reuses it
(docs/benchmarks.md, "What made the CPU step faster", gives the measurements).

`LD_PRELOAD` only takes effect when a process starts, so `python -m ncfm_jax.main`
re-executes itself once with it (`reexec_with_tcmalloc`) when it will run on the
CPU, and the benchmarks put it into their child processes' environment
(`with_tcmalloc`). `NCFM_TCMALLOC=0` turns both off. The library is the Debian/Ubuntu package `libtcmalloc-minimal4`
(`launch/_setup.sh` installs it where apt-get is available); without it nothing
changes.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_PATTERNS = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
             "/usr/lib/libtcmalloc_minimal.so.4")
_REEXECED = "NCFM_TCMALLOC_REEXECED"
# JAX's accelerator plugins: where one is installed JAX picks its device by default.
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def cpu_backend(env=None) -> bool:
  """Whether JAX will run on the CPU, told without starting it: `JAX_PLATFORMS`
  when set (its first platform), else no GPU/TPU plugin installed."""
  env = os.environ if env is None else env
  platforms = env.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def find_tcmalloc() -> str | None:
  """Path of the tcmalloc shared library, or None when it is not installed."""
  for pattern in _PATTERNS:
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  return None


def enabled(env=None) -> bool:
  """False when `NCFM_TCMALLOC` is 0/false/no/off in `env` (default os.environ)."""
  env = os.environ if env is None else env
  return env.get("NCFM_TCMALLOC", "1").strip().lower() not in ("0", "false", "no", "off")


def is_loaded() -> bool:
  """Whether tcmalloc is mapped into this process (Linux; False elsewhere)."""
  try:
    with open("/proc/self/maps") as maps:
      return "libtcmalloc" in maps.read()
  except OSError:
    return False


def with_tcmalloc(env) -> dict:
  """A copy of `env` that preloads tcmalloc (unchanged if disabled or not installed)."""
  env = dict(env)
  path = find_tcmalloc()
  if not enabled(env) or path is None or "libtcmalloc" in env.get("LD_PRELOAD", ""):
    return env
  env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
  # tcmalloc reports every allocation over 1 GB on stderr by default.
  env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(2**40))
  return env


def reexec_with_tcmalloc() -> None:
  """Re-executes this process (same interpreter, argv, pid) with tcmalloc preloaded.

  Does nothing when tcmalloc is already loaded, disabled, not installed, when JAX
  will not run on the CPU (`cpu_backend`: the accelerator's memory is not malloc's),
  or when this process is itself such a re-execution. Call it before any work starts.
  """
  if is_loaded() or not enabled() or os.environ.get(_REEXECED) or not cpu_backend():
    return
  env = with_tcmalloc(os.environ)
  if "LD_PRELOAD" not in env or env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
    return
  env[_REEXECED] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)


def describe() -> str:
  """'tcmalloc' or 'system malloc': which allocator this process runs with."""
  return "tcmalloc" if is_loaded() else "system malloc"


def main(argv: list[str]) -> int:
  """`python -m ncfm_jax.allocator CMD [ARGS...]`: runs CMD with tcmalloc preloaded
  (e.g. `python -m ncfm_jax.allocator jupyter lab` for notebooks on CPU)."""
  if not argv:
    print("usage: python -m ncfm_jax.allocator CMD [ARGS...]", file=sys.stderr)
    return 2
  try:
    os.execvpe(argv[0], argv, with_tcmalloc(os.environ))
  except OSError as err:
    print(f"error: cannot run {argv[0]!r}: {err.strerror}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
