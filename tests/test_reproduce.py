"""Tests of experiments.reproduce: the table from summaries, reuse only under the same config,
failed/stopped runs, both run-folder layouts, strict JSON, and a tiny grid end to end.

Most tests drive ``reproduce.main`` with a fake train program (FAKE_TRAIN below) that follows
the trainer's contract (config.json, summary.json, failure.json + exit 3, exit 75 before a
deadline, ``--config.seeds`` -> ``seed_<s>/``) in well under a second per run; the end-to-end
test uses the real trainer.
"""

import json
import math
import os
import sys
import time

import numpy as np
import pytest

from experiments import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in for experiments.train. FAKE_PLAN (JSON in the environment) picks the behaviour per
# loss name: "crash" (exit 1 with an error line), "diverge" (failure.json, exit 3), "stop_once"
# (with a deadline: exit 75 the first time, finish when rerun), "hang" (ignore the deadline).
FAKE_TRAIN = r"""
import json, os, sys
from experiments import reproduce

argv = sys.argv[1:]
workdir = [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")][0]
cfg = reproduce.build_config([a for a in argv if not a.startswith("--workdir=")])
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
if loss in plan.get("hang", []):  # a trainer that ignores the deadline
    import time

    time.sleep(120)
if loss in plan.get("crash", []):
    print("error: boom in " + loss, flush=True)
    sys.exit(1)
if loss in plan.get("diverge", []):
    write(os.path.join(workdir, "failure.json"),
          {"reason": "non-finite train loss", "epoch": 2, "step": 7})
    sys.exit(3)
if float(cfg.get("deadline") or 0) > 0 and loss in plan.get("stop_once", []):
    if not os.path.exists(ckpt):
        open(ckpt, "w").close()
        print("stopped before epoch 2 to meet the deadline; rerun to resume", flush=True)
        sys.exit(75)


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

# The tiny config plus the fields of the new trainer contract (seeds, deadline).
FAKE_CONFIG = """
from experiments.configs import tiny


def get_config():
    c = tiny.get_config()
    if "seeds" not in c:
        c.seeds = ()
    if "deadline" not in c:
        c.deadline = 0.0
    return c
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A suite "fake" whose runs are FAKE_TRAIN; returns a helper to run reproduce.main."""
    config = tmp_path / "fake_config.py"
    config.write_text(FAKE_CONFIG)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    suite = {
        "config": str(config),
        "quick_config": str(config),
        "profile": "exp",
        "ratios": (10,),
        "losses": ("ce", "la"),
        "seeds": (0,),
        "workdir": str(tmp_path / "runs"),
        "results": "workdir",
        "label": "fake grid",
    }
    monkeypatch.setitem(reproduce.SUITES, "fake", suite)
    monkeypatch.setattr(reproduce, "TRAIN_COMMAND", (sys.executable, str(script)))
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("FAKE_PLAN", raising=False)

    def run(*args, plan=None):
        if plan is not None:
            monkeypatch.setenv("FAKE_PLAN", json.dumps(plan))
        try:
            reproduce.main(["--suite=fake", *args])
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
    rows = reproduce.collect(str(root), ["ce", "cce_paper"], [10.0, 100.0], [0, 1, 2])
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
    md = reproduce.write_report(
        "demo_quick",
        rows,
        quick=True,
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
    assert twin["quick"] and len(twin["rows"]) == 4


def test_protocol_lines_come_from_the_configs(tmp_path):
    # Issue 9 item 10: a max_test-limited test split is not "the full test split", and there is
    # no LDAM-DRW line without ldam_drw in the grid.
    root = tmp_path / "runs"
    _fake_summary(str(root / "r10" / "ce" / "seed0"), 0, 0.7, 0.7, [120, 50, 5], max_test=300)
    rows = reproduce.collect(str(root), ["ce"], [10.0], [0])
    text = "\n".join(reproduce.protocol_lines(rows))
    assert "NOT the full test split" in text and "data.max_test=300" in text
    assert "full balanced" not in text and "LDAM" not in text and "DRW" not in text
    assert "ratio 10: 175 images (5-120 per class)" in text

    _fake_summary(str(root / "r10" / "ce" / "seed1"), 1, 0.7, 0.7, [120, 50, 5])
    rows = reproduce.collect(str(root), ["ce"], [10.0], [1])
    text = "\n".join(reproduce.protocol_lines(rows))
    assert "the full test split (300 images, 100 per class)" in text


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
    rows = reproduce.collect(str(root), ["ce"], [10.0], [0, 1])
    best = rows[0]["posthoc"]
    # Mean over seeds per tau: 0.79 0.835 0.84 0.845 0.815 -> tau 1.5 (not each seed's best).
    assert best["tau"] == 1.5
    np.testing.assert_allclose(best["mean"], 84.5)
    np.testing.assert_allclose(best["sd"], np.std([85.0, 84.0], ddof=1))
    np.testing.assert_allclose(best["tau0_mean"], 79.0)
    line = reproduce.table_lines(rows)[2]
    assert "| 84.50 ± 0.71 (τ=1.5) |" in line
    assert reproduce.posthoc_best([{"test_top1": 0.5}]) is None


def test_strict_json_has_no_nan():
    data = {"a": float("nan"), "b": [1.0, float("inf"), np.float32(2.5)], "c": (np.int64(3),)}
    text = reproduce.dumps_strict(data)
    assert json.loads(text) == {"a": None, "b": [1.0, None, 2.5], "c": [3]}
    assert "NaN" not in text and "Infinity" not in text


def test_run_args_cover_every_variant():
    suite = reproduce.SUITES["cifar10_lt"]
    for loss in reproduce.LOSSES:
        args = reproduce.run_args(suite, "cfg.py", loss, 100, 3, 200, None)
        assert f"--config.loss.name={reproduce.LOSSES[loss]['loss']}" in args
        assert "--config.seed=3" in args and "--config.data.subset_seed=3" in args
    ldam = reproduce.run_args(suite, "cfg.py", "ldam_drw", 100, 0, 200, None)
    assert "--config.loss.drw_epoch=160" in ldam and "--config.model.cosine_head=True" in ldam
    code = reproduce.run_args(suite, "cfg.py", "cce_code", 100, 0, 200, None)
    assert "--loss_hparam=gamma=1.0" in code and "--loss_hparam=normalizer=k" in code
    vm = reproduce.run_args(suite, "cfg.py", "ce", 100, None, 200, None, seeds=[0, 1, 2])
    assert "--config.seeds=(0,1,2,)" in vm and not any("config.seed=" in a for a in vm)


def test_build_config_is_the_trainers_config():
    flags = reproduce.run_args(
        reproduce.SUITES["tiny"],
        "experiments/configs/tiny.py",
        "cce_paper",
        10,
        4,
        1,
        "digits",
        extra=["--config.batch_size=16"],
    )
    cfg = reproduce.build_config(flags)
    assert cfg["seed"] == 4 and cfg["data"]["subset_seed"] == 4 and cfg["num_epochs"] == 1
    assert cfg["data"]["source"] == "digits" and cfg["batch_size"] == 16
    assert cfg["loss"] == dict(
        cfg["loss"], name="cce", hparams={"gamma": -1.0, "normalizer": "k_minus_1"}
    )
    with pytest.raises(reproduce.ReproduceError, match="config.no_such_key"):
        reproduce.build_config(flags + ["--config.no_such_key=1"])
    assert "deadline" in reproduce.RUN_CONTROL_KEYS and "num_epochs" in reproduce.RUN_CONTROL_KEYS
    stored = dict(cfg, num_epochs=99, eval_every=3)
    assert reproduce.config_diff(stored, cfg) == []
    stored["data"] = dict(cfg["data"], source="tfds")
    assert reproduce.config_diff(stored, cfg) == ["data.source: stored 'tfds', now 'digits'"]


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


def test_max_minutes_deadline_stop_and_resume(fake, capsys):
    # Issue 8 section 5: each run gets --config.deadline; an exit 75 ends this call cleanly.
    code = fake("--losses=ce,la", "--max_minutes=5", plan={"stop_once": ["ce"]})
    assert code == 0
    out = capsys.readouterr().out
    assert "time budget reached: 0 runs finished, 2 left; rerun the same command to continue" in out
    calls = (fake.root / "r10" / "ce" / "seed0" / "calls.txt").read_text().splitlines()
    deadline = [
        float(a.split("=", 1)[1])
        for a in json.loads(calls[0])
        if a.startswith("--config.deadline=")
    ]
    assert len(deadline) == 1 and 0 < deadline[0] - time.time() < 300
    assert not (fake.root / "r10" / "la").exists()  # no new run after the stop
    # The same command resumes and finishes (the deadline differs: run control, not a clash).
    assert fake("--losses=ce,la", "--max_minutes=5", plan={"stop_once": ["ce"]}) == 0
    out = capsys.readouterr().out
    assert "| ce | 10 | 1 | 0 |" in out and "| la | 10 | 1 | 0 |" in out
    assert "time budget" not in out
    # Too little time left to start a run: nothing starts, exit 0.
    assert fake("--losses=ce,la", "--seeds=5", "--max_minutes=0.5") == 0
    assert "time budget reached: 0 runs finished, 2 left" in capsys.readouterr().out
    assert not (fake.root / "r10" / "ce" / "seed5").exists()


def test_a_run_past_the_budget_is_stopped(fake, capsys, monkeypatch):
    # The safety net: a run still going at the end of --max_minutes is terminated and counted
    # as left (resumable), not as failed.
    monkeypatch.setattr(reproduce, "MIN_START_S", 0.0)
    t0 = time.time()
    assert fake("--losses=la", "--max_minutes=0.05", plan={"hang": ["la"]}) == 0
    assert time.time() - t0 < 60
    out = capsys.readouterr().out
    assert "stopped" in out and "time budget reached: 0 runs finished, 1 left" in out


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
    assert fake("--losses=ce", "--seeds=0,1", "--vmap_seeds=true") == 0
    program = fake.root / "r10" / "ce" / "seeds_0_1"
    assert (program / "seed_0" / "summary.json").exists()
    assert (program / "seed_1" / "summary.json").exists()
    calls = (program / "calls.txt").read_text()
    assert "--config.seeds=(0,1,)" in calls and "--config.seed=" not in calls
    out = capsys.readouterr().out
    assert "| ce | 10 | 2 | 0 | 49.50 ± 0.71 |" in out
    assert "| 46.50 ± 0.71 (τ=1) |" in out  # post-hoc LA from the per-seed summaries
    # Single-seed mode finds the vmapped seeds and runs only the new one, in its own layout.
    assert fake("--losses=ce", "--seeds=0,1,2", "--vmap_seeds=false") == 0
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
    assert "| la | 10 | 0 | 1 |" in out and "time budget" not in out
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
    args = [f"--suite={suite}", "--dry_run", "--vmap_seeds=false", "--jobs=1", "--seeds=0"]
    reproduce.main(args + ["--losses=ce", "--ratios=10"])
    first = capsys.readouterr().out.splitlines()[0]
    runs, report = first.split("; runs: ")[1].split("; report: ")
    for path in (runs, report):
        assert not os.path.abspath(path).startswith(REPO + os.sep), path
    assert report == os.path.join(os.path.dirname(runs), "results")


@pytest.mark.slow
def test_segmentation_suite_end_to_end(tmp_path, capsys):
    """The segmentation suite on a tiny set: real runs, the mIoU table, the per-class IoU plot
    and the picture grid; prepare_segmentation_data leaves a source of the user's alone."""
    from cce_jax.data import segmentation as seg

    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, (20, 16, 16)).astype(np.uint8)
    masks[:, 8, :] = 255
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    ds = seg.SegmentationDataset(
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
    assert reproduce.prepare_segmentation_data(f"seg_npz:{npz}", None) is None
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
    assert "a segmentation set used whole: 12 training images" in md
    assert "| mse_ol | 200 | 1 | 0 |" in md
    assert (results / "segmentation_pictures.png").is_file()
    assert (results / "segmentation_per_class_r200.png").is_file()
    rows = json.loads((results / "segmentation.json").read_text())["rows"]
    summary = json.loads(
        (tmp_path / "w" / "segmentation" / "r200" / "ce" / "seed0" / "summary.json").read_text()
    )
    assert rows[0]["stats"]["miou"]["mean"] == pytest.approx(100 * summary["test_miou"])
