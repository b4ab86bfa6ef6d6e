"""Shared defaults for `configs/*.py` and the parser for their `:arg` strings.

Every config file is `get_config(arg=None) -> ml_collections.ConfigDict`, in the
big_vision style: `--config=configs/cifar10.py:ipc=10,quick`. The arg string is
a comma-separated list of `key=value` pairs and bare flags; unknown keys raise.
Numbers marked (release) are the authors' PyTorch release defaults;
tests/test_config.py checks them per paper cell against the release's files, and
docs/results.md lists where we differ on purpose.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
from typing import Sequence

import ml_collections

from ncfm_jax.errors import InputError

# Fields of the config that define *what was computed* in a workdir. A workdir
# whose stored config differs in any of these is another run (main.py refuses
# to mix them); `eval` and `run` may change between invocations.
RESULT_DEFINING_SECTIONS = ("seed", "data", "model", "pretrain", "distill")


def parse_arg(arg: str | None, **defaults):
  """Parses `"ipc=10,quick"` into a ConfigDict over `defaults`.

  Bare words set a boolean default to True. Values are converted to the type of
  the default (int, float, bool, str). Unknown keys and values of the wrong type
  raise InputError (a ValueError).
  """
  parsed = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return parsed
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise InputError(
          f"unknown config argument {key!r}; valid: {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise InputError(f"config argument {key!r} needs a value ({key}=...)")
      parsed[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise InputError(f"config argument {key}={value!r} is not a boolean")
      parsed[key] = value.lower() in ("true", "1")
    elif isinstance(default, (int, float)):
      kind = type(default)
      try:
        parsed[key] = kind(value)
      except ValueError:
        expected = "an int" if kind is int else "a number"
        raise InputError(f"config argument {key}={value!r} is not {expected}") from None
    else:
      parsed[key] = value
  return parsed


def base_config() -> ml_collections.ConfigDict:
  """The release's hyper-parameters for a 32 px ConvNet-3 run (CIFAR-like)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"
  config.data.source = "auto"  # auto | tfds | idx | folder
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  # tfds: download and prepare a missing dataset on first use (never ImageNet).
  config.data.download = True
  config.data.image_size = 32
  config.data.classes = ml_collections.FieldReference(None, field_type=list)
  config.data.max_train_per_class = ml_collections.FieldReference(
      None, field_type=int)
  config.data.max_test = ml_collections.FieldReference(None, field_type=int)
  # Above this many bytes of uint8 training images, real batches are streamed
  # from host memory each call instead of sampled on the device.
  config.data.device_limit_mb = 4096

  config.model = ml_collections.ConfigDict()
  config.model.name = "convnet"
  config.model.width = 128
  config.model.depth = 3
  config.model.norm = "instance"

  # The pool of feature extractors (docs/design.md section 5).
  config.pretrain = ml_collections.ConfigDict()
  config.pretrain.num_models = 20  # (release) num_premodel
  config.pretrain.epochs = 60  # (release) 60 for 32 px, 80 for 128 px
  config.pretrain.max_steps = ml_collections.FieldReference(None, field_type=int)
  config.pretrain.batch_size = 128  # (release)
  config.pretrain.optimizer = "sgd"
  config.pretrain.lr = 0.01
  config.pretrain.momentum = 0.9
  config.pretrain.weight_decay = 5e-4
  # lr x lr_decay_factor at each of these fractions of the steps: (release
  # pretrain_script) x0.2 at 2/3 and 5/6 of the epochs.
  config.pretrain.lr_decay_fractions = (2 / 3, 5 / 6)
  config.pretrain.lr_decay_factor = 0.2
  # Random-resized-crop before DSA: the release's pretraining has none (its loader
  # only converts to tensors; DSA and CutMix run in the training loop).
  config.pretrain.rrc = False
  config.pretrain.augment = "color_crop"
  config.pretrain.cutmix_prob = 0.5
  config.pretrain.cutmix_beta = 1.0
  config.pretrain.steps_per_call = 50

  # The min-max loop (docs/design.md section 4).
  config.distill = ml_collections.ConfigDict()
  config.distill.ipc = 10
  config.distill.factor = 2
  config.distill.init = "mix"  # mix | real | noise
  config.distill.steps = 20000
  # (release) real images per class per step; the pipeline caps it at the
  # smallest class's count (data.effective_batch_real), e.g. 500 on CIFAR-100.
  config.distill.batch_real = 1024
  config.distill.loss = "ncfd"  # ncfd | mmd
  config.distill.sampler = "psi"  # psi | gaussian
  config.distill.psi_variant = "mixture"  # mixture | release
  # psi's architecture: noise [F / group_size, noise_dim] -> two hidden Dense layers.
  config.distill.psi_hidden_dim = 128
  config.distill.psi_noise_dim = 64
  config.distill.psi_group_size = 16  # frequencies per psi output row (paper: 16)
  config.distill.num_freqs = 4096
  config.distill.freq_chunk = ml_collections.FieldReference(None, field_type=int)
  # Real images per class in one forward pass (0: all batch_real at once; None:
  # cache-sized chunks on CPU, all at once on GPU/TPU). Also bounds the real
  # forward's activation memory (batch_real must be a multiple of it).
  config.distill.real_chunk = ml_collections.FieldReference(None, field_type=int)
  # Decoded synthetic images per class in one (unrolled) forward/backward pass (0:
  # all at once; None: cache-sized passes on CPU, all at once on GPU/TPU); must
  # divide ipc * factor^2.
  config.distill.syn_chunk = ml_collections.FieldReference(None, field_type=int)
  # Run the synthetic passes one after another (lax.map) and recompute each in the
  # backward pass: activation memory of one pass instead of all, for large
  # ipc x classes (or image sizes) on small memory; the lax.map backward ran
  # slower than unrolled passes on XLA:CPU (docs/design.md section 11).
  config.distill.remat_syn = False
  # Classes per block (0: all classes in one batched forward/backward): the step
  # takes each block's gradient in turn, so only one block's activations exist.
  config.distill.class_block = 0
  # How blocks run: "scan" (in one jitted step), "host" (a host loop of jitted
  # block steps); None: scan on GPU/TPU, host on CPU.
  config.distill.block_loop = ml_collections.FieldReference(None, field_type=str)
  # Memory one step may plan for, in GB (2^30 bytes); None: 90% of the accelerator's
  # memory, half the RAM on CPU. The planner (ncfm_jax/plan/) picks class_block,
  # the pass sizes, remat_syn and freq_chunk that fit it, fastest first; explicit
  # values of those fields are kept.
  config.distill.memory_budget_gb = ml_collections.FieldReference(None, field_type=float)
  # When several plans fit, time each on random data and take the fastest (False:
  # the first that fits, no timing). Costs seconds on GPU/TPU; on a 2-core CPU
  # CIFAR-100 ipc 50's batched update timed two plans in ~170 s (docs/benchmarks.md).
  config.distill.plan_timing = True
  config.distill.alpha = 0.5
  config.distill.beta = 0.5
  config.distill.loss_scale = 300.0  # (release) per-class multiplier
  # "per_class" (release): for each class in turn its loss and one optimizer update
  # of the whole synthetic tensor (C updates per iteration, then C per calibration
  # round); "batched": all classes' gradients in one update (distill.py).
  config.distill.update_mode = "per_class"
  # The images' optimizer: "adamw" (release: lr_img 0.01 x lr_scale_adam 0.1) or
  # "sgd" (release CIFAR-100 ipc 10: lr 0.01, momentum mom_img 0.5, no weight decay).
  config.distill.optimizer = "adamw"
  config.distill.lr = 1e-3  # (release) 0.01 x 0.1
  config.distill.momentum = 0.5  # (release) mom_img, for optimizer="sgd"
  config.distill.weight_decay = 5e-4
  config.distill.plateau_patience = 500
  config.distill.plateau_factor = 0.5
  # What reduce-on-plateau watches: "loss" (the match loss, which psi's ascent
  # pushes up), "fixed_ncfd" (the NCFD at fixed Gaussian frequencies: psi-free),
  # "calibration", or "none" (a fixed learning rate).
  config.distill.plateau_monitor = "loss"
  config.distill.psi_lr = 1e-3
  config.distill.psi_momentum = 0.5
  config.distill.calibration_weight = 1.0
  # "separate" (release): calibration_iters rounds of image updates from the
  # calibration cross-entropy after the match updates, each on its own draw (per
  # class with update_mode="per_class"); "folded": it joins the match loss in one
  # backward pass, on the same augmentation draw.
  config.distill.calibration_mode = "separate"
  config.distill.calibration_iters = 1  # (release) iter_calib
  # "shared": one frequency draw for every class of a step; "per_class": one each,
  # as the release (which loops the classes) draws them.
  config.distill.frequency_draw = "shared"
  # Real images of a step: "fresh" (a new class-balanced draw every step) or
  # "first" (the release's loader: the same first batch_real images of each class).
  config.distill.real_sampling = "fresh"
  config.distill.augment = "color_crop_cutout"
  # Steps run per host call: `lax.scan` over this many steps when use_scan,
  # else a Python loop over a jitted single step. None = scan on GPU/TPU, loop
  # on CPU, where the scanned step is slower (docs/design.md section 11).
  config.distill.steps_per_call = 10
  # With several devices: split the synthetic images by class too (C divisible by
  # the device count); otherwise they are replicated and only real data is split.
  config.distill.class_sharded = False
  config.distill.use_scan = ml_collections.FieldReference(None, field_type=bool)
  config.distill.unroll = 1
  config.distill.checkpoint_every = 500
  config.distill.keep_checkpoints = 2

  # Training networks from scratch on the synthetic set (docs/design.md section 8).
  config.eval = ml_collections.ConfigDict()
  config.eval.source = "distilled"  # distilled | random_real | init | file:PATH
  # eval.source=file:PATH holds factor-tiled stored images: decode them first.
  config.eval.file_factor = 1
  config.eval.baselines = True  # mode=all also evaluates random_real and init
  config.eval.num_eval = 5
  config.eval.archs = ("convnet",)  # CLI: --config.eval.archs=convnet --config.eval.archs=vgg11
  config.eval.epochs = 2000  # (release) evaluation_epochs, all but Tiny ImageNet
  config.eval.max_steps = ml_collections.FieldReference(None, field_type=int)
  config.eval.batch_size = 128
  config.eval.optimizer = "adamw"
  config.eval.lr = 1e-3  # (release) adamw_lr
  config.eval.momentum = 0.9
  # (release) the yaml's weight_decay, which its evaluation passes to AdamW.
  config.eval.weight_decay = 5e-4
  # (release) lr x0.5 at each fifth of the steps.
  config.eval.lr_decay_fractions = (0.2, 0.4, 0.6, 0.8)
  config.eval.lr_decay_factor = 0.5
  # Per image, torchvision's RandomResizedCrop (area 0.5-1) before DSA. Off as in
  # the release: with DSA on it never crops (its yaml's `rrc: True` acts only on
  # ImageNet subsets with DSA off); for DSA-off runs (eval.augment="none").
  config.eval.rrc = False
  # (release) dsa_strategy color_crop_cutout_flip_scale_rotate without cutout (CutMix
  # is on): per image flip, colour, then one of crop / scale / rotate per call.
  config.eval.augment = "color_crop_flip_scale_rotate"
  config.eval.cutmix_prob = 0.5
  config.eval.cutmix_beta = 1.0
  # Test accuracy every epoch_eval_interval epochs of the distilled set (release:
  # 100) and after the last step; eval_every (steps) overrides it. metrics.json
  # keeps the final accuracy and the best of these checkpoints (the release's).
  config.eval.epoch_eval_interval = 100
  config.eval.eval_every = ml_collections.FieldReference(None, field_type=int)
  config.eval.soft_labels = False
  config.eval.soft_label_temperature = 1.0
  config.eval.steps_per_call = 50
  return config


def distill_config(**fields) -> ml_collections.ConfigDict:
  """The `distill` section of `base_config()` (the release's values) with `fields`
  set, for building a step outside the CLI, e.g. in a notebook:

  >>> config = distill_config(ipc=2, num_freqs=256, update_mode="batched")

  Raises:
    InputError: a field the section does not have.
  """
  config = base_config().distill
  for name, value in fields.items():
    if name not in config:
      raise InputError(f"distill has no field {name!r}; fields: {', '.join(sorted(config))}")
    config[name] = value
  return config


def imagenet_subset_config(name: str, arg: str | None) -> ml_collections.ConfigDict:
  """ImageNet subsets at 128 px with ConvNet-5 (paper Table 2: ipc 1 and 10)."""
  args = parse_arg(arg, ipc=10, source="auto")
  config = base_config()
  config.data.name = name
  config.data.source = args.source
  config.data.image_size = 128
  config.model.depth = 5
  config.pretrain.epochs = 80  # (release) 128 px
  config.distill.ipc = args.ipc
  config.distill.batch_real = 128  # (release) config/ipc*/<subset>.yaml
  return config


def validate_config(config, *, model_names: Sequence[str], eval_sources: Sequence[str]) -> None:
  """InputError naming the first bad field of `config`."""
  d = config.distill
  checks = [
      (d.ipc >= 1, f"distill.ipc must be >= 1, got {d.ipc}"),
      (d.factor >= 1, f"distill.factor must be >= 1, got {d.factor}"),
      (d.loss in ("ncfd", "mmd"), f"distill.loss must be ncfd or mmd, got {d.loss!r}"),
      (d.sampler in ("psi", "gaussian"),
       f"distill.sampler must be psi or gaussian, got {d.sampler!r}"),
      (d.plateau_monitor in ("loss", "fixed_ncfd", "calibration", "none"),
       f"distill.plateau_monitor must be loss, fixed_ncfd, calibration or none, "
       f"got {d.plateau_monitor!r}"),
      (d.update_mode in ("per_class", "batched"),
       f"distill.update_mode must be per_class or batched, got {d.update_mode!r}"),
      (d.optimizer in ("adamw", "sgd"),
       f"distill.optimizer must be adamw or sgd, got {d.optimizer!r}"),
      (d.calibration_mode in ("folded", "separate"),
       f"distill.calibration_mode must be folded or separate, got {d.calibration_mode!r}"),
      (d.calibration_iters >= 0,
       f"distill.calibration_iters must be >= 0, got {d.calibration_iters}"),
      (d.frequency_draw in ("shared", "per_class"),
       f"distill.frequency_draw must be shared or per_class, got {d.frequency_draw!r}"),
      (d.real_sampling in ("fresh", "first"),
       f"distill.real_sampling must be fresh or first, got {d.real_sampling!r}"),
      (d.update_mode == "per_class" or not d.class_block
       or (d.calibration_mode == "folded" and d.frequency_draw == "shared"),
       "distill.class_block with update=batched needs calibration_mode=folded and "
       "frequency_draw=shared"),
      (d.init in ("mix", "real", "noise"),
       f"distill.init must be mix, real or noise, got {d.init!r}"),
      (d.num_freqs >= 1 and d.batch_real >= 1 and d.steps >= 0,
       "distill.num_freqs and distill.batch_real must be >= 1, steps >= 0"),
      (not (d.loss == "ncfd" and d.sampler == "psi") or d.num_freqs % d.psi_group_size == 0,
       f"distill.num_freqs={d.num_freqs} must be a multiple of "
       f"distill.psi_group_size={d.psi_group_size} with sampler=psi"),
      (not d.real_chunk or (d.real_chunk > 0 and d.batch_real % d.real_chunk == 0),
       f"distill.real_chunk={d.real_chunk} must divide distill.batch_real={d.batch_real}"),
      (not d.syn_chunk or (d.syn_chunk > 0 and (d.ipc * d.factor**2) % d.syn_chunk == 0),
       f"distill.syn_chunk={d.syn_chunk} must divide ipc * factor^2 = {d.ipc * d.factor**2}"),
      (config.pretrain.num_models >= 1,
       f"pretrain.num_models must be >= 1, got {config.pretrain.num_models}"),
      (config.eval.source in eval_sources or config.eval.source.startswith("file:"),
       f"eval.source must be one of {sorted(eval_sources)} or file:PATH, "
       f"got {config.eval.source!r}"),
      (config.eval.file_factor >= 1,
       f"eval.file_factor must be >= 1, got {config.eval.file_factor}"),
  ]
  for arch in [config.model.name, *config.eval.archs]:
    checks.append((arch in model_names,
                   f"unknown model {arch!r}; valid: {', '.join(model_names)}"))
  for ok, message in checks:
    if not ok:
      raise InputError(message)


# --------------------------------------------------------------------------
# Config specs: where `path.py[:arg]` is found.

# The package that ships the repository's configs/ (pyproject.toml maps it).
_CONFIG_PACKAGE = "ncfm_jax.configs"


def _packaged_config(name: str) -> str | None:
  """Path of `name` among the installed package's configs; None if not there."""
  try:
    directory = importlib.resources.files(_CONFIG_PACKAGE)
  except ModuleNotFoundError:  # e.g. a checkout on PYTHONPATH, not installed
    return None
  candidate = directory / name
  return str(candidate) if candidate.is_file() else None


def resolve_config(spec: str) -> str:
  """The spec ``path.py[:arg]`` with its path made absolute.

  The path is taken as given where that file exists (absolute, or relative to
  the working directory); otherwise ``name.py`` and ``configs/name.py`` mean
  the installed package's copy of the repository's ``configs/name.py``, so that
  a spec works from any directory once the package is installed.

  >>> resolve_config("fashion_mnist.py:quick")  # doctest: +SKIP
  '/.../site-packages/ncfm_jax/configs/fashion_mnist.py:quick'

  Raises:
    FileNotFoundError: neither exists; the message names both places.
  """
  path, sep, arg = spec.partition(":")
  if os.path.isfile(path):
    return os.path.abspath(path) + sep + arg
  head, name = os.path.split(os.path.normpath(path))
  packaged = _packaged_config(name) if head in ("", "configs") else None
  if packaged is None:
    raise FileNotFoundError(
        f"config {path!r}: no such file from {os.getcwd()}"
        + (f", nor {name!r} among the installed configs ({_CONFIG_PACKAGE})"
           if head in ("", "configs") else ""))
  return packaged + sep + arg


DEFAULT_WORKDIRS = "workdirs"
"""Where runs go when no directory is given (relative to the working directory)."""


def default_workdir(spec: str, prefix: str = "") -> str:
  """``workdirs/<prefix><config file stem>[_<arg>...]`` of a config spec
  ``path.py[:arg]``: the same command gets the same directory, so re-running it
  resumes.

  >>> default_workdir("configs/cifar10.py:ipc=50,quick")
  'workdirs/cifar10_ipc50_quick'
  """
  path, _, arg = spec.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  parts = [re.sub(r"[^A-Za-z0-9.]", "", item) for item in arg.split(",")]
  return os.path.join(DEFAULT_WORKDIRS, prefix + "_".join([stem, *filter(None, parts)]))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of the spec ``path.py[:arg]`` (`resolve_config`), as the CLI builds it."""
  path, _, arg = resolve_config(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location("ncfm_jax_loaded_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
