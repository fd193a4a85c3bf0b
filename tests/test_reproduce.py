"""Tests of experiments.reproduce and experiments.report: the table from summaries, reuse only
under the same config, failed/stopped runs, both run-folder layouts, strict JSON, a grid in a
bucket, and a tiny grid end to end.

Most tests drive ``reproduce.main`` with a fake train program (FAKE_TRAIN below) that follows
the trainer's contract (config.json, summary.json, failure.json + exit 3, exit 75 on SIGTERM,
``--config.seeds`` -> ``seed_<s>/``) in well under a second per run; the end-to-end tests use
the real trainer.
"""

import json
import math
import os
import sys
import time

import numpy as np
import pytest

from experiments import report, reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in for experiments.train. FAKE_PLAN (JSON in the environment) picks the behaviour per
# loss name: "crash" (exit 1 with an error line), "diverge" (failure.json, exit 3), "stop_once"
# "wait_signal" (wait for SIGTERM, exit 75, finish when rerun).
FAKE_TRAIN = r"""
import json, os, sys
from experiments import reproduce
from cce_jax.training.config import config_to_dict

argv = sys.argv[1:]
workdir = [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")][0]
path, _, arg = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")][0].partition(":")
over = dict(a[9:].split("=", 1) for a in argv if a.startswith("--config."))
cfg = config_to_dict(reproduce.build(path, arg, over))
plan = json.loads(os.environ.get("FAKE_PLAN", "{}"))
loss = cfg["loss"]["name"]
os.makedirs(workdir, exist_ok=True)


def write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)  # NaN allowed, as an old trainer wrote it


with open(os.path.join(workdir, "calls.txt"), "a") as f:
    f.write(json.dumps(argv) + "\n")
write(os.path.join(workdir, "config.json"), cfg)
ckpt = os.path.join(workdir, "ckpt")
if loss in plan.get("wait_signal", []) and not os.path.exists(ckpt):
    import signal, time

    def on_signal(signum, frame):  # the trainer's contract: save, one line, exit 75
        open(ckpt, "w").close()
        print("stopped by " + signal.Signals(signum).name + "; rerun to resume", flush=True)
        sys.exit(75)

    signal.signal(signal.SIGTERM, on_signal)
    open(os.path.join(workdir, "ready"), "w").close()
    time.sleep(120)
if loss in plan.get("crash", []):
    print("error: boom in " + loss, flush=True)
    sys.exit(1)
if loss in plan.get("diverge", []):
    write(os.path.join(workdir, "failure.json"),
          {"reason": "non-finite train loss", "epoch": 2, "step": 7})
    sys.exit(3)


def summary(c, seed):
    top1 = 0.5 + 0.01 * seed + (0.1 if loss != "ce" else 0.0)
    bal = top1 - 0.05
    return {
        "test_top1": top1, "test_balanced_accuracy": bal, "test_many": 0.9,
        "test_medium": None, "test_few": 0.2, "test_macro_f1": 0.5,
        "per_class_accuracy": [0.9, 0.5, None], "class_counts": [100, 30, 10],
        "test_class_counts": [50, 50, 0], "num_test": 100, "wall_time_s": 6.0,
        "final_train_loss": float("nan"), "config": c,
        "posthoc_logit_adjustment": [
            {"tau": t, "top1": top1, "balanced_accuracy": bal + 0.02 * t - 0.01 * t * t}
            for t in (0.0, 0.5, 1.0, 1.5, 2.0)],
    }


seeds = cfg.get("seeds") or []
if seeds:
    for s in seeds:
        d = os.path.join(workdir, f"seed_{s}")
        os.makedirs(d, exist_ok=True)
        c = dict(cfg, seed=s, seeds=[])
        c["data"] = dict(cfg["data"], subset_seed=s)
        write(os.path.join(d, "config.json"), c)
        write(os.path.join(d, "summary.json"), summary(c, s))
    write(os.path.join(workdir, "summary.json"), {"num_seeds": len(seeds)})
else:
    write(os.path.join(workdir, "summary.json"), summary(cfg, cfg["seed"]))
print("final test top-1 (fake)", flush=True)
"""

# The tiny config with a suite of one ratio and one seed.
FAKE_CONFIG = """
from experiments.configs import common, tiny

SUITE = {"label": "fake grid"}
get_config = tiny.get_config


def sweep(losses=("ce", "la"), ratios=(10,), seeds=(0,)):
    return common.grid(losses, ratios, seeds)
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A suite "fake" whose runs are FAKE_TRAIN; returns a helper to run reproduce.main."""
    config = tmp_path / "fake_config.py"
    config.write_text(FAKE_CONFIG)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setitem(reproduce.SUITES, "fake", (str(config), None, {}))
    monkeypatch.setattr(reproduce, "TRAIN_COMMAND", (sys.executable, str(script)))
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("FAKE_PLAN", raising=False)

    def run(*args, plan=None):
        if plan is not None:
            monkeypatch.setenv("FAKE_PLAN", json.dumps(plan))
        try:
            reproduce.main(["--suite=fake", f"--workdir={tmp_path / 'runs'}", *args])
        except SystemExit as e:
            return e.code
        return 0

    run.root = tmp_path / "runs" / "fake"
    run.results = tmp_path / "runs" / "results"
    return run


def _strict_load(path):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def _fake_summary(path, seed, top1, bal, counts, posthoc=None, max_test=None, loss="ce"):
    os.makedirs(path, exist_ok=True)
    summary = {
        "test_top1": top1,
        "test_balanced_accuracy": bal,
        "test_many": 0.9,
        "test_medium": None,
        "test_few": 0.1,
        "test_macro_f1": 0.5,
        "per_class_accuracy": [0.9, 0.5, 0.1],
        "class_counts": counts,
        "test_class_counts": [100, 100, 100],
        "num_test": 300,
        "wall_time_s": 60.0,
        "device_count": 1,
        "process_count": 1,
        "versions": {"jax": "x"},
        "final_train_loss": float("nan"),
        "config": {
            "seed": seed,
            "num_epochs": 2,
            "batch_size": 8,
            "model": {"name": "resnet8", "width": 8},
            "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
            "schedule": {"name": "step", "warmup_epochs": 1, "boundaries": [1], "factors": [0.1]},
            "loss": {"name": loss, "hparams": {}, "drw_epoch": -1},
            "data": {"source": "digits", "name": None, "profile": "exp", "max_test": max_test},
        },
    }
    if posthoc is not None:
        summary["posthoc_logit_adjustment"] = posthoc
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)


def test_collect_mean_sd_and_report(tmp_path):
    root = tmp_path / "runs"
    for loss, tops in (("ce", (0.70, 0.74)), ("cce_paper", (0.72, 0.78))):
        for ratio in (10, 100):
            for seed, top1 in enumerate(tops):
                _fake_summary(
                    str(root / f"r{ratio}" / loss / f"seed{seed}"),
                    seed,
                    top1 - ratio / 1000,
                    top1,
                    [120, 50, 5],
                    loss=loss,
                )
    # A third seed was never run: it must simply be absent, not counted.
    rows = report.collect(str(root), ["ce", "cce_paper"], [10.0, 100.0], [0, 1, 2])
    assert [(r["loss"], r["ratio"]) for r in rows] == [
        ("ce", 10.0),
        ("cce_paper", 10.0),
        ("ce", 100.0),
        ("cce_paper", 100.0),
    ]
    ce10 = rows[0]
    assert ce10["seeds"] == [0, 1] and ce10["failed"] == []
    errors = [100 * (1 - (0.70 - 0.01)), 100 * (1 - (0.74 - 0.01))]
    np.testing.assert_allclose(ce10["stats"]["top1_error"]["mean"], np.mean(errors))
    np.testing.assert_allclose(ce10["stats"]["top1_error"]["sd"], np.std(errors, ddof=1))
    assert ce10["stats"]["medium"] == {"mean": None, "sd": None}
    np.testing.assert_allclose(rows[3]["stats"]["balanced_accuracy"]["mean"], 75.0)

    out = tmp_path / "results"
    md = report.write_report(
        "demo_quick",
        rows,
        label="REDUCED (quick) protocol — not the paper protocol",
        command="cmd",
        out_dir=str(out),
        grid={
            "losses": ["ce", "cce_paper"],
            "ratios": [10, 100],
            "seeds": [0, 1, 2],
            "config": "x",
        },
    )
    text = open(md).read()
    assert "REDUCED" in text and "runs finished: 8 of 12; failed: 0" in text
    assert "| cce_paper | 100 | 2 | 0 | 35.00 ± 4.24 | 75.00 ± 4.24 | 90.00 ± 0.00 | n/a |" in text
    assert text.count("| n/a | 1.0 |") == 4  # no post-hoc numbers in these summaries
    for png in (
        "demo_quick_per_class_r10.png",
        "demo_quick_per_class_r100.png",
        "demo_quick_vs_ratio.png",
    ):
        assert (out / png).stat().st_size > 1000
    twin = _strict_load(out / "demo_quick.json")
    assert twin["command"] == "cmd" and len(twin["rows"]) == 4


def test_config_lines_come_from_the_runs(tmp_path):
    # The data source and the training counts are the runs' own (config.json, summary.json),
    # and a max_test-limited test split is not "the full test split".
    root = tmp_path / "runs"
    _fake_summary(str(root / "r10" / "ce" / "seed0"), 0, 0.7, 0.7, [120, 50, 5], max_test=300)
    rows = report.collect(str(root), ["ce"], [10.0], [0])
    text = "\n".join(report.config_lines(rows))
    assert "NOT the full test split" in text and "data.max_test=300" in text
    assert "- Data: `digits`; ratio 10: 175 training images, images per class [120, 50, 5]" in text
    assert "model.name='resnet8'" in text and "num_epochs" not in text  # run control left out

    _fake_summary(str(root / "r10" / "ce" / "seed1"), 1, 0.7, 0.7, [120, 50, 5])
    rows = report.collect(str(root), ["ce"], [10.0], [1])
    text = "\n".join(report.config_lines(rows))
    assert "300 test images (the full test split)" in text


def test_posthoc_column_best_tau_mean_sd(tmp_path):
    root = tmp_path / "runs"
    curves = {0: (0.80, 0.84, 0.86, 0.85, 0.83), 1: (0.78, 0.83, 0.82, 0.84, 0.80)}
    for seed, curve in curves.items():
        posthoc = [
            {"tau": t, "top1": 0.8, "balanced_accuracy": b}
            for t, b in zip((0.0, 0.5, 1.0, 1.5, 2.0), curve)
        ]
        _fake_summary(
            str(root / "r10" / "ce" / f"seed{seed}"),
            seed,
            0.8,
            curve[0],
            [9, 3, 1],
            posthoc=posthoc,
        )
    rows = report.collect(str(root), ["ce"], [10.0], [0, 1])
    best = rows[0]["posthoc"]
    # Mean over seeds per tau: 0.79 0.835 0.84 0.845 0.815 -> tau 1.5 (not each seed's best).
    assert best["tau"] == 1.5
    np.testing.assert_allclose(best["mean"], 84.5)
    np.testing.assert_allclose(best["sd"], np.std([85.0, 84.0], ddof=1))
    np.testing.assert_allclose(best["tau0_mean"], 79.0)
    line = report.table_lines(rows)[2]
    assert "| 84.50 ± 0.71 (τ=1.5) |" in line
    assert report.posthoc_best([{"test_top1": 0.5}]) is None


def test_every_suite_builds_what_the_trainer_parses_from_its_command():
    # The config a run's command line gives through ml_collections' config_flags (as
    # experiments.train parses it) is the config reproduce builds in-process and compares.
    from absl import flags
    from ml_collections import config_flags

    from cce_jax.training.config import config_to_dict

    for name, (path, quick, kwargs) in sorted(reproduce.SUITES.items()):
        module = reproduce.load_module(quick or path)
        runs = module.sweep(**kwargs, seeds=(0, 1))
        for run in (runs[0], next(r for r in runs if r["loss"] == runs[-1]["loss"])):
            cfg = reproduce.build(quick or path, run["arg"], run["overrides"])
            argv = ["x", f"--config={os.path.join(REPO, quick or path)}:{run['arg']}"]
            argv += [f"--config.{k}={reproduce._flag(v)}" for k, v in run["overrides"].items()]
            fv = flags.FlagValues()
            config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
            fv(argv)
            assert config_to_dict(fv.config) == config_to_dict(cfg), (name, run)
    ldam = reproduce.build("experiments/configs/tiny.py", "loss=ldam_drw,epochs=10", {})
    assert ldam.loss.drw_epoch == 8 and ldam.model.cosine_head and ldam.num_epochs == 10
    code = reproduce.build("experiments/configs/digits_lt.py", "loss=cce_code", {"seeds": (0, 1)})
    assert dict(code.loss.hparams) == {"gamma": 1.0, "normalizer": "k"}
    seg = reproduce.build("experiments/configs/segmentation.py", "loss=mse_ol", {})
    assert seg.loss.hparams.alpha == 6.0
    with pytest.raises(reproduce.ReproduceError, match="config.no_such_key"):
        reproduce.build("experiments/configs/tiny.py", "", {"no_such_key": "1"})
    with pytest.raises(ValueError, match="unknown loss variant 'nope'"):
        reproduce.build("experiments/configs/tiny.py", "loss=nope", {})


def test_unknown_loss_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--suite=tiny", "--losses=ce,nope", "--dry_run"])
    assert "unknown loss variant(s) ['nope']" in capsys.readouterr().err


def test_reuse_only_under_the_same_config(fake, capsys):
    # Issue 9 item 9: a finished run of another config is never reported as this one's.
    assert fake("--losses=ce") == 0
    seed0 = fake.root / "r10" / "ce" / "seed0"
    assert (seed0 / "summary.json").exists()
    capsys.readouterr()
    # Run-control keys may differ: reused, nothing runs again.
    assert fake("--losses=ce", "--config.eval_every=7") == 0
    out = capsys.readouterr().out
    assert "1 finished or failed before, 0 to run" in out
    assert len((seed0 / "calls.txt").read_text().splitlines()) == 1
    # Another source (or any other key): refused, naming the folder and the keys.
    assert fake("--losses=ce", "--source=digits") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run folder ")
    assert str(seed0) in err[0] and "--workdir" in err[0]
    assert (
        "data.source: stored 'cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz', "
        "now 'digits'" in err[0]
    )
    assert len((seed0 / "calls.txt").read_text().splitlines()) == 1
    # An unfinished run folder (config.json, no summary) of another config is refused too.
    (seed0 / "summary.json").unlink()
    assert fake("--losses=ce", "--config.optimizer.lr=0.5") == 2
    assert "optimizer.lr: stored 0.05, now 0.5" in capsys.readouterr().err


def test_failed_runs_are_reported_and_the_grid_goes_on(fake, capsys):
    # Issue 9 item 1: exit 3 (failure.json) and a crash are failures, listed with reasons; the
    # other runs finish; the exit status is non-zero; the JSON twin stays strict.
    # The failing runs come first: the run after them must still be made.
    code = fake("--losses=la,cce_paper,ce", plan={"diverge": ["la"], "crash": ["cce"]})
    assert code == 1
    out = capsys.readouterr().out
    assert "| ce | 10 | 1 | 0 |" in out and "| la | 10 | 0 | 1 |" in out
    assert "| cce_paper | 10 | 0 | 1 |" in out
    assert "failed: la ratio 10 seed 0: non-finite train loss (epoch 2, step 7)" in out
    assert "failed: cce_paper ratio 10 seed 0: exit 1: error: boom in cce" in out
    text = (fake.results / "fake.md").read_text()
    assert "runs finished: 1 of 3; failed: 2" in text and "**Failed runs**" in text
    twin = _strict_load(fake.results / "fake.json")
    assert [len(r["failed"]) for r in twin["rows"]] == [1, 1, 0]
    assert twin["rows"][2]["per_class_accuracy"][2] is None  # NaN mean -> null
    # Rerun: the diverged run is not retried, the crashed one is (and now passes).
    assert fake("--losses=la,cce_paper,ce", plan={"diverge": ["la"]}) == 1
    out = capsys.readouterr().out
    assert "| cce_paper | 10 | 1 | 0 |" in out and "| la | 10 | 0 | 1 |" in out
    assert len((fake.root / "r10" / "la" / "seed0" / "calls.txt").read_text().splitlines()) == 1


def test_sigterm_is_forwarded_to_the_runs_and_a_rerun_resumes(fake, capsys):
    import signal
    import threading

    ready = [fake.root / "r10" / loss / "seed0" / "ready" for loss in ("ce", "la")]

    def preempt():  # once both programs run (--jobs=2), SIGTERM this process
        while not all(p.exists() for p in ready):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    code = fake("--losses=ce,la", "--jobs=2", plan={"wait_signal": ["ce", "la"]})
    out = capsys.readouterr().out
    assert code == 75, out
    assert "stopped by SIGTERM: 0 runs finished, 2 left (checkpointed)" in out
    for loss in ("ce", "la"):  # each program got the signal, saved and exited 75
        d = fake.root / "r10" / loss / "seed0"
        assert (d / "ckpt").exists()
        assert "stopped by SIGTERM; rerun to resume" in (d / "train.log").read_text()
    assert "FAILED" not in out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    # The same command resumes both runs and finishes.
    assert fake("--losses=ce,la", "--jobs=2", plan={"wait_signal": ["ce", "la"]}) == 0
    out = capsys.readouterr().out
    assert "| ce | 10 | 1 | 0 |" in out and "| la | 10 | 1 | 0 |" in out


def test_vmap_seeds_layout_is_collected(fake, capsys):
    assert fake("--losses=ce", "--seeds=0,1", "--vmap_seeds") == 0
    program = fake.root / "r10" / "ce" / "seeds_0_1"
    assert (program / "seed_0" / "summary.json").exists()
    assert (program / "seed_1" / "summary.json").exists()
    calls = (program / "calls.txt").read_text()
    assert "--config.seeds=(0,1,)" in calls and "--config.seed=" not in calls
    out = capsys.readouterr().out
    assert "| ce | 10 | 2 | 0 | 49.50 ± 0.71 |" in out
    assert "| 46.50 ± 0.71 (τ=1) |" in out  # post-hoc LA from the per-seed summaries
    # Single-seed mode finds the vmapped seeds and runs only the new one, in its own layout.
    assert fake("--losses=ce", "--seeds=0,1,2", "--no-vmap_seeds") == 0
    out = capsys.readouterr().out
    assert "2 finished or failed before, 1 to run" in out and "| ce | 10 | 3 | 0 |" in out
    assert (fake.root / "r10" / "ce" / "seed2" / "summary.json").exists()
    # A per-seed config of another run in the vmap layout is refused as well.
    assert fake("--losses=ce", "--seeds=0,1", "--config.batch_size=16") == 2
    assert "seeds_0_1/seed_0" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_resumable(tmp_path, capsys, cifar10_jpeg_cache):
    # The real trainer (one epoch per run); one loss keeps it short (the second run reuses the
    # first one's compiled step from the JAX cache).
    argv = [
        "--suite=tiny",
        "--seeds=0",
        "--losses=ce",
        f"--workdir={tmp_path / 'runs'}",
        f"--config.data.cache_dir={cifar10_jpeg_cache}",
    ]
    reproduce.main(argv)
    text = open(tmp_path / "runs" / "results" / "tiny.md").read()
    for ratio in ("10", "2"):
        assert f"| ce | {ratio} | 1 | 0 |" in text
    assert "NOT the full test split" in text and "LDAM" not in text
    assert (tmp_path / "runs" / "results" / "tiny_vs_ratio.png").exists()
    summary = _strict_load(tmp_path / "runs" / "results" / "tiny.json")
    assert all(math.isfinite(r["stats"]["top1_error"]["mean"]) for r in summary["rows"])
    capsys.readouterr()
    reproduce.main(argv)  # everything is finished: nothing runs again
    assert "2 finished or failed before, 0 to run" in capsys.readouterr().out
    # The issue-9 case: another --source must not reuse these runs.
    with pytest.raises(SystemExit) as e:
        reproduce.main(argv + ["--source=digits"])
    assert e.value.code == 2
    assert "data.source: stored" in capsys.readouterr().err


def test_a_subset_rerun_keeps_the_other_rows(fake, capsys):
    # The report shows every finished run of the workdir, and says which came from before.
    assert fake("--losses=ce,la,cce_paper", plan={"diverge": ["la"]}) == 1
    capsys.readouterr()
    # A rerun of a subset: the earlier rows stay, la's failure does not fail this command.
    assert fake("--losses=ce", "--seeds=0,1") == 0
    out = capsys.readouterr().out
    assert "| ce | 10 | 2 | 0 |" in out and "| cce_paper | 10 | 1 | 0 |" in out
    assert "| la | 10 | 0 | 1 |" in out
    text = (fake.results / "fake.md").read_text()
    assert "the table shows every finished or failed run of" in text
    assert "2 of them made by earlier commands outside this grid" in text
    assert "runs finished: 3 of 6; failed: 1" in text  # la, cce_paper seed 1 never ran
    # The console names each run and its folder; the full command is in its train.log.
    lines = [x for x in out.splitlines() if x.startswith("[1/1]")]
    assert lines == [f"[1/1] ce r10 seed 1: {fake.root / 'r10' / 'ce' / 'seed1'}"], out
    log = (fake.root / "r10" / "ce" / "seed1" / "train.log").read_text().splitlines()
    assert log[0].startswith("# ") and "--config.seed=1" in log[0]


@pytest.mark.parametrize("suite", sorted(reproduce.SUITES))
def test_every_suite_writes_outside_the_checkout_by_default(suite, capsys):
    args = [f"--suite={suite}", "--dry_run", "--no-vmap_seeds", "--jobs=1", "--seeds=0"]
    reproduce.main(args + ["--losses=ce", "--ratios=10"])
    first = capsys.readouterr().out.splitlines()[0]
    runs, results = first.split("; runs: ")[1].split("; report: ")
    for path in (runs, results):
        assert not os.path.abspath(path).startswith(REPO + os.sep), path
    assert results == os.path.join(os.path.dirname(runs), "results")


@pytest.mark.slow
def test_segmentation_suite_end_to_end(tmp_path, capsys):
    """The segmentation suite on a tiny set: real runs, the mIoU table, the per-class IoU plot
    and the picture grid; prepare_segmentation_data leaves a source of the user's alone."""
    from cce_jax.data import Dataset
    from experiments import make_segmentation_data as seg

    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, (20, 16, 16)).astype(np.uint8)
    masks[:, 8, :] = 255
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    ds = Dataset(
        "t",
        images[:12],
        masks[:12],
        [str(i) for i in range(12)],
        images[12:],
        masks[12:],
        ("a", "b", "c"),
    )
    npz = tmp_path / "t.npz"
    seg.save_seg_npz(ds, str(npz))
    argv = [
        "--suite=segmentation",
        "--losses=ce,mse_ol",
        "--seeds=0",
        "--jobs=2",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.source=seg_npz:{npz}",
        "--config.model.width=4",
        "--config.num_epochs=1",
        "--config.batch_size=4",
        "--config.eval_batch_size=4",
        "--config.eval_every=1",
    ]
    reproduce.main(argv)
    out = capsys.readouterr().out
    assert "| mIoU % | pixel acc % |" in out
    results = tmp_path / "w" / "results"
    md = (results / "segmentation.md").read_text()
    assert f"- Data: `seg_npz:{npz}`; ratio 200: 12 training images, pixels per class [" in md
    assert "| mse_ol | 200 | 1 | 0 |" in md
    assert (results / "segmentation_pictures.png").is_file()
    assert (results / "segmentation_per_class_r200.png").is_file()
    rows = json.loads((results / "segmentation.json").read_text())["rows"]
    summary = json.loads(
        (tmp_path / "w" / "segmentation" / "r200" / "ce" / "seed0" / "summary.json").read_text()
    )
    assert rows[0]["stats"]["miou"]["mean"] == pytest.approx(100 * summary["test_miou"])


def test_a_grid_in_a_bucket(fake, tmp_path, capsys):
    # --workdir=gs://...: the reuse check and the report read and write through etils.epath
    # (gs:// is mapped onto a local folder with etils.epath.testing.mock_epath).
    import shutil
    from unittest import mock

    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    assert fake("--losses=ce") == 0
    gcs = tmp_path / "gcs"
    shutil.copytree(tmp_path / "runs" / "fake", gcs / "bucket" / "runs" / "fake")

    def local(p):
        p = os.fspath(p)
        return str(gcs / p[len("gs://") :]) if p.startswith("gs://") else p

    def one(orig, path, *a, **k):
        if a and str(a[0]).startswith("w"):
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)
        return orig(local(path), *a, **k)

    def glob(orig, pattern):
        back = lambda p: "gs://" + os.path.relpath(p, gcs) if p.startswith(str(gcs)) else p
        return [back(p) for p in orig(local(pattern))]

    names = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "stat")
    capsys.readouterr()
    with (
        mock.patch.object(gpath, "_is_tf_installed", lambda: False),
        epath_testing.mock_epath(**{n: one for n in names}, glob=glob),
    ):
        assert fake("--losses=ce", "--workdir=gs://bucket/runs", "--dry_run") == 0
        assert "1 finished or failed before, 0 to run" in capsys.readouterr().out
        assert fake("--losses=ce,la", "--workdir=gs://bucket/runs", "--dry_run") == 0
        out = capsys.readouterr().out
        assert "--workdir=gs://bucket/runs/fake/r10/la/seed0" in out
        assert fake("--losses=ce", "--workdir=gs://bucket/runs") == 0
    assert "| ce | 10 | 1 | 0 |" in (gcs / "bucket" / "runs" / "results" / "fake.md").read_text()
    assert (gcs / "bucket" / "runs" / "results" / "fake_per_class_r10.png").stat().st_size > 1000
    assert not (tmp_path / "gs:").exists()


def test_dry_run_prints_each_program_with_its_config(capsys):
    reproduce.main(["--suite=digits", "--dry_run", "--workdir=/tmp/cce_jax_dry", "--seeds=0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("digits: 6 runs in the grid, 0 finished or failed before, 6 to run")
    code = next(x for x in lines if "/cce_code/seed0 " in x)
    assert "digits_lt.py:loss=cce_code --config.seed=0 --config.data.subset_seed=0" in code
    assert "--config.data.ratio=50.0" in code and "loss_hparam" not in code


def test_picture_grid():
    images = np.full((2, 3, 4, 1), 7, np.uint8)
    masks = np.array([[[0, 1, 255, 1]] * 3, [[2, 2, 2, 2]] * 3], np.uint8)
    pred = np.ones((2, 3, 4), np.int32)
    g = report.picture_grid(images, masks, pred, num_classes=3, gap=2)
    assert g.shape == (2 * 5 - 2, 3 * 6 - 2, 3) and g.dtype == np.uint8
    pal = report.label_palette(3)
    assert np.all(g[:3, :4] == 7)  # the image, gray to RGB
    np.testing.assert_array_equal(g[0, 6:10], pal[[0, 1, 255, 1]])  # truth, ignore white
    np.testing.assert_array_equal(g[0, 12:16], pal[[1, 1, 255, 1]])  # prediction
    np.testing.assert_array_equal(g[5, 12:16], pal[[1, 1, 1, 1]])  # second example
    assert np.all(g[3:5] == 255)  # the gap
    assert len({tuple(c) for c in report.label_palette(40)[:40]}) == 40
    with pytest.raises(ValueError, match="must be \\[N, H, W\\]"):
        report.picture_grid(images, masks[:1], num_classes=3)


def test_a_longer_schedule_continues_the_finished_runs(fake, capsys):
    # A finished run is reused only at the num_epochs asked for: more epochs continue it (the
    # trainer resumes from its last checkpoint), fewer are refused; never a table of runs of
    # another length.
    assert fake("--losses=ce") == 0
    seed0 = fake.root / "r10" / "ce" / "seed0"
    epochs = json.loads((seed0 / "summary.json").read_text())["config"]["num_epochs"]
    capsys.readouterr()
    assert fake("--losses=ce", f"--config.num_epochs={epochs + 1}") == 0
    assert "0 finished or failed before, 1 to run" in capsys.readouterr().out
    calls = (seed0 / "calls.txt").read_text().splitlines()
    assert len(calls) == 2 and f"epochs={epochs + 1}" in calls[-1]
    twin = json.loads((fake.results / "fake.json").read_text())
    assert json.loads((seed0 / "summary.json").read_text())["config"]["num_epochs"] == epochs + 1
    assert twin["rows"][0]["seeds"] == [0]
    assert fake("--losses=ce", f"--config.num_epochs={epochs}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"num_epochs: stored {epochs + 1}, now {epochs}" in err[0], err
