"""Tests of cce_jax.data: imbalance profiles, subset selection, sources and the tf pipeline.

The device pipeline has its own file (tests/test_device_pipeline.py); the TensorFlow-free
paths are checked in a subprocess by tests/test_tf_free.py.
"""

import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from cce_jax import _extras, data  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR10_EXP100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _cfg(**kw):
    cfg = data.default_config()
    cfg.pipeline = "tf"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _tf():
    return pytest.importorskip("tensorflow")


def _tfds():
    return pytest.importorskip("tensorflow_datasets")


def make_jpeg_archive(path, *, classes=("a", "b", "c"), n_train=4, n_test=2, size=8):
    """A small cifar10_jpeg-style archive: train|test/<class>/NNNN.jpg made with Pillow."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", n_train), ("test", n_test)):
            for c in classes:
                for i in range(n):
                    img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=90)
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return str(path)


# ---------------------------------------------------------------------------------------
# class_counts
# ---------------------------------------------------------------------------------------


def test_class_counts_known_values():
    c = data.class_counts("exp", 10, 5000, 100)
    assert c.dtype == np.int64 and c.shape == (10,)
    assert c.tolist() == CIFAR10_EXP100
    assert c.sum() == 12406
    assert data.class_counts("exp", 10, 5000, 10).sum() == 20431
    c100 = data.class_counts("exp", 100, 500, 100)
    assert c100.sum() == 10847 and c100[0] == 500 and c100[-1] == 5
    assert data.class_counts("step", 10, 5000, 100).tolist() == [5000] * 5 + [50] * 5
    assert data.class_counts("step", 5, 100, 10).tolist() == [100, 100, 10, 10, 10]
    assert data.class_counts("none", 3, 7, 100).tolist() == [7, 7, 7]
    assert data.class_counts("exp", 10, 5000, 1).tolist() == [5000] * 10
    assert data.class_counts([5, 3, 1], 3).tolist() == [5, 3, 1]
    assert data.class_counts((4, 2)).dtype == np.int64


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("exp", 10, 5000, 0.5), {}, "ratio"),
        (("exp", 10, 0, 10), {}, "n_max"),
        (("step", 10, None, 10), {}, "n_max"),
        (("zipf", 10, 100, 10), {}, "unknown profile"),
        (([5, 3, 1], 4), {}, "length 3 .*num_classes=4"),
        (([5, 0, 1],), {}, "positive"),
        (([5, -2],), {}, "positive"),
    ],
)
def test_class_counts_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.class_counts(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# select_indices
# ---------------------------------------------------------------------------------------


def test_select_indices_counts_and_order_independence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    ids = [f"img{i:04d}.png" for i in range(400)]
    counts = [30, 20, 10, 5]
    kept = data.select_indices(labels, ids, counts, seed=3)
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)
    assert np.bincount(labels[kept], minlength=4).tolist() == counts
    # Same examples in another order -> the same ids survive.
    perm = rng.permutation(400)
    kept2 = data.select_indices(labels[perm], [ids[p] for p in perm], counts, seed=3)
    assert sorted(ids[p] for p in kept) == sorted(ids[perm[p]] for p in kept2)
    # Another seed -> another subset; same seed -> same subset.
    assert not np.array_equal(kept, data.select_indices(labels, ids, counts, seed=4))
    assert np.array_equal(kept, data.select_indices(labels, ids, counts, seed=3))
    # bytes ids hash like str ids.
    kept_b = data.select_indices(labels, [s.encode() for s in ids], counts, seed=3)
    assert np.array_equal(kept, kept_b)
    # Zero is a valid count: the class is absent from the subset.
    kept0 = data.select_indices(labels, ids, [3, 0, 1, 0], seed=3)
    assert np.bincount(labels[kept0], minlength=4).tolist() == [3, 0, 1, 0]


def test_select_indices_not_enough_examples():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="class 1 has only 2 examples but 3"):
        data.select_indices(labels, list("abcde"), [1, 3], seed=0)
    with pytest.raises(ValueError, match="ids"):
        data.select_indices(labels, list("abc"), [1, 1], seed=0)


@pytest.mark.parametrize("counts", [[-1, 1], [2, -3], [1.5, 1], [np.nan, 1], ["a", 1]])
def test_select_indices_refuses_negative_or_fractional_counts(counts):
    # Regression (issue 9 item 15): counts=[-1, 1] used to keep n - 1 examples of class 0.
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="counts: must be non-negative"):
        data.select_indices(labels, list("abcde"), counts, seed=0)


# ---------------------------------------------------------------------------------------
# epoch_plan
# ---------------------------------------------------------------------------------------


def test_epoch_plan_is_a_pure_function():
    a = data.epoch_plan(seed=1, epoch=2, num_train=103, global_batch_size=10)
    b = data.epoch_plan(seed=1, epoch=2, num_train=103, global_batch_size=10)
    c = data.epoch_plan(seed=1, epoch=3, num_train=103, global_batch_size=10)
    for f in ("positions", "oy", "ox", "flip"):
        assert getattr(a, f).shape == (10, 10) and getattr(a, f).dtype == np.int64
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert len(set(a.positions.ravel().tolist())) == 100 and a.positions.max() < 103
    assert not np.array_equal(a.positions, c.positions)
    assert set(a.oy.ravel().tolist()) <= set(range(2 * data.PAD + 1))
    assert set(a.flip.ravel().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="epoch"):
        data.epoch_plan(seed=1, epoch=-1, num_train=10, global_batch_size=2)


# ---------------------------------------------------------------------------------------
# Sources: parsing, caching, npz, tfds
# ---------------------------------------------------------------------------------------


def test_parse_source_and_name():
    assert data.parse_source("tfds:svhn_cropped") == ("tfds", "svhn_cropped")
    assert data.parse_source("tfds", "cifar10") == ("tfds", "cifar10")
    assert data.parse_source("npz:/x/y.npz") == ("npz", "/x/y.npz")
    assert data.default_config().name is None
    with pytest.raises(ValueError, match="name: source 'tfds' needs a data set name"):
        data.parse_source("tfds", None)
    with pytest.raises(ValueError, match="source: unknown data source"):
        data.parse_source("mnist_folder")
    with pytest.raises(ValueError, match="needs a path"):
        data.parse_source("npz:")


def test_load_source_is_cached_and_shared():
    cfg = _cfg(source="digits", profile="exp", ratio=5.0, pipeline="device")
    raw = data.load_source(cfg)
    assert data.load_source(cfg) is raw
    assert not raw.train_images.flags.writeable  # the shared copy cannot be mutated
    d0 = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=64, raw=raw)
    cfg.subset_seed = 1
    d1 = data.build(cfg, seed=1, global_batch_size=32, eval_batch_size=64, raw=raw)
    np.testing.assert_array_equal(d0.info.class_counts, d1.info.class_counts)
    assert not np.array_equal(d0.train_split()[0], d1.train_split()[0])  # other survivors


def _write_npz(path, **over):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (60, 6, 5, 3), dtype=np.uint8),
        "train_labels": np.repeat(np.arange(3), 20),
        "test_images": rng.integers(0, 256, (9, 6, 5, 3), dtype=np.uint8),
        "test_labels": np.tile(np.arange(3), 3),
        "class_names": np.array(["cat", "dog", "eel"]),
        "train_ids": np.array([f"img{i}" for i in range(60)]),
    }
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


def test_npz_source(tmp_path):
    path = _write_npz(tmp_path / "mine.npz")
    cfg = _cfg(source=f"npz:{path}", profile="exp", ratio=4.0, augment=False)
    d = data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=4)
    assert d.info.name == "mine" and d.info.class_names == ("cat", "dog", "eel")
    assert d.info.image_shape == (6, 5, 3) and d.info.num_test == 9
    assert d.info.class_counts.tolist() == [20, 10, 5]
    x, _ = d.train_split()
    b = next(d.train_epoch(0))
    plan = d.epoch_plan(0)
    np.testing.assert_allclose(b["image"], d.normalize(x[plan.positions[0]]), atol=1e-6)
    # Without class_names / train_ids: K = 1 + the largest label, ids are positions.
    path2 = _write_npz(tmp_path / "bare.npz", class_names=None, train_ids=None)
    raw = data.load_npz(path2)
    assert raw.class_names == ("0", "1", "2") and raw.train_ids[:2] == ["train:0", "train:1"]
    # Grayscale [N, H, W] is read as C = 1.
    path3 = _write_npz(
        tmp_path / "gray.npz",
        train_images=np.zeros((60, 4, 4), np.uint8),
        test_images=np.zeros((9, 4, 4), np.uint8),
    )
    assert data.load_npz(path3).train_images.shape == (60, 4, 4, 1)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"train_images": np.zeros((60, 6, 5, 3), np.float32)}, "train_images must be uint8"),
        ({"train_images": np.zeros((60, 6), np.uint8)}, r"shape \[N, H, W, C\]"),
        ({"train_labels": np.zeros(59, np.int64)}, "59 entries but train_images 60"),
        ({"test_labels": np.zeros(9, np.float32)}, "1-D integer array"),
        ({"test_images": np.zeros((9, 6, 6, 3), np.uint8)}, r"train images are \(6, 5, 3\)"),
        ({"train_ids": np.array(["x"] * 60)}, "train_ids must be unique"),
        ({"train_ids": np.array(["x"])}, r"train_ids must have shape \[60\]"),
        ({"test_labels": None}, r"missing arrays \['test_labels'\]"),
        ({"test_labels": np.full(9, 3)}, r"test_labels: label values \[3\] .*\[0, 3\)"),
        ({"train_labels": np.repeat([0, 1, -1], 20)}, r"train_labels: label values \[-1\]"),
    ],
)
def test_npz_source_errors(tmp_path, over, match):
    path = _write_npz(tmp_path / "bad.npz", **over)
    cfg = _cfg(source=f"npz:{path}", n_max=5, ratio=1.0)
    with pytest.raises(ValueError, match=match):
        data.build(cfg, seed=0, global_batch_size=4, eval_batch_size=4)


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_npz(str(tmp_path / "nope.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read as a .npz"):
        data.load_npz(str(bad))


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_mock_pipeline(name, num_classes, tmp_path):
    tfds = _tfds()
    # mock_data draws labels uniformly at random; 20 examples per class on average.
    with tfds.testing.mock_data(num_examples=20 * num_classes, data_dir=str(tmp_path)):
        cfg = _cfg(
            source=f"tfds:{name}", data_dir=str(tmp_path), n_max=6, ratio=3.0, download="always"
        )  # mock_data makes download_and_prepare a no-op
        d = data.build(cfg, seed=0, global_batch_size=16, eval_batch_size=64)
    expected = data.class_counts("exp", num_classes, 6, 3.0)
    assert d.pipeline == "tf"
    assert d.info.name == name and d.info.num_classes == num_classes
    assert d.info.image_shape == (32, 32, 3)
    assert len(d.info.class_names) == num_classes
    np.testing.assert_array_equal(d.info.class_counts, expected)
    assert d.info.num_train == expected.sum()
    assert d.info.num_test == 20 * num_classes
    assert d.steps_per_epoch == expected.sum() // 16
    batches = list(d.train_epoch(0))
    assert len(batches) == d.steps_per_epoch
    labels = []
    for b in batches:
        assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (16,) and b["label"].dtype == np.int32
        labels.append(b["label"])
    labels = np.concatenate(labels)
    assert np.all(np.bincount(labels, minlength=num_classes) <= expected)
    ev = list(d.eval_batches())
    assert sum(int(b["mask"].sum()) for b in ev) == 20 * num_classes
    assert all(b["image"].shape == (64, 32, 32, 3) and b["mask"].dtype == bool for b in ev)


def test_tfds_mock_grayscale_computed_normalisation(tmp_path):
    tfds = _tfds()
    with tfds.testing.mock_data(num_examples=200, data_dir=str(tmp_path)):
        cfg = _cfg(
            source="tfds",
            name="fashion_mnist",
            data_dir=str(tmp_path),
            profile="step",
            n_max=8,
            ratio=4.0,
            download="always",
        )
        d = data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=50)
    assert d.info.image_shape == (28, 28, 1)
    assert d.info.class_counts.tolist() == [8] * 5 + [2] * 5
    # Normalised with the mean/std of the training subset itself: near zero mean, unit std.
    x = d.normalize(d.train_split()[0])
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3
    b = next(d.train_epoch(0))
    assert b["image"].shape == (8, 28, 28, 1)


def test_tfds_not_prepared_fails_fast(tmp_path, monkeypatch):
    # data.download="never": no local copy is an error at once; the download is never started.
    tfds = _tfds()

    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare was called")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    cfg = _cfg(source="tfds:mnist", data_dir=str(tmp_path / "tfds"), download="never")
    with pytest.raises(
        RuntimeError, match=r"name: cannot load the tfds data set 'mnist'.*not prepared there"
    ):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)


def test_tfds_unknown_name_and_bad_download():
    _tfds()
    with pytest.raises(RuntimeError, match="name: cannot load the tfds data set 'no_such_xyz'"):
        data.build(
            _cfg(source="tfds", name="no_such_xyz"), seed=0, global_batch_size=8, eval_batch_size=8
        )
    with pytest.raises(ValueError, match="name: source 'tfds' needs a data set name"):
        data.build(_cfg(source="tfds"), seed=0, global_batch_size=8, eval_batch_size=8)
    with pytest.raises(ValueError, match="download: expected"):
        data.load_tfds("mnist", download="sometimes")


# ---------------------------------------------------------------------------------------
# cifar10_jpeg: a small archive made here, and the offline CIFAR-10 copy
# ---------------------------------------------------------------------------------------


def test_small_jpeg_archive(tmp_path, capsys):
    arch = make_jpeg_archive(tmp_path / "small.tar.gz")
    cache = tmp_path / "cache"
    raw = data.load_cifar10_jpeg(arch, str(cache))
    said = capsys.readouterr().err  # where the copy went and its size, once
    assert f"decoded once into {cache}" in said and " MB; " in said, said
    assert raw.train_images.shape == (12, 8, 8, 3) and raw.train_images.dtype == np.uint8
    assert raw.class_names == ("a", "b", "c") and raw.train_ids[0] == "train/a/0000.jpg"
    assert np.bincount(raw.test_labels).tolist() == [2, 2, 2]
    (root,) = os.listdir(cache)
    assert os.listdir(cache / root) == ["arrays_pillow.npz"]  # decoded from the tar, no temporaries
    again = data.load_cifar10_jpeg(arch, str(cache))  # from the .npz
    np.testing.assert_array_equal(raw.train_images, again.train_images)
    assert capsys.readouterr().err == ""


def test_build_missing_or_corrupt_archive(tmp_path):
    cfg = _cfg(source=f"cifar10_jpeg:{tmp_path / 'nope.tar.gz'}", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08not really a tarball" * 10)
    cfg.source = f"cifar10_jpeg:{bad}"
    with pytest.raises(ValueError, match="corrupt"):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)
    # Nothing half-written is left behind.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["bad.tar.gz"]


@pytest.fixture(scope="module")
def jpeg_cache(cifar10_jpeg_archive, cifar10_jpeg_cache):
    # (archive, cache_dir, raw): extracted and decoded once per session (conftest.py); this
    # reads the cached arrays. Skipped where the archive is missing.
    raw = data.load_cifar10_jpeg(cifar10_jpeg_archive, cifar10_jpeg_cache)
    return cifar10_jpeg_archive, cifar10_jpeg_cache, raw


@pytest.fixture(scope="module")
def jpeg_data(jpeg_cache):
    _tf()
    archive, cache, raw = jpeg_cache
    cfg = _cfg(source=f"cifar10_jpeg:{archive}", cache_dir=cache, profile="exp", ratio=100.0)
    return data.build(cfg, seed=0, global_batch_size=128, eval_batch_size=512, raw=raw)


def test_jpeg_raw_layout(jpeg_cache):
    _, cache, raw = jpeg_cache
    assert raw.train_images.shape == (50000, 32, 32, 3) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(raw.train_labels).tolist() == [5000] * 10
    assert raw.class_names[:3] == ("airplane", "automobile", "bird")
    assert raw.train_ids[0] == "train/airplane/0000.jpg"
    # Cache: the npz alone, no temporary leftovers.
    (root,) = [p for p in os.listdir(cache)]
    assert os.listdir(os.path.join(cache, root)) == ["arrays_pillow.npz"]


def test_jpeg_pillow_decode_matches_tf_accurate_dct(jpeg_cache):
    # Pillow decodes like tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE"), exactly.
    tf = _tf()
    archive, _, raw = jpeg_cache
    wanted = {raw.train_ids[i]: i for i in (0, 4999, 25000, 49999)}
    with tarfile.open(archive) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar if m.name in wanted}
    assert blobs.keys() == wanted.keys()
    for rel, i in wanted.items():
        blob = blobs[rel]
        ref = tf.io.decode_jpeg(blob, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        np.testing.assert_array_equal(raw.train_images[i], ref)


def test_jpeg_exp100_counts_and_test_split(jpeg_data):
    info = jpeg_data.info
    assert info.name == "cifar10_jpeg"
    assert info.class_counts.tolist() == CIFAR10_EXP100
    assert info.num_train == 12406 and info.num_test == 10000
    assert np.bincount(jpeg_data.train_split()[1], minlength=10).tolist() == CIFAR10_EXP100
    assert np.bincount(jpeg_data.test_split()[1], minlength=10).tolist() == [1000] * 10
    assert jpeg_data.steps_per_epoch == 12406 // 128


def test_jpeg_subset_seed(jpeg_cache):
    *_, raw = jpeg_cache
    counts = data.class_counts("exp", 10, 5000, 100)
    a = data.select_indices(raw.train_labels, raw.train_ids, counts, seed=0)
    b = data.select_indices(raw.train_labels, raw.train_ids, counts, seed=0)
    c = data.select_indices(raw.train_labels, raw.train_ids, counts, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(raw.train_labels[c], minlength=10).tolist() == CIFAR10_EXP100
    # Order independence: shuffled input order keeps the same file ids.
    perm = np.random.default_rng(1).permutation(len(raw.train_labels))
    ids_p = [raw.train_ids[p] for p in perm]
    d = data.select_indices(raw.train_labels[perm], ids_p, counts, seed=0)
    assert sorted(raw.train_ids[i] for i in a) == sorted(ids_p[i] for i in d)


def test_jpeg_train_batches_augmentation(jpeg_data):
    it = jpeg_data.train_epoch(0)
    b0 = next(it)
    assert b0["image"].shape == (128, 32, 32, 3) and b0["image"].dtype == np.float32
    assert b0["label"].dtype == np.int32
    # Normalised with the CIFAR-10 constants: range of (0 - mean)/std .. (1 - mean)/std.
    lo = (0 - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
    hi = (1 - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
    x = b0["image"]
    assert np.all(x >= lo - 1e-4) and np.all(x <= hi + 1e-4)
    # Padding shows up as black (value lo) borders in some cropped images.
    assert np.any(np.all(np.isclose(x[:, :, 0, 0], lo[0], atol=1e-4), axis=1))
    # The batch is exactly: zero-pad 4, crop 32x32 at the planned offsets, maybe flip.
    plan = jpeg_data.epoch_plan(0)
    pos, oy, ox, flip = plan.positions[0], plan.oy[0], plan.ox[0], plan.flip[0]
    train_x, train_y = jpeg_data.train_split()
    np.testing.assert_array_equal(b0["label"], train_y[pos])
    assert set(plan.oy.ravel()) <= set(range(9)) and len(set(plan.oy.ravel().tolist())) == 9
    assert 0 < flip.mean() < 1
    for i in range(128):
        padded = np.pad(train_x[pos[i]], [(4, 4), (4, 4), (0, 0)])
        ref = padded[oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        ref = ref[:, ::-1] if flip[i] else ref
        np.testing.assert_allclose(x[i], jpeg_data.normalize(ref), atol=1e-5)
    plain = jpeg_data.normalize(train_x[pos])
    assert not np.allclose(plain, x)  # augmentation did something


def test_jpeg_eval_covers_test_once(jpeg_data):
    batches = list(jpeg_data.eval_batches())
    assert len(batches) == -(-10000 // 512) == jpeg_data.num_eval_batches()
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert mask.sum() == 10000 and mask[:10000].all() and not mask[10000:].any()
    assert np.bincount(labels[mask], minlength=10).tolist() == [1000] * 10
    assert np.all(images[~mask] == 0)
    assert all(b["image"].shape == (512, 32, 32, 3) for b in batches)


def test_jpeg_epochs_reproducible(jpeg_cache):
    archive, cache, raw = jpeg_cache
    _tf()
    cfg = _cfg(source=f"cifar10_jpeg:{archive}", cache_dir=cache, profile="exp", ratio=100.0)
    d1 = data.build(cfg, seed=5, global_batch_size=256, eval_batch_size=512, raw=raw)
    d2 = data.build(cfg, seed=5, global_batch_size=256, eval_batch_size=512, raw=raw)
    a = list(d1.train_epoch(3))
    b = list(d1.train_epoch(3)) + list(d2.train_epoch(3))
    assert len(b) == 2 * len(a) == 2 * d1.steps_per_epoch
    for x, y in zip(a + a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = next(d1.train_epoch(4))
    assert not np.array_equal(a[0]["label"], c["label"])


# ---------------------------------------------------------------------------------------
# digits, the tf pipeline's bit-identity, multi-process sharding, errors
# ---------------------------------------------------------------------------------------


def _digest(batches, keys):
    h = hashlib.sha256()
    for b in batches:
        for k in keys:
            h.update(np.asarray(b[k]).tobytes())
    return h.hexdigest()


def test_tf_pipeline_bit_identical_to_before_the_package_split():
    # Digests recorded from cce_jax/data.py (commit ba0ca1a) before the move to the package.
    _tf()
    cfg = _cfg(source="digits", profile="exp", ratio=5.0, augment=True)
    d = data.build(cfg, seed=3, global_batch_size=64, eval_batch_size=64)
    assert _digest(d.train_epoch(2), ("image", "label")) == (
        "b8a6dab82dfb7309df50b2d13f4221eefb782c17d61e16952be630719bbf20d5"
    )
    assert _digest(d.eval_batches(), ("image", "label", "mask")) == (
        "328fa81a4f06404f1e08ac6882038ab6cbf0800dc02b93899cfe951bc5495ea5"
    )
    b = next(d.train_epoch(0))
    assert b["label"][:16].tolist() == [0, 3, 0, 2, 9, 9, 0, 1, 1, 7, 2, 1, 2, 5, 4, 0]
    assert float(b["image"].sum()) == 705.1875


def test_digits_source():
    _tf()
    cfg = _cfg(source="digits", profile="exp", ratio=10.0)
    d = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=100)
    info = d.info
    assert info.name == "digits" and info.image_shape == (8, 8, 1) and info.num_classes == 10
    n_max = 116  # smallest per-class count of the fixed 2/3 train split (class 8)
    np.testing.assert_array_equal(info.class_counts, data.class_counts("exp", 10, n_max, 10.0))
    train_x, train_y = d.train_split()
    assert np.bincount(train_y, minlength=10).tolist() == info.class_counts.tolist()
    assert info.num_test == 596  # 1797 - 1201 train
    b = list(d.train_epoch(0))
    assert len(b) == info.num_train // 32
    x = np.concatenate([t["image"] for t in b])
    assert x.shape[1:] == (8, 8, 1) and x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    # No augmentation by default: batches are the stored images / 16 exactly.
    pos = d.epoch_plan(0).positions.reshape(-1)
    np.testing.assert_allclose(x, train_x[pos] / 16.0, atol=1e-6)
    # Explicit counts override the profile.
    cfg.counts = (50, 40, 30, 20, 10, 10, 10, 10, 10, 5)
    d2 = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=100)
    assert d2.info.class_counts.tolist() == list(cfg.counts)
    # max_test: the first N test examples, stratified.
    cfg.max_test = 50
    d3 = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=16)
    assert d3.info.num_test == 50
    assert np.bincount(d3.test_split()[1], minlength=10).tolist() == [5] * 10


def test_train_epochs_reproducible_and_distinct():
    _tf()
    cfg = _cfg(source="digits", profile="none", augment=True)
    d = data.build(cfg, seed=1, global_batch_size=64, eval_batch_size=64)
    e0a, e0b, e1 = list(d.train_epoch(0)), list(d.train_epoch(0)), list(d.train_epoch(1))
    assert len(e0a) == len(e1) == d.steps_per_epoch
    for x, y in zip(e0a, e0b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(e0a[0]["image"], e1[0]["image"])
    other = data.build(cfg, seed=2, global_batch_size=64, eval_batch_size=64)
    assert not np.array_equal(e0a[0]["label"], next(other.train_epoch(0))["label"])


def test_two_processes(monkeypatch):
    _tf()
    cfg = _cfg(source="digits", profile="exp", ratio=5.0, augment=True)
    single = data.build(cfg, seed=3, global_batch_size=64, eval_batch_size=64)
    ref = list(single.train_epoch(2))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    shards, evals = [], []
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        d = data.build(cfg, seed=3, global_batch_size=64, eval_batch_size=64)
        assert d.steps_per_epoch == single.steps_per_epoch
        batches = list(d.train_epoch(2))
        assert len(batches) == d.steps_per_epoch
        assert all(b["image"].shape == (32, 8, 8, 1) for b in batches)
        shards.append(batches)
        evals.append(list(d.eval_batches()))
    # Disjoint shards whose union is the global batch stream of one process.
    for i, g in enumerate(ref):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][i][key], shards[1][i][key]]), g[key]
            )
    # Eval: equal batch counts, together the whole test split once.
    assert len(evals[0]) == len(evals[1]) == -(-single.info.num_test // 64)
    labels = np.concatenate([b["label"][b["mask"]] for e in evals for b in e])
    assert len(labels) == single.info.num_test
    np.testing.assert_array_equal(np.sort(labels), np.sort(single.test_split()[1]))
    assert not evals[1][-1]["mask"].any()  # 596 = 9*64 + 20: process 1's last batch is padding


def test_build_errors(monkeypatch):
    _tf()
    with pytest.raises(ValueError, match="source: unknown data source"):
        data.build(_cfg(source="mnist_folder"), seed=0, global_batch_size=8, eval_batch_size=8)
    with pytest.raises(ValueError, match="pipeline: expected one of"):
        data.build(
            _cfg(source="digits", pipeline="gpu"), seed=0, global_batch_size=8, eval_batch_size=8
        )
    with pytest.raises(ValueError, match="class 0 has only 119 examples but 500"):
        data.build(_cfg(source="digits", n_max=500), seed=0, global_batch_size=8, eval_batch_size=8)
    with pytest.raises(ValueError, match="ratio"):
        data.build(_cfg(source="digits", ratio=0.5), seed=0, global_batch_size=8, eval_batch_size=8)
    with pytest.raises(ValueError, match="profile: unknown profile"):
        data.build(
            _cfg(source="digits", profile="linear"), seed=0, global_batch_size=8, eval_batch_size=8
        )
    with pytest.raises(ValueError, match="profile: explicit counts have length 2"):
        data.build(
            _cfg(source="digits", counts=(3, 2)), seed=0, global_batch_size=8, eval_batch_size=8
        )
    with pytest.raises(ValueError, match="global_batch_size=4096 exceeds"):
        data.build(_cfg(source="digits"), seed=0, global_batch_size=4096, eval_batch_size=8)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        data.build(_cfg(source="digits"), seed=0, global_batch_size=8, eval_batch_size=9)


def test_pipeline_choice(monkeypatch):
    cfg = _cfg(source="digits", pipeline="auto")
    assert data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8).pipeline == "device"
    monkeypatch.setattr(_extras, "_importable", lambda module: module != "tensorflow")
    cfg.pipeline = "tf"  # without tensorflow
    with pytest.raises(ValueError, match="pipeline: 'tf' needs tensorflow"):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)
    cfg.pipeline = "fast"
    with pytest.raises(ValueError, match="pipeline: expected one of"):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)


def test_disk_full_while_writing_the_cache_is_reported_as_such(tmp_path, monkeypatch):
    import errno

    arch = make_jpeg_archive(tmp_path / "small.tar.gz")

    def full_disk(f, **arrays):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="No space left on device") as e:
        data.load_cifar10_jpeg(arch, str(cache))
    assert "data.cache_dir" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # nothing half-written left


def test_undecodable_member_is_named(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("train/a/0.jpg", "test/a/0.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match="cannot decode the images of train/"):
        data.load_cifar10_jpeg(str(archive), str(tmp_path / "cache"))


@pytest.mark.parametrize("pipeline", ["device", "tf"])
def test_constant_channel_stays_bounded_with_augmentation(tmp_path, pipeline):
    # An RGBA npz whose alpha channel is 255 everywhere: its std was floored at 1e-3, so the
    # zero padding of the crops became -255/255/1e-3 = -1000 and the model stayed at chance.
    if pipeline == "tf":
        _tf()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (60, 32, 32, 4), dtype=np.uint8)
    img[..., 3] = 255
    test = img[:9].copy()
    path = _write_npz(tmp_path / "rgba.npz", train_images=img, test_images=test)
    cfg = _cfg(source=f"npz:{path}", profile="none", pipeline=pipeline)
    d = data.build(cfg, seed=0, global_batch_size=20, eval_batch_size=9)
    assert d.augment  # 32x32: crops and flips by default
    xs = np.concatenate([np.asarray(b["image"]) for b in d.train_epoch(0)])
    assert np.all(np.abs(xs) <= 5.0), np.abs(xs).max()
    alpha = xs[..., 3]
    assert set(np.unique(alpha).round(6)) <= {0.0, -1.0}  # centred (padding: -mean = -1)


def test_augmentation_default_follows_the_image_size(tmp_path):
    small = _write_npz(tmp_path / "small.npz")  # 6x5 images
    cfg = _cfg(source=f"npz:{small}", profile="none")
    assert not data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=9).augment
    assert not data.build(
        _cfg(source="digits"), seed=0, global_batch_size=8, eval_batch_size=8
    ).augment
    cfg.augment = True  # asked for explicitly: on
    assert data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=9).augment


def test_one_class_and_a_class_without_training_images_are_refused(tmp_path):
    one = _write_npz(
        tmp_path / "one.npz",
        train_labels=np.zeros(60, np.int64),
        test_labels=np.zeros(9, np.int64),
        class_names=np.array(["only"]),
    )
    with pytest.raises(ValueError, match="1 class.*at least 2"):
        data.build(_cfg(source=f"npz:{one}"), seed=0, global_batch_size=8, eval_batch_size=9)
    labels = np.repeat(np.arange(3), 20)
    labels[labels == 1] = 0  # no "dog" in the training images
    gap = _write_npz(tmp_path / "gap.npz", train_labels=labels)
    with pytest.raises(ValueError, match=r"train_labels holds no image of class 1 \('dog'\)"):
        data.build(_cfg(source=f"npz:{gap}"), seed=0, global_batch_size=8, eval_batch_size=9)


# ---------------------------------------------------------------------------------------
# The user's own data, as it is
# ---------------------------------------------------------------------------------------


def _own_npz(path, counts=(400, 100, 20), **over):
    rng = np.random.default_rng(0)
    n = sum(counts)
    arrays = {
        "train_images": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
        "train_labels": np.repeat(np.arange(len(counts)), counts),
        "test_images": rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
        "test_labels": np.tile(np.arange(len(counts)), 2),
        **over,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_profile_none_keeps_every_image_and_a_cut_is_said(tmp_path, capsys):
    path = _own_npz(tmp_path / "own.npz")
    cfg = _cfg(source=f"npz:{path}", profile="none", pipeline="device")
    d = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=6)
    assert d.info.class_counts.tolist() == [400, 100, 20] and d.info.num_train == 520
    assert d.info.source == f"npz:{path}" and d.info.source_counts.tolist() == [400, 100, 20]
    assert capsys.readouterr().err == ""  # nothing cut, nothing said
    cfg.profile, cfg.ratio = "exp", 10.0  # n_max=None: the smallest class
    d = data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=6)
    assert d.info.class_counts.tolist() == [20, 6, 2]
    (line,) = capsys.readouterr().err.splitlines()
    assert "own: kept 28 of 520 training images, per class 20/400, 6/100, 2/20" in line
    assert "profile=exp, ratio=10.0, n_max=None" in line and "profile=none" in line
    cfg.counts = (300, 100, 20)
    data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=6)
    assert "per class 300/400, 100/100, 20/20 (counts=(300, 100, 20)" in capsys.readouterr().err


@pytest.mark.parametrize("names", [None, np.array(["a", "b", "c"])])
def test_labels_outside_the_classes_are_refused_naming_the_array(tmp_path, names):
    bad = np.repeat([0, 1, 2], [5, 5, 5])
    bad[3] = -2 if names is None else 7
    path = _own_npz(tmp_path / "bad.npz", (5, 5, 5), train_labels=bad, class_names=names)
    with pytest.raises(ValueError, match=r"train_labels: label values \[(-2|7)\] are not class"):
        data.load_npz(path)
    # A label only the test split has is refused too (K comes from class_names or train_labels).
    test = np.array([0, 1, 2, 3, 0, 1])
    path = _own_npz(tmp_path / "test.npz", (5, 5, 5), test_labels=test, class_names=names)
    with pytest.raises(ValueError, match=r"test_labels: label values \[3\]"):
        data.load_npz(path)


def _docs_block(title):
    text = (REPO / "docs" / "data.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_own_data_command_of_the_docs_runs(tmp_path):
    # The command of docs/data.md "Train on your own data", in tmp_path.
    script = _docs_block("Train on your own data")
    assert script.startswith("dir=$(mktemp -d)\n")
    script = f"dir={tmp_path}\n" + script.split("\n", 1)[1].replace("python ", f"{sys.executable} ")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(["bash", "-ec", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_train"] == 520, summary  # every image, 400 / 100 / 20
