"""Segmentation through the trainer: split, device pipeline, steps, metrics, summary files."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cce_jax import data as data_lib  # noqa: E402
from cce_jax import training  # noqa: E402
from cce_jax.training import steps as steps_lib  # noqa: E402
from experiments import make_segmentation_data as seg  # noqa: E402
from experiments import report  # noqa: E402
from experiments.configs import default as default_config  # noqa: E402

K = 3


def _tiny_set(n_train=24, n_test=10, size=16, seed=0):
    """Images whose first channel encodes the class of each pixel (40 + 60 * class);
    each image is split into vertical bands of random classes, the band edges are ignore."""
    rng = np.random.default_rng(seed)

    def split(n):
        masks = np.zeros((n, size, size), np.uint8)
        for i in range(n):
            cuts = np.sort(rng.choice(np.arange(3, size - 3), 2, replace=False))
            classes = rng.choice(K, 3, p=[0.6, 0.3, 0.1])
            col = np.searchsorted(cuts, np.arange(size), side="right")
            masks[i] = classes[col][None, :]
            masks[i][:, cuts] = seg.IGNORE_INDEX
        images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
        cls = np.where(masks == seg.IGNORE_INDEX, 0, masks)
        images[..., 0] = (40 + 60 * cls).astype(np.uint8)
        return images, masks

    tr_x, tr_m = split(n_train)
    te_x, te_m = split(n_test)
    for c in range(K):  # every class in both splits
        tr_m[c, :, 1], te_m[c, :, 1] = c, c
        tr_x[c, :, 1, 0], te_x[c, :, 1, 0] = 40 + 60 * c, 40 + 60 * c
    return data_lib.Dataset(
        name="bands",
        train_images=tr_x,
        train_labels=tr_m,
        train_ids=[f"train:{i}" for i in range(n_train)],
        test_images=te_x,
        test_labels=te_m,
        class_names=("a", "b", "c"),
    )


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "bands.npz"
    seg.save_seg_npz(_tiny_set(), str(path))
    return str(path)


def _data_config(npz_path, **kw):
    cfg = data_lib.default_config()
    cfg.source = f"seg_npz:{npz_path}"
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def seg_config(npz_path, **overrides):
    c = default_config.get_config()
    c.data.source = f"seg_npz:{npz_path}"
    c.data.augment = True
    c.model.name = "fcn8"
    c.model.width = 4
    c.batch_size = 8
    c.eval_batch_size = 4  # 10 test images: the last batch is padded
    c.num_epochs = 2
    c.eval_every = 1
    c.progress = False
    c.optimizer.lr = 0.05
    c.schedule.warmup_epochs = 0.0
    c.update_from_flattened_dict(overrides)  # keys like "loss.name"
    return c


# ----------------------------------------------------------------------------------------
# The split and the device pipeline
# ----------------------------------------------------------------------------------------


def test_split_counts_pixels_and_keeps_every_image(npz_path):
    ds = _tiny_set()
    split = data_lib.make_split(
        _data_config(npz_path), data_lib.load_source(_data_config(npz_path))
    )
    assert split.info.task == "segmentation"
    assert split.info.num_train == 24 and split.info.num_test == 10
    want = np.bincount(ds.train_labels[ds.train_labels != 255].ravel(), minlength=K)
    np.testing.assert_array_equal(split.info.class_counts, want)
    np.testing.assert_array_equal(split.train_labels, ds.train_labels.astype(np.int32))
    assert split.train_labels.shape == (24, 16, 16) and split.augment is False  # 16 < 32
    limited = data_lib.make_split(
        _data_config(npz_path, max_test=3), data_lib.load_source(_data_config(npz_path))
    )
    np.testing.assert_array_equal(limited.test_labels, ds.test_labels[:3])


@pytest.mark.parametrize("key,value", [("n_max", 5), ("counts", (5, 5, 5))])
def test_split_refuses_image_selection(npz_path, key, value):
    cfg = _data_config(npz_path, **{key: value})
    with pytest.raises(ValueError, match=f"{key}: a segmentation set is used whole"):
        data_lib.make_split(cfg, data_lib.load_source(cfg))


def test_split_names_a_class_without_training_pixels(tmp_path):
    ds = _tiny_set()
    ds.train_labels[ds.train_labels == 2] = 1
    path = tmp_path / "no_c.npz"
    seg.save_seg_npz(ds, str(path))
    cfg = _data_config(str(path))
    with pytest.raises(ValueError, match=r"no pixel of class 2 \('c'\)"):
        data_lib.make_split(cfg, data_lib.load_source(cfg))


def test_tf_pipeline_refuses_segmentation(npz_path):
    cfg = _data_config(npz_path, pipeline="tf")
    with pytest.raises(ValueError, match="classification sets only"):
        data_lib.build(cfg, seed=0, global_batch_size=8, eval_batch_size=4)


def test_device_pipeline_crops_and_flips_masks_with_their_images(npz_path):
    cfg = _data_config(npz_path, augment=True)
    d = data_lib.build(cfg, seed=3, global_batch_size=8, eval_batch_size=4)
    split = d._split
    moved = 0
    for batch in d.train_epoch(1):
        img = np.asarray(batch["image"])
        lab = np.asarray(batch["label"])
        assert lab.shape == (8, 16, 16) and lab.dtype == np.int32
        raw0 = np.rint((img[..., 0] - split.b[0]) / split.a[0])  # back to uint8 values
        valid = lab != 255
        np.testing.assert_array_equal(raw0[valid], 40 + 60 * lab[valid])
        # padding: image zero, label ignore
        pad = (raw0 == 0) & ~valid
        moved += int(pad.sum())
    assert moved > 0  # some crops reached into the padding
    # eval: the test split in order, the last batch's padding masked
    evals = list(d.eval_batches())
    assert [int(np.sum(b["mask"])) for b in evals] == [4, 4, 2]
    got = np.concatenate([np.asarray(b["label"]) for b in evals])[:10]
    np.testing.assert_array_equal(got, split.test_labels)


# ----------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------


def test_valid_mean_excludes_ignore_pixels():
    values = jnp.arange(8.0).reshape(2, 2, 2)
    labels = jnp.array([[[0, 255], [1, 2]], [[255, 255], [3, 1]]])  # 3 >= K: not a class
    got = steps_lib._valid_mean(values, labels, 3)
    assert float(got) == pytest.approx((0 + 2 + 3 + 7) / 4)
    assert float(steps_lib._valid_mean(values, jnp.full((2, 2, 2), 255), 3)) == 0.0
    assert float(steps_lib._valid_mean(jnp.arange(4.0), jnp.array([0, 9, 1, 1]), 3)) == 1.5


def test_train_step_on_an_all_ignore_batch_is_finite_and_still():
    from cce_jax import losses, models, parallel
    from cce_jax.training import optimizer as opt_lib

    model = models.get_model("fcn8", num_classes=K, width=4)
    cfg = seg_config("unused")
    tx = opt_lib.make_optimizer(cfg, 10)
    mesh = parallel.make_mesh()
    state = steps_lib.create_train_state(model, tx, jax.random.key(0), (16, 16, 3), mesh)
    step = steps_lib.make_train_step(
        model, tx, mesh, (losses.get("mse_ol", class_counts=[100, 10, 1]),), donate=False
    )
    batch = {
        "image": jnp.ones((8, 16, 16, 3)),
        "label": jnp.full((8, 16, 16), 255, jnp.int32),
    }
    _, m = step(state, batch)
    assert float(m["loss"]) == 0.0 and float(m["grad_norm"]) == 0.0
    assert float(m["accuracy"]) == 0.0


# ----------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------


def _reference_confusion(labels, predictions, k):
    y, p = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    keep = y < k
    return np.bincount(y[keep] * k + p[keep], minlength=k * k).reshape(k, k)


@pytest.mark.parametrize("loss", ["mse_ol", pytest.param("cce_paper", marks=pytest.mark.slow)])
def test_train_and_evaluate_segmentation(npz_path, tmp_path, loss):
    summary = training.train_and_evaluate(
        seg_config(npz_path, **{"loss.name": loss}), str(tmp_path)
    )
    assert summary["task"] == "segmentation"
    assert summary["num_test"] == 10
    pred = report.read_predictions(str(tmp_path))
    ds = _tiny_set()
    np.testing.assert_array_equal(pred["labels"], ds.test_labels)
    np.testing.assert_array_equal(pred["images"], ds.test_images)
    assert pred["predictions"].shape == (10, 16, 16)
    # the on-device confusion matrix equals the one counted from the stored predictions
    cm = _reference_confusion(ds.test_labels, pred["predictions"], K)
    np.testing.assert_array_equal(summary["confusion_matrix"], cm)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert summary["test_miou"] == pytest.approx(np.nanmean(iou))
    assert summary["num_test_pixels"] == int((ds.test_labels != 255).sum())
    assert summary["test_top1"] == pytest.approx(np.trace(cm) / cm.sum())
    want_counts = np.bincount(ds.train_labels[ds.train_labels != 255], minlength=K)
    assert summary["class_counts"] == want_counts.tolist()
    assert sorted(sum(summary["frequency_groups"].values(), [])) == [0, 1, 2]
    text = report.format_table(summary)
    assert "mIoU" in text and "train px" in text
    assert report.plot_per_class(summary, str(tmp_path / "per_class.png"))


@pytest.mark.slow
def test_segmentation_learns_the_bands(npz_path, tmp_path):
    """The first channel gives every pixel's class away: a few epochs must find it."""
    cfg = seg_config(
        npz_path, num_epochs=12, eval_every=12, batch_size=4, **{"data.augment": False}
    )
    cfg.optimizer.lr = 0.1
    summary = training.train_and_evaluate(cfg, str(tmp_path))
    assert summary["test_top1"] > 0.8 and summary["test_miou"] > 0.6, report.format_table(summary)


@pytest.mark.slow
def test_several_seeds_segmentation(npz_path, tmp_path):
    summary = training.train_and_evaluate(
        seg_config(npz_path, seeds=(0, 1), num_epochs=1), str(tmp_path)
    )
    assert summary["task"] == "segmentation"
    assert len(summary["test_miou"]["per_seed"]) == 2
    for s in (0, 1):
        one = report.read_predictions(str(tmp_path / f"seed_{s}"))
        assert one["predictions"].shape == (10, 16, 16)


def test_model_and_data_task_must_match(npz_path, tmp_path):
    """The task comes from the built data (``info.task``); a mismatch writes nothing."""
    from test_training import FakeData, small_config

    cfg = seg_config(npz_path, **{"model.name": "resnet8"})
    with pytest.raises(training.ConfigError, match=r"segmentation set: use one of .*'fcn8'"):
        training.train_and_evaluate(cfg, str(tmp_path / "a"))
    cfg = small_config(**{"model.name": "fcn8"})
    with pytest.raises(training.ConfigError, match=r"classification set: use one of .*'resnet8'"):
        training.train_and_evaluate(cfg, str(tmp_path / "b"), data=FakeData())
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]


_EIGHT_DEVICES = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
sys.path.insert(0, sys.argv[3])
assert jax.device_count() == 8
from cce_jax import training
from experiments.report import read_predictions
from tests.test_segmentation_training import seg_config, _reference_confusion, K
cfg = seg_config(sys.argv[1], batch_size=8, eval_batch_size=8, num_epochs=1)
summary = training.train_and_evaluate(cfg, sys.argv[2])
pred = read_predictions(sys.argv[2])
cm = _reference_confusion(pred["labels"], pred["predictions"], K)
assert np.array_equal(np.asarray(summary["confusion_matrix"]), cm), cm
print("OK", summary["device_count"], summary["test_miou"])
"""


@pytest.mark.slow
def test_segmentation_on_eight_devices(npz_path, tmp_path):
    """The sharded pipeline and the sharded pixel confusion: on 8 simulated devices the
    summary's matrix equals the one counted from the stored predictions."""
    import os
    import subprocess

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, npz_path, str(tmp_path / "w"), str(ROOT)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK 8" in out.stdout
