"""CIFAR-100, ConvNet-3, release hyper-parameters (paper Table 1: 34.4 / 48.7 / 54.7).

  python -m ncfm_jax.main --config=configs/cifar100.py:ipc=50

Needs tfds cifar100 prepared (README, "Datasets"). Arguments: ipc (1, 10, 50).
"""
from ncfm_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  config = config_lib.base_config()
  config.data.name = "cifar100"
  config.distill.ipc = args.ipc
  if args.ipc == 10:  # (release) config/ipc10/cifar100.yaml: SGD for the images
    config.distill.optimizer = "sgd"
    config.distill.lr = 0.01  # lr_img, not scaled for SGD
    config.distill.momentum = 0.5  # mom_img
    config.distill.weight_decay = 0.0  # its SGD is built without weight decay
  return config
