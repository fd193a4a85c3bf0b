"""A run's workdir: lock, config contract, atomic strict-JSON files and checkpoints.

Files (process 0 writes them, each atomically: written to a temporary file, fsynced, renamed):

* ``.lock``: an exclusive ``fcntl`` lock held while a run uses the workdir (the kernel drops it
  when the process dies, so a killed run leaves no stale lock); it holds the owner's pid.
* ``config.json``: the config the workdir belongs to, written before the first checkpoint and
  compared on every resume (:func:`cce_jax.training.config.config_diff`).
* ``metrics.jsonl`` (one strict-JSON row per epoch), ``summary.json``, ``failure.json``
  (a diverged run), ``confusion_matrix.csv``.
* ``checkpoints/<epoch>/``: orbax checkpoints of the train state. An unreadable newest
  checkpoint is moved to ``corrupt_checkpoints/`` and the newest intact one is used.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import sys
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


def atomic_write(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


class Checkpoints:
    """Orbax checkpoints of a train state, one per saved epoch, with a corrupt-file fallback."""

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
            self._m = self._manager()
        return self._m

    def _manager(self):
        ocp = self._ocp
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, create=True, enable_async_checkpointing=False
            ),
        )

    def steps(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore_latest(self, like):
        """(state, epoch) of the newest checkpoint that restores, or (like, 0) if none.

        An unreadable checkpoint is reported in one line, moved to ``corrupt_checkpoints/``
        (kept, not deleted) and the next older one is tried.
        """
        import jax

        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
        for step in reversed(self.steps()):
            try:
                state = self._mngr.restore(step, args=self._ocp.args.StandardRestore(abstract))
                return state, step
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                self._quarantine(step)
                others = [s for s in self.steps() if s < step]
                then = f"falling back to epoch {others[-1]}" if others else "starting from scratch"
                print(
                    f"warning: the checkpoint of epoch {step} in {self.directory} is unreadable "
                    f"({_first_line(e)}); moved to corrupt_checkpoints/, {then}",
                    file=sys.stderr,
                    flush=True,
                )
        return like, 0

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

    def save(self, epoch: int, state) -> None:
        self._mngr.save(int(epoch), args=self._ocp.args.StandardSave(state))
        self._mngr.wait_until_finished()

    def close(self) -> None:
        if self._m is not None:
            self._m.wait_until_finished()
            self._m.close()
            self._m = None
