"""Tests of the device-resident pipeline (cce_jax.data, pipeline="device").

Run as a script (``python tests/test_device_pipeline.py --worker``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, this file is the 8-device worker that
``test_eight_devices_subprocess`` starts.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from jax.sharding import PartitionSpec as P  # noqa: E402

from cce_jax import data  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cfg(**kw):
    cfg = data.default_config()
    cfg.source = "digits"
    cfg.pipeline = "device"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def reference_batch(d, plan, step):
    """numpy reference of batch `step`: gather, zero-pad 4, crop at (oy, ox), flip, normalise."""
    x, y = d.train_split()
    pos = plan.positions[step]
    imgs = x[pos]
    if d.augment:
        h, w = imgs.shape[1:3]
        out = np.empty_like(imgs)
        for i in range(len(pos)):
            padded = np.pad(imgs[i], [(data.PAD, data.PAD), (data.PAD, data.PAD), (0, 0)])
            crop = padded[
                plan.oy[step, i] : plan.oy[step, i] + h, plan.ox[step, i] : plan.ox[step, i] + w
            ]
            out[i] = crop[:, ::-1] if plan.flip[step, i] else crop
        imgs = out
    return d.normalize(imgs), y[pos]


def check_invariants(d, *, num_devices, epochs=(0, 1)):
    """The device pipeline's contract; returns a small summary (used in and out of process)."""
    n = d.info.num_train
    spe = d.steps_per_epoch
    gb = d.epoch_plan(0).positions.shape[1]
    h, w, c = d.info.image_shape
    first = {}
    for epoch in epochs:
        plan = d.epoch_plan(epoch)
        assert plan.positions.shape == (spe, gb)
        flat = plan.positions.ravel()
        # Every example at most once per epoch; steps * B of them; all kept positions.
        assert len(np.unique(flat)) == spe * gb and flat.min() >= 0 and flat.max() < n
        assert set(plan.oy.ravel().tolist()) <= set(range(2 * data.PAD + 1))
        for s, batch in enumerate(d.train_epoch(epoch)):
            image, label = batch["image"], batch["label"]
            assert isinstance(image, jax.Array) and image.shape == (gb, h, w, c)
            assert image.dtype == np.float32 and label.dtype == np.int32 and label.shape == (gb,)
            for v in (image, label):
                assert v.sharding.spec == P("data") and v.sharding.mesh.size == num_devices
                assert len(v.addressable_shards) == num_devices
            ref_x, ref_y = reference_batch(d, plan, s)
            np.testing.assert_allclose(np.asarray(image), ref_x, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(label), ref_y)
            if s == 0:
                first[epoch] = np.asarray(image)
        assert s + 1 == spe
    # Same epoch: bit-identical; another epoch: other batches.
    again = np.asarray(next(d.train_epoch(epochs[0]))["image"])
    np.testing.assert_array_equal(again, first[epochs[0]])
    assert not np.array_equal(first[epochs[0]], first[epochs[1]])
    # Eval: the test split once, in order, padding masked.
    test_x, test_y = d.test_split()
    ev = list(d.eval_batches())
    assert len(ev) == d.num_eval_batches()
    for e in ev:
        for k in ("image", "label", "mask"):
            assert e[k].sharding.spec == P("data")
    mask = np.concatenate([np.asarray(e["mask"]) for e in ev])
    labels = np.concatenate([np.asarray(e["label"]) for e in ev])
    images = np.concatenate([np.asarray(e["image"]) for e in ev])
    m = d.info.num_test
    assert mask[:m].all() and not mask[m:].any()
    np.testing.assert_array_equal(labels[:m], test_y)
    np.testing.assert_allclose(images[:m], d.normalize(test_x), atol=1e-6)
    assert np.all(images[m:] == 0)
    return {"steps": spe, "batch": gb, "num_train": n, "seen": int(spe * gb)}


# ---------------------------------------------------------------------------------------
# One device, in process
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [True, False])
def test_one_device_invariants(augment):
    cfg = _cfg(profile="exp", ratio=5.0, augment=augment)
    d = data.build(cfg, seed=3, global_batch_size=64, eval_batch_size=100)
    assert d.pipeline == "device" and d.augment is augment
    out = check_invariants(d, num_devices=len(jax.devices()))
    assert out["seen"] == d.steps_per_epoch * 64
    if len(jax.devices()) == 1:  # one device: every kept example but the remainder, once
        plan = d.epoch_plan(0)
        assert len(np.unique(plan.positions)) == (d.info.num_train // 64) * 64


def test_augmentation_is_identity_when_off_and_not_when_on():
    on = data.build(_cfg(augment=True), seed=0, global_batch_size=32, eval_batch_size=64)
    off = data.build(_cfg(augment=False), seed=0, global_batch_size=32, eval_batch_size=64)
    x, _ = off.train_split()
    plan = off.epoch_plan(0)
    np.testing.assert_array_equal(
        np.asarray(next(off.train_epoch(0))["image"]), off.normalize(x[plan.positions[0]])
    )
    plan_on = on.epoch_plan(0)
    assert not np.allclose(
        np.asarray(next(on.train_epoch(0))["image"]), on.normalize(x[plan_on.positions[0]])
    )
    assert 0 < plan_on.flip.mean() < 1 and len(np.unique(plan_on.oy)) == 2 * data.PAD + 1


def test_resume_is_exact_and_seeds_differ():
    cfg = _cfg(augment=True)
    a = data.build(cfg, seed=7, global_batch_size=32, eval_batch_size=64)
    b = data.build(cfg, seed=7, global_batch_size=32, eval_batch_size=64)  # a "restarted" run
    c = data.build(cfg, seed=8, global_batch_size=32, eval_batch_size=64)
    for x, y in zip(a.train_epoch(3), b.train_epoch(3)):
        np.testing.assert_array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
        np.testing.assert_array_equal(np.asarray(x["label"]), np.asarray(y["label"]))
    assert not np.array_equal(a.epoch_plan(3).positions, c.epoch_plan(3).positions)


def test_several_seeds_share_one_load_and_stack():
    cfg = _cfg(profile="exp", ratio=5.0, augment=True)
    raw = data.load_source(cfg)
    pipes = []
    for s in (0, 1, 2):
        cfg.subset_seed = s
        pipes.append(data.build(cfg, seed=s, global_batch_size=32, eval_batch_size=64, raw=raw))
    assert len({p.steps_per_epoch for p in pipes}) == 1  # same counts -> same steps
    batches = [next(p.train_epoch(0)) for p in pipes]
    stacked = data.stack_batches(batches)
    assert stacked["image"].shape == (3, 32, 8, 8, 1) and stacked["label"].shape == (3, 32)
    assert stacked["image"].sharding.spec == P(None, "data")
    for i, bt in enumerate(batches):
        np.testing.assert_array_equal(np.asarray(stacked["image"][i]), np.asarray(bt["image"]))
    # numpy batches (tf pipeline) are stacked on the host.
    host = data.stack_batches([{"x": np.zeros(4)}, {"x": np.ones(4)}])
    assert isinstance(host["x"], np.ndarray) and host["x"].shape == (2, 4)
    with pytest.raises(ValueError, match="same keys"):
        data.stack_batches([{"x": np.zeros(1)}, {"y": np.zeros(1)}])


def test_device_pipeline_errors():
    mesh = data.default_mesh()
    d = len(jax.devices())
    with pytest.raises(ValueError, match="global_batch_size=4096 exceeds"):
        data.build(_cfg(), seed=0, global_batch_size=4096 * d, eval_batch_size=8 * d, mesh=mesh)
    bad_mesh = jax.make_mesh((d,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="needs a 'data' axis"):
        data.build(_cfg(), seed=0, global_batch_size=8, eval_batch_size=8, mesh=bad_mesh)


# ---------------------------------------------------------------------------------------
# Eight simulated devices, in a subprocess
# ---------------------------------------------------------------------------------------


def _worker() -> int:
    assert len(jax.devices()) == 8, jax.devices()
    results = {}
    # 8 devices, a kept subset that does not split evenly over them, augmentation on.
    d = data.build(
        _cfg(profile="exp", ratio=5.0, augment=True),
        seed=3,
        global_batch_size=64,
        eval_batch_size=96,
    )
    results["aug"] = check_invariants(d, num_devices=8)
    # Each device draws its rows from its own chunk: column block j of every batch holds
    # examples of one fixed set, disjoint across blocks and the same in every epoch.
    blocks = [set(), set()]
    for k, epoch in enumerate((0, 1)):
        pos = d.epoch_plan(epoch).positions
        blocks[k] = [set(pos[:, 8 * j : 8 * (j + 1)].ravel().tolist()) for j in range(8)]
    for j in range(8):
        for i in range(j):
            assert not blocks[0][j] & blocks[0][i]
        assert len(blocks[0][j] & blocks[1][j]) > 0.8 * len(blocks[0][j])
    d2 = data.build(_cfg(augment=False), seed=0, global_batch_size=64, eval_batch_size=64)
    results["plain"] = check_invariants(d2, num_devices=8, epochs=(2, 5))
    batches = [next(d.train_epoch(0)), next(d.train_epoch(1))]
    st = data.stack_batches(batches)
    assert st["image"].sharding.spec == P(None, "data")
    np.testing.assert_array_equal(np.asarray(st["label"][1]), np.asarray(batches[1]["label"]))
    print("RESULT " + json.dumps(results))
    return 0


@pytest.mark.slow
def test_eight_devices_subprocess(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    assert res["aug"]["batch"] == 64 and res["aug"]["seen"] == res["aug"]["steps"] * 64


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.exit(_worker())
