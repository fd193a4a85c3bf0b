"""Runs a grid of experiments.train runs and writes a table (mean ± sd over seeds) and plots.

  python -m experiments.reproduce --suite=digits               # the first command: ~3 min, CPU
  python -m experiments.reproduce --suite=fashion_mnist_lt     # ~90 min on 2 CPU cores
  python -m experiments.reproduce --suite=segmentation         # ~60 min on 2 CPU cores
  python -m experiments.reproduce --suite=cifar10_lt [--quick] [--seeds=0,1,2] \\
      [--workdir=DIR] [--results_dir=DIR] [--losses=ce,cce_paper] [--ratios=100] \\
      [--source=cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz] [--max_minutes=M] \\
      [--vmap_seeds=auto|true|false] [--jobs=N] [--config.KEY=VALUE ...]

Every run is ``python -m experiments.train`` in a subprocess (cwd: the repo root) with its own
workdir ``WORKDIR/SUITE[_quick]/r{ratio}/{loss}/seed{seed}``, or, with ``--vmap_seeds``, one
program for all seeds of a (loss, ratio) in ``.../r{ratio}/{loss}/seeds_0_1_2`` whose models
write ``seeds_0_1_2/seed_<s>/summary.json``; the table reads both layouts. The output of each
run goes to ``train.log`` in its workdir (and to the console when ``--jobs=1``).
``--config.KEY=VALUE`` flags are passed to every run.

**Reuse is checked.** A run folder is reused (skipped when finished, resumed when not) only if
its stored ``config.json`` equals the config this command asks for, as experiments.train would
build it (config file, the same ``--config.*`` flags, ``--loss_hparam``); only the trainer's
run-control keys (``cce_jax.training.RUN_CONTROL_KEYS``, e.g. ``num_epochs``, ``deadline``)
may differ. Otherwise the command stops before running anything with one ``error:`` line
naming the folder and the differing keys (exit 2): use another ``--workdir``.

**Failures are reported, not hidden.** A run that diverges (exit 3, ``failure.json``) or fails
otherwise is counted in the table's "failed" column and listed with its reason; the other runs
go on; the command exits 1 at the end if any run of the grid failed. A diverged run is not
retried (delete its folder to retry); a run that failed otherwise is retried on the next call.

**Time budget.** ``--max_minutes=M`` gives every run ``--config.deadline`` (30 s, or 10% for
short budgets, before M minutes from the start of this command), so the trainer checkpoints
and exits 75 before an epoch would pass it; no new run starts with less than ``MIN_START_S``
left; then it prints "time budget reached: N runs finished, M left; rerun the same command to
continue" and exits 0. Rerunning resumes every run from its checkpoint. One command per
accelerator lease (or preemptible VM slot) therefore makes steady progress.

**Seeds.** The seed sets the initialisation, the data order and which training examples survive
the imbalance (``config.seed`` and ``config.data.subset_seed``). ``--vmap_seeds`` (default
``auto``: true when ``jax.default_backend()`` is gpu or tpu, false on cpu, where a vmap over
seeds measured no gain) trains the missing seeds of a (loss, ratio) in one program with
``--config.seeds``. ``--jobs=N`` runs N train programs at the same time (default: 1; the
digits suite uses 2 on a CPU with 2+ cores, compile-bound start-ups overlap well there).
Every run gets ``JAX_COMPILATION_CACHE_DIR=WORKDIR/jax_cache`` unless set: the second seed of
a loss reuses the first one's compiled train step.

**Where the files go.** The report (``SUITE[_quick].md`` with a ``.json`` twin (strict JSON,
NaN as null), ``..._per_class_r{ratio}.png``: per-class accuracy against class size, and, for
2+ ratios, ``..._vs_ratio.png``) is rewritten after every finished run and the table is printed
at the end.

Every suite keeps its files outside the checkout by default, so a run never overwrites the
committed tables in ``experiments/results/`` and a fresh clone stays clean (``git status``):
``--results_dir`` defaults to ``WORKDIR/results``, and ``--workdir`` to

* ``$TMPDIR/cce_jax_digits`` (or ``.../cce_jax_tiny``) for ``--suite=digits`` and
  ``--suite=tiny`` (demo and smoke grids): minutes to redo, so the temporary directory is the
  right home and nothing piles up in the home directory of a shared machine;
* ``~/cce_jax_runs`` for ``--suite=cifar10_lt`` / ``cifar10_step`` / ``fashion_mnist_lt`` /
  ``segmentation`` (an hour to days of compute, resumable from checkpoints, so kept across
  reboots).

A segmentation suite (``--suite=segmentation``) first makes its data set when it is missing
(:func:`prepare_segmentation_data`; ``--source`` names the CIFAR-10 copy it is drawn from),
reports mIoU, pixel and mean class accuracy, fwIoU and the many/medium/few mIoU, plots the
per-class IoU and draws ``SUITE_pictures.png``: input, truth and each loss's prediction on
the same test images.

To rewrite a committed table, give ``--results_dir=experiments/results``.

**The report covers the workdir.** The table shows every finished (or failed) run of the
suite's run folder, not only this command's grid: rerunning a subset (``--losses=ce,mse_ol``)
keeps the other rows, and the report says how many rows come from earlier commands. The
"runs finished: N of M" line counts the runs of the table's whole grid.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import functools
import glob
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from cce_jax.training.config import (
    EXIT_CONFIG_ERROR,
    EXIT_DEADLINE,
    EXIT_DIVERGED,
    RUN_CONTROL_KEYS,
    config_diff,
    flatten,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")
OFFLINE_SOURCE = "cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz"

# The train program; tests substitute a fake one (see tests/test_reproduce.py).
TRAIN_COMMAND = (sys.executable, "-m", "experiments.train")
# With --max_minutes: no run starts with less time than this before its deadline.
MIN_START_S = 45.0

# Loss variants: the trainer's loss name, its hyperparameters and other config overrides.
# ``drw`` is the fraction of the epochs after which DRW switches class-balanced weights on
# (160 of 200 in the LDAM-DRW protocol).
LOSSES = {
    "ce": {"loss": "ce"},
    "focal": {"loss": "focal", "hparams": {"gamma": 2.0}},
    "cb_focal": {"loss": "cb_focal", "hparams": {"beta": 0.9999, "gamma": 2.0}},
    "ldam_drw": {
        "loss": "ldam",
        "hparams": {"max_margin": 0.5, "scale": 30.0},
        "cosine_head": True,
        "drw": 0.8,
    },
    "la": {"loss": "la", "hparams": {"tau": 1.0}},
    "bs": {"loss": "bs"},
    "cot": {"loss": "cot"},
    "cce_paper": {"loss": "cce", "hparams": {"gamma": -1.0, "normalizer": "k_minus_1"}},
    "cce_code": {"loss": "cce", "hparams": {"gamma": 1.0, "normalizer": "k"}},
    "mse_ol": {"loss": "mse_ol", "hparams": {"alpha": 5.0}},
}
# The order runs are made in: the losses the quick protocol must cover come first.
PRIORITY = (
    "ce",
    "cce_paper",
    "cce_code",
    "mse_ol",
    "ldam_drw",
    "la",
    "bs",
    "focal",
    "cb_focal",
    "cot",
)

_TMP = tempfile.gettempdir()
# The CIFAR suites' runs (hours to days, resumable): a folder that survives a reboot.
RUNS_HOME = os.path.join(os.path.expanduser("~"), "cce_jax_runs")
SUITES = {
    # The README's first command: six losses on imbalanced 8x8 digits, 2 seeds, ~3 min on
    # 2 CPU cores (see experiments/configs/digits_lt.py for the protocol and measurements).
    "digits": {
        "config": "experiments/configs/digits_lt.py",
        "quick_config": "experiments/configs/digits_lt.py",
        "profile": "exp",
        "ratios": (50,),
        "losses": ("ce", "cce_paper", "cce_code", "mse_ol", "la", "bs"),
        "seeds": (0, 1),
        "jobs": "cpu_cores",
        "workdir": os.path.join(_TMP, "cce_jax_digits"),
        "results": "workdir",
        "label": "imbalanced 8x8 digits, a quick comparison of the losses (small "
        "protocol for a CPU, not a paper protocol)",
    },
    "cifar10_lt": {
        "config": "experiments/configs/cifar10_lt.py",
        "quick_config": "experiments/configs/cifar10_lt_quick.py",
        "profile": "exp",
        "ratios": (100, 10),
        "losses": PRIORITY,
        "workdir": RUNS_HOME,
        "results": "workdir",
    },
    "cifar10_step": {
        "config": "experiments/configs/cifar10_lt.py",
        "quick_config": "experiments/configs/cifar10_lt_quick.py",
        "profile": "step",
        "ratios": (100, 10),
        "losses": PRIORITY,
        "workdir": RUNS_HOME,
        "results": "workdir",
    },
    # The CCE paper's Fashion-MNIST with induced imbalance, a CPU-sized protocol (see
    # experiments/configs/fashion_mnist_lt.py); ~90 min on 2 CPU cores.
    "fashion_mnist_lt": {
        "config": "experiments/configs/fashion_mnist_lt.py",
        "quick_config": "experiments/configs/fashion_mnist_lt.py",
        "profile": "exp",
        "ratios": (100, 10),
        "losses": ("ce", "cce_paper", "cce_code", "mse_ol", "ldam_drw", "la", "bs"),
        "seeds": (0, 1, 2),
        "jobs": "cpu_cores",
        "workdir": RUNS_HOME,
        "label": "Fashion-MNIST-LT, ResNet-8 width 8, 8 epochs (a CPU protocol, not the paper's)",
    },
    # Imbalanced semantic segmentation on long-tailed CIFAR-10 mosaics (the data set is made
    # first when missing; see experiments/configs/segmentation.py); ~60 min on 2 CPU cores.
    # The ratio is the generated set's most / least training pixels (data.ratio is unused).
    "segmentation": {
        "config": "experiments/configs/segmentation.py",
        "quick_config": "experiments/configs/segmentation.py",
        "profile": "exp",
        "ratios": (200,),
        "losses": ("ce", "cce_paper", "cce_code", "mse_ol", "focal", "la", "bs", "ldam_drw"),
        "loss_hparams": {"mse_ol": {"alpha": 6.0}},  # the MSE-OL paper's segmentation value
        "seeds": (0, 1, 2),
        "jobs": "cpu_cores",
        "workdir": RUNS_HOME,
        "task": "segmentation",
        "label": "imbalanced segmentation of CIFAR-10 mosaics, FCN-8, 12 epochs (a CPU "
        "protocol, not the paper's)",
    },
    # Two losses, two ratios, one epoch of the tiny config: the CI test of this script.
    "tiny": {
        "config": "experiments/configs/tiny.py",
        "quick_config": "experiments/configs/tiny.py",
        "profile": "exp",
        "ratios": (10, 2),
        "losses": ("ce", "cce_paper"),
        "overrides": {"num_epochs": 1},
        "workdir": os.path.join(_TMP, "cce_jax_tiny"),
        "results": "workdir",
        "label": "CI smoke grid",
    },
}
METRICS = (
    ("top1_error", "top-1 error %"),
    ("balanced_accuracy", "balanced acc %"),
    ("many", "many %"),
    ("medium", "medium %"),
    ("few", "few %"),
    ("macro_f1", "macro-F1 %"),
)
# The columns of a segmentation suite (the summaries' names; many/medium/few are mIoU).
SEG_METRICS = (
    ("miou", "mIoU %"),
    ("pixel_accuracy", "pixel acc %"),
    ("balanced_accuracy", "mean class acc %"),
    ("fw_iou", "fwIoU %"),
    ("many", "many mIoU %"),
    ("medium", "medium mIoU %"),
    ("few", "few mIoU %"),
)
# Test images in the segmentation picture grid.
GRID_IMAGES = 6


class ReproduceError(Exception):
    """A problem reported as one ``error:`` line (exit 2) before anything runs."""


# --------------------------------------------------------------------------- configs


_CONFIG_CACHE: dict = {}


def build_config(train_flags) -> dict:
    """The config experiments.train builds from ``train_flags``, as plain JSON data
    (``experiments.train.build_config``: the same parser, flags and path rules).

    Raises:
      ReproduceError: the flags or the config file are bad.
    """
    key = tuple(train_flags)
    if key not in _CONFIG_CACHE:
        from experiments import train

        with _cwd(REPO):
            try:
                config = train.build_config(list(train_flags))
            except Exception as e:  # absl/ml_collections raise many kinds
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ReproduceError(f"bad run flags {' '.join(train_flags)}: {msg}") from e
        _CONFIG_CACHE[key] = config.to_json_best_effort(sort_keys=True)
    return json.loads(_CONFIG_CACHE[key])


@contextlib.contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------- the grid


def run_args(
    suite: dict,
    config_path: str,
    loss: str,
    ratio: float,
    seed: int | None,
    num_epochs: int,
    source: str | None,
    *,
    seeds=None,
    extra=(),
) -> list[str]:
    """The experiments.train flags of one run of the grid (without ``--workdir``).

    ``seeds``: several seeds in one program (``--config.seeds``); then ``seed`` is unused.
    """
    spec = LOSSES[loss]
    path = config_path if os.path.isabs(config_path) else os.path.join(REPO, config_path)
    args = [f"--config={path}", f"--config.loss.name={spec['loss']}"]
    if seeds:
        args.append(f"--config.seeds=({','.join(str(int(s)) for s in seeds)},)")
    else:
        args += [f"--config.seed={seed}", f"--config.data.subset_seed={seed}"]
    args += [
        f"--config.data.profile={suite['profile']}",
        f"--config.data.ratio={float(ratio)}",
        "--config.progress=False",
    ]
    for key, value in suite.get("overrides", {}).items():
        args.append(f"--config.{key}={value}")
    if source:
        args.append(f"--config.data.source={source}")
    if spec.get("cosine_head"):
        args.append("--config.model.cosine_head=True")
    if spec.get("drw"):
        args.append(f"--config.loss.drw_epoch={int(round(spec['drw'] * num_epochs))}")
    args += list(extra)
    hparams = {**spec.get("hparams", {}), **suite.get("loss_hparams", {}).get(loss, {})}
    for key, value in hparams.items():
        args.append(f"--loss_hparam={key}={value}")
    return args


def _loss_dir(root, loss, ratio):
    return os.path.join(root, f"r{float(ratio):g}", loss)


def vmap_dir_name(seeds) -> str:
    return "seeds_" + "_".join(str(int(s)) for s in seeds)


def _vmap_dirs(root, loss, ratio, seed):
    """The ``seeds_*`` program folders of (loss, ratio) that trained ``seed``."""
    out = []
    for d in sorted(glob.glob(os.path.join(_loss_dir(root, loss, ratio), "seeds_*"))):
        try:
            members = [int(s) for s in os.path.basename(d)[len("seeds_") :].split("_")]
        except ValueError:
            continue
        if int(seed) in members:
            out.append(d)
    return out


def seed_dirs(root, loss, ratio, seed) -> list[tuple[str, str | None]]:
    """Where a model of (loss, ratio, seed) may live: (model folder, program folder or None)."""
    out = [(os.path.join(_loss_dir(root, loss, ratio), f"seed{seed}"), None)]
    out += [(os.path.join(d, f"seed_{seed}"), d) for d in _vmap_dirs(root, loss, ratio, seed)]
    return out


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def seed_status(root, loss, ratio, seed) -> tuple[str, str | None, dict | None]:
    """("done", folder, summary) | ("failed", folder, failure) | ("todo", None, None)."""
    failed = None
    for d, program in seed_dirs(root, loss, ratio, seed):
        summary = _read_json(os.path.join(d, "summary.json"))
        if summary is not None:
            return "done", d, summary
        for f in (
            os.path.join(d, "failure.json"),
            os.path.join(program, "failure.json") if program else None,
        ):
            failure = _read_json(f) if f else None
            if failure is not None and failed is None:
                failed = (os.path.dirname(f), failure)
    if failed:
        return "failed", failed[0], failed[1]
    return "todo", None, None


def grid_on_disk(root: str) -> tuple[list[str], list[float], list[int]]:
    """The losses, ratios and seeds of every finished or failed run under ``root``."""
    losses, ratios, seeds = set(), set(), set()
    for rdir in glob.glob(os.path.join(root, "r*")):
        try:
            ratio = float(os.path.basename(rdir)[1:])
        except ValueError:
            continue
        for loss in LOSSES:
            found = glob.glob(os.path.join(rdir, loss, "seed*", "*.json"))
            found += glob.glob(os.path.join(rdir, loss, "seeds_*", "seed_*", "summary.json"))
            for path in found:
                if os.path.basename(path) not in ("summary.json", "failure.json"):
                    continue
                parts = os.path.relpath(path, os.path.join(rdir, loss)).split(os.sep)
                name = parts[-2] if parts[0].startswith("seeds_") else parts[0]
                digits = name.removeprefix("seed_").removeprefix("seed")
                if digits.isdigit():
                    losses.add(loss)
                    ratios.add(ratio)
                    seeds.add(int(digits))
    order = [x for x in PRIORITY if x in losses] + sorted(losses - set(PRIORITY))
    return order, sorted(ratios), sorted(seeds)


def _failure_reason(failure: dict) -> str:
    reason = str(failure.get("reason", "failed"))
    where = [f"{k} {failure[k]}" for k in ("epoch", "step") if failure.get(k) is not None]
    return reason + (f" ({', '.join(where)})" if where else "")


def _nanmean(rows):
    """Mean over seeds per class; None (no test example) stays NaN, later null in JSON."""
    arr = np.array([[np.nan if a is None else a for a in r] for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        return np.nanmean(arr, 0).tolist()


def _mean_sd(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), sd


def _row_metrics(summary: dict) -> dict:
    def pct(x):
        return None if x is None else 100.0 * x

    top1 = summary.get("test_top1")
    out = {
        "top1_error": None if top1 is None else pct(1.0 - top1),
        "balanced_accuracy": pct(summary.get("test_balanced_accuracy")),
        "many": pct(summary.get("test_many")),
        "medium": pct(summary.get("test_medium")),
        "few": pct(summary.get("test_few")),
        "macro_f1": pct(summary.get("test_macro_f1")),
    }
    if summary.get("task") == "segmentation":
        out.update(
            miou=pct(summary.get("test_miou")),
            pixel_accuracy=pct(top1),
            fw_iou=pct(summary.get("test_fw_iou")),
        )
    return out


def metrics_of(rows) -> tuple:
    """The table's columns: :data:`SEG_METRICS` for segmentation rows, else :data:`METRICS`."""
    return SEG_METRICS if any(r.get("task") == "segmentation" for r in rows) else METRICS


def posthoc_best(summaries: list[dict]) -> dict | None:
    """Post-hoc logit adjustment: the tau with the best mean balanced accuracy over seeds.

    Args:
      summaries: per-seed summaries; those without ``posthoc_logit_adjustment`` are skipped.

    Returns:
      ``{"tau", "mean", "sd", "per_seed", "tau0_mean", "num_seeds"}`` (balanced accuracy in %),
      or None when no summary has the list.
    """
    tables = []
    for s in summaries:
        rows = s.get("posthoc_logit_adjustment") or []
        table = {float(r["tau"]): r.get("balanced_accuracy") for r in rows if "tau" in r}
        if table:
            tables.append(table)
    if not tables:
        return None
    taus = sorted(set.intersection(*(set(t) for t in tables)))
    best = None
    for tau in taus:
        vals = [100.0 * t[tau] for t in tables if t[tau] is not None]
        mean, sd = _mean_sd(vals)
        if mean is not None and (best is None or mean > best["mean"] + 1e-12):
            best = {"tau": tau, "mean": mean, "sd": sd, "per_seed": vals}
    if best is None:
        return None
    best["tau0_mean"] = _mean_sd([100.0 * t[0.0] for t in tables if t.get(0.0) is not None])[0]
    best["num_seeds"] = len(tables)
    return best


def collect(root: str, losses, ratios, seeds, *, expected=None, extra_failures=None) -> list[dict]:
    """One entry per (loss, ratio) with the finished seeds' metrics and the failed seeds.

    Args:
      root: the suite's run folder (``WORKDIR/SUITE``).
      losses, ratios, seeds: the grid.
      expected: optional ``f(loss, ratio, seed) -> config dict or None``; a finished run whose
        stored config differs (beyond run control) raises :class:`ReproduceError` (None: not
        checked).
      extra_failures: ``{(loss, ratio, seed): (folder, reason)}`` of failures of this call
        that left no ``failure.json`` (crashes, bad flags).

    Returns:
      Rows with ``stats`` (mean/sd of each metric in %), ``posthoc``, ``failed`` and more.
    """
    extra_failures = extra_failures or {}
    rows = []
    for ratio in ratios:
        for loss in losses:
            runs, run_seeds, run_dirs, failed = [], [], [], []
            for seed in seeds:
                status, folder, data = seed_status(root, loss, ratio, seed)
                if status == "done":
                    want = expected(loss, ratio, seed) if expected is not None else None
                    if want is not None:
                        diff = config_diff(data.get("config", {}), want, ignore=("seeds",))
                        if diff:
                            raise ReproduceError(_mismatch_message(folder, diff))
                    runs.append(data)
                    run_seeds.append(int(seed))
                    run_dirs.append(folder)
                elif status == "failed":
                    failed.append(
                        {"seed": int(seed), "workdir": folder, "reason": _failure_reason(data)}
                    )
                elif (loss, float(ratio), int(seed)) in extra_failures:
                    folder, reason = extra_failures[(loss, float(ratio), int(seed))]
                    failed.append({"seed": int(seed), "workdir": folder, "reason": reason})
            if not runs and not failed:
                continue
            per_seed = [_row_metrics(s) for s in runs]
            names = per_seed[0] if per_seed else dict(METRICS)
            stats = {name: _mean_sd([m.get(name) for m in per_seed]) for name in names}
            first = runs[0] if runs else {}
            seg = first.get("task") == "segmentation"
            rows.append(
                {
                    "loss": loss,
                    "ratio": float(ratio),
                    "seeds": run_seeds,
                    "run_dirs": run_dirs,
                    "failed": failed,
                    "stats": {k: {"mean": v[0], "sd": v[1]} for k, v in stats.items()},
                    "posthoc": posthoc_best(runs),
                    "per_seed": per_seed,
                    "class_counts": first.get("class_counts"),
                    "test_class_counts": first.get("test_class_counts"),
                    "num_test": first.get("num_test"),
                    "per_class_accuracy": (
                        _nanmean([s["per_class_accuracy"] for s in runs]) if runs else None
                    ),
                    "task": first.get("task", "classification"),
                    "per_class_iou": _nanmean([s["per_class_iou"] for s in runs]) if seg else None,
                    "num_test_pixels": first.get("num_test_pixels"),
                    "class_names": first.get("class_names"),
                    "wall_time_s": float(np.sum([s.get("wall_time_s") or 0.0 for s in runs])),
                    "num_train": (
                        (first["num_train"] if seg else int(np.sum(first["class_counts"])))
                        if runs
                        else None
                    ),
                    "config": first.get("config"),
                    "versions": first.get("versions"),
                    "device": {
                        k: first.get(k)
                        for k in ("device_count", "process_count", "device_kind", "platform")
                        if k in first
                    },
                }
            )
    return rows


# --------------------------------------------------------------------------- report


def strict_json(obj):
    """``obj`` as strict-JSON-ready data: NaN/inf -> None, numpy -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def dumps_strict(obj, **kwargs) -> str:
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def _fmt(stat):
    if stat["mean"] is None:
        return "n/a"
    if stat["sd"] is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['sd']:.2f}"


def _fmt_posthoc(p):
    if not p:
        return "n/a"
    return _fmt(p) + f" (τ={p['tau']:g})"


def table_lines(rows: list[dict]) -> list[str]:
    """The markdown table: one line per (loss, ratio)."""
    metrics = metrics_of(rows)
    bal = "mean class acc" if metrics is SEG_METRICS else "bal acc"
    header = (
        "| loss | ratio | n | failed | "
        + " | ".join(label for _, label in metrics)
        + f" | post-hoc LA {bal} % (best τ) | min/run |"
    )
    lines = [header, "|" + "---|" * (len(metrics) + 6)]
    for r in rows:
        cells = [_fmt(r["stats"].get(k, {"mean": None})) for k, _ in metrics]
        n = len(r["seeds"])
        per_run = f"{r['wall_time_s'] / 60 / n:.1f}" if n else "n/a"
        lines.append(
            f"| {r['loss']} | {r['ratio']:g} | {n} | {len(r['failed'])} | "
            + " | ".join(cells)
            + f" | {_fmt_posthoc(r.get('posthoc'))} | {per_run} |"
        )
    return lines


def _schedule_text(cfg):
    s = cfg["schedule"]
    warm = f"warm-up {s.get('warmup_epochs', 0):g} epochs"
    if s["name"] == "step":
        pairs = ", ".join(
            f"x{f:g} from epoch {b}"
            for b, f in zip(s.get("boundaries") or (), s.get("factors") or ())
        )
        return f"step schedule ({warm}; lr {pairs or 'constant'})"
    return f"{s['name']} schedule ({warm})"


def _counts_text(counts):
    if not counts:
        return "?"
    counts = [int(c) for c in counts]
    if len(set(counts)) == 1:
        return f"{counts[0]} per class"
    return f"{min(counts)}-{max(counts)} per class"


def _loss_text(loss, cfg):
    lcfg = cfg["loss"]
    hp = ", ".join(f"{k}={v}" for k, v in sorted((lcfg.get("hparams") or {}).items()))
    text = f"{loss} = `{lcfg['name']}`" + (f" ({hp})" if hp else "")
    if cfg.get("model", {}).get("cosine_head"):
        text += ", cosine head"
    if int(lcfg.get("drw_epoch", -1)) >= 0:
        text += (
            f", DRW (class-balanced weights, beta {lcfg.get('drw_beta')}) from epoch "
            f"{lcfg['drw_epoch']}"
        )
    return text


# Keys that differ between the rows of a grid by design.
_GRID_KEYS = ("loss.", "model.cosine_head", "seed", "data.subset_seed", "data.ratio", "seeds")


def protocol_lines(rows: list[dict]) -> list[str]:
    """The protocol, from the finished runs' configs and summaries (no fixed claims)."""
    done = [r for r in rows if r["config"]]
    if not done:
        return []
    cfg = done[0]["config"]
    model, opt, data = cfg["model"], cfg["optimizer"], cfg["data"]
    lines = [
        f"- Protocol: {model['name']} (width {model.get('width') or 'default'}, "
        f"{model.get('dtype', 'float32')}), {cfg['num_epochs']} epochs, batch "
        f"{cfg['batch_size']}, SGD lr {opt['lr']} momentum {opt['momentum']}"
        f"{' (Nesterov)' if opt.get('nesterov') else ''} weight decay {opt['weight_decay']}, "
        f"{_schedule_text(cfg)}; the final weights are evaluated.",
    ]
    source = data["source"]
    name = f" ({data['name']})" if source == "tfds" and data.get("name") else ""
    pipeline = f", {data['pipeline']} pipeline" if data.get("pipeline") else ""
    seg = done[0].get("task") == "segmentation"
    if seg:
        c = done[0]["class_counts"]
        lines.append(
            f"- Data: `{source}`{pipeline}, a segmentation set used whole: "
            f"{done[0]['num_train']} training images, {min(c)}-{max(c)} training pixels per "
            f"class ({max(c) / max(min(c), 1):.0f}:1; data.profile and data.ratio do not "
            "apply)."
        )
    else:
        train = "; ".join(
            f"ratio {r['ratio']:g}: {r['num_train']} images ({min(r['class_counts'])}-"
            f"{max(r['class_counts'])} per class)"
            for r in {r["ratio"]: r for r in done}.values()
        )
        lines.append(
            f"- Data: `{source}`{name}{pipeline}, {data['profile']} profile; training split "
            f"{train}."
        )
    num_test = done[0].get("num_test")
    test_counts = _counts_text(done[0].get("test_class_counts"))
    if seg:
        test_counts = f"{done[0].get('num_test_pixels')} labelled pixels, " + (
            _counts_text(done[0].get("test_class_counts")).replace("per class", "pixels per class")
        )
    if data.get("max_test") is None:
        size = f" ({num_test} images, {test_counts})" if num_test else ""
        lines.append(f"- Evaluation: the full test split{size}.")
    else:
        lines.append(
            f"- Evaluation: {num_test or data['max_test']} test images "
            f"(data.max_test={data['max_test']}: NOT the full test split; "
            f"{test_counts})."
        )
    lines.append(
        "- Losses: "
        + "; ".join(
            _loss_text(loss, r["config"]) for loss, r in {r["loss"]: r for r in done}.items()
        )
        + "."
    )
    # Anything else that is not the same in every row (e.g. a per-run override).
    flat = [flatten(r["config"]) for r in done]
    skip = RUN_CONTROL_KEYS
    differ = sorted(
        k
        for k in set().union(*flat)
        if k not in skip
        and not any(k == g or k.startswith(g) for g in _GRID_KEYS)
        and len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1
    )
    if differ:
        lines.append(
            "- **The rows differ in** "
            + ", ".join(f"`{k}`" for k in differ)
            + " (see the JSON twin)."
        )
    return lines


def write_report(
    name: str,
    rows: list[dict],
    *,
    quick: bool,
    command: str,
    grid: dict,
    out_dir: str = RESULTS,
    label: str | None = None,
    note: str | None = None,
) -> str:
    """Writes ``out_dir/name.md``, its strict-JSON twin and the plots; returns the .md path."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    done = [r for r in rows if r["config"]]
    cfg = done[0]["config"] if done else {}
    if label is None:
        label = "REDUCED (quick) protocol — not the paper protocol" if quick else "paper protocol"
    lines = [f"# {name}: {label}", ""]
    if quick:
        lines += [
            "**This table uses a reduced protocol that fits a 2-core CPU** (smaller "
            "network, fewer epochs; see the protocol line). Its numbers are far below the "
            "paper protocol's and only compare the losses with each other under this "
            "protocol.",
            "",
        ]
    finished = sum(len(r["seeds"]) for r in rows)
    failed = [(r, f) for r in rows for f in r["failed"]]
    total = len(grid["losses"]) * len(grid["ratios"]) * len(grid["seeds"])
    lines.append(f"- Command: `{command}`")
    lines += protocol_lines(rows)
    lines.append(
        f"- Seeds: {grid['seeds']} (each seed sets the init, the data order and the subset)."
    )
    if cfg:
        wall = sum(r["wall_time_s"] for r in rows)
        lines += [
            f"- Hardware: devices {done[0]['device']}; versions {done[0]['versions']}; report "
            f"written on {platform.machine()} with {os.cpu_count()} CPU cores.",
            f"- Sum of the finished runs' wall times: {wall / 60:.1f} min. Generated "
            f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        ]
    lines += [
        f"- Grid: losses {list(grid['losses'])}, ratios {list(grid['ratios'])}; runs "
        f"finished: {finished} of {total}; failed: {len(failed)}.",
    ]
    lines += [f"- {note}"] if note else []
    lines.append("")
    if failed:
        lines += ["**Failed runs** (not in the means):", ""]
        lines += [
            f"- {r['loss']} ratio {r['ratio']:g} seed {f['seed']}: {f['reason']} (`{f['workdir']}`)"
            for r, f in failed
        ]
        lines.append("")
    lines += table_lines(rows)
    groups = (
        "Many/medium/few: the mean IoU of the most, middle and least frequent thirds of the "
        "classes by training pixels (3/4/3 of 10). mIoU: mean over classes of "
        "TP / (TP + FP + FN) on the test pixels; fwIoU weights the IoUs by test pixels."
        if metrics_of(rows) is SEG_METRICS
        else "Many/medium/few: classes with >100, 20-100, <20 training images (n/a when a "
        "group is empty)."
    )
    lines += [
        "",
        f"mean ± sd over seeds (sd only with 2+ seeds). {groups} Post-hoc LA: "
        "balanced accuracy of `logits - τ log(prior)` from the same models, at the τ in "
        "(0, 0.5, 1, 1.5, 2) with the best mean over seeds; τ is picked on the test split "
        "(an oracle choice, optimistic); n/a when the summaries do not have it.",
        "",
    ]
    plots = _plots(base, rows)
    if metrics_of(rows) is SEG_METRICS:
        plots += _picture_grid(base, rows)
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(base + ".md.tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(base + ".md.tmp", base + ".md")
    with open(base + ".json.tmp", "w") as f:
        f.write(
            dumps_strict(
                {"suite": name, "quick": quick, "command": command, "grid": grid, "rows": rows},
                indent=1,
            )
            + "\n"
        )
    os.replace(base + ".json.tmp", base + ".json")
    return base + ".md"


def _plots(base: str, rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r["config"]]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ratio in sorted({r["ratio"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6, 4))
        seg = metrics_of(rows) is SEG_METRICS
        for r in rows:
            if r["ratio"] != ratio:
                continue
            counts = np.asarray(r["class_counts"])
            order = np.argsort(-counts, kind="stable")
            acc = np.asarray(r["per_class_iou" if seg else "per_class_accuracy"], float)[order]
            ax.plot(
                counts[order], 100 * acc, marker="o", label=f"{r['loss']} (n={len(r['seeds'])})"
            )
        ax.set_xscale("log")
        what = "IoU" if seg else "accuracy"
        ax.set_xlabel(f"training {'pixels' if seg else 'images'} of the class")
        ax.set_ylabel(f"test {what} of the class %")
        ax.set_title(f"per-class {what}, ratio {ratio:g} (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = f"{base}_per_class_r{ratio:g}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    if len({r["ratio"] for r in rows}) < 2:
        return paths
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss in dict.fromkeys(r["loss"] for r in rows):
        pts = sorted(
            (r["ratio"], r["stats"]["balanced_accuracy"])
            for r in rows
            if r["loss"] == loss and r["stats"]["balanced_accuracy"]["mean"] is not None
        )
        ax.errorbar(
            [p[0] for p in pts],
            [p[1]["mean"] for p in pts],
            yerr=[p[1]["sd"] or 0.0 for p in pts],
            marker="o",
            capsize=3,
            label=loss,
        )
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio n_max / n_min")
    ax.set_ylabel("balanced test accuracy %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = f"{base}_vs_ratio.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths


def _picture_grid(base: str, rows: list[dict]) -> list[str]:
    """Input, truth and each loss's prediction (its first finished seed) on the same test
    images, with a class legend: ``base_pictures.png``."""
    from cce_jax.data import segmentation
    from cce_jax.training import report

    preds, names, first = [], [], None
    for r in rows:
        folder = next(
            (
                d
                for d in r.get("run_dirs", ())
                if os.path.isfile(os.path.join(d, "predictions.npz"))
            ),
            None,
        )
        if folder is None:
            continue
        arrays = report.read_predictions(folder)
        first = first or arrays
        preds.append(arrays["predictions"][:GRID_IMAGES])
        names.append(r["loss"])
    if first is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    k = len(rows[0]["class_counts"])
    grid = segmentation.picture_grid(
        first["images"][:GRID_IMAGES], first["labels"][:GRID_IMAGES], *preds, num_classes=k
    )
    columns = ["input", "truth", *names]
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(columns), 1.2 + 0.9 * GRID_IMAGES), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    step = grid.shape[1] / len(columns)
    ax.set_xticks([step * (i + 0.5) for i in range(len(columns))], columns, rotation=45, fontsize=7)
    ax.set_yticks([])
    palette = segmentation.label_palette(k)
    class_names = rows[0].get("class_names") or [str(i) for i in range(k)]
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in range(k)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignore"))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("test images: input, truth, each loss (seed of its first run)", fontsize=8)
    fig.tight_layout()
    path = f"{base}_pictures.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------- running


def prepare_segmentation_data(run_source: str, cifar_source: str | None) -> str | None:
    """Makes the CIFAR-10 segmentation set of ``experiments/configs/segmentation.py`` when
    ``run_source`` (the runs' ``data.source``) is its file and the file is missing. The
    mosaics are drawn from ``cifar_source`` (default: the offline archive where it exists,
    else ``tfds:cifar10``). Returns the folder made or found, or None for another source."""
    from cce_jax import data as data_lib
    from cce_jax.data import segmentation
    from experiments.configs import segmentation as seg_config

    folder = os.path.abspath(os.path.expanduser(seg_config.data_dir()))
    kind, path = segmentation.parse_seg_source(run_source)
    if os.path.dirname(os.path.abspath(path)) != folder:
        return None
    if cifar_source is None:
        offline = OFFLINE_SOURCE.partition(":")[2]
        cifar_source = OFFLINE_SOURCE if os.path.isfile(os.path.join(REPO, offline)) else None
    cfg = data_lib.default_config()
    cfg.source = cifar_source or "tfds:cifar10"
    if cfg.source.startswith("cifar10_jpeg:"):
        cfg.source = "cifar10_jpeg:" + os.path.join(REPO, cfg.source.partition(":")[2])
    if not os.path.isdir(folder):
        print(f"making the segmentation set {folder} from {cfg.source} ...", flush=True)
    segmentation.ensure_cifar_segmentation(folder, cifar=lambda: data_lib.load_source(cfg))
    return folder


def _mismatch_message(folder: str, diff: list[str]) -> str:
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more keys" if len(diff) > 4 else "")
    return (
        f"run folder {folder} holds a run of another config ({shown}); use another "
        "--workdir (or delete that folder) so old results are not reported as new ones"
    )


@dataclasses.dataclass
class Unit:
    """One train program: one seed, or several seeds with ``--config.seeds``."""

    loss: str
    ratio: float
    seeds: tuple
    vmap: bool
    workdir: str
    flags: list

    def label(self) -> str:
        s = ",".join(str(x) for x in self.seeds)
        return f"{self.loss} r{self.ratio:g} seed{'s' if self.vmap else ''} {s}"


@functools.cache
def _default_backend() -> str:
    """jax.default_backend() of a fresh process (this one never touches the accelerator)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.default_backend())"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        return out.stdout.strip().splitlines()[-1] if out.returncode == 0 else "cpu"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "cpu"


class _Runner:
    """Starts train programs, copies their output to ``train.log`` (and the console)."""

    def __init__(self, cmd_prefix, env, echo):
        self.cmd_prefix, self.env, self.echo = list(cmd_prefix), env, echo
        self.running = {}  # Popen -> (unit, t0, thread, tail)
        self.signalled = set()  # programs a signal was forwarded to

    def start(self, unit: Unit):
        os.makedirs(unit.workdir, exist_ok=True)
        cmd = self.cmd_prefix + [f"--workdir={unit.workdir}"] + unit.flags
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        tail = collections.deque(maxlen=40)
        log = open(os.path.join(unit.workdir, "train.log"), "a")
        log.write("# " + " ".join(shlex.quote(c) for c in cmd) + "\n")

        def pump():
            with log:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    tail.append(line.rstrip("\n"))
                    if self.echo:
                        sys.stdout.write("  " + line)
                        sys.stdout.flush()

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        self.running[proc] = (unit, time.time(), thread, tail)
        return cmd

    def wait_any(self, hard_stop: float | None):
        """Blocks until a program ends; returns (unit, returncode, seconds, tail, killed)."""
        while True:
            for proc in list(self.running):
                if proc.poll() is not None:
                    unit, t0, thread, tail = self.running.pop(proc)
                    thread.join(timeout=10)
                    return unit, proc.returncode, time.time() - t0, list(tail), False
            if hard_stop is not None and time.time() > hard_stop:
                proc = next(iter(self.running))
                self.stop(proc)
                unit, t0, thread, tail = self.running.pop(proc)
                thread.join(timeout=10)
                return unit, proc.returncode, time.time() - t0, list(tail), True
            time.sleep(0.1)

    @staticmethod
    def stop(proc, grace: float = 20.0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self):
        for proc in list(self.running):
            self.stop(proc, grace=5.0)
        self.running.clear()

    def forward(self, signum: int, *, once: bool = False) -> None:
        """Sends ``signum`` to every running program (each saves its position and exits 75);
        with ``once``, only to those that got no signal yet."""
        for proc in list(self.running):
            if once and proc in self.signalled:
                continue
            self.signalled.add(proc)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)


def _forward_signals(runner: _Runner, stopped: list):
    """From now on SIGTERM/SIGINT are forwarded to the running programs and recorded in
    ``stopped`` (then no new run starts and the caller waits for the programs to save and
    exit). Returns the function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum, frame):
        stopped.append(signal.Signals(signum).name)
        # SIGTERM for both: a program started in the background ignores SIGINT.
        runner.forward(signal.SIGTERM)

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore():
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def _tri_state(text: str) -> str:
    value = text.strip().lower()
    mapping = {
        "auto": "auto",
        "true": "true",
        "1": "true",
        "yes": "true",
        "false": "false",
        "0": "false",
        "no": "false",
    }
    if value not in mapping:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return mapping[value]


def _parser():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other --config.KEY=VALUE flags are passed to every run.",
    )
    p.add_argument("--suite", required=True, choices=sorted(SUITES))
    p.add_argument("--quick", action="store_true", help="the reduced CPU protocol")
    p.add_argument("--seeds", default=None, help="comma list (default: the suite's, or 0,1,2)")
    p.add_argument(
        "--workdir",
        default=None,
        help="run folders (default: $TMPDIR/cce_jax_SUITE for digits and tiny, "
        "~/cce_jax_runs for the cifar10 suites)",
    )
    p.add_argument("--losses", default=None, help="comma list (default: the suite's)")
    p.add_argument("--ratios", default=None, help="comma list (default: the suite's)")
    p.add_argument(
        "--source",
        default=None,
        help="data.source for every run (default: the config's; the offline "
        f"copy is {OFFLINE_SOURCE})",
    )
    p.add_argument(
        "--results_dir",
        default=None,
        help="report folder (default: WORKDIR/results; the committed tables are in "
        "experiments/results)",
    )
    p.add_argument(
        "--max_minutes",
        type=float,
        default=None,
        help="stop cleanly (checkpointed) before this many minutes; rerun resumes",
    )
    p.add_argument(
        "--vmap_seeds",
        type=_tri_state,
        default="auto",
        help="auto|true|false: all seeds of a (loss, ratio) in one program (auto: true on gpu/tpu)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="train programs at the same time (default: the suite's, else 1)",
    )
    p.add_argument(
        "--jax_cache",
        default=None,
        help="JAX_COMPILATION_CACHE_DIR for the runs (default WORKDIR/jax_cache; '' for none)",
    )
    p.add_argument("--dry_run", action="store_true", help="print the runs, run nothing")
    p.add_argument("--train_command", default=None, help=argparse.SUPPRESS)  # tests
    return p


def main(argv=None):
    t_start = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    extra = [a for a in rest if a.startswith("--config.") and "=" in a]
    if len(extra) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in extra)}")
    try:
        code = _run(args, argv, extra, t_start)
    except ReproduceError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG_ERROR
    if code:
        sys.exit(code)


def _run(args, argv, extra, t_start) -> int:
    suite = SUITES[args.suite]
    has_quick = suite["quick_config"] != suite["config"]
    name = args.suite + ("_quick" if args.quick and has_quick else "")
    config_path = suite["quick_config"] if args.quick else suite["config"]
    try:
        seeds = (
            [int(s) for s in args.seeds.split(",") if s.strip()]
            if args.seeds
            else list(suite.get("seeds", (0, 1, 2)))
        )
        ratios = (
            [float(r) for r in args.ratios.split(",")]
            if args.ratios
            else [float(r) for r in suite["ratios"]]
        )
    except ValueError as e:
        _parser().error(f"--seeds takes integers and --ratios numbers, comma-separated: {e}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        _parser().error(f"--max_minutes must be > 0, got {args.max_minutes}")
    losses = args.losses.split(",") if args.losses else list(suite["losses"])
    unknown = sorted(set(losses) - set(LOSSES))
    if unknown:
        _parser().error(f"unknown loss variant(s) {unknown}; known: {', '.join(LOSSES)}")
    for flag, value in (("--workdir", args.workdir), ("--results_dir", args.results_dir)):
        if value and "://" in value:  # os.path.abspath would make it a local 'gs:' folder
            _parser().error(
                f"{flag}={value}: the grid runner needs a local folder; for a bucket, run "
                "each run with python -m experiments.train --workdir=gs://BUCKET/RUN"
            )
    workdir = os.path.abspath(
        os.path.expanduser(args.workdir or suite.get("workdir", "runs/reproduce"))
    )
    root = os.path.join(workdir, name)
    if args.results_dir is not None:
        results_dir = os.path.abspath(args.results_dir)
    else:  # every suite: outside the checkout (the committed tables stay as they are)
        results_dir = os.path.join(workdir, "results")
    cmd_prefix = shlex.split(args.train_command) if args.train_command else list(TRAIN_COMMAND)
    command = "python -m experiments.reproduce " + " ".join(shlex.quote(a) for a in argv)
    label = suite.get("label")
    if label == "CI smoke grid":
        label = f"CI smoke grid ({suite.get('overrides', {}).get('num_epochs', '?')} epoch(s))"

    # The deadline of the runs (with --max_minutes) and the hard stop of this command.
    budget_end = t_start + 60.0 * args.max_minutes if args.max_minutes else None
    run_deadline = None
    if budget_end is not None:
        budget = 60.0 * args.max_minutes
        run_deadline = budget_end - min(30.0, 0.1 * budget)
    deadline_flags = [f"--config.deadline={run_deadline:.1f}"] if run_deadline else []

    base_flags = [f"--config={os.path.join(REPO, config_path)}", *extra]
    for key, value in suite.get("overrides", {}).items():
        base_flags.append(f"--config.{key}={value}")
    base_config = build_config(base_flags)
    num_epochs = int(base_config["num_epochs"])
    run_source = args.source
    if suite.get("task") == "segmentation":  # --source names the CIFAR-10 copy to draw from
        run_source = None
        if not args.dry_run:
            prepare_segmentation_data(base_config["data"]["source"], args.source)

    def flags_for(loss, ratio, seed=None, vmap_seeds=None):
        return run_args(
            suite,
            config_path,
            loss,
            ratio,
            seed,
            num_epochs,
            run_source,
            seeds=vmap_seeds,
            extra=[*extra, *deadline_flags],
        )

    def expected(loss, ratio, seed):
        return build_config(flags_for(loss, ratio, seed))

    # Which seeds are done, failed before, or to run; refuse any folder of another config.
    todo, mismatches = [], []
    for ratio in ratios:
        for loss in losses:
            missing = []
            for seed in seeds:
                status, folder, data = seed_status(root, loss, ratio, seed)
                want = expected(loss, ratio, seed)
                if status == "done":
                    diff = config_diff(data.get("config", {}), want, ignore=("seeds",))
                    if diff:
                        mismatches.append(_mismatch_message(folder, diff))
                    continue
                for d, program in seed_dirs(root, loss, ratio, seed):
                    stored = _read_json(os.path.join(d, "config.json"))
                    if stored is not None:
                        diff = config_diff(stored, want, ignore=("seeds",) if program else ())
                        if diff:
                            mismatches.append(_mismatch_message(d, diff))
                if status == "todo":
                    missing.append(seed)
            todo.append((loss, ratio, missing))
    if mismatches:
        more = f" ({len(mismatches) - 1} more folders differ too)" if len(mismatches) > 1 else ""
        raise ReproduceError(mismatches[0] + more)

    vmap = args.vmap_seeds
    if vmap == "auto":
        needs = any(len(m) > 1 for _, _, m in todo)
        vmap = "true" if needs and _default_backend() in ("gpu", "cuda", "rocm", "tpu") else "false"
    vmap = vmap == "true"
    jobs = args.jobs
    if jobs is None:
        jobs = min(2, os.cpu_count() or 1) if suite.get("jobs") == "cpu_cores" else 1
        nothing_to_do = all(not m for _, _, m in todo)
        if jobs > 1 and not nothing_to_do and _default_backend() != "cpu":
            jobs = 1  # one accelerator: one program at a time
    jobs = max(1, int(jobs))

    units = []
    for loss, ratio, missing in todo:
        if not missing:
            continue
        if vmap and len(missing) > 1:
            d = os.path.join(_loss_dir(root, loss, ratio), vmap_dir_name(missing))
            flags = flags_for(loss, ratio, vmap_seeds=missing)
            stored = _read_json(os.path.join(d, "config.json"))
            if stored is not None:
                diff = config_diff(stored, build_config(flags))
                if diff:
                    raise ReproduceError(_mismatch_message(d, diff))
            units.append(Unit(loss, ratio, tuple(missing), True, d, flags))
        else:
            for seed in missing:
                d = os.path.join(_loss_dir(root, loss, ratio), f"seed{seed}")
                units.append(Unit(loss, ratio, (seed,), False, d, flags_for(loss, ratio, seed)))
    # Seeds outermost: one seed of the whole grid first, then the next.
    units.sort(key=lambda u: (min(u.seeds), ratios.index(u.ratio), losses.index(u.loss)))

    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    jax_cache = args.jax_cache if args.jax_cache is not None else os.path.join(workdir, "jax_cache")
    if jax_cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", jax_cache)
    pythonpath = env.get("PYTHONPATH", "")
    if REPO not in pythonpath.split(os.pathsep):
        env["PYTHONPATH"] = REPO + (os.pathsep + pythonpath if pythonpath else "")

    n_total = len(losses) * len(ratios) * len(seeds)
    n_todo = sum(len(u.seeds) for u in units)
    already = n_total - n_todo
    print(
        f"{name}: {n_total} runs in the grid, {already} finished or failed before, "
        f"{n_todo} to run in {len(units)} program(s) ({'vmapped seeds, ' if vmap else ''}"
        f"{jobs} at a time); runs: {root}; report: {results_dir}",
        flush=True,
    )
    if args.dry_run:
        for i, u in enumerate(units):
            cmd = cmd_prefix + [f"--workdir={u.workdir}"] + u.flags
            print(f"[{i + 1}/{len(units)}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        return 0

    runner = _Runner(cmd_prefix, env, echo=(jobs == 1))
    failures = {}  # this call's failures without failure.json
    budget_hit = False
    pending = collections.deque(units)
    done_count = 0

    def in_grid(loss, ratio, seed):
        return loss in losses and float(ratio) in ratios and int(seed) in seeds

    def report():
        # Every finished run of the workdir, not only this command's grid: a rerun of a subset
        # (--losses=ce) keeps the other rows. Runs outside the grid are not config-checked.
        on_disk = grid_on_disk(root)
        shown = {
            "losses": losses + [x for x in on_disk[0] if x not in losses],
            "ratios": ratios + [x for x in on_disk[1] if x not in ratios],
            "seeds": sorted(set(seeds) | set(on_disk[2])),
            "config": config_path,
        }
        rows = collect(
            root,
            shown["losses"],
            shown["ratios"],
            shown["seeds"],
            expected=lambda lo, ra, se: expected(lo, ra, se) if in_grid(lo, ra, se) else None,
            extra_failures=failures,
        )
        seeds_shown = [(r, s) for r in rows for s in r["seeds"] + [f["seed"] for f in r["failed"]]]
        outside = sum(not in_grid(r["loss"], r["ratio"], s) for r, s in seeds_shown)
        note = None
        if outside:
            note = (
                f"This command's grid: losses {losses}, ratios {ratios}, seeds {seeds}; the "
                f"table shows every finished or failed run of {root}, {outside} of them made "
                "by earlier commands outside this grid."
            )
        path = write_report(
            name,
            rows,
            quick=args.quick and has_quick,
            command=command,
            grid=shown,
            out_dir=results_dir,
            label=label,
            note=note,
        )
        return rows, path

    stopped = []  # signals received: forwarded to the running programs, no new run starts
    restore_signals = _forward_signals(runner, stopped)
    try:
        while pending or runner.running:
            while pending and len(runner.running) < jobs and not budget_hit and not stopped:
                if run_deadline is not None and run_deadline - time.time() < MIN_START_S:
                    budget_hit = True
                    break
                unit = pending.popleft()
                for s in unit.seeds:
                    failures.pop((unit.loss, unit.ratio, s), None)
                done_count += 1
                runner.start(unit)  # its command line is the first line of its train.log
                print(f"[{done_count}/{len(units)}] {unit.label()}: {unit.workdir}", flush=True)
            if not runner.running:
                break
            if stopped:  # a program started while the signal came
                runner.forward(signal.SIGTERM, once=True)
            unit, rc, secs, tail, killed = runner.wait_any(budget_end)
            # After a signal, an exit other than 0/3 (e.g. killed while starting up) is a stop.
            interrupted = bool(stopped) and rc not in (0, EXIT_DIVERGED)
            outcome = _outcome(unit, rc, tail, killed or interrupted)
            if outcome == "stopped":
                budget_hit = budget_hit or budget_end is not None
                print(
                    f"  stopped (exit {rc}, checkpointed) after {secs:.0f}s: {unit.label()}",
                    flush=True,
                )
            elif outcome == "finished":
                print(f"  finished in {secs:.0f}s: {unit.label()}", flush=True)
            else:
                reason = outcome
                for s in unit.seeds:
                    status, _, _ = seed_status(root, unit.loss, unit.ratio, s)
                    if status != "failed":
                        failures[(unit.loss, unit.ratio, s)] = (unit.workdir, reason)
                print(
                    f"  FAILED after {secs:.0f}s: {unit.label()}: {reason} "
                    f"(log: {os.path.join(unit.workdir, 'train.log')})",
                    flush=True,
                )
            report()
    except KeyboardInterrupt:
        runner.stop_all()
        raise
    finally:
        restore_signals()
    rows, path = report()
    print("\n" + "\n".join(table_lines(rows)), flush=True)
    # This command's grid only (the table also shows earlier runs outside it).
    n_done = sum(in_grid(r["loss"], r["ratio"], s) for r in rows for s in r["seeds"])
    failed = [
        (r, f) for r in rows for f in r["failed"] if in_grid(r["loss"], r["ratio"], f["seed"])
    ]
    for r, f in failed:
        print(
            f"failed: {r['loss']} ratio {r['ratio']:g} seed {f['seed']}: {f['reason']} "
            f"({f['workdir']})",
            flush=True,
        )
    print(f"report: {path}", flush=True)
    left = n_total - n_done - len(failed)
    if stopped:
        print(
            f"stopped by {stopped[0]}: {n_done} runs finished, {left} left (checkpointed); "
            "rerun the same command to resume",
            flush=True,
        )
        return EXIT_DEADLINE
    if budget_hit and left:
        print(
            f"time budget reached: {n_done} runs finished, {left} left; rerun the same "
            "command to continue",
            flush=True,
        )
    if failed:
        print(
            f"{len(failed)} of {n_total} runs failed (a diverged run, with failure.json, is not "
            "retried: delete its folder to retry)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


def _outcome(unit: Unit, rc: int, tail: list[str], killed: bool) -> str:
    """ "finished", "stopped" (resumable) or the failure reason."""
    if killed:
        return "stopped"
    if rc == 0:
        paths = (
            [os.path.join(unit.workdir, f"seed_{s}", "summary.json") for s in unit.seeds]
            if unit.vmap
            else [os.path.join(unit.workdir, "summary.json")]
        )
        return "finished" if all(os.path.exists(p) for p in paths) else "stopped"
    if rc == EXIT_DEADLINE:
        return "stopped"
    if rc == EXIT_DIVERGED:
        failure = _read_json(os.path.join(unit.workdir, "failure.json"))
        return _failure_reason(failure) if failure else "diverged (exit 3, no failure.json)"
    errors = [line for line in tail if line.startswith("error:")]
    last = errors[-1] if errors else next((line for line in reversed(tail) if line.strip()), "")
    return f"exit {rc}" + (f": {last.strip()[:300]}" if last else "")


if __name__ == "__main__":
    main()
