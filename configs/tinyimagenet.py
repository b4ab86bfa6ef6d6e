"""Tiny ImageNet (64 px, 200 classes), ConvNet-4 (paper Table 1: 18.2 / 26.8 / 29.6).

  python -m ncfm_jax.main --config=configs/tinyimagenet.py:ipc=10 \
      --config.data.data_dir=/data/tiny-imagenet-200

Read from a folder `<data_dir>/{train,val}/<wnid>/*.JPEG`; see README "Datasets" for
the one-time rearrangement of the official val split. Arguments: ipc (1, 10, 50).
"""
from ncfm_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  config = config_lib.base_config()
  config.data.name = "tinyimagenet"
  config.data.source = "folder"
  config.data.image_size = 64
  config.model.depth = 4
  config.distill.ipc = args.ipc
  config.distill.batch_real = 128  # (release) config/ipc*/tinyimagenet.yaml
  # (release) evaluation_epochs and epoch_eval_interval at ipc 1 / 10 / 50; other
  # ipc: the ipc-10 budget.
  config.eval.epochs = {1: 2000, 10: 300, 50: 40}.get(args.ipc, 300)
  config.eval.epoch_eval_interval = {1: 100, 10: 50, 50: 5}.get(args.ipc, 50)
  return config
