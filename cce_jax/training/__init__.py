"""Data-parallel training, evaluation and checkpointing (flax.linen + optax + orbax).

One job per module, as in flax's ``examples/imagenet``:

* :mod:`~cce_jax.training.config`: config checks, the run-control keys, config diffs;
* :mod:`~cce_jax.training.optimizer`: the learning-rate schedule and SGD, from optax pieces;
* :mod:`~cce_jax.training.steps`: the train state, the jitted train/eval steps (the mesh and
  shardings live in :mod:`cce_jax.parallel` and are re-exported);
* :mod:`~cce_jax.training.workdir`: lock, atomic strict-JSON files, checkpoints;
* :mod:`~cce_jax.training.report`: summary files, the per-class table and plot;
* :mod:`~cce_jax.training.loop`: :func:`train_and_evaluate`, the whole run.
"""

from cce_jax._extras import require

# A missing extra is one ImportError that names it (not "No module named 'flax'").
require("train", "cce_jax.training", "flax", "orbax.checkpoint", "ml_collections", "absl")

from cce_jax.training.config import (  # noqa: E402
    EXIT_CONFIG_ERROR,
    EXIT_DEADLINE,
    EXIT_DIVERGED,
    EXIT_IO_ERROR,
    PIPELINES,
    RUN_CONTROL_KEYS,
    SCHEDULES,
    ConfigError,
    closest_key,
    config_diff,
    config_to_dict,
    loss_names,
    validate_config,
)
from cce_jax.training.loop import (  # noqa: E402
    DeadlineReached,
    Preempted,
    StopSignals,
    TrainingDiverged,
    build_loss_fns,
    train_and_evaluate,
)
from cce_jax.training.optimizer import decay_mask, make_lr_schedule, make_optimizer  # noqa: E402
from cce_jax.training.report import format_table  # noqa: E402
from cce_jax.training.steps import (  # noqa: E402
    POSTHOC_TAUS,
    TrainState,
    batch_sharding,
    create_train_state,
    evaluate,
    initialize_distributed,
    make_eval_step,
    make_mesh,
    make_train_step,
    shard_batch,
    to_host,
)
from cce_jax.training.workdir import CheckpointUnreadable, StorageError  # noqa: E402

__all__ = [
    "CheckpointUnreadable",
    "ConfigError",
    "DeadlineReached",
    "Preempted",
    "StopSignals",
    "StorageError",
    "EXIT_IO_ERROR",
    "TrainingDiverged",
    "EXIT_CONFIG_ERROR",
    "EXIT_DIVERGED",
    "EXIT_DEADLINE",
    "PIPELINES",
    "POSTHOC_TAUS",
    "RUN_CONTROL_KEYS",
    "SCHEDULES",
    "TrainState",
    "batch_sharding",
    "build_loss_fns",
    "closest_key",
    "config_diff",
    "config_to_dict",
    "create_train_state",
    "decay_mask",
    "evaluate",
    "format_table",
    "initialize_distributed",
    "loss_names",
    "make_eval_step",
    "make_lr_schedule",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "shard_batch",
    "to_host",
    "train_and_evaluate",
    "validate_config",
]
