"""Where config specs are found (config_lib.resolve_config), for grids of CLI runs."""

import glob
import os
import shutil
import sys

import pytest

import ncfm_jax
from ncfm_jax import config_lib

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
