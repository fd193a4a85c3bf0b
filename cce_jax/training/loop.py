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
import itertools
import os
import signal
import sys
import threading
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    background job) only set :attr:`signame`; the
    loop reads it between steps, saves and stops. A second signal exits at once
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
    """(loss fns before DRW, loss fns from ``loss.drw_epoch`` on, or None)."""
    from cce_jax import losses

    counts = np.asarray(class_counts)
    hparams = dict(config.loss.get("hparams", {}) or {})
    if config_lib.is_cot(config):
        base = "ce" if config.loss.name == "cot" else config.loss.name
        primary = losses.get(base, class_counts=counts, **hparams)
        k = len(counts)

        def neg_complement(logits, labels):  # maximise the normalised complement entropy
            return -losses.complement_entropy(logits, labels) / k

        return (_two_arg(primary), neg_complement), None
    plain = (_two_arg(losses.get(config.loss.name, class_counts=counts, **hparams)),)
    if int(config.loss.drw_epoch) < 0:
        return plain, None
    w = np.asarray(
        losses.class_balanced_weights(counts, beta=float(config.loss.drw_beta)), np.float32
    )
    drw = (
        _two_arg(
            losses.get(config.loss.name, class_counts=counts, **dict(hparams, class_weights=w))
        ),
    )
    return plain, drw


def _two_arg(fn):
    return lambda logits, labels: fn(logits, labels)


def _build_data(config, seeds):
    """One data pipeline per model (seed s: ``seed=s``, ``subset_seed=s``)."""
    from cce_jax import data as data_lib

    kwargs = dict(
        global_batch_size=int(config.batch_size),
        eval_batch_size=int(config.eval_batch_size),
        mesh=parallel.make_mesh(),
    )
    if seeds:  # one load, shared by the seeds' pipelines
        kwargs["raw"] = data_lib.load_source(config.data)
    else:
        return [data_lib.build(config.data, seed=int(config.seed), **kwargs)]
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
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _versions() -> dict:
    import orbax.checkpoint as ocp

    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax_checkpoint": getattr(ocp, "__version__", None),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


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


def train_and_evaluate(config, workdir: str, *, data=None) -> dict | None:
    """Trains ``config`` in ``workdir`` (resuming from its last checkpoint) and evaluates.

    Writes ``config.json``, ``metrics.jsonl``, ``summary.json`` (with the confusion matrix),
    ``per_class.png`` and ``checkpoints/`` (per seed under ``seed_<s>/`` with
    ``config.seeds``). Returns the summary dict (with seeds: the aggregate), or ``None`` when
    stopped early by ``stop_after_epoch``. ``data`` (a :class:`cce_jax.data` pipeline-like
    object, or a list of one per seed) replaces ``data.build``.

    Raises:
      ConfigError: a bad config or workdir, before anything is written.
      TrainingDiverged: a non-finite train loss or gradient.
      DeadlineReached: ``config.deadline`` reached (checkpointed; rerun to resume).
      Preempted: SIGTERM or SIGINT (a :class:`DeadlineReached`; the exact position saved).
      StorageError: the workdir could not be written or a checkpoint read (one line).
    """
    t_start = time.time()
    config_lib.validate_config(config)
    workdir = wd.resolve_workdir(workdir)  # a gs:// URL stays as it is
    try:
        wd.makedirs(workdir)
    except OSError as e:
        raise ConfigError(
            f"cannot create the workdir {workdir!r} ({type(e).__name__}: {e.strerror or e}); "
            "use a writable --workdir"
        ) from None
    lock = wd.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, StopSignals() as stop:
        run = _Run(config, workdir, data, t_start)
        run.stop = stop
        return run.run()


class _Run:
    """The state of one train_and_evaluate call (kept small: setup, epochs, summary)."""

    def __init__(self, config, workdir, data, t_start):
        self.config, self.workdir, self.t_start = config, workdir, t_start
        self.is_main = jax.process_index() == 0
        self.seeds = config_lib.seeds_of(config)
        self.num_models = len(self.seeds) if self.seeds else None
        self.config_dict = config_lib.config_to_dict(config)
        self.ckpts = wd.Checkpoints(workdir, keep=int(config.keep_checkpoints))
        latest = self.ckpts.latest()
        # Every check before anything is written: a refused run leaves the workdir as it was.
        stored = wd.check_stored_config(
            workdir, self.config_dict, has_checkpoint=latest is not None
        )
        self.datasets = self._data(data)
        d0 = self.datasets[0]
        self.info = d0.info
        self.k = int(self.info.num_classes)
        self.task = getattr(self.info, "task", "classification")
        self.counts = np.asarray(self.info.class_counts, np.int64)
        self.spe = int(d0.steps_per_epoch)
        if self.spe < 1:
            raise ConfigError(
                f"the train split ({self.info.num_train} images) holds no full batch "
                f"of {config.batch_size}"
            )
        if latest is not None and latest > int(config.num_epochs) * self.spe:
            raise ConfigError(
                f"workdir {workdir!r} holds a checkpoint at {self.describe(latest)}, "
                f"beyond num_epochs={config.num_epochs}"
            )
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
        n = int(config.get("steps_per_call", 1))
        mk = lambda fns, spc: steps_lib.make_train_step(  # noqa: E731
            self.model, self.tx, self.mesh, fns, num_models=self.num_models, steps_per_call=spc
        )
        self.train_steps = {False: (mk(plain, 1), mk(plain, n) if n > 1 else None)}
        if drw:
            self.train_steps[True] = (mk(drw, 1), mk(drw, n) if n > 1 else None)
        self.steps_per_call = n
        self.eval_step = steps_lib.make_eval_step(
            self.model, self.mesh, self.k, class_counts=self.counts, num_models=self.num_models
        )
        if self.is_main and not stored:
            wd.store_config(workdir, self.config_dict)  # before the first checkpoint
        if self.seeds and self.is_main:
            for s, sub in zip(self.seeds, self.model_dirs()):
                wd.makedirs(sub)
                wd.store_config(sub, self.single_config_dict(s))

    def _data(self, data):
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

    def model_dirs(self) -> list[str]:
        if not self.seeds:
            return [self.workdir]
        return [os.path.join(self.workdir, f"seed_{s}") for s in self.seeds]

    def single_config_dict(self, s) -> dict:
        d = dict(self.config_dict, seed=int(s), seeds=[])
        d["data"] = dict(d["data"], subset_seed=int(s))
        return d

    # ------------------------------------------------------------------------ running

    def describe(self, step: int) -> str:
        """A position in words: ``"epoch 2"`` (its end) or ``"epoch 3, step 5/12"``."""
        e, o = divmod(int(step), self.spe)
        return f"epoch {e}" if o == 0 else f"epoch {e + 1}, step {o}/{self.spe}"

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

    def reset_files(self, done_epochs: int) -> None:
        """Keeps the metrics rows of finished epochs; removes a stale summary/failure."""
        self.rows = []
        unfinished = done_epochs < int(self.config.num_epochs)
        for d in self.model_dirs():
            path = os.path.join(d, "metrics.jsonl")
            rows = [r for r in wd.read_jsonl(path) if int(r.get("epoch", 0)) <= done_epochs]
            self.rows.append(rows)
            if self.is_main:
                wd.write_jsonl(path, rows)
        if self.is_main and unfinished:
            for d in self.model_dirs() + ([self.workdir] if self.seeds else []):
                for name in ("summary.json", "failure.json"):
                    wd.remove(os.path.join(d, name))

    def run(self):
        config = self.config
        state, pos, partial = self.restore()
        self.restored_from = pos // self.spe
        self.reset_files(self.restored_from)
        num_epochs, stop_after = int(config.num_epochs), int(config.get("stop_after_epoch", -1))
        deadline = float(config.get("deadline", 0.0) or 0.0)
        self.saved, self.saved_at, epoch_cost = pos, time.time(), None
        evals = self.evaluate(state) if pos == num_epochs * self.spe else None
        for epoch in range(pos // self.spe, num_epochs):
            if deadline > 0 and epoch_cost is not None and time.time() + epoch_cost > deadline:
                self.save(pos, state)
                self.ckpts.close()
                raise DeadlineReached(
                    f"stopped before epoch {epoch + 1} to meet the deadline; rerun to resume"
                )
            t0 = time.time()
            state, host, pos = self.train_epoch(state, epoch, pos, partial)
            partial = None
            if pos < (epoch + 1) * self.spe:  # a stop signal: save the exact position
                self.save(pos, state, host)
                self.ckpts.close()
                by = self.stop.signame or "a signal to another process"  # all stop together
                raise Preempted(
                    f"stopped by {by} at {self.describe(pos)}; checkpointed "
                    f"in {self.ckpts.directory}; rerun to resume"
                )
            self.check_finite(host, epoch, state)
            done = epoch + 1 == num_epochs
            do_eval = done or (epoch + 1) % int(config.eval_every) == 0
            evals = self.evaluate(state) if do_eval else None
            self.log_epoch(epoch, host, evals, time.time() - t0)
            stop = stop_after >= 0 and epoch + 1 >= stop_after and not done
            if done or stop or (epoch + 1) % int(config.checkpoint_every) == 0:
                self.save(pos, state)
            cost = time.time() - t0
            epoch_cost = max(epoch_cost or 0.0, cost) if epoch_cost is not None else cost
            if stop:
                self.ckpts.close()
                print(
                    f"stopped after epoch {stop_after} (stop_after_epoch); rerun to resume",
                    flush=True,
                )
                return None
        self.ckpts.close()
        return self.summarize(evals, self.restored_from, state)

    def _agree(self, flag: bool) -> bool:
        """Whether any process says ``flag`` (every process takes the same decision)."""
        if jax.process_count() == 1:
            return bool(flag)
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))

    def _interval_due(self, pos: int) -> bool:
        every = int(self.config.get("checkpoint_every_steps", 0) or 0)
        minutes = float(self.config.get("checkpoint_every_minutes", 0.0) or 0.0)
        due = every > 0 and pos - self.saved >= every
        due = due or (minutes > 0 and time.time() - self.saved_at >= 60.0 * minutes)
        return self._agree(due)

    def train_epoch(self, state, epoch, pos, partial=None):
        """Trains epoch ``epoch`` from step ``pos`` on. Returns (state, host metrics of the
        epoch's steps so far, position); the position is short of the epoch's end only when
        a stop signal came."""
        use_drw = True in self.train_steps and epoch >= int(self.config.loss.drw_epoch)
        single, multi = self.train_steps[use_drw]
        show = bool(self.config.get("progress", True)) and self.is_main and sys.stdout.isatty()
        bar = _progress(self.spe, f"epoch {epoch + 1}/{self.config.num_epochs}", show)
        offset = pos - epoch * self.spe
        bar.update(offset)
        history, pending, n = [], None, self.steps_per_call
        batches = _model_batches(
            self.datasets, self.mesh, epoch, stack=self.num_models is not None, start=offset
        )
        host = lambda: self.host_metrics(partial, history, use_drw)  # noqa: E731
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
                self.check_finite(host(), epoch, state)
                self.save(pos, state, host())
        bar.close()
        return state, host(), pos

    def host_metrics(self, partial, history, use_drw) -> dict:
        """The per-step train metrics of this epoch so far, on the host ([steps(, S)])."""
        host = (
            {k: np.stack([parallel.to_host(h[k]) for h in history]) for k in history[0]}
            if history
            else {}
        )
        for k, v in (partial or {}).items():
            host[k] = np.concatenate([v, host[k]]) if k in host else v
        host["_drw"] = use_drw
        return host

    def check_finite(self, host, epoch, state):
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
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1} (step {failure['step']}, "
            f"lr {failure['lr']:.4g}): "
            "non-finite train loss or gradient; "
            + (
                f"the last finite checkpoint ({self.describe(last)}) is kept"
                if last
                else "no checkpoint was written"
            )
            + ", no summary written. Lower optimizer.lr or check the loss hyperparameters."
        )

    def evaluate(self, state):
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

    def save(self, pos, state, host=None):
        """Checkpoints ``state`` at step ``pos`` (with the metrics of its epoch so far)."""
        if pos == self.ckpts.latest():
            return
        if not bool(parallel.to_host(_all_finite(state.params))):
            raise TrainingDiverged(f"non-finite parameters at {self.describe(pos)}; not saved")
        metrics = (
            {}
            if pos % self.spe == 0 or host is None
            else {k: v.tolist() for k, v in host.items() if not k.startswith("_")}
        )
        self.ckpts.save(pos, state, {"metrics": metrics})
        self.saved, self.saved_at = pos, time.time()

    def log_epoch(self, epoch, host, evals, dt):
        lr = float(self.lr_fn(epoch * self.spe))
        imgs = self.spe * int(self.config.batch_size) * (self.num_models or 1)
        for i, (d, rows) in enumerate(zip(self.model_dirs(), self.rows)):
            col = (lambda k: host[k]) if self.num_models is None else (lambda k: host[k][:, i])
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(col("loss"))),
                "train_accuracy": float(np.mean(col("accuracy"))),
                "lr": lr,
                "drw": bool(host["_drw"]),
                "images_per_s": imgs / dt,
                "epoch_time_s": dt,
            }
            if "loss_1" in host:
                row["train_complement_loss"] = float(np.mean(col("loss_1")))
            if evals is not None:
                row["test"] = {k: v for k, v in evals[i].items() if k != "confusion_matrix"}
            rows.append(row)
            if self.is_main:
                wd.write_jsonl(os.path.join(d, "metrics.jsonl"), rows)
                tag = f"[seed {self.seeds[i]}] " if self.seeds else ""
                msg = (
                    f"{tag}epoch {epoch + 1}/{self.config.num_epochs}: "
                    f"loss {row['train_loss']:.4f} "
                    f"acc {row['train_accuracy']:.4f} lr {lr:.4g} {row['images_per_s']:.0f} img/s"
                )
                if evals is not None and self.task == "segmentation":
                    t = evals[i]
                    msg += f" | test mIoU {t['miou'] or 0:.4f} pixel acc {t['top1'] or 0:.4f}"
                elif evals is not None:
                    t = evals[i]
                    msg += f" | test top1 {t['top1']:.4f} bal {t['balanced_accuracy']:.4f}"
                print(msg, flush=True)

    # ------------------------------------------------------------------------ summary

    def predict(self, state, i: int, n: int = report.NUM_PREDICTIONS) -> dict:
        """Model ``i``'s label maps for the first ``n`` test images (segmentation), with the
        images and true maps: the arrays of ``predictions.npz``."""
        data = self.datasets[i]
        images, truth = (a[:n] for a in data.test_split())
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        if self.num_models is not None:
            variables = jax.tree.map(lambda x: x[i], variables)
        variables = jax.tree.map(parallel.to_host, variables)
        logits = jax.jit(lambda v, x: self.model.apply(v, x, train=False))(
            variables, jnp.asarray(data.normalize(images))
        )
        pred = np.asarray(jnp.argmax(logits, -1), np.uint8)
        return {
            "images": np.asarray(images),
            "labels": np.asarray(truth, np.uint8),
            "predictions": pred,
        }

    def summarize(self, evals, start, state):
        summaries = []
        for i, (d, rows) in enumerate(zip(self.model_dirs(), self.rows)):
            ev = evals[i]
            cfg = self.config_dict if not self.seeds else self.single_config_dict(self.seeds[i])
            summary = {
                "test_top1": ev["top1"],
                "test_balanced_accuracy": ev["balanced_accuracy"],
                "test_many": ev.get("many"),
                "test_medium": ev.get("medium"),
                "test_few": ev.get("few"),
                "test_macro_f1": ev["macro_f1"],
                "per_class_accuracy": ev["per_class_accuracy"],
                "posthoc_logit_adjustment": ev.get("posthoc_logit_adjustment"),
                "class_counts": self.counts.tolist(),
                "test_class_counts": ev["test_class_counts"],
                "class_names": list(getattr(self.info, "class_names", []) or []),
                "confusion_matrix": ev["confusion_matrix"],
                "num_train": int(self.info.num_train),
                "num_test": int(ev["num_examples"]),
                "epochs": int(self.config.num_epochs),
                "final_train_loss": rows[-1]["train_loss"] if rows else None,
                "final_train_accuracy": rows[-1]["train_accuracy"] if rows else None,
                "train_time_s_total": float(sum(r.get("epoch_time_s", 0.0) for r in rows)),
                "wall_time_s": time.time() - self.t_start,
                "resumed_from_epoch": start,
                "device_count": jax.device_count(),
                "process_count": jax.process_count(),
                "platform": jax.devices()[0].platform,
                "device_kind": jax.devices()[0].device_kind,
                "versions": _versions(),
                "config": cfg,
            }
            if self.seeds:
                summary["trained_with_seeds"] = list(self.seeds)
            if self.task == "segmentation":
                summary.update(
                    task="segmentation",
                    num_test=int(self.info.num_test),
                    num_test_pixels=int(ev["num_pixels"]),
                    test_miou=ev["miou"],
                    test_pixel_accuracy=ev["pixel_accuracy"],
                    test_mean_class_accuracy=ev["mean_class_accuracy"],
                    test_fw_iou=ev["fw_iou"],
                    per_class_iou=ev["per_class_iou"],
                    frequency_groups=ev["groups"],
                )
            if self.is_main:
                report.write_run_files(d, summary)
                if self.task == "segmentation":
                    report.write_predictions(d, self.predict(state, i))
            summaries.append(summary)
        if not self.seeds:
            return summaries[0]
        agg = report.aggregate(summaries, self.seeds)
        agg["config"] = self.config_dict
        if self.is_main:
            wd.write_json(os.path.join(self.workdir, "summary.json"), agg)
        return agg
