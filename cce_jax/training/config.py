"""Config checks and the workdir's config contract (no data, no compilation).

:func:`validate_config` runs before anything is written to a workdir. A workdir belongs to
the config stored in its ``config.json``; only :data:`RUN_CONTROL_KEYS` may change when a run
resumes there (:func:`config_diff`).
"""

from __future__ import annotations

import difflib
import json
import math

import jax

from cce_jax.data.builder import PIPELINES

__all__ = [
    "ConfigError",
    "RUN_CONTROL_KEYS",
    "PIPELINES",
    "SCHEDULES",
    "config_to_dict",
    "config_diff",
    "flatten",
    "closest_key",
    "is_cot",
    "loss_names",
    "seeds_of",
    "validate_config",
]

# Keys that may change between a run and its resumption in the same workdir.
RUN_CONTROL_KEYS = frozenset(
    {
        "num_epochs",
        "stop_after_epoch",
        "eval_every",
        "checkpoint_every",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
        "keep_checkpoints",
        "progress",
        "distributed",
        "deadline",
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
EXIT_DEADLINE = 75  # EX_TEMPFAIL: deadline, SIGTERM or SIGINT; checkpointed, rerun to resume


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


def closest_key(key: str, config) -> str | None:
    """The valid dotted config key closest to ``key`` (for "did you mean" messages)."""
    keys = list(flatten(config_to_dict(config)))
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not match:  # e.g. "lr" -> "optimizer.lr"
        match = [k for k in keys if k.split(".")[-1] == key.split(".")[-1]][:1]
    return match[0] if match else None


def loss_names() -> tuple[str, ...]:
    """The trainer's loss names: the registry of :mod:`cce_jax.losses` plus ``"cot"``."""
    from cce_jax import losses

    return tuple(losses.NAMES) + ("cot",)


def is_cot(config) -> bool:
    return config.loss.name == "cot" or bool(config.get("cot", False))


def seeds_of(config) -> tuple[int, ...] | None:
    """``config.seeds`` as a tuple of ints, or None for a single run."""
    seeds = config.get("seeds", None)
    if seeds is None or len(tuple(seeds)) == 0:
        return None
    return tuple(int(s) for s in seeds)


def data_task(data_config) -> str:
    """``"segmentation"`` for the segmentation sources (``seg_folder:``, ``seg_npz:``), else
    ``"classification"``."""
    from cce_jax.data.segmentation import SEG_SOURCES

    kind = str(data_config.get("source", "")).partition(":")[0]
    return "segmentation" if kind in SEG_SOURCES else "classification"


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
        *_data_errors(config),
        *_schedule_errors(config.schedule),
        *_optimizer_errors(config.optimizer),
        *_loss_errors(config),
    ]
    if errs:
        raise ConfigError("bad config:\n  " + "\n  ".join(errs))


def _model_errors(config) -> list[str]:
    """``model.*``, and whether the model's task (classification, segmentation) is the
    data's."""
    from cce_jax import models

    errs = []
    m = config.model
    for key, kwargs in (
        ("name", dict(name=m.name)),
        ("dtype", dict(name=models.MODEL_NAMES[0], dtype=m.dtype)),
        ("width", dict(name=models.MODEL_NAMES[0], width=m.get("width"))),
        ("conv_impl", dict(name=models.MODEL_NAMES[0], conv_impl=m.get("conv_impl", "auto"))),
    ):
        try:
            models.check_model_config(**kwargs)
        except (ValueError, TypeError) as e:
            errs.append(f"model.{key}={m.get(key)!r}: {e}")
    if m.name in models.MODEL_NAMES:
        task = data_task(config.data)
        if models.model_task(m.name) != task:
            fits = (
                models.CLASSIFIER_NAMES
                if task == "classification"
                else models.SEGMENTATION_MODEL_NAMES
            )
            errs.append(
                f"model.name={m.name!r} is a {models.model_task(m.name)} model but "
                f"data.source={config.data.source!r} is a {task} set: use one of {list(fits)}"
            )
    return errs


def _run_control_errors(config, num_devices: int, num_processes: int) -> list[str]:
    """Batch sizes, epochs, eval/checkpoint intervals, steps per call, seeds, deadline."""
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
    if not _finite(config.get("deadline", 0.0) or 0.0):
        errs.append(f"deadline={config.get('deadline')} must be a finite unix time (0 = none)")
    return errs


def _data_errors(config) -> list[str]:
    """``data.pipeline`` (the data source itself is checked when it is loaded)."""
    pipeline = config.data.get("pipeline", "auto")
    if pipeline not in PIPELINES:
        return [f"data.pipeline={pipeline!r} is not one of {list(PIPELINES)}"]
    return []


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
    """``loss.*``: the name, its hyperparameters (via :func:`cce_jax.losses.get`), DRW."""
    from cce_jax import losses

    errs = []
    name = config.loss.name
    if name not in loss_names():
        close = difflib.get_close_matches(str(name), loss_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errs.append(f"loss.name={name!r} is not one of {list(loss_names())}{hint}")
    else:
        # cce_jax.losses checks the hyperparameters, with placeholder counts; per-class
        # vectors (class_weights) need the real K and are checked when the data is loaded.
        hparams = dict(config.loss.get("hparams", {}) or {})
        hparams.pop("class_weights", None)
        try:
            losses.get("ce" if name == "cot" else name, class_counts=[50, 20, 5], **hparams)
        except (ValueError, TypeError) as e:
            errs.append(str(e))
    if not _finite(config.loss.drw_beta) or not 0 <= float(config.loss.drw_beta) < 1:
        errs.append(f"loss.drw_beta={config.loss.drw_beta} must be in [0, 1)")
    if int(config.loss.drw_epoch) >= 0 and is_cot(config):
        errs.append("loss.drw_epoch (deferred re-weighting) cannot be combined with COT")
    return errs
