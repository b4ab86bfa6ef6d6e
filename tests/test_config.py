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


# The authors' release, config/ipc{1,10,50}/<dataset>.yaml (+ pretrain/pretrain_script.py
# for the pool's schedule and the evaluation's AdamW defaults), written out by hand.
_RELEASE_EVERY_CELL = {
    "model.name": "convnet", "model.width": 128, "model.norm": "instance",
    "distill.batch_real": 1024, "distill.steps": 20000, "distill.num_freqs": 4096,
    "distill.factor": 2, "distill.lr": 1e-3, "distill.alpha": 0.5, "distill.beta": 0.5,
    "distill.calibration_weight": 1.0, "distill.augment": "color_crop_cutout",
    "pretrain.num_models": 20, "pretrain.batch_size": 128, "pretrain.optimizer": "sgd",
    "pretrain.lr": 0.01, "pretrain.momentum": 0.9, "pretrain.weight_decay": 5e-4,
    "pretrain.lr_decay_fractions": (2 / 3, 5 / 6), "pretrain.lr_decay_factor": 0.2,
    "pretrain.rrc": False, "pretrain.augment": "color_crop",
    "pretrain.cutmix_prob": 0.5, "pretrain.cutmix_beta": 1.0,
    "eval.batch_size": 128, "eval.optimizer": "adamw", "eval.lr": 1e-3,
    "eval.weight_decay": 0.01, "eval.lr_decay_fractions": (0.2, 0.4, 0.6, 0.8),
    "eval.lr_decay_factor": 0.5, "eval.rrc": True, "eval.augment": "color_crop",
    "eval.cutmix_prob": 0.5, "eval.cutmix_beta": 1.0,
}
# (dataset, ipc): image size, ConvNet depth, pretrain epochs, evaluation epochs.
_RELEASE_CELLS = {
    **{(name, ipc): (32, 3, 60, 2000)
       for name in ("cifar10", "cifar100") for ipc in (1, 10, 50)},
    ("tinyimagenet", 1): (64, 4, 60, 2000),
    ("tinyimagenet", 10): (64, 4, 60, 300),
    ("tinyimagenet", 50): (64, 4, 60, 40),
    **{(name, ipc): (128, 5, 80, 2000)
       for name in ("imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk",
                    "imageyellow") for ipc in (1, 10)},
}


@pytest.mark.parametrize("name,ipc", sorted(_RELEASE_CELLS))
def test_paper_configs_match_release(name, ipc):
  config = _load(os.path.join(ROOT, "configs", f"{name}.py")).get_config(f"ipc={ipc}")
  size, depth, pretrain_epochs, eval_epochs = _RELEASE_CELLS[name, ipc]
  expected = {**_RELEASE_EVERY_CELL, "data.name": name, "distill.ipc": ipc,
              "data.image_size": size, "model.depth": depth,
              "pretrain.epochs": pretrain_epochs, "eval.epochs": eval_epochs}
  for field, want in expected.items():
    section, key = field.split(".")
    got = config[section][key]
    if isinstance(want, tuple):
      got = tuple(got)
    if isinstance(want, (float, tuple)):
      assert got == pytest.approx(want), field
    else:
      assert got == want and type(got) is type(want), field


def test_data_download_is_runtime_only():
  """Downloading or not changes how the data arrives, not what a workdir computed."""
  from ncfm_jax import workdir  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  assert config.data.download is True
  offline = config_lib.base_config()
  offline.data.download = False
  assert workdir.result_defining(offline) == workdir.result_defining(config)
