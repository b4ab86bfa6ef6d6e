"""``load_dataset``: one entry point over the IDX, image-folder and tfds sources.

(Over 400 lines: the dataset table, the source dispatch and the registry shapes that
``--mode=plan`` reads without loading data describe the same datasets.)

The result is a ``Dataset`` of host (numpy) arrays: uint8 images [N, S, S, C] at
``data.image_size`` and int32 labels, plus the per-channel mean/std used to normalise
them (docs/design.md section 10; computed from the training images for datasets not in the
table).

``data`` config fields (all optional except ``name``):

* ``name``: a key of ``DATASETS`` (aliases: svhn_cropped, tiny_imagenet) or any
  other folder / tfds dataset.
* ``source``: ``"auto"`` | ``"tfds"`` | ``"idx"`` | ``"folder"``. ``auto`` reads
  mnist/fashion_mnist from IDX files when they are found (else tfds), tinyimagenet
  from a folder, an unknown name from a folder when ``data_dir`` holds one (else
  tfds), everything else from tfds.
* ``data_dir``: tfds data dir, IDX directory or folder root (None: tfds default; IDX
  also looks in /usr/share/datasets/<name>).
* ``image_size``: output side (default: the table's size, else the stored size).
  Images of another size are resized: shorter side bilinear (antialiased), then
  centre crop.
* ``classes``: class indices to keep, relabelled ``0..k-1`` in the order given.
* ``max_train_per_class``: keep the first n training images of each class.
* ``max_test``: keep the first n test images.
* ``download``: tfds only: download and prepare a missing dataset that tfds can fetch
  by itself (default True; never ImageNet). False: a missing dataset is an error that
  gives the command to prepare it.
* ``test_split``: override the test split name (tfds split, or folder dir name).
* ``tfds_name``: override the tfds builder name (e.g. ``"imagenette/320px-v2"``).
* ``channels``: folder datasets: 1 or 3 (default: the table's, else 3).
* ``num_workers``: image-decoding threads (default ``min(8, cpu_count)``).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ncfm_jax.data import folder as folder_lib
from ncfm_jax.data import idx as idx_lib
from ncfm_jax.data import images as images_lib
from ncfm_jax.data import selection as selection_lib
from ncfm_jax.errors import DataNotFoundError, InputError

SOURCES = ("auto", "tfds", "idx", "folder")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_SVHN_MEAN, _SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
# Where Debian's dataset-* packages put the IDX files.
_SYSTEM_IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist",
                    "mnist": "/usr/share/datasets/mnist"}


class Dataset(NamedTuple):
  """A labelled image dataset in host memory.

  Attributes:
    train_images: uint8 [N, H, W, C].
    train_labels: int32 [N], values in ``[0, len(class_names))``.
    test_images: uint8 [M, H, W, C].
    test_labels: int32 [M].
    class_names: one name per label.
    mean: per-channel mean of ``images / 255`` (len C), for normalisation.
    std: per-channel standard deviation of ``images / 255`` (len C).
    name: canonical dataset name.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str


class DatasetSpec(NamedTuple):
  """What the code knows about a named dataset.

  Attributes:
    image_size: the side used in the paper (default ``data.image_size``).
    mean, std: normalisation statistics (docs/design.md section 10).
    default_source: the source ``auto`` picks when nothing else decides.
    tfds_name: tfds builder name, or None when there is none.
    tfds_test_split: the tfds split used as the test set.
    subset: name of a WordNet id list in ``imagenet_subsets/`` (label order).
    class_names: names for the IDX source (tfds and folders name their classes).
    channels: 1 or 3.
    num_classes: class count (None: the subset list's length, or unknown).
    train_images: training images in all (the plan's device-held training set).
    train_per_class: (smallest, largest) training images of a class; the smallest
      caps ``distill.batch_real``. Where only a bound is known it is an upper one,
      so a memory plan made from it errs on the large side.
  """
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  default_source: str = "tfds"
  tfds_name: str | None = None
  tfds_test_split: str = "test"
  subset: str | None = None
  class_names: tuple[str, ...] | None = None
  channels: int = 3
  num_classes: int | None = None
  train_images: int | None = None
  train_per_class: tuple[int, int] | None = None


# ImageNet-1k classes hold 732 to 1300 training images: 1300 bounds both from above.
_IMAGENET_CLASS_BOUND = (1300, 1300)


def _imagenet_subset(subset: str, tfds_name: str = "imagenet2012",
                     train_images: int | None = None,
                     train_per_class: tuple[int, int] = _IMAGENET_CLASS_BOUND) -> DatasetSpec:
  return DatasetSpec(128, IMAGENET_MEAN, IMAGENET_STD, tfds_name=tfds_name,
                     tfds_test_split="validation", subset=subset,
                     train_images=train_images, train_per_class=train_per_class)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(32, _CIFAR_MEAN, _CIFAR_STD, tfds_name="cifar10",
                           num_classes=10, train_images=50000, train_per_class=(5000, 5000)),
    "cifar100": DatasetSpec(32, _CIFAR_MEAN, _CIFAR_STD, tfds_name="cifar100",
                            num_classes=100, train_images=50000, train_per_class=(500, 500)),
    "fashion_mnist": DatasetSpec(28, (0.2861,), (0.3530,), tfds_name="fashion_mnist",
                                 class_names=FASHION_MNIST_CLASSES, channels=1,
                                 num_classes=10, train_images=60000,
                                 train_per_class=(6000, 6000)),
    "mnist": DatasetSpec(28, (0.1307,), (0.3081,), tfds_name="mnist",
                         class_names=MNIST_CLASSES, channels=1, num_classes=10,
                         train_images=60000, train_per_class=(5421, 6742)),
    "svhn": DatasetSpec(32, _SVHN_MEAN, _SVHN_STD, tfds_name="svhn_cropped",
                        num_classes=10, train_images=73257, train_per_class=(4659, 13861)),
    "tinyimagenet": DatasetSpec(64, IMAGENET_MEAN, IMAGENET_STD, default_source="folder",
                                num_classes=200, train_images=100000,
                                train_per_class=(500, 500)),
    # tfds' own Imagenette build (fast.ai archive: its chain saw class is the smallest);
    # the in1k variant picks the same ten classes out of imagenet2012.
    "imagenette": _imagenet_subset("imagenette", tfds_name="imagenette/full-size-v2",
                                   train_images=9469, train_per_class=(858, 993)),
    "imagenette_in1k": _imagenet_subset("imagenette"),
    "imagewoof": _imagenet_subset("imagewoof"),
    "imagefruit": _imagenet_subset("imagefruit"),
    "imagemeow": _imagenet_subset("imagemeow"),
    "imagesquawk": _imagenet_subset("imagesquawk"),
    "imageyellow": _imagenet_subset("imageyellow"),
    "imagenet100": _imagenet_subset("imagenet100"),
}
ALIASES = {"svhn_cropped": "svhn", "tiny_imagenet": "tinyimagenet"}


def imagenet_subset_wnids(subset: str) -> tuple[str, ...]:
  """The WordNet ids of an ImageNet subset (package data), in label order."""
  resource = importlib.resources.files("ncfm_jax.data") / "imagenet_subsets" / f"{subset}.txt"
  if not resource.is_file():
    raise InputError(f"no ImageNet subset list '{subset}'")
  return tuple(line.strip() for line in resource.read_text().splitlines() if line.strip())


class _Options(NamedTuple):
  name: str
  source: str
  data_dir: str | None
  image_size: int | None
  selection: selection_lib.Selection
  test_split: str | None
  tfds_name: str | None
  channels: int | None
  num_workers: int
  download: bool


def _positive_or_none(value: Any, field: str) -> int | None:
  if value is None:
    return None
  if int(value) != value or value < 1:
    raise InputError(f"data.{field} must be a positive integer or None, got {value!r}")
  return int(value)


def _options(data_config: Mapping[str, Any]) -> _Options:
  get = data_config.get
  if not get("name"):
    raise InputError("data.name is required (e.g. 'cifar10', 'fashion_mnist')")
  name = str(get("name")).lower()
  name = ALIASES.get(name, name)
  source = get("source") or "auto"
  if source not in SOURCES:
    raise InputError(f"data.source must be one of {SOURCES}, got {source!r}")
  classes = get("classes")
  data_dir = get("data_dir")
  return _Options(
      name=name, source=source,
      data_dir=os.path.expanduser(str(data_dir)) if data_dir else None,
      image_size=_positive_or_none(get("image_size"), "image_size"),
      selection=selection_lib.Selection(
          classes=None if classes is None else tuple(classes),
          max_train_per_class=_positive_or_none(
              get("max_train_per_class"), "max_train_per_class"),
          max_test=_positive_or_none(get("max_test"), "max_test")),
      test_split=get("test_split"), tfds_name=get("tfds_name"),
      channels=_positive_or_none(get("channels"), "channels"),
      num_workers=_positive_or_none(get("num_workers"), "num_workers")
      or min(8, os.cpu_count() or 1),
      download=bool(get("download", True)))


def _idx_dirs(opts: _Options) -> list[str]:
  dirs = [opts.data_dir, os.path.join(opts.data_dir, opts.name)] if opts.data_dir else []
  if opts.name in _SYSTEM_IDX_DIRS:
    dirs.append(_SYSTEM_IDX_DIRS[opts.name])
  return dirs


def _folder_roots(opts: _Options) -> list[str]:
  if not opts.data_dir:
    return []
  roots = [opts.data_dir, os.path.join(opts.data_dir, opts.name)]
  if opts.name == "tinyimagenet":
    roots.append(os.path.join(opts.data_dir, "tiny-imagenet-200"))
  return roots


def _resolve_source(opts: _Options, spec: DatasetSpec | None) -> str:
  if opts.source != "auto":
    return opts.source
  if opts.name in _SYSTEM_IDX_DIRS and idx_lib.find_idx_files(_idx_dirs(opts)):
    return "idx"
  if spec is None:
    return "folder" if folder_lib.find_root(_folder_roots(opts)) else "tfds"
  return spec.default_source


def _load_idx(opts: _Options, spec: DatasetSpec | None):
  files = idx_lib.find_idx_files(_idx_dirs(opts))
  if files is None:
    hint = (" (Debian: apt-get install dataset-fashion-mnist)"
            if opts.name == "fashion_mnist" else "")
    raise DataNotFoundError(
        f"{opts.name}: no IDX files (train-images-idx3-ubyte[.gz], ...) in "
        f"{_idx_dirs(opts) or 'any directory: set data.data_dir'}{hint}")
  class_names = spec.class_names if spec is not None else None
  train_x, train_y, test_x, test_y = idx_lib.load_idx(
      files, None if class_names is None else len(class_names))
  if class_names is None:  # unknown dataset: classes 0..max label, named by number
    num_classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    class_names = tuple(str(i) for i in range(num_classes))
  kept = selection_lib.resolve_classes(opts.selection.classes, len(class_names), opts.name)
  train = selection_lib.select_indices(
      train_y, kept, len(class_names), max_per_class=opts.selection.max_train_per_class)
  test = selection_lib.select_indices(
      test_y, kept, len(class_names), max_total=opts.selection.max_test)
  return (selection_lib.take(train_x, train[0]), train[1],
          selection_lib.take(test_x, test[0]), test[1],
          tuple(class_names[c] for c in kept))


def _load_folder(opts: _Options, spec: DatasetSpec | None):
  root = folder_lib.find_root(_folder_roots(opts))
  if root is None:
    hint = (" For Tiny ImageNet, arrange the official val split first: python -m "
            "ncfm_jax.data.tinyimagenet_prepare SRC DST" if opts.name == "tinyimagenet" else "")
    raise DataNotFoundError(
        f"{opts.name}: no image folder <root>/train/<class>/*.jpg|png with root in "
        f"{_folder_roots(opts) or '[]: set data.data_dir'}.{hint}")
  if (root / "val" / "val_annotations.txt").is_file():
    raise InputError(
        f"{root} has the official Tiny ImageNet layout (unsorted val/images); arrange "
        f"it by class first: python -m ncfm_jax.data.tinyimagenet_prepare {root} DST")
  channels = opts.channels or (spec.channels if spec else 3)
  return folder_lib.load_folder(
      root, selection=opts.selection, image_size=opts.image_size, channels=channels,
      test_split=opts.test_split, num_workers=opts.num_workers,
      class_order=imagenet_subset_wnids(spec.subset) if spec and spec.subset else None)


def _load_tfds(opts: _Options, spec: DatasetSpec | None):
  from ncfm_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  tfds_name = opts.tfds_name or (spec.tfds_name if spec else opts.name)
  if tfds_name is None:
    raise InputError(f"{opts.name} has no tfds builder; use data.source='folder'")
  return tfds_source.load_tfds(
      tfds_name, data_dir=opts.data_dir, train_split="train",
      test_split=opts.test_split or (spec.tfds_test_split if spec else "test"),
      selection=opts.selection, image_size=opts.image_size,
      num_workers=opts.num_workers,
      wnids=imagenet_subset_wnids(spec.subset) if spec and spec.subset else None,
      download=opts.download)


class DatasetShape(NamedTuple):
  """What a distillation step's shapes need from a dataset, known without loading it.

  Attributes:
    name: canonical dataset name.
    num_classes: C after ``data.classes``.
    image_shape: ``(S, S, channels)`` at ``data.image_size``.
    train_images: training images kept (after ``classes`` and ``max_train_per_class``;
      an upper bound where the registry gives one).
    smallest_class, largest_class: training images of the smallest and largest class
      kept (``smallest_class`` caps ``distill.batch_real``).
    source: where the figures come from: ``"registry"`` or the listed folder's path.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train_images: int
  smallest_class: int
  largest_class: int
  source: str


def dataset_shape(data_config: Mapping[str, Any]) -> DatasetShape:
  """The class count, image shape and training-set sizes of ``data_config``'s dataset,
  without reading an image: from ``DATASETS``, or for another image folder from a
  listing of its class directories (image sizes then need ``data.image_size``).

  Raises:
    InputError: a dataset the registry does not describe and no folder lists.
  """
  opts = _options(data_config)
  spec = DATASETS.get(opts.name)
  image_size = opts.image_size or (spec.image_size if spec is not None else None)
  channels = opts.channels or (spec.channels if spec is not None else 3)
  cap = opts.selection.max_train_per_class
  if spec is not None and spec.train_per_class is not None:
    num_classes = spec.num_classes or len(imagenet_subset_wnids(spec.subset))
    kept = selection_lib.resolve_classes(opts.selection.classes, num_classes, opts.name)
    smallest, largest = spec.train_per_class
    if opts.selection.classes is not None:
      smallest = largest  # which class is smallest is not known: bound it from above
    smallest, largest = min(smallest, cap or smallest), min(largest, cap or largest)
    full = spec.train_images if opts.selection.classes is None and cap is None else None
    train_images = full or len(kept) * largest
    where = "registry"
  else:
    root = folder_lib.find_root(_folder_roots(opts))
    if root is None or _resolve_source(opts, spec) != "folder":
      raise InputError(f"{opts.name}: the dataset registry does not describe it and no "
                       f"image folder was found in {_folder_roots(opts) or 'data.data_dir'}")
    if image_size is None:
      raise InputError(f"{opts.name}: set data.image_size to plan without decoding images")
    counts = folder_lib.class_counts(root / folder_lib.TRAIN_SPLIT)
    kept = selection_lib.resolve_classes(opts.selection.classes, len(counts), opts.name)
    kept_counts = [min(counts[c], cap or counts[c]) for c in kept]
    smallest, largest, train_images = min(kept_counts), max(kept_counts), sum(kept_counts)
    where = str(root)
  return DatasetShape(opts.name, len(kept), (image_size, image_size, channels),
                      int(train_images), int(smallest), int(largest), where)


_LOADERS = {"idx": _load_idx, "folder": _load_folder, "tfds": _load_tfds}


def _check_split(images: np.ndarray, labels: np.ndarray, num_classes: int,
                 where: str) -> None:
  if images.ndim != 4 or images.dtype != np.uint8:
    raise InputError(f"{where}: images must be uint8 [N, H, W, C], got "
                     f"{images.dtype} {images.shape}")
  if images.shape[0] != labels.shape[0]:
    raise InputError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
  selection_lib.check_labels(labels, num_classes, where)


def _check_no_empty_class(labels: np.ndarray, class_names: tuple[str, ...],
                          where: str) -> None:
  counts = np.bincount(labels, minlength=len(class_names))
  empty = [class_names[c] for c in np.flatnonzero(counts == 0)]
  if empty:
    raise InputError(f"{where}: no images left for class(es) {empty[:5]}")


def channel_stats(images: np.ndarray, chunk: int = 4096
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of ``images / 255`` (uint8 [N, H, W, C]), in chunks."""
  total = np.zeros(images.shape[-1])
  total_sq = np.zeros(images.shape[-1])
  for start in range(0, images.shape[0], chunk):
    block = images[start:start + chunk].astype(np.float64) / 255.0
    total += block.sum(axis=(0, 1, 2))
    total_sq += np.square(block).sum(axis=(0, 1, 2))
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_dataset(data_config: Mapping[str, Any]) -> Dataset:
  """Loads a dataset's train and test splits into host memory.

  Args:
    data_config: the ``data`` config section (see the module docstring for the
      fields); a ``ml_collections.ConfigDict`` or a plain dict.

  Returns:
    A ``Dataset``: uint8 images [N, S, S, C] with ``S = image_size``, int32 labels
    relabelled ``0..k-1`` for the selected classes, class names, and the
    normalisation mean/std (len C).

  Raises:
    FileNotFoundError: the data is not there; the message says how to get it.
    ValueError: a malformed file, corrupt image, label out of range, or a class left
      without training images, named in the message.
  """
  opts = _options(data_config)
  spec = DATASETS.get(opts.name)
  if opts.image_size is None and spec is not None:
    opts = opts._replace(image_size=spec.image_size)
  source = _resolve_source(opts, spec)
  train_x, train_y, test_x, test_y, class_names = _LOADERS[source](opts, spec)
  if opts.image_size is not None:
    train_x = images_lib.resize_batch(train_x, opts.image_size)
    test_x = images_lib.resize_batch(test_x, opts.image_size)
  _check_split(train_x, train_y, len(class_names), f"{opts.name} train")
  _check_split(test_x, test_y, len(class_names), f"{opts.name} test")
  if test_x.shape[0] and train_x.shape[1:] != test_x.shape[1:]:
    raise InputError(f"{opts.name}: train images {train_x.shape[1:]} but test images "
                     f"{test_x.shape[1:]}")
  _check_no_empty_class(train_y, class_names, f"{opts.name} train")
  if opts.selection.max_test is None:
    _check_no_empty_class(test_y, class_names, f"{opts.name} test")
  if spec is not None:
    mean, std = spec.mean, spec.std
  else:
    mean, std = channel_stats(train_x)
  if len(mean) != train_x.shape[-1]:
    raise InputError(f"{opts.name}: {train_x.shape[-1]} channels but {len(mean)} "
                     "normalisation statistics")
  return Dataset(train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32),
                 tuple(class_names), tuple(mean), tuple(std), opts.name)
