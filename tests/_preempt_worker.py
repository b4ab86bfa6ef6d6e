"""Worker for tests/test_preemption.py: the CLI (mode distill) with a test hook.

`python tests/_preempt_worker.py WORKDIR DATA_DIR PHASE:STEP [--config.x=v ...]`
under launch/local_multi_process.sh: process 1 sends itself SIGTERM right after
the progress line of PHASE's STEP (PHASE:STEP "none": no signal), as a
preemptible machine's scheduler would; then it is the CLI's business.
"""

import os
import signal
import sys

from absl import app

from ncfm_jax import main
from ncfm_jax.progress import Progress


def _hook(target: str) -> None:
  phase, _, step = target.partition(":")
  update = Progress.update

  def hooked(self, done, **kw):
    update(self, done, **kw)
    if (os.environ.get("NCFM_PROCESS_ID") == "1" and self.desc.split()[0] == phase
        and str(done) == step):
      os.kill(os.getpid(), signal.SIGTERM)
  Progress.update = hooked


if __name__ == "__main__":
  workdir, data_dir, target, *overrides = sys.argv[1:]
  _hook(target)
  argv = [sys.argv[0], "--config=configs/fashion_mnist.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.data.source=idx",
          "--config.eval.baselines=False", "--mode=distill", *overrides]
  sys.argv = argv  # config_flags reads its overrides from sys.argv
  app.run(main.main, argv=argv, flags_parser=main.parse_flags)
