"""Config files and the `:arg` parser."""

import glob
import importlib.util
import os

import pytest

from ncfm_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_parse_arg_types_and_flags():
  parsed = config_lib.parse_arg("ipc=50,quick", ipc=10, quick=False, name="x")
  assert parsed.ipc == 50 and isinstance(parsed.ipc, int)
  assert parsed.quick is True
  assert parsed.name == "x"


@pytest.mark.parametrize("arg", ["ipcc=1", "ipc", "quick=maybe"])
def test_parse_arg_errors(arg):
  with pytest.raises(ValueError):
    config_lib.parse_arg(arg, ipc=10, quick=False)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "[!_]*.py"))))
def test_every_config_builds_for_paper_ipcs(path):
  module = _load(path)
  for ipc in (1, 10):
    config = module.get_config(f"ipc={ipc}")
    assert config.distill.ipc == ipc
    assert config.distill.num_freqs % 16 == 0
    assert config.data.name


def test_paper_resolutions():
  assert _load(os.path.join(ROOT, "configs/imagenette.py")).get_config().data.image_size == 128
  assert _load(os.path.join(ROOT, "configs/imagenette.py")).get_config().model.depth == 5
  assert _load(os.path.join(ROOT, "configs/tinyimagenet.py")).get_config().model.depth == 4
  fm = _load(os.path.join(ROOT, "configs/fashion_mnist.py")).get_config("quick")
  assert fm.data.name == "fashion_mnist" and fm.distill.steps > 0
