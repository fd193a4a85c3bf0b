"""cce_jax.data and the trainer with tensorflow / tensorflow_datasets NOT importable.

Each test runs Python in a subprocess whose ``sitecustomize`` wraps every ``sys.meta_path``
finder so that ``tensorflow`` and ``tensorflow_datasets`` are not found: importing them raises
ModuleNotFoundError and ``importlib.util.find_spec`` returns None, as on a GPU image without
them.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _hide_modules import write_sitecustomize  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    write_sitecustomize(site, ("tensorflow", "tensorflow_datasets"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    return env


def _run(args, tmp_path, timeout=240):
    proc = subprocess.run(
        [sys.executable, *args],
        env=_env(tmp_path),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def _small_archive(path):
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 6), ("test", 3)):
            for c in ("ant", "bee", "cow"):
                for i in range(n):
                    buf = io.BytesIO()
                    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                    Image.fromarray(img).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return str(path)


BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not block tensorflow")

    from cce_jax import data

    out = {}
    npz_path, archive, cache = sys.argv[1:4]
    sources = {"digits": "digits", "npz": "npz:" + npz_path, "jpeg": "cifar10_jpeg:" + archive}
    for key, source in sources.items():
        for pipeline in ("device", "auto"):
            cfg = data.default_config()
            cfg.source, cfg.pipeline, cfg.cache_dir = source, pipeline, cache
            cfg.profile, cfg.ratio, cfg.n_max = "exp", 2.0, 4
            d = data.build(cfg, seed=0, global_batch_size=4, eval_batch_size=4)
            assert d.pipeline == "device", d.pipeline
            batches = list(d.train_epoch(0))
            assert len(batches) == d.steps_per_epoch
            ev = list(d.eval_batches())
            out[key + "/" + pipeline] = [d.info.name, d.info.num_train, d.info.num_test,
                                         int(sum(int(np.asarray(e["mask"]).sum()) for e in ev))]
    # pipeline="tf" and source="tfds" fail with a clear message, not a raw ImportError.
    cfg = data.default_config()
    cfg.source, cfg.pipeline = "digits", "tf"
    try:
        data.build(cfg, seed=0, global_batch_size=4, eval_batch_size=4)
    except ValueError as e:
        assert "pipeline: 'tf' needs tensorflow" in str(e), e
    else:
        raise SystemExit("pipeline='tf' built without tensorflow")
    cfg.source, cfg.pipeline = "tfds:cifar10", "device"
    try:
        data.build(cfg, seed=0, global_batch_size=4, eval_batch_size=4)
    except ImportError as e:
        assert "tensorflow_datasets" in str(e), e
    else:
        raise SystemExit("source='tfds' built without tensorflow_datasets")
    assert not any(m.startswith("tensorflow") for m in sys.modules)
    print("RESULT " + json.dumps(out))
    """
)


def test_build_without_tensorflow(tmp_path):
    npz = tmp_path / "arrays.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        train_images=rng.integers(0, 256, (30, 5, 5, 3), dtype=np.uint8),
        train_labels=np.repeat([0, 1, 2], 10),
        test_images=rng.integers(0, 256, (7, 5, 5, 3), dtype=np.uint8),
        test_labels=np.array([0, 1, 2, 0, 1, 2, 0]),
    )
    archive = _small_archive(tmp_path / "small.tar.gz")
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    out = _run([str(script), str(npz), archive, str(tmp_path / "cache")], tmp_path)
    res = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
    from cce_jax.data import class_counts

    k10 = int(class_counts("exp", 10, 4, 2.0).sum())
    k3 = int(class_counts("exp", 3, 4, 2.0).sum())  # [4, 2, 2]
    assert res["digits/auto"] == res["digits/device"] == ["digits", k10, 596, 596]
    assert res["npz/device"] == res["npz/auto"] == ["arrays", k3, 7, 7]
    assert res["jpeg/auto"] == res["jpeg/device"] == ["cifar10_jpeg", k3, 9, 9]


@pytest.mark.slow
def test_trainer_without_tensorflow(tmp_path):
    workdir = tmp_path / "run"
    _run(
        [
            "-m",
            "experiments.train",
            "--config=experiments/configs/tiny.py",
            f"--workdir={workdir}",
            "--config.data.source=digits",
            "--config.data.pipeline=device",
            "--config.num_epochs=1",
            "--config.progress=False",
        ],
        tmp_path,
        timeout=400,
    )
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["num_test"] == 596
    assert 0.0 <= summary["test_balanced_accuracy"] <= 1.0
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["pipeline"] == "device" and config["data"]["name"] is None
