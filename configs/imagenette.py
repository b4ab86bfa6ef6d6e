"""imagenette (10 ImageNet classes, 128 px), ConvNet-5 (paper Table 2).

  python -m ncfm_jax.main --config=configs/imagenette.py:ipc=10 --workdir=runs/imagenette_ipc10

Arguments: ipc (1, 10), source (auto | tfds | folder). See README "Datasets".
"""
from ncfm_jax import config_lib


def get_config(arg=None):
  return config_lib.imagenet_subset_config("imagenette", arg)
