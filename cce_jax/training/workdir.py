"""A run's workdir: lock, config contract, atomic strict-JSON files and checkpoints.

Files (process 0 writes them, each atomically: written to a temporary file, fsynced, renamed):

* ``.lock``: an exclusive ``fcntl`` lock held while a run uses the workdir (the kernel drops it
  when the process dies, so a killed run leaves no stale lock); it holds the owner's pid.
* ``config.json``: the config the workdir belongs to, written before the first checkpoint and
  compared on every resume (:func:`cce_jax.training.config.config_diff`).
* ``metrics.jsonl`` (one strict-JSON row per epoch), ``summary.json``, ``failure.json``
  (a diverged run).
* ``checkpoints/<step>/``: orbax checkpoints of the train state with a digest
  (:class:`Checkpoints`). A damaged newest checkpoint is moved to ``corrupt_checkpoints/``
  and the newest intact one is used; a read error that proves no damage stops the run.

A failed write raises :class:`StorageError`, one line naming the path and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Any

from cce_jax.training.config import ConfigError, config_diff

__all__ = [
    "WorkdirLock",
    "atomic_write",
    "dumps",
    "write_json",
    "read_json",
    "read_jsonl",
    "write_jsonl",
    "check_stored_config",
    "store_config",
    "Checkpoints",
    "CheckpointUnreadable",
    "StorageError",
    "storage_error",
    "checkpoint_digest",
]


def _strict(x):
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return _strict(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dumps(obj: Any, indent: int = 2) -> str:
    """Strict JSON (no NaN/Infinity: they become null); a list of scalars stays on one line,
    a list of lists gets one line per row, so summaries stay readable."""

    def enc(x, level):
        pad, inner = " " * (indent * level), " " * (indent * (level + 1))
        if isinstance(x, dict):
            if not x:
                return "{}"
            items = [f"{inner}{json.dumps(k)}: {enc(v, level + 1)}" for k, v in sorted(x.items())]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, list) and any(isinstance(v, (dict, list)) for v in x):
            return "[\n" + ",\n".join(inner + enc(v, level + 1) for v in x) + "\n" + pad + "]"
        return json.dumps(x, allow_nan=False)

    return enc(_strict(obj), 0) + "\n"


class StorageError(OSError):
    """Writing or reading the workdir failed (disk full, read-only, permission, I/O). The
    message is one line naming the path, the cause and what to do; nothing is half-written."""

    def __str__(self):
        return self.strerror if self.strerror is not None else super().__str__()


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(e: BaseException, what: str, path: str) -> StorageError:
    """A one-line :class:`StorageError`: ``"{what} {path}: {cause}; {what to do}"``."""
    code, text = getattr(e, "errno", None), str(e)
    if code in _NO_SPACE or "No space left" in text or "Disk quota" in text:
        cause = "no space left on device"
        todo = "free space (or use another --workdir), then rerun to resume"
    elif code in _NOT_WRITABLE or "Read-only file system" in text or "ermission denied" in text:
        cause = f"not writable ({_first_line(e)})"
        todo = "make it writable or use another --workdir"
    else:
        cause, todo = _first_line(e), "check the storage, then rerun to resume"
    return StorageError(code, f"{what} {path!r}: {cause}; {todo}")


def atomic_write(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file in the same folder and a rename.

    Raises :class:`StorageError` (one line) when the write fails; the old file stays."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise storage_error(e, "cannot write", path) from e
    finally:
        with contextlib.suppress(OSError):
            if os.path.exists(tmp):
                os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    atomic_write(path, dumps(obj))


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    atomic_write(
        path, "".join(json.dumps(_strict(r), sort_keys=True, allow_nan=False) + "\n" for r in rows)
    )


class WorkdirLock:
    """An exclusive lock on ``workdir/.lock`` (``fcntl.flock``), held for a run's lifetime.

    A second run in the same workdir gets a :class:`ConfigError` naming the owner's pid. The
    lock dies with its process, so a workdir of a killed run is free again at once.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._fd = None

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(
                f"workdir {os.path.dirname(self.path)!r} is not usable ({_first_line(e)}); "
                "use a writable --workdir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"workdir {os.path.dirname(self.path)!r} is in use by another run "
                    f"(pid {owner}); "
                    "wait for it or use another --workdir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_stored_config(workdir: str, config_dict: dict, *, has_checkpoint: bool) -> bool:
    """Compares the requested config with the workdir's ``config.json``.

    Returns True when the workdir already holds this config. Raises :class:`ConfigError`
    when it holds another one, or checkpoints without a ``config.json`` (they cannot be
    checked, so they are never resumed under a guessed config).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        if has_checkpoint:
            raise ConfigError(
                f"workdir {workdir!r} holds checkpoints but no config.json, so the config they "
                "were trained with cannot be checked; use another --workdir"
            )
        return False
    try:
        stored = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"workdir {workdir!r}: config.json is unreadable ({e})") from e
    diff = config_diff(stored, config_dict)
    if diff:
        raise ConfigError(
            f"workdir {workdir!r} holds a run of another config (only run-control keys may "
            "change on resume):\n  " + "\n  ".join(diff)
        )
    return True


def store_config(workdir: str, config_dict: dict) -> None:
    write_json(os.path.join(workdir, "config.json"), config_dict)


class CheckpointUnreadable(StorageError):
    """A checkpoint not proven damaged could not be read (an I/O error, a permission, a
    timeout), even after retries. Nothing was moved aside: fix the cause and rerun."""


class _Damaged(Exception):
    """Proof that a checkpoint's bytes are wrong: a digest mismatch or undecodable files."""


# Seconds to wait before each retry of a checkpoint read that failed without proof of damage
# (a network file system's transient EIO, a timeout).
RESTORE_RETRY_DELAYS = (1.0, 4.0, 15.0)
DIGEST_FILE = "digest.json"
# Errors that say nothing about a checkpoint's bytes (orbax/tensorstore wrap them in
# ValueError/RuntimeError carrying an absl status name).
_TRANSIENT_MARKERS = (
    "PERMISSION_DENIED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "Input/output error",
    "Permission denied",
    "timed out",
)


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False  # a missing file of a finished checkpoint is damage
    if isinstance(e, (OSError, TimeoutError)):
        return True
    return any(m in str(e) for m in _TRANSIENT_MARKERS)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def checkpoint_digest(step_dir: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of a checkpoint but the digest itself."""
    out = {}
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == DIGEST_FILE:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out


class Checkpoints:
    """Orbax checkpoints of a train state, named by global step, each with a digest.

    ``checkpoints/<step>/`` holds ``state/`` (the train state), ``progress/`` (JSON: the
    per-step metrics of a partly trained epoch) and ``digest.json`` (the sha256 of every other
    file, written when orbax has finished the checkpoint). :meth:`restore_latest` verifies the
    digest. Proven damage (a digest mismatch, a missing file, files orbax cannot decode) is
    reported in one line, moved to ``corrupt_checkpoints/`` (kept, not deleted) and the next
    older checkpoint is used. Any other error (I/O, permission, timeout) is retried after
    :data:`RESTORE_RETRY_DELAYS`, then raises :class:`CheckpointUnreadable`, nothing moved.
    """

    def __init__(self, workdir: str, *, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.workdir = workdir
        self.directory = os.path.join(workdir, "checkpoints")
        self._keep = int(keep)
        self._m = None  # made on first use: a refused run creates no folder

    @property
    def _mngr(self):
        if self._m is None:
            ocp = self._ocp
            self._m = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=self._keep,
                    create=True,
                    enable_async_checkpointing=False,
                    cleanup_tmp_directories=True,  # what a save killed half-way left
                ),
                item_names=("state", "progress"),
            )
        return self._m

    def steps(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore_latest(self, like, describe=str):
        """(state, progress, step) of the newest intact checkpoint, or ``(like, {}, 0)``.

        ``describe(step)`` names a checkpoint in messages (e.g. ``"epoch 2"``).
        """
        for step in reversed(self.steps()):
            for delay in (*RESTORE_RETRY_DELAYS, None):
                try:
                    state, progress = self._restore(step, like)
                    return state, progress, step
                except _Damaged as e:
                    self._quarantine(step)
                    older = [s for s in self.steps() if s < step]
                    then = (
                        f"falling back to {describe(older[-1])}"
                        if older
                        else "starting from scratch"
                    )
                    print(
                        f"warning: the checkpoint of {describe(step)} in {self.directory} is "
                        f"damaged ({e}); moved to corrupt_checkpoints/, {then}",
                        file=sys.stderr,
                        flush=True,
                    )
                    break
                except Exception as e:  # not proven damage: retry, then stop loudly
                    if delay is None:
                        self.close()
                        raise CheckpointUnreadable(
                            f"cannot read the checkpoint of {describe(step)} in "
                            f"{self.directory} ({_first_line(e)}; tried "
                            f"{len(RESTORE_RETRY_DELAYS) + 1} times); nothing was moved or "
                            "deleted: fix the storage, then rerun to resume"
                        ) from e
                    print(
                        f"warning: reading the checkpoint of {describe(step)} failed "
                        f"({_first_line(e)}); retrying in {delay:g} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(delay)
        return like, {}, 0

    def _restore(self, step: int, like):
        import jax

        ocp = self._ocp
        step_dir = os.path.join(self.directory, str(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        verified = False
        digest_path = os.path.join(step_dir, DIGEST_FILE)
        if os.path.exists(digest_path):
            try:
                expected = read_json(digest_path)["sha256"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise _Damaged(f"unreadable {DIGEST_FILE}: {_first_line(e)}") from e
            actual = checkpoint_digest(step_dir)  # an OSError here proves nothing
            if actual != expected:
                bad = sorted(
                    k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k)
                )
                raise _Damaged(f"digest mismatch in {', '.join(bad[:3])}")
            verified = True
        legacy = os.path.isdir(os.path.join(step_dir, "default"))
        try:
            if legacy:  # written before checkpoints had a progress item
                state = ocp.StandardCheckpointer().restore(
                    os.path.join(step_dir, "default"), abstract
                )
                return state, {}
            out = self._mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
                ),
            )
            return out["state"], dict(out["progress"] or {})
        except Exception as e:
            if verified or _is_transient(e):
                raise
            raise _Damaged(_first_line(e)) from e

    def _quarantine(self, step: int) -> None:
        import jax

        self.close()
        if jax.process_index() == 0:
            dest_root = os.path.join(self.workdir, "corrupt_checkpoints")
            os.makedirs(dest_root, exist_ok=True)
            dest, i = os.path.join(dest_root, str(step)), 1
            while os.path.exists(dest):
                dest, i = os.path.join(dest_root, f"{step}.{i}"), i + 1
            shutil.move(os.path.join(self.directory, str(step)), dest)

    def save(self, step: int, state, progress: dict | None = None) -> None:
        """Saves ``state`` (and the JSON ``progress``) as checkpoint ``step``, then its digest."""
        import jax

        ocp = self._ocp
        try:
            self._mngr.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress or {})
                ),
            )
            self._mngr.wait_until_finished()
        except Exception as e:
            if not (isinstance(e, OSError) or _is_transient(e) or "No space left" in str(e)):
                raise
            self._m = None  # a manager that failed mid-save is not reused
            for tmp in glob.glob(
                os.path.join(self.directory, f"{int(step)}.orbax-checkpoint-tmp*")
            ):
                shutil.rmtree(tmp, ignore_errors=True)
            err = storage_error(
                e, f"cannot save the checkpoint of step {int(step)} in", self.directory
            )
            raise StorageError(err.errno, f"{err}; the previous checkpoint is kept") from e
        if jax.process_index() == 0:
            step_dir = os.path.join(self.directory, str(int(step)))
            write_json(os.path.join(step_dir, DIGEST_FILE), {"sha256": checkpoint_digest(step_dir)})

    def close(self) -> None:
        if self._m is not None:
            self._m.wait_until_finished()
            self._m.close()
            self._m = None
