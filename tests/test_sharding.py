"""On 4 forced CPU devices: the sharded distillation step equals the single-device
one, and data-parallel classifier training equals single-device training.

The comparison runs in a subprocess (tests/_sharding_worker.py) so that this
pytest process keeps its single device.
"""

import os
import sys

import numpy as np
import pytest

import _spawn

CLASSES, BATCH_REAL, DEVICES = 4, 8, 4


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding") / "out.npz"
  env = _spawn.worker_env(_spawn.cache_dir(tmp_path_factory), num_devices=DEVICES)
  _spawn.run([sys.executable, os.path.join(_spawn.TESTS, "_sharding_worker.py"), str(out)], env)
  return dict(np.load(out))


@pytest.mark.parametrize("layout", ["dp", "cs"])
def test_sharded_step_equals_single_device(four_devices, layout):
  r = four_devices
  assert int(r[f"{layout}_step"]) == int(r["single_step"]) == 2
  # Same math, only the summation order of the means over B (and classes) differs.
  np.testing.assert_allclose(r[f"{layout}_loss"], r["single_loss"], rtol=1e-5)
  np.testing.assert_allclose(r[f"{layout}_images"], r["single_images"], atol=1e-6)
  assert not np.allclose(r["single_psi"], 0.0)
  np.testing.assert_allclose(r[f"{layout}_psi"], r["single_psi"], rtol=1e-4, atol=1e-4)


def test_per_class_update_on_four_devices_equals_one_device(four_devices):
  r = four_devices
  assert int(r["pc_dp_step"]) == int(r["pc_single_step"]) == 2
  np.testing.assert_allclose(r["pc_dp_loss"], r["pc_single_loss"], rtol=1e-5)
  np.testing.assert_allclose(r["pc_dp_images"], r["pc_single_images"], atol=1e-5)
  np.testing.assert_allclose(r["pc_dp_psi"], r["pc_single_psi"], rtol=1e-3, atol=1e-4)
  assert np.max(np.abs(r["pc_single_images"] - r["single_images"])) > 1e-3  # not batched


def test_layouts_place_the_synthetic_set_as_asked(four_devices):
  r = four_devices
  assert str(r["dp_images_spec"]) == str(r["dp_mu_spec"]) == "P()"
  assert str(r["cs_images_spec"]) == str(r["cs_mu_spec"]) == "P('data', None, None, None, None)"


def test_class_sharded_step_splits_every_convolution(four_devices):
  # Per-device batch of every conv: C * B / n real, C / n * ipc * factor^2 synthetic.
  assert four_devices["cs_conv_batches"].tolist() == [CLASSES * BATCH_REAL // DEVICES]


def test_data_parallel_step_splits_the_real_forward(four_devices):
  # Real images split along B (the step flattens [B, C] B-major); the replicated
  # synthetic set is not.
  batches = four_devices["dp_conv_batches"].tolist()
  assert batches == [CLASSES * BATCH_REAL // DEVICES, CLASSES * BATCH_REAL]


def test_indivisible_axes_raise_clear_errors(four_devices):
  assert "batch_real=6" in str(four_devices["error_batch"])
  assert "(4)" in str(four_devices["error_batch"])
  assert "number of classes (3)" in str(four_devices["error_classes"])


@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("loop", ["loop", "scan"])
def test_data_parallel_training_equals_single_device(four_devices, norm, loop):
  single = four_devices[f"train_{norm}_{loop}_single"]
  parallel = four_devices[f"train_{norm}_{loop}_dp"]
  # Batch-norm statistics and gradients are means over the global batch of 16.
  assert bool(four_devices[f"train_{norm}_{loop}_dp_used_mesh"])
  assert not np.allclose(single, 0.0)
  np.testing.assert_allclose(parallel, single, rtol=1e-4, atol=1e-5)
