"""Fixtures over the shared tiny setups of tests/_tiny.py (which the subprocess
workers import directly)."""

import pytest

import _tiny


@pytest.fixture(scope="session")
def separable_idx_dir(tmp_path_factory):
  """A directory of gzip IDX files: `_tiny.write_separable_idx`, 150 train and 100 test
  images per class, labels 0, 1, 7 (Fashion-MNIST's label range)."""
  return _tiny.write_separable_idx(tmp_path_factory.mktemp("separable_idx"),
                                   _tiny.SEPARABLE_TRAIN_PER_CLASS,
                                   _tiny.SEPARABLE_TEST_PER_CLASS)
