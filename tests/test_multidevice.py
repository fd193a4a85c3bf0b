"""Data parallelism: 8 simulated CPU devices and 2 processes match 1 device.

Each configuration runs in its own subprocess (tests/_multidevice_worker.py) because the
device count is fixed when JAX starts. The worker trains a narrow ResNet-8 for 3 COT
batches (each one a CE update then a complement-entropy update, so 6 SGD-momentum updates
with weight decay) on one fixed global batch of 16 and evaluates a masked test batch.

Tolerance: parameters and BatchNorm statistics agree to atol 1e-5 (observed: ~3e-7, the
float32 reduction order of the cross-device all-reduce); confusion matrices are equal.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_multidevice_worker.py")
ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(out, devices, *extra):
    cmd = [
        sys.executable,
        str(WORKER),
        "--devices",
        str(devices),
        "--out",
        str(out),
        "--cot",
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(procs, timeout=240):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-4000:]
    return outs


def _compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith("batch_stats") for k in a.files)
    for k in a.files:
        if k == "confusion":
            np.testing.assert_array_equal(a[k], b[k])
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=ATOL, err_msg=k)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one.npz"
    _wait([_run(out, 1)])
    return out


@pytest.mark.slow
def test_eight_devices_match_one(one_device, tmp_path):
    out = tmp_path / "eight.npz"
    _wait([_run(out, 8)])
    _compare(one_device, out)
    assert int(np.load(out)["step"]) == 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(one_device, tmp_path):
    out = tmp_path / "two.npz"
    addr = f"127.0.0.1:{_free_port()}"
    procs = [
        _run(out, 2, "--coordinator", addr, "--num_processes", "2", "--process_id", str(i))
        for i in range(2)
    ]
    outs = _wait(procs)
    assert "ok 4 2" in outs[0], outs[0][-2000:]
    _compare(one_device, out)
