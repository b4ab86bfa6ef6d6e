"""Two real JAX processes on localhost (jax.distributed + Gloo CPU collectives).

launch/local_multi_process.sh starts tests/_multiprocess_worker.py twice; their
2-device mesh runs the data-parallel distillation and saves an Orbax checkpoint
that a 1-process run then resumes. Plus the launch detection of
ncfm_jax.distributed on fake environments (no processes started).
"""

import os
import sys

import numpy as np
import pytest

import _spawn
from ncfm_jax import distributed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("multiprocess")
  env = _spawn.worker_env(_spawn.cache_dir(tmp_path_factory))
  worker = os.path.join(_spawn.TESTS, "_multiprocess_worker.py")
  launcher = os.path.join(_spawn.ROOT, "launch", "local_multi_process.sh")
  _spawn.run(["bash", launcher, "2", sys.executable, worker, "sharded", str(out_dir)],
             dict(env, NCFM_PORT=str(_spawn.free_port())))
  _spawn.run([sys.executable, worker, "single", str(out_dir)], env)
  return dict(np.load(out_dir / "sharded.npz")), dict(np.load(out_dir / "single.npz"))


@pytest.mark.slow
def test_two_processes_match_one(runs):
  two, one = runs
  assert int(two["dp_step"]) == 2
  np.testing.assert_allclose(two["dp_loss"], one["ref_loss"], rtol=1e-5)
  np.testing.assert_allclose(two["dp_images"], one["ref_images"], atol=1e-6)
  np.testing.assert_allclose(two["dp_psi"], one["ref_psi"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_class_sharded_placement_gathers_back(runs):
  two, _ = runs
  np.testing.assert_array_equal(two["cs_roundtrip_images"], two["initial_images"])


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(runs):
  two, one = runs
  # Restored bit for bit, then continues like the uninterrupted 1-process run.
  assert int(one["restored_step"]) == 2 and int(one["resumed_step"]) == 4
  np.testing.assert_array_equal(one["restored_images"], two["dp_images"])
  np.testing.assert_array_equal(one["restored_psi"], two["dp_psi"])
  np.testing.assert_allclose(one["resumed_loss"], one["ref_more_loss"], rtol=1e-5)
  np.testing.assert_allclose(one["resumed_images"], one["ref_more_images"], atol=1e-6)
  np.testing.assert_allclose(one["resumed_psi"], one["ref_more_psi"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"NCFM_COORDINATOR": "h:1", "NCFM_NUM_PROCESSES": "2", "NCFM_PROCESS_ID": "0"},
     "explicit"),
    ({"NCFM_COORDINATOR": "h:1", "NCFM_NUM_PROCESSES": "1", "NCFM_PROCESS_ID": "0"}, None),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, "slurm"),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, None),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "w0:8080"}, "tpu"),
    ({"NCFM_DISTRIBUTED": "1"}, "tpu"),
])
def test_detect_launch(environ, expected):
  assert distributed.detect_launch(environ) == expected


def test_single_process_is_left_alone():
  assert distributed.maybe_initialize(environ={}) is False
  assert distributed.maybe_initialize(environ={"NCFM_NUM_PROCESSES": "1"}) is False
  assert distributed.is_primary()


@pytest.mark.parametrize("environ, message", [
    ({"NCFM_NUM_PROCESSES": "2", "NCFM_PROCESS_ID": "0"}, "NCFM_COORDINATOR"),
    ({"NCFM_COORDINATOR": "h:1", "NCFM_NUM_PROCESSES": "2"}, "NCFM_PROCESS_ID"),
    ({"NCFM_COORDINATOR": "h:1", "NCFM_NUM_PROCESSES": "2", "NCFM_PROCESS_ID": "2"},
     r"not in \[0, 2\)"),
    ({"NCFM_COORDINATOR": "h:1", "NCFM_NUM_PROCESSES": "two"}, "not an integer"),
])
def test_incomplete_explicit_settings_raise(environ, message):
  with pytest.raises(ValueError, match=message):
    distributed.maybe_initialize(environ=environ)
