"""How steps run: independent keys, pass sizes, scan or loop."""

import itertools

import jax
import numpy as np
import pytest

import _tiny
from ncfm_jax import execution


def test_a_steps_keys_are_pairwise_distinct_and_differ_between_steps():
  # Every consumer of a step's randomness (the device sampler in make_run_steps, the
  # member draw, the augmentation, the frequencies) takes its own key from here;
  # the device sampler once used fold_in(step_key, 1), equal to the augmentation's
  # split(step_key, 3)[1] under the partitionable threefry PRNG.
  base = jax.random.PRNGKey(0)
  seen = []
  for step in range(3):
    keys = [np.asarray(jax.random.key_data(k)) if jax.dtypes.issubdtype(
        k.dtype, jax.dtypes.prng_key) else np.asarray(k)
            for k in execution.step_keys(base, step)]
    seen += keys
  for a, b in itertools.combinations(seen, 2):
    assert not np.array_equal(a, b)


def test_pass_size_defaults():
  # Explicit values pass through; on CPU about 128 CIFAR-sized images per pass.
  assert execution.resolve_syn_chunk(5, 40, 10, 1024) == 5
  assert execution.resolve_real_chunk(4, 256, 10, 1024) == 4
  if jax.default_backend() == "cpu":
    assert execution.resolve_syn_chunk(None, 40, 10, 32 * 32) == 10  # cifar10 ipc 10: 4 x 100
    assert execution.resolve_syn_chunk(None, 8, 3, 16 * 16) == 8  # tiny: one pass
    # cifar100 ipc 50: at most 8 unrolled passes, or 200 of 100 images in a loop.
    assert execution.resolve_syn_chunk(None, 200, 100, 1024) == 25
    assert execution.resolve_syn_chunk(None, 200, 100, 1024, max_passes=200) == 1
    assert execution.resolve_real_chunk(None, 256, 10, 32 * 32) == 8
    assert execution.resolve_real_chunk(None, 128, 10, 128 * 128) == 1  # imagenette
    assert execution.resolve_use_scan(None) is False
  assert execution.resolve_use_scan(True) is True


def test_class_blocks_need_the_distill_step_not_a_bare_step():
  """A bare step function has no blocks: class_block would be silently ignored (the
  step benchmark once timed every plan as all classes at once this way)."""
  cfg = _tiny.config(class_block=1)
  setup = _tiny.setup(cfg)
  with pytest.raises(ValueError, match="class_block=1 needs the DistillStep"):
    execution.make_run_steps(setup.step.step, cfg, 1)
  execution.make_run_steps(setup.step, cfg, 1)  # the DistillStep: accepted
