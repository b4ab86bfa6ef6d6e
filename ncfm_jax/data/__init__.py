"""Datasets (host numpy arrays) and per-class real-image sampling.

`python -m ncfm_jax.data.tinyimagenet_prepare` (not imported here, so that it runs
as a script cleanly) arranges the official Tiny ImageNet by class.
"""

from ncfm_jax.data.sampling import ClassIndexedData
from ncfm_jax.data.sampling import DEFAULT_DEVICE_LIMIT_BYTES
from ncfm_jax.data.sampling import HostClassSampler
from ncfm_jax.data.sampling import effective_batch_real
from ncfm_jax.data.sampling import fits_on_device
from ncfm_jax.data.sampling import make_class_indexed
from ncfm_jax.data.sampling import sample_class_batches
from ncfm_jax.data.sources import DATASETS
from ncfm_jax.data.sources import Dataset
from ncfm_jax.data.sources import DatasetShape
from ncfm_jax.data.sources import DatasetSpec
from ncfm_jax.data.sources import dataset_shape
from ncfm_jax.data.sources import imagenet_subset_wnids
from ncfm_jax.data.sources import load_dataset

__all__ = [
    "ClassIndexedData",
    "DATASETS",
    "DEFAULT_DEVICE_LIMIT_BYTES",
    "Dataset",
    "DatasetShape",
    "DatasetSpec",
    "HostClassSampler",
    "dataset_shape",
    "effective_batch_real",
    "fits_on_device",
    "imagenet_subset_wnids",
    "load_dataset",
    "make_class_indexed",
    "sample_class_batches",
]
