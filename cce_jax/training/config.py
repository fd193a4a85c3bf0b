"""Config checks, exit codes and the workdir's config contract (no data, no compilation).

:func:`validate_config` runs before anything is written to a workdir; the loss and the data
source are checked where they are built (:func:`cce_jax.training.train.train_and_evaluate`).
A workdir belongs to the config stored in its ``config.json``; only :data:`RUN_CONTROL_KEYS`
may change when a run resumes there (:func:`config_diff`).
"""

from __future__ import annotations

import json
import math

import jax

# Keys that may change between a run and its resumption in the same workdir.
RUN_CONTROL_KEYS = frozenset(
    {
        "num_epochs",
        "eval_every",
        "checkpoint_every",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
        "keep_checkpoints",
        "progress",
        "distributed",
        "model.conv_impl",  # changes float rounding only, as a move to another CPU does
        "data.cache_dir",
        "data.data_dir",
        "data.download",
    }
)

SCHEDULES = ("step", "cosine", "constant")


# Exit codes of experiments.train (and experiments.reproduce): one table in docs/reliability.md.
EXIT_CONFIG_ERROR = 2  # bad flags, config, data or workdir; nothing trained
EXIT_DIVERGED = 3  # non-finite loss or gradient; failure.json, the last finite checkpoint kept
EXIT_IO_ERROR = 74  # EX_IOERR: storage failed (disk full, unreadable checkpoint); nothing lost
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM or SIGINT; the exact position saved, rerun resumes


class ConfigError(ValueError):
    """A bad configuration or workdir, reported before any training starts."""


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_to_dict(config) -> dict:
    """The config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def config_diff(stored: dict, requested: dict, ignore=()) -> list[str]:
    """``"key: stored X, now Y"`` for every key that differs, run-control keys and ``ignore``
    excepted."""
    a, b = flatten(stored), flatten(requested)
    skip = RUN_CONTROL_KEYS | set(ignore)
    missing = "<missing>"
    keys = sorted(
        k for k in set(a) | set(b) if k not in skip and a.get(k, missing) != b.get(k, missing)
    )
    return [f"{k}: stored {a.get(k, missing)!r}, now {b.get(k, missing)!r}" for k in keys]


def is_cot(config) -> bool:
    return config.loss.name == "cot" or bool(config.get("cot", False))


def seeds_of(config) -> tuple[int, ...] | None:
    """``config.seeds`` as a tuple of ints, or None for a single run."""
    seeds = config.get("seeds", None)
    if seeds is None or len(tuple(seeds)) == 0:
        return None
    return tuple(int(s) for s in seeds)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def validate_config(
    config, *, num_devices: int | None = None, num_processes: int | None = None
) -> None:
    """Raises :class:`ConfigError` listing every problem of ``config`` (cheap checks only).

    ``num_devices`` and ``num_processes`` (default: JAX's) are what the batch sizes must be
    multiples of.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
    errs = [
        *_model_errors(config),
        *_run_control_errors(config, num_devices, num_processes),
        *_schedule_errors(config.schedule),
        *_optimizer_errors(config.optimizer),
        *_loss_errors(config),
    ]
    if errs:
        raise ConfigError("bad config:\n  " + "\n  ".join(errs))


def _model_errors(config) -> list[str]:
    """``model.*`` (the model's task is checked against the data's once the data is built)."""
    from cce_jax import models

    m = config.model
    try:
        models.check_model_config(
            m.name, dtype=m.dtype, width=m.get("width"), conv_impl=m.get("conv_impl", "xla")
        )
    except (ValueError, TypeError) as e:
        return [f"model: {e}"]
    return []


def _run_control_errors(config, num_devices: int, num_processes: int) -> list[str]:
    """Batch sizes, epochs, eval/checkpoint intervals, steps per call, seeds."""
    errs = []
    for key in ("batch_size", "eval_batch_size"):
        b = int(config[key])
        if b < 1 or b % num_devices or b % num_processes:
            errs.append(
                f"{key}={b} must be a positive multiple of the device count "
                f"({num_devices}) and of the process count ({num_processes})"
            )
    if int(config.num_epochs) < 1:
        errs.append(f"num_epochs={config.num_epochs} must be >= 1")
    for key in ("eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(config[key]) < 1:
            errs.append(f"{key}={config[key]} must be >= 1")
    if int(config.get("checkpoint_every_steps", 0) or 0) < 0:
        errs.append(f"checkpoint_every_steps={config.checkpoint_every_steps} must be >= 0")
    minutes = config.get("checkpoint_every_minutes", 0.0) or 0.0
    if not (_finite(minutes) and float(minutes) >= 0):
        errs.append(f"checkpoint_every_minutes={minutes} must be finite and >= 0 (0 = off)")
    if int(config.get("steps_per_call", 1)) < 1:
        errs.append(f"steps_per_call={config.get('steps_per_call')} must be >= 1")
    seeds = config.get("seeds", None)
    if seeds is not None and len(tuple(seeds)):
        try:
            values = [int(s) for s in seeds]
            if any(int(s) != s for s in seeds) or len(set(values)) != len(values):
                raise ValueError
        except (TypeError, ValueError):
            errs.append(f"seeds={tuple(seeds)!r} must be distinct integers")
    return errs


def _schedule_errors(sch) -> list[str]:
    """``schedule.*``: the name, the step boundaries and factors, the warm-up."""
    errs = []
    if sch.name not in SCHEDULES:
        errs.append(f"schedule.name={sch.name!r} is not one of {list(SCHEDULES)}")
    if len(sch.boundaries) != len(sch.factors):
        errs.append(
            f"schedule.boundaries {tuple(sch.boundaries)} and schedule.factors "
            f"{tuple(sch.factors)} must have the same length"
        )
    if not all(_finite(b) for b in sch.boundaries) or list(sch.boundaries) != sorted(
        sch.boundaries
    ):
        errs.append(f"schedule.boundaries {tuple(sch.boundaries)} must be finite and increasing")
    if not all(_finite(f) and float(f) >= 0 for f in sch.factors):
        errs.append(f"schedule.factors {tuple(sch.factors)} must be finite and >= 0")
    if not (_finite(sch.warmup_epochs) and float(sch.warmup_epochs) >= 0):
        errs.append(f"schedule.warmup_epochs={sch.warmup_epochs} must be finite and >= 0")
    return errs


def _optimizer_errors(opt) -> list[str]:
    """``optimizer.*``: lr, momentum, weight decay."""
    errs = []
    if not (_finite(opt.lr) and float(opt.lr) > 0):
        errs.append(f"optimizer.lr={opt.lr} must be finite and > 0")
    if not (_finite(opt.momentum) and 0 <= float(opt.momentum) < 1):
        errs.append(f"optimizer.momentum={opt.momentum} must be finite and in [0, 1)")
    if not (_finite(opt.weight_decay) and float(opt.weight_decay) >= 0):
        errs.append(f"optimizer.weight_decay={opt.weight_decay} must be finite and >= 0")
    return errs


def _loss_errors(config) -> list[str]:
    """DRW's ``loss.*`` (:func:`cce_jax.losses.get` checks the name and the hyperparameters,
    once, when the trainer builds the loss from the data's class counts)."""
    errs = []
    if not _finite(config.loss.drw_beta) or not 0 <= float(config.loss.drw_beta) < 1:
        errs.append(f"loss.drw_beta={config.loss.drw_beta} must be in [0, 1)")
    if int(config.loss.drw_epoch) >= 0 and is_cot(config):
        errs.append("loss.drw_epoch (deferred re-weighting) cannot be combined with COT")
    return errs
