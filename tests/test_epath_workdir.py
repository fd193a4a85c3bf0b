"""Workdirs in a bucket: ``--workdir=gs://BUCKET/run`` through ``etils.epath``.

``gs://`` is mapped onto a temporary folder with ``etils.epath.testing.mock_epath`` (every
epath call of the project, and orbax's, sees ``gs://...`` names and lands in the folder).
Orbax writes its arrays with tensorstore, which talks to GCS itself and ignores the mock:
``orbax.checkpoint.CheckpointManager`` is handed the mapped local folder instead (with the
commit-file atomicity orbax uses in GCS), so the project's own checkpoint files (the listing
of steps, ``digest.json``, its verification, ``corrupt_checkpoints/``) go through ``gs://``
names while orbax's bytes are written locally.
"""

import dataclasses
import errno
import json
import os
import subprocess
import sys
import threading
import time
from unittest import mock

import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing
from test_training import FakeData, small_config

from cce_jax import training
from cce_jax.training import workdir as wd

RUN = "gs://bucket/run"


class Bucket:
    """``gs://NAME/...`` <-> ``root/NAME/...`` for the mocked epath backend."""

    def __init__(self, root):
        self.root = str(root)
        self.fail = None  # fail(op, path, *args) -> an exception to raise, or None

    def local(self, p):
        p = os.fspath(p)
        return os.path.join(self.root, p[len("gs://") :]) if p.startswith("gs://") else p

    def url(self, p):
        p = os.fspath(p)
        return "gs://" + os.path.relpath(p, self.root) if p.startswith(self.root + os.sep) else p

    def _maybe_fail(self, op, path, *args):
        if self.fail is not None and os.fspath(path).startswith("gs://"):
            e = self.fail(op, os.fspath(path), *args)
            if e is not None:
                raise e

    def fns(self):
        def one(op):
            def fn(orig, path, *a, **k):
                self._maybe_fail(op, path, *a)
                if op == "open" and a[0].startswith("w") and os.fspath(path).startswith("gs://"):
                    os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)  # no folders
                return orig(self.local(path), *a, **k)

            return fn

        def two(op):
            def fn(orig, src, dst, *a, **k):
                self._maybe_fail(op, src, dst)
                return orig(self.local(src), self.local(dst), *a, **k)

            return fn

        def walk(orig, top, **k):  # a gs:// walk yields gs:// names
            self._maybe_fail("walk", top)
            back = self.url if os.fspath(top).startswith("gs://") else os.fspath
            for root, dirs, files in orig(self.local(top), **k):
                yield back(root), dirs, files

        def glob(orig, pattern):
            back = self.url if os.fspath(pattern).startswith("gs://") else os.fspath
            return [back(p) for p in orig(self.local(pattern))]

        names = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree")
        return {
            **{n: one(n) for n in names},
            "stat": one("stat"),
            "walk": walk,
            "glob": glob,
            **{n: two(n) for n in ("rename", "replace", "copy")},
        }


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    b = Bucket(tmp_path / "gcs")
    os.makedirs(b.local("gs://bucket"))
    monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would show up here
    monkeypatch.setattr(wd, "LEASE_SETTLE_SECONDS", 0.0)
    real_manager = ocp.CheckpointManager
    managers = []

    def manager(directory, *a, options, **k):  # tensorstore does not see the mock
        managers.append(os.fspath(directory))
        # Orbax writes the mapped folder as it writes GCS: in place, with commit_success.txt.
        commit = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
        options = dataclasses.replace(options, atomicity_options=commit)
        return real_manager(b.local(directory), *a, options=options, **k)

    monkeypatch.setattr(ocp, "CheckpointManager", manager)
    b.managers = managers
    # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the mocked backends.
    with (
        mock.patch.object(gpath, "_is_tf_installed", lambda: False),
        epath_testing.mock_epath(**b.fns()),
    ):
        yield b
    assert not (tmp_path / "gs:").exists()


def _rows(path):
    return [json.loads(x) for x in open(path).read().splitlines()]


def test_a_run_in_a_bucket_writes_its_files_there_and_resumes(bucket, tmp_path):
    data = FakeData()
    out = bucket.local(RUN)
    assert training.train_and_evaluate(small_config(stop_after_epoch=1), RUN, data=data) is None
    assert bucket.managers == [f"{RUN}/checkpoints"]
    assert json.load(open(f"{out}/config.json"))["model"]["width"] == 4
    assert [r["epoch"] for r in _rows(f"{out}/metrics.jsonl")] == [1]
    spe = data.steps_per_epoch
    digest = json.load(open(f"{out}/checkpoints/{spe}/digest.json"))["sha256"]
    assert any(k.startswith("state/") for k in digest)
    assert not os.path.exists(f"{out}/summary.json")
    assert not os.path.exists(f"{out}/lock.json")  # the lease is given back at the end
    assert not [n for n in os.listdir(out) if ".tmp" in n]

    resumed = training.train_and_evaluate(small_config(), RUN, data=data)
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs"] == 3
    assert json.load(open(f"{out}/summary.json"))["test_top1"] == resumed["test_top1"]
    assert os.path.getsize(f"{out}/per_class.png") > 1000
    assert [r["epoch"] for r in _rows(f"{out}/metrics.jsonl")] == [1, 2, 3]
    assert sorted(os.listdir(f"{out}/checkpoints"), key=int) == [str(2 * spe), str(3 * spe)]

    # The same run in a local folder: the same numbers, the same files.
    local = tmp_path / "local"
    ref = training.train_and_evaluate(small_config(), str(local), data=data)
    for key in ("test_top1", "confusion_matrix", "per_class_accuracy", "final_train_loss"):
        assert ref[key] == resumed[key], key
    assert [r["train_loss"] for r in _rows(local / "metrics.jsonl")] == [
        r["train_loss"] for r in _rows(f"{out}/metrics.jsonl")
    ]
    assert sorted(os.listdir(local)) == sorted(os.listdir(out) + [".lock"])

    # A changed config is refused as in a local folder.
    with pytest.raises(training.ConfigError, match="model.width"):
        training.train_and_evaluate(small_config(**{"model.width": 8}), RUN, data=data)


def test_a_damaged_checkpoint_in_a_bucket_is_moved_aside(bucket, capsys):
    data = FakeData()
    out = bucket.local(RUN)
    training.train_and_evaluate(small_config(stop_after_epoch=2), RUN, data=data)
    spe = data.steps_per_epoch
    newest = f"{out}/checkpoints/{2 * spe}"
    victim = max(
        (os.path.join(r, f) for r, _, fs in os.walk(f"{newest}/state") for f in fs),
        key=os.path.getsize,
    )
    blob = bytearray(open(victim, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(blob))
    training.train_and_evaluate(small_config(stop_after_epoch=2), RUN, data=data)
    err = capsys.readouterr().err
    assert "damaged (digest mismatch" in err and "moved to corrupt_checkpoints/" in err
    assert os.listdir(f"{out}/corrupt_checkpoints") == [str(2 * spe)]
    assert sorted(os.listdir(f"{out}/checkpoints"), key=int) == [str(spe), str(2 * spe)]


def test_a_save_cut_short_in_gcs_is_not_a_checkpoint(bucket):
    # In GCS orbax writes checkpoints/<step>/ in place and marks a finished save with
    # commit_success.txt (no folder rename); a folder without it is not a checkpoint.
    ckpts = wd.Checkpoints(RUN, keep=2)
    out = bucket.local(f"{RUN}/checkpoints")
    for step in (4, 8):
        os.makedirs(f"{out}/{step}/state")
    open(f"{out}/4/commit_success.txt", "w").close()
    assert ckpts.steps() == [4] and ckpts.latest() == 4


@pytest.mark.slow  # a vmapped step's compile: ~30 s
def test_seeds_in_a_bucket(bucket):
    summary = training.train_and_evaluate(
        small_config(seeds=(0, 1), num_epochs=1), RUN, data=[FakeData(0), FakeData(1)]
    )
    assert summary["num_seeds"] == 2
    out = bucket.local(RUN)
    for s in (0, 1):
        assert json.load(open(f"{out}/seed_{s}/config.json"))["seed"] == s
        assert os.path.exists(f"{out}/seed_{s}/summary.json")


# ----------------------------------------------------------------------------- the lease


def _lease(path, **fields):
    record = {"host": "elsewhere", "pid": 1, "token": "theirs", "time": time.time()}
    record.update(fields)
    with open(path, "w") as f:
        json.dump(record, f)


def test_a_fresh_lease_refuses_the_run_and_nothing_is_written(bucket):
    out = bucket.local(RUN)
    os.makedirs(out)
    _lease(f"{out}/lock.json", time=time.time() - 5)
    with pytest.raises(
        training.ConfigError, match=r"in use by another run \(host elsewhere, pid 1"
    ):
        training.train_and_evaluate(small_config(), RUN, data=FakeData())
    assert os.listdir(out) == ["lock.json"]
    assert json.load(open(f"{out}/lock.json"))["token"] == "theirs"


def test_a_stale_lease_is_taken_over(bucket, capsys):
    out = bucket.local(RUN)
    os.makedirs(out)
    _lease(f"{out}/lock.json", time=time.time() - wd.LEASE_SECONDS - 1)
    with wd.WorkdirLock(RUN) as lock:
        held = json.load(open(f"{out}/lock.json"))
        assert held["token"] == lock._lease.token and held["pid"] == os.getpid()
        assert set(held) >= {"host", "pid", "token", "time", "lease_seconds"}
        # A second start while it is held is refused.
        with pytest.raises(training.ConfigError, match="in use by another run"):
            with wd.WorkdirLock(RUN):
                pass
    assert "taking over the stale lease" in capsys.readouterr().err
    assert not os.path.exists(f"{out}/lock.json")


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_over_at_once(bucket):
    out = bucket.local(RUN)
    os.makedirs(out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    _lease(f"{out}/lock.json", pid=int(dead.stdout), **wd._machine())
    with wd.WorkdirLock(RUN):
        pass
    # A live process on this machine keeps its lease.
    _lease(f"{out}/lock.json", pid=os.getppid(), **wd._machine())
    with pytest.raises(training.ConfigError, match="in use"):
        with wd.WorkdirLock(RUN):
            pass


def test_two_starts_at_the_same_time_the_later_write_wins(bucket, monkeypatch):
    out = bucket.local(RUN)
    os.makedirs(out)
    real_sleep = time.sleep

    def other_start_writes(seconds):  # during this start's settle time
        _lease(f"{out}/lock.json", token="other")
        real_sleep(seconds)

    monkeypatch.setattr(wd.time, "sleep", other_start_writes)
    with pytest.raises(training.ConfigError, match="started at the same time"):
        with wd.WorkdirLock(RUN):
            pass
    assert json.load(open(f"{out}/lock.json"))["token"] == "other"  # not deleted


def _lease_time(path):
    """The lease's time; retried while the refresh thread is rewriting the file (a bucket
    object is replaced whole, the test bucket's local file is not)."""
    for _ in range(100):
        try:
            with open(path) as f:
                return json.load(f)["time"]
        except json.JSONDecodeError:
            time.sleep(0.01)
    raise AssertionError(f"{path} stayed unreadable")


def test_the_lease_is_refreshed_and_a_lost_lease_stops_the_next_checkpoint(bucket, monkeypatch):
    monkeypatch.setattr(wd, "LEASE_REFRESH_SECONDS", 0.05)
    out = bucket.local(RUN)
    with wd.WorkdirLock(RUN):
        t0 = _lease_time(f"{out}/lock.json")
        deadline = time.time() + 10
        while _lease_time(f"{out}/lock.json") == t0 and time.time() < deadline:
            time.sleep(0.05)
        assert _lease_time(f"{out}/lock.json") > t0
        wd.check_lease(RUN, "saving")  # still ours: refreshed, no error
        # Quiet the refresh thread first: a refresh that read the lease just before the
        # takeover below would rewrite it (the taker's read-back then refuses the taker,
        # a case of its own: test_two_starts_at_the_same_time_the_later_write_wins).
        monkeypatch.setattr(wd, "LEASE_REFRESH_SECONDS", 3600.0)
        time.sleep(0.3)
        _lease(f"{out}/lock.json", token="taker")  # another run took it over
        with pytest.raises(training.StorageError, match="another run took its lease over"):
            wd.check_lease(RUN, "saving the checkpoint of step 8")
    assert json.load(open(f"{out}/lock.json"))["token"] == "taker"  # left to its new owner
    assert not [t for t in threading.enumerate() if t.name == "workdir-lease"]


def test_a_run_whose_lease_was_taken_over_stops_before_its_checkpoint(bucket):
    out = bucket.local(RUN)

    class TakenOver(FakeData):
        def train_epoch(self, epoch):
            for i, batch in enumerate(super().train_epoch(epoch)):
                if i == self.steps_per_epoch - 1:  # another run takes the lease over
                    _lease(f"{out}/lock.json", token="taker")
                yield batch

    with pytest.raises(training.StorageError, match="stopped before saving the checkpoint"):
        training.train_and_evaluate(small_config(), RUN, data=TakenOver())
    assert not os.path.exists(f"{out}/checkpoints/{FakeData().steps_per_epoch}")


# ------------------------------------------------------------------------ storage errors


class PermissionDeniedError(Exception):
    """What tf.io.gfile raises for a 403 (not an OSError)."""


class UnavailableError(Exception):
    """A transient GCS failure of tf.io.gfile."""


def test_bucket_failures_are_one_line_storage_errors(bucket):
    msg = "Error executing an HTTP request: HTTP response code 403: no storage.objects.create"
    bucket.fail = lambda op, path, *a: (
        PermissionDeniedError(msg) if op == "open" and a[:1] == ("w",) else None
    )
    with pytest.raises(wd.StorageError) as e:
        wd.write_json(f"{RUN}/a.json", {"x": 1})
    text = str(e.value)
    assert len(text.splitlines()) == 1 and text.startswith(f"cannot write '{RUN}/a.json': ")
    assert "not writable (PermissionDeniedError" in text

    bucket.fail = lambda op, path, *a: UnavailableError("503 backend") if op == "listdir" else None
    with pytest.raises(wd.StorageError, match="cannot list .*UnavailableError: 503 backend"):
        wd.listdir(RUN)
    bucket.fail = lambda op, path, *a: OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(wd.StorageError, match="no space left on device"):
        wd.atomic_write(f"{RUN}/b.bin", b"\0")
    bucket.fail = None
    assert not wd.exists(f"{RUN}/missing")
    assert wd.read_jsonl(f"{RUN}/missing.jsonl") == []
    with pytest.raises(FileNotFoundError):
        wd.read_json(f"{RUN}/missing.json")
    wd.remove(f"{RUN}/missing.json")  # no error


def test_a_failing_bucket_mid_run_is_a_storage_error(bucket):
    def fail(op, path, *a):
        if op == "open" and path.endswith("metrics.jsonl") and a[:1] == ("w",):
            return UnavailableError("UNAVAILABLE: 503")
        return None

    bucket.fail = fail
    with pytest.raises(training.StorageError) as e:
        training.train_and_evaluate(small_config(), RUN, data=FakeData())
    assert str(e.value).startswith(f"cannot write '{RUN}/metrics.jsonl': UnavailableError")
    assert not os.path.exists(bucket.local(f"{RUN}/lock.json"))


def test_an_unusable_bucket_is_one_config_error(bucket):
    bucket.fail = lambda op, path, *a: (
        PermissionDeniedError("403 Forbidden") if op in ("makedirs", "mkdir") else None
    )
    with pytest.raises(training.ConfigError, match="cannot create the workdir 'gs://bucket/run'"):
        training.train_and_evaluate(small_config(), RUN, data=FakeData())


# ------------------------------------------------------------------------ local paths


def test_local_paths_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert wd.resolve_workdir("runs/a") == str(tmp_path / "runs" / "a")
    assert wd.resolve_workdir("gs://b/run/") == "gs://b/run"
    assert not wd.is_remote("/tmp/gs://x") and wd.is_remote("s3://b/x")
    with pytest.raises(training.ConfigError, match="unsupported URL scheme"):
        wd.resolve_workdir("ftp://host/run")
    replaced = []
    real = os.replace
    monkeypatch.setattr(wd.os, "replace", lambda a, b: (replaced.append((a, b)), real(a, b)))
    wd.atomic_write(str(tmp_path / "x.bin"), b"\x89PNG")
    assert replaced == [(f"{tmp_path}/x.bin.tmp.{os.getpid()}", f"{tmp_path}/x.bin")]
    assert (tmp_path / "x.bin").read_bytes() == b"\x89PNG"
    with wd.WorkdirLock(str(tmp_path)) as lock:  # flock, no lease
        assert lock._fd is not None and lock._lease is None
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "lock.json").exists()


def test_reproduce_refuses_a_bucket_workdir(capsys):
    from experiments import reproduce

    with pytest.raises(SystemExit) as e:
        reproduce.main(["--suite=tiny", "--workdir=gs://bucket/grid", "--dry_run"])
    assert e.value.code == 2
    assert "needs a local folder" in capsys.readouterr().err
