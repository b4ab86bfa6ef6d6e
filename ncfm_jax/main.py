"""Command line: `python -m ncfm_jax.main --config=configs/X.py[:arg] --workdir=DIR`.

Any config field can be overridden, e.g. `--config.distill.ipc=50`. `--mode=all`
(default) runs the phases that have no result in the workdir yet; re-running a
killed command resumes from the last checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ncfm_jax import allocator
from ncfm_jax import distributed
from ncfm_jax import pipeline
from ncfm_jax import workdir as wd

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/fashion_mnist.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
_MODE = flags.DEFINE_enum("mode", "all", list(pipeline.MODES), "Phase(s) to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
    pipeline.run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except (ValueError, pipeline.PhaseError, wd.WorkdirError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
