"""Classifier training and accuracy: compile once, teacher weights as arguments."""

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import config_lib
from ncfm_jax import models
from ncfm_jax import train as train_lib

SIZE, CLASSES = 16, 3
MEAN, STD = (0.5,), (0.25,)


def _model():
  return models.get_model("convnet", CLASSES, width=8, depth=2, norm="instance",
                          image_size=SIZE, channels=1)


def _variables(model, seed):
  return train_lib.init_variables(jax.random.PRNGKey(seed), model,
                                  jnp.zeros((1, SIZE, SIZE, 1)))


def test_accuracy_of_two_members_compiles_once():
  model = _model()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, SIZE, SIZE, 1), dtype=np.uint8)
  labels = rng.integers(0, CLASSES, 50)
  before = train_lib._predict._cache_size()
  first = train_lib.accuracy(model, _variables(model, 0), images, labels, MEAN, STD,
                             batch_size=32)
  second = train_lib.accuracy(model, _variables(model, 1), images, labels, MEAN, STD,
                              batch_size=32)
  # Both members (and the padded last batch) ran through one compiled function.
  assert train_lib._predict._cache_size() == before + 1
  assert 0.0 <= first <= 100.0 and 0.0 <= second <= 100.0
  # The weights are arguments, not constants: other weights, other predictions.
  predict = lambda v: np.asarray(train_lib._predict(model, v, images[:32], np.float32(MEAN),
                                                    np.float32(STD)))
  assert not np.array_equal(predict(_variables(model, 0)), predict(_variables(model, 2)))


def test_soft_label_teacher_changes_training():
  model = _model()
  config = config_lib.base_config().eval
  config.batch_size, config.steps_per_call = 8, 2
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.integers(0, 256, (12, SIZE, SIZE, 1), dtype=np.uint8))
  targets = jax.nn.one_hot(jnp.arange(12) % CLASSES, CLASSES)
  train = lambda teacher: train_lib.train_classifier(
      jax.random.PRNGKey(0), model, images, targets, config, num_steps=2, mean=MEAN,
      std=STD, teacher=teacher, log_every_seconds=1e9)["params"]
  leaves = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  plain = leaves(train(None))
  teachers = [train_lib.Teacher(model, _variables(model, seed)) for seed in (3, 4)]
  taught = [leaves(train(teacher)) for teacher in teachers]
  assert not np.allclose(plain, taught[0])
  assert not np.allclose(taught[0], taught[1])  # the teacher's weights are read
