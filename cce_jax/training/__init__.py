"""Data-parallel training, evaluation and checkpointing (flax.linen + optax + orbax); start
with :func:`~cce_jax.training.train.train_and_evaluate` (docs/training.md)."""

from cce_jax._extras import require

# A missing extra is one ImportError that names it (not "No module named 'flax'").
require("train", "cce_jax.training", "flax", "orbax.checkpoint", "ml_collections", "absl")

from cce_jax.parallel import initialize_distributed  # noqa: E402
from cce_jax.training.checkpoints import CheckpointUnreadable, StorageError  # noqa: E402
from cce_jax.training.config import (  # noqa: E402
    EXIT_CONFIG_ERROR,
    EXIT_DIVERGED,
    EXIT_IO_ERROR,
    EXIT_PREEMPTED,
    RUN_CONTROL_KEYS,
    ConfigError,
    config_diff,
    config_to_dict,
    flatten,
    validate_config,
)
from cce_jax.training.report import format_table, mean_sd  # noqa: E402
from cce_jax.training.train import Preempted, TrainingDiverged, train_and_evaluate  # noqa: E402

__all__ = [
    "EXIT_CONFIG_ERROR",
    "EXIT_DIVERGED",
    "EXIT_IO_ERROR",
    "EXIT_PREEMPTED",
    "RUN_CONTROL_KEYS",
    "CheckpointUnreadable",
    "ConfigError",
    "Preempted",
    "StorageError",
    "TrainingDiverged",
    "config_diff",
    "config_to_dict",
    "flatten",
    "format_table",
    "initialize_distributed",
    "mean_sd",
    "train_and_evaluate",
    "validate_config",
]
