"""Imbalanced training splits and input pipelines for JAX (see docs/data.md).

Layout (one job per module):

* :mod:`~cce_jax.data.imbalance`: ``class_counts``, ``select_indices``, ``epoch_plan``;
* :mod:`~cce_jax.data.sources`: one loader per source -> :class:`RawDataset`, the
  ``LOADERS`` table, ``load_source`` (cached per process);
* :mod:`~cce_jax.data.split`: the kept train subset, the test split, normalisation;
* :mod:`~cce_jax.data.tf_pipeline`: host numpy batches through tf.data (``pipeline="tf"``);
* :mod:`~cce_jax.data.device_pipeline`: device-resident batches (``pipeline="device"``);
* :mod:`~cce_jax.data.builder`: ``default_config``, ``choose_pipeline``, ``build``.

``import cce_jax.data`` imports neither tensorflow nor tensorflow_datasets: they are imported
only for ``source="tfds"`` / ``pipeline="tf"``.
"""

from cce_jax.data.builder import (
    PIPELINES,
    build,
    choose_pipeline,
    default_config,
    tf_available,
)
from cce_jax.data.device_pipeline import DeviceData, default_mesh, stack_batches
from cce_jax.data.imbalance import (
    PAD,
    EpochPlan,
    class_counts,
    epoch_plan,
    select_indices,
)
from cce_jax.data.sources import (
    LOADERS,
    RawDataset,
    clean_stale_temporaries,
    clear_cache,
    load_cifar10_jpeg,
    load_digits,
    load_npz,
    load_source,
    load_tfds,
    parse_source,
)
from cce_jax.data.split import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DataInfo,
    Split,
    make_split,
)
from cce_jax.data.tf_pipeline import TFData

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "LOADERS",
    "PAD",
    "PIPELINES",
    "DataInfo",
    "DeviceData",
    "EpochPlan",
    "RawDataset",
    "Split",
    "TFData",
    "build",
    "choose_pipeline",
    "class_counts",
    "clean_stale_temporaries",
    "clear_cache",
    "default_config",
    "default_mesh",
    "epoch_plan",
    "load_cifar10_jpeg",
    "load_digits",
    "load_npz",
    "load_source",
    "load_tfds",
    "make_split",
    "parse_source",
    "select_indices",
    "stack_batches",
    "tf_available",
]
