"""The planner's cache: compile-time footprints and timings of plans in a JSON file,
keyed by everything that decides them (`Planner.key`), so a second run plans without
compiling."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib

CODE_FILES = ("plan", "execution.py", "distill.py", "ncfd.py", "sincos.py", "augment.py",
              "parameterize.py", "sampler.py", "data/sampling.py", "models")
"""Files and packages (under ncfm_jax/) whose code decides a step's memory and speed:
a change to any of them invalidates the cache."""


def default_cache_path() -> str:
  """$NCFM_PLAN_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/ncfm_jax/plans.json."""
  if "NCFM_PLAN_CACHE" in os.environ:
    return os.environ["NCFM_PLAN_CACHE"]
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "ncfm_jax", "plans.json")


_CODE_HASH: list[str] = []


def code_hash() -> str:
  """A hash of `CODE_FILES`' sources (computed once per process)."""
  if not _CODE_HASH:
    root = pathlib.Path(__file__).parents[1]
    digest = hashlib.sha1()
    for name in CODE_FILES:
      path = root / name
      for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    _CODE_HASH.append(digest.hexdigest()[:16])
  return _CODE_HASH[0]


class PlanCache:
  """A JSON file of {key: entry}; read on every lookup, merged on every write."""

  def __init__(self, path: str):
    self.path = path

  def _read(self) -> dict:
    if not self.path:
      return {}
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def get(self, key: str) -> dict | None:
    return self._read().get(key)

  def update(self, key: str, **fields) -> None:
    if not self.path:
      return
    entries = self._read()
    entry = dict(entries.get(key, {}), **fields)
    entry["written"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries[key] = entry
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, self.path)
