"""TensorFlow Datasets source, downloading what tfds can fetch by itself.

A dataset missing under ``data_dir`` is downloaded and prepared on first use (tfds shows
its progress) when ``download`` is set and tfds can fetch it (cifar10, cifar100,
svhn_cropped, imagenette, mnist, fashion_mnist, ...). ImageNet (``imagenet2012``, and
any builder with manual download instructions) is never downloaded: the error says
where to put the archives. Offline, or with ``download=False``, a missing dataset stops
with one line naming it and the command that prepares it: before downloading, one TCP
connection to tfds' servers (or the HTTPS proxy) is tried with a few seconds'
timeout, because tfds itself retries an unreachable network for minutes.

Two ways to read a split:

* whole: fixed-shape datasets (CIFAR, MNIST, SVHN, ...) in one tensor via
  ``builder.as_dataset(batch_size=-1)``, then the class subset/caps in numpy.
* streamed: variable-size photographs (Imagenette, ImageNet). The encoded JPEG bytes
  are read with ``SkipDecoding``, filtered by label inside tf.data, and only the kept
  images are decoded and resized (PIL, thread pool), chunk by chunk, so host memory
  holds the kept, resized images and one chunk of encoded bytes. The stream stops as
  soon as every class cap is reached. ImageNet subsets are picked from ``imagenet2012``
  by WordNet id: for imagenet2012 (and imagenette) ``info.features['label'].names``
  are the WordNet ids.

tensorflow and tensorflow_datasets are imported on first use (they are an optional
extra: ``pip install 'ncfm-jax[tfds]'``), and TensorFlow is kept off the GPUs.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from collections.abc import Sequence

import numpy as np

from ncfm_jax.data import images as images_lib
from ncfm_jax.data import selection as selection_lib
from ncfm_jax.errors import DataNotFoundError, InputError

IMAGENET_BUILDER = "imagenet2012"
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
"""Where tfds fetches prepared datasets first (its GCS mirror): the network probe."""
PROBE_SECONDS = 5.0


def network_problem(timeout: float = PROBE_SECONDS) -> str | None:
  """None when a TCP connection to tfds' download host (or the HTTPS proxy, when one
  is set) opens within `timeout` seconds; else what went wrong, in a few words."""
  proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
  host, port = DOWNLOAD_HOST
  if proxy:
    parsed = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
    host, port = parsed.hostname or host, parsed.port or 80
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return None
  except OSError as err:
    return f"{host}:{port} unreachable: {err.strerror or err}"


def _fetches_from_the_network(builder) -> bool:
  """Whether `builder.download_and_prepare` is tfds' own, which goes to the network
  (not a stand-in such as `tfds.testing.mock_data`'s no-op)."""
  method = getattr(type(builder), "download_and_prepare", None)
  return getattr(method, "__module__", "").startswith("tensorflow_datasets.core")


@functools.cache
def _modules():
  """(tfds, tf), imported once, with TensorFlow hidden from the accelerators."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError(
        "data.source='tfds' needs tensorflow-datasets and tensorflow: "
        "pip install 'ncfm-jax[tfds]'") from err
  try:
    # JAX owns the accelerators; without this TF would reserve GPU memory.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialised its devices elsewhere; nothing left to do.
  return tfds, tf


def prepare_instructions(tfds_name: str, data_dir: str | None) -> str:
  """How to get a dataset into ``data_dir`` (a command line to run once)."""
  command = (f"python -c \"import tensorflow_datasets as tfds; tfds.builder("
             f"'{tfds_name}', data_dir={data_dir!r}).download_and_prepare()\"")
  if tfds_name.split("/")[0] != IMAGENET_BUILDER:
    return f"prepare it once (needs internet) with: {command}"
  root = data_dir or "~/tensorflow_datasets"
  return ("ImageNet needs a manual download: register at https://image-net.org/"
          "download-images, put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
          f"into {root}/downloads/manual/, then run: {command}")


def _builder(tfds_name: str, data_dir: str | None):
  tfds, _ = _modules()
  try:
    return tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as err:
    raise InputError(
        f"tensorflow_datasets has no dataset '{tfds_name}' (for an image folder set "
        "data.source='folder' and data.data_dir)") from err


def _as_dataset(builder, split: str, data_dir: str | None, **kwargs):
  """``builder.as_dataset`` with an error that says how to prepare missing data."""
  tfds, _ = _modules()
  try:
    return builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=False,
        read_config=tfds.ReadConfig(try_autocache=False), **kwargs)
  except AssertionError as err:  # tfds' "could not find data in <data_dir>"
    name = _full_name(builder)
    raise DataNotFoundError(
        f"tfds dataset '{name}' is not prepared under {builder.data_dir_root}; "
        f"{prepare_instructions(name, data_dir)}") from err


def _needs_manual_download(builder) -> bool:
  return (builder.name == IMAGENET_BUILDER
          or bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)))


def _prepare(builder, data_dir: str | None) -> None:
  """Downloads and prepares a missing dataset that tfds can fetch by itself.

  Raises:
    DataNotFoundError: the download failed (offline, server down); one line with
      the dataset and the command that prepares it.
  """
  if builder.is_prepared() or _needs_manual_download(builder):
    return  # a missing manual dataset fails in _as_dataset, with the instructions
  tfds, _ = _modules()
  name = _full_name(builder)
  problem = network_problem() if _fetches_from_the_network(builder) else None
  if problem is not None:
    raise DataNotFoundError(
        f"tfds dataset '{name}' is not under {builder.data_dir_root} and cannot be "
        f"downloaded ({problem}); prepare it where there is a network and copy the "
        f"directory here, or give --config.data.data_dir: "
        f"{prepare_instructions(name, data_dir)}")
  print(f"[data] tfds dataset '{name}' is not under {builder.data_dir_root}: "
        "downloading and preparing it (once)", flush=True)
  try:
    builder.download_and_prepare()
  except (OSError, tfds.download.DownloadError) as err:
    reason = (str(err).strip().splitlines() or [""])[0][:200]
    raise DataNotFoundError(
        f"tfds dataset '{name}' could not be downloaded ({type(err).__name__}: "
        f"{reason}); {prepare_instructions(name, data_dir)}") from err


def _full_name(builder) -> str:
  """'name' or 'name/config' as tfds.builder accepts it."""
  config = builder.builder_config
  return f"{builder.name}/{config.name}" if config is not None else builder.name


def _load_whole(builder, split: str, data_dir: str | None, chunk_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """A fixed-shape split as uint8 [N, H, W, C] and int [N], read in batches."""
  tfds, _ = _modules()
  # Batches rather than batch_size=-1: tfds then batches by the split size from the
  # metadata, which is unknown for mocked datasets (and TF aborts on it).
  ds = _as_dataset(builder, split, data_dir).batch(chunk_size)
  images, labels = [], []
  for image_batch, label_batch in tfds.as_numpy(ds):
    images.append(image_batch)
    labels.append(label_batch)
  if not images:
    shape = builder.info.features[builder.info.supervised_keys[0]].shape
    return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int64)
  return np.concatenate(images).astype(np.uint8, copy=False), np.concatenate(labels)


def _load_stream(builder, split: str, data_dir: str | None, label_ids: Sequence[int],
                 *, max_per_class: int | None, max_total: int | None,
                 image_size: int | None, channels: int, num_workers: int,
                 chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Streams a split, keeping labels ``label_ids`` (relabelled to their position)."""
  tfds, tf = _modules()
  image_key, _ = builder.info.supervised_keys
  ds = _as_dataset(builder, split, data_dir,
                   decoders={image_key: tfds.decode.SkipDecoding()})
  wanted = tf.constant(list(label_ids), tf.int64)
  ds = ds.filter(lambda image, label: tf.reduce_any(tf.equal(tf.cast(label, tf.int64), wanted)))
  new_label = {int(orig): j for j, orig in enumerate(label_ids)}
  counts = np.zeros(len(label_ids), np.int64)
  decode = functools.partial(_decode_named, channels=channels, size=image_size)
  images, labels, pending = [], [], []
  for encoded, label in tfds.as_numpy(ds):
    j = new_label[int(label)]
    if max_per_class is not None and counts[j] >= max_per_class:
      continue
    counts[j] += 1
    pending.append((encoded, f"{_full_name(builder)}[{split}] example {len(labels)}"))
    labels.append(j)
    if len(pending) >= chunk_size:
      images += images_lib.decode_many(pending, decode, num_workers)
      pending = []
    if ((max_total is not None and len(labels) >= max_total) or
        (max_per_class is not None and (counts >= max_per_class).all())):
      break  # every cap reached: stop reading the (possibly huge) split
  images += images_lib.decode_many(pending, decode, num_workers)
  if image_size is None and len({image.shape for image in images}) > 1:
    raise InputError(
        f"{_full_name(builder)}[{split}]: images have different sizes; set data.image_size")
  if not images:
    side = image_size or 0
    return np.zeros((0, side, side, channels), np.uint8), np.zeros((0,), np.int32)
  return np.stack(images), np.asarray(labels, np.int32)


def _decode_named(item: tuple[bytes, str], *, channels: int,
                  size: int | None) -> np.ndarray:
  encoded, name = item
  return images_lib.decode_image(encoded, channels=channels, size=size, name=name)


def load_tfds(tfds_name: str, *, data_dir: str | None, train_split: str,
              test_split: str, selection: selection_lib.Selection,
              image_size: int | None, num_workers: int,
              wnids: Sequence[str] | None = None, chunk_size: int = 256,
              download: bool = False,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
  """Reads a tfds dataset, first downloading and preparing it when asked to.

  Args:
    tfds_name: builder name, e.g. ``"cifar10"``, ``"imagenette/full-size-v2"``.
    data_dir: tfds data directory, or None for tfds' default.
    train_split, test_split: tfds split names.
    selection: classes (indices into ``wnids`` when given, else into the tfds
      labels) and caps.
    image_size: side for streamed (photograph) datasets; fixed-shape datasets are
      returned at their stored size (the caller resizes).
    num_workers: decoding threads for streamed datasets.
    wnids: WordNet ids of the classes to read, in label order (ImageNet subsets);
      they must be label names of the builder.
    chunk_size: examples per read batch; for streamed datasets, the encoded
      images held before decoding (bounds host memory).
    download: download and prepare the dataset when it is missing (not ImageNet,
      whose archives need a manual download).

  Returns:
    ``(train_images uint8 [N, H, W, C], train_labels int32 [N], test_images,
    test_labels, class_names)`` with labels relabelled to the selected classes.

  Raises:
    DataNotFoundError: the dataset is not prepared under ``data_dir`` (and was not,
      or could not be, downloaded); the message says how to prepare it.
  """
  builder = _builder(tfds_name, data_dir)
  if download:
    _prepare(builder, data_dir)
  image_key, label_key = builder.info.supervised_keys
  label_names = tuple(builder.info.features[label_key].names)
  if wnids is None:
    universe, universe_ids = label_names, tuple(range(len(label_names)))
  else:
    missing = [w for w in wnids if w not in label_names]
    if missing:
      raise InputError(f"{tfds_name} has no classes {missing[:5]} (labels are WordNet ids)")
    universe, universe_ids = tuple(wnids), tuple(label_names.index(w) for w in wnids)
  kept = selection_lib.resolve_classes(selection.classes, len(universe), tfds_name)
  class_names = tuple(universe[c] for c in kept)
  image_shape = builder.info.features[image_key].shape
  if wnids is None and None not in image_shape:
    arrays = []
    for split, caps in ((train_split, dict(max_per_class=selection.max_train_per_class)),
                        (test_split, dict(max_total=selection.max_test))):
      images, labels = _load_whole(builder, split, data_dir, chunk_size)
      selection_lib.check_labels(labels, len(universe), f"{tfds_name}[{split}]")
      indices, new_labels = selection_lib.select_indices(
          labels, kept, len(universe), **caps)
      arrays += [selection_lib.take(images, indices), new_labels]
    return (*arrays, class_names)
  stream = functools.partial(
      _load_stream, builder, data_dir=data_dir,
      label_ids=[universe_ids[c] for c in kept], image_size=image_size,
      channels=image_shape[-1], num_workers=num_workers, chunk_size=chunk_size)
  train = stream(train_split, max_per_class=selection.max_train_per_class, max_total=None)
  test = stream(test_split, max_per_class=None, max_total=selection.max_test)
  return (*train, *test, class_names)
