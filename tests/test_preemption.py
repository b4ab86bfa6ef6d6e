"""A run stopped by SIGTERM in each phase resumes to the uninterrupted result; a write
that fails (a full disk) is one line and loses nothing (ncfm_jax/preemption.py,
checkpoints.TrainingCheckpoint, errors.writing).

The signal is sent by the test itself from a hook on the progress line of the step
it chooses, so where the run stops does not depend on timing.
"""

import errno
import json
import os
import shutil
import signal
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

import _spawn
import _tiny
from ncfm_jax import pipeline
from ncfm_jax import preemption
from ncfm_jax import workdir as wd
from ncfm_jax.errors import WriteError
from ncfm_jax.progress import Progress

pytestmark = pytest.mark.slow


def _config(data_dir):
  config = _tiny.fashion_tiny_config(data_dir)
  config.eval.baselines = False
  return config


def _sigterm_at(monkeypatch, phase: str, step: int) -> None:
  """SIGTERM to this process once, right after the progress line of `phase`'s `step`
  (phase: the first word of the line: pretrain, distill or eval)."""
  update, fired = Progress.update, []

  def hook(self, done, **kw):
    update(self, done, **kw)
    if not fired and self.desc.split()[0] == phase and done == step:
      fired.append(step)
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(Progress, "update", hook)


def _outputs(workdir) -> dict:
  metrics = json.loads((workdir / "metrics.json").read_text())
  return {"images": np.load(workdir / "distilled.npz")["images"],
          "pool": metrics["pretrain"], "eval": metrics["eval"]["convnet"]["checkpoints"]}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, separable_idx_dir):
  """(workdir, outputs) of the uninterrupted tiny run."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  pipeline.run(_config(separable_idx_dir), str(workdir))
  return workdir, _outputs(workdir)


@pytest.fixture
def straight(straight_run):
  return straight_run[1]


def test_sigterm_in_each_phase_saves_and_resumes_to_the_uninterrupted_result(
    straight, separable_idx_dir, tmp_path, monkeypatch):
  config, workdir = _config(separable_idx_dir), tmp_path / "run"
  # The tiny preset: pretraining 9 steps a member in calls of 5, distillation 6
  # steps in calls of 3 (checkpoints every 3), evaluation 10 steps in calls of 5.
  for phase, step, saved in (("pretrain", 5, "partial/pool_0"), ("distill", 3, "distill_ckpt/3"),
                             ("eval", 5, "partial/eval_convnet_0/5")):
    _sigterm_at(monkeypatch, phase, step)
    with pytest.raises(preemption.Preempted) as stop:
      pipeline.run(config, str(workdir))
    assert stop.value.exit_code == 143
    assert f"stopped by SIGTERM during" in str(stop.value) and "re-run" in str(stop.value)
    assert (workdir / saved).is_dir(), (phase, sorted(os.listdir(workdir)))
  monkeypatch.undo()
  pipeline.run(config, str(workdir))
  resumed = _outputs(workdir)
  assert resumed["pool"] == straight["pool"]
  np.testing.assert_array_equal(resumed["images"], straight["images"])
  assert resumed["eval"] == straight["eval"]
  assert not (workdir / "partial").exists()  # removed once each training finished


def test_a_failed_checkpoint_write_is_one_line_and_loses_nothing(
    straight_run, separable_idx_dir, tmp_path, monkeypatch):
  pooled, straight = straight_run
  config, workdir = _config(separable_idx_dir), tmp_path / "run"
  shutil.copytree(pooled / "pool", workdir / "pool")
  save = ocp.CheckpointManager.save

  def full_disk_at_step_6(self, step, *args, **kwargs):
    if step == 6 and "distill_ckpt" in str(self.directory):
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk_at_step_6)
  with pytest.raises(WriteError) as failed:
    pipeline.run(config, str(workdir), mode="distill")
  message = str(failed.value)
  assert "\n" not in message and str(workdir / "distill_ckpt" / "6") in message
  assert "No space left on device" in message and "GB free of" in message
  assert sorted(os.listdir(workdir / "distill_ckpt")) == ["3"]  # the previous one, whole
  monkeypatch.undo()
  pipeline.run(config, str(workdir), mode="distill")  # space freed: resumes from step 3
  np.testing.assert_array_equal(np.load(workdir / "distilled.npz")["images"],
                                straight["images"])


def test_a_failed_json_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "metrics.json"
  wd.write_json(str(path), {"kept": 1})

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(json, "dump", full_disk)
  with pytest.raises(WriteError, match=r"cannot write .*metrics.json: No space left"):
    wd.write_json(str(path), {"new": 2})
  assert json.loads(path.read_text()) == {"kept": 1}
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
    straight_run, separable_idx_dir, tmp_path_factory):
  """launch/local_multi_process.sh runs tests/_preempt_worker.py twice (the CLI's
  distillation, from the uninterrupted run's pool, 16 steps of one per call, with a
  hook that SIGTERMs process 1 after step 1): both processes stop at the same step
  (the first that JAX's preemption service agrees on, a few steps later), say so in
  one line without a traceback, and a re-run finishes where an uninterrupted
  2-process run does."""
  pooled, _ = straight_run
  runs = tmp_path_factory.mktemp("two")
  env = _spawn.worker_env(_spawn.cache_dir(tmp_path_factory))
  launcher = os.path.join(_spawn.ROOT, "launch", "local_multi_process.sh")

  def two_processes(name, hook, check=True):
    if not (runs / name).exists():
      shutil.copytree(pooled / "pool", runs / name / "pool")
    worker = [sys.executable, os.path.join(_spawn.TESTS, "_preempt_worker.py"),
              str(runs / name), str(separable_idx_dir), hook, "--config.distill.steps=16",
              "--config.distill.steps_per_call=1", "--config.distill.checkpoint_every=8"]
    return _spawn.run(["bash", launcher, "2", *worker],
                      dict(env, NCFM_PORT=str(_spawn.free_port())), check=check)

  stopped = two_processes("stopped", "distill:1", check=False)
  assert stopped.returncode == 143, stopped.stderr[-3000:]
  assert "Traceback" not in stopped.stderr and "Fatal" not in stopped.stderr, stopped.stderr
  lines = [l for l in stopped.stderr.splitlines() if l.startswith("[stop] stopped by")]
  assert len(lines) == 2 and lines[0] == lines[1], stopped.stderr
  step = int(lines[0].split("distillation at step ")[1].split("/")[0])
  assert 1 < step < 16 and str(step) in os.listdir(runs / "stopped" / "distill_ckpt"), lines[0]
  two_processes("stopped", "none")
  two_processes("straight", "none")
  np.testing.assert_array_equal(np.load(runs / "stopped" / "distilled.npz")["images"],
                                np.load(runs / "straight" / "distilled.npz")["images"])
