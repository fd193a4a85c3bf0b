"""Imbalanced training splits and input pipelines for JAX (docs/data.md). ``default_mesh`` and
``stack_batches`` are :func:`cce_jax.parallel.make_mesh` and ``stack_batches``;
``import cce_jax.data`` imports neither tensorflow nor tensorflow_datasets."""

# ruff: noqa: F401  (the package re-exports these names)
from cce_jax.data.builder import (
    PIPELINES,
    DataInfo,
    build,
    default_config,
    make_split,
)
from cce_jax.data.imbalance import PAD, class_counts, epoch_plan, select_indices
from cce_jax.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IGNORE_INDEX,
    SOURCES,
    Dataset,
    load_cifar10_jpeg,
    load_digits,
    load_npz,
    load_seg_folder,
    load_source,
    load_tfds,
    parse_source,
)
from cce_jax.parallel import make_mesh as default_mesh
from cce_jax.parallel import stack_batches
