"""Data-parallel training, evaluation and checkpointing (flax.linen + optax + orbax); start
with :func:`~cce_jax.training.train.train_and_evaluate` (docs/training.md)."""

# ruff: noqa: E402, F401  (the extra is checked first; then the package's names)
from cce_jax._extras import require

# A missing extra is one ImportError that names it (not "No module named 'flax'").
require("train", "cce_jax.training", "flax", "orbax.checkpoint", "ml_collections", "absl")

from cce_jax.training.checkpoints import StorageError
from cce_jax.training.config import (
    EXIT_CONFIG_ERROR,
    EXIT_DIVERGED,
    EXIT_IO_ERROR,
    EXIT_PREEMPTED,
    ConfigError,
    validate_config,
)
from cce_jax.training.train import Preempted, TrainingDiverged, train_and_evaluate
