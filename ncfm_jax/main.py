"""Command line: `python -m ncfm_jax.main --config=configs/X.py[:arg] [--workdir=DIR]`.

Any config field can be overridden, e.g. `--config.distill.ipc=50`. Without
`--workdir` the run uses `workdirs/<config file stem>[_<arg>]` (printed first).
`--mode=plan` writes the memory plan of one distillation step (DIR/plan.json)
without loading data. `--mode=all` (default) runs the phases that have no result in
the workdir yet; re-running a command resumes from the last checkpoint, also after
a SIGTERM or Ctrl-C (which save where the run is before it stops).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ncfm_jax import allocator
from ncfm_jax import config_lib
from ncfm_jax import distributed
from ncfm_jax import pipeline
from ncfm_jax import preemption
from ncfm_jax.errors import InputError
from ncfm_jax.errors import config_override_message
from ncfm_jax.errors import one_line

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/fashion_mnist.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and results (default: "
    "workdirs/<config file stem>[_<arg>]).")
_MODE = flags.DEFINE_enum("mode", "all", list(pipeline.MODES), "Phase(s) to run.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments: {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  # XLA:CPU steps run ~25% faster with tcmalloc (allocator.py); it must be
  # preloaded at process start, so this re-executes once (NCFM_TCMALLOC=0: off).
  allocator.reexec_with_tcmalloc()
  # Orbax logs every save at INFO; our own progress lines are printed instead.
  logging.set_verbosity(logging.WARNING)
  try:
    # Slurm, Cloud TPU pods or NCFM_COORDINATOR/NCFM_NUM_PROCESSES/NCFM_PROCESS_ID:
    # one program over every host's devices; a no-op for a single process.
    distributed.maybe_initialize()
    if not distributed.is_primary():  # one log per job: process 0's (errors still show)
      sys.stdout = open(os.devnull, "w")
    config = _CONFIG.value
    try:
      config.get("distill")  # config_flags defers a config file that failed to load
    except OSError as err:
      raise InputError(f"--config: {one_line(str(err))}") from err
    workdir = _WORKDIR.value
    if workdir is None:
      workdir = config_lib.default_workdir(flags.FLAGS["config"].config_filename)
      print(f"[workdir] {workdir} (the default for this config; --workdir=DIR to choose)",
            flush=True)
    pipeline.run(config, workdir, _MODE.value)
  except preemption.Preempted as stop:  # SIGTERM / SIGINT: saved, then stopped
    print(f"[stop] {stop}", file=sys.stderr, flush=True)
    sys.exit(stop.exit_code)
  except InputError as err:  # anything else is a bug: traceback, exit 1
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def _resolve_config_flag(arg: str) -> str:
  """`--config=name.py[:arg]` -> the file as given if it exists, else the installed
  package's `configs/name.py` (so the command works from any directory)."""
  if not arg.startswith("--config="):
    return arg
  return "--config=" + config_lib.resolve_config(arg[len("--config="):])


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with bad flags and config errors (an unknown config
  argument, a misspelt `--config.x.y` field) as one line and exit 2."""
  try:
    return flags.FLAGS([_resolve_config_flag(arg) for arg in argv])
  except FileNotFoundError as err:  # neither the path nor an installed config
    message = f"--config: {err}"
  except flags.Error as err:
    message = one_line(str(err)) if "Traceback" in str(err) else str(err)
  except (AttributeError, KeyError, TypeError, ValueError) as err:  # a --config.x override
    message = config_override_message(err, argv)
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
