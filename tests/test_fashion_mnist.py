"""The ``fashion_mnist:DIR`` source (IDX files) and its experiment config."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from cce_jax import data
from cce_jax.data import sources

OFFLINE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
ROOT = Path(__file__).resolve().parents[1]


def _idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written here from the format's definition."""
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, np.uint8).tobytes()


def _write(folder: Path, n_train=40, n_test=20, gz=True, h=28, w=28, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w), np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx(a)))
        else:
            (folder / stem).write_bytes(_idx(a))
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_the_four_idx_files(tmp_path, gz):
    arrays = _write(tmp_path, gz=gz)
    raw = sources.load_fashion_mnist(str(tmp_path))
    assert raw.name == "fashion_mnist" and raw.scale == 255.0
    assert raw.train_images.shape == (40, 28, 28, 1) and raw.train_images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train_images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.test_images[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.train_labels, np.arange(40) % 10)
    assert raw.train_labels.dtype == np.int64
    assert list(raw.train_ids[:2]) == ["train:0", "train:1"]  # as the tfds source names them
    assert raw.class_names[0] == "T-shirt/top" and raw.class_names[9] == "Ankle boot"
    assert sources.parse_source(f"fashion_mnist:{tmp_path}") == ("fashion_mnist", str(tmp_path))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[: len(b) // 2], "not a readable gzip"),  # truncated download
        (lambda b: gzip.compress(b"\x08\x03" + gzip.decompress(b)[2:]), "not an IDX file"),
        (
            lambda b: gzip.compress(gzip.decompress(b)[:2] + b"\x0d" + gzip.decompress(b)[3:]),
            "element type 0x0d",
        ),
        (lambda b: gzip.compress(gzip.decompress(b)[:-5]), "truncated or damaged"),
    ],
)
def test_damaged_files_are_named(tmp_path, damage, message):
    _write(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(ValueError, match=message) as e:
        sources.load_fashion_mnist(str(tmp_path))
    assert "train-images-idx3-ubyte" in str(e.value)


def test_missing_folder_file_and_mismatch(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        sources.load_fashion_mnist(str(tmp_path / "nope"))
    _write(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="no t10k-labels-idx1-ubyte"):
        sources.load_fashion_mnist(str(tmp_path))
    _write(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx(np.zeros(39, np.uint8)))
    )
    with pytest.raises(ValueError, match="train_labels has 39 entries but train_images 40"):
        sources.load_fashion_mnist(str(tmp_path))


def test_build_long_tailed_split(tmp_path):
    _write(tmp_path, n_train=200, n_test=30)
    cfg = data.default_config()
    cfg.source, cfg.profile, cfg.ratio, cfg.n_max = f"fashion_mnist:{tmp_path}", "exp", 10.0, 20
    cfg.pipeline = "device"
    d = data.build(cfg, seed=0, global_batch_size=8, eval_batch_size=16)
    np.testing.assert_array_equal(d.info.class_counts, data.class_counts("exp", 10, 20, 10.0))
    assert d.info.image_shape == (28, 28, 1) and d.info.num_test == 30
    b = next(iter(d.train_epoch(0)))
    assert b["image"].shape == (8, 28, 28, 1)


def test_offline_copy():
    if not (OFFLINE / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"offline Fashion-MNIST not found at {OFFLINE}")
    raw = sources.load_fashion_mnist(str(OFFLINE))
    assert raw.train_images.shape == (60000, 28, 28, 1)
    assert raw.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(raw.train_labels).tolist() == [6000] * 10
    assert np.bincount(raw.test_labels).tolist() == [1000] * 10
    counts = data.class_counts("exp", 10, 6000, 100.0)
    assert counts[0] == 6000 and counts[-1] == 60
    assert int(data.class_counts("exp", 10, 6000, 10.0).sum()) == 24516
    assert int(counts.sum()) == 14886


def test_config_and_suite():
    from experiments import reproduce
    from experiments.configs import fashion_mnist_lt

    c = fashion_mnist_lt.get_config()
    assert c.data.source.startswith("fashion_mnist:") and c.data.n_max == 6000
    assert c.data.augment is True
    config_file, _, _ = reproduce.SUITES["fashion_mnist_lt"]
    assert (ROOT / config_file).is_file()
    runs = fashion_mnist_lt.sweep()
    assert {r["ratio"] for r in runs} == {100.0, 10.0} and len({r["seed"] for r in runs}) >= 3
    assert {r["loss"] for r in runs} == {
        "ce",
        "cce_paper",
        "cce_code",
        "mse_ol",
        "ldam_drw",
        "la",
        "bs",
    }
