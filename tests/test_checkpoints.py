"""Orbax bookkeeping: state and history together, fallback past an unreadable step."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import checkpoints
from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax.errors import InputError


def _state(value: float):
  config = config_lib.base_config().distill
  config.sampler, config.num_freqs = "gaussian", 16
  syn = jnp.full((2, 1, 4, 4, 1), value, jnp.float32)
  return distill.init_state(jax.random.PRNGKey(0), syn, 8, config)


def _history(steps: int) -> dict:
  return {"loss": [float(i) for i in range(steps)], "calibration": [0.5] * steps,
          "seconds": float(steps)}


def _corrupt(path: str) -> None:
  """Truncates every data file under `path` (the checkpoint stays listed)."""
  for root, _, files in os.walk(path):
    for name in files:
      if name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"\0")


def test_state_and_history_come_back_together(tmp_path):
  directory = str(tmp_path / "ckpt")
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    assert store.restore_latest(_state(0.0)) is None
    store.save(3, _state(0.3), _history(3))
    store.save(6, _state(0.6), _history(6))
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    state, history = store.restore_latest(_state(0.0))
  assert isinstance(state, distill.DistillState)
  np.testing.assert_allclose(state.syn_images, 0.6)
  assert history == _history(6)


def test_unreadable_latest_falls_back_to_the_previous_one(tmp_path, capsys):
  directory = str(tmp_path / "ckpt")
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    store.save(3, _state(0.3), _history(3))
    store.save(6, _state(0.6), _history(6))
  _corrupt(os.path.join(directory, "6"))
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    state, history = store.restore_latest(_state(0.0))
    np.testing.assert_allclose(state.syn_images, 0.3)
    assert history == _history(3)
    store.save(6, _state(0.7), _history(6))  # the resumed run saves step 6 again
  err = capsys.readouterr().err
  assert "checkpoint 6" in err and "unreadable" in err and "Traceback" not in err
  assert os.path.isdir(str(tmp_path / "ckpt_unreadable" / "6"))  # kept, not deleted
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    np.testing.assert_allclose(store.restore_latest(_state(0.0))[0].syn_images, 0.7)

  _corrupt(os.path.join(directory, "6"))
  _corrupt(os.path.join(directory, "3"))
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    with pytest.raises(InputError, match="no readable distillation checkpoint.*6, 3"):
      store.restore_latest(_state(0.0))


def test_older_one_item_layout_is_refused_with_the_reason(tmp_path):
  directory = str(tmp_path / "ckpt")
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    store.save(3, _state(0.3), _history(3))
  step_dir = os.path.join(directory, "3")
  shutil.move(os.path.join(step_dir, "state"), os.path.join(step_dir, "default"))
  shutil.rmtree(os.path.join(step_dir, "history"))
  with checkpoints.DistillCheckpoints(directory, max_to_keep=2) as store:
    with pytest.raises(InputError, match="older ncfm-jax"):
      store.restore_latest(_state(0.0))


def test_pool_round_trip_and_bad_member(tmp_path):
  directory = str(tmp_path / "pool")
  tree = lambda v: {"params": {"w": jnp.full((2, 3), v)}}
  assert checkpoints.saved_members(directory) == set()
  for member in range(2):
    checkpoints.save_member(directory, member, tree(member), tree(member + 10.0))
  assert checkpoints.saved_members(directory) == {0, 1}
  abstract = jax.eval_shape(lambda: tree(0.0))
  pool = checkpoints.load_pool(directory, abstract, 2)
  np.testing.assert_allclose(pool.trained_variables["params"]["w"][:, 0, 0], [10.0, 11.0])
  _corrupt(os.path.join(directory, "1"))
  with pytest.raises(InputError, match="pool checkpoint 1"):
    checkpoints.load_pool(directory, abstract, 2)
