"""The training loop: restore, train epochs, evaluate, summarize (flax examples/imagenet style).

:func:`train_and_evaluate` is the whole run; ``experiments/train.py`` only parses flags.
Reproducibility: parameters come from ``jax.random.key(config.seed)``, the data order from
``data.train_epoch(epoch)``, a pure function of ``(config.seed, epoch)``; the models have no
dropout, so a resumed run replays the uninterrupted one exactly.

Several seeds in one program (``config.seeds=(s0, s1, ...)``): model i is trained exactly as
the single run with ``seed=s_i, data.subset_seed=s_i`` (its own init, data order,
augmentation and surviving subset), all models in one vmapped step. Each writes
``WORKDIR/seed_<s>/`` (``config.json``, ``metrics.jsonl``, ``summary.json`` in the single-run
format); ``WORKDIR/summary.json`` holds the mean and sd over seeds.

Failure modes, each loud: a non-finite train loss or gradient raises :class:`TrainingDiverged`
(``failure.json`` written, no summary, the last finite checkpoint kept); reaching
``config.deadline`` (unix seconds) raises :class:`DeadlineReached` after a checkpoint, and
SIGTERM/SIGINT raise :class:`Preempted` after the step in flight and a checkpoint of the exact
(mid-epoch) position, so the next call resumes to the same result.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from cce_jax import models, parallel
from cce_jax.training import config as config_lib
from cce_jax.training import optimizer as opt_lib
from cce_jax.training import report
from cce_jax.training import steps as steps_lib
from cce_jax.training import workdir as wd
from cce_jax.training.config import ConfigError

__all__ = [
    "train_and_evaluate",
    "build_loss_fns",
    "TrainingDiverged",
    "DeadlineReached",
    "Preempted",
    "StopSignals",
]


class TrainingDiverged(RuntimeError):
    """The train loss or gradient became non-finite; the run stopped without a summary."""


class DeadlineReached(RuntimeError):
    """``config.deadline`` would pass during the next epoch; the run checkpointed and stopped."""


class Preempted(DeadlineReached):
    """SIGTERM or SIGINT: the run finished its step, saved its exact position and stopped."""


class StopSignals:
    """While active (in the main thread), SIGTERM and SIGINT (unless ignored, as in a
    background job) only set :attr:`signame`; the loop reads it between train-step calls,
    saves and stops. A second signal exits at once
    (``128 + signal``): a save it cuts short leaves a temporary folder that the next run
    removes, and the previous checkpoint stays usable."""

    def __init__(self):
        self.signame = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) != signal.SIG_IGN:  # e.g. SIGINT of a background job
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signame is None:
            self.signame = name
            return
        print(
            f"second {name}: exiting without a new checkpoint; the previous one is kept",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def build_loss_fns(config, class_counts) -> tuple[tuple, tuple | None]:
    """(loss fns before DRW, loss fns from ``loss.drw_epoch`` on, or None); each a tuple of
    per-example losses ``fn(logits, labels)`` for :func:`~cce_jax.training.make_train_step`
    (COT: the base loss, then the negative normalised complement entropy)."""
    from cce_jax import losses

    counts = np.asarray(class_counts)
    hparams = dict(config.loss.get("hparams", {}) or {})
    if config_lib.is_cot(config):
        base = "ce" if config.loss.name == "cot" else config.loss.name
        primary = losses.get(base, class_counts=counts, **hparams)
        k = len(counts)

        def neg_complement(logits, labels):  # maximise the normalised complement entropy
            return -losses.complement_entropy(logits, labels) / k

        return (primary, neg_complement), None
    plain = (losses.get(config.loss.name, class_counts=counts, **hparams),)
    if int(config.loss.drw_epoch) < 0:
        return plain, None
    w = np.asarray(
        losses.class_balanced_weights(counts, beta=float(config.loss.drw_beta)), np.float32
    )
    drw = (losses.get(config.loss.name, class_counts=counts, **dict(hparams, class_weights=w)),)
    return plain, drw


def train_and_evaluate(config, workdir: str, *, data=None) -> dict | None:
    """Trains ``config`` in ``workdir`` (resuming from its last checkpoint) and evaluates.

    Writes ``config.json``, ``metrics.jsonl``, ``summary.json`` (with the confusion matrix),
    ``per_class.png``, ``predictions.npz`` (segmentation) and ``checkpoints/`` (per seed under
    ``seed_<s>/`` with ``config.seeds``). Returns the summary dict (with seeds: the
    aggregate), or ``None`` when stopped early by ``stop_after_epoch``. ``data`` (a
    :class:`cce_jax.data` pipeline-like object, or a list of one per seed) replaces
    ``data.build``.

    Raises:
      ConfigError: a bad config or workdir, before anything is written.
      TrainingDiverged: a non-finite train loss or gradient.
      DeadlineReached: ``config.deadline`` reached (checkpointed; rerun to resume).
      Preempted: SIGTERM or SIGINT (a :class:`DeadlineReached`; the exact position saved).
      StorageError: the workdir could not be written or a checkpoint read (one line).
    """
    t_start = time.time()
    config_lib.validate_config(config)
    workdir = _make_workdir(workdir)
    lock = wd.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, StopSignals() as stop:
        return _Run(config, workdir, data, t_start, stop).run()


def _make_workdir(workdir: str) -> str:
    """The resolved workdir (a gs:// URL stays as it is), created; ConfigError if it cannot
    be."""
    workdir = wd.resolve_workdir(workdir)
    try:
        wd.makedirs(workdir)
    except OSError as e:
        raise ConfigError(
            f"cannot create the workdir {workdir!r} ({type(e).__name__}: {e.strerror or e}); "
            "use a writable --workdir"
        ) from None
    return workdir


class _Run:
    """One :func:`train_and_evaluate` call: the setup (data; model, optimizer and steps; the
    stored config), then :meth:`run`: restore, the epochs (train, check, evaluate, log,
    checkpoint), the summary."""

    def __init__(self, config, workdir, data, t_start, stop: StopSignals):
        self.config, self.workdir, self.t_start, self.stop = config, workdir, t_start, stop
        self.is_main = jax.process_index() == 0
        self.seeds = config_lib.seeds_of(config)
        self.num_models = len(self.seeds) if self.seeds else None
        self.config_dict = config_lib.config_to_dict(config)
        self.ckpts = wd.Checkpoints(workdir, keep=int(config.keep_checkpoints))
        # Every check before anything is written: a refused run leaves the workdir as it was.
        latest = self.ckpts.latest()
        stored = wd.check_stored_config(
            workdir, self.config_dict, has_checkpoint=latest is not None
        )
        self._setup_data(data, latest)
        self._setup_model_and_steps()
        if self.is_main:
            self._store_configs(stored)

    # ------------------------------------------------------------------------ setup

    def _setup_data(self, data, latest_checkpoint) -> None:
        """The pipelines (one per model), the data facts the run uses, and the checks that
        need them."""
        self.datasets = self._load_datasets(data)
        self.info = self.datasets[0].info
        self.k = int(self.info.num_classes)
        self.task = getattr(self.info, "task", "classification")
        self.counts = np.asarray(self.info.class_counts, np.int64)
        self.spe = int(self.datasets[0].steps_per_epoch)
        if self.spe < 1:
            raise ConfigError(
                f"the train split ({self.info.num_train} images) holds no full batch "
                f"of {self.config.batch_size}"
            )
        if latest_checkpoint is not None and latest_checkpoint > self.total_steps:
            raise ConfigError(
                f"workdir {self.workdir!r} holds a checkpoint at "
                f"{self.describe(latest_checkpoint)}, beyond num_epochs={self.config.num_epochs}"
            )

    def _load_datasets(self, data) -> list:
        if data is not None:
            datasets = list(data) if isinstance(data, (list, tuple)) else [data]
        else:
            try:
                datasets = _build_data(self.config, self.seeds)
            except Exception as e:  # missing files, tfds without a local copy, bad data keys
                raise ConfigError(
                    f"could not build the dataset (data.source={self.config.data.source!r}): "
                    f"{type(e).__name__}: {e}"
                ) from e
        if len(datasets) != (self.num_models or 1):
            raise ConfigError(f"{len(datasets)} data pipelines for {self.num_models or 1} models")
        if any(
            not np.array_equal(d.info.class_counts, datasets[0].info.class_counts) for d in datasets
        ):
            raise ConfigError("the seeds' training splits have different class counts")
        return datasets

    def _setup_model_and_steps(self) -> None:
        """The mesh, model, optimizer and lr schedule, and the jitted train and eval steps."""
        config = self.config
        self.mesh = parallel.make_mesh()
        self.model = models.get_model(
            config.model.name,
            num_classes=self.k,
            dtype=config.model.dtype,
            cosine_head=config.model.cosine_head,
            width=config.model.get("width"),
            conv_impl=config.model.get("conv_impl", "auto"),
        )
        self.tx = opt_lib.make_optimizer(config, self.spe)
        self.lr_fn = opt_lib.make_lr_schedule(config, self.spe)
        try:
            plain, drw = build_loss_fns(config, self.counts)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"loss {config.loss.name!r}: {e}") from e
        self.steps_per_call = int(config.get("steps_per_call", 1))
        self.train_steps = self._make_train_steps(plain)
        self.drw_train_steps = self._make_train_steps(drw) if drw else None
        self.eval_step = steps_lib.make_eval_step(
            self.model, self.mesh, self.k, class_counts=self.counts, num_models=self.num_models
        )

    def _make_train_steps(self, loss_fns) -> tuple:
        """(the one-batch train step, the ``steps_per_call``-batch one or None)."""
        make = functools.partial(
            steps_lib.make_train_step,
            self.model,
            self.tx,
            self.mesh,
            loss_fns,
            num_models=self.num_models,
        )
        n = self.steps_per_call
        return make(steps_per_call=1), (make(steps_per_call=n) if n > 1 else None)

    def _store_configs(self, stored: bool) -> None:
        """``config.json`` (unless the workdir holds it), and each seed's in ``seed_<s>/``."""
        if not stored:
            wd.store_config(self.workdir, self.config_dict)  # before the first checkpoint
        if self.seeds:
            for s, sub in zip(self.seeds, self.model_dirs()):
                wd.makedirs(sub)
                wd.store_config(sub, self.single_config_dict(s))

    @property
    def total_steps(self) -> int:
        return int(self.config.num_epochs) * self.spe

    def model_dirs(self) -> list[str]:
        if not self.seeds:
            return [self.workdir]
        return [os.path.join(self.workdir, f"seed_{s}") for s in self.seeds]

    def single_config_dict(self, s) -> dict:
        """The config of the single run that seed ``s``'s model equals."""
        d = dict(self.config_dict, seed=int(s), seeds=[])
        d["data"] = dict(d["data"], subset_seed=int(s))
        return d

    def describe(self, step: int) -> str:
        """A position in words: ``"epoch 2"`` (its end) or ``"epoch 3, step 5/12"``."""
        e, o = divmod(int(step), self.spe)
        return f"epoch {e}" if o == 0 else f"epoch {e + 1}, step {o}/{self.spe}"

    # ------------------------------------------------------------------------ the run

    def run(self) -> dict | None:
        """Restore, then per epoch: train, check, evaluate, log, checkpoint; summarize."""
        config = self.config
        num_epochs, stop_after = int(config.num_epochs), int(config.get("stop_after_epoch", -1))
        state, pos, partial = self.restore()
        start_epoch = pos // self.spe
        self.rows = self.reset_files(start_epoch)
        self.saved, self.saved_at = pos, time.time()  # the last checkpoint, for the intervals
        evals = self.evaluate(state) if pos == self.total_steps else None
        epoch_cost = None  # the longest epoch of this call, in seconds
        for epoch in range(start_epoch, num_epochs):
            self.stop_for_deadline(epoch, pos, state, epoch_cost)
            t0 = time.time()
            state, host, pos = self.train_epoch(state, epoch, pos, partial)
            partial = None
            self.stop_if_signalled(epoch, pos, state, host)
            self.check_finite(host, epoch, state)
            done = epoch + 1 == num_epochs
            do_eval = done or (epoch + 1) % int(config.eval_every) == 0
            evals = self.evaluate(state) if do_eval else None
            self.log_epoch(epoch, host, evals, time.time() - t0)
            stop = 0 <= stop_after <= epoch + 1 and not done
            if done or stop or (epoch + 1) % int(config.checkpoint_every) == 0:
                self.save(pos, state)
            cost = time.time() - t0
            epoch_cost = cost if epoch_cost is None else max(epoch_cost, cost)
            if stop:
                self.ckpts.close()
                print(
                    f"stopped after epoch {stop_after} (stop_after_epoch); rerun to resume",
                    flush=True,
                )
                return None
        self.ckpts.close()
        return self.summarize(evals, state, start_epoch)

    def restore(self):
        """(state, position in steps, host metrics of the partly trained epoch)."""
        seeds = self.seeds
        rng = (
            jnp.stack([jax.random.key(s) for s in seeds])
            if seeds
            else jax.random.key(int(self.config.seed))
        )
        state = steps_lib.create_train_state(
            self.model, self.tx, rng, tuple(self.info.image_shape), self.mesh
        )
        state, progress, found = self.ckpts.restore_latest(state, self.describe)
        pos = int(np.ravel(parallel.to_host(state.step))[0]) if found else 0
        if found:
            print(f"resumed from {self.ckpts.directory} at {self.describe(pos)}", flush=True)
        partial = {k: np.asarray(v, np.float32) for k, v in (progress.get("metrics") or {}).items()}
        if pos % self.spe and not partial:
            raise ConfigError(
                f"the checkpoint at {self.describe(pos)} lacks the metrics of its epoch"
            )
        return state, pos, partial

    def reset_files(self, done_epochs: int) -> list[list[dict]]:
        """Each model's metrics rows of the finished epochs (``metrics.jsonl`` cut to them);
        unless the run is finished, a stale ``summary.json``/``failure.json`` removed."""
        all_rows = []
        for d in self.model_dirs():
            path = os.path.join(d, "metrics.jsonl")
            rows = [r for r in wd.read_jsonl(path) if int(r.get("epoch", 0)) <= done_epochs]
            all_rows.append(rows)
            if self.is_main:
                wd.write_jsonl(path, rows)
        if self.is_main and done_epochs < int(self.config.num_epochs):
            for d in self.model_dirs() + ([self.workdir] if self.seeds else []):
                for name in ("summary.json", "failure.json"):
                    wd.remove(os.path.join(d, name))
        return all_rows

    def stop_for_deadline(self, epoch, pos, state, epoch_cost) -> None:
        """Checkpoints and raises :class:`DeadlineReached` if ``config.deadline`` would pass
        during epoch ``epoch`` (judged by the longest epoch of this call; none yet: go on)."""
        deadline = float(self.config.get("deadline", 0.0) or 0.0)
        if deadline > 0 and epoch_cost is not None and time.time() + epoch_cost > deadline:
            self.save(pos, state)
            self.ckpts.close()
            raise DeadlineReached(
                f"stopped before epoch {epoch + 1} to meet the deadline; rerun to resume"
            )

    def stop_if_signalled(self, epoch, pos, state, host) -> None:
        """Checkpoints the exact position and raises :class:`Preempted` if a stop signal cut
        epoch ``epoch`` short."""
        if pos < (epoch + 1) * self.spe:
            self.save(pos, state, host)
            self.ckpts.close()
            by = self.stop.signame or "a signal to another process"  # all stop together
            raise Preempted(
                f"stopped by {by} at {self.describe(pos)}; checkpointed "
                f"in {self.ckpts.directory}; rerun to resume"
            )

    def uses_drw(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` trains with the deferred re-weighted losses."""
        return self.drw_train_steps is not None and epoch >= int(self.config.loss.drw_epoch)

    def train_epoch(self, state, epoch, pos, partial=None):
        """Trains epoch ``epoch`` from step ``pos`` on. Returns (state, host metrics of the
        epoch's steps so far, position); the position is short of the epoch's end only when
        a stop signal came."""
        single, multi = self.drw_train_steps if self.uses_drw(epoch) else self.train_steps
        show = bool(self.config.get("progress", True)) and self.is_main and sys.stdout.isatty()
        bar = _progress(self.spe, f"epoch {epoch + 1}/{self.config.num_epochs}", show)
        offset = pos - epoch * self.spe
        bar.update(offset)
        history, pending, n = [], None, self.steps_per_call
        batches = _model_batches(
            self.datasets, self.mesh, epoch, stack=self.num_models is not None, start=offset
        )
        for chunk in _chunks(batches, n):
            if self._agree(self.stop.signame is not None):
                break
            if len(chunk) == n and multi is not None:
                lead = 2 if self.num_models else 1
                state, m = multi(state, parallel.stack_batches(chunk, self.mesh, lead))
                history.extend(jax.tree.map(lambda x, i=i: x[i], m) for i in range(n))
            else:
                for b in chunk:
                    state, m = single(state, b)
                    history.append(m)
            if pending is not None:  # keep one call in flight, never an unbounded queue
                jax.block_until_ready(pending)
            pending = m
            pos += len(chunk)
            bar.update(len(chunk))
            if pos < (epoch + 1) * self.spe and self._interval_due(pos):
                self.check_finite(_host_metrics(partial, history), epoch, state)
                self.save(pos, state, _host_metrics(partial, history))
        bar.close()
        return state, _host_metrics(partial, history), pos

    def check_finite(self, host, epoch, state) -> None:
        """Writes ``failure.json`` and raises :class:`TrainingDiverged` if a train loss or
        gradient norm in ``host`` or a parameter of ``state`` is not finite."""
        n = len(host.get("loss", ()))
        bad = ~(np.isfinite(host["loss"]) & np.isfinite(host["grad_norm"])) if n else np.zeros(0)
        if not bad.any() and bool(parallel.to_host(_all_finite(state.params))):
            return
        step = int(np.argwhere(bad)[0][0]) if bad.any() else max(n - 1, 0)
        last = self.ckpts.latest()
        failure = {
            "reason": "non-finite train loss or gradient",
            "epoch": epoch + 1,
            "step": epoch * self.spe + step + 1,
            "last_finite_checkpoint_epoch": None if last is None else last / self.spe,
            "last_finite_checkpoint_step": last,
            "lr": float(self.lr_fn(epoch * self.spe + step)),
        }
        if self.is_main:
            for d in self.model_dirs() + ([self.workdir] if self.seeds else []):
                wd.write_json(os.path.join(d, "failure.json"), failure)
        self.ckpts.close()
        kept = (
            f"the last finite checkpoint ({self.describe(last)}) is kept"
            if last
            else "no checkpoint was written"
        )
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1} (step {failure['step']}, "
            f"lr {failure['lr']:.4g}): non-finite train loss or gradient; {kept}, "
            "no summary written. Lower optimizer.lr or check the loss hyperparameters."
        )

    def evaluate(self, state) -> list[dict]:
        """Each model's test metrics (:func:`~cce_jax.training.steps.evaluate`)."""
        batches = _model_batches(self.datasets, self.mesh, stack=self.num_models is not None)
        out = steps_lib.evaluate(
            self.eval_step,
            state,
            batches,
            self.mesh,
            self.k,
            self.counts,
            num_models=self.num_models,
            task=self.task,
        )
        return [out] if self.num_models is None else out

    # ------------------------------------------------------------------------ checkpoints

    def save(self, pos, state, host=None) -> None:
        """Checkpoints ``state`` at step ``pos`` (mid-epoch: with the metrics ``host`` of its
        epoch so far), unless the latest checkpoint is there already; refuses non-finite
        parameters (:class:`TrainingDiverged`)."""
        if pos == self.ckpts.latest():
            return
        if not bool(parallel.to_host(_all_finite(state.params))):
            raise TrainingDiverged(f"non-finite parameters at {self.describe(pos)}; not saved")
        metrics = (
            {} if pos % self.spe == 0 or host is None else {k: v.tolist() for k, v in host.items()}
        )
        self.ckpts.save(pos, state, {"metrics": metrics})
        self.saved, self.saved_at = pos, time.time()

    def _interval_due(self, pos: int) -> bool:
        """Whether ``checkpoint_every_steps`` or ``checkpoint_every_minutes`` asks for a
        mid-epoch checkpoint at ``pos`` (the same answer on every process)."""
        every = int(self.config.get("checkpoint_every_steps", 0) or 0)
        minutes = float(self.config.get("checkpoint_every_minutes", 0.0) or 0.0)
        due = every > 0 and pos - self.saved >= every
        due = due or (minutes > 0 and time.time() - self.saved_at >= 60.0 * minutes)
        return self._agree(due)

    def _agree(self, flag: bool) -> bool:
        """Whether any process says ``flag`` (every process takes the same decision)."""
        if jax.process_count() == 1:
            return bool(flag)
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))

    # ------------------------------------------------------------------------ logging

    def log_epoch(self, epoch, host, evals, dt) -> None:
        """Appends each model's row for epoch ``epoch`` to its ``metrics.jsonl`` and prints it
        (process 0)."""
        lr = float(self.lr_fn(epoch * self.spe))
        imgs = self.spe * int(self.config.batch_size) * (self.num_models or 1)
        for i, (d, rows) in enumerate(zip(self.model_dirs(), self.rows)):
            mine = host if self.num_models is None else {k: v[:, i] for k, v in host.items()}
            ev = None if evals is None else evals[i]
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(mine["loss"])),
                "train_accuracy": float(np.mean(mine["accuracy"])),
                "lr": lr,
                "drw": self.uses_drw(epoch),
                "images_per_s": imgs / dt,
                "epoch_time_s": dt,
            }
            if "loss_1" in mine:
                row["train_complement_loss"] = float(np.mean(mine["loss_1"]))
            if ev is not None:
                row["test"] = {k: v for k, v in ev.items() if k != "confusion_matrix"}
            rows.append(row)
            if self.is_main:
                wd.write_jsonl(os.path.join(d, "metrics.jsonl"), rows)
                tag = f"[seed {self.seeds[i]}] " if self.seeds else ""
                print(tag + _epoch_line(row, ev, self.config.num_epochs, self.task), flush=True)

    # ------------------------------------------------------------------------ summary

    def summarize(self, evals, state, start_epoch: int) -> dict:
        """Writes each model's ``summary.json`` and ``per_class.png`` (segmentation: also
        ``predictions.npz``) and, with seeds, the workdir's aggregate ``summary.json``.
        Returns the summary (with seeds: the aggregate)."""
        summaries = []
        for i, (d, rows) in enumerate(zip(self.model_dirs(), self.rows)):
            summary = report.run_summary(
                evals[i],
                rows,
                info=self.info,
                class_counts=self.counts,
                config=self.single_config_dict(self.seeds[i]) if self.seeds else self.config_dict,
                resumed_from_epoch=start_epoch,
                wall_time_s=time.time() - self.t_start,
                seeds=self.seeds,
            )
            if self.is_main:
                report.write_run_files(d, summary)
                if self.task == "segmentation":
                    preds = report.predictions(
                        self.model, self.datasets[i], self.variables(state, i)
                    )
                    report.write_predictions(d, preds)
            summaries.append(summary)
        if not self.seeds:
            return summaries[0]
        agg = report.aggregate(summaries, self.seeds)
        agg["config"] = self.config_dict
        if self.is_main:
            wd.write_json(os.path.join(self.workdir, "summary.json"), agg)
        return agg

    def variables(self, state, i: int) -> dict:
        """Model ``i``'s parameters and BatchNorm statistics (for ``model.apply``)."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        if self.num_models is None:
            return variables
        return jax.tree.map(lambda x: x[i], variables)


def _epoch_line(row: dict, ev: dict | None, num_epochs, task: str) -> str:
    """An epoch's printed line: train loss, accuracy, lr, speed, and the test metrics."""
    msg = (
        f"epoch {row['epoch']}/{num_epochs}: "
        f"loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f} lr {row['lr']:.4g} {row['images_per_s']:.0f} img/s"
    )
    if ev is not None and task == "segmentation":
        msg += f" | test mIoU {ev['miou'] or 0:.4f} pixel acc {ev['top1'] or 0:.4f}"
    elif ev is not None:
        msg += f" | test top1 {ev['top1']:.4f} bal {ev['balanced_accuracy']:.4f}"
    return msg


def _build_data(config, seeds):
    """One data pipeline per model (seed s: ``seed=s``, ``subset_seed=s``)."""
    from cce_jax import data as data_lib

    kwargs = dict(
        global_batch_size=int(config.batch_size),
        eval_batch_size=int(config.eval_batch_size),
        mesh=parallel.make_mesh(),
    )
    if not seeds:
        return [data_lib.build(config.data, seed=int(config.seed), **kwargs)]
    kwargs["raw"] = data_lib.load_source(config.data)  # one load, shared by the seeds
    out = []
    for s in seeds:
        dcfg = config.data.copy_and_resolve_references()
        with dcfg.unlocked():
            dcfg.subset_seed = int(s)
        out.append(data_lib.build(dcfg, seed=int(s), **kwargs))
    return out


def _model_batches(datasets, mesh, epoch=None, *, stack=False, start=0):
    """Yields the batches of an epoch from step ``start`` on (or of the eval split when
    ``epoch`` is None): one model's, or with ``stack`` all models' stacked on a leading axis.
    An epoch's data order is a pure function of (seed, epoch), so skipping its first
    ``start`` batches resumes it exactly."""
    its = [d.train_epoch(epoch) if epoch is not None else d.eval_batches() for d in datasets]
    if epoch is not None:
        its = [itertools.islice(it, start, datasets[0].steps_per_epoch) for it in its]
    for group in zip(*its):
        if not stack:
            yield group[0] if epoch is None else parallel.shard_batch(group[0], mesh)
        else:
            yield parallel.stack_batches(group, mesh, 1)


def _chunks(it, n):
    """Lists of ``n`` consecutive items of ``it`` (the last may be shorter)."""
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


def _host_metrics(partial, history) -> dict:
    """The per-step train metrics of an epoch so far, on the host (``[steps(, S)]``): those
    restored from a mid-epoch checkpoint (``partial``), then this call's (``history``)."""
    host = (
        {k: np.stack([parallel.to_host(h[k]) for h in history]) for k in history[0]}
        if history
        else {}
    )
    for k, v in (partial or {}).items():
        host[k] = np.concatenate([v, host[k]]) if k in host else v
    return host


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=not enabled,
        file=sys.stdout,
    )
