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
from unittest import mock

import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing
from test_training import FakeData, SignalAfter, small_config

from cce_jax import training
from cce_jax.training import checkpoints as ckpt

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


def _stopped_after(epoch, config=None):
    with pytest.raises(training.Preempted):
        training.train_and_evaluate(config or small_config(), RUN, data=SignalAfter(epoch))


def test_a_run_in_a_bucket_writes_its_files_there_and_resumes(bucket, tmp_path):
    data = FakeData()
    out = bucket.local(RUN)
    _stopped_after(1)
    assert bucket.managers == [f"{RUN}/checkpoints"]
    assert json.load(open(f"{out}/config.json"))["model"]["width"] == 4
    assert [r["epoch"] for r in _rows(f"{out}/metrics.jsonl")] == [1]
    spe = data.steps_per_epoch
    digest = json.load(open(f"{out}/checkpoints/{spe}/digest.json"))["sha256"]
    assert any(k.startswith("state/") for k in digest)
    assert not os.path.exists(f"{out}/summary.json")
    assert not [n for n in os.listdir(out) if ".tmp" in n]

    resumed = training.train_and_evaluate(small_config(), RUN, data=data)
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs"] == 3
    assert json.load(open(f"{out}/summary.json"))["test_top1"] == resumed["test_top1"]
    assert [r["epoch"] for r in _rows(f"{out}/metrics.jsonl")] == [1, 2, 3]
    assert sorted(os.listdir(f"{out}/checkpoints"), key=int) == [str(2 * spe), str(3 * spe)]

    # The same run in a local folder: the same numbers, the same files (and a local lock).
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
    spe = FakeData().steps_per_epoch
    out = bucket.local(RUN)
    _stopped_after(2)
    newest = f"{out}/checkpoints/{2 * spe}"
    victim = max(
        (os.path.join(r, f) for r, _, fs in os.walk(f"{newest}/state") for f in fs),
        key=os.path.getsize,
    )
    blob = bytearray(open(victim, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(blob))
    _stopped_after(2)
    err = capsys.readouterr().err
    assert "damaged (digest mismatch" in err and "moved to corrupt_checkpoints/" in err
    assert os.listdir(f"{out}/corrupt_checkpoints") == [str(2 * spe)]
    assert sorted(os.listdir(f"{out}/checkpoints"), key=int) == [str(spe), str(2 * spe)]


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


# ------------------------------------------------------------------------ storage errors


def test_bucket_failures_are_one_line_storage_errors(bucket):
    path = ckpt.epath.Path(f"{RUN}/a.json")
    bucket.fail = lambda op, p, *a: PermissionError(errno.EACCES, "403 Forbidden")
    with pytest.raises(training.StorageError) as e:
        ckpt.write(path, "{}")
    text = str(e.value)
    assert len(text.splitlines()) == 1 and text.startswith(f"cannot write '{RUN}/a.json': ")
    assert "not writable (PermissionError" in text
    bucket.fail = lambda op, p, *a: OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(training.StorageError, match="no space left on device"):
        ckpt.write(path, b"\0")
    bucket.fail = None


def test_a_failing_bucket_mid_run_is_a_storage_error(bucket):
    def fail(op, path, *a):
        if op == "open" and path.endswith("metrics.jsonl") and a[:1] == ("w",):
            return OSError(errno.EIO, "503 backend unavailable")
        return None

    bucket.fail = fail
    with pytest.raises(training.StorageError) as e:
        training.train_and_evaluate(small_config(), RUN, data=FakeData())
    assert str(e.value).startswith(f"cannot write '{RUN}/metrics.jsonl': OSError")


def test_an_unusable_bucket_is_one_config_error(bucket):
    bucket.fail = lambda op, path, *a: (
        PermissionError(errno.EACCES, "403") if op in ("makedirs", "mkdir") else None
    )
    with pytest.raises(training.ConfigError, match="cannot create the workdir 'gs://bucket/run'"):
        training.train_and_evaluate(small_config(), RUN, data=FakeData())
