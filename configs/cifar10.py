"""CIFAR-10, ConvNet-3, release hyper-parameters (paper Table 1: 49.5 / 71.8 / 77.4).

  python -m ncfm_jax.main --config=configs/cifar10.py:ipc=10 --workdir=runs/cifar10_ipc10

Needs tfds cifar10 prepared (see README, "Datasets"). Arguments: ipc (1, 10, 50).
"""
from ncfm_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  config = config_lib.base_config()
  config.data.name = "cifar10"
  config.distill.ipc = args.ipc
  config.eval.archs = ("convnet", "alexnet", "vgg11", "resnet18")
  return config
