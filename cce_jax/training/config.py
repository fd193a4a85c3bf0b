"""Config checks, exit codes and the workdir's config contract (no data, no compilation)."""

import functools
import json
import math

import jax

# Keys that may change between a run and its resumption in the same workdir (model.conv_impl
# changes float rounding only, as a move to another CPU does).
RUN_CONTROL_KEYS = frozenset(
    "num_epochs eval_every checkpoint_every checkpoint_every_steps checkpoint_every_minutes "
    "keep_checkpoints progress distributed model.conv_impl data.cache_dir data.data_dir "
    "data.download".split()
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
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
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
    return tuple(int(s) for s in config.get("seeds", None) or ()) or None


_finite = lambda x: math.isfinite(float(x))
_increasing = lambda v: all(map(_finite, v)) and list(v) == sorted(v)
_COUNTS = "num_epochs eval_every checkpoint_every keep_checkpoints steps_per_call"
_FINITE_NON_NEGATIVE = "optimizer.weight_decay schedule.warmup_epochs checkpoint_every_minutes"

# (keys, check of each one's value, what it must be): the cheap checks of validate_config; a
# check that raises TypeError or ValueError fails.
_CHECKS = (
    (_COUNTS, lambda v: int(v) >= 1, ">= 1"),
    ("checkpoint_every_steps", lambda v: int(v) >= 0, ">= 0 (0 = off)"),
    (_FINITE_NON_NEGATIVE, lambda v: _finite(v) and v >= 0, "finite and >= 0"),
    ("optimizer.lr", lambda v: _finite(v) and v > 0, "finite and > 0"),
    ("optimizer.momentum loss.drw_beta", lambda v: _finite(v) and 0 <= v < 1, "finite, in [0, 1)"),
    ("schedule.name", lambda v: v in SCHEDULES, f"one of {list(SCHEDULES)}"),
    ("schedule.factors", lambda v: all(_finite(f) and f >= 0 for f in v), "finite and >= 0"),
    ("schedule.boundaries", _increasing, "finite, increasing"),
    ("seeds", lambda v: sorted(set(map(int, v))) == sorted(v), "distinct integers"),
)


def _check(ok, value) -> bool:
    try:
        return bool(ok(value))
    except (TypeError, ValueError):
        return False


def validate_config(config, *, num_devices=None, num_processes=None) -> None:
    """Raises :class:`ConfigError` listing every problem of ``config`` (cheap checks only;
    the loss and the data are checked where they are built). The batch sizes must be
    multiples of ``num_devices`` and ``num_processes`` (default: JAX's)."""
    from cce_jax import models

    errs = []
    for keys, ok, what in _CHECKS:
        for key in keys.split():
            value = functools.reduce(
                lambda c, k: None if c is None else c.get(k), key.split("."), config
            )
            if value is not None and not _check(ok, value):
                errs.append(f"{key}={value!r} must be {what}")
    devices = jax.device_count() if num_devices is None else num_devices
    processes = jax.process_count() if num_processes is None else num_processes
    for key in ("batch_size", "eval_batch_size"):
        if int(config[key]) < 1 or int(config[key]) % devices or int(config[key]) % processes:
            errs.append(
                f"{key}={config[key]} must be a positive multiple of the device count "
                f"({devices}) and of the process count ({processes})"
            )
    if len(config.schedule.boundaries) != len(config.schedule.factors):
        errs.append("schedule.boundaries and schedule.factors must have the same length")
    if int(config.loss.drw_epoch) >= 0 and is_cot(config):
        errs.append("loss.drw_epoch (deferred re-weighting) cannot be combined with COT")
    m = config.model
    try:
        models.check_model_config(
            m.name, dtype=m.dtype, width=m.get("width"), conv_impl=m.get("conv_impl", "xla")
        )
    except (ValueError, TypeError) as e:
        errs.append(f"model: {e}")
    if errs:
        raise ConfigError("bad config:\n  " + "\n  ".join(errs))
