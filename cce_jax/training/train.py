"""One run, in the shape of flax's ``examples/imagenet``: build (:class:`Job`; the data in
:func:`build_data`, the loss in :func:`make_losses`), restore, train epoch by epoch, summarize
(docs/training.md). Resume, seeds, divergence and preemption: docs/reliability.md."""

import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from cce_jax import models, parallel
from cce_jax.training import checkpoints as ckpt
from cce_jax.training import config as config_lib
from cce_jax.training import optimizer as opt_lib
from cce_jax.training import report
from cce_jax.training import steps as steps_lib
from cce_jax.training.config import ConfigError


class TrainingDiverged(RuntimeError):
    """The train loss, gradient or parameters became non-finite; no summary was written."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT: the run finished its step, saved its exact position and stopped."""


class StopSignals:
    """SIGTERM/SIGINT ask the loop to save and stop after the step in flight; a second one
    exits at once (``128 + signal``). With several processes SIGTERM is JAX's preemption
    notice (its own handler) and SIGINT is passed on as one."""

    def __enter__(self):
        self.by, self._old, self._got = None, {}, False
        sigs = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGTERM, signal.SIGINT)
        for sig in sigs if threading.current_thread() is threading.main_thread() else ():
            if signal.getsignal(sig) != signal.SIG_IGN:  # as SIGINT in a background job
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self._got:
            print(f"second {signal.Signals(signum).name}: exiting", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self._got = True
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier
        else:
            self.by = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        """Whether to stop before training from global step ``step`` on."""
        if self.by is None and jax.process_count() > 1:
            with contextlib.suppress(RuntimeError):  # no preemption service: no notice
                if multihost_utils.reached_preemption_sync_point(step):
                    self.by = "a preemption notice (SIGTERM or SIGINT to a process)"
        return self.by is not None

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Job:
    """A run's config, data, model, jitted steps and checkpoints, built and checked (the
    model's task is the data's, the stored config, the checkpoints) by the constructor."""

    def __init__(self, config, workdir: epath.Path, ckpts: ckpt.Checkpoints, data=None):
        self.config, self.workdir, self.ckpts = config, workdir, ckpts
        self.restored = 0  # the step restored from a checkpoint (0: none)
        self.datasets = build_data(config, data)
        self.info, self.mesh, name = self.datasets[0].info, parallel.make_mesh(), config.model.name
        self.task = getattr(self.info, "task", "classification")
        if models.model_task(name) != self.task:
            fits = [n for n in models.MODEL_NAMES if models.model_task(n) == self.task]
            raise ConfigError(
                f"model.name={name!r} is a {models.model_task(name)} model but "
                f"data.source={config.data.source!r} is a {self.task} set: use one of {fits}"
            )
        self.spe = int(self.datasets[0].steps_per_epoch)
        if self.spe < 1:
            raise ConfigError(
                f"the train split ({self.info.num_train}) holds no batch of {config.batch_size}"
            )
        self.total = int(config.num_epochs) * self.spe
        self.seeds = config_lib.seeds_of(config)
        self.num_models = len(self.seeds) if self.seeds else None
        self.is_main = jax.process_index() == 0
        self.dirs = [workdir / f"seed_{s}" for s in self.seeds or ()] or [workdir]
        # Where summary.json/failure.json go: each model's folder, with seeds the workdir.
        self.result_dirs = self.dirs + ([workdir] if self.seeds else [])
        m, counts = config.model, np.asarray(self.info.class_counts, np.int64)
        self.model = models.get_model(
            name, num_classes=int(self.info.num_classes), dtype=m.dtype, cosine_head=m.cosine_head,
            width=m.get("width"), conv_impl=m.get("conv_impl", "xla"),
        )  # fmt: skip
        self.tx = opt_lib.make_optimizer(config, self.spe)
        make = functools.partial(
            steps_lib.make_train_step, self.model, self.tx, self.mesh, num_models=self.num_models
        )
        n = int(config.get("steps_per_call", 1))
        self.train_steps = {  # uses DRW -> (one-batch step, n-batch step or None)
            drw: (make(fns), make(fns, steps_per_call=n) if n > 1 else None) if fns else None
            for drw, fns in zip((False, True), make_losses(config, counts))
        }
        self.eval_step = steps_lib.make_eval_step(
            self.model, self.mesh, counts, num_models=self.num_models
        )
        _check_workdir(self)

    def config_dict(self, seed=None) -> dict:
        """The stored config; with ``seed``, that of the single run the seed's model equals."""
        d = config_lib.config_to_dict(self.config)
        if seed is not None:
            d = dict(d, seed=int(seed), seeds=[], data=dict(d["data"], subset_seed=int(seed)))
        return d

    def describe(self, step: int) -> str:
        """``"epoch 2"`` (its end) or ``"epoch 3, step 5/12"``."""
        e, o = divmod(int(step), self.spe)
        return f"epoch {e}" if o == 0 else f"epoch {e + 1}, step {o}/{self.spe}"

    def uses_drw(self, epoch: int) -> bool:
        return self.train_steps[True] is not None and epoch >= int(self.config.loss.drw_epoch)


def train_and_evaluate(config, workdir, *, data=None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its last checkpoint), evaluates and
    returns the summary (with seeds: the aggregate); ``data`` (a pipeline, or one per seed)
    replaces ``data.build``. Raises ConfigError (before anything is written),
    TrainingDiverged, Preempted (rerun to resume) or StorageError (one line)."""
    t_start = time.time()
    config_lib.validate_config(config)
    workdir = epath.Path(os.path.abspath(workdir) if ckpt.is_local(workdir) else workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the workdir {str(workdir)!r} ({ckpt.first_line(e)}); "
            "use a writable --workdir"
        ) from None
    ckpts = ckpt.Checkpoints(workdir, config)
    with ckpt.WorkdirLock(workdir), StopSignals() as stop, contextlib.closing(ckpts):
        job = Job(config, workdir, ckpts, data)
        state, pos, partial, rows = restore(job)
        start_epoch, num_epochs = pos // job.spe, int(config.num_epochs)
        evals = evaluate(job, state) if pos == job.total else None
        for epoch in range(start_epoch, num_epochs):
            t0 = time.time()
            state, host = train_epoch(job, state, epoch, pos, partial, rows, stop)
            pos, partial, done = (epoch + 1) * job.spe, {}, epoch + 1 == num_epochs
            due = done or (epoch + 1) % int(config.eval_every) == 0
            evals = evaluate(job, state) if due else None
            log_epoch(job, rows, epoch, host, evals, time.time() - t0)
            if done or (epoch + 1) % int(config.checkpoint_every) == 0:
                save(job, pos, state, host, epoch, rows)
        return write_summary(job, rows, evals, state, start_epoch, t_start)


def build_data(config, data=None) -> list:
    """One data pipeline per model (seed s: ``seed=s``, ``subset_seed=s``)."""
    seeds = config_lib.seeds_of(config)
    if data is None:
        from cce_jax import data as data_lib

        kw = dict(
            global_batch_size=int(config.batch_size),
            eval_batch_size=int(config.eval_batch_size),
            mesh=parallel.make_mesh(),
        )
        try:
            kw["raw"] = data_lib.load_source(config.data)  # one load, shared by the seeds
            sub = lambda s: ConfigDict(dict(config.data, subset_seed=s)) if seeds else config.data
            data = [data_lib.build(sub(s), seed=int(s), **kw) for s in seeds or [config.seed]]
        except Exception as e:  # missing files, tfds without a local copy, bad data keys
            raise ConfigError(
                f"could not build the dataset (data.source={config.data.source!r}): "
                f"{type(e).__name__}: {e}"
            ) from e
    datasets = list(data) if isinstance(data, (list, tuple)) else [data]
    if len(datasets) != len(seeds or (0,)):
        raise ConfigError(f"{len(datasets)} data pipelines for {len(seeds or (0,))} models")
    first = datasets[0].info.class_counts
    if any(not np.array_equal(d.info.class_counts, first) for d in datasets):
        raise ConfigError("the seeds' training splits have different class counts")
    return datasets


def make_losses(config, class_counts) -> tuple[tuple, tuple | None]:
    """(per-example loss fns before DRW, those from ``loss.drw_epoch`` on or None), each a
    tuple for :func:`~cce_jax.training.steps.make_train_step` (COT: the base loss, then the
    negative normalised complement entropy). The one place a loss is chosen and checked."""
    from cce_jax import losses

    counts = np.asarray(class_counts)
    hparams = dict(config.loss.get("hparams", {}) or {})
    name = config.loss.name
    try:
        if config_lib.is_cot(config):
            primary = losses.get("ce" if name == "cot" else name, class_counts=counts, **hparams)
            k = len(counts)
            return (primary, lambda logits, y: -losses.complement_entropy(logits, y) / k), None
        plain = (losses.get(name, class_counts=counts, **hparams),)
        if int(config.loss.drw_epoch) < 0:
            return plain, None
        beta = float(config.loss.drw_beta)
        w = np.asarray(losses.class_balanced_weights(counts, beta=beta), np.float32)
        return plain, (losses.get(name, class_counts=counts, **dict(hparams, class_weights=w)),)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"loss {name!r}: {e}") from e


def _check_workdir(job: Job) -> None:
    """The workdir's ``config.json`` is this config's and its checkpoints fit the run; then
    ``config.json`` is written (before the first checkpoint), and each seed's in ``seed_<s>/``."""
    steps, path, where = job.ckpts.steps(), job.workdir / "config.json", str(job.workdir)
    with ckpt.storage_errors("cannot read", path):
        text = path.read_text() if path.exists() else None
    if text is None and steps:
        raise ConfigError(
            f"workdir {where!r} holds checkpoints but no config.json, so the config they were "
            "trained with cannot be checked; use another --workdir"
        )
    try:
        diff = [] if text is None else config_lib.config_diff(json.loads(text), job.config_dict())
    except json.JSONDecodeError as e:
        raise ConfigError(f"workdir {where!r}: config.json is unreadable") from e
    if diff:
        raise ConfigError(
            f"workdir {where!r} holds a run of another config (only run-control keys may "
            "change on resume):\n  " + "\n  ".join(diff)
        )
    if steps and steps[-1] > job.total:
        raise ConfigError(
            f"workdir {where!r} holds a checkpoint at {job.describe(steps[-1])}, "
            f"beyond num_epochs={job.config.num_epochs}"
        )
    if job.is_main:
        if text is None:
            ckpt.write(path, ckpt.dumps(job.config_dict()))
        for s, sub in zip(job.seeds or (), job.dirs):
            sub.mkdir(exist_ok=True)
            ckpt.write(sub / "config.json", ckpt.dumps(job.config_dict(s)))


def restore(job: Job):
    """(state, position in steps, host metrics of the partly trained epoch, each model's
    metrics rows of the finished epochs): ``metrics.jsonl`` is rewritten from the
    checkpoint's rows and, unless the run is finished, a stale ``summary.json``/
    ``failure.json`` removed."""
    keys = [jax.random.key(s) for s in job.seeds or (int(job.config.seed),)]
    rng = jnp.stack(keys) if job.seeds else keys[0]
    state = steps_lib.create_train_state(job.model, job.tx, rng, job.info.image_shape, job.mesh)
    state, progress, pos = job.ckpts.restore(state, job.describe)
    job.restored = pos
    if pos:
        print(f"resumed from {job.ckpts.directory} at {job.describe(pos)}", flush=True)
    partial = {k: np.asarray(v, np.float32) for k, v in (progress.get("metrics") or {}).items()}
    rows = progress.get("rows", [[] for _ in job.dirs] if pos == 0 else None)
    if rows is None or pos % job.spe and not partial:
        raise ConfigError(f"the checkpoint at {job.describe(pos)} lacks the metrics of its run")
    for d, model_rows in zip(job.dirs, rows) if job.is_main else ():
        ckpt.write_jsonl(d / "metrics.jsonl", model_rows)
    for d in job.result_dirs if job.is_main and pos < job.total else ():
        for name in ("summary.json", "failure.json"):
            with ckpt.storage_errors("cannot remove", d / name):
                (d / name).unlink(missing_ok=True)
    return state, pos, partial, rows


def train_epoch(job: Job, state, epoch: int, pos: int, partial, rows, stop: StopSignals):
    """Trains epoch ``epoch`` from step ``pos`` on, checkpointing as the save policies ask,
    and at a stop signal (then raises :class:`Preempted`). Returns (state, the epoch's host
    metrics)."""
    single, multi = job.train_steps[job.uses_drw(epoch)]
    n, start = int(job.config.get("steps_per_call", 1)), pos - epoch * job.spe
    history, pending, batches = [], None, _model_batches(job, epoch, start=start)
    show = bool(job.config.get("progress", True)) and job.is_main and sys.stdout.isatty()
    look = dict(desc=f"epoch {epoch + 1}/{job.config.num_epochs}", leave=False, file=sys.stdout)
    with tqdm(total=job.spe, initial=start, disable=not show, **look) as bar:
        while chunk := list(itertools.islice(batches, n)):
            if stop.requested(pos):
                save(job, pos, state, _host_metrics(job, epoch, partial, history), epoch, rows)
                raise Preempted(
                    f"stopped by {stop.by} at {job.describe(pos)}; checkpointed in "
                    f"{job.ckpts.directory}; rerun to resume"
                )
            if len(chunk) == n and multi is not None:
                batch = parallel.stack_batches(chunk, job.mesh, 1 + bool(job.seeds))
                state, m = multi(state, batch)
                history.extend(jax.tree.map(lambda x, i=i: x[i], m) for i in range(n))
            else:
                for b in chunk:
                    state, m = single(state, b)
                    history.append(m)
            if pending is not None:  # keep one call in flight, never an unbounded queue
                jax.block_until_ready(pending)
            pending, pos = m, pos + len(chunk)
            bar.update(len(chunk))
            if pos % job.spe and job.ckpts.should_save(pos):
                save(job, pos, state, _host_metrics(job, epoch, partial, history), epoch, rows)
    return state, _host_metrics(job, epoch, partial, history)


def diverged(job: Job, epoch: int, step: int):
    """Writes ``failure.json`` and raises :class:`TrainingDiverged` (0-based step of epoch)."""
    last, at = (job.ckpts.steps() or [None])[-1], epoch * job.spe + step
    lr = float(opt_lib.make_lr_schedule(job.config, job.spe)(at))
    failure = dict(reason="non-finite train loss or gradient", epoch=epoch + 1, step=at + 1, lr=lr)
    failure["last_finite_checkpoint_step"] = last
    failure["last_finite_checkpoint_epoch"] = None if last is None else last / job.spe
    for d in job.result_dirs if job.is_main else ():
        ckpt.write(d / "failure.json", ckpt.dumps(failure))
    if job.restored and at == job.restored:  # the restored state, not the hyperparameters
        raise TrainingDiverged(
            f"training diverged on the first step after resuming from the checkpoint of "
            f"{job.describe(at)} in {job.ckpts.directory}: that checkpoint is likely damaged; "
            f"move {at}/ out of it and rerun to resume from an older one"
        )
    kept = f"the last finite checkpoint ({job.describe(last)}) is kept" if last else None
    raise TrainingDiverged(
        f"training diverged in epoch {epoch + 1} (step {at + 1}, lr {lr:.4g}): non-finite "
        f"train loss or gradient; {kept or 'no checkpoint was written'}, no summary written. "
        "Lower optimizer.lr or check the loss hyperparameters."
    )


def save(job: Job, pos: int, state, host: dict, epoch: int, rows) -> None:
    """Checkpoints ``state`` at step ``pos`` with the metrics ``rows`` (mid-epoch: and the
    metrics ``host`` of its epoch so far) unless it is the latest checkpoint; a non-finite
    state diverges."""
    if pos in job.ckpts.steps()[-1:]:
        return
    if not bool(parallel.to_host(ckpt.all_finite(state))):
        diverged(job, epoch, max(pos - epoch * job.spe - 1, 0))
    metrics = {k: v.tolist() for k, v in host.items()} if pos % job.spe else {}
    job.ckpts.save(pos, state, {"metrics": metrics, "rows": rows})


def evaluate(job: Job, state) -> list[dict]:
    """Each model's test metrics (:func:`~cce_jax.training.steps.evaluate`)."""
    args = (job.eval_step, state, _model_batches(job), job.mesh, job.info.class_counts)
    out = steps_lib.evaluate(*args, job.num_models, job.task)
    return out if job.seeds else [out]


def log_epoch(job: Job, rows: list, epoch: int, host: dict, evals, dt: float) -> None:
    """Appends each model's row for epoch ``epoch`` to its ``metrics.jsonl`` and prints it."""
    lr = float(opt_lib.make_lr_schedule(job.config, job.spe)(epoch * job.spe))
    speed = job.spe * int(job.config.batch_size) * (job.num_models or 1) / dt
    names = dict(loss="train_loss", accuracy="train_accuracy", loss_1="train_complement_loss")
    for i, (d, model_rows, ev) in enumerate(zip(job.dirs, rows, evals or [None] * len(rows))):
        mine = {k: v[:, i] for k, v in host.items()} if job.seeds else host
        row = {names[k]: float(np.mean(v)) for k, v in mine.items() if k in names}
        row.update(epoch=epoch + 1, lr=lr, drw=job.uses_drw(epoch), epoch_time_s=dt)
        row["images_per_s"] = speed
        if ev is not None:
            row["test"] = {k: v for k, v in ev.items() if k != "confusion_matrix"}
        model_rows.append(row)
        if job.is_main:
            ckpt.write_jsonl(d / "metrics.jsonl", model_rows, append=True)
            tag = f"[seed {job.seeds[i]}] " if job.seeds else ""
            print(tag + report.epoch_line(row, ev, job.config.num_epochs), flush=True)


def write_summary(job: Job, rows, evals, state, start_epoch: int, t_start: float) -> dict:
    """Each model's ``summary.json`` (segmentation: also ``predictions.npz``); with seeds,
    the aggregate ``summary.json``. Returns the summary."""
    summaries = []
    for i, (d, model_rows) in enumerate(zip(job.dirs, rows)):
        config = job.config_dict(job.seeds[i] if job.seeds else None)
        extra = dict(resumed_from_epoch=start_epoch, wall_time_s=time.time() - t_start)
        summary = report.run_summary(evals[i], model_rows, job.info, config, job.seeds, **extra)
        if job.is_main:
            ckpt.write(d / "summary.json", ckpt.dumps(summary))
        if job.is_main and job.task == "segmentation":
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            if job.seeds:
                variables = jax.tree.map(lambda x, i=i: x[i], variables)
            report.write_predictions(d, job.model, job.datasets[i], variables)
        summaries.append(summary)
    if not job.seeds:
        return summaries[0]
    agg = dict(report.aggregate(summaries, job.seeds), config=job.config_dict())
    if job.is_main:
        ckpt.write(job.workdir / "summary.json", ckpt.dumps(agg))
    return agg


def _model_batches(job: Job, epoch=None, *, start=0):
    """The batches of an epoch from step ``start`` on (an epoch's order is a pure function of
    (seed, epoch)), or of the eval split when ``epoch`` is None; with seeds, all models'
    stacked on a leading axis."""
    its = [d.train_epoch(epoch) if epoch is not None else d.eval_batches() for d in job.datasets]
    if epoch is not None:
        its = [itertools.islice(it, start, job.spe) for it in its]
    for group in zip(*its):
        if job.num_models is not None:
            yield parallel.stack_batches(group, job.mesh, 1)
        else:
            yield group[0] if epoch is None else parallel.shard_batch(group[0], job.mesh)


def _host_metrics(job: Job, epoch: int, partial, history) -> dict:
    """An epoch's per-step train metrics on the host (``[steps(, S)]``): those restored from
    a mid-epoch checkpoint (``partial``), then this call's (``history``); a non-finite train
    loss or gradient norm is :func:`diverged`."""
    host = dict(partial)
    for k in history[0] if history else ():
        new = np.stack([parallel.to_host(h[k]) for h in history])
        host[k] = np.concatenate([host[k], new]) if k in host else new
    ok = np.isfinite(host.get("loss", 0.0)) & np.isfinite(host.get("grad_norm", 0.0))
    if not ok.all():
        diverged(job, epoch, int(np.argwhere(~ok)[0][0]))
    return host
