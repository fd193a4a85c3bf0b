"""A run's workdir through ``etils.epath`` (a folder or a bucket): the lock, JSON files, and
one orbax ``CheckpointManager`` whose ``checkpoints/<step>/`` holds ``state/``, ``progress/``
(the metrics of a partly trained epoch) and ``digest.json`` (damage and the fallback:
docs/reliability.md). :func:`storage_errors` makes an ``OSError`` a one-line StorageError."""

import contextlib
import errno
import fcntl
import gc
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from cce_jax import parallel
from cce_jax.training.config import ConfigError

DIGEST_FILE = "digest.json"


class StorageError(OSError):
    """Writing or reading the workdir failed; the message is one line, nothing half-written."""


class _Damaged(Exception):
    """Proof that a checkpoint's bytes are wrong: a digest mismatch or undecodable files."""


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def storage_errors(what: str, path, note: str = ""):
    """An ``OSError`` (or an orbax error naming a full disk) as a one-line StorageError."""
    try:
        yield
    except (StorageError, FileNotFoundError):
        raise
    except Exception as e:
        code = getattr(e, "errno", None)
        todo = "check the storage, then rerun to resume"
        if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e):
            cause, todo = "no space left on device", "free space, then rerun to resume"
        elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
            cause, todo = f"not writable ({first_line(e)})", "make it writable, then rerun"
        elif isinstance(e, OSError) or what.startswith("cannot save"):
            cause = first_line(e)
        else:
            raise
        note = f"{note}; " if note else ""
        raise StorageError(f"{what} {os.fspath(path)!r}: {cause}; {note}{todo}") from e


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON (NaN and infinities become null, numpy values plain JSON), sorted keys."""
    plain = json.loads(json.dumps(obj, default=lambda x: x.tolist()), parse_constant=lambda _: None)
    return json.dumps(plain, indent=indent, sort_keys=True, allow_nan=False) + "\n"


def is_local(path) -> bool:
    return "://" not in os.fspath(path)


def write(path: epath.Path, data: str | bytes) -> None:
    """Writes ``path`` atomically: locally a temporary file, fsync, rename; a bucket object
    is uploaded whole."""
    text = isinstance(data, str)
    with storage_errors("cannot write", path):
        if not is_local(path):
            return path.write_text(data) if text else path.write_bytes(data)
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        try:
            with open(tmp, "w" if text else "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_jsonl(path: epath.Path, rows: list[dict], *, append: bool = False) -> None:
    """``rows`` as strict-JSON lines, written whole; ``append``: the last row appended to the
    file (a bucket object is written whole)."""
    if append and is_local(path):
        with storage_errors("cannot write", path), open(path, "a") as f:
            f.write(dumps(rows[-1], indent=None))
    else:
        write(path, "".join(dumps(r, indent=None) for r in rows))


@contextlib.contextmanager
def WorkdirLock(workdir: epath.Path):  # noqa: N802 (used as a class)
    """An exclusive ``fcntl`` lock on ``workdir/.lock`` for a run's life (the kernel drops it
    when the process dies); a second run gets a :class:`ConfigError`. Only process 0 locks,
    and only on a local disk: a bucket has no lock that dies with its process."""
    if not is_local(workdir) or jax.process_index() != 0:
        yield
        return
    with open(workdir / ".lock", "a+", errors="replace") as f:  # closing drops the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ConfigError(
                f"workdir {str(workdir)!r} is in use by another run (pid "
                f"{f.read(64).strip() or '?'}); wait for it or use another --workdir"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


@contextlib.contextmanager
def _held_stderr():
    """Holds what orbax's threads write to stderr during a save (tracebacks of a full disk):
    replayed if the save succeeds, dropped if it fails (the StorageError's line says it).
    A failed save's other writes end later, each with a traceback (into a closed event loop):
    then wait, 5 s at most, until they stop, and mute asyncio's reports of the failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            logging.getLogger("asyncio").addFilter(lambda r: "never retrieved" not in str(r.msg))
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            size = -1
            for _ in range(20):
                if size == (size := os.fstat(held.fileno()).st_size):
                    break
                time.sleep(0.25)
            raise
        finally:
            gc.collect()  # asyncio reports its unretrieved task exceptions here
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        os.write(2, held.read())


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every value of ``tree`` is finite: what a saved state is, and an unverified
    restored one must be."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def checkpoint_digest(step_dir: epath.Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of a checkpoint but the digest itself."""
    out = {}
    for root, dirs, files in step_dir.walk():
        dirs.sort()
        for name in sorted(files):
            rel = (root / name).relative_to(step_dir).as_posix()
            if rel != DIGEST_FILE:
                out[rel] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    return out


class Checkpoints:
    """One orbax ``CheckpointManager`` (its save policies for the mid-epoch intervals) plus
    the digest and the fallback to the newest intact checkpoint."""

    def __init__(self, workdir: epath.Path, config):
        self.directory = workdir / "checkpoints"
        every_steps = int(config.get("checkpoint_every_steps", 0) or 0)
        every_minutes = float(config.get("checkpoint_every_minutes", 0.0) or 0.0)
        policies = ocp.checkpoint_managers
        self.policies = [policies.FixedIntervalPolicy(every_steps)] if every_steps > 0 else []
        if every_minutes > 0:
            secs = int(round(60 * every_minutes))
            self.policies.append(policies.ContinuousCheckpointingPolicy(minimum_interval_secs=secs))
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=int(config.keep_checkpoints),
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,  # what a save cut short left
            save_decision_policy=policies.AnySavePolicy(self.policies),
        )
        self._m = None  # made on first use: a refused run creates no folder

    @property
    def mngr(self) -> ocp.CheckpointManager:
        if self._m is None:
            self._m = ocp.CheckpointManager(
                self.directory, options=self._options, item_names=("state", "progress")
            )
        return self._m

    def steps(self) -> list[int]:
        """The saved steps; [] only when provably none (no ``checkpoints``, or only saves cut
        short in it): a listing that fails or finds no step among entries is an error."""
        d = self.directory
        with storage_errors("cannot list the checkpoints in", d, "nothing was changed"):
            if not d.exists():
                return []
            if not d.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            steps = list(self.mngr.all_steps())
            # A save cut short: orbax's temporary folder (which it removes in the background).
            cut_short = lambda p: ocp.path.step.is_tmp_checkpoint(p) or not p.exists()
            if not steps and not all(map(cut_short, d.iterdir())):
                raise OSError(errno.EIO, "it holds entries but no checkpoint orbax can list")
        return steps

    def should_save(self, step: int) -> bool:
        """Whether ``checkpoint_every_steps``/``_minutes`` asks for a save at ``step``."""
        return bool(self.policies) and self.mngr.should_save(step)

    def save(self, step: int, state, progress: dict) -> None:
        """Saves ``state`` and the JSON ``progress`` as ``step``, then its digest."""
        what = f"cannot save the checkpoint of step {step} in"
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
        )
        kept = "the previous checkpoint is kept"
        with storage_errors(what, self.directory, kept), _held_stderr():
            try:
                self.mngr.save(step, args=args, force=True)
                self.mngr.wait_until_finished()
            except BaseException:
                self.close()  # a manager that failed mid-save is not reused
                raise
        if jax.process_index() == 0:
            step_dir = self.directory / str(step)
            write(step_dir / DIGEST_FILE, dumps({"sha256": checkpoint_digest(step_dir)}))

    def restore(self, like, describe=str):
        """(state, progress, step) of the newest intact checkpoint, or ``(like, {}, 0)``."""
        for step in reversed(self.steps()):
            where = f"the checkpoint of {describe(step)} in {self.directory}"
            try:
                return (*self._restore(step, like), step)
            except _Damaged as e:
                self._quarantine(step)
                older = [s for s in self.steps() if s < step]
                then = f"falling back to {describe(older[-1])}" if older else "starting afresh"
                msg = f"warning: {where} is damaged ({e}); moved to corrupt_checkpoints/, {then}"
                print(msg, file=sys.stderr, flush=True)
            except Exception as e:  # not proven damage: stop loudly, move nothing
                self.close()
                raise StorageError(
                    f"cannot read {where} ({first_line(e)}); nothing was moved or deleted: "
                    "fix the storage, then rerun to resume"
                ) from e
        return like, {}, 0

    def _restore(self, step: int, like):
        step_dir = self.directory / str(step)
        verified = (step_dir / DIGEST_FILE).exists()
        if verified:
            try:
                expected = json.loads((step_dir / DIGEST_FILE).read_text())["sha256"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise _Damaged(f"unreadable {DIGEST_FILE}: {first_line(e)}") from e
            actual = checkpoint_digest(step_dir)  # an OSError here proves nothing
            bad = sorted(k for k in {*actual, *expected} if actual.get(k) != expected.get(k))
            if bad:
                raise _Damaged(f"digest mismatch in {', '.join(bad[:3])}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
        )
        try:
            out = self.mngr.restore(step, args=args)
        except Exception as e:  # undecodable files of an unverified checkpoint are damage
            if verified or isinstance(e, (OSError, TimeoutError)):
                raise
            raise _Damaged(first_line(e)) from e
        if not verified and not bool(parallel.to_host(all_finite(out["state"]))):
            raise _Damaged(f"no {DIGEST_FILE} and non-finite values")
        return out["state"], dict(out["progress"] or {})

    def _quarantine(self, step: int) -> None:
        self.close()
        if jax.process_index() == 0:
            root = self.directory.parent / "corrupt_checkpoints"
            with storage_errors("cannot move aside", self.directory / str(step)):
                root.mkdir(parents=True, exist_ok=True)
                dest, i = root / str(step), 1
                while dest.exists():
                    dest, i = root / f"{step}.{i}", i + 1
                (self.directory / str(step)).rename(dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("cce_jax quarantine")

    def close(self) -> None:
        if self._m is not None:
            with contextlib.suppress(Exception):
                self._m.close()
            self._m = None
