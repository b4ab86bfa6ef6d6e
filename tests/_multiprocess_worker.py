"""Worker for tests/test_multiprocess.py.

`python tests/_multiprocess_worker.py sharded OUT_DIR` (under launch/local_multi_process.sh,
2 processes): distributed start-up from the NCFM_* variables, a class-sharded
placement of the state and its gather back to the host, the data-parallel run
of NUM_STEPS steps on the 2-process mesh, an Orbax checkpoint of its state at
step NUM_STEPS (every process writes its part), and OUT_DIR/sharded.npz from
process 0.

`python tests/_multiprocess_worker.py single OUT_DIR` (1 process): the
single-device reference for 2 * NUM_STEPS steps, and a run resumed from the
2-process checkpoint for NUM_STEPS more steps, into OUT_DIR/single.npz.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ncfm_jax import distributed

NUM_STEPS = 2


def _manager(out_dir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "ckpt")),
                               options=ocp.CheckpointManagerOptions(create=True))


def sharded(out_dir: str) -> None:
  assert distributed.maybe_initialize(), "expected NCFM_* variables of a 2-process launch"
  import _tiny  # after initialize: it touches the backend
  from ncfm_jax import execution
  from ncfm_jax import sharding
  assert jax.process_count() == 2 and jax.device_count() == 2, distributed.describe()

  cfg = _tiny.config()
  state, pool, data, distill_step, *_ = _tiny.setup(cfg)
  step = distill_step.step
  mesh = sharding.make_mesh()
  out = {}
  # Class-sharded placement across processes and back (each process fills its shards).
  placed = sharding.shard_state(state, mesh, class_sharded=True)
  assert not placed.syn_images.is_fully_addressable
  out["cs_roundtrip_images"] = sharding.to_host(placed).syn_images
  out["initial_images"] = np.asarray(state.syn_images)

  run = execution.make_run_steps(step, cfg, NUM_STEPS, mesh=mesh).run
  new_state, metrics = run(sharding.shard_state(state, mesh), sharding.replicate(pool, mesh),
                           sharding.replicate(data, mesh))
  out.update(_tiny.results("dp_", sharding.to_host(new_state), sharding.to_host(metrics)))
  manager = _manager(out_dir)
  manager.save(NUM_STEPS, args=ocp.args.StandardSave(new_state))
  manager.wait_until_finished()
  manager.close()
  if distributed.is_primary():
    np.savez(os.path.join(out_dir, "sharded.npz"), **out)
  jax.distributed.shutdown()


def single(out_dir: str) -> None:
  import _tiny
  from ncfm_jax import distill
  from ncfm_jax import execution
  assert jax.process_count() == 1
  cfg = _tiny.config()
  state, pool, data, distill_step, *_ = _tiny.setup(cfg)
  step = distill_step.step
  run = execution.make_run_steps(step, cfg, NUM_STEPS).run
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  out = {}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  ref_state, metrics = run(copy(state), pool, data)
  out.update(_tiny.results("ref_", ref_state, metrics))
  ref_state, metrics = run(ref_state, pool, data)
  out.update(_tiny.results("ref_more_", ref_state, metrics))

  manager = _manager(out_dir)
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
  manager.close()
  restored = distill.DistillState(*restored)
  out.update(_tiny.results("restored_", restored, {"loss": np.zeros(0)}))
  resumed, metrics = run(restored, pool, data)
  out.update(_tiny.results("resumed_", resumed, metrics))
  np.savez(os.path.join(out_dir, "single.npz"), **out)


if __name__ == "__main__":
  {"sharded": sharded, "single": single}[sys.argv[1]](sys.argv[2])
