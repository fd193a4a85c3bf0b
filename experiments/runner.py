"""Runs the train programs of a grid: each :class:`Unit` in a subprocess whose output goes to
its ``train.log`` (and the console), at most ``jobs`` at a time, within the time budget;
SIGTERM/SIGINT are forwarded to the running programs (each checkpoints and exits 75); every
ended program is classified as finished, stopped (resumable) or failed (with its reason)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from cce_jax.training.config import EXIT_DEADLINE, EXIT_DIVERGED
from experiments.run_folders import failure_reason, read_json, seed_status
from experiments.suites import REPO


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
def default_backend() -> str:
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


class Runner:
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


def _forward_signals(runner: Runner, stopped: list):
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


def outcome(unit: Unit, rc: int, tail: list[str], killed: bool) -> str:
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
        failure = read_json(os.path.join(unit.workdir, "failure.json"))
        return failure_reason(failure) if failure else "diverged (exit 3, no failure.json)"
    errors = [line for line in tail if line.startswith("error:")]
    last = errors[-1] if errors else next((line for line in reversed(tail) if line.strip()), "")
    return f"exit {rc}" + (f": {last.strip()[:300]}" if last else "")


# --------------------------------------------------------------------------- the schedule


@dataclasses.dataclass
class Schedule:
    """How the runs of one command go: its units, limits and what happened so far."""

    units: list  # of Unit, in the order they start
    root: str  # the suite's run folder
    jobs: int  # programs at the same time
    run_deadline: float | None  # the runs' --config.deadline (time.time() seconds)
    budget_end: float | None  # the hard stop: a program still going then is terminated
    min_start_s: float  # no program starts with less time than this before run_deadline
    failures: dict = dataclasses.field(default_factory=dict)  # this call's, no failure.json
    stopped: list = dataclasses.field(default_factory=list)  # signals received
    budget_hit: bool = False
    started: int = 0


def run_units(schedule: Schedule, runner: Runner, on_end: Callable[[], object]) -> Schedule:
    """Runs ``schedule.units``, seeds outermost, ``jobs`` at a time, calling ``on_end`` after
    every program that ends; a received SIGTERM/SIGINT is forwarded to the running programs
    and starts no new one. Returns ``schedule`` with its outcome (failures, stopped,
    budget_hit)."""
    pending = collections.deque(schedule.units)
    restore_signals = _forward_signals(runner, schedule.stopped)
    try:
        while pending or runner.running:
            _start_ready(schedule, pending, runner)
            if not runner.running:
                break
            if schedule.stopped:  # a program started while the signal came
                runner.forward(signal.SIGTERM, once=True)
            unit, rc, secs, tail, killed = runner.wait_any(schedule.budget_end)
            _record(schedule, unit, rc, secs, tail, killed)
            on_end()
    except KeyboardInterrupt:
        runner.stop_all()
        raise
    finally:
        restore_signals()
    return schedule


def _start_ready(schedule: Schedule, pending: collections.deque, runner: Runner) -> None:
    """Starts pending units while fewer than ``jobs`` run and time and signals allow."""
    while (
        pending
        and len(runner.running) < schedule.jobs
        and not schedule.budget_hit
        and not schedule.stopped
    ):
        deadline = schedule.run_deadline
        if deadline is not None and deadline - time.time() < schedule.min_start_s:
            schedule.budget_hit = True
            break
        unit = pending.popleft()
        for s in unit.seeds:
            schedule.failures.pop((unit.loss, unit.ratio, s), None)
        schedule.started += 1
        runner.start(unit)  # its command line is the first line of its train.log
        n = len(schedule.units)
        print(f"[{schedule.started}/{n}] {unit.label()}: {unit.workdir}", flush=True)


def _record(schedule: Schedule, unit: Unit, rc, secs, tail, killed) -> None:
    """Prints how a program ended; a failure without failure.json goes to ``failures``."""
    # After a signal, an exit other than 0/3 (e.g. killed while starting up) is a stop.
    interrupted = bool(schedule.stopped) and rc not in (0, EXIT_DIVERGED)
    result = outcome(unit, rc, tail, killed or interrupted)
    if result == "stopped":
        schedule.budget_hit = schedule.budget_hit or schedule.budget_end is not None
        print(f"  stopped (exit {rc}, checkpointed) after {secs:.0f}s: {unit.label()}", flush=True)
    elif result == "finished":
        print(f"  finished in {secs:.0f}s: {unit.label()}", flush=True)
    else:
        for s in unit.seeds:
            status, _, _ = seed_status(schedule.root, unit.loss, unit.ratio, s)
            if status != "failed":
                schedule.failures[(unit.loss, unit.ratio, s)] = (unit.workdir, result)
        print(
            f"  FAILED after {secs:.0f}s: {unit.label()}: {result} "
            f"(log: {os.path.join(unit.workdir, 'train.log')})",
            flush=True,
        )
