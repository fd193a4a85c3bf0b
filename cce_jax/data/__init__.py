"""Imbalanced training splits and input pipelines for JAX (see docs/data.md).

* :mod:`~cce_jax.data.sources`: the registry ``SOURCES`` (name -> loader), each loader
  returning one :class:`Dataset` (labels ``[N]`` or label maps ``[N, H, W]``); ``load_source``;
* :mod:`~cce_jax.data.imbalance`: ``class_counts``, ``select_indices``, ``epoch_plan``;
* :mod:`~cce_jax.data.builder`: ``default_config``, ``make_split``, ``build``;
* :mod:`~cce_jax.data.device_pipeline` (``pipeline="device"``) and
  :mod:`~cce_jax.data.tf_pipeline` (``pipeline="tf"``): the batches.

``import cce_jax.data`` imports neither tensorflow nor tensorflow_datasets.
"""

from cce_jax.data.builder import (
    PIPELINES,
    DataInfo,
    Split,
    build,
    choose_pipeline,
    default_config,
    make_split,
    tf_available,
)
from cce_jax.data.device_pipeline import DeviceData, default_mesh, stack_batches
from cce_jax.data.imbalance import PAD, EpochPlan, class_counts, epoch_plan, select_indices
from cce_jax.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IGNORE_INDEX,
    SOURCES,
    Dataset,
    clear_cache,
    load_cifar10_jpeg,
    load_digits,
    load_npz,
    load_seg_folder,
    load_source,
    load_tfds,
    parse_source,
)
from cce_jax.data.tf_pipeline import TFData

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IGNORE_INDEX",
    "PAD",
    "PIPELINES",
    "SOURCES",
    "DataInfo",
    "Dataset",
    "DeviceData",
    "EpochPlan",
    "Split",
    "TFData",
    "build",
    "choose_pipeline",
    "class_counts",
    "clear_cache",
    "default_config",
    "default_mesh",
    "epoch_plan",
    "load_cifar10_jpeg",
    "load_digits",
    "load_npz",
    "load_seg_folder",
    "load_source",
    "load_tfds",
    "make_split",
    "parse_source",
    "select_indices",
    "stack_batches",
    "tf_available",
]
