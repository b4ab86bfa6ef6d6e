"""Classifier training: the recipe (schedules, weight decay, augmentation order),
accuracy compiled once, teacher weights as arguments."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ncfm_jax import augment as augment_lib
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


def _learning_rates(fractions, factor, total_steps):
  """The lr of each of `total_steps` steps, read off plain SGD updates of a scalar."""
  config = ml_collections.ConfigDict(dict(
      optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.0,
      lr_decay_fractions=fractions, lr_decay_factor=factor))
  tx = train_lib.make_optimizer(config, total_steps)
  params = jnp.zeros(())
  state = tx.init(params)
  rates = []
  for _ in range(total_steps):
    updates, state = tx.update(jnp.ones(()), state, params)
    rates.append(-float(updates) / 0.5)
  return np.array(rates)


def test_release_pretrain_schedule():
  """x0.2 at 2/3 and 5/6 of the steps: torch MultiStepLR(milestones=[40, 50]) over 60."""
  expected = np.repeat([1.0, 0.2, 0.04], [40, 10, 10])
  np.testing.assert_allclose(_learning_rates((2 / 3, 5 / 6), 0.2, 60), expected, rtol=1e-6)


def test_fifths_schedule():
  expected = np.repeat([1.0, 0.5, 0.25, 0.125, 0.0625], 2)
  np.testing.assert_allclose(_learning_rates((0.2, 0.4, 0.6, 0.8), 0.5, 10), expected,
                             rtol=1e-6)
  # 0.7 * 90 is 62.99999... in floating point: still step 63.
  np.testing.assert_allclose(_learning_rates((0.7,), 0.5, 90), np.repeat([1.0, 0.5], [63, 27]),
                             rtol=1e-6)
  # Over 2 steps 0.6 and 0.8 both fall on step 1 and compound; 0.2 and 0.4 fall on
  # step 0, which is no boundary (as torch ignores a milestone 0).
  np.testing.assert_allclose(_learning_rates((0.2, 0.4, 0.6, 0.8), 0.5, 2),
                             [1.0, 0.25], rtol=1e-6)
  with pytest.raises(ValueError, match="lr_decay_fractions"):
    _learning_rates((1.5,), 0.5, 4)


def test_eval_adamw_weight_decay_is_torch_adamw():
  """Decoupled: with a zero gradient, one step moves p by -lr * weight_decay * p."""
  config = config_lib.base_config().eval
  tx = train_lib.make_optimizer(config, 10)
  params = jnp.full((3,), 2.0)
  updates, _ = tx.update(jnp.zeros((3,)), tx.init(params), params)
  np.testing.assert_allclose(updates, -config.lr * config.weight_decay * 2.0, rtol=1e-5)
  assert config.weight_decay == 5e-4  # the release's yaml weight_decay


@pytest.mark.parametrize("rrc", [True, False])
def test_train_step_crops_before_dsa(monkeypatch, rrc):
  calls = []

  def spy(name, fn):
    def wrapped(*args, **kwargs):
      calls.append(name)
      return fn(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(augment_lib, "random_resized_crop",
                      spy("rrc", augment_lib.random_resized_crop))
  monkeypatch.setattr(augment_lib, "augment", spy("dsa", augment_lib.augment))
  monkeypatch.setattr(augment_lib, "cutmix", spy("cutmix", augment_lib.cutmix))
  config = config_lib.base_config().eval
  config.rrc, config.batch_size, config.steps_per_call = rrc, 8, 1
  model = models.get_model("convnet", 2, width=4, depth=1, norm="instance", image_size=8,
                           channels=1)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 8, 8, 1)).astype(np.uint8)
  targets = jax.nn.one_hot(rng.integers(0, 2, 16), 2)
  train_lib.train_classifier(jax.random.key(0), model, images, targets, config,
                             num_steps=1, mean=(0.5,), std=(0.25,), log_every_seconds=1e9)
  assert calls == (["rrc"] if rrc else []) + ["dsa", "cutmix"]
