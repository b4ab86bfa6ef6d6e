"""CIFAR-100, ConvNet-3, release hyper-parameters (paper Table 1: 34.4 / 48.7 / 54.7).

  python -m ncfm_jax.main --config=configs/cifar100.py:ipc=50 --workdir=runs/cifar100_ipc50

Needs tfds cifar100 prepared (see README, "Datasets"). Arguments: ipc (1, 10, 50).
"""
from ncfm_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  config = config_lib.base_config()
  config.data.name = "cifar100"
  config.distill.ipc = args.ipc
  return config
