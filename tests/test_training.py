"""The trainer: schedules, optimizer, config checks, resume exactness, the CLI end to end."""

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cce_jax import metrics, parallel, training  # noqa: E402
from cce_jax.training import checkpoints as ckpt  # noqa: E402
from cce_jax.training import optimizer as opt_lib  # noqa: E402
from cce_jax.training import steps as steps_lib  # noqa: E402
from experiments import report  # noqa: E402
from experiments.configs import default as default_config  # noqa: E402


class FakeData:
    """A tiny in-memory stand-in for cce_jax.data.Data (8x8x3, 4 classes)."""

    def __init__(self, seed=0, batch=16, counts=(40, 20, 10, 6), n_test=37, eval_batch=16):
        rng = np.random.default_rng(123)
        k = len(counts)
        self.y = np.repeat(np.arange(k), counts).astype(np.int32)
        centers = rng.standard_normal((k, 1, 1, 3)).astype(np.float32)
        self.x = centers[self.y] + 0.5 * rng.standard_normal((len(self.y), 8, 8, 3)).astype(
            np.float32
        )
        self.ty = rng.integers(0, k, n_test).astype(np.int32)
        self.tx = centers[self.ty] + 0.5 * rng.standard_normal((n_test, 8, 8, 3)).astype(np.float32)
        self.info = types.SimpleNamespace(
            name="fake",
            num_classes=k,
            image_shape=(8, 8, 3),
            class_names=tuple(f"c{i}" for i in range(k)),
            class_counts=np.asarray(counts, np.int64),
            num_train=len(self.y),
            num_test=n_test,
        )
        self.seed, self.batch, self.eval_batch = seed, batch, eval_batch
        self.steps_per_epoch = len(self.y) // batch

    def train_epoch(self, epoch):
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.y))
        for i in range(self.steps_per_epoch):
            idx = perm[i * self.batch : (i + 1) * self.batch]
            yield {"image": self.x[idx], "label": self.y[idx]}

    def eval_batches(self):
        b = self.eval_batch
        for s in range(0, len(self.ty), b):
            n = min(b, len(self.ty) - s)
            img = np.zeros((b, 8, 8, 3), np.float32)
            lab = np.zeros((b,), np.int32)
            img[:n], lab[:n] = self.tx[s : s + n], self.ty[s : s + n]
            yield {"image": img, "label": lab, "mask": np.arange(b) < n}


class SignalAfter(FakeData):
    """FakeData whose process gets a SIGTERM once epoch ``epoch`` (1-based) is trained: the
    run saves after that epoch and stops (Preempted)."""

    def __init__(self, epoch, signum=signal.SIGTERM):
        super().__init__()
        self.epoch, self.signum = epoch, signum

    def train_epoch(self, epoch):  # the signal comes as the next epoch's first batch is read
        if epoch == self.epoch:
            os.kill(os.getpid(), self.signum)
        yield from super().train_epoch(epoch)


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
    c.update_from_flattened_dict(overrides)  # keys like "loss.name"
    return c


# ----------------------------------------------------------------------------- schedules


def test_step_schedule_ldam_and_warmup():
    c = small_config()
    c.num_epochs = 200
    c.optimizer.lr = 0.1
    c.schedule.warmup_epochs = 5.0
    c.schedule.boundaries = (160, 180)
    c.schedule.factors = (0.01, 0.0001)
    lr = opt_lib.make_lr_schedule(c, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(0.1 / 50)
    assert float(lr(49)) == pytest.approx(0.1)
    assert float(lr(1599)) == pytest.approx(0.1)
    assert float(lr(1600)) == pytest.approx(1e-3)
    assert float(lr(1800)) == pytest.approx(1e-5)
    cot = opt_lib.make_lr_schedule(c, steps_per_epoch=10, updates_per_step=2)
    assert float(cot(3199)) == pytest.approx(0.1) and float(cot(3200)) == pytest.approx(1e-3)


def test_cosine_and_constant_schedules():
    c = small_config()
    c.num_epochs = 10
    c.optimizer.lr = 1.0
    c.schedule.warmup_epochs = 0.0
    c.schedule.name = "cosine"
    lr = opt_lib.make_lr_schedule(c, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(1.0)
    assert float(lr(50)) == pytest.approx(0.5, abs=1e-6)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-6)
    c.schedule.name = "constant"
    assert float(opt_lib.make_lr_schedule(c, 10)(77)) == pytest.approx(1.0)


def test_weight_decay_only_on_kernels():
    params = {
        "conv": {"kernel": jnp.ones((2, 2))},
        "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        "head": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
    }
    c = small_config()
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.5
    c.schedule.warmup_epochs = 0.0
    tx = opt_lib.make_optimizer(c, steps_per_epoch=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    lr = c.optimizer.lr
    assert float(upd["conv"]["kernel"][0, 0]) == pytest.approx(-lr * 0.5)
    assert float(upd["head"]["kernel"][0, 0]) == pytest.approx(-lr * 0.5)
    for leaf in (upd["bn"]["scale"], upd["bn"]["bias"], upd["head"]["bias"]):
        assert float(jnp.abs(leaf).max()) == 0.0


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model.name", "vgg", "unknown model"),
        ("model.conv_impl", "auto", "unknown conv_impl"),
        ("model.dtype", "float64", "unknown dtype"),
        ("batch_size", 12, "batch_size=12"),
        ("schedule.name", "linear", "schedule.name"),
        ("schedule.factors", (0.1, 0.01), "same length"),
        ("num_epochs", 0, "num_epochs"),
    ],
)
def test_bad_config_values(key, value, match):
    c = small_config(**{key: value})
    with pytest.raises(training.ConfigError, match=match):
        training.validate_config(c, num_devices=8, num_processes=1)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("loss.name", "nope", "unknown loss"),
        ("loss.hparams.no_such_hparam", 1.0, "no_such_hparam"),
        ("model.name", "fcn8", "segmentation model"),
    ],
)
def test_bad_loss_or_model_refused_before_anything_is_written(tmp_path, key, value, match):
    c = small_config()
    if key.startswith("loss.hparams."):
        c.loss.hparams[key.rsplit(".", 1)[1]] = value
    else:
        c.update_from_flattened_dict({key: value})
    with pytest.raises(training.ConfigError, match=match):
        training.train_and_evaluate(c, str(tmp_path / "w"), data=FakeData())
    assert not (tmp_path / "w" / "config.json").exists()


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
    tree = ocp.StandardCheckpointer().restore(ckpt / str(last) / "state")
    return last, tree


def test_resume_is_exact_and_workdir_checks(tmp_path, small_run):
    data = FakeData()
    full_w, full = small_run()  # small_config() on FakeData(), uninterrupted
    assert full is not None and full["epochs"] == 3

    part, stopped = small_run(copy_to=tmp_path / "part", stop_after_epoch=1)
    assert stopped is None
    assert not (part / "summary.json").exists()
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = training.train_and_evaluate(small_config(), str(part), data=data)
    assert resumed["resumed_from_epoch"] == 1

    for key in (
        "test_top1",
        "test_balanced_accuracy",
        "confusion_matrix",
        "per_class_accuracy",
        "final_train_loss",
        "final_train_accuracy",
    ):
        assert resumed[key] == full[key], key
    la, ta = _final_params(full_w)
    lb, tb = _final_params(part)
    assert la == lb == 3 * data.steps_per_epoch
    jax.tree.map(np.testing.assert_array_equal, ta, tb)  # params, batch_stats, opt_state

    rows_a = [json.loads(x) for x in (full_w / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train_loss"] == rb["train_loss"] and ra.get("test") == rb.get("test")
    assert "test" in rows_b[1] and "test" in rows_b[2] and "test" not in rows_b[0]

    summary = json.loads((part / "summary.json").read_text())
    for key in (
        "test_top1",
        "test_balanced_accuracy",
        "per_class_accuracy",
        "class_counts",
        "test_many",
        "test_medium",
        "test_few",
        "test_macro_f1",
        "confusion_matrix",
        "config",
        "wall_time_s",
        "versions",
        "device_count",
        "process_count",
    ):
        assert key in summary, key
    assert summary["class_counts"] == [40, 20, 10, 6]
    assert summary["test_many"] is None and summary["num_test"] == 37
    spe = data.steps_per_epoch
    assert sorted(os.listdir(part / "checkpoints"), key=int) == [str(2 * spe), str(3 * spe)]

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
        small_config(num_epochs=2, **{"loss.drw_epoch": 1}), str(tmp_path / "drw"), data=data
    )
    rows = [json.loads(x) for x in (tmp_path / "drw" / "metrics.jsonl").read_text().splitlines()]
    assert [r["drw"] for r in rows] == [False, True]
    assert s["test_top1"] is not None
    s = training.train_and_evaluate(
        small_config(num_epochs=1, **{"loss.name": "cot"}), str(tmp_path / "cot"), data=data
    )
    rows = [json.loads(x) for x in (tmp_path / "cot" / "metrics.jsonl").read_text().splitlines()]
    assert "train_complement_loss" in rows[0]


# ----------------------------------------------------------------------------- the command


def _cli(*args, timeout=300):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_bad_config_fails_before_training(tmp_path):
    r = _cli(
        "--config=experiments/configs/tiny.py", f"--workdir={tmp_path}/w", "--config.loss.name=nope"
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "unknown loss 'nope'" in r.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_cli_tiny_end_to_end(tmp_path, cifar10_jpeg_cache):
    r = _cli(
        "--config=experiments/configs/tiny.py",
        f"--workdir={tmp_path}/w",
        "--config.num_epochs=2",
        f"--config.data.cache_dir={cifar10_jpeg_cache}",
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "balanced" in r.stdout and "summary: " in r.stdout
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["num_test"] == 1000 and len(summary["class_counts"]) == 10
    assert summary["config"]["model"]["name"] == "resnet8"
    assert len((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "w" / "per_class.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- failing loudly


def _strict_json(path):
    def bad(x):
        raise ValueError(f"non-strict JSON constant {x} in {path}")

    return json.loads(Path(path).read_text(), parse_constant=bad)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("optimizer.lr", float("nan"), "optimizer.lr"),
        ("optimizer.lr", float("inf"), "optimizer.lr"),
        ("optimizer.momentum", float("nan"), "optimizer.momentum"),
        ("optimizer.weight_decay", -1e-4, "optimizer.weight_decay"),
        ("schedule.warmup_epochs", float("nan"), "warmup_epochs"),
        ("loss.drw_beta", float("nan"), "drw_beta"),
        ("steps_per_call", 0, "steps_per_call"),
        ("seeds", (1, 1), "seeds"),
    ],
)
def test_non_finite_hyperparameters_refused(key, value, match):
    with pytest.raises(training.ConfigError, match=match):
        training.validate_config(small_config(**{key: value}))


class PoisonedFrom(FakeData):
    """FakeData whose images turn NaN from epoch ``epoch`` (0-based) on."""

    def __init__(self, epoch):
        super().__init__()
        self.poison_epoch = epoch

    def train_epoch(self, epoch):
        for b in super().train_epoch(epoch):
            if epoch >= self.poison_epoch:
                b = dict(b, image=np.full_like(b["image"], np.nan))
            yield b


def test_divergence_stops_loudly_and_keeps_the_last_finite_checkpoint(tmp_path):
    import orbax.checkpoint as ocp

    # Diverging from the first step: no checkpoint at all.
    d = tmp_path / "d"
    with pytest.raises(training.TrainingDiverged, match="no checkpoint was written"):
        training.train_and_evaluate(small_config(**{"optimizer.lr": 1e6}), str(d), data=FakeData())
    assert not (d / "summary.json").exists()
    failure = _strict_json(d / "failure.json")
    assert failure["epoch"] == 1 and failure["step"] >= 1
    assert failure["last_finite_checkpoint_step"] is None
    assert not (d / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (d / "checkpoints").iterdir()
    )
    # Diverging in epoch 2 after a finite epoch 1: that checkpoint is kept, and it is finite.
    m = tmp_path / "m"
    data = PoisonedFrom(1)
    with pytest.raises(training.TrainingDiverged, match=r"last finite checkpoint \(epoch 1\)"):
        training.train_and_evaluate(small_config(), str(m), data=data)
    failure = _strict_json(m / "failure.json")
    assert failure["epoch"] == 2 and failure["step"] == data.steps_per_epoch + 1
    assert failure["last_finite_checkpoint_step"] == data.steps_per_epoch
    kept = [p for p in (m / "checkpoints").iterdir() if p.name.isdigit()]
    assert [p.name for p in kept] == [str(data.steps_per_epoch)]
    tree = ocp.StandardCheckpointer().restore(kept[0] / "state")
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(tree["params"]))
    rows = [json.loads(r) for r in (m / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and np.isfinite(rows[0]["train_loss"])
    assert not (m / "summary.json").exists()


def test_workdir_lock_refuses_a_second_run(tmp_path):

    w = tmp_path / "w"
    w.mkdir()
    with ckpt.WorkdirLock(ckpt.epath.Path(w)):
        with pytest.raises(training.ConfigError, match="in use by another run"):
            training.train_and_evaluate(small_config(num_epochs=1), str(w), data=FakeData())
    assert not (w / "config.json").exists()
    # A lock file left by a killed run (no holder) does not block.
    (w / ".lock").write_text("999999\n")
    assert (
        training.train_and_evaluate(small_config(num_epochs=1), str(w), data=FakeData()) is not None
    )


def test_lock_is_exclusive_across_processes(tmp_path):
    code = (
        "import sys, time; from cce_jax.training import checkpoints as c\n"
        "with c.WorkdirLock(c.epath.Path(sys.argv[1])):\n    print('locked'); time.sleep(30)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert p.stdout.readline().strip() == "locked"

        with pytest.raises(training.ConfigError, match=f"pid {p.pid}"):
            with ckpt.WorkdirLock(ckpt.epath.Path(tmp_path)):
                pass
    finally:
        p.kill()
        p.wait()
    with ckpt.WorkdirLock(
        ckpt.epath.Path(tmp_path)
    ):  # the kernel released the killed holder's lock
        pass


def test_checkpoint_without_config_and_refused_resume_leave_the_workdir_alone(tmp_path, small_run):
    data = FakeData()
    w, _ = small_run(copy_to=tmp_path / "w", num_epochs=2)
    stored = (w / "config.json").read_text()
    with pytest.raises(training.ConfigError, match="beyond"):
        training.train_and_evaluate(small_config(num_epochs=1), str(w), data=data)
    assert (w / "config.json").read_text() == stored
    (w / "config.json").unlink()
    with pytest.raises(training.ConfigError, match="no config.json"):
        training.train_and_evaluate(
            small_config(num_epochs=3, **{"loss.name": "focal"}), str(w), data=data
        )
    assert not (w / "config.json").exists()


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_corrupt_latest_checkpoint_falls_back(tmp_path, damage, capsys, small_run):
    data = FakeData()
    w, full = small_run(copy_to=tmp_path / "w", num_epochs=2)
    capsys.readouterr()  # only what the resume below writes counts
    files = sorted(
        p
        for p in (w / "checkpoints" / str(2 * data.steps_per_epoch)).rglob("*")
        if p.is_file() and p.stat().st_size > 0
    )
    victims = [p for p in files if "ocdbt" in str(p) or p.suffix == "" or "d/" in str(p)] or files
    for p in victims:
        if damage == "delete":
            p.unlink()
        else:
            p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    (w / "summary.json").unlink()
    again = training.train_and_evaluate(small_config(num_epochs=2), str(w), data=data)
    err = capsys.readouterr().err
    assert "checkpoint of epoch 2" in err and "falling back to epoch 1" in err
    assert len([line for line in err.splitlines() if "warning" in line]) == 1
    assert (w / "corrupt_checkpoints" / str(2 * data.steps_per_epoch)).exists()
    assert again["resumed_from_epoch"] == 1 and again["test_top1"] == full["test_top1"]


def test_summary_posthoc_and_strict_json(small_run):
    w, s = small_run(num_epochs=1)
    on_disk = _strict_json(w / "summary.json")
    taus = [r["tau"] for r in on_disk["posthoc_logit_adjustment"]]
    assert taus == list(metrics.POSTHOC_TAUS)
    tau0 = on_disk["posthoc_logit_adjustment"][0]
    assert (
        tau0["top1"] == s["test_top1"] and tau0["balanced_accuracy"] == s["test_balanced_accuracy"]
    )
    table = report.format_table(s)
    assert "c3" in table and "best tau" in table
    assert os.path.getsize(report.plot_per_class(s, str(w / "per_class.png"))) > 1000


def test_strict_json_has_no_nan():
    data = {"a": float("nan"), "b": [1.0, float("inf"), np.float32(2.5)], "c": (np.int64(3),)}
    text = ckpt.dumps(data)
    assert json.loads(text) == {"a": None, "b": [1.0, None, 2.5], "c": [3]}
    assert "NaN" not in text and "Infinity" not in text


def test_posthoc_adjustment_matches_numpy():
    from cce_jax import models

    mesh = parallel.make_mesh()
    model = models.get_model("resnet8", num_classes=4, width=4)
    state = steps_lib.create_train_state(
        model, opt_lib.make_optimizer(small_config(), 1), jax.random.key(3), (8, 8, 3), mesh
    )
    counts = np.array([40, 20, 10, 6])
    ev = steps_lib.make_eval_step(model, mesh, counts)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int32)
    out = steps_lib.evaluate(ev, state, [{"image": x, "label": y}], mesh, counts)
    logits = np.asarray(model.apply({"params": state.params, "batch_stats": state.batch_stats}, x))
    for row in out["posthoc_logit_adjustment"]:
        pred = np.argmax(logits - row["tau"] * np.log(counts / counts.sum()), -1)
        assert row["top1"] == pytest.approx(np.mean(pred == y))


@pytest.mark.slow
def test_steps_per_call_matches_single_steps(tmp_path):
    data = FakeData()
    a = training.train_and_evaluate(small_config(num_epochs=1), str(tmp_path / "a"), data=data)
    b = training.train_and_evaluate(
        small_config(num_epochs=1, steps_per_call=2), str(tmp_path / "b"), data=data
    )
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-4)
    _, ta = _final_params(tmp_path / "a")
    _, tb = _final_params(tmp_path / "b")
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4), ta, tb)


def _digits_config(**kw):
    c = small_config(
        **{
            "data.ratio": 10.0,
            "model.width": 8,
            "batch_size": 32,
            "eval_batch_size": 64,
            "data.augment": False,
            **kw,
        }
    )
    return c


@pytest.mark.slow
def test_seeds_match_single_runs_on_digits(tmp_path):
    seeds = (0, 1)
    multi = training.train_and_evaluate(_digits_config(seeds=seeds), str(tmp_path / "m"))
    assert multi["num_seeds"] == 2
    for s in seeds:
        single = training.train_and_evaluate(
            _digits_config(seed=s, **{"data.subset_seed": s}), str(tmp_path / f"s{s}")
        )
        sub = tmp_path / "m" / f"seed_{s}"
        mine = _strict_json(sub / "summary.json")
        assert set(mine) >= set(single) - {"trained_with_seeds"}
        assert mine["class_counts"] == single["class_counts"]
        assert abs(mine["test_top1"] - single["test_top1"]) <= 0.015, (
            s,
            mine["test_top1"],
            single["test_top1"],
        )
        assert _strict_json(sub / "config.json")["seed"] == s
        assert len((sub / "metrics.jsonl").read_text().splitlines()) == 3
    agg = _strict_json(tmp_path / "m" / "summary.json")
    assert agg["test_top1"]["per_seed"] == [
        _strict_json(tmp_path / "m" / f"seed_{s}" / "summary.json")["test_top1"] for s in seeds
    ]


def _only_checkpoint(workdir):
    (step,) = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    return step


@pytest.mark.slow
def test_seeds_parameters_close_after_a_few_steps(tmp_path):
    import orbax.checkpoint as ocp

    multi_dir, single_dir = tmp_path / "m", tmp_path / "s"
    training.train_and_evaluate(_digits_config(num_epochs=1, seeds=(0, 5)), str(multi_dir))
    training.train_and_evaluate(
        _digits_config(num_epochs=1, seed=5, **{"data.subset_seed": 5}), str(single_dir)
    )
    m = ocp.StandardCheckpointer().restore(_only_checkpoint(multi_dir) / "state")
    s = ocp.StandardCheckpointer().restore(_only_checkpoint(single_dir) / "state")
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u[1], v, rtol=2e-2, atol=2e-3),
        m["params"],
        s["params"],
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["--config.lr=0.1"], "no such config key: lr"),
        (["--config.model.widht=8"], "Did you mean width"),
        (["--config.batch_size=x"], "--config.batch_size"),
        (["--config.optimizer.lr=nan"], "optimizer.lr"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, match):
    r = _cli("--config=experiments/configs/tiny.py", f"--workdir={tmp_path}/w", *args)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and match in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "w" / "config.json").exists()


def test_cli_missing_config_file(tmp_path):
    r = _cli("--config=experiments/configs/nope.py", f"--workdir={tmp_path}/w")
    assert (
        r.returncode == 2
        and r.stderr.strip().startswith("error:")
        and len(r.stderr.strip().splitlines()) == 1
    )
