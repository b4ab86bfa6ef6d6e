"""Multi-process start-up: call `maybe_initialize()` before anything touches a JAX backend.

One process per host (TPU VM workers) or per GPU (Slurm tasks) runs the same
program; `jax.distributed.initialize` connects them, after which
`jax.devices()` lists every device of every process and one `jax.jit` with
`NamedSharding`s (ncfm_jax/sharding.py) runs over all of them. Only process 0
writes the workdir's json/npz/png (`is_primary`); every process takes part in
Orbax checkpoint saves (each writes its own shards).

Detected launches (first match wins):

* explicit: arguments, or ``NCFM_COORDINATOR=host:port``, ``NCFM_NUM_PROCESSES``,
  ``NCFM_PROCESS_ID`` (launch/local_multi_process.sh; any launcher);
* Slurm: ``SLURM_NTASKS > 1`` with ``SLURM_PROCID`` (``srun``; launch/slurm_gpu.sbatch);
  jax reads the coordinator from ``SLURM_STEP_NODELIST`` and gives each task the
  GPU ``SLURM_LOCALID``;
* Cloud TPU pods: ``MEGASCALE_COORDINATOR_ADDRESS``, or ``TPU_WORKER_HOSTNAMES`` /
  ``TPU_PROCESS_ADDRESSES`` listing more than one worker (GKE), or
  ``NCFM_DISTRIBUTED=1`` (launch/tpu_vm.sh: TPU VMs describe the slice in the
  metadata server, which jax itself queries);
* otherwise a single process: nothing to do.

Between CPU processes jax 0.10 uses Gloo collectives over TCP
(``jax_cpu_collectives_implementation``, default "gloo"; "mpi" needs an MPI
library).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "NCFM_COORDINATOR"
ENV_NUM_PROCESSES = "NCFM_NUM_PROCESSES"
ENV_PROCESS_ID = "NCFM_PROCESS_ID"
ENV_FORCE = "NCFM_DISTRIBUTED"

_TPU_WORKER_LISTS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> str | None:
  """Which multi-process launch the environment describes.

  Returns "explicit", "slurm", "tpu" or None (single process). Explicit
  settings with ``NCFM_NUM_PROCESSES=1`` count as a single process.
  """
  environ = os.environ if environ is None else environ
  if environ.get(ENV_COORDINATOR) or environ.get(ENV_NUM_PROCESSES):
    return "explicit" if (_int_env(environ, ENV_NUM_PROCESSES) or 1) > 1 else None
  if (_int_env(environ, "SLURM_NTASKS") or 1) > 1 and "SLURM_PROCID" in environ:
    return "slurm"
  if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  for name in _TPU_WORKER_LISTS:
    if len([h for h in environ.get(name, "").split(",") if h.strip()]) > 1:
      return "tpu"
  if environ.get(ENV_FORCE, "").lower() in ("1", "true", "yes"):
    return "tpu"
  return None


def maybe_initialize(coordinator_address: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None, *,
                     environ: Mapping[str, str] | None = None,
                     cpu_collectives: str | None = "gloo",
                     initialization_timeout: int = 300) -> bool:
  """Calls `jax.distributed.initialize` when this is one of several processes.

  Args:
    coordinator_address: "host:port" of process 0 (else ``NCFM_COORDINATOR``).
    num_processes: total processes (else ``NCFM_NUM_PROCESSES``).
    process_id: this process, in ``[0, num_processes)`` (else ``NCFM_PROCESS_ID``).
    environ: the environment to read (default ``os.environ``; for tests).
    cpu_collectives: ``jax_cpu_collectives_implementation`` for CPU processes
      ("gloo" or "mpi"); None leaves jax's default.
    initialization_timeout: seconds to wait for every process to connect.

  Returns:
    True if the distributed runtime is (now, or already) initialised, False
    for a single process.

  Raises:
    ValueError: explicit settings that are incomplete or inconsistent.
  """
  if jax.distributed.is_initialized():
    return True
  environ = os.environ if environ is None else environ
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if explicit or detect_launch(environ) == "explicit":
    coordinator_address = coordinator_address or environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
      num_processes = _int_env(environ, ENV_NUM_PROCESSES)
    if process_id is None:
      process_id = _int_env(environ, ENV_PROCESS_ID)
    if num_processes is None or num_processes <= 1:
      return False
    missing = [name for name, value in ((ENV_COORDINATOR, coordinator_address),
                                        (ENV_PROCESS_ID, process_id)) if value is None]
    if missing:
      raise ValueError(f"{num_processes} processes but {' and '.join(missing)} "
                       f"not set")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"{ENV_PROCESS_ID}={process_id} is not in [0, {num_processes})")
    _set_cpu_collectives(cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=initialization_timeout)
    return True
  launch = detect_launch(environ)
  if launch is None:
    return False
  _set_cpu_collectives(cpu_collectives)
  # Slurm and TPU: jax's own cluster detection finds coordinator, count and id.
  jax.distributed.initialize(initialization_timeout=initialization_timeout)
  return True


def _set_cpu_collectives(implementation: str | None) -> None:
  if implementation is not None:
    jax.config.update("jax_cpu_collectives_implementation", implementation)


def is_primary() -> bool:
  """True in process 0, the one that writes outputs (always True for one process)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (e.g. after process 0 wrote a file the
  others read); nothing for a single process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def agree(value):
  """Process 0's `value` (a bool or an int) on every process.

  For a file check that decides which phases (and so which collectives) run:
  process 0 writes the workdir, so another process may look a moment before or
  after it and see something else (seen: a pool directory created in between
  made process 1 open one more checkpoint manager, whose barrier then met
  process 0's training step). Nothing to agree on for a single process.
  """
  kind = type(value)
  if jax.process_count() == 1:
    return kind(value)
  return kind(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def describe() -> str:
  """One line for logs: process index/count and local/global device counts."""
  return (f"process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global "
          f"{jax.default_backend()} devices")
