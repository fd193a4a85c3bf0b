"""Data-parallel training, evaluation and checkpointing (flax.linen + optax + orbax).

The layout follows flax's ``examples/imagenet``: :func:`train_and_evaluate` is the whole
loop; ``experiments/train.py`` only parses flags and calls it.

Data parallelism. The train step is one ``jax.jit`` over a 1-D device :class:`Mesh` with
axis ``"data"`` (``AxisType.Auto``): parameters, BatchNorm statistics and optimizer state
are replicated (``NamedSharding(mesh, P())``), the batch is sharded along its first axis
(``NamedSharding(mesh, P("data"))``). XLA's SPMD partitioner inserts the all-reduces, so
the loss is the mean over the *global* batch, the gradient is the gradient of that mean
(what ``lax.pmean(grads)`` gives in the pmap recipe) and BatchNorm's batch mean and
variance are computed over the global batch (what ``BatchNorm(axis_name="batch")`` gives
in the pmap recipe, where the per-device moments are ``pmean``-ed). With several processes
each one feeds its local shard through :func:`jax.make_array_from_process_local_data`.

Reproducibility. Parameters come from ``jax.random.key(config.seed)``, the data order from
``Data.train_epoch(epoch)``, a pure function of ``(config.seed, epoch)``; the model has no
dropout, so a resumed run replays exactly the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import sys
import time
from typing import Any, Callable, Iterable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from cce_jax import metrics as metrics_lib
from cce_jax import models

__all__ = [
    "TrainState", "make_mesh", "create_train_state", "make_optimizer", "make_lr_schedule",
    "make_train_step", "make_eval_step", "evaluate", "train_and_evaluate", "validate_config",
    "step_throughput", "initialize_distributed", "RUN_CONTROL_KEYS", "ConfigError",
]

# Keys that may change between a run and its resumption in the same workdir.
RUN_CONTROL_KEYS = frozenset({
    "num_epochs", "stop_after_epoch", "eval_every", "checkpoint_every", "keep_checkpoints",
    "progress", "distributed", "data.cache_dir", "data.data_dir",
})

SCHEDULES = ("step", "cosine", "constant")


class ConfigError(ValueError):
    """A bad configuration or workdir, reported before any training starts."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # number of batches trained on
    params: Any
    batch_stats: Any
    opt_state: Any


# --------------------------------------------------------------------------- devices


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (CPU collectives via gloo); call before using JAX."""
    with contextlib.suppress(Exception):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address,
                                    num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all (global) devices, Auto axis type."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def _shardings(mesh):
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def shard_batch(batch: dict, mesh) -> dict:
    """Process-local numpy batch -> global jax arrays sharded on ``data``."""
    _, data_sharding = _shardings(mesh)
    return {k: jax.make_array_from_process_local_data(data_sharding, np.asarray(v))
            for k, v in batch.items()}


def _local(x) -> np.ndarray:
    """Host copy of a replicated (possibly multi-process) array."""
    return np.asarray(x.addressable_shards[0].data)


# --------------------------------------------------------------------------- optimizer


def make_lr_schedule(config, steps_per_epoch: int, updates_per_step: int = 1) -> Callable:
    """lr(count) from ``config.optimizer.lr`` and ``config.schedule``.

    ``count`` counts optimizer updates; with ``updates_per_step`` updates per batch (COT: 2)
    the schedule is indexed by the batch ``count // updates_per_step``.

    * linear warm-up over ``schedule.warmup_epochs`` epochs: ``lr * (step + 1) / warmup``;
    * ``"step"``: from epoch ``boundaries[i]`` on, ``lr * factors[i]`` (factors are
      cumulative, relative to the base lr: LDAM ``(160, 180), (0.01, 0.0001)``; CCE
      ``(100, 150), (0.1, 0.01)``);
    * ``"cosine"``: half-cosine from ``lr`` to 0 over the epochs after warm-up;
    * ``"constant"``.
    """
    base = float(config.optimizer.lr)
    sch = config.schedule
    spe = int(steps_per_epoch)
    warm = int(round(float(sch.warmup_epochs) * spe))
    total = int(config.num_epochs) * spe
    boundaries = [int(round(float(b) * spe)) for b in sch.boundaries]
    factors = [float(f) for f in sch.factors]
    name = sch.name

    def schedule(count):
        step = jnp.asarray(count) // updates_per_step
        stepf = step.astype(jnp.float32)
        if name == "step":
            factor = jnp.float32(1.0)
            for b, f in zip(boundaries, factors):
                factor = jnp.where(step >= b, jnp.float32(f), factor)
            lr = base * factor
        elif name == "cosine":
            span = max(total - warm, 1)
            frac = jnp.clip((stepf - warm) / span, 0.0, 1.0)
            lr = base * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        else:
            lr = jnp.float32(base)
        if warm > 0:
            lr = lr * jnp.minimum(1.0, (stepf + 1.0) / warm)
        return lr

    return schedule


def _decay_mask(params):
    """Weight decay on conv and dense kernels only (not BatchNorm scale/bias, not biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD + momentum with coupled L2 weight decay (PyTorch ``SGD(weight_decay=...)``)."""
    opt = config.optimizer
    updates_per_step = 2 if _is_cot(config) else 1
    schedule = make_lr_schedule(config, steps_per_epoch, updates_per_step)
    mask = None if opt.get("decay_all", False) else _decay_mask
    return optax.chain(
        optax.add_decayed_weights(float(opt.weight_decay), mask=mask),
        optax.sgd(schedule, momentum=float(opt.momentum) or None, nesterov=bool(opt.nesterov)),
    )


# --------------------------------------------------------------------------- state and steps


def create_train_state(model: nn.Module, tx, rng, image_shape, mesh) -> TrainState:
    """Initialises parameters, BatchNorm statistics and optimizer state, replicated."""
    replicated, _ = _shardings(mesh)

    def init():
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params))

    return jax.jit(init, out_shardings=replicated)()


def _is_cot(config) -> bool:
    return config.loss.name == "cot" or bool(config.get("cot", False))


def make_train_step(model: nn.Module, tx, mesh, loss_fns: Iterable[Callable], *,
                    donate: bool = True) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``, jitted over ``mesh``.

    ``loss_fns`` is a sequence of per-example losses ``fn(logits, labels)``; each gets one
    SGD step on the same batch, in order (one for plain training; COT: CE then
    ``-H_c / K``). ``metrics`` (replicated scalars): ``loss`` and ``accuracy`` of the first
    loss's forward pass, and ``loss_{i}`` for the later ones.
    """
    loss_fns = tuple(loss_fns)
    replicated, data_sharding = _shardings(mesh)

    def one_update(state, batch, loss_fn):
        def objective(params):
            logits, new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"],
                train=True, mutable=["batch_stats"])
            return jnp.mean(loss_fn(logits, batch["label"])), (logits, new_vars["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state), \
            loss, logits

    def train_step(state, batch):
        out = {}
        for i, fn in enumerate(loss_fns):
            state, loss, logits = one_update(state, batch, fn)
            if i == 0:
                out["loss"] = loss
                out["accuracy"] = jnp.mean(
                    (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
            else:
                out[f"loss_{i}"] = loss
        return state.replace(step=state.step + 1), out

    return jax.jit(train_step, in_shardings=(replicated, data_sharding),
                   out_shardings=(replicated, replicated),
                   donate_argnums=(0,) if donate else ())


def make_eval_step(model: nn.Module, mesh, num_classes: int) -> Callable:
    """``eval_step(state, batch) -> confusion matrix`` (float32 [K, K], masked), jitted."""
    replicated, data_sharding = _shardings(mesh)
    k = int(num_classes)

    def eval_step(state, batch):
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             batch["image"], train=False)
        pred = jnp.argmax(logits, -1)  # prediction = argmax of the logits, for every loss
        mask = batch["mask"].astype(jnp.float32)
        true_oh = jax.nn.one_hot(batch["label"], k, dtype=jnp.float32) * mask[:, None]
        return true_oh.T @ jax.nn.one_hot(pred, k, dtype=jnp.float32)

    return jax.jit(eval_step, in_shardings=(replicated, data_sharding),
                   out_shardings=replicated)


def evaluate(eval_step, state, batches: Iterable[dict], mesh, num_classes: int,
             class_counts=None) -> dict:
    """Full-split metrics (see :func:`cce_jax.metrics.from_confusion`)."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for batch in batches:
        batch = dict(batch)
        if "mask" not in batch:
            batch["mask"] = np.ones(np.shape(batch["label"]), bool)
        cm += np.rint(_local(eval_step(state, shard_batch(batch, mesh)))).astype(np.int64)
    return metrics_lib.from_confusion(cm, class_counts)


# --------------------------------------------------------------------------- config checks


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(d[k], dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def loss_names() -> tuple[str, ...]:
    return ("ce", "focal", "cb_ce", "cb_focal", "ldam", "la", "bs", "cce", "mse_ol", "cot")


def validate_config(config, *, num_devices: int | None = None,
                    num_processes: int | None = None) -> None:
    """Raises :class:`ConfigError` for a bad config (cheap checks, no data, no compile)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
    errs = []
    m = config.model
    if m.name not in models.MODEL_NAMES:
        errs.append(f"model.name={m.name!r} is not one of {list(models.MODEL_NAMES)}")
    if m.dtype not in ("float32", "bfloat16"):
        errs.append(f"model.dtype={m.dtype!r}: expected 'float32' or 'bfloat16'")
    if m.get("width") is not None and int(m.width) < 1:
        errs.append(f"model.width={m.width!r} must be a positive integer (or None)")
    for key in ("batch_size", "eval_batch_size"):
        b = int(config[key])
        if b < 1 or b % num_devices or b % num_processes:
            errs.append(f"{key}={b} must be a positive multiple of the device count "
                        f"({num_devices}) and of the process count ({num_processes})")
    if int(config.num_epochs) < 1:
        errs.append(f"num_epochs={config.num_epochs} must be >= 1")
    for key in ("eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(config[key]) < 1:
            errs.append(f"{key}={config[key]} must be >= 1")
    sch = config.schedule
    if sch.name not in SCHEDULES:
        errs.append(f"schedule.name={sch.name!r} is not one of {list(SCHEDULES)}")
    if len(sch.boundaries) != len(sch.factors):
        errs.append(f"schedule.boundaries {tuple(sch.boundaries)} and schedule.factors "
                    f"{tuple(sch.factors)} must have the same length")
    if list(sch.boundaries) != sorted(sch.boundaries):
        errs.append(f"schedule.boundaries {tuple(sch.boundaries)} must be increasing")
    if float(sch.warmup_epochs) < 0:
        errs.append("schedule.warmup_epochs must be >= 0")
    if float(config.optimizer.lr) <= 0:
        errs.append(f"optimizer.lr={config.optimizer.lr} must be > 0")
    name = config.loss.name
    if name not in loss_names():
        errs.append(f"loss.name={name!r} is not one of {list(loss_names())}")
    else:
        try:  # let cce_jax.losses check the hyperparameters (with dummy counts)
            from cce_jax import losses
            base = "ce" if name == "cot" else name
            losses.get(base, class_counts=np.array([50, 20, 5]),
                       **dict(config.loss.get("hparams", {}) or {}))
        except (ValueError, TypeError) as e:
            errs.append(f"loss {name!r} with hparams {dict(config.loss.hparams)}: {e}")
    if int(config.loss.drw_epoch) >= 0 and _is_cot(config):
        errs.append("loss.drw_epoch (deferred re-weighting) cannot be combined with COT")
    if errs:
        raise ConfigError("bad config:\n  " + "\n  ".join(errs))


def _check_workdir(config, workdir: str) -> None:
    """On resume, refuses a config that differs from the stored one beyond run control."""
    path = os.path.join(workdir, "config.json")
    new = _config_json(config)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        a, b = _flatten(old), _flatten(new)
        diff = sorted(k for k in set(a) | set(b)
                      if k not in RUN_CONTROL_KEYS and a.get(k, "<missing>") != b.get(k, "<missing>"))
        if diff:
            lines = [f"{k}: stored {a.get(k, '<missing>')!r}, now {b.get(k, '<missing>')!r}"
                     for k in diff]
            raise ConfigError(
                f"workdir {workdir!r} holds a run of another config (only "
                f"{sorted(RUN_CONTROL_KEYS)} may change on resume):\n  " + "\n  ".join(lines))


def _store_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        _atomic_write(os.path.join(workdir, "config.json"),
                      json.dumps(_config_json(config), indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- files


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
    return out


def _write_jsonl(path: str, rows: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _versions() -> dict:
    import orbax.checkpoint as ocp
    return {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None)
            or jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax_checkpoint": getattr(ocp, "__version__", None), "numpy": np.__version__,
            "python": sys.version.split()[0]}


# --------------------------------------------------------------------------- the loop


def build_loss_fns(config, class_counts) -> tuple[tuple, tuple | None]:
    """(loss fns before DRW, loss fns from ``loss.drw_epoch`` on or None)."""
    from cce_jax import losses
    counts = np.asarray(class_counts)
    k = len(counts)
    hparams = dict(config.loss.get("hparams", {}) or {})
    if _is_cot(config):
        base = "ce" if config.loss.name == "cot" else config.loss.name
        primary = losses.get(base, class_counts=counts, **hparams)

        def neg_complement(logits, labels):  # maximise the normalised complement entropy
            return -losses.complement_entropy(logits, labels) / k

        return (_two_arg(primary), neg_complement), None
    plain = (_two_arg(losses.get(config.loss.name, class_counts=counts, **hparams)),)
    drw = None
    if int(config.loss.drw_epoch) >= 0:
        w = np.asarray(losses.class_balanced_weights(counts, beta=float(config.loss.drw_beta)),
                       np.float32)
        hp = dict(hparams, class_weights=w)
        drw = (_two_arg(losses.get(config.loss.name, class_counts=counts, **hp)),)
    return plain, drw


def _resolve_data_paths(data_config):
    """A relative ``cifar10_jpeg:PATH`` is tried from the cwd, then from the repo root."""
    source = str(data_config.source)
    if not source.startswith("cifar10_jpeg:"):
        return data_config
    path = os.path.expanduser(source.split(":", 1)[1])
    if os.path.isabs(path) or os.path.exists(path):
        return data_config
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.join(repo_root, path)
    if not os.path.exists(candidate):
        return data_config
    resolved = data_config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.source = "cifar10_jpeg:" + os.path.normpath(candidate)
    return resolved


def _two_arg(fn):
    return lambda logits, labels: fn(logits, labels)


def _progress(total, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not enabled, file=sys.stdout)


def train_and_evaluate(config, workdir: str, *, data=None) -> dict | None:
    """Trains ``config`` in ``workdir`` (resuming from its last checkpoint) and evaluates.

    Writes ``metrics.jsonl``, ``summary.json``, ``config.json`` and ``checkpoints/``.
    Returns the summary dict, or ``None`` when stopped early by ``stop_after_epoch``.
    ``data`` (a :class:`cce_jax.data.Data`-like object) replaces ``data.build``.
    """
    import orbax.checkpoint as ocp

    t_start = time.time()
    validate_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(config, workdir)
    is_main = jax.process_index() == 0

    if data is None:
        from cce_jax import data as data_lib
        try:
            data = data_lib.build(_resolve_data_paths(config.data), seed=int(config.seed),
                                  global_batch_size=int(config.batch_size),
                                  eval_batch_size=int(config.eval_batch_size))
        except Exception as e:  # missing files, tfds without a local copy, bad data keys
            raise ConfigError(f"could not build the dataset (data.source="
                              f"{config.data.source!r}): {type(e).__name__}: {e}") from e
    info = data.info
    num_classes = int(info.num_classes)
    class_counts = np.asarray(info.class_counts, np.int64)
    spe = int(data.steps_per_epoch)
    if spe < 1:
        raise ConfigError(f"the train split ({info.num_train} images) holds no full batch of "
                          f"{config.batch_size}")

    mesh = make_mesh()
    model = models.get_model(config.model.name, num_classes=num_classes,
                             dtype=config.model.dtype, cosine_head=config.model.cosine_head,
                             width=config.model.get("width"))
    tx = make_optimizer(config, spe)
    lr_fn = make_lr_schedule(config, spe)
    try:
        plain_fns, drw_fns = build_loss_fns(config, class_counts)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build loss {config.loss.name!r} with hparams "
                          f"{dict(config.loss.hparams)} (drw_epoch={config.loss.drw_epoch}): "
                          f"{e}") from e
    state = create_train_state(model, tx, jax.random.key(int(config.seed)),
                               tuple(info.image_shape), mesh)
    train_plain = make_train_step(model, tx, mesh, plain_fns)
    train_drw = make_train_step(model, tx, mesh, drw_fns) if drw_fns else None
    eval_step = make_eval_step(model, mesh, num_classes)

    _store_config(config, workdir)  # everything checked: the workdir now belongs to config
    ckpt_dir = os.path.join(workdir, "checkpoints")
    mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=int(config.keep_checkpoints), create=True,
        enable_async_checkpointing=False))
    start_epoch = 0
    latest = mngr.latest_step()
    if latest is not None and int(latest) > int(config.num_epochs):
        raise ConfigError(f"workdir {workdir!r} holds a checkpoint at epoch {latest}, beyond "
                          f"num_epochs={config.num_epochs}")
    if latest is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = mngr.restore(latest, args=ocp.args.StandardRestore(abstract))
        start_epoch = int(latest)
        print(f"resumed from {ckpt_dir} at epoch {start_epoch}", flush=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    rows = [r for r in _read_jsonl(metrics_path) if int(r.get("epoch", 0)) <= start_epoch]
    if is_main:
        _write_jsonl(metrics_path, rows)
        if os.path.exists(os.path.join(workdir, "summary.json")) and start_epoch < config.num_epochs:
            os.remove(os.path.join(workdir, "summary.json"))

    num_epochs = int(config.num_epochs)
    stop_after = int(config.get("stop_after_epoch", -1))
    show = bool(config.get("progress", True)) and is_main and sys.stdout.isatty()
    last_eval = rows[-1].get("test") if rows and start_epoch == num_epochs else None
    batch_images = int(config.batch_size)
    stopped = False
    for epoch in range(start_epoch, num_epochs):
        use_drw = train_drw is not None and epoch >= int(config.loss.drw_epoch)
        step_fn = train_drw if use_drw else train_plain
        lr_now = float(lr_fn(epoch * spe))
        t0 = time.time()
        pending, history = None, []
        bar = _progress(spe, f"epoch {epoch + 1}/{num_epochs}", show)
        for i, batch in enumerate(itertools.islice(data.train_epoch(epoch), spe)):
            state, m = step_fn(state, shard_batch(batch, mesh))
            history.append(m)
            if pending is not None:  # keep one step in flight, never an unbounded queue
                jax.block_until_ready(pending)
            pending = m
            if show and (i % 5 == 4 or i == spe - 1):
                bar.set_postfix(loss=f"{float(_local(m['loss'])):.4f}",
                                acc=f"{float(_local(m['accuracy'])):.3f}",
                                img_s=f"{(i + 1) * batch_images / (time.time() - t0):.0f}")
            bar.update(1)
        bar.close()
        if len(history) != spe:
            raise RuntimeError(f"train_epoch({epoch}) yielded {len(history)} batches, "
                               f"expected steps_per_epoch={spe}")
        host = jax.tree.map(_local, history)
        dt = time.time() - t0
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean([h["loss"] for h in host])),
            "train_accuracy": float(np.mean([h["accuracy"] for h in host])),
            "lr": lr_now,
            "drw": bool(use_drw),
            "images_per_s": spe * batch_images / dt,
            "epoch_time_s": dt,
        }
        if "loss_1" in host[0]:
            row["train_complement_loss"] = float(np.mean([h["loss_1"] for h in host]))
        done = epoch + 1 == num_epochs
        stop = stop_after >= 0 and epoch + 1 >= stop_after and not done
        if done or (epoch + 1) % int(config.eval_every) == 0:
            last_eval = evaluate(eval_step, state, data.eval_batches(), mesh, num_classes,
                                 class_counts)
            row["test"] = {k: v for k, v in last_eval.items() if k != "confusion_matrix"}
        rows.append(row)
        msg = (f"epoch {epoch + 1}/{num_epochs}: loss {row['train_loss']:.4f} "
               f"acc {row['train_accuracy']:.4f} lr {lr_now:.4g} "
               f"{row['images_per_s']:.0f} img/s")
        if "test" in row:
            msg += (f" | test top1 {row['test']['top1']:.4f} "
                    f"bal {row['test']['balanced_accuracy']:.4f}")
        if is_main:
            print(msg, flush=True)
            _write_jsonl(metrics_path, rows)
        if done or stop or (epoch + 1) % int(config.checkpoint_every) == 0:
            mngr.save(epoch + 1, args=ocp.args.StandardSave(state))
            mngr.wait_until_finished()
        if stop:
            stopped = True
            break
    mngr.wait_until_finished()
    mngr.close()
    if stopped:
        print(f"stopped after epoch {stop_after} (stop_after_epoch); rerun to resume",
              flush=True)
        return None
    if last_eval is None or "confusion_matrix" not in last_eval:
        last_eval = evaluate(eval_step, state, data.eval_batches(), mesh, num_classes,
                             class_counts)
    summary = {
        "test_top1": last_eval["top1"],
        "test_balanced_accuracy": last_eval["balanced_accuracy"],
        "test_many": last_eval.get("many"),
        "test_medium": last_eval.get("medium"),
        "test_few": last_eval.get("few"),
        "test_macro_f1": last_eval["macro_f1"],
        "per_class_accuracy": last_eval["per_class_accuracy"],
        "class_counts": class_counts.tolist(),
        "test_class_counts": last_eval["test_class_counts"],
        "class_names": list(getattr(info, "class_names", []) or []),
        "confusion_matrix": last_eval["confusion_matrix"],
        "num_train": int(info.num_train),
        "num_test": int(last_eval["num_examples"]),
        "epochs": num_epochs,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "final_train_accuracy": rows[-1]["train_accuracy"] if rows else None,
        "train_time_s_total": float(sum(r.get("epoch_time_s", 0.0) for r in rows)),
        "wall_time_s": time.time() - t_start,
        "resumed_from_epoch": start_epoch,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "versions": _versions(),
        "config": _config_json(config),
    }
    if is_main:
        _atomic_write(os.path.join(workdir, "summary.json"),
                      json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


# --------------------------------------------------------------------------- throughput


def step_throughput(model_name: str = "resnet32", batch_size: int = 128, num_steps: int = 20,
                    dtype: str = "float32", *, image_shape=(32, 32, 3), num_classes: int = 10,
                    warmup_steps: int = 3) -> float:
    """Images/s of the jitted SGD train step on random data, after warm-up, on all devices."""
    mesh = make_mesh()
    model = models.get_model(model_name, num_classes=num_classes, dtype=dtype)
    tx = optax.chain(optax.add_decayed_weights(2e-4, mask=_decay_mask),
                     optax.sgd(0.1, momentum=0.9))

    def ce(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    state = create_train_state(model, tx, jax.random.key(0), tuple(image_shape), mesh)
    step = make_train_step(model, tx, mesh, (ce,))
    rng = np.random.default_rng(0)
    local_b = batch_size // jax.process_count()
    batch = shard_batch({"image": rng.standard_normal((local_b, *image_shape), np.float32),
                         "label": rng.integers(0, num_classes, local_b).astype(np.int32)}, mesh)
    for _ in range(warmup_steps):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
    t0 = time.perf_counter()
    for _ in range(num_steps):
        state, m = step(state, batch)
        jax.block_until_ready(m)
    jax.block_until_ready(state)
    return num_steps * batch_size / (time.perf_counter() - t0)
