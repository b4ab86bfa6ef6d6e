"""Session settings (the planner's cache in a temporary file) and fixtures over the
shared tiny setups of tests/_tiny.py (which the subprocess workers import directly)."""

import os

import pytest

import _tiny


@pytest.fixture(scope="session")
def separable_idx_dir(tmp_path_factory):
  """A directory of gzip IDX files: `_tiny.write_separable_idx`, 150 train and 100 test
  images per class, labels 0, 1, 7 (Fashion-MNIST's label range)."""
  return _tiny.write_separable_idx(tmp_path_factory.mktemp("separable_idx"),
                                   _tiny.SEPARABLE_TRAIN_PER_CLASS,
                                   _tiny.SEPARABLE_TEST_PER_CLASS)


@pytest.fixture
def in_repository(monkeypatch):
  """Runs the test in the checkout's root (where `configs/<dataset>.py` is found)."""
  monkeypatch.chdir(_tiny.ROOT)


@pytest.fixture(scope="session", autouse=True)
def _plan_cache_in_a_temporary_file(tmp_path_factory):
  """The memory planner's cache (ncfm_jax/plan/) goes to a file of this session,
  for this process and the CLI subprocesses the tests start, never to ~/.cache."""
  path = str(tmp_path_factory.mktemp("plan_cache") / "plans.json")
  previous = os.environ.get("NCFM_PLAN_CACHE")
  os.environ["NCFM_PLAN_CACHE"] = path
  yield path
  if previous is None:
    os.environ.pop("NCFM_PLAN_CACHE", None)
  else:
    os.environ["NCFM_PLAN_CACHE"] = previous
