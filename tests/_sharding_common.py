"""Tiny distillation setup shared by the sharding and multi-process test workers.

4 classes, 16x16x1 images, ConvNet width 8 depth 2, batch_real 8, 64 frequencies,
psi sampler and calibration on: every piece of the step, compiled in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax import models
from ncfm_jax import train as train_lib
from ncfm_jax.data import sampling

CLASSES, IPC, SIZE, PER_CLASS = 4, 2, 16, 20
MEAN, STD = (0.5,), (0.25,)


def config(**overrides):
  cfg = config_lib.base_config().distill
  cfg.ipc = IPC
  cfg.factor = 2
  cfg.batch_real = 8
  cfg.num_freqs = 64
  cfg.psi_lr = 0.05  # psi visibly moves in two steps
  cfg.use_scan = False
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def setup(cfg):
  """(state, pool, data, step_fn): host-identical in every process (fixed seeds)."""
  model = models.get_model("convnet", CLASSES, width=8, depth=2, norm="instance",
                           image_size=SIZE, channels=1)
  example = jnp.zeros((1, SIZE, SIZE, 1))
  members = [(train_lib.init_variables(jax.random.PRNGKey(2 * i), model, example),
              train_lib.init_variables(jax.random.PRNGKey(2 * i + 1), model, example))
             for i in range(2)]
  pool = distill.stack_pool(members)
  feature_dim = int(model.apply(members[0][0], example)[0].shape[-1])
  syn = jax.random.uniform(jax.random.PRNGKey(7), (CLASSES, IPC, SIZE, SIZE, 1))
  state = distill.init_state(jax.random.PRNGKey(0), syn, feature_dim, cfg)
  rng = np.random.default_rng(0)
  real = np.stack([rng.integers(40 * c, 100 + 40 * c, (PER_CLASS, SIZE, SIZE, 1))
                   for c in range(CLASSES)]).astype(np.uint8)
  data = sampling.make_class_indexed(real.reshape(-1, SIZE, SIZE, 1),
                                     np.repeat(np.arange(CLASSES), PER_CLASS), CLASSES)
  step = distill.make_distill_step(model, cfg, MEAN, STD, feature_dim).step
  return state, pool, data, step


def flat_psi(state) -> np.ndarray:
  """All psi parameters as one float vector."""
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.psi_params)])


def results(prefix: str, state, metrics) -> dict:
  """npz-ready arrays of a (host) state and its metrics."""
  return {f"{prefix}images": np.asarray(state.syn_images),
          f"{prefix}psi": flat_psi(state),
          f"{prefix}loss": np.asarray(metrics["loss"]),
          f"{prefix}step": np.asarray(state.step)}


def train_classifier(norm: str, use_scan: bool, mesh=None, steps: int = 3):
  """(flat parameters + batch stats, came back on the host) after `steps` training
  steps of a tiny ConvNet on 48 random images, batch 16, per-sample DSA + CutMix
  (same seeds every call)."""
  cfg = config_lib.base_config().eval
  cfg.batch_size = 16
  # SGD: Adam's normalised update turns float32 summation-order noise on
  # near-zero gradients into lr-sized differences (seen: 15 of 1212 parameters).
  cfg.optimizer, cfg.lr = "sgd", 0.05
  cfg.steps_per_call = 2  # a chunk of 2 and one of 1: both call shapes
  cfg.use_scan = use_scan
  model = models.get_model("convnet", CLASSES, width=8, depth=2, norm=norm,
                           image_size=SIZE, channels=1)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (48, SIZE, SIZE, 1)).astype(np.uint8)
  targets = jax.nn.one_hot(rng.integers(0, CLASSES, 48), CLASSES)
  variables = train_lib.train_classifier(
      jax.random.PRNGKey(3), model, images, targets, cfg, num_steps=steps, mean=MEAN,
      std=STD, mesh=mesh, log_every_seconds=1e9)
  # With a mesh the variables come back as host numpy arrays: proof it was used.
  on_host = all(isinstance(x, np.ndarray) for x in jax.tree.leaves(variables))
  flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(variables)])
  return flat, on_host
