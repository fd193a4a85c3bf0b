"""Preemption of a multi-process run: 2 CPU processes (jax.distributed, gloo collectives, 1
device each) train one digits config in one shared workdir (process 0 writes the project's
files, orbax checkpoints collectively). Only process 0 gets a SIGTERM mid-epoch; JAX's
preemption service tells both processes the step to stop at
(``multihost_utils.reached_preemption_sync_point``, no host collective per step), so both must
stop after the same step, save one checkpoint together and exit 75, and a rerun of both must
end exactly as an uninterrupted 2-process run.

Each process runs tests/_mp_preempt_worker.py; its output goes to a file (no pipe to fill)
and every launch has a timeout after which all its processes are killed (a process stuck in
a collective whose peer has left must fail the test, not hang it).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_mp_preempt_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 360  # one launch of both processes (about 45-65 s on 2 busy cores)


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, logs, tag, *, signal_at=None):
    """Runs both processes to their end; returns [(exit code, output)] by process id.
    ``signal_at``: (epoch, batch) at which process 0 alone sends itself SIGTERM."""
    addr = f"127.0.0.1:{_free_port()}"
    procs, files = [], []
    for i in range(NUM_PROCESSES):
        cmd = [
            sys.executable,
            str(WORKER),
            f"--workdir={workdir}",
            f"--coordinator={addr}",
            f"--num_processes={NUM_PROCESSES}",
            f"--process_id={i}",
        ]
        if signal_at is not None and i == 0:
            cmd.append("--signal_at={},{}".format(*signal_at))
        log = logs / f"{tag}_{i}.log"
        files.append(log)
        with log.open("w") as f:
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
            )
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)  # one budget in effect: the others ran meanwhile
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        tails = "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in files)
        pytest.fail(f"{tag}: a process still ran after {TIMEOUT_S} s (killed)\n{tails}")
    return [(p.returncode, f.read_text()) for p, f in zip(procs, files)]


def _expect(results, code, tag):
    for i, (rc, out) in enumerate(results):
        assert rc == code, f"{tag}, process {i}: exit {rc}, expected {code}\n{out[-4000:]}"


def _steps_per_epoch(out):
    return int(re.search(r"^steps_per_epoch: (\d+)$", out, re.M).group(1))


def _lines(out, prefix):
    return [line for line in out.splitlines() if line.startswith(prefix)]


def _rows(w):
    return [json.loads(x) for x in (Path(w) / "metrics.jsonl").read_text().splitlines()]


def _final_state(w):
    """The newest checkpoint's train state, restored on this (1-device) process."""
    import jax
    import orbax.checkpoint as ocp

    ckpts = Path(w) / "checkpoints"
    step = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    path = ckpts / str(step) / "state"
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
        return step, ckptr.restore(path, like)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_together_and_resumes_identically(tmp_path):
    import jax
    import numpy as np

    logs = tmp_path / "logs"
    logs.mkdir()
    a, b = tmp_path / "a", tmp_path / "b"

    # 1. Uninterrupted.
    ref = _launch(a, logs, "a")
    _expect(ref, 0, "uninterrupted run")
    spe = _steps_per_epoch(ref[0][1])
    assert spe >= 4, spe
    for _, out in ref:
        assert _lines(out, "done: ") == [f"done: checkpoint {3 * spe}"], out[-2000:]
    sa = json.loads((a / "summary.json").read_text())
    assert sa["process_count"] == NUM_PROCESSES and sa["device_count"] == NUM_PROCESSES

    # 2. Process 0 alone gets SIGTERM after batch 3 of epoch 2 (0-based (1, 2)): both stop
    # at the step the preemption service chose, save it together and exit 75.
    stopped = _launch(b, logs, "b_stop", signal_at=(1, 2))
    _expect(stopped, 75, "run stopped by SIGTERM to process 0")
    stops = [_lines(out, "stop: ") for _, out in stopped]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    found = re.search(r"preemption notice .* at (epoch (\d+)(?:, step (\d+)/\d+)?); ", stops[0][0])
    assert found, stops[0]
    where, epoch, step = found.group(1), int(found.group(2)), int(found.group(3) or 0)
    pos = (epoch - 1) * spe + step if step else epoch * spe
    assert spe + 3 <= pos < 3 * spe, stops[0]
    ckpts = b / "checkpoints"
    assert max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == pos
    assert not [p.name for p in ckpts.iterdir() if "tmp" in p.name]
    assert (ckpts / str(pos) / "digest.json").exists()
    assert not (b / "summary.json").exists()

    # 3. Both rerun: resume at the saved position and end as the uninterrupted run.
    resumed = _launch(b, logs, "b_resume")
    _expect(resumed, 0, "resumed run")
    for _, out in resumed:
        assert f"resumed from {ckpts} at {where}" in out, out[-2000:]
        assert _lines(out, "done: ") == [f"done: checkpoint {3 * spe}"], out[-2000:]
    sb = json.loads((b / "summary.json").read_text())
    assert sb["resumed_from_epoch"] == pos // spe and sb["process_count"] == NUM_PROCESSES
    for key in ("test_top1", "confusion_matrix", "per_class_accuracy", "final_train_loss"):
        assert sa[key] == sb[key], key
    keep = ("epoch", "train_loss", "train_accuracy", "test")
    assert [[r.get(k) for k in keep] for r in _rows(a)] == [
        [r.get(k) for k in keep] for r in _rows(b)
    ]
    (la, ta), (lb, tb) = _final_state(a), _final_state(b)
    assert la == lb == 3 * spe
    jax.tree.map(np.testing.assert_array_equal, ta, tb)
