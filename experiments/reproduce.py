"""Runs a suite's grid of ``experiments.train`` programs and writes its table and plots.

  python -m experiments.reproduce --suite=digits            # the first command, CPU, minutes
  python -m experiments.reproduce --suite=cifar10_lt [--quick] [--losses=ce,cce_paper] \\
      [--ratios=100] [--seeds=0,1,2] [--workdir=DIR|gs://BUCKET/DIR] [--results_dir=DIR] \\
      [--source=SOURCE] [--jobs=N] [--vmap_seeds] [--dry_run] [--config.KEY=VALUE ...]

A suite is a config file's ``sweep()``: runs ``--config=FILE:loss=VARIANT`` with overrides in
``WORKDIR/SUITE/r{ratio}/{loss}/seed{seed}`` (``--vmap_seeds``: ``.../seeds_0_1/seed_{s}``).
A run folder is reused only if its stored config equals the one built here, else ``error:``
(exit 2). Failed runs are listed (exit 1). SIGTERM/SIGINT: every program checkpoints, exit
75; the same command resumes. The report (``SUITE.md``, ``.json``, plots; default
``WORKDIR/results``) covers every finished run of the suite's folder.
"""

import argparse
import ast
import collections
import concurrent.futures
import contextlib
import functools
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

from etils import epath

from cce_jax import training
from experiments import report
from experiments.configs.common import LOSSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Suite: (config file, its --quick config or None, keyword arguments of its sweep()).
_C, _Q = "experiments/configs/", "experiments/configs/cifar10_lt_quick.py"
SUITES = {"digits": (_C + "digits_lt.py", None, {}), "cifar10_lt": (_C + "cifar10_lt.py", _Q, {}),
          "cifar10_step": (_C + "cifar10_lt.py", _Q, {"profile": "step"}),
          "fashion_mnist_lt": (_C + "fashion_mnist_lt.py", None, {}),
          "segmentation": (_C + "segmentation.py", None, {}),
          "tiny": (_C + "tiny.py", None, {})}  # fmt: skip
TRAIN_COMMAND = (sys.executable, "-m", "experiments.train")  # tests substitute a fake one


class ReproduceError(Exception):
    """A problem reported as one ``error:`` line (exit 2) before anything runs."""


@functools.cache
def load_module(path: str):
    full = path if os.path.isabs(path) else os.path.join(REPO, path)
    spec = importlib.util.spec_from_file_location(f"_grid_config_{abs(hash(full))}", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(current, text: str):
    """``--config.KEY=TEXT`` as ml_collections parses it for a field holding ``current``."""
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return float(text) if isinstance(current, float) else text
    return float(value) if isinstance(current, float) and isinstance(value, int) else value


def build(path: str, arg: str, overrides: dict):
    """The ConfigDict experiments.train builds from ``--config=path:arg`` and ``overrides``."""
    c = load_module(path).get_config(arg)
    for key, value in overrides.items():
        *parents, name = key.split(".")
        node = functools.reduce(lambda n, p: n[p], parents, c)
        if name not in node:
            raise ReproduceError(f"--config.{key}: no such config key in {path}")
        node[name] = _value(node[name], value) if isinstance(value, str) else value
    return c


def _flag(value) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + "".join(f"{v!r}," for v in value) + ")"
    return str(value)


class Plan:
    """One command's grid: the suite's runs, their folders and configs."""

    def __init__(self, args, extra: dict, argv):
        config, quick_config, kwargs = SUITES[args.suite]
        self.quick = bool(args.quick and quick_config)
        self.path = quick_config if self.quick else config
        module = load_module(self.path)
        self.suite = dict(getattr(module, "SUITE", {}))
        self.name = args.suite + ("_quick" if self.quick else "")
        axes = {"losses": args.losses, "ratios": args.ratios, "seeds": args.seeds}
        self.runs = module.sweep(**kwargs, **{k: v for k, v in axes.items() if v is not None})
        axes = [list(dict.fromkeys(r[k] for r in self.runs)) for k in ("loss", "ratio", "seed")]
        self.losses, self.ratios, self.seeds = axes
        workdir = args.workdir or self.suite.get("workdir", "runs/reproduce")
        self.workdir = workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir))
        self.root = f"{self.workdir}/{self.name}"
        self.results_dir = args.results_dir or f"{self.workdir}/results"
        self.command = "python -m experiments.reproduce " + shlex.join(argv)
        quick = "REDUCED (quick) protocol — not the paper protocol"
        self.label = self.suite.get("label") or (quick if self.quick else "paper protocol")
        self.epochs = extra.pop("num_epochs", None)  # before the loss variant (DRW)
        self.extra, seg = extra, hasattr(module, "data_dir")
        self.seg_source = args.source if seg else None  # the CIFAR-10 copy the set is drawn from
        if args.source and not seg:
            self.extra["data.source"] = args.source

    def arg(self, run) -> str:
        parts = [p for p in run["arg"].split(",") if not (self.epochs and p.startswith("epochs="))]
        return ",".join(parts + ([f"epochs={self.epochs}"] if self.epochs else []))

    def overrides(self, run, seeds=None) -> dict:
        out = dict(run["overrides"], **self.extra)
        if seeds:  # several models in one program
            del out["seed"], out["data.subset_seed"]
            out["seeds"] = tuple(seeds)
        return out

    def config(self, run, seeds=None):
        return build(self.path, self.arg(run), self.overrides(run, seeds))

    @functools.cache
    def expected(self, i: int) -> dict:
        return training.config.config_to_dict(self.config(self.runs[i]))

    def flags(self, run, seeds=None) -> list[str]:
        arg = self.arg(run)
        config = os.path.join(REPO, self.path) + (f":{arg}" if arg else "")
        items = self.overrides(run, seeds).items()
        return [f"--config={config}"] + [f"--config.{k}={_flag(v)}" for k, v in items]

    def in_grid(self, row: dict, seed: int) -> bool:
        """Whether this command's grid holds ``seed`` of a report row's (loss, ratio)."""
        return row["loss"] in self.losses and row["ratio"] in self.ratios and seed in self.seeds


def _mismatch(folder, diff) -> str:
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more keys" if len(diff) > 4 else "")
    why = "use another --workdir (or delete that folder) so old results are not reported as new"
    return f"run folder {folder} holds a run of another config ({shown}); {why} ones"


def programs_to_run(plan: Plan, vmap: bool) -> tuple[list[dict], int]:
    """The programs for the grid's seeds neither finished nor failed and how many runs those
    are; refuses any folder that holds another config."""
    missing, errors = collections.defaultdict(list), []
    for i, run in enumerate(plan.runs):
        where = plan.root, run["loss"], run["ratio"], run["seed"]
        status, folder, data = report.seed_status(*where)
        if status == "done":
            stored = [(folder, data.get("config", {}), ("seeds",))]
            have, want = stored[0][1].get("num_epochs"), plan.expected(i)["num_epochs"]
            if have is not None and have != want:  # fewer epochs continue, more are refused
                if have > want:
                    errors.append(_mismatch(folder, [f"num_epochs: stored {have}, now {want}"]))
                status = "todo"
        else:
            found = [
                (d, report.read_json(f"{d}/config.json"), p) for d, p in report.seed_dirs(*where)
            ]
            stored = [(d, config, ("seeds",) if p else ()) for d, config, p in found if config]
        for d, config, ignore in stored:
            if diff := training.config.config_diff(config, plan.expected(i), ignore):
                errors.append(_mismatch(d, diff))
        if status == "todo":
            missing[(run["loss"], run["ratio"])].append(run)
    programs = []
    for runs in missing.values():
        seeds = [r["seed"] for r in runs] if vmap and len(runs) > 1 else None
        for run in [runs[0]] if seeds else runs:
            name = "seeds_" + "_".join(map(str, seeds)) if seeds else f"seed{run['seed']}"
            workdir = f"{plan.root}/r{run['ratio']:g}/{run['loss']}/{name}"
            what = f"seed{'s' if seeds else ''} " + ",".join(map(str, seeds or [run["seed"]]))
            label = f"{run['loss']} r{run['ratio']:g} {what}"
            prog = dict(run, seeds=seeds or [run["seed"]], workdir=workdir, label=label)
            cmd = [*TRAIN_COMMAND, f"--workdir={workdir}", *plan.flags(run, seeds)]
            programs.append(dict(prog, cmd=cmd))
            if seeds and (found := report.read_json(f"{workdir}/config.json")):
                want = training.config.config_to_dict(plan.config(run, seeds))
                if diff := training.config.config_diff(found, want):
                    errors.append(_mismatch(workdir, diff))
    if errors:
        more = f" ({len(errors) - 1} more folders differ too)" if len(errors) > 1 else ""
        raise ReproduceError(errors[0] + more)
    order = {(r["loss"], r["ratio"], r["seed"]): i for i, r in enumerate(plan.runs)}
    programs.sort(key=lambda p: order[(p["loss"], p["ratio"], p["seeds"][0])])
    return programs, sum(len(p["seeds"]) for p in programs)


def prepare_segmentation_data(plan: Plan) -> None:
    """Makes the suite's segmentation set when the runs read it and it is missing, from
    ``--source`` (default: the offline CIFAR-10 copy where it exists, else tfds)."""
    if not hasattr(module := load_module(plan.path), "data_dir"):
        return
    kind, _, path = str(plan.config(plan.runs[0]).data.source).partition(":")
    folder = os.path.abspath(os.path.expanduser(module.data_dir()))
    if kind != "seg_npz" or os.path.dirname(os.path.abspath(os.path.expanduser(path))) != folder:
        return
    from cce_jax import data
    from experiments.make_segmentation_data import ensure_cifar_segmentation

    cfg, offline = data.default_config(), os.path.join(REPO, "../shared/data/cifar10-jpeg.tar.gz")
    cfg.source = plan.seg_source or (f"cifar10_jpeg:{offline}" if os.path.isfile(offline) else "")
    cfg.source = cfg.source or "tfds:cifar10"
    if not os.path.isdir(folder):
        print(f"making the segmentation set {folder} from {cfg.source} ...", flush=True)
    ensure_cifar_segmentation(folder, cifar=lambda: data.load_source(cfg))


def _terminate(proc):  # the process group; SIGTERM, as a background job ignores SIGINT
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)


class Pool:
    """Train programs, ``jobs`` at a time, each in its own process group; a SIGTERM or SIGINT
    goes once to every running program, and then no new one starts."""

    def __init__(self, env, jobs: int, logs: str | None):
        self.env, self.jobs, self.logs = env, jobs, logs
        self.running, self.stopped, self.lock, self.started = set(), [], threading.Lock(), 0

    def stop(self, signum, frame=None):  # once: a second signal would skip the checkpoint
        with self.lock:
            for proc in self.running if not self.stopped else ():
                _terminate(proc)
            self.stopped.append(signal.Signals(signum).name)

    def run_one(self, prog, total):
        """(prog, exit code or None when not started, seconds, the log's tail)."""
        if self.stopped:
            return prog, None, 0.0, []
        where = prog["workdir"] if self.logs is None else f"{self.logs}/{prog['workdir']}"
        log_path = os.path.join(where.replace("://", "/"), "train.log")  # a bucket: logs here
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        t0 = time.time()
        with open(log_path, "a") as log:
            print("# " + shlex.join(prog["cmd"]), file=log, flush=True)
            with self.lock:
                proc = subprocess.Popen(prog["cmd"], cwd=REPO, env=self.env, stdout=log, stderr=log,
                                        start_new_session=True)  # fmt: skip
                self.running.add(proc)
                if self.stopped:
                    _terminate(proc)
                self.started += 1
            print(f"[{self.started}/{total}] {prog['label']}: {prog['workdir']}", flush=True)
            rc = proc.wait()
        with self.lock:
            self.running.discard(proc)
        with open(log_path, errors="replace") as log:
            return prog, rc, time.time() - t0, log.read().splitlines()[-40:]

    def run(self, programs, on_end):
        handlers = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
                futures = [pool.submit(self.run_one, p, len(programs)) for p in programs]
                for future in concurrent.futures.as_completed(futures):
                    prog, rc, secs, tail = future.result()
                    if rc is not None:
                        on_end(prog, rc, secs, tail)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)


def outcome(prog, rc, tail, stopped) -> str:
    """ "finished", "stopped" (resumable) or the failure reason."""
    many = len(prog["seeds"]) > 1
    folders = [f"{prog['workdir']}/seed_{s}" for s in prog["seeds"]] if many else [prog["workdir"]]
    if rc == 0 and all(epath.Path(f"{d}/summary.json").exists() for d in folders):
        return "finished"
    if rc in (0, training.EXIT_PREEMPTED) or (stopped and rc != training.EXIT_DIVERGED):
        return "stopped"
    if rc == training.EXIT_DIVERGED:
        failure = report.read_json(f"{prog['workdir']}/failure.json")
        return report.failure_reason(failure) if failure else "diverged (exit 3, no failure.json)"
    errors = [line for line in tail if line.startswith("error:")]
    last = errors[-1] if errors else next((x for x in reversed(tail) if x.strip()), "")
    return f"exit {rc}" + (f": {last.strip()[:300]}" if last else "")


def _report(plan: Plan, failures: dict) -> tuple[list[dict], str]:
    """Rewrites the report from every finished or failed run of the suite's folder."""
    losses, ratios, seeds = report.grid_on_disk(plan.root, plan.losses, plan.ratios, plan.seeds)
    rows = report.collect(plan.root, losses, ratios, seeds, extra_failures=failures)
    shown = [(r, s) for r in rows for s in r["seeds"] + [f["seed"] for f in r["failed"]]]
    outside = sum(not plan.in_grid(r, s) for r, s in shown)
    note = outside and (
        f"This command's grid: losses {plan.losses}, ratios {plan.ratios}, seeds {plan.seeds}; "
        f"the table shows every finished or failed run of {plan.root}, {outside} of them made "
        "by earlier commands outside this grid."
    )
    grid = dict(losses=losses, config=plan.path, ratios=ratios, seeds=seeds)  # the JSON's order
    kwargs = dict(command=plan.command, grid=grid, label=plan.label, note=note or None)
    return rows, report.write_report(plan.name, rows, out_dir=plan.results_dir, **kwargs)


def _finish(plan: Plan, rows, path, stopped) -> int:
    """Prints the table, the failed runs and how the command ended; returns the exit code."""
    print("\n" + "\n".join(report.table_lines(rows)), flush=True)
    n_done = sum(plan.in_grid(r, s) for r in rows for s in r["seeds"])
    failed = [(r, f) for r in rows for f in r["failed"] if plan.in_grid(r, f["seed"])]
    for r, f in failed:
        where = f"ratio {r['ratio']:g} seed {f['seed']}: {f['reason']} ({f['workdir']})"
        print(f"failed: {r['loss']} {where}")
    print(f"report: {path}", flush=True)
    if stopped:
        left = len(plan.runs) - n_done - len(failed)
        print(f"stopped by {stopped[0]}: {n_done} runs finished, {left} left (checkpointed); "
              "rerun the same command to resume", flush=True)  # fmt: skip
        return training.EXIT_PREEMPTED
    if failed:
        why = "a diverged run, with failure.json, is not retried: delete its folder to retry"
        print(f"{len(failed)} of {len(plan.runs)} runs failed ({why})", file=sys.stderr)
    return 1 if failed else 0


def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True, choices=sorted(SUITES))
    p.add_argument("--quick", action="store_true", help="the suite's reduced CPU protocol")
    p.add_argument("--losses", type=lambda s: s.split(","), help="comma list of loss variants")
    for name, kind in (("--ratios", float), ("--seeds", int)):
        p.add_argument(name, type=lambda s, k=kind: [k(x) for x in s.split(",")], help="comma list")
    p.add_argument("--workdir", help="run folders, or gs://BUCKET/DIR (default: the suite's)")
    p.add_argument("--results_dir", help="report folder (default WORKDIR/results)")
    p.add_argument("--source", help="data.source of every run (segmentation: the CIFAR-10 copy)")
    p.add_argument("--jobs", type=int, help="programs at the same time (default: the suite's, 1)")
    vmap = "the missing seeds of a (loss, ratio) in one program (for a GPU or TPU)"
    p.add_argument("--vmap_seeds", action=argparse.BooleanOptionalAction, default=False, help=vmap)
    p.add_argument("--dry_run", action="store_true", help="print the programs, run nothing")
    return p


def _env(plan: Plan, jobs: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    local = plan.workdir if "://" not in plan.workdir else tempfile.gettempdir()
    env.setdefault("JAX_COMPILATION_CACHE_DIR", f"{local}/jax_cache")  # shared by the runs
    if jobs > 1:  # programs that share an accelerator take memory as they need it
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (REPO, env.get("PYTHONPATH"))))
    return env


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    extra = dict(a[9:].split("=", 1) for a in rest if a.startswith("--config.") and "=" in a)
    if len(extra) != len(rest):  # --config.KEY=VALUE: to every run
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if unknown := sorted(set(args.losses or ()) - set(LOSSES)):
        parser.error(f"unknown loss variant(s) {unknown}; known: {', '.join(LOSSES)}")
    try:
        code = _run(Plan(args, extra, argv), args)
    except ReproduceError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = training.EXIT_CONFIG_ERROR
    if code:
        sys.exit(code)


def _run(plan: Plan, args) -> int:
    """Checks the stored configs, runs the missing seeds, writes the report."""
    programs, n_todo = programs_to_run(plan, args.vmap_seeds)
    jobs = args.jobs or min(plan.suite.get("jobs", 1), os.cpu_count() or 1)
    print(f"{plan.name}: {len(plan.runs)} runs in the grid, {len(plan.runs) - n_todo} finished or "
          f"failed before, {n_todo} to run in {len(programs)} program(s) "
          f"({'vmapped seeds, ' if args.vmap_seeds else ''}{jobs} at a time); runs: {plan.root}; "
          f"report: {plan.results_dir}", flush=True)  # fmt: skip
    if args.dry_run:
        print(f"config: {plan.path}; every run: {plan.extra or 'no other overrides'}")
        for i, p in enumerate(programs):
            print(f"[{i + 1}/{len(programs)}] {shlex.join(p['cmd'])}")
        return 0
    prepare_segmentation_data(plan)
    logs = os.path.join(tempfile.gettempdir(), "cce_jax_logs") if "://" in plan.root else None
    pool = Pool(_env(plan, jobs), jobs, logs)
    failures = {}

    def on_end(prog, rc, secs, tail):
        result = outcome(prog, rc, tail, pool.stopped)
        if result in ("finished", "stopped"):
            print(f"  {result} (exit {rc}) after {secs:.0f}s: {prog['label']}", flush=True)
        else:
            for s in prog["seeds"]:  # a failure.json of the seed is reported before these
                failures[(prog["loss"], prog["ratio"], s)] = (prog["workdir"], result)
            print(f"  FAILED after {secs:.0f}s: {prog['label']}: {result}", flush=True)
        _report(plan, failures)

    pool.run(programs, on_end)
    return _finish(plan, *_report(plan, failures), pool.stopped)


if __name__ == "__main__":
    main()
