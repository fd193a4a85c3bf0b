"""A run's workdir: lock, config contract, strict-JSON files and checkpoints.

The workdir is a local folder or a bucket (``gs://BUCKET/run``; also ``s3://``, ``az://``):
every file of the project goes through ``etils.epath``, the path layer orbax uses for the
checkpoints, and through the helpers of this module.

Files (process 0 writes them, each atomically):

* ``.lock`` (local): an exclusive ``fcntl`` lock held while a run uses the workdir (the kernel
  drops it when the process dies, so a killed run leaves no stale lock); it holds the owner's
  pid. ``lock.json`` (bucket): a lease, see :class:`WorkdirLock`.
* ``config.json``: the config the workdir belongs to, written before the first checkpoint and
  compared on every resume (:func:`cce_jax.training.config.config_diff`).
* ``metrics.jsonl`` (one strict-JSON row per epoch), ``summary.json``, ``failure.json``
  (a diverged run).
* ``checkpoints/<step>/``: orbax checkpoints of the train state with a digest
  (:class:`Checkpoints`). A damaged newest checkpoint is moved to ``corrupt_checkpoints/``
  and the newest intact one is used; a read error that proves no damage stops the run.

Atomic writes: in a local folder a file is written to a temporary file in the same folder,
fsynced and renamed over the old one (``os.replace``). In a bucket a file is one object,
uploaded whole when it is closed: a reader sees the old object or the new one, never a part,
and a failed upload leaves the old object (no temporary object and no rename: an object
store's rename is a copy and a delete, no more atomic than the upload itself).

A failed write raises :class:`StorageError`, one line naming the path and the cause; in a
bucket, so does a failed read or listing (a missing file stays ``FileNotFoundError``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from typing import Any

from etils import epath

from cce_jax.training.config import ConfigError, config_diff

__all__ = [
    "is_remote",
    "resolve_workdir",
    "exists",
    "isdir",
    "listdir",
    "makedirs",
    "remove",
    "read_text",
    "WorkdirLock",
    "check_lease",
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
# What a bucket's client says for a refused request (tf.io.gfile, gcsfs/fsspec, tensorstore).
_REFUSED_MARKERS = ("PermissionDenied", "PERMISSION_DENIED", "Forbidden", " 403", "AccessDenied")


def storage_error(e: BaseException, what: str, path: str) -> StorageError:
    """A one-line :class:`StorageError`: ``"{what} {path}: {cause}; {what to do}"``."""
    code, text = getattr(e, "errno", None), str(e)
    code = code if isinstance(code, int) else None
    if code in _NO_SPACE or "No space left" in text or "Disk quota" in text:
        cause = "no space left on device"
        todo = "free space (or use another --workdir), then rerun to resume"
    elif (
        code in _NOT_WRITABLE
        or "Read-only file system" in text
        or "ermission denied" in text
        or any(m in f"{type(e).__name__} {text}" for m in _REFUSED_MARKERS)
    ):
        cause = f"not writable ({_first_line(e)})"
        todo = "make it writable or use another --workdir"
    else:
        cause, todo = _first_line(e), "check the storage, then rerun to resume"
    return StorageError(code, f"{what} {path!r}: {cause}; {todo}")


# ------------------------------------------------------------------------------ paths
# A path is a string: a local path or a bucket URL (os.path.join works on both). Local paths
# keep the os semantics they always had; a bucket path goes through etils.epath, whose
# failures (a tf.errors.OpError, a gcsfs HttpError, ...) become one StorageError line.

_BUCKET_SCHEMES = ("gs://", "s3://", "az://")
_ANY_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
    """True for a bucket URL (``gs://``, ``s3://``, ``az://``), False for a local path."""
    return os.fspath(path).startswith(_BUCKET_SCHEMES)


def resolve_workdir(workdir) -> str:
    """An absolute local path, or the bucket URL unchanged (``os.path.abspath`` would turn
    ``gs://b/run`` into ``$PWD/gs:/b/run``). Another URL scheme is a :class:`ConfigError`."""
    text = os.fspath(workdir)
    if is_remote(text):
        return text.rstrip("/")
    if _ANY_SCHEME.match(text):
        raise ConfigError(
            f"workdir {text!r}: unsupported URL scheme; use a local folder or a bucket "
            f"({', '.join(s + 'BUCKET/PATH' for s in _BUCKET_SCHEMES)})"
        )
    return os.path.abspath(text)


@contextlib.contextmanager
def _bucket_errors(what: str, path):
    """In a bucket, any failure but a missing file (and a StorageError) becomes a one-line
    :class:`StorageError`; a local path's errors pass as they are."""
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except Exception as e:
        if not is_remote(path):
            raise
        raise storage_error(e, what, os.fspath(path)) from e


def exists(path) -> bool:
    with _bucket_errors("cannot read", path):
        return epath.Path(path).exists()


def isdir(path) -> bool:
    with _bucket_errors("cannot read", path):
        return epath.Path(path).is_dir()


def listdir(path) -> list[str]:
    """The names in a folder (a bucket "folder": the names under the prefix)."""
    with _bucket_errors("cannot list", path):
        return sorted(p.name for p in epath.Path(path).iterdir())


def makedirs(path) -> None:
    """``mkdir -p`` (in a bucket: a folder marker, harmless where folders do not exist)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    try:
        epath.Path(path).mkdir(parents=True, exist_ok=True)
    except Exception as e:
        raise OSError(getattr(e, "errno", None), _first_line(e)) from e


def remove(path) -> None:
    """Removes a file; a missing one is no error."""
    with _bucket_errors("cannot remove", path):
        epath.Path(path).unlink(missing_ok=True)


def read_text(path) -> str:
    with _bucket_errors("cannot read", path):
        return epath.Path(path).read_text()


def read_bytes(path) -> bytes:
    with _bucket_errors("cannot read", path):
        return epath.Path(path).read_bytes()


def atomic_write(path: str, data: str | bytes) -> None:
    """Writes ``data`` to ``path`` atomically: locally via a temporary file in the same folder
    and a rename; in a bucket as one object upload (see the module docstring).

    Raises :class:`StorageError` (one line) when the write fails; the old file stays."""
    mode = "wb" if isinstance(data, bytes) else "w"
    if is_remote(path):
        try:
            with epath.Path(path).open(mode) as f:
                f.write(data)
        except Exception as e:
            raise storage_error(e, "cannot write", path) from e
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            f.write(data)
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
    return json.loads(read_text(path))


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    if not exists(path):
        return []
    rows = []
    for line in read_text(path).splitlines():
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
    """The workdir's lock, held for a run's lifetime; a second run gets a :class:`ConfigError`.

    Local folder: an exclusive ``fcntl.flock`` on ``workdir/.lock`` naming the owner's pid. The
    lock dies with its process, so a workdir of a killed run is free again at once.

    Bucket (``gs://...``): a lease, ``workdir/lock.json`` (host, pid, a unique token, the time
    of its last refresh), since an object store has no lock that dies with its process:

    * taking it: refused while the lease is fresh (refreshed less than :data:`LEASE_SECONDS`
      ago); a stale lease (or one whose process provably died: the same machine, the same pid
      namespace, no such pid) is taken over with one warning line. The new lease is written,
      read back after :data:`LEASE_SETTLE_SECONDS`, and the start is refused if another start's
      token replaced it meanwhile;
    * holding it: a thread rewrites it every :data:`LEASE_REFRESH_SECONDS`, and every
      checkpoint save first checks and refreshes it (:func:`check_lease`); a run whose lease
      was taken over (it stalled beyond :data:`LEASE_SECONDS`) stops with a
      :class:`StorageError` before its next checkpoint;
    * leaving (normal end, an error, SIGTERM): ``lock.json`` is deleted, so the next run
      starts at once. After a ``kill -9`` or a lost VM the lease stays until it is stale
      (or delete ``lock.json`` by hand when that run is known to be gone).

    Not protected: there is no atomic create-if-absent through ``etils.epath``, so two starts
    whose check and write interleave (both read no fresh lease, then both write; in practice
    starts within the same second, with one taking longer than the settle time between its
    read and its write) can both win; so can two runs whose clocks differ by more than the
    lease time (the lease's age is measured against the reader's clock). Only process 0 takes
    the lease: the lease keeps a second *run* out, not a process of the same run.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.remote = is_remote(workdir)
        self.path = os.path.join(workdir, LEASE_FILE if self.remote else ".lock")
        self._fd = None
        self._lease = None

    def __enter__(self):
        if self.remote:
            lease = _Lease(self.workdir, self.path)
            lease.acquire()
            self._lease = _LEASES[self.workdir] = lease
            return self
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
        if self._lease is not None:
            if _LEASES.get(self.workdir) is self._lease:
                del _LEASES[self.workdir]
            self._lease.release()
            self._lease = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


LEASE_FILE = "lock.json"
# A bucket workdir's lease is stale (another run may take it over) this long after its last
# refresh; the holder refreshes it every LEASE_REFRESH_SECONDS and before every checkpoint.
LEASE_SECONDS = 120.0
LEASE_REFRESH_SECONDS = 30.0
# How long a start waits between writing its lease and reading it back (a concurrent start
# that wrote meanwhile wins; this one is refused).
LEASE_SETTLE_SECONDS = 1.0
_LEASES: dict[str, _Lease] = {}  # workdir -> the lease this process holds on it


def _read_first(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _machine() -> dict:
    """What tells whether a lease's process is provably dead: this boot of this machine and
    this pid namespace (a container's pids are not the host's)."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = None
    return {"boot_id": _read_first("/proc/sys/kernel/random/boot_id"), "pid_namespace": pidns}


def _pid_alive(pid: int, token) -> bool:
    if pid == os.getpid():  # this process, or an earlier one with the same pid
        return any(lease.token == token for lease in _LEASES.values())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class _Lease:
    """The lease of a bucket workdir (see :class:`WorkdirLock`)."""

    def __init__(self, workdir: str, path: str):
        self.workdir, self.path = workdir, path
        self.token = uuid.uuid4().hex
        self.lost: dict | None = None  # the lease that replaced this one
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._warned = False

    def _record(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "time": time.time(),
            "lease_seconds": LEASE_SECONDS,
            **_machine(),
        }

    def _read(self) -> dict | None:
        """The lease now in the bucket, or None (none, or not a lease: replaced)."""
        try:
            held = json.loads(read_text(self.path))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return held if isinstance(held, dict) else None

    def _write(self) -> None:
        atomic_write(self.path, dumps(self._record()))

    def _who(self, held: dict) -> str:
        who = f"host {held.get('host', '?')}, pid {held.get('pid', '?')}"
        try:
            return f"{who}, lease refreshed {time.time() - float(held['time']):.0f} s ago"
        except (KeyError, TypeError, ValueError):
            return who

    def _stale(self, held: dict) -> bool:
        try:
            age = time.time() - float(held["time"])
            limit = float(held.get("lease_seconds", LEASE_SECONDS))
        except (KeyError, TypeError, ValueError):
            return True  # not a lease this code wrote
        if not age < limit:
            return True
        here = _machine()
        same = here["boot_id"] and all(held.get(k) == v for k, v in here.items())
        return bool(same) and not _pid_alive(int(held.get("pid", -1)), held.get("token"))

    def acquire(self) -> None:
        try:
            held = self._read()
            if held is not None and not self._stale(held):
                limit = float(held.get("lease_seconds", LEASE_SECONDS))
                raise ConfigError(
                    f"workdir {self.workdir!r} is in use by another run ({self._who(held)}; "
                    f"its {LEASE_FILE} goes stale {limit:g} s after its last refresh); "
                    "wait for it or use another --workdir"
                )
            if held is not None:
                print(
                    f"warning: taking over the stale lease of workdir {self.workdir!r} "
                    f"({self._who(held)})",
                    file=sys.stderr,
                    flush=True,
                )
            self._write()
            time.sleep(LEASE_SETTLE_SECONDS)
            now = self._read()
        except StorageError as e:
            raise ConfigError(f"workdir {self.workdir!r} is not usable ({e})") from None
        if now is None or now.get("token") != self.token:
            other = f" ({self._who(now)})" if now else ""
            raise ConfigError(
                f"workdir {self.workdir!r} is in use by another run that started at the same "
                f"time{other}; wait for it or use another --workdir"
            )
        self._thread = threading.Thread(target=self._keep, name="workdir-lease", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Rewrites the lease's time, unless another run's token replaced it (then
        :attr:`lost` holds that lease and nothing is written)."""
        with self._mu:
            if self.lost is not None:
                return
            held = self._read()
            if held is not None and held.get("token") != self.token:
                self.lost = held
                return
            self._write()

    def _keep(self) -> None:
        while not self._stop.wait(LEASE_REFRESH_SECONDS):
            try:
                self.refresh()
            except Exception as e:  # a transient failure: the next refresh may work
                if not self._warned:
                    self._warned = True
                    print(
                        f"warning: cannot refresh the lease {self.path} ({_first_line(e)}); "
                        "retrying",
                        file=sys.stderr,
                        flush=True,
                    )
            if self.lost is not None:
                return

    def check(self, doing: str) -> None:
        """Refreshes the lease; a :class:`StorageError` when another run took it over."""
        try:
            self.refresh()
        except StorageError:
            pass  # the bucket failed: the write that follows reports it
        if self.lost is not None:
            raise StorageError(
                None,
                f"workdir {self.workdir!r}: another run took its lease over "
                f"({self._who(self.lost)}) after this run's lease went stale; stopped before "
                f"{doing}: stop one of the two runs, then rerun to resume",
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._mu, contextlib.suppress(Exception):
            held = self._read()
            if self.lost is None and (held is None or held.get("token") == self.token):
                remove(self.path)


def check_lease(workdir: str, doing: str) -> None:
    """For a bucket workdir whose lease this process holds: refreshes it, or raises a
    :class:`StorageError` when another run has taken it over. A no-op otherwise."""
    lease = _LEASES.get(workdir)
    if lease is not None:
        lease.check(doing)


def check_stored_config(workdir: str, config_dict: dict, *, has_checkpoint: bool) -> bool:
    """Compares the requested config with the workdir's ``config.json``.

    Returns True when the workdir already holds this config. Raises :class:`ConfigError`
    when it holds another one, or checkpoints without a ``config.json`` (they cannot be
    checked, so they are never resumed under a guessed config).
    """
    path = os.path.join(workdir, "config.json")
    if not exists(path):
        if has_checkpoint:
            raise ConfigError(
                f"workdir {workdir!r} holds checkpoints but no config.json, so the config they "
                "were trained with cannot be checked; use another --workdir"
            )
        return False
    try:
        stored = read_json(path)
    except StorageError:
        raise  # a bucket that failed: a storage error, not a config problem
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
_GCS_COMMIT_FILE = "commit_success.txt"  # orbax's mark of a finished save in GCS
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
    top = epath.Path(step_dir)
    with _bucket_errors("cannot read", step_dir):
        for root, dirs, files in top.walk():
            dirs.sort()
            for name in sorted(files):
                path = root / name
                rel = path.relative_to(top).as_posix()
                if rel == DIGEST_FILE:
                    continue
                h = hashlib.sha256()
                with path.open("rb") as f:
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

    In a bucket orbax writes the checkpoint itself (its own atomicity: in GCS a commit marker,
    ``commit_success.txt``, instead of a folder rename; a step folder without it is a save cut
    short, not listed by :meth:`steps`, and orbax removes it); the digest, the listing and the
    move to ``corrupt_checkpoints/`` (a copy and a delete of each object) go through
    ``etils.epath``. Before each save, process 0 checks the workdir's lease
    (:func:`check_lease`).
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
        if not isdir(self.directory):
            return []
        steps = sorted(int(n) for n in listdir(self.directory) if n.isdigit())
        if self.directory.startswith("gs://"):  # orbax's GCS commit marker: a finished save
            done = os.path.join(self.directory, "{}", _GCS_COMMIT_FILE)
            steps = [s for s in steps if exists(done.format(s))]
        return steps

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
        if exists(digest_path):
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
        legacy = isdir(os.path.join(step_dir, "default"))
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
            src = os.path.join(self.directory, str(step))
            with _bucket_errors("cannot move aside", src):
                makedirs(dest_root)
                dest, i = os.path.join(dest_root, str(step)), 1
                while exists(dest):
                    dest, i = os.path.join(dest_root, f"{step}.{i}"), i + 1
                if is_remote(src):  # a bucket's rename: a copy and a delete of every object
                    epath.Path(src).rename(dest)
                else:
                    shutil.move(src, dest)

    def save(self, step: int, state, progress: dict | None = None) -> None:
        """Saves ``state`` (and the JSON ``progress``) as checkpoint ``step``, then its digest."""
        import jax

        ocp = self._ocp
        if jax.process_index() == 0:
            check_lease(self.workdir, f"saving the checkpoint of step {int(step)}")
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
            with contextlib.suppress(Exception):
                for tmp in epath.Path(self.directory).glob(f"{int(step)}.orbax-checkpoint-tmp*"):
                    if is_remote(self.directory):
                        with contextlib.suppress(Exception):
                            tmp.rmtree()
                    else:
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
