"""Evaluation sets, the shared step budget, and sets distilled elsewhere."""

import types

import numpy as np
import pytest

from ncfm_jax import config_lib
from ncfm_jax import evaluation
from ncfm_jax import parameterize
from ncfm_jax.errors import InputError

CLASSES, SIZE = 3, 8


def _run(tmp_path, **eval_overrides):
  config = config_lib.base_config()
  config.distill.ipc, config.distill.factor = 2, 2
  config.eval.batch_size, config.eval.epochs = 4, 3
  for key, value in eval_overrides.items():
    config.eval[key] = value
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (CLASSES, 10, SIZE, SIZE, 1), dtype=np.uint8)
  return types.SimpleNamespace(
      config=config, num_classes=CLASSES, image_shape=(SIZE, SIZE, 1), workdir=str(tmp_path),
      path=lambda *parts: str(tmp_path.joinpath(*parts)),
      real_subset=lambda stream, per_class: real[:, :per_class],
      initial_synthetic=lambda: rng.uniform(size=(CLASSES, 2, SIZE, SIZE, 1)))


def test_every_source_gets_the_distilled_sets_step_budget(tmp_path):
  run = _run(tmp_path)
  # 3 classes x 2 ipc x 4 (factor 2) = 24 images, batch 4: 6 steps an epoch, 3 epochs.
  assert evaluation.eval_steps(run.config, CLASSES) == 18
  sizes = {source: len(evaluation.eval_set(run, source)[1]) for source in ("random_real", "init")}
  assert sizes == {"random_real": 6, "init": 24}  # a quarter of the images, same steps
  run.config.eval.max_steps = 7
  assert evaluation.eval_steps(run.config, CLASSES) == 7


def test_external_file_is_decoded_and_checked(tmp_path):
  run = _run(tmp_path)
  rng = np.random.default_rng(1)
  stored = rng.integers(0, 256, (CLASSES * 2, SIZE, SIZE, 1), dtype=np.uint8)
  labels = np.repeat(np.arange(CLASSES), 2)
  np.savez(tmp_path / "theirs.npz", images=stored, labels=labels)
  images, got_labels = evaluation.eval_set(run, f"file:{tmp_path / 'theirs.npz'}")
  np.testing.assert_allclose(images, stored / 255.0, atol=1e-6)
  np.testing.assert_array_equal(got_labels, labels)

  run.config.eval.file_factor = 2  # factor-tiled, as the authors publish their sets
  images, got_labels = evaluation.eval_set(run, f"file:{tmp_path / 'theirs.npz'}")
  want = np.asarray(parameterize.decode(stored.astype(np.float32) / 255.0, 2))
  np.testing.assert_allclose(images, want, atol=1e-6)
  np.testing.assert_array_equal(got_labels, np.repeat(labels, 4))

  np.savez(tmp_path / "bad.npz", images=stored, labels=labels + 5)
  with pytest.raises(InputError, match="labels outside"):
    evaluation.eval_set(run, f"file:{tmp_path / 'bad.npz'}")
  np.savez(tmp_path / "other.npz", images=stored[..., :0], labels=labels)
  with pytest.raises(InputError, match="do not fit"):
    evaluation.eval_set(run, f"file:{tmp_path / 'other.npz'}")
  with pytest.raises(InputError, match="not found"):
    evaluation.eval_set(run, f"file:{tmp_path / 'missing.npz'}")


def test_sections_and_missing_runs():
  config = config_lib.base_config()
  config.eval.num_eval = 2
  metrics = {"eval": {"convnet": {"runs": [1.0, 2.0]}},
             "external": {"theirs.npz": {"convnet": {"runs": [3.0]}}}}
  assert not evaluation.missing_runs(config, metrics, "distilled")
  assert evaluation.missing_runs(config, metrics, "random_real")
  assert evaluation.missing_runs(config, metrics, "file:/some/dir/theirs.npz")
  metrics["external"]["theirs.npz"]["convnet"]["runs"].append(4.0)
  assert not evaluation.missing_runs(config, metrics, "file:/some/dir/theirs.npz")
