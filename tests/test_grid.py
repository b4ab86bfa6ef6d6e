"""Grids of CLI runs (ncfm_jax.grid) and where config specs are found (config_lib).

The CLI is replaced by a fake that writes a metrics.json, except in the test of
a failing child.
"""

import glob
import json
import os
import shutil
import sys

import pytest

import ncfm_jax
from ncfm_jax import config_lib
from ncfm_jax import grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = os.path.join(ROOT, "configs", "fashion_mnist.py")


# ------------------------------------------------------------ config specs


def test_an_existing_path_is_taken_as_given(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  assert config_lib.resolve_config("configs/fashion_mnist.py:quick") == FASHION_MNIST + ":quick"
  assert config_lib.resolve_config(FASHION_MNIST) == FASHION_MNIST
  # A file of the same name as a shipped config, where the spec points, wins.
  mine = tmp_path / "fashion_mnist.py"
  mine.write_text("def get_config(arg=None):\n  return arg\n")
  monkeypatch.chdir(tmp_path)
  assert config_lib.resolve_config("fashion_mnist.py:ipc=1") == f"{mine}:ipc=1"
  assert config_lib.load_config("fashion_mnist.py:ipc=1") == "ipc=1"


@pytest.fixture
def installed_configs(tmp_path, monkeypatch):
  """The repository's configs/ as an installed package has them: ncfm_jax/configs/."""
  package = tmp_path / "site" / "configs"
  shutil.copytree(os.path.join(ROOT, "configs"), package)
  monkeypatch.setattr(ncfm_jax, "__path__", [str(package.parent), *ncfm_jax.__path__])
  sys.modules.pop("ncfm_jax.configs", None)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)  # no configs/ here
  yield package
  sys.modules.pop("ncfm_jax.configs", None)


def test_a_name_is_the_installed_packages_copy(installed_configs):
  installed = str(installed_configs / "fashion_mnist.py")
  assert config_lib.resolve_config("fashion_mnist.py:quick") == installed + ":quick"
  assert config_lib.resolve_config("configs/fashion_mnist.py:gpu,ipc=1") == installed + ":gpu,ipc=1"
  assert config_lib.load_config("configs/fashion_mnist.py:quick").data.name == "fashion_mnist"
  with pytest.raises(FileNotFoundError, match="nor 'cifar11.py' among the installed"):
    config_lib.resolve_config("cifar11.py")
  with pytest.raises(FileNotFoundError, match="no such file"):  # a path, not a name
    config_lib.resolve_config("elsewhere/fashion_mnist.py")


def test_pyproject_ships_every_package_and_the_configs():
  tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  on_disk = {os.path.relpath(os.path.dirname(init), ROOT).replace(os.sep, ".")
             for init in glob.glob(os.path.join(ROOT, "ncfm_jax", "**", "__init__.py"),
                                   recursive=True)}
  assert set(setuptools["packages"]) == on_disk | {"ncfm_jax.configs"}
  assert setuptools["package-dir"] == {"ncfm_jax.configs": "configs"}
  assert os.path.exists(os.path.join(ROOT, "configs", "__init__.py"))  # a regular package


# ------------------------------------------------------------------- grids


def _fake_cli(calls, fail=()):
  def run_cli(workdir, config, flags, env, log_path, mode="all"):
    name = os.path.basename(workdir)
    # What the grid had published when this cell started.
    results = os.path.join(os.path.dirname(workdir), grid.RESULTS)
    published = json.load(open(results)) if os.path.exists(results) else {}
    calls.append((name, config, tuple(flags), sorted(published)))
    if name in fail:
      raise RuntimeError(f"{name} failed (exit 2): error: boom")
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump({"flags": list(flags)}, f)
  return run_cli


def _tables(results):
  return {"cells.md": "\n".join(f"| {name} | {r['flags']} |" for name, r in sorted(results.items()))}


def test_run_grid_publishes_after_every_cell_and_resumes(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(grid, "run_cli", _fake_cli(calls))
  cells = [grid.Cell("a", FASHION_MNIST + ":tiny", ("--x=1",)),
           grid.Cell("b", FASHION_MNIST + ":tiny", ("--x=2",))]
  out = tmp_path / "grid"
  os.makedirs(out)
  (out / grid.RESULTS).write_text(json.dumps({"earlier": {"flags": []}}))
  result = grid.run_grid(cells, str(out), tables=_tables)
  assert result.failures == []
  assert calls == [("a", FASHION_MNIST + ":tiny", ("--x=1",), ["earlier"]),
                   ("b", FASHION_MNIST + ":tiny", ("--x=2",), ["a", "earlier"])]
  assert result.results["b"] == {"flags": ["--x=2"]}
  assert json.loads((out / grid.RESULTS).read_text()) == result.results
  assert "| b | ['--x=2'] |" in (out / "cells.md").read_text()

  calls.clear()  # the same cells again: read back, not run
  assert grid.run_grid(cells, str(out)).results == result.results and calls == []
  cells[1] = grid.Cell("b", FASHION_MNIST + ":tiny", ("--x=3",))  # another command: rerun
  assert grid.run_grid(cells, str(out)).results["b"] == {"flags": ["--x=3"]}
  assert [name for name, *_ in calls] == ["b"]


def test_a_failed_cell_is_reported_and_the_others_finish(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(grid, "run_cli", _fake_cli(calls, fail=("b",)))
  cells = [grid.Cell(name, FASHION_MNIST) for name in ("a", "b", "c")]
  result = grid.run_grid(cells, str(tmp_path), parallel=2)
  assert result.failures == ["b failed (exit 2): error: boom"]
  assert sorted(result.results) == ["a", "c"]
  assert not grid.finished(cells[1], str(tmp_path)) and grid.finished(cells[0], str(tmp_path))


def test_run_cli_reports_the_childs_error_and_its_log(tmp_path):
  log = tmp_path / "log.txt"
  with pytest.raises(RuntimeError, match=r"w failed \(exit [12]\): .*-- log: "):
    grid.run_cli(str(tmp_path / "w"), str(tmp_path / "missing.py"), [],
                 grid.child_env(1), str(log))
  assert log.read_text().startswith("$ " + sys.executable + " -m ncfm_jax.main")


def test_child_env_shares_the_accelerator_between_parallel_runs(monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in grid.child_env(1)
  assert grid.child_env(4)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
