"""Worker for tests/test_sharding.py: `python tests/_sharding_worker.py OUT.npz`.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4. Runs the same two
steps single-device (`execution.make_run_steps`), data parallel and class
sharded on a 4-device mesh, and saves images, psi, losses, the per-device
convolution batch sizes of the compiled sharded steps and the messages of the
divisibility errors; plus the parameters of a tiny classifier trained 3 steps
on one device and data parallel on the mesh (instance and batch norm, Python
loop and lax.scan).
"""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import _tiny
from ncfm_jax import execution
from ncfm_jax import sharding

NUM_STEPS = 2


def _conv_batches(compiled_text: str) -> list[int]:
  """Leading dims of every convolution output in compiled HLO (per-device shapes)."""
  return sorted({int(m) for m in re.findall(r"f32\[(\d+),\d+,\d+,\d+\]\{[\d,]+\} convolution",
                                          compiled_text)})


def main(out_path: str) -> None:
  assert jax.device_count() == 4, jax.devices()
  cfg = _tiny.config()
  state, pool, data, distill_step, *_ = _tiny.setup(cfg)
  step = distill_step.step
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  out = {}
  ref_state, ref_metrics = execution.make_run_steps(step, cfg, NUM_STEPS).run(
      copy(state), pool, data)
  out.update(_tiny.results("single_", ref_state, ref_metrics))

  mesh = sharding.make_mesh()
  for name, class_sharded in (("dp_", False), ("cs_", True)):
    run_steps = execution.make_run_steps(step, cfg, NUM_STEPS, mesh=mesh,
                                         class_sharded=class_sharded)
    s0 = sharding.shard_state(copy(state), mesh, class_sharded)
    pool_r, data_r = sharding.replicate(pool, mesh), sharding.replicate(data, mesh)
    text = run_steps.jitted(s0, data_r).lower(s0, pool_r, data_r).compile().as_text()
    new_state, metrics = run_steps.run(s0, pool_r, data_r)
    out.update(_tiny.results(name, sharding.to_host(new_state), metrics))
    out[name + "conv_batches"] = np.asarray(_conv_batches(text))
    out[name + "images_spec"] = np.asarray(str(new_state.syn_images.sharding.spec))
    mu = new_state.image_opt_state[0][0].mu
    out[name + "mu_spec"] = np.asarray(str(mu.sharding.spec))
  # The release's per-class update: a host loop of pieces on one device, one jitted
  # step (classes in lax.scan) on the mesh.
  pc_cfg = _tiny.config(update_mode="per_class", calibration_mode="separate")
  pc = _tiny.setup(pc_cfg)
  pc_state, pc_metrics = execution.make_run_steps(pc.step, pc_cfg, NUM_STEPS).run(
      copy(pc.state), pc.pool, pc.data)
  out.update(_tiny.results("pc_single_", pc_state, pc_metrics))
  pc_state, pc_metrics = execution.make_run_steps(pc.step, pc_cfg, NUM_STEPS, mesh=mesh).run(
      sharding.shard_state(copy(pc.state), mesh, False), sharding.replicate(pc.pool, mesh),
      sharding.replicate(pc.data, mesh))
  out.update(_tiny.results("pc_dp_", sharding.to_host(pc_state), pc_metrics))
  try:
    execution.make_run_steps(step, _tiny.config(batch_real=6), NUM_STEPS, mesh=mesh)
  except ValueError as err:
    out["error_batch"] = np.asarray(str(err))
  try:
    sharding.shard_state(state._replace(syn_images=state.syn_images[:3]), mesh,
                         class_sharded=True)
  except ValueError as err:
    out["error_classes"] = np.asarray(str(err))
  # Data-parallel classifier training (pool pretraining, evaluation) vs one device.
  for norm in ("instance", "batch"):
    for use_scan in (False, True):
      name = f"train_{norm}_{'scan' if use_scan else 'loop'}_"
      out[name + "single"], _ = _tiny.train_classifier(norm, use_scan)
      out[name + "dp"], out[name + "dp_used_mesh"] = _tiny.train_classifier(
          norm, use_scan, mesh)
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1])
