"""Tiny setups shared by the tests and the subprocess test workers (one copy of each).

A plain module, not fixtures: tests/_sharding_worker.py and tests/_multiprocess_worker.py
import it in their own processes; tests/conftest.py wraps it in fixtures.

* The distillation setup: 4 classes, 16x16x1 images, ConvNet width 8 depth 2,
  batch_real 8, 64 frequencies, psi sampler and calibration on, the batched update
  unless a test asks otherwise: every piece of the step, compiled in seconds
  (`config`, `setup`).
* A tiny classifier training run (`train_classifier`).
* IDX files (`write_idx_set`) and a generated class-separable 28x28x1 dataset in that
  format (`separable_images`, `write_separable_idx`) for the CLI tests.
"""

import gzip
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax import models
from ncfm_jax import train as train_lib
from ncfm_jax.data import sampling

ROOT = str(Path(__file__).resolve().parents[1])
"""The checkout's root."""
CELL_SECONDS = {"pretrain": 0.01, "distill": 0.5,
                "eval": {"convnet": 0.02, "alexnet": 0.03, "vgg11": 0.04, "resnet18": 0.05}}
"""Seconds per step of each phase of a paper cell, for the estimate's arithmetic."""

CLASSES, IPC, SIZE, PER_CLASS = 4, 2, 16, 20
MEAN, STD = (0.5,), (0.25,)


# ---------------------------------------------------------------- distillation


def config(**overrides):
  """The tiny distill config section, with `overrides` applied."""
  cfg = config_lib.base_config().distill
  cfg.ipc = IPC
  cfg.factor = 2
  cfg.batch_real = 8
  cfg.num_freqs = 64
  cfg.psi_lr = 0.05  # psi visibly moves in two steps
  cfg.use_scan = False
  # The batched step and its folded calibration; tests of the release's per-class
  # update ask for it.
  cfg.update_mode = "batched"
  cfg.calibration_mode = "folded"
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


class Setup(NamedTuple):
  """What `setup` builds.

  Attributes:
    state: the initial `distill.DistillState` (images `[C, IPC, SIZE, SIZE, 1]`).
    pool: two members, each `(init, trained)` from its own seed.
    data: class-indexed uint8 real images, `PER_CLASS` per class.
    step: the `distill.DistillStep` (`.step`, `.evaluate`) of the config.
    model: the ConvNet (width 8, depth 2).
    members: the pool's `[(init_variables, trained_variables), ...]` unstacked.
    feature_dim: D of the model's features.
  """
  state: Any
  pool: distill.Pool
  data: Any
  step: distill.DistillStep
  model: Any
  members: list
  feature_dim: int


def tiny_model():
  return models.get_model("convnet", CLASSES, width=8, depth=2, norm="instance",
                          image_size=SIZE, channels=1)


def real_images() -> np.ndarray:
  """uint8 `[CLASSES, PER_CLASS, SIZE, SIZE, 1]`; class c is brighter with c."""
  rng = np.random.default_rng(0)
  return np.stack([rng.integers(40 * c, 100 + 40 * c, (PER_CLASS, SIZE, SIZE, 1))
                   for c in range(CLASSES)]).astype(np.uint8)


def setup(cfg) -> Setup:
  """The tiny step and its inputs: host-identical in every process (fixed seeds)."""
  model = tiny_model()
  example = jnp.zeros((1, SIZE, SIZE, 1))
  members = [(train_lib.init_variables(jax.random.PRNGKey(2 * i), model, example),
              train_lib.init_variables(jax.random.PRNGKey(2 * i + 1), model, example))
             for i in range(2)]
  pool = distill.stack_pool(members)
  feature_dim = int(model.apply(members[0][0], example)[0].shape[-1])
  syn = jax.random.uniform(jax.random.PRNGKey(7), (CLASSES, IPC, SIZE, SIZE, 1))
  state = distill.init_state(jax.random.PRNGKey(0), syn, feature_dim, cfg)
  data = sampling.make_class_indexed(real_images().reshape(-1, SIZE, SIZE, 1),
                                     np.repeat(np.arange(CLASSES), PER_CLASS), CLASSES)
  step = distill.make_distill_step(model, cfg, MEAN, STD, feature_dim)
  return Setup(state, pool, data, step, model, members, feature_dim)


def flat_psi(state) -> np.ndarray:
  """All psi parameters as one float vector."""
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.psi_params)])


def results(prefix: str, state, metrics) -> dict:
  """npz-ready arrays of a (host) state and its metrics."""
  return {f"{prefix}images": np.asarray(state.syn_images),
          f"{prefix}psi": flat_psi(state),
          f"{prefix}loss": np.asarray(metrics["loss"]),
          f"{prefix}step": np.asarray(state.step)}


def fashion_tiny_config(data_dir):
  """configs/fashion_mnist.py:tiny reading the IDX files in `data_dir`
  (`write_separable_idx`)."""
  config = config_lib.load_config(str(Path(ROOT) / "configs" / "fashion_mnist.py") + ":tiny")
  config.data.data_dir = str(data_dir)
  config.data.source = "idx"
  return config


# ---------------------------------------------------------------- classifier training


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


# ---------------------------------------------------------------- IDX files

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
  """Serialises a uint8 array as IDX (optionally with a forged magic number)."""
  header = magic or bytes([0, 0, 0x08, array.ndim])
  dims = np.asarray(array.shape, ">u4").tobytes()
  return header + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: Path, payload: bytes, gz: bool) -> Path:
  """Writes `payload` to `path` (`path.gz`, gzip-compressed, with `gz`)."""
  path = path.with_name(path.name + ".gz") if gz else path
  path.write_bytes(gzip.compress(payload) if gz else payload)
  return path


def write_idx_set(directory: Path, train_x, train_y, test_x, test_y, gz: bool) -> None:
  """The four MNIST-named IDX files of a dataset in `directory`."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for stem, array in zip(IDX_STEMS, (train_x, train_y, test_x, test_y)):
    write_idx(directory / stem, idx_bytes(array), gz)


# ---------------------------------------------------------------- a separable dataset

# Labels of the three classes: those of configs/fashion_mnist.py:tiny (data.classes).
SEPARABLE_LABELS = (0, 1, 7)
# Split sizes of the CLI tests' dataset: every image passes the tiny preset's caps
# (200 train per class, 300 test), and the train count differs from what those
# caps keep of the real Fashion-MNIST (600).
SEPARABLE_TRAIN_PER_CLASS, SEPARABLE_TEST_PER_CLASS = 150, 100


def _patterns(side: int = 28) -> np.ndarray:
  """`[3, side, side]` in [-1, 1]: horizontal stripes, vertical stripes, a centred
  disc (bright inside, dark outside)."""
  yy, xx = np.mgrid[:side, :side].astype(np.float64)
  horizontal = np.sign(np.sin(2 * np.pi * yy / 7 + 0.5))
  vertical = np.sign(np.sin(2 * np.pi * xx / 7 + 0.5))
  centre = (side - 1) / 2
  disc = np.where((yy - centre) ** 2 + (xx - centre) ** 2 < (side / 4) ** 2, 1.0, -1.0)
  return np.stack([horizontal, vertical, disc])


def separable_images(rng: np.random.Generator, per_class: int, amplitude: float,
                     noise: float) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images `[3 * per_class, 28, 28]`, uint8 labels in `SEPARABLE_LABELS`).

  Image of class k: `128 + amplitude * pattern_k + noise * N(0, 1)` per pixel,
  clipped to [0, 255]; classes interleaved.
  """
  patterns = _patterns()
  kinds = np.arange(3 * per_class) % 3
  pixels = 128 + amplitude * patterns[kinds] + noise * rng.normal(size=(kinds.size, 28, 28))
  labels = np.asarray(SEPARABLE_LABELS, np.uint8)[kinds]
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8), labels


def write_separable_idx(directory, train_per_class: int, test_per_class: int,
                        amplitude: float = 40.0, noise: float = 80.0, seed: int = 0,
                        gz: bool = True) -> Path:
  """Writes a `separable_images` train and test split as IDX files into `directory`."""
  rng = np.random.default_rng(seed)
  train = separable_images(rng, train_per_class, amplitude, noise)
  test = separable_images(rng, test_per_class, amplitude, noise)
  write_idx_set(Path(directory), *train, *test, gz=gz)
  return Path(directory)
