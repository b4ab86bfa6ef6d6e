"""Tests for ncfm_jax.data loaders: IDX, image folders, tfds (mocked) and errors."""

import gzip
import io
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _tiny

from ncfm_jax import data
from ncfm_jax.data import idx as idx_lib
from ncfm_jax.data import images as images_lib
from ncfm_jax.data import selection as selection_lib
from ncfm_jax.data import sources
from ncfm_jax.data import tfds_source
from ncfm_jax.data import tinyimagenet_prepare
from ncfm_jax.errors import DataNotFoundError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} missing (Debian: apt-get install dataset-fashion-mnist)")


# ---------------------------------------------------------------- IDX helpers

def _small_idx_arrays(rng, num_train=12, num_test=6, side=6, num_classes=3):
  train_y = np.arange(num_train, dtype=np.uint8) % num_classes
  test_y = np.arange(num_test, dtype=np.uint8) % num_classes
  train_x = rng.integers(0, 256, (num_train, side, side), dtype=np.uint8)
  test_x = rng.integers(0, 256, (num_test, side, side), dtype=np.uint8)
  return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion():
  tracemalloc.start()
  start = time.perf_counter()
  dataset = data.load_dataset({"name": "fashion_mnist"})  # source auto -> idx
  seconds = time.perf_counter() - start
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  held = sum(a.nbytes for a in dataset[:4])
  print(f"\nfashion_mnist full load: {seconds:.2f} s, peak traced memory "
        f"{peak / 2**20:.0f} MiB (arrays held {held / 2**20:.0f} MiB)")
  return dataset


@needs_fashion
def test_fashion_mnist_full(fashion):
  assert fashion.train_images.shape == (60000, 28, 28, 1)
  assert fashion.test_images.shape == (10000, 28, 28, 1)
  assert fashion.train_images.dtype == np.uint8 and fashion.test_images.dtype == np.uint8
  assert fashion.train_labels.dtype == np.int32 and fashion.test_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(fashion.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(fashion.test_labels), [1000] * 10)
  assert fashion.class_names == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
  assert fashion.mean == (0.2861,) and fashion.std == (0.3530,)
  assert fashion.name == "fashion_mnist"
  # The table's statistics are those of the data.
  mean, std = sources.channel_stats(fashion.train_images)
  np.testing.assert_allclose(mean, fashion.mean, atol=1e-3)
  np.testing.assert_allclose(std, fashion.std, atol=1e-3)


@needs_fashion
def test_fashion_mnist_subset_relabels(fashion):
  subset = data.load_dataset({"name": "fashion_mnist", "source": "idx", "classes": [0, 3],
                              "max_train_per_class": 50})
  assert subset.train_images.shape == (100, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(subset.train_labels), [50, 50])
  assert subset.class_names == ("T-shirt/top", "Dress")
  # The first 50 of each class, in file order.
  for new, old in enumerate([0, 3]):
    expected = fashion.train_images[fashion.train_labels == old][:50]
    np.testing.assert_array_equal(subset.train_images[subset.train_labels == new], expected)
  np.testing.assert_array_equal(subset.test_labels,
                                (fashion.test_labels[np.isin(fashion.test_labels, [0, 3])] == 3))


@needs_fashion
def test_fashion_mnist_resize_and_max_test():
  subset = data.load_dataset({"name": "fashion_mnist", "classes": [9], "max_train_per_class": 3,
                              "max_test": 2, "image_size": 32})
  assert subset.train_images.shape == (3, 32, 32, 1)
  assert subset.test_images.shape == (2, 32, 32, 1)
  assert subset.class_names == ("Ankle boot",)


# ---------------------------------------------------------------- small IDX files

@pytest.mark.parametrize("gz", [False, True])
def test_idx_small_files_round_trip(tmp_path, gz):
  rng = np.random.default_rng(0)
  arrays = _small_idx_arrays(rng)
  _tiny.write_idx_set(tmp_path, *arrays, gz=gz)
  dataset = data.load_dataset({"name": "toy_idx", "source": "idx", "data_dir": str(tmp_path)})
  np.testing.assert_array_equal(dataset.train_images[..., 0], arrays[0])
  np.testing.assert_array_equal(dataset.train_labels, arrays[1])
  np.testing.assert_array_equal(dataset.test_images[..., 0], arrays[2])
  np.testing.assert_array_equal(dataset.test_labels, arrays[3])
  assert dataset.class_names == ("0", "1", "2")
  # Unknown dataset: statistics come from the training images.
  np.testing.assert_allclose(dataset.mean, [arrays[0].mean() / 255], rtol=1e-9)
  np.testing.assert_allclose(dataset.std, [(arrays[0] / 255).std()], rtol=1e-9)


def test_idx_bad_magic(tmp_path):
  rng = np.random.default_rng(1)
  train_x, train_y, test_x, test_y = _small_idx_arrays(rng)
  _tiny.write_idx_set(tmp_path, train_x, train_y, test_x, test_y, gz=False)
  bad = _tiny.write_idx(tmp_path / "train-labels-idx1-ubyte",
                        _tiny.idx_bytes(train_y, b"\x00\x00\x08\x03"), gz=False)
  with pytest.raises(ValueError, match=f"{bad}.*magic"):
    data.load_dataset({"name": "toy", "source": "idx", "data_dir": str(tmp_path)})


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
  rng = np.random.default_rng(2)
  train_x, train_y, test_x, test_y = _small_idx_arrays(rng)
  _tiny.write_idx_set(tmp_path, train_x, train_y, test_x, test_y, gz=gz)
  payload = _tiny.idx_bytes(test_x)[:-5]
  path = _tiny.write_idx(tmp_path / "t10k-images-idx3-ubyte", payload, gz=False)
  if gz:  # a gzip stream cut short
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_tiny.idx_bytes(test_x))[:-12])
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
  with pytest.raises(ValueError, match=f"{path}.*truncated"):
    data.load_dataset({"name": "toy", "source": "idx", "data_dir": str(tmp_path)})


def test_idx_trailing_bytes(tmp_path):
  path = _tiny.write_idx(tmp_path / "x-idx1-ubyte",
                         _tiny.idx_bytes(np.arange(4, dtype=np.uint8)) + b"\x00", gz=False)
  with pytest.raises(ValueError, match="trailing"):
    idx_lib.read_idx(path, ndim=1)


def test_idx_count_mismatch(tmp_path):
  rng = np.random.default_rng(3)
  train_x, train_y, test_x, test_y = _small_idx_arrays(rng)
  _tiny.write_idx_set(tmp_path, train_x, train_y[:-1], test_x, test_y, gz=True)
  with pytest.raises(ValueError, match="12 images but .*train-labels-idx1-ubyte.gz has 11"):
    data.load_dataset({"name": "toy", "source": "idx", "data_dir": str(tmp_path)})


def test_idx_label_out_of_range(tmp_path):
  rng = np.random.default_rng(4)
  train_x, _, test_x, test_y = _small_idx_arrays(rng, num_train=20)
  train_y = np.arange(20, dtype=np.uint8) % 11  # mnist has 10 classes: label 10 is bad
  _tiny.write_idx_set(tmp_path, train_x, train_y, test_x, test_y, gz=False)
  with pytest.raises(ValueError, match="train-labels-idx1-ubyte: label 10 out of range"):
    data.load_dataset({"name": "mnist", "source": "idx", "data_dir": str(tmp_path)})


def test_idx_empty_class_after_filtering(tmp_path):
  rng = np.random.default_rng(5)
  arrays = _small_idx_arrays(rng)
  _tiny.write_idx_set(tmp_path, *arrays, gz=False)
  train_y = np.zeros_like(arrays[1])  # only class 0 in train, classes 0..2 in test
  _tiny.write_idx(tmp_path / "train-labels-idx1-ubyte", _tiny.idx_bytes(train_y), gz=False)
  with pytest.raises(ValueError, match=r"no images left for class\(es\) \['1'\]"):
    data.load_dataset({"name": "toy", "source": "idx", "data_dir": str(tmp_path),
                       "classes": [1, 0]})


def test_bad_options():
  with pytest.raises(ValueError, match="data.name"):
    data.load_dataset({"source": "idx"})
  with pytest.raises(ValueError, match="data.source"):
    data.load_dataset({"name": "cifar10", "source": "web"})
  with pytest.raises(ValueError, match="max_test"):
    data.load_dataset({"name": "cifar10", "max_test": 0})
  with pytest.raises(ValueError, match=r"classes \[10\] out of range"):
    selection_lib.resolve_classes([0, 10], 10, "cifar10")
  with pytest.raises(ValueError, match="duplicates"):
    selection_lib.resolve_classes([1, 1], 10, "cifar10")


def test_select_indices_rules():
  labels = np.array([2, 0, 2, 1, 2, 0, 2])
  indices, new = selection_lib.select_indices(labels, (2, 0), 3, max_per_class=2)
  np.testing.assert_array_equal(indices, [0, 1, 2, 5])
  np.testing.assert_array_equal(new, [0, 1, 0, 1])
  indices, new = selection_lib.select_indices(labels, (0, 1, 2), 3, max_total=3)
  np.testing.assert_array_equal(indices, [0, 1, 2])


# ---------------------------------------------------------------- resize rule

def test_resize_keeps_constant_and_centre_crops():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 200  # the centre square survives the crop
  out = images_lib.resize_array(image, 10)
  assert out.shape == (10, 10, 3)
  assert (out[:, 2:8] == 200).all()
  same = np.full((10, 10, 1), 7, np.uint8)
  assert images_lib.resize_array(same, 10) is same


# ---------------------------------------------------------------- folders

_FOLDER_COLOURS = {"cat": (250, 10, 10), "ant": (10, 250, 10), "bee": (10, 10, 250)}


def _save(path: Path, size, colour, fmt: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, colour).save(path, format=fmt)


def _make_folder(root: Path, test_name: str = "val") -> Path:
  """root/{train,val}/{cat,ant,bee}/ with PNG and JPEG files of varied sizes."""
  for split, count in (("train", 3), (test_name, 2)):
    for name, colour in _FOLDER_COLOURS.items():
      for i in range(count):
        fmt, suffix = ("PNG", ".png") if i % 2 == 0 else ("JPEG", ".JPG")
        _save(root / split / name / f"{i}{suffix}", (16 + 4 * i, 12), colour, fmt)
  return root


def test_folder_loader(tmp_path):
  root = _make_folder(tmp_path / "toy")
  (root / "train" / "ant" / "notes.txt").write_text("not an image")
  dataset = data.load_dataset({"name": "toy", "data_dir": str(tmp_path), "image_size": 8})
  assert dataset.class_names == ("ant", "bee", "cat")  # sorted
  assert dataset.train_images.shape == (9, 8, 8, 3)
  assert dataset.test_images.shape == (6, 8, 8, 3)
  np.testing.assert_array_equal(dataset.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  for images, labels in ((dataset.train_images, dataset.train_labels),
                         (dataset.test_images, dataset.test_labels)):
    for image, label in zip(images, labels):
      colour = _FOLDER_COLOURS[dataset.class_names[label]]
      np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colour, atol=3)
  np.testing.assert_allclose(dataset.mean, sources.channel_stats(dataset.train_images)[0])


def test_folder_subset_and_grey(tmp_path):
  root = _make_folder(tmp_path)
  subset = data.load_dataset({"name": "toy", "source": "folder", "data_dir": str(root),
                              "image_size": 4, "classes": [2, 1], "max_train_per_class": 2,
                              "max_test": 3, "channels": 1})
  assert subset.class_names == ("cat", "bee")
  assert subset.train_images.shape == (4, 4, 4, 1)
  # Source order (class-major, sorted names) is kept: bee files come before cat files.
  np.testing.assert_array_equal(subset.train_labels, [1, 1, 0, 0])
  np.testing.assert_array_equal(subset.test_labels, [1, 1, 0])


def test_folder_corrupt_file(tmp_path):
  root = _make_folder(tmp_path)
  bad = root / "train" / "bee" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
  with pytest.raises(ValueError, match=f"cannot decode image {bad}"):
    data.load_dataset({"name": "toy", "source": "folder", "data_dir": str(root),
                       "image_size": 8})


def test_folder_empty_class(tmp_path):
  root = _make_folder(tmp_path)
  (root / "val" / "dog").mkdir()
  (root / "train" / "dog").mkdir()
  with pytest.raises(ValueError, match=f"class directory {root / 'train' / 'dog'} is empty"):
    data.load_dataset({"name": "toy", "source": "folder", "data_dir": str(root),
                       "image_size": 8})


def test_folder_class_sets_differ(tmp_path):
  root = _make_folder(tmp_path)
  _save(root / "train" / "dog" / "0.png", (8, 8), (1, 2, 3), "PNG")
  with pytest.raises(ValueError, match=r"differ .*only in train: \['dog'\]"):
    data.load_dataset({"name": "toy", "source": "folder", "data_dir": str(root)})


def test_folder_needs_image_size_for_mixed_sizes(tmp_path):
  root = _make_folder(tmp_path)
  with pytest.raises(ValueError, match="set data.image_size"):
    data.load_dataset({"name": "toy", "source": "folder", "data_dir": str(root)})


def test_tinyimagenet_prepare_and_load(tmp_path):
  src = tmp_path / "tiny-imagenet-200"
  wnids = ["n02", "n01"]
  (src).mkdir()
  (src / "wnids.txt").write_text("\n".join(wnids) + "\n")
  lines = []
  for k, wnid in enumerate(wnids):
    for i in range(2):
      _save(src / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), (100 * k, 0, 0),
            "JPEG")
    (src / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    name = f"val_{k}.JPEG"
    _save(src / "val" / "images" / name, (64, 64), (100 * k, 0, 0), "JPEG")
    lines.append(f"{name}\t{wnid}\t0\t0\t10\t10")
  (src / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  dst = tmp_path / "arranged"
  tinyimagenet_prepare.main([str(src), str(dst)])
  assert sorted(p.name for p in (dst / "val" / "n01").iterdir()) == ["val_1.JPEG"]
  dataset = data.load_dataset({"name": "tinyimagenet", "data_dir": str(dst),
                               "image_size": 32})
  assert dataset.class_names == ("n01", "n02")
  assert dataset.train_images.shape == (4, 32, 32, 3)
  assert dataset.mean == sources.IMAGENET_MEAN and dataset.std == sources.IMAGENET_STD
  assert abs(int(dataset.test_images[0, ..., 0].mean()) - 100) <= 3  # n01 is colour 100
  with pytest.raises(ValueError, match="not empty"):
    tinyimagenet_prepare.arrange_tinyimagenet(src, dst)
  with pytest.raises(ValueError, match="tinyimagenet_prepare"):  # not yet arranged
    data.load_dataset({"name": "tinyimagenet", "data_dir": str(src), "image_size": 32})


def test_folder_missing_root_is_instructive(tmp_path):
  with pytest.raises(FileNotFoundError, match="tinyimagenet_prepare"):
    data.load_dataset({"name": "tinyimagenet", "data_dir": str(tmp_path)})


# ---------------------------------------------------------------- tfds (mocked)

@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


def test_tfds_cifar10_mock(tfds):
  with tfds.testing.mock_data(num_examples=40):  # enough for every class to occur
    dataset = data.load_dataset({"name": "cifar10", "source": "tfds"})
    resized = data.load_dataset({"name": "cifar10", "image_size": 16, "max_test": 5})
  assert dataset.train_images.shape == (40, 32, 32, 3)
  assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
  assert len(dataset.class_names) == 10
  assert dataset.mean == (0.4914, 0.4822, 0.4465)
  assert resized.train_images.shape == (40, 16, 16, 3)
  assert resized.test_images.shape == (5, 16, 16, 3)
  np.testing.assert_array_equal(resized.train_labels, dataset.train_labels)
  np.testing.assert_array_equal(
      resized.train_images[3], images_lib.resize_array(dataset.train_images[3], 16))


def test_tfds_fashion_mnist_mock_subset(tfds):
  with tfds.testing.mock_data(num_examples=50):
    full = data.load_dataset({"name": "fashion_mnist", "source": "tfds"})
    subset = data.load_dataset({"name": "fashion_mnist", "source": "tfds", "classes": [4, 1],
                                "max_train_per_class": 1})
  assert full.train_images.shape == (50, 28, 28, 1)
  assert subset.class_names == ("Coat", "Trouser")
  first_coat = np.flatnonzero(full.train_labels == 4)[0]
  np.testing.assert_array_equal(subset.train_images[subset.train_labels == 0][0],
                                full.train_images[first_coat])
  np.testing.assert_array_equal(np.bincount(subset.train_labels), [1, 1])


def test_tfds_imagenette_mock_streams_and_resizes(tfds):
  with tfds.testing.mock_data(num_examples=40):
    dataset = data.load_dataset({"name": "imagenette", "image_size": 24,
                                 "max_train_per_class": 2, "max_test": 7})
  assert dataset.train_images.shape == (20, 24, 24, 3)
  assert dataset.test_images.shape == (7, 24, 24, 3)
  assert dataset.class_names == data.imagenet_subset_wnids("imagenette")
  assert dataset.mean == sources.IMAGENET_MEAN


def _fake_imagenet(tfds, examples):
  """An ``as_dataset_fn`` yielding ``examples`` [(label_id, (w, h), value)] as JPEGs."""
  import tensorflow as tf

  def encode(size, value):
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, read_config, shuffle_files
    assert isinstance(decoders["image"], tfds.decode.SkipDecoding)  # filter before decode
    offset = 0 if split == "train" else 1  # tell the splits apart
    return tf.data.Dataset.from_tensor_slices({
        "image": [encode(size, value + offset) for _, size, value in examples],
        "label": np.asarray([label for label, _, _ in examples], np.int64),
        "file_name": [f"{i}.JPEG" for i in range(len(examples))],
    })
  return as_dataset


def test_tfds_imagenet_subset_selection(tfds):
  names = tfds.builder("imagenet2012").info.features["label"].names
  wnids = data.imagenet_subset_wnids("imagewoof")
  assert len(wnids) == 10 and all(w in names for w in wnids)
  # Two images of each imagewoof class (value 20 * its position in the list), in
  # reverse list order, interleaved with other ImageNet classes (value 255).
  examples = []
  for repeat in range(2):
    for position in reversed(range(10)):
      examples.append((names.index(wnids[position]), (40 + 10 * repeat, 30), 20 * position))
      examples.append(((names.index(wnids[position]) + 1) % 1000, (30, 30), 255))
  examples = [e for e in examples if names[e[0]] in wnids or e[2] == 255]
  with tfds.testing.mock_data(as_dataset_fn=_fake_imagenet(tfds, examples)):
    dataset = data.load_dataset({"name": "imagewoof", "image_size": 16})
    subset = data.load_dataset({"name": "imagewoof", "image_size": 16, "classes": [7, 2],
                                "max_train_per_class": 1, "max_test": 3})
  assert dataset.class_names == wnids
  assert dataset.train_images.shape == (20, 16, 16, 3)
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), [2] * 10)
  # Label j holds the images of wnids[j]: their value is 20 * j (+1 in the test split).
  for images, labels, offset in ((dataset.train_images, dataset.train_labels, 0),
                                 (dataset.test_images, dataset.test_labels, 1)):
    np.testing.assert_allclose(images.reshape(len(labels), -1).mean(1),
                               20 * labels + offset, atol=2)
  assert subset.class_names == (wnids[7], wnids[2])
  np.testing.assert_array_equal(subset.train_labels, [0, 1])  # stream order: 7 comes first
  np.testing.assert_allclose(subset.train_images.reshape(2, -1).mean(1), [140, 40], atol=2)
  np.testing.assert_array_equal(subset.test_labels, [0, 1, 0])


def test_tfds_missing_dataset_is_instructive(tfds, tmp_path):
  # download=False semantics: fails at once, writes no data.
  with pytest.raises(FileNotFoundError, match=r"cifar10.*download_and_prepare\(\)"):
    data.load_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False})
  with pytest.raises(FileNotFoundError, match="downloads/manual/"):
    data.load_dataset({"name": "imagewoof", "data_dir": str(tmp_path)})
  assert not any(tmp_path.rglob("*.tfrecord*"))


class _StandInBuilder:
  """A tfds builder whose data is missing until `download_and_prepare` runs (or fails
  with `failure`): 20 images 8 x 8 of labels 0..9."""

  def __init__(self, name, data_dir, labels=tuple(str(i) for i in range(10)), failure=None):
    self.name, self.builder_config, self.data_dir_root = name, None, data_dir
    self.info = types.SimpleNamespace(
        supervised_keys=("image", "label"),
        features={"image": types.SimpleNamespace(shape=(8, 8, 3)),
                  "label": types.SimpleNamespace(names=list(labels))})
    self.failure, self.prepared, self.downloads = failure, False, 0

  def is_prepared(self):
    return self.prepared

  def download_and_prepare(self):
    self.downloads += 1
    if self.failure is not None:
      raise self.failure
    self.prepared = True

  def as_dataset(self, split, **kwargs):
    import tensorflow as tf
    del kwargs
    if not self.prepared:
      raise AssertionError(f"Dataset {self.name}: could not find data in {self.data_dir_root}")
    labels = np.arange(20, dtype=np.int64) % 10
    images = np.broadcast_to(labels.astype(np.uint8)[:, None, None, None] * 20 + (split == "test"),
                             (20, 8, 8, 3))
    return tf.data.Dataset.from_tensor_slices((images, labels))


@pytest.fixture
def stand_in(tfds, monkeypatch, tmp_path):
  """`stand_in(name, **kwargs)` makes tfds.builder(name, data_dir=tmp_path) return one
  `_StandInBuilder` (the same on every call, as one data directory would be)."""

  def install(name="cifar10", **kwargs):
    builder = _StandInBuilder(name, str(tmp_path), **kwargs)

    def factory(tfds_name, data_dir=None):
      assert tfds_name == name and data_dir == str(tmp_path)
      return builder
    monkeypatch.setattr(tfds, "builder", factory)
    return builder
  return install


def test_tfds_missing_data_is_downloaded_once(stand_in, tmp_path, capsys):
  builder = stand_in()
  dataset = data.load_dataset({"name": "cifar10", "data_dir": str(tmp_path)})  # default: True
  assert builder.downloads == 1
  assert "'cifar10' is not under" in capsys.readouterr().out
  assert dataset.train_images.shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(dataset.train_labels, np.arange(20) % 10)
  again = data.load_dataset({"name": "cifar10", "data_dir": str(tmp_path)})
  assert builder.downloads == 1  # prepared now: read, not downloaded again
  np.testing.assert_array_equal(again.train_images, dataset.train_images)


def test_tfds_download_false_never_downloads(stand_in, tmp_path):
  builder = stand_in()
  with pytest.raises(DataNotFoundError, match=r"'cifar10' is not prepared.*download_and_prepare\(\)"):
    data.load_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False})
  assert builder.downloads == 0


@pytest.mark.parametrize("failure", [
    ConnectionError("Failed to establish a new connection:\n[Errno -3] name resolution"),
    "download_error"])
def test_tfds_download_failure_is_one_instructive_line(stand_in, tmp_path, tfds, failure):
  if failure == "download_error":
    failure = tfds.download.DownloadError("Failed to get url https://example/cifar.tar.gz")
  builder = stand_in(failure=failure)
  with pytest.raises(DataNotFoundError) as raised:
    data.load_dataset({"name": "cifar10", "data_dir": str(tmp_path)})
  message = str(raised.value)
  assert "\n" not in message
  assert "'cifar10' could not be downloaded" in message
  assert f"tfds.builder('cifar10', data_dir={str(tmp_path)!r}).download_and_prepare()" in message
  assert isinstance(raised.value, ValueError) and isinstance(raised.value, FileNotFoundError)
  assert raised.value.__cause__ is failure and builder.downloads == 1


def test_offline_a_tfds_download_fails_at_once_in_one_line(stand_in, tmp_path, monkeypatch):
  builder = stand_in()  # as tfds' own downloader, behind a network that does not answer
  monkeypatch.setattr(tfds_source, "_fetches_from_the_network", lambda builder: True)
  monkeypatch.setattr(tfds_source, "network_problem",
                      lambda timeout=None: "tfds.example:443 unreachable")
  start = time.perf_counter()
  with pytest.raises(DataNotFoundError) as raised:
    data.load_dataset({"name": "cifar10", "data_dir": str(tmp_path)})
  assert time.perf_counter() - start < 15
  message = str(raised.value)
  assert "\n" not in message and "'cifar10' is not under" in message
  assert "tfds.example:443 unreachable" in message
  assert f"tfds.builder('cifar10', data_dir={str(tmp_path)!r}).download_and_prepare()" in message
  assert builder.downloads == 0  # tfds' own retries never start


def test_the_network_probe_gives_up_within_its_timeout(monkeypatch):
  def unreachable(address, timeout):
    assert timeout <= tfds_source.PROBE_SECONDS
    raise OSError(101, "Network is unreachable")
  monkeypatch.setattr(tfds_source.socket, "create_connection", unreachable)
  monkeypatch.delenv("https_proxy", raising=False)
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
  assert tfds_source.network_problem() == "proxy.internal:3128 unreachable: Network is unreachable"


def test_tfds_imagenet_is_never_downloaded(stand_in, tmp_path):
  builder = stand_in("imagenet2012", labels=data.imagenet_subset_wnids("imagewoof"))
  with pytest.raises(DataNotFoundError, match="downloads/manual/"):
    data.load_dataset({"name": "imagewoof", "data_dir": str(tmp_path), "download": True})
  assert builder.downloads == 0


def test_dataset_table_covers_design():
  for name in ("cifar10", "cifar100", "fashion_mnist", "mnist", "svhn", "tinyimagenet",
               "imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk",
               "imageyellow"):
    spec = data.DATASETS[name]
    assert len(spec.mean) == len(spec.std) == spec.channels
  for subset in ("imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk",
                 "imageyellow"):
    assert len(set(data.imagenet_subset_wnids(subset))) == 10
  assert len(set(data.imagenet_subset_wnids("imagenet100"))) == 100
  with pytest.raises(ValueError, match="no ImageNet subset list"):
    data.imagenet_subset_wnids("imagenope")
