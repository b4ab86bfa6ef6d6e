"""tcmalloc preloading (ncfm_jax/allocator.py)."""

import os
import subprocess
import sys

import pytest

from ncfm_jax import allocator

needs_tcmalloc = pytest.mark.skipif(allocator.find_tcmalloc() is None,
                                    reason="libtcmalloc-minimal4 not installed")
_PRINT_ALLOCATOR = "from ncfm_jax import allocator; print(allocator.describe())"


@needs_tcmalloc
def test_with_tcmalloc_prepends_once_and_keeps_other_preloads():
  env = allocator.with_tcmalloc({"LD_PRELOAD": "/lib/other.so", "PATH": "/bin"})
  assert env["LD_PRELOAD"] == allocator.find_tcmalloc() + ":/lib/other.so"
  assert env["PATH"] == "/bin"
  assert allocator.with_tcmalloc(env)["LD_PRELOAD"] == env["LD_PRELOAD"]


def test_disabled_leaves_the_environment_alone():
  env = {"NCFM_TCMALLOC": "0", "PATH": "/bin"}
  assert allocator.with_tcmalloc(env) == env
  assert not allocator.enabled({"NCFM_TCMALLOC": "off"})
  assert allocator.enabled({})


def _run(args, **env):
  clean = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "NCFM_TCMALLOC_REEXECED")}
  return subprocess.run(args, capture_output=True, text=True, env={**clean, **env},
                        check=False)


@needs_tcmalloc
def test_command_wrapper_and_reexec_load_tcmalloc():
  wrapped = _run([sys.executable, "-m", "ncfm_jax.allocator", sys.executable, "-c",
                  _PRINT_ALLOCATOR])
  assert wrapped.stdout.strip() == "tcmalloc", wrapped.stderr
  reexec = ("import sys; from ncfm_jax import allocator; print('start', flush=True); "
            "allocator.reexec_with_tcmalloc(); print(allocator.describe())")
  done = _run([sys.executable, "-c", reexec])
  # The first process prints 'start' and is replaced; the re-executed one runs once.
  assert done.stdout.splitlines() == ["start", "start", "tcmalloc"], done.stderr
  off = _run([sys.executable, "-c", reexec], NCFM_TCMALLOC="0")
  assert off.stdout.splitlines() == ["start", "system malloc"], off.stderr


def test_wrapper_reports_a_missing_command():
  done = _run([sys.executable, "-m", "ncfm_jax.allocator", "no-such-command-xyz"])
  assert done.returncode == 2
  assert "no-such-command-xyz" in done.stderr


def test_only_a_cpu_run_re_executes_with_tcmalloc(monkeypatch):
  assert allocator.cpu_backend({"JAX_PLATFORMS": "cpu"})
  assert not allocator.cpu_backend({"JAX_PLATFORMS": "cuda,cpu"})
  assert not allocator.cpu_backend({"JAX_PLATFORMS": "tpu"})
  found = {"jax_cuda12_plugin"}
  monkeypatch.setattr(allocator.importlib.util, "find_spec", lambda name: name in found)
  assert not allocator.cpu_backend({})  # a GPU plugin: JAX picks the GPU
  found.clear()
  assert allocator.cpu_backend({})
  # On a GPU host the CLI does not re-execute itself.
  monkeypatch.setattr(allocator, "is_loaded", lambda: False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  monkeypatch.delenv(allocator._REEXECED, raising=False)  # pylint: disable=protected-access
  monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail("re-executed"))
  allocator.reexec_with_tcmalloc()
