"""Session-wide test settings."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _plan_cache_in_a_temporary_file(tmp_path_factory):
  """The memory planner's cache (ncfm_jax/plan.py) goes to a file of this session,
  for this process and the CLI subprocesses the tests start, never to ~/.cache."""
  path = str(tmp_path_factory.mktemp("plan_cache") / "plans.json")
  previous = os.environ.get("NCFM_PLAN_CACHE")
  os.environ["NCFM_PLAN_CACHE"] = path
  yield path
  if previous is None:
    os.environ.pop("NCFM_PLAN_CACHE", None)
  else:
    os.environ["NCFM_PLAN_CACHE"] = previous
