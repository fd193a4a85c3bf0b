"""The trainer: schedules, optimizer, config checks, resume exactness, the CLI end to end."""

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cce_jax import training  # noqa: E402
from experiments.configs import default as default_config  # noqa: E402

CIFAR_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class FakeData:
    """A tiny in-memory stand-in for cce_jax.data.Data (8x8x3, 4 classes)."""

    def __init__(self, seed=0, batch=16, counts=(40, 20, 10, 6), n_test=37, eval_batch=16):
        rng = np.random.default_rng(123)
        k = len(counts)
        self.y = np.repeat(np.arange(k), counts).astype(np.int32)
        centers = rng.standard_normal((k, 1, 1, 3)).astype(np.float32)
        self.x = centers[self.y] + 0.5 * rng.standard_normal((len(self.y), 8, 8, 3)).astype(
            np.float32)
        self.ty = rng.integers(0, k, n_test).astype(np.int32)
        self.tx = centers[self.ty] + 0.5 * rng.standard_normal((n_test, 8, 8, 3)).astype(
            np.float32)
        self.info = types.SimpleNamespace(
            name="fake", num_classes=k, image_shape=(8, 8, 3),
            class_names=tuple(f"c{i}" for i in range(k)),
            class_counts=np.asarray(counts, np.int64), num_train=len(self.y), num_test=n_test)
        self.seed, self.batch, self.eval_batch = seed, batch, eval_batch
        self.steps_per_epoch = len(self.y) // batch

    def train_epoch(self, epoch):
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.y))
        for i in range(self.steps_per_epoch):
            idx = perm[i * self.batch:(i + 1) * self.batch]
            yield {"image": self.x[idx], "label": self.y[idx]}

    def eval_batches(self):
        b = self.eval_batch
        for s in range(0, len(self.ty), b):
            n = min(b, len(self.ty) - s)
            img = np.zeros((b, 8, 8, 3), np.float32)
            lab = np.zeros((b,), np.int32)
            img[:n], lab[:n] = self.tx[s:s + n], self.ty[s:s + n]
            yield {"image": img, "label": lab, "mask": np.arange(b) < n}


def small_config(**overrides):
    c = default_config.get_config()
    c.data.source = "digits"
    c.model.name = "resnet8"
    c.model.width = 4
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_epochs = 3
    c.eval_every = 2
    c.progress = False
    c.optimizer.lr = 0.05
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (2,)
    c.schedule.factors = (0.1,)
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


# ----------------------------------------------------------------------------- schedules


def test_step_schedule_ldam_and_warmup():
    c = small_config()
    c.num_epochs = 200
    c.optimizer.lr = 0.1
    c.schedule.warmup_epochs = 5.0
    c.schedule.boundaries = (160, 180)
    c.schedule.factors = (0.01, 0.0001)
    lr = training.make_lr_schedule(c, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(0.1 / 50)
    assert float(lr(49)) == pytest.approx(0.1)
    assert float(lr(1599)) == pytest.approx(0.1)
    assert float(lr(1600)) == pytest.approx(1e-3)
    assert float(lr(1800)) == pytest.approx(1e-5)
    cot = training.make_lr_schedule(c, steps_per_epoch=10, updates_per_step=2)
    assert float(cot(3199)) == pytest.approx(0.1) and float(cot(3200)) == pytest.approx(1e-3)


def test_cosine_and_constant_schedules():
    c = small_config()
    c.num_epochs = 10
    c.optimizer.lr = 1.0
    c.schedule.warmup_epochs = 0.0
    c.schedule.name = "cosine"
    lr = training.make_lr_schedule(c, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(1.0)
    assert float(lr(50)) == pytest.approx(0.5, abs=1e-6)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-6)
    c.schedule.name = "constant"
    assert float(training.make_lr_schedule(c, 10)(77)) == pytest.approx(1.0)


def test_weight_decay_only_on_kernels():
    params = {"conv": {"kernel": jnp.ones((2, 2))}, "bn": {"scale": jnp.ones(2),
              "bias": jnp.ones(2)}, "head": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    c = small_config()
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.5
    c.schedule.warmup_epochs = 0.0
    tx = training.make_optimizer(c, steps_per_epoch=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    lr = c.optimizer.lr
    assert float(upd["conv"]["kernel"][0, 0]) == pytest.approx(-lr * 0.5)
    assert float(upd["head"]["kernel"][0, 0]) == pytest.approx(-lr * 0.5)
    for leaf in (upd["bn"]["scale"], upd["bn"]["bias"], upd["head"]["bias"]):
        assert float(jnp.abs(leaf).max()) == 0.0


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("key,value,match", [
    ("loss.name", "nope", "loss.name"),
    ("model.name", "vgg", "model.name"),
    ("model.dtype", "float64", "model.dtype"),
    ("batch_size", 12, "batch_size=12"),
    ("schedule.name", "linear", "schedule.name"),
    ("schedule.factors", (0.1, 0.01), "same length"),
    ("num_epochs", 0, "num_epochs"),
])
def test_bad_config_values(key, value, match):
    c = small_config(**{key: value})
    with pytest.raises(training.ConfigError, match=match):
        training.validate_config(c, num_devices=8, num_processes=1)


def test_bad_loss_hparam():
    c = small_config()
    c.loss.hparams["no_such_hparam"] = 1.0
    with pytest.raises(training.ConfigError, match="no_such_hparam"):
        training.validate_config(c)


def test_missing_dataset(tmp_path):
    c = small_config()
    c.data.source = f"cifar10_jpeg:{tmp_path}/missing.tar.gz"
    with pytest.raises(training.ConfigError, match="dataset"):
        training.train_and_evaluate(c, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "checkpoints").exists()
    assert not (tmp_path / "w" / "config.json").exists()


# ----------------------------------------------------------------------------- the loop


def _final_params(workdir):
    import orbax.checkpoint as ocp
    ckpt = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().restore(ckpt / str(last) / "default")
    return last, tree


def test_resume_is_exact_and_workdir_checks(tmp_path):
    data = FakeData()
    full = training.train_and_evaluate(small_config(), str(tmp_path / "full"), data=data)
    assert full is not None and full["epochs"] == 3

    part = tmp_path / "part"
    assert training.train_and_evaluate(small_config(stop_after_epoch=1), str(part),
                                       data=data) is None
    assert not (part / "summary.json").exists()
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = training.train_and_evaluate(small_config(), str(part), data=data)
    assert resumed["resumed_from_epoch"] == 1

    for key in ("test_top1", "test_balanced_accuracy", "confusion_matrix", "per_class_accuracy",
                "final_train_loss", "final_train_accuracy"):
        assert resumed[key] == full[key], key
    la, ta = _final_params(tmp_path / "full")
    lb, tb = _final_params(part)
    assert la == lb == 3
    jax.tree.map(np.testing.assert_array_equal, ta, tb)  # params, batch_stats, opt_state

    rows_a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train_loss"] == rb["train_loss"] and ra.get("test") == rb.get("test")
    assert "test" in rows_b[1] and "test" in rows_b[2] and "test" not in rows_b[0]

    summary = json.loads((part / "summary.json").read_text())
    for key in ("test_top1", "test_balanced_accuracy", "per_class_accuracy", "class_counts",
                "test_many", "test_medium", "test_few", "test_macro_f1", "confusion_matrix",
                "config", "wall_time_s", "versions", "device_count", "process_count"):
        assert key in summary, key
    assert summary["class_counts"] == [40, 20, 10, 6]
    assert summary["test_many"] is None and summary["num_test"] == 37
    assert sorted(os.listdir(part / "checkpoints")) == ["2", "3"]  # keep the last 2

    # Extending num_epochs (run control) resumes; changing the model does not.
    more = training.train_and_evaluate(small_config(num_epochs=4), str(part), data=data)
    assert more["resumed_from_epoch"] == 3 and more["epochs"] == 4
    with pytest.raises(training.ConfigError, match="beyond"):
        training.train_and_evaluate(small_config(num_epochs=2), str(part), data=data)
    with pytest.raises(training.ConfigError, match="model.width"):
        training.train_and_evaluate(small_config(**{"model.width": 8}), str(part), data=data)


def test_drw_and_cot_train(tmp_path):
    data = FakeData()
    s = training.train_and_evaluate(
        small_config(num_epochs=2, **{"loss.drw_epoch": 1}), str(tmp_path / "drw"), data=data)
    rows = [json.loads(x) for x in (tmp_path / "drw" / "metrics.jsonl").read_text().splitlines()]
    assert [r["drw"] for r in rows] == [False, True]
    assert s["test_top1"] is not None
    s = training.train_and_evaluate(
        small_config(num_epochs=1, **{"loss.name": "cot"}), str(tmp_path / "cot"), data=data)
    rows = [json.loads(x) for x in (tmp_path / "cot" / "metrics.jsonl").read_text().splitlines()]
    assert "train_complement_loss" in rows[0]


def test_step_throughput_positive():
    from experiments.bench_train_step import step_throughput

    assert step_throughput("resnet8", batch_size=8, num_steps=2, image_shape=(8, 8, 3)) > 0


# ----------------------------------------------------------------------------- the command


def _cli(*args, timeout=300):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_bad_config_fails_before_training(tmp_path):
    r = _cli("--config=experiments/configs/tiny.py", f"--workdir={tmp_path}/w",
             "--config.loss.name=nope")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "loss.name='nope'" in r.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.skipif(not CIFAR_TAR.exists(),
                    reason=f"offline CIFAR-10 copy {CIFAR_TAR} is missing")
def test_cli_tiny_end_to_end(tmp_path):
    t0 = time.time()
    r = _cli("--config=experiments/configs/tiny.py", f"--workdir={tmp_path}/w",
             "--config.num_epochs=2")
    elapsed = time.time() - t0
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert elapsed < 120, elapsed
    assert "final test top-1" in r.stdout
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["num_test"] == 1000 and len(summary["class_counts"]) == 10
    assert summary["config"]["model"]["name"] == "resnet8"
    assert len((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()) == 2
