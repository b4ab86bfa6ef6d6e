"""The CLI end to end on generated IDX data (tests/_tiny.py), resume, and bad input.

No test here needs the real Fashion-MNIST: every run reads the class-separable
28x28x1 dataset that tests/conftest.py writes as IDX files (labels 0, 1, 7, the
classes of configs/fashion_mnist.py:tiny) through data.source=idx.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _tiny
from ncfm_jax import checkpoints
from ncfm_jax import distill
from ncfm_jax import models
from ncfm_jax import pipeline
from ncfm_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/fashion_mnist.py:tiny"
CLASSES = 3

# The end-to-end run: the tiny preset plus a budget at which distillation must
# put class information into a set initialised as noise. Measured 2026-12-02 on
# the project's 2-core CPU machine (shared with other jobs), BUDGET's flags as FLAGS:
#   PYTHONPATH=tests python -c "import _tiny; _tiny.write_separable_idx('DIR', 150, 100)"
#   for S in 0 1 2 3 4; do python -m ncfm_jax.main --config=configs/fashion_mnist.py:tiny \
#     --workdir=/tmp/m$S --config.data.data_dir=DIR --config.data.source=idx \
#     --config.seed=$S FLAGS; done
# Test accuracy (%) of one evaluation each, on 300 test images (chance 33.3):
#   seed | distilled | init (noise) | random real | distilled - init | CPU s (wall s)
#      0 |     65.00 |        16.67 |       64.00 |            48.33 | 51.9 (111)
#      1 |     71.00 |        33.67 |       68.67 |            37.33 | 51.1 (85)
#      2 |     66.67 |        20.67 |       71.33 |            46.00 | 52.2 (87)
#      3 |     65.00 |        28.67 |       66.00 |            36.33 | 54.2 (100)
#      4 |     50.33 |        25.00 |       55.00 |            25.33 | 46.5 (76)
# (the tiny preset alone: 50.7 CPU s). Minimum gain over init 25.3, minimum
# distilled 50.3 = chance + 17.0; the test asks for about half of each.
# From the preset's mix initialisation (real images) the same budget LOWERS the
# accuracy (same command without --config.distill.init=noise, seeds 0-4: distilled
# 63.7 / 68.3 / 62.3 / 58.3 / 45.7 vs init 71.7 / 74.3 / 68.3 / 65.7 / 62.0), so the
# test starts from noise.
BUDGET = ("--config.distill.init=noise", "--config.pretrain.epochs=2",
          "--config.distill.steps=12", "--config.distill.lr=0.1",
          "--config.eval.max_steps=40")
BUDGET_STEPS = 12
MIN_GAIN_OVER_INIT, MIN_GAIN_OVER_CHANCE = 12.0, 8.0


def _data_flags(data_dir) -> list[str]:
  return [f"--config.data.data_dir={data_dir}", "--config.data.source=idx"]


def _cli(workdir, *flags, config=TINY):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "ncfm_jax.main", f"--config={config}",
       f"--workdir={workdir}", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, separable_idx_dir):
  """A workdir holding the tiny pool (pretrained once for the module)."""
  workdir = str(tmp_path_factory.mktemp("pool") / "run")
  pipeline.run(_tiny.fashion_tiny_config(separable_idx_dir), workdir, mode="pretrain")
  return workdir


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, separable_idx_dir):
  """(workdir, result, flags) of the whole tiny CLI (all phases) in one process."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  flags = _data_flags(separable_idx_dir)
  return workdir, _cli(workdir, *flags), flags


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, separable_idx_dir):
  """(workdir, result, flags) of the whole CLI at BUDGET in one process."""
  workdir = tmp_path_factory.mktemp("budget") / "run"
  flags = [*_data_flags(separable_idx_dir), *BUDGET]
  return workdir, _cli(workdir, *flags), flags


@pytest.mark.slow
def test_cli_end_to_end(budget_run):
  workdir, result, flags = budget_run
  assert result.returncode == 0, result.stderr[-3000:]
  # The generated files were read, not an installed Fashion-MNIST.
  train = CLASSES * _tiny.SEPARABLE_TRAIN_PER_CLASS
  test = CLASSES * _tiny.SEPARABLE_TEST_PER_CLASS
  assert f"train ({train}, 28, 28, 1), test ({test}, 28, 28, 1)" in result.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["dataset"] == "fashion_mnist" and metrics["ipc"] == 2
  assert metrics["distill"]["steps"] == BUDGET_STEPS
  assert metrics["distill"]["seconds_per_step"] > 0
  for section in ("eval", "baseline_random_real", "baseline_init"):
    run = metrics[section]["convnet"]
    assert len(run["runs"]) == 1
    assert run["settings"]["soft_labels"] is False and "num_eval" not in run["settings"]
  # Margins well inside the measured ones (module comment).
  distilled = metrics["eval"]["convnet"]["mean"]
  initial = metrics["baseline_init"]["convnet"]["mean"]
  assert distilled >= 100.0 / CLASSES + MIN_GAIN_OVER_CHANCE, (distilled, initial)
  assert distilled >= initial + MIN_GAIN_OVER_INIT, (distilled, initial)
  for name in ("distilled.npz", "distilled.png", "loss.png", "config.json"):
    assert (workdir / name).exists(), name
  stored = np.load(workdir / "distilled.npz")
  assert stored["images"].shape == (3, 2, 28, 28, 1)
  assert stored["decoded"].shape == (24, 28, 28, 1) and stored["decoded"].dtype == np.uint8
  assert list(stored["labels"]) == [0] * 8 + [1] * 8 + [2] * 8
  assert "| convnet |" in result.stdout
  # Re-running finds every phase done and recomputes nothing.
  again = _cli(workdir, *flags)
  assert again.returncode == 0 and "[distill]" not in again.stdout and "[pretrain" not in again.stdout


def test_interrupted_distillation_resumes_to_the_same_images(pretrained, separable_idx_dir,
                                                            tmp_path, monkeypatch):
  config = _tiny.fashion_tiny_config(separable_idx_dir)
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  shutil.copytree(pretrained, straight)
  shutil.copytree(pretrained, interrupted)
  pipeline.run(config, straight, mode="distill")

  original_update = pipeline.Progress.update

  def crash_after_first_checkpoint(self, step, **kw):
    original_update(self, step, **kw)
    if step >= config.distill.checkpoint_every:
      raise KeyboardInterrupt("simulated kill")

  monkeypatch.setattr(pipeline.Progress, "update", crash_after_first_checkpoint)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(config, interrupted, mode="distill")
  assert not os.path.exists(os.path.join(interrupted, "distilled.npz"))
  monkeypatch.setattr(pipeline.Progress, "update", original_update)
  pipeline.run(config, interrupted, mode="distill")

  a = np.load(os.path.join(straight, "distilled.npz"))["images"]
  b = np.load(os.path.join(interrupted, "distilled.npz"))["images"]
  np.testing.assert_allclose(a, b, atol=1e-6)
  model = models.get_model("convnet", 3, width=config.model.width, depth=config.model.depth,
                           image_size=28, channels=1)
  like = distill.init_state(jax.random.PRNGKey(0), jnp.asarray(b), models.feature_dim(
      model, 28, 1), config.distill)
  with checkpoints.DistillCheckpoints(os.path.join(interrupted, "distill_ckpt"), 2) as store:
    state, history = store.restore_latest(like)
  assert int(state.step) == len(history["loss"]) == config.distill.steps


@pytest.mark.parametrize("flag, message", [
    ("--config.data.name=nosuchset", "nosuchset"),
    ("--config.distill.ipc=0", "ipc"),
    ("--config.distill.factor=0", "factor"),
    ("--config.distill.num_freqs=100", "num_freqs"),
])
def test_bad_config_is_one_clear_line_and_writes_nothing(tmp_path, flag, message):
  workdir = tmp_path / "run"
  result = _cli(workdir, flag)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert message in last and last.startswith("error:"), result.stderr[-2000:]
  assert not workdir.exists() or not any(workdir.iterdir())


def test_a_workdir_that_is_a_file_is_refused_before_any_work(separable_idx_dir, tmp_path):
  mine = tmp_path / "notes.txt"
  mine.write_text("mine")
  for workdir in (mine, mine / "run"):
    for mode in ("plan", "all"):
      with pytest.raises(InputError, match="is not a directory"):
        pipeline.run(_tiny.fashion_tiny_config(separable_idx_dir), str(workdir), mode=mode)
  assert mine.read_text() == "mine"


@pytest.mark.parametrize("source, message", [
    ("distilled", "distilled.npz not found: run --mode=distill first"),
    ("file:/nonexistent/set.npz", "eval.source file /nonexistent/set.npz not found"),
])
def test_evaluating_a_set_that_is_not_there_writes_nothing(pretrained, separable_idx_dir,
                                                           tmp_path, source, message):
  workdir = tmp_path / "run"
  shutil.copytree(pretrained, workdir)
  (workdir / "config.json").unlink(missing_ok=True)
  (workdir / "metrics.json").unlink(missing_ok=True)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  config = _tiny.fashion_tiny_config(separable_idx_dir)
  config.eval.source = source
  with pytest.raises(InputError, match=message):
    pipeline.run(config, str(workdir), mode="evaluate")
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_workdir_with_another_config_is_refused_untouched(pretrained, separable_idx_dir,
                                                          tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(pretrained, workdir)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  result = _cli(workdir, *_data_flags(separable_idx_dir), "--config.distill.alpha=0.9")
  assert result.returncode == 2
  assert "different config" in result.stderr and "distill.alpha" in result.stderr
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.slow
def test_evaluations_with_other_settings_are_refused_untouched(cli_run, tmp_path):
  done, _, flags = cli_run
  workdir = tmp_path / "run"
  shutil.copytree(done, workdir)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  result = _cli(workdir, *flags, "--config.eval.soft_labels=True")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert "eval.convnet" in last and "eval.soft_labels: False -> True" in last, last
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
  # Keys that only choose which evaluations run may change.
  again = _cli(workdir, *flags, "--mode=evaluate", "--config.eval.steps_per_call=1")
  assert again.returncode == 0, again.stderr[-2000:]


def test_unreadable_checkpoint_is_a_clear_error(pretrained, separable_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(pretrained, workdir)
  for path in (workdir / "pool").rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "_METADATA" not in path.name:
      path.write_bytes(b"garbage")
  result = _cli(workdir, *_data_flags(separable_idx_dir), "--mode=distill")
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "unreadable" in errors[0], result.stderr[-2000:]


@pytest.mark.slow
def test_distill_on_two_forced_devices_matches_one_device(pretrained, separable_idx_dir,
                                                          tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  shutil.copytree(pretrained, one)
  shutil.copytree(pretrained, two)
  data_flags = _data_flags(separable_idx_dir)
  assert _cli(one, *data_flags, "--mode=distill").returncode == 0
  env_flags = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
      [sys.executable, "-m", "ncfm_jax.main", f"--config={TINY}", f"--workdir={two}",
       *data_flags, "--mode=distill"], cwd=ROOT, env=env_flags, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "split over 2 devices" in result.stdout
  a = np.load(one / "distilled.npz")["images"]
  b = np.load(two / "distilled.npz")["images"]
  # Same step, float32 sums in another order: Adam normalises each update, so
  # near-zero gradients may round differently; most pixels agree to 1e-5.
  assert np.mean(np.abs(a - b) < 1e-4) > 0.99
  assert np.max(np.abs(a - b)) < 2e-2


@pytest.mark.slow
def test_two_process_cli_matches_one_process_and_resumes_in_one(cli_run, tmp_path):
  one, one_result, flags = cli_run
  assert one_result.returncode == 0, one_result.stderr[-3000:]
  two = tmp_path / "two"
  env = dict(os.environ, JAX_PLATFORMS="cpu", NCFM_PORT=str(_free_port()))
  result = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", "local_multi_process.sh"), "2", sys.executable,
       "-m", "ncfm_jax.main", f"--config={TINY}", f"--workdir={two}", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "data parallel over 2 devices" in result.stdout
  assert result.stdout.count("| convnet |") == 1  # only process 0 prints
  m1 = json.loads((one / "metrics.json").read_text())
  m2 = json.loads((two / "metrics.json").read_text())
  # Pretraining and evaluation data parallel over the 2 processes, same results.
  np.testing.assert_allclose(m2["pretrain"]["accuracy"], m1["pretrain"]["accuracy"], atol=0.5)
  for section in ("eval", "baseline_random_real", "baseline_init"):
    np.testing.assert_allclose(m2[section]["convnet"]["runs"], m1[section]["convnet"]["runs"],
                               atol=0.5)
  images_one = np.load(one / "distilled.npz")["images"]
  np.testing.assert_allclose(np.load(two / "distilled.npz")["images"], images_one, atol=1e-4)

  # The 2-process distillation checkpoint at step 3 resumes in one process.
  resumed = tmp_path / "resumed"
  shutil.copytree(two, resumed)
  shutil.rmtree(resumed / "distill_ckpt" / "6")
  os.remove(resumed / "distilled.npz")
  again = _cli(resumed, *flags, "--mode=distill")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 3" in again.stdout
  np.testing.assert_allclose(np.load(resumed / "distilled.npz")["images"], images_one, atol=1e-4)
