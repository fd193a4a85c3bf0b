"""Runs a grid of experiments.train runs and writes a table (mean ± sd over seeds) and plots.

  python -m experiments.reproduce --suite=digits               # the first command: ~3 min, CPU
  python -m experiments.reproduce --suite=fashion_mnist_lt     # ~90 min on 2 CPU cores
  python -m experiments.reproduce --suite=segmentation         # ~25 min on 2 idle CPU cores
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
**The code.** ``experiments/suites.py``: the suites and loss variants (data, one comment per
suite with its command, runtime and results); ``experiments/run_folders.py``: the run-folder
layout and the reuse check; ``experiments/runner.py``: the train programs, signals and
schedule; ``experiments/grid_report.py``: the table, the protocol lines, the JSON twin and the
plots; this file: the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time

from cce_jax.training.config import (
    EXIT_CONFIG_ERROR,
    EXIT_DEADLINE,
    RUN_CONTROL_KEYS,
    config_diff,
)
from cce_jax.training.workdir import dumps as dumps_strict
from experiments import runner
from experiments.grid_report import (
    GRID_IMAGES,
    collect,
    metrics_of,
    posthoc_best,
    protocol_lines,
    table_lines,
    write_report,
)
from experiments.run_folders import (
    ReproduceError,
    build_config,
    check_program_folder,
    check_reuse,
    grid_on_disk,
    loss_dir,
    seed_dirs,
    seed_status,
    vmap_dir_name,
)
from experiments.runner import Unit
from experiments.runner import default_backend as _default_backend
from experiments.suites import (
    LOSSES,
    METRICS,
    OFFLINE_SOURCE,
    PRIORITY,
    REPO,
    RESULTS,
    RUNS_HOME,
    SEG_METRICS,
    SUITES,
    run_args,
    suite_label,
)

# This module's names and those it re-exports from the modules above (callers and tests
# use them as reproduce.NAME).
__all__ = [
    "GRID_IMAGES",
    "LOSSES",
    "METRICS",
    "MIN_START_S",
    "OFFLINE_SOURCE",
    "PRIORITY",
    "REPO",
    "RESULTS",
    "RUNS_HOME",
    "RUN_CONTROL_KEYS",
    "SEG_METRICS",
    "SUITES",
    "TRAIN_COMMAND",
    "ReproduceError",
    "Unit",
    "build_config",
    "collect",
    "config_diff",
    "dumps_strict",
    "grid_on_disk",
    "main",
    "metrics_of",
    "posthoc_best",
    "prepare_segmentation_data",
    "protocol_lines",
    "run_args",
    "seed_dirs",
    "seed_status",
    "table_lines",
    "vmap_dir_name",
    "write_report",
]

# The train program; tests substitute a fake one (see tests/test_reproduce.py).
TRAIN_COMMAND = (sys.executable, "-m", "experiments.train")
# With --max_minutes: no run starts with less time than this before its deadline.
MIN_START_S = 45.0


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Plan:
    """What one command asks for: the grid, its folders, its time budget and run flags."""

    name: str  # SUITE or SUITE_quick: the run folder's and the report's name
    suite: dict
    config_path: str
    quick: bool  # the reduced protocol (only for a suite that has one)
    losses: list
    ratios: list
    seeds: list
    workdir: str
    results_dir: str
    command: str  # this command, for the report
    extra: list  # --config.KEY=VALUE flags for every run
    budget_end: float | None = None  # --max_minutes: the hard stop of this command
    run_deadline: float | None = None  # the runs' --config.deadline
    num_epochs: int = 0
    run_source: str | None = None

    @property
    def root(self) -> str:
        return os.path.join(self.workdir, self.name)

    def flags_for(self, loss, ratio, seed=None, vmap_seeds=None) -> list[str]:
        deadline = [f"--config.deadline={self.run_deadline:.1f}"] if self.run_deadline else []
        return run_args(
            self.suite,
            self.config_path,
            loss,
            ratio,
            seed,
            self.num_epochs,
            self.run_source,
            seeds=vmap_seeds,
            extra=[*self.extra, *deadline],
        )

    def expected(self, loss, ratio, seed) -> dict:
        return build_config(self.flags_for(loss, ratio, seed))

    def in_grid(self, loss, ratio, seed) -> bool:
        return loss in self.losses and float(ratio) in self.ratios and int(seed) in self.seeds


def _plan(args, argv, extra, t_start) -> Plan:
    """The grid, folders and deadlines of the command line (usage errors exit 2)."""
    suite = SUITES[args.suite]
    has_quick = suite["quick_config"] != suite["config"]
    seeds, ratios, losses = _grid_lists(args, suite)
    for flag, value in (("--workdir", args.workdir), ("--results_dir", args.results_dir)):
        if value and "://" in value:  # os.path.abspath would make it a local 'gs:' folder
            _parser().error(
                f"{flag}={value}: the grid runner needs a local folder; for a bucket, run "
                "each run with python -m experiments.train --workdir=gs://BUCKET/RUN"
            )
    workdir = os.path.abspath(
        os.path.expanduser(args.workdir or suite.get("workdir", "runs/reproduce"))
    )
    if args.results_dir is not None:
        results_dir = os.path.abspath(args.results_dir)
    else:  # every suite: outside the checkout (the committed tables stay as they are)
        results_dir = os.path.join(workdir, "results")
    plan = Plan(
        name=args.suite + ("_quick" if args.quick and has_quick else ""),
        suite=suite,
        config_path=suite["quick_config"] if args.quick else suite["config"],
        quick=args.quick and has_quick,
        losses=losses,
        ratios=ratios,
        seeds=seeds,
        workdir=workdir,
        results_dir=results_dir,
        command="python -m experiments.reproduce " + " ".join(shlex.quote(a) for a in argv),
        extra=list(extra),
    )
    # The deadline of the runs (with --max_minutes) and the hard stop of this command.
    if args.max_minutes:
        budget = 60.0 * args.max_minutes
        plan.budget_end = t_start + budget
        plan.run_deadline = plan.budget_end - min(30.0, 0.1 * budget)
    return plan


def _grid_lists(args, suite) -> tuple[list[int], list[float], list[str]]:
    """The seeds, ratios and loss variants of the grid (the flags', else the suite's)."""
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
    return seeds, ratios, losses


def _base_config(plan: Plan, source: str | None, dry_run: bool) -> None:
    """Reads the epochs and data source of the suite's config into ``plan``; makes a
    segmentation suite's data set when it is missing (not for a dry run)."""
    base_flags = [f"--config={os.path.join(REPO, plan.config_path)}", *plan.extra]
    for key, value in plan.suite.get("overrides", {}).items():
        base_flags.append(f"--config.{key}={value}")
    base_config = build_config(base_flags)
    plan.num_epochs = int(base_config["num_epochs"])
    plan.run_source = source
    if plan.suite.get("task") == "segmentation":  # --source names the CIFAR-10 copy
        plan.run_source = None
        if not dry_run:
            prepare_segmentation_data(base_config["data"]["source"], source)


def prepare_segmentation_data(run_source: str, cifar_source: str | None) -> str | None:
    """Makes the CIFAR-10 segmentation set of ``experiments/configs/segmentation.py`` when
    ``run_source`` (the runs' ``data.source``) is its file and the file is missing. The
    mosaics are drawn from ``cifar_source`` (default: the offline archive where it exists,
    else ``tfds:cifar10``). Returns the folder made or found, or None for another source."""
    from cce_jax import data as data_lib
    from cce_jax.data import segmentation
    from experiments.configs import segmentation as seg_config

    folder = os.path.abspath(os.path.expanduser(seg_config.data_dir()))
    _, path = segmentation.parse_seg_source(run_source)
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


# --------------------------------------------------------------------------- the units


def _vmap_and_jobs(args, suite, todo) -> tuple[bool, int]:
    """--vmap_seeds and --jobs, with ``auto`` and the suite's default resolved."""
    vmap = args.vmap_seeds
    if vmap == "auto":
        needs = any(len(m) > 1 for _, _, m in todo)
        vmap = "true" if needs and _default_backend() in ("gpu", "cuda", "rocm", "tpu") else "false"
    jobs = args.jobs
    if jobs is None:
        jobs = min(2, os.cpu_count() or 1) if suite.get("jobs") == "cpu_cores" else 1
        nothing_to_do = all(not m for _, _, m in todo)
        if jobs > 1 and not nothing_to_do and _default_backend() != "cpu":
            jobs = 1  # one accelerator: one program at a time
    return vmap == "true", max(1, int(jobs))


def _units(plan: Plan, todo, vmap: bool) -> list[Unit]:
    """The train programs for the seeds to run, one seed of the whole grid first."""
    units = []
    for loss, ratio, missing in todo:
        if not missing:
            continue
        if vmap and len(missing) > 1:
            d = os.path.join(loss_dir(plan.root, loss, ratio), vmap_dir_name(missing))
            flags = plan.flags_for(loss, ratio, vmap_seeds=missing)
            check_program_folder(d, flags)
            units.append(Unit(loss, ratio, tuple(missing), True, d, flags))
        else:
            for seed in missing:
                d = os.path.join(loss_dir(plan.root, loss, ratio), f"seed{seed}")
                units.append(
                    Unit(loss, ratio, (seed,), False, d, plan.flags_for(loss, ratio, seed))
                )
    # Seeds outermost: one seed of the whole grid first, then the next.
    units.sort(key=lambda u: (min(u.seeds), plan.ratios.index(u.ratio), plan.losses.index(u.loss)))
    return units


def _run_env(jax_cache: str | None, workdir: str) -> dict:
    """The environment of the train programs: the JAX cache, quiet TF, the repo importable."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    jax_cache = jax_cache if jax_cache is not None else os.path.join(workdir, "jax_cache")
    if jax_cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", jax_cache)
    pythonpath = env.get("PYTHONPATH", "")
    if REPO not in pythonpath.split(os.pathsep):
        env["PYTHONPATH"] = REPO + (os.pathsep + pythonpath if pythonpath else "")
    return env


def _print_plan(plan: Plan, units, vmap, jobs, cmd_prefix, dry_run) -> None:
    """The grid line; with ``dry_run`` every program's command line too."""
    n_total = len(plan.losses) * len(plan.ratios) * len(plan.seeds)
    n_todo = sum(len(u.seeds) for u in units)
    print(
        f"{plan.name}: {n_total} runs in the grid, {n_total - n_todo} finished or failed "
        f"before, {n_todo} to run in {len(units)} program(s) "
        f"({'vmapped seeds, ' if vmap else ''}{jobs} at a time); runs: {plan.root}; "
        f"report: {plan.results_dir}",
        flush=True,
    )
    if dry_run:
        for i, u in enumerate(units):
            cmd = cmd_prefix + [f"--workdir={u.workdir}"] + u.flags
            print(f"[{i + 1}/{len(units)}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)


# --------------------------------------------------------------------------- the report


def _report(plan: Plan, failures: dict) -> tuple[list[dict], str]:
    """Rewrites the report: every finished run of the workdir, not only this command's grid
    (a rerun of a subset, --losses=ce, keeps the other rows). Runs outside the grid are not
    config-checked. Returns the rows and the .md path."""
    on_disk = grid_on_disk(plan.root)
    shown = {
        "losses": plan.losses + [x for x in on_disk[0] if x not in plan.losses],
        "ratios": plan.ratios + [x for x in on_disk[1] if x not in plan.ratios],
        "seeds": sorted(set(plan.seeds) | set(on_disk[2])),
        "config": plan.config_path,
    }
    rows = collect(
        plan.root,
        shown["losses"],
        shown["ratios"],
        shown["seeds"],
        expected=lambda lo, ra, se: plan.expected(lo, ra, se) if plan.in_grid(lo, ra, se) else None,
        extra_failures=failures,
    )
    seeds_shown = [(r, s) for r in rows for s in r["seeds"] + [f["seed"] for f in r["failed"]]]
    outside = sum(not plan.in_grid(r["loss"], r["ratio"], s) for r, s in seeds_shown)
    note = None
    if outside:
        note = (
            f"This command's grid: losses {plan.losses}, ratios {plan.ratios}, seeds "
            f"{plan.seeds}; the table shows every finished or failed run of {plan.root}, "
            f"{outside} of them made by earlier commands outside this grid."
        )
    path = write_report(
        plan.name,
        rows,
        quick=plan.quick,
        command=plan.command,
        grid=shown,
        out_dir=plan.results_dir,
        label=suite_label(plan.suite),
        note=note,
    )
    return rows, path


def _finish(plan: Plan, schedule: runner.Schedule, rows, path) -> int:
    """Prints the table, the failed runs and how the command ended; returns the exit code."""
    print("\n" + "\n".join(table_lines(rows)), flush=True)
    # This command's grid only (the table also shows earlier runs outside it).
    n_done = sum(plan.in_grid(r["loss"], r["ratio"], s) for r in rows for s in r["seeds"])
    failed = [
        (r, f) for r in rows for f in r["failed"] if plan.in_grid(r["loss"], r["ratio"], f["seed"])
    ]
    for r, f in failed:
        print(
            f"failed: {r['loss']} ratio {r['ratio']:g} seed {f['seed']}: {f['reason']} "
            f"({f['workdir']})",
            flush=True,
        )
    print(f"report: {path}", flush=True)
    n_total = len(plan.losses) * len(plan.ratios) * len(plan.seeds)
    left = n_total - n_done - len(failed)
    if schedule.stopped:
        print(
            f"stopped by {schedule.stopped[0]}: {n_done} runs finished, {left} left "
            "(checkpointed); rerun the same command to resume",
            flush=True,
        )
        return EXIT_DEADLINE
    if schedule.budget_hit and left:
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


# --------------------------------------------------------------------------- the command


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
    """Plans the grid, checks the stored configs, runs the missing seeds, writes the report."""
    plan = _plan(args, argv, extra, t_start)
    _base_config(plan, args.source, args.dry_run)
    # Which seeds are done, failed before, or to run; refuse any folder of another config.
    todo = check_reuse(plan.root, plan.losses, plan.ratios, plan.seeds, plan.expected)
    vmap, jobs = _vmap_and_jobs(args, plan.suite, todo)
    units = _units(plan, todo, vmap)
    env = _run_env(args.jax_cache, plan.workdir)
    cmd_prefix = shlex.split(args.train_command) if args.train_command else list(TRAIN_COMMAND)
    _print_plan(plan, units, vmap, jobs, cmd_prefix, args.dry_run)
    if args.dry_run:
        return 0
    schedule = runner.Schedule(
        units, plan.root, jobs, plan.run_deadline, plan.budget_end, min_start_s=MIN_START_S
    )
    programs = runner.Runner(cmd_prefix, env, echo=(jobs == 1))
    runner.run_units(schedule, programs, on_end=lambda: _report(plan, schedule.failures))
    rows, path = _report(plan, schedule.failures)
    return _finish(plan, schedule, rows, path)


if __name__ == "__main__":
    main()
