"""Tests of cce_jax.data: imbalance profiles, subset selection and the input pipelines."""

import os
import pathlib
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
jax = pytest.importorskip("jax")

from cce_jax import data  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCHIVE_CANDIDATES = [
    REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
    pathlib.Path("/work/shared/data/cifar10-jpeg.tar.gz"),
]
ARCHIVE = next((p for p in ARCHIVE_CANDIDATES if p.is_file()), None)
needs_archive = pytest.mark.skipif(
    ARCHIVE is None,
    reason="offline CIFAR-10 archive not found at ../shared/data/cifar10-jpeg.tar.gz",
)

CIFAR10_EXP100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _cfg(**kw):
    cfg = data.default_config()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


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


def test_select_indices_not_enough_examples():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="class 1 has only 2 examples but 3"):
        data.select_indices(labels, list("abcde"), [1, 3], seed=0)
    with pytest.raises(ValueError, match="ids"):
        data.select_indices(labels, list("abc"), [1, 1], seed=0)


# ---------------------------------------------------------------------------------------
# tfds mock data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_mock_pipeline(name, num_classes, tmp_path):
    # mock_data draws labels uniformly at random; 20 examples per class on average.
    with tfds.testing.mock_data(num_examples=20 * num_classes, data_dir=str(tmp_path)):
        cfg = _cfg(source="tfds", name=name, data_dir=str(tmp_path), n_max=6, ratio=3.0)
        d = data.build(cfg, seed=0, global_batch_size=16, eval_batch_size=64)
    expected = data.class_counts("exp", num_classes, 6, 3.0)
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


# ---------------------------------------------------------------------------------------
# The offline CIFAR-10 JPEG copy
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_cache(tmp_path_factory):
    if ARCHIVE is None:
        pytest.skip("offline CIFAR-10 archive not found at ../shared/data/cifar10-jpeg.tar.gz")
    cache = tmp_path_factory.mktemp("cce_cache")
    t0 = time.perf_counter()
    raw = data._load_cifar10_jpeg(str(ARCHIVE), str(cache))
    print(f"\nextract + decode of 60k JPEGs: {time.perf_counter() - t0:.1f}s")
    return str(cache), raw


@pytest.fixture(scope="module")
def jpeg_data(jpeg_cache):
    cache, _ = jpeg_cache
    cfg = _cfg(source=f"cifar10_jpeg:{ARCHIVE}", cache_dir=cache, profile="exp", ratio=100.0)
    return data.build(cfg, seed=0, global_batch_size=128, eval_batch_size=512)


@needs_archive
def test_jpeg_raw_layout(jpeg_cache):
    cache, raw = jpeg_cache
    assert raw.train_images.shape == (50000, 32, 32, 3) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(raw.train_labels).tolist() == [5000] * 10
    assert raw.class_names[:3] == ("airplane", "automobile", "bird")
    assert raw.train_ids[0] == "train/airplane/0000.jpg"
    # Cache: extracted folder and npz exist, no temporary leftovers.
    (root,) = [p for p in os.listdir(cache)]
    entries = sorted(os.listdir(os.path.join(cache, root)))
    assert entries == ["arrays.npz", "extracted"]


@needs_archive
def test_jpeg_exp100_counts_and_test_split(jpeg_data):
    info = jpeg_data.info
    assert info.name == "cifar10_jpeg"
    assert info.class_counts.tolist() == CIFAR10_EXP100
    assert info.num_train == 12406 and info.num_test == 10000
    assert np.bincount(jpeg_data._train_y, minlength=10).tolist() == CIFAR10_EXP100
    assert np.bincount(jpeg_data._test_y, minlength=10).tolist() == [1000] * 10
    assert jpeg_data.steps_per_epoch == 12406 // 128


@needs_archive
def test_jpeg_subset_seed(jpeg_cache):
    _, raw = jpeg_cache
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


@needs_archive
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
    pos, oy, ox, flip = jpeg_data._epoch_plan(0)
    np.testing.assert_array_equal(b0["label"], jpeg_data._train_y[pos[:128]])
    assert set(oy[:128]) <= set(range(9)) and len(set(oy.tolist())) == 9
    assert 0 < flip.mean() < 1
    for i in range(128):
        padded = np.pad(jpeg_data._train_x[pos[i]], [(4, 4), (4, 4), (0, 0)])
        ref = padded[oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        ref = ref[:, ::-1] if flip[i] else ref
        np.testing.assert_allclose(x[i], ref * jpeg_data._a + jpeg_data._b, atol=1e-5)
    plain = jpeg_data._train_x[pos[:128]].astype(np.float32) * jpeg_data._a + jpeg_data._b
    assert not np.allclose(plain, x)  # augmentation did something


@needs_archive
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


@needs_archive
def test_jpeg_epochs_reproducible(jpeg_cache):
    cache, _ = jpeg_cache
    cfg = _cfg(source=f"cifar10_jpeg:{ARCHIVE}", cache_dir=cache, profile="exp", ratio=100.0)
    d1 = data.build(cfg, seed=5, global_batch_size=256, eval_batch_size=512)
    d2 = data.build(cfg, seed=5, global_batch_size=256, eval_batch_size=512)
    a = list(d1.train_epoch(3))
    b = list(d1.train_epoch(3)) + list(d2.train_epoch(3))
    assert len(b) == 2 * len(a) == 2 * d1.steps_per_epoch
    b = b[:len(a)] + b[len(a):]
    for x, y in zip(a + a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = next(d1.train_epoch(4))
    assert not np.array_equal(a[0]["label"], c["label"])


def test_build_missing_or_corrupt_archive(tmp_path):
    cfg = _cfg(source=f"cifar10_jpeg:{tmp_path / 'nope.tar.gz'}", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08not really a tarball" * 10)
    cfg.source = f"cifar10_jpeg:{bad}"
    with pytest.raises(ValueError, match="corrupt"):
        data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=8)
    # No half-extracted cache is left behind.
    for root, dirs, files in os.walk(tmp_path):
        assert "extracted" not in dirs and not any(d.startswith(".extract") for d in dirs)


# ---------------------------------------------------------------------------------------
# digits, reproducibility and multi-process sharding
# ---------------------------------------------------------------------------------------


def test_digits_source():
    cfg = _cfg(source="digits", profile="exp", ratio=10.0)
    d = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=100)
    info = d.info
    assert info.name == "digits" and info.image_shape == (8, 8, 1) and info.num_classes == 10
    n_max = 116  # smallest per-class count of the fixed 2/3 train split (class 8)
    np.testing.assert_array_equal(info.class_counts, data.class_counts("exp", 10, n_max, 10.0))
    assert np.bincount(d._train_y, minlength=10).tolist() == info.class_counts.tolist()
    assert info.num_test == 596  # 1797 - 1201 train
    b = list(d.train_epoch(0))
    assert len(b) == info.num_train // 32
    x = np.concatenate([t["image"] for t in b])
    assert x.shape[1:] == (8, 8, 1) and x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    # No augmentation by default: batches are the stored images / 16 exactly.
    pos = d._epoch_positions(0)
    np.testing.assert_allclose(x, d._train_x[pos] / 16.0, atol=1e-6)
    # Explicit counts override the profile.
    cfg.counts = (50, 40, 30, 20, 10, 10, 10, 10, 10, 5)
    d2 = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=100)
    assert d2.info.class_counts.tolist() == list(cfg.counts)
    # max_test: the first N test examples, stratified.
    cfg.max_test = 50
    d3 = data.build(cfg, seed=0, global_batch_size=32, eval_batch_size=16)
    assert d3.info.num_test == 50
    assert np.bincount(d3._test_y, minlength=10).tolist() == [5] * 10


def test_train_epochs_reproducible_and_distinct():
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
        shards.append((d._epoch_positions(2), batches))
        evals.append(list(d.eval_batches()))
    # Disjoint shards whose union is the global batch stream of one process.
    assert not set(shards[0][0]) & set(shards[1][0])
    for i, g in enumerate(ref):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][1][i][key], shards[1][1][i][key]]), g[key]
            )
    # Eval: equal batch counts, together the whole test split once.
    assert len(evals[0]) == len(evals[1]) == -(-single.info.num_test // 64)
    labels = np.concatenate([b["label"][b["mask"]] for e in evals for b in e])
    assert len(labels) == single.info.num_test
    np.testing.assert_array_equal(np.sort(labels), np.sort(single._test_y))
    assert not evals[1][-1]["mask"].any()  # 596 = 9*64 + 20: process 1's last batch is padding


def test_build_errors(monkeypatch):
    with pytest.raises(RuntimeError, match="name: cannot load the tfds data set 'no_such_xyz'"):
        data.build(_cfg(name="no_such_xyz"), seed=0, global_batch_size=8, eval_batch_size=8)
    with pytest.raises(ValueError, match="source: unknown data source"):
        data.build(_cfg(source="mnist_folder"), seed=0, global_batch_size=8, eval_batch_size=8)
    with pytest.raises(ValueError, match="class 0 has only 119 examples but 500"):
        data.build(_cfg(source="digits", n_max=500), seed=0, global_batch_size=8,
                   eval_batch_size=8)
    with pytest.raises(ValueError, match="ratio"):
        data.build(_cfg(source="digits", ratio=0.5), seed=0, global_batch_size=8,
                   eval_batch_size=8)
    with pytest.raises(ValueError, match="profile: unknown profile"):
        data.build(_cfg(source="digits", profile="linear"), seed=0, global_batch_size=8,
                   eval_batch_size=8)
    with pytest.raises(ValueError, match="profile: explicit counts have length 2"):
        data.build(_cfg(source="digits", counts=(3, 2)), seed=0, global_batch_size=8,
                   eval_batch_size=8)
    with pytest.raises(ValueError, match="global_batch_size=4096 exceeds"):
        data.build(_cfg(source="digits"), seed=0, global_batch_size=4096, eval_batch_size=8)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        data.build(_cfg(source="digits"), seed=0, global_batch_size=8, eval_batch_size=9)


def test_tfds_mock_grayscale_computed_normalisation(tmp_path):
    with tfds.testing.mock_data(num_examples=200, data_dir=str(tmp_path)):
        cfg = _cfg(source="tfds", name="fashion_mnist", data_dir=str(tmp_path), profile="step",
                   n_max=8, ratio=4.0)
        d = data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=50)
    assert d.info.image_shape == (28, 28, 1)
    assert d.info.class_counts.tolist() == [8] * 5 + [2] * 5
    # Normalised with the mean/std of the training subset itself: near zero mean, unit std.
    x = d._train_x.astype(np.float32) * d._a + d._b
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3
    b = next(d.train_epoch(0))
    assert b["image"].shape == (8, 28, 28, 1)


def test_bad_labels_are_rejected(monkeypatch):
    raw = data._load_digits()
    raw.test_labels = raw.test_labels.copy()
    raw.test_labels[3] = 10
    monkeypatch.setattr(data, "_load_digits", lambda: raw)
    with pytest.raises(ValueError, match=r"test labels.*\[0, 10\)"):
        data.build(_cfg(source="digits"), seed=0, global_batch_size=8, eval_batch_size=8)
