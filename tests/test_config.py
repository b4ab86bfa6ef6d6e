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


# ---------------------------------------------------------------- the release, cell by cell
#
# gszfwsb/NCFM, the newest stored version of each file (commit prefix given):
# every paper cell's config/ipc<ipc>/<dataset>.yaml as (commit, {key: (value, line)}),
# written out by hand from those files. Our config must take each value as the
# release's scripts use it (`_expected`); the script lines are cited there.
_YAML = {
    ("cifar10", 1): ("7294f087", {"size": ('32', 9), "depth": ('3', 18), "batch_real": ('1024', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('0.01', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('20', 24), "batch_size": ('128', 26), "adamw_lr": ('0.0006', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('60', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('True', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("cifar10", 10): ("7294f087", {"size": ('32', 9), "depth": ('3', 18), "batch_real": ('1024', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('0.01', 31), "evaluation_epochs": ('4000', 22), "epoch_eval_interval": ('20', 24), "batch_size": ('256', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('60', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('True', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("cifar10", 50): ("25d89951", {"size": ('32', 9), "depth": ('3', 18), "batch_real": ('1024', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('5e-4', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('100', 24), "batch_size": ('128', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('60', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('True', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("cifar100", 1): ("25d89951", {"size": ('32', 9), "depth": ('3', 18), "batch_real": ('1024', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('5e-4', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('100', 24), "batch_size": ('128', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('60', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('True', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("cifar100", 10): ("25d89951", {"size": ('32', 9), "depth": ('3', 18), "batch_real": ('1024', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('sgd', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('5e-4', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('100', 24), "batch_size": ('128', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('60', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('True', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("cifar100", 50): ("25d89951", {"size": ('32', 9), "depth": ('3', 18), "batch_real": ('1024', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('5e-4', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('100', 24), "batch_size": ('128', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('60', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('True', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("tinyimagenet", 1): ("25d89951", {"size": ('64', 8), "depth": ('4', 17), "batch_real": ('128', 11), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('60', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('True', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("tinyimagenet", 10): ("25d89951", {"size": ('64', 8), "depth": ('4', 17), "batch_real": ('128', 11), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('300', 21), "epoch_eval_interval": ('50', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('60', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('True', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("tinyimagenet", 50): ("25d89951", {"size": ('64', 8), "depth": ('4', 17), "batch_real": ('128', 11), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('40', 21), "epoch_eval_interval": ('5', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('60', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('True', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imagenette", 1): ("25d89951", {"size": ('128', 9), "depth": ('5', 17), "batch_real": ('128', 12), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('80', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('true', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imagenette", 10): ("25d89951", {"size": ('128', 9), "depth": ('5', 17), "batch_real": ('128', 12), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('80', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('true', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imagewoof", 1): ("25d89951", {"size": ('128', 8), "depth": ('5', 16), "batch_real": ('128', 11), "niter": ('20000', 57), "num_freqs": ('4096', 61), "factor": ('2', 63), "num_premodel": ('20', 56), "alpha_for_loss": ('0.5', 64), "beta_for_loss": ('0.5', 65), "calib_weight": ('1', 59), "iter_calib": ('1', 58), "optimizer": ('adamw', 44), "lr_img": ('0.01', 46), "lr_scale_adam": ('0.1', 45), "mom_img": ('0.5', 47), "weight_decay": ('5e-4', 29), "evaluation_epochs": ('2000', 20), "epoch_eval_interval": ('100', 22), "batch_size": ('128', 24), "adamw_lr": ('0.001', 26), "eval_optimizer": ('adamw', 27), "lr": ('0.01', 25), "momentum": ('0.9', 28), "pertrain_epochs": ('80', 23), "mixup": ('cut', 35), "mix_p": ('0.5', 37), "beta": ('1.0', 36), "rrc": ('true', 38), "dsa": ('true', 39), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 40)}),
    ("imagewoof", 10): ("25d89951", {"size": ('128', 8), "depth": ('5', 16), "batch_real": ('128', 11), "niter": ('20000', 57), "num_freqs": ('4096', 61), "factor": ('2', 63), "num_premodel": ('20', 56), "alpha_for_loss": ('0.5', 64), "beta_for_loss": ('0.5', 65), "calib_weight": ('1', 59), "iter_calib": ('1', 58), "optimizer": ('adamw', 44), "lr_img": ('0.01', 46), "lr_scale_adam": ('0.1', 45), "mom_img": ('0.5', 47), "weight_decay": ('5e-4', 29), "evaluation_epochs": ('2000', 20), "epoch_eval_interval": ('100', 22), "batch_size": ('128', 24), "adamw_lr": ('0.001', 26), "eval_optimizer": ('adamw', 27), "lr": ('0.01', 25), "momentum": ('0.9', 28), "pertrain_epochs": ('80', 23), "mixup": ('cut', 35), "mix_p": ('0.5', 37), "beta": ('1.0', 36), "rrc": ('true', 38), "dsa": ('true', 39), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 40)}),
    ("imagefruit", 1): ("25d89951", {"size": ('128', 9), "depth": ('5', 18), "batch_real": ('128', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('5e-4', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('100', 24), "batch_size": ('128', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('80', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('true', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("imagefruit", 10): ("25d89951", {"size": ('128', 9), "depth": ('5', 18), "batch_real": ('128', 12), "niter": ('20000', 59), "num_freqs": ('4096', 63), "factor": ('2', 65), "num_premodel": ('20', 58), "alpha_for_loss": ('0.5', 66), "beta_for_loss": ('0.5', 67), "calib_weight": ('1', 61), "iter_calib": ('1', 60), "optimizer": ('adamw', 46), "lr_img": ('0.01', 48), "lr_scale_adam": ('0.1', 47), "mom_img": ('0.5', 49), "weight_decay": ('5e-4', 31), "evaluation_epochs": ('2000', 22), "epoch_eval_interval": ('100', 24), "batch_size": ('128', 26), "adamw_lr": ('0.001', 28), "eval_optimizer": ('adamw', 29), "lr": ('0.01', 27), "momentum": ('0.9', 30), "pertrain_epochs": ('80', 25), "mixup": ('cut', 37), "mix_p": ('0.5', 39), "beta": ('1.0', 38), "rrc": ('true', 40), "dsa": ('true', 41), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 42)}),
    ("imagemeow", 1): ("25d89951", {"size": ('128', 9), "depth": ('5', 17), "batch_real": ('128', 12), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('80', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('true', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imagemeow", 10): ("25d89951", {"size": ('128', 9), "depth": ('5', 17), "batch_real": ('128', 12), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('80', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('true', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imagesquawk", 1): ("25d89951", {"size": ('128', 9), "depth": ('5', 17), "batch_real": ('128', 12), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('80', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('true', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imagesquawk", 10): ("25d89951", {"size": ('128', 9), "depth": ('5', 17), "batch_real": ('128', 12), "niter": ('20000', 58), "num_freqs": ('4096', 62), "factor": ('2', 64), "num_premodel": ('20', 57), "alpha_for_loss": ('0.5', 65), "beta_for_loss": ('0.5', 66), "calib_weight": ('1', 60), "iter_calib": ('1', 59), "optimizer": ('adamw', 45), "lr_img": ('0.01', 47), "lr_scale_adam": ('0.1', 46), "mom_img": ('0.5', 48), "weight_decay": ('5e-4', 30), "evaluation_epochs": ('2000', 21), "epoch_eval_interval": ('100', 23), "batch_size": ('128', 25), "adamw_lr": ('0.001', 27), "eval_optimizer": ('adamw', 28), "lr": ('0.01', 26), "momentum": ('0.9', 29), "pertrain_epochs": ('80', 24), "mixup": ('cut', 36), "mix_p": ('0.5', 38), "beta": ('1.0', 37), "rrc": ('true', 39), "dsa": ('true', 40), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 41)}),
    ("imageyellow", 1): ("25d89951", {"size": ('128', 8), "depth": ('5', 16), "batch_real": ('128', 11), "niter": ('20000', 57), "num_freqs": ('4096', 61), "factor": ('2', 63), "num_premodel": ('20', 56), "alpha_for_loss": ('0.5', 64), "beta_for_loss": ('0.5', 65), "calib_weight": ('1', 59), "iter_calib": ('1', 58), "optimizer": ('adamw', 44), "lr_img": ('0.01', 46), "lr_scale_adam": ('0.1', 45), "mom_img": ('0.5', 47), "weight_decay": ('5e-4', 29), "evaluation_epochs": ('2000', 20), "epoch_eval_interval": ('100', 22), "batch_size": ('128', 24), "adamw_lr": ('0.001', 26), "eval_optimizer": ('adamw', 27), "lr": ('0.01', 25), "momentum": ('0.9', 28), "pertrain_epochs": ('80', 23), "mixup": ('cut', 35), "mix_p": ('0.5', 37), "beta": ('1.0', 36), "rrc": ('true', 38), "dsa": ('true', 39), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 40)}),
    ("imageyellow", 10): ("25d89951", {"size": ('128', 8), "depth": ('5', 16), "batch_real": ('128', 11), "niter": ('20000', 57), "num_freqs": ('4096', 61), "factor": ('2', 63), "num_premodel": ('20', 56), "alpha_for_loss": ('0.5', 64), "beta_for_loss": ('0.5', 65), "calib_weight": ('1', 59), "iter_calib": ('1', 58), "optimizer": ('adamw', 44), "lr_img": ('0.01', 46), "lr_scale_adam": ('0.1', 45), "mom_img": ('0.5', 47), "weight_decay": ('5e-4', 29), "evaluation_epochs": ('2000', 20), "epoch_eval_interval": ('100', 22), "batch_size": ('128', 24), "adamw_lr": ('0.001', 26), "eval_optimizer": ('adamw', 27), "lr": ('0.01', 25), "momentum": ('0.9', 28), "pertrain_epochs": ('80', 23), "mixup": ('cut', 35), "mix_p": ('0.5', 37), "beta": ('1.0', 36), "rrc": ('true', 38), "dsa": ('true', 39), "dsa_strategy": ('color_crop_cutout_flip_scale_rotate', 40)}),
}


def _expected(name: str, ipc: int) -> dict:
  """{our config field: (value, where it comes from)} of a paper cell."""
  commit, y = _YAML[name, ipc]
  raw = lambda key: y[key][0]
  at = lambda *keys: ", ".join(f"config/ipc{ipc}/{name}.yaml:{y[k][1]}@{commit}" for k in keys)
  num = lambda key: float(raw(key))
  sgd = raw("optimizer") == "sgd"
  # utils/init_script.py:104-107@7294f087: lr_img x lr_scale_adam unless SGD.
  lr_img = num("lr_img") if sgd else num("lr_img") * num("lr_scale_adam")
  # utils/init_script.py:168-169@7294f087: CutMix ("cut") removes cutout from DSA.
  strategy = raw("dsa_strategy").replace("cutout_", "") if raw("mixup") == "cut" else (
      raw("dsa_strategy"))
  return {
      "data.image_size": (int(raw("size")), at("size")),
      "model.depth": (int(raw("depth")), at("depth")),
      "model.name": ("convnet", "network.net_type"),
      "model.width": (128, "network.width 1.0 x 128 (models/convnet.py)"),
      "model.norm": ("instance", "network.norm_type"),
      "distill.batch_real": (int(raw("batch_real")), at("batch_real")),
      "distill.steps": (int(raw("niter")), at("niter")),
      "distill.num_freqs": (int(raw("num_freqs")), at("num_freqs")),
      "distill.factor": (int(raw("factor")), at("factor")),
      "distill.alpha": (num("alpha_for_loss"), at("alpha_for_loss")),
      "distill.beta": (num("beta_for_loss"), at("beta_for_loss")),
      "distill.calibration_weight": (num("calib_weight"), at("calib_weight")),
      "distill.calibration_iters": (int(raw("iter_calib")), at("iter_calib")),
      "distill.optimizer": (raw("optimizer"), at("optimizer")),
      "distill.lr": (lr_img, at("lr_img", "lr_scale_adam")),
      # utils/utils.py:291-304@04441d80: SGD(lr, momentum=mom_img) has no weight
      # decay; AdamW takes the yaml's weight_decay.
      "distill.weight_decay": (0.0 if sgd else num("weight_decay"), at("weight_decay")),
      **({"distill.momentum": (num("mom_img"), at("mom_img"))} if sgd else {}),
      # condenser/compute_loss.py:33-92@2d7cdafb: per class, backward() and
      # optim_img.step(); compute_calib_loss (lines 100-137) the same per round.
      "distill.update_mode": ("per_class", "condenser/compute_loss.py:33-92@2d7cdafb"),
      "distill.calibration_mode": ("separate", "condenser/Condenser.py:279-291@2d7cdafb"),
      # condense/condense_script.py:81@2d7cdafb: --aug_type default.
      "distill.augment": ("color_crop_cutout", "condense/condense_script.py:81@2d7cdafb"),
      "distill.loss_scale": (300.0, "NCFM/NCFM.py:75@311820b0"),
      "distill.plateau_factor": (0.5, "condenser/Condenser.py:244@2d7cdafb"),
      "distill.plateau_patience": (500, "condenser/Condenser.py:245@2d7cdafb"),
      "pretrain.num_models": (int(raw("num_premodel")), at("num_premodel")),
      "pretrain.epochs": (int(raw("pertrain_epochs")), at("pertrain_epochs")),
      "pretrain.batch_size": (int(raw("batch_size")), at("batch_size")),
      # pretrain/pretrain_script.py:70-80@34a81d7a: SGD(lr, momentum, weight_decay),
      # MultiStepLR at 2/3 and 5/6 of the epochs, gamma 0.2.
      "pretrain.optimizer": ("sgd", "pretrain/pretrain_script.py:70"),
      "pretrain.lr": (num("lr"), at("lr")),
      "pretrain.momentum": (num("momentum"), at("momentum")),
      "pretrain.weight_decay": (num("weight_decay"), at("weight_decay")),
      "pretrain.lr_decay_fractions": ((2 / 3, 5 / 6), "pretrain/pretrain_script.py:78"),
      "pretrain.lr_decay_factor": (0.2, "pretrain/pretrain_script.py:79"),
      "pretrain.cutmix_prob": (num("mix_p"), at("mixup", "mix_p")),
      "pretrain.cutmix_beta": (num("beta"), at("beta")),
      "eval.epochs": (int(raw("evaluation_epochs")), at("evaluation_epochs")),
      "eval.epoch_eval_interval": (int(raw("epoch_eval_interval")), at("epoch_eval_interval")),
      "eval.batch_size": (int(raw("batch_size")), at("batch_size")),
      "eval.optimizer": (raw("eval_optimizer"), at("eval_optimizer")),
      "eval.lr": (num("adamw_lr"), at("adamw_lr")),
      # condenser/evaluate.py:56-60@319d26e7: AdamW(lr=adamw_lr, weight_decay=yaml's).
      "eval.weight_decay": (num("weight_decay"), at("weight_decay")),
      # condenser/evaluate.py:87-96@319d26e7: x0.5 at each fifth of the epochs.
      "eval.lr_decay_fractions": ((0.2, 0.4, 0.6, 0.8), "condenser/evaluate.py:87-96"),
      "eval.lr_decay_factor": (0.5, "condenser/evaluate.py:95"),
      # utils/init_script.py:171-172@7294f087: with dsa, augment = False, so the
      # loader never applies the yaml's rrc (data/transform.py:143).
      "eval.rrc": (False, at("rrc", "dsa")),
      "eval.augment": (strategy, at("dsa_strategy", "mixup")),
      "eval.cutmix_prob": (num("mix_p"), at("mixup", "mix_p")),
      "eval.cutmix_beta": (num("beta"), at("beta")),
  }


@pytest.mark.parametrize("name,ipc", sorted(_YAML))
def test_paper_configs_match_release(name, ipc):
  config = _load(os.path.join(ROOT, "configs", f"{name}.py")).get_config(f"ipc={ipc}")
  assert config.data.name == name and config.distill.ipc == ipc
  for field, (want, where) in _expected(name, ipc).items():
    section, key = field.split(".")
    got = config[section][key]
    if isinstance(want, tuple):
      got = tuple(got)
    if isinstance(want, (float, tuple)):
      assert got == pytest.approx(want), f"{field} = {got!r}, release {want!r} ({where})"
    else:
      assert got == want and type(got) is type(want), (
          f"{field} = {got!r}, release {want!r} ({where})")


def test_evaluation_checkpoints_follow_the_release_interval():
  """condenser/evaluate.py:189-193@319d26e7: test accuracy every epoch_eval_interval
  epochs, at the last epoch, and every interval / 50 epochs when ipc > 50."""
  from ncfm_jax import evaluation  # pylint: disable=g-import-not-at-top
  config = _load(os.path.join(ROOT, "configs", "cifar100.py")).get_config("ipc=10")
  per_epoch = evaluation.steps_per_epoch(config, 100)  # 4000 images / 128: 32 steps
  assert per_epoch == 32
  assert evaluation.checkpoint_steps(config, 100) == 100 * per_epoch
  config.distill.ipc = 100
  assert evaluation.checkpoint_steps(config, 100) == 2 * evaluation.steps_per_epoch(config, 100)
  config.eval.eval_every = 7
  assert evaluation.checkpoint_steps(config, 100) == 7


def test_data_download_is_runtime_only():
  """Downloading or not changes how the data arrives, not what a workdir computed."""
  from ncfm_jax import workdir  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  assert config.data.download is True
  offline = config_lib.base_config()
  offline.data.download = False
  assert workdir.result_defining(offline) == workdir.result_defining(config)


@pytest.mark.parametrize("spec, want", [
    ("configs/imagenette.py", "workdirs/imagenette"),
    ("configs/fashion_mnist.py:tiny", "workdirs/fashion_mnist_tiny"),
    ("/abs/configs/cifar10.py:ipc=50,quick", "workdirs/cifar10_ipc50_quick"),
])
def test_the_default_workdir_is_named_after_the_config(spec, want):
  assert config_lib.default_workdir(spec) == want
  assert config_lib.default_workdir(spec, prefix="study_") == want.replace("/", "/study_")
