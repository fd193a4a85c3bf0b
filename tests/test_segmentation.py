"""Semantic segmentation: metrics, the FCN model, the data sources and the generator."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cce_jax import data, metrics
from experiments import make_segmentation_data as seg

# Shapes and values, not speed: XLA:CPU without LLVM's optimisations compiles several times
# faster (see tests/test_models.py).
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# ----------------------------------------------------------------------------------------
# Metrics: numpy references written from the definitions, pixel by pixel
# ----------------------------------------------------------------------------------------


def _reference_confusion(labels, predictions, k, mask=None):
    labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    keep = np.ones(labels.size, bool) if mask is None else np.asarray(mask).ravel()
    c = np.zeros((k, k), np.int64)
    for y, p, m in zip(labels.tolist(), predictions.tolist(), keep.tolist()):
        if m and 0 <= y < k and 0 <= p < k:
            c[y, p] += 1
    return c


def _reference_metrics(labels, predictions, k):
    """From the pixel lists, without a confusion matrix."""
    y, p = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    keep = (y >= 0) & (y < k) & (p >= 0) & (p < k)
    y, p = y[keep], p[keep]
    iou, acc = [], []
    for c in range(k):
        inter = np.sum((y == c) & (p == c))
        union = np.sum((y == c) | (p == c))
        iou.append(inter / union if union else None)
        acc.append(inter / np.sum(y == c) if np.sum(y == c) else None)
    defined = [v for v in iou if v is not None]
    fw = sum(np.mean(y == c) * iou[c] for c in range(k) if np.any(y == c))
    return {
        "per_class_iou": iou,
        "miou": np.mean(defined),
        "pixel_accuracy": np.mean(y == p),
        "mean_class_accuracy": np.mean([a for a in acc if a is not None]),
        "fw_iou": fw,
    }


def _approx_list(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None), (a, b)
        if x is not None:
            assert x == pytest.approx(y)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32])
def test_confusion_update_matches_reference(dtype):
    rng = np.random.default_rng(0)
    k = 5
    labels = rng.integers(0, k, (3, 7, 9)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 255  # ignore index
    labels[0, 0, :3] = k  # out of range: ignored too
    preds = rng.integers(0, k, labels.shape).astype(np.int32)
    preds[1, 1, 1] = -1  # a prediction outside [0, K) never counts
    mask = rng.random(labels.shape) < 0.8
    conf = jnp.zeros((k, k), dtype)
    update = jax.jit(metrics.confusion_update)
    out = update(conf, labels, preds, mask)
    assert out.dtype == dtype and out.shape == (k, k)
    np.testing.assert_array_equal(out, _reference_confusion(labels, preds, k, mask))
    # accumulates batch after batch, without a mask
    out2 = update(out, labels, preds, None)
    expected = _reference_confusion(labels, preds, k, mask) + _reference_confusion(labels, preds, k)
    np.testing.assert_array_equal(out2, expected)


def test_confusion_update_image_mask_and_errors():
    labels = np.array([[[0, 1], [1, 1]], [[2, 2], [0, 0]]])
    preds = np.array([[[0, 1], [0, 1]], [[2, 2], [2, 2]]])
    out = metrics.confusion_update(jnp.zeros((3, 3), jnp.int32), labels, preds, [True, False])
    np.testing.assert_array_equal(out, [[1, 0, 0], [1, 2, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="prefix"):
        metrics.confusion_update(jnp.zeros((3, 3), jnp.int32), labels, preds, [True])
    with pytest.raises(ValueError, match="integer"):
        metrics.confusion_update(jnp.zeros((3, 3), jnp.float32), labels, preds)
    with pytest.raises(ValueError, match="differ"):
        metrics.confusion_update(jnp.zeros((3, 3), jnp.int32), labels, preds[:1])


def test_confusion_update_equals_host_confusion_matrix():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, (2, 5, 6))
    p = rng.integers(0, 4, (2, 5, 6))
    m = rng.random(y.shape) < 0.5
    out = metrics.confusion_update(jnp.zeros((4, 4), jnp.int32), y, p, m)
    np.testing.assert_array_equal(out, metrics.confusion_matrix(y, p, 4, mask=m))


def test_segmentation_metrics_match_definitions():
    rng = np.random.default_rng(2)
    k = 6
    y = rng.integers(0, k - 1, (4, 8, 8))  # class 5 never true...
    p = rng.integers(0, k - 2, (4, 8, 8))  # ...nor predicted: absent
    y[0, 0, 0] = 4
    p[0, 0, :4] = 3
    y[1] = 255
    ref = _reference_metrics(y, p, k)
    conf = metrics.confusion_update(jnp.zeros((k, k), jnp.int32), y, p)
    m = metrics.segmentation_metrics(np.asarray(conf))
    _approx_list(m["per_class_iou"], ref["per_class_iou"])
    assert m["per_class_iou"][5] is None and m["per_class_accuracy"][5] is None
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou"):
        assert m[key] == pytest.approx(ref[key]), key
    assert m["num_pixels"] == int(np.sum(y != 255))
    assert "many_miou" not in m


def test_segmentation_metrics_hand_computed_and_groups():
    # true 0: 6 pixels (4 right, 1 -> 1, 1 -> 3); true 1: 3 pixels (1 right, 2 -> 0);
    # true 2: 1 pixel, right; class 3: absent from the truth, predicted once.
    c = np.array([[4, 1, 0, 1], [2, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    m = metrics.segmentation_metrics(c, pixel_counts=[1000, 50, 10, 400])
    # IoU0 = 4 / (6 + 6 - 4); IoU1 = 1 / (3 + 2 - 1); IoU2 = 1; IoU3 = 0 / (0 + 1 - 0)
    iou = [4 / 8, 1 / 4, 1.0, 0.0]
    _approx_list(m["per_class_iou"], iou)
    assert m["miou"] == pytest.approx(np.mean(iou))
    assert m["pixel_accuracy"] == pytest.approx(6 / 10)
    assert m["mean_class_accuracy"] == pytest.approx((4 / 6 + 1 / 3 + 1) / 3)
    assert m["per_class_accuracy"][3] is None
    assert m["fw_iou"] == pytest.approx(6 / 10 * 0.5 + 3 / 10 * 0.25 + 1 / 10 * 1.0)
    # K = 4: one "many" (class 0), one "few" (class 2), medium = classes 3 and 1
    assert m["groups"] == {"many": [0], "medium": [1, 3], "few": [2]}
    assert m["many_miou"] == pytest.approx(0.5)
    assert m["medium_miou"] == pytest.approx((0.25 + 0.0) / 2)
    assert m["few_miou"] == pytest.approx(1.0)


def test_segmentation_metrics_none_never_nan():
    m = metrics.segmentation_metrics(np.zeros((3, 3), np.int64), pixel_counts=[5, 5, 5])
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou", "many_miou"):
        assert m[key] is None, key
    assert m["per_class_iou"] == [None, None, None]
    # a group whose classes are all absent is None, the others are numbers
    c = np.diag([5, 5, 0])
    m = metrics.segmentation_metrics(c, pixel_counts=[100, 10, 1])
    assert m["few_miou"] is None and m["many_miou"] == 1.0 and m["miou"] == 1.0
    with pytest.raises(ValueError, match="square"):
        metrics.segmentation_metrics(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="pixel_counts"):
        metrics.segmentation_metrics(np.zeros((3, 3), np.int64), pixel_counts=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.segmentation_metrics(np.array([[1.5, 0], [0, 1]]))


@pytest.mark.parametrize(
    "k,sizes", [(1, (0, 1, 0)), (2, (0, 2, 0)), (3, (1, 1, 1)), (10, (3, 4, 3)), (19, (6, 7, 6))]
)
def test_pixel_frequency_groups_terciles(k, sizes):
    counts = np.random.default_rng(k).permutation(np.arange(1, k + 1) * 10)
    many, medium, few = metrics.pixel_frequency_groups(counts)
    assert (many.sum(), medium.sum(), few.sum()) == sizes
    assert not np.any(many & few) and np.all(many | medium | few)
    if many.any() and few.any():
        assert counts[many].min() > counts[medium].max() >= counts[medium].min() > counts[few].max()


# ----------------------------------------------------------------------------------------
# The FCN
# ----------------------------------------------------------------------------------------


def test_fcn8_param_count():
    from cce_jax import models

    m = models.get_model("fcn8", num_classes=10)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    # stem 3*3*3*16 + 32; blocks 16-16: 2*9*16*16 + 64; 16-32: 9*16*32 + 9*32*32 + 128;
    # 32-64: 9*32*64 + 9*64*64 + 256; up2 (64+32 -> 32): 9*96*32 + 64; up1 (32+16 -> 16):
    # 9*48*16 + 32; head 16*10 + 10
    assert models.param_count(v["params"]) == 109466
    # the parameters do not depend on the image size
    v2 = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 13, 7, 3))))
    assert jax.tree.map(lambda a: a.shape, v2) == jax.tree.map(lambda a: a.shape, v)
    assert models.model_task("fcn8") == "segmentation"
    assert models.model_task("resnet8") == "classification"
    assert "fcn8" in models.MODEL_NAMES and "fcn20" in models.SEGMENTATION_MODEL_NAMES
    assert models.check_model_config("fcn8", dtype="bfloat16", width=8) == jnp.bfloat16
    with pytest.raises(ValueError, match="width"):
        models.get_model("fcn8", num_classes=3, width=0)
    with pytest.raises(ValueError, match="unknown model"):
        models.model_task("fcn9")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 9, 7, 1)])
def test_fcn_output_shape_jit_and_batch_stats(shape):
    from cce_jax import models

    m = models.get_model("fcn8", num_classes=5, width=4, conv_impl="xla")
    x = jax.random.normal(jax.random.key(1), shape)
    v = fast_jit(m.init)(jax.random.key(0), x)
    out, upd = fast_jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert out.shape == shape[:3] + (5,) and out.dtype == jnp.float32
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], upd["batch_stats"])
    assert all(jax.tree.leaves(changed))
    ev = fast_jit(m.apply)(v, x)
    assert ev.shape == shape[:3] + (5,) and bool(jnp.all(jnp.isfinite(ev)))
    # a dense prediction: the logits vary over the pixels
    assert float(jnp.std(ev, axis=(1, 2)).min()) > 0


def test_fcn_options_and_gradient():
    from cce_jax import models

    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    m16 = models.get_model("fcn8", num_classes=3, width=4, dtype="bfloat16", conv_impl="xla")
    v16 = jax.eval_shape(m16.init, jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v16["params"]))
    assert jax.eval_shape(m16.apply, v16, x).dtype == jnp.float32
    m = models.get_model("fcn8", num_classes=3, width=4, cosine_head=True, conv_impl="xla")
    v = fast_jit(m.init)(jax.random.key(0), x)
    out = fast_jit(m.apply)(v, x)
    assert out.shape == (2, 6, 6, 3)
    assert float(jnp.abs(out).max()) <= 1.0 + 1e-6  # cosine logits
    # every parameter gets a gradient through the decoder and its skips
    m = models.get_model("fcn8", num_classes=3, width=4, conv_impl="xla")
    v = fast_jit(m.init)(jax.random.key(0), x)

    def loss(params):
        out, _ = m.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(out[..., 0] ** 2)

    grads = fast_jit(jax.grad(loss))(v["params"])
    norms = {k: float(sum(jnp.sum(g**2) for g in jax.tree.leaves(t))) for k, t in grads.items()}
    assert all(n > 0 for n in norms.values()), norms


# ----------------------------------------------------------------------------------------
# Sources: the folder layout and the npz format, on small files written here
# ----------------------------------------------------------------------------------------


def _tiny_set(n=3, m=2, h=5, w=7, c=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, k, (n + m, h, w)).astype(np.uint8)
    masks[rng.random(masks.shape) < 0.2] = 255
    images = rng.integers(0, 256, (n + m, h, w, c), dtype=np.uint8)
    names = tuple(f"class {i}" for i in range(k))
    ids = tuple(f"img{i:02d}" for i in range(n))
    return data.Dataset("tiny", images[:n], masks[:n], ids, images[n:], masks[n:], names)


def _assert_same(a, b):
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)
    assert tuple(a.train_ids) == tuple(b.train_ids)
    assert tuple(a.class_names) == tuple(b.class_names)


def _load(source):
    cfg = data.default_config()
    cfg.source = source
    return data.load_source(cfg)


@pytest.mark.parametrize("channels", [3, 1])
def test_folder_round_trip(tmp_path, channels):
    ds = _tiny_set(c=channels)
    seg.write_seg_folder(ds, str(tmp_path / "set"))
    assert sorted(p.name for p in (tmp_path / "set" / "train" / "labels").iterdir()) == [
        "img00.png",
        "img01.png",
        "img02.png",
    ]
    back = data.load_seg_folder(str(tmp_path / "set"))
    _assert_same(ds, back)
    assert back.name == "set" and len(back.class_names) == 4
    _assert_same(ds, _load(f"seg_folder:{tmp_path / 'set'}"))
    with pytest.raises(ValueError, match="not empty"):
        seg.write_seg_folder(ds, str(tmp_path / "set"))


def test_folder_reads_jpeg_images_and_palette_labels(tmp_path):
    from PIL import Image

    ds = _tiny_set()
    root = tmp_path / "set"
    seg.write_seg_folder(ds, str(root))
    # a JPEG image (lossy: only the shape is kept exactly) and a palette label map
    img = root / "train" / "images" / "img01.png"
    Image.open(img).convert("RGB").save(root / "train" / "images" / "img01.jpg", quality=95)
    img.unlink()
    lab = root / "train" / "labels" / "img02.png"
    p = Image.fromarray(ds.train_labels[2], mode="L").convert("P")
    p.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    p.save(lab)
    back = data.load_seg_folder(str(root))
    assert back.train_images.shape == ds.train_images.shape
    np.testing.assert_array_equal(back.train_labels, ds.train_labels)


def _break(root, what):
    from PIL import Image

    lab = root / "train" / "labels" / "img01.png"
    if what == "missing label":
        lab.unlink()
        return "img01.png", "label map train/labels/img01.png is missing"
    if what == "label without image":
        (root / "train" / "images" / "img01.png").unlink()
        return "img01.png", "no image"
    if what == "size":
        Image.fromarray(np.zeros((5, 6), np.uint8)).save(lab)
        return "img01.png", "6x5"
    if what == "value":
        Image.fromarray(np.full((5, 7), 4, np.uint8)).save(lab)
        return "img01.png", "label values [4]"
    if what == "rgb label":
        Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(lab)
        return "img01.png", "mode RGB"
    if what == "jpeg label":
        Image.fromarray(np.zeros((5, 7), np.uint8)).save(lab, format="JPEG")
        return "img01.png", "must be a PNG"
    if what == "image size":
        Image.fromarray(np.zeros((6, 7), np.uint8)).save(root / "test" / "labels" / "00001.png")
        Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(root / "test" / "images" / "00001.png")
        return "00001.png", "differs"
    if what == "classes":
        (root / "classes.txt").unlink()
        return "classes.txt", "missing"
    if what == "unreadable":
        lab.write_bytes(b"not a png")
        return "img01.png", "cannot be read"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    [
        "missing label",
        "label without image",
        "size",
        "value",
        "rgb label",
        "jpeg label",
        "image size",
        "classes",
        "unreadable",
    ],
)
def test_folder_errors_name_the_file(tmp_path, what):
    root = tmp_path / "set"
    seg.write_seg_folder(_tiny_set(), str(root))
    data.load_seg_folder(str(root))  # fine before
    filename, message = _break(root, what)
    with pytest.raises(ValueError) as err:
        data.load_seg_folder(str(root))
    assert filename in str(err.value) and message in str(err.value), str(err.value)


def test_npz_round_trip_and_errors(tmp_path):
    ds = _tiny_set()
    path = str(tmp_path / "set.npz")
    seg.save_seg_npz(ds, path)
    back = data.load_npz(path, "masks")
    _assert_same(ds, back)
    assert back.name == "set"
    _assert_same(ds, _load(f"seg_npz:{path}"))
    # the minimal file: np.savez, [N, H, W] grayscale images, default names and ids
    arrays = dict(
        train_images=ds.train_images[..., 0],
        train_masks=ds.train_labels,
        test_images=ds.test_images[..., 0],
        test_masks=ds.test_labels,
    )
    np.savez(tmp_path / "min.npz", **arrays)
    m = data.load_npz(str(tmp_path / "min.npz"), "masks")
    assert m.train_images.shape == (3, 5, 7, 1)
    assert m.class_names == tuple(
        str(i) for i in range(int(ds.train_labels[ds.train_labels < 255].max()) + 1)
    )
    assert tuple(m.train_ids) == ("train:0", "train:1", "train:2")
    cases = [
        ({k: v for k, v in arrays.items() if k != "test_masks"}, "missing arrays"),
        (
            {**arrays, "train_masks": ds.train_labels.astype(np.int32)},
            "train_masks has shape .*label maps must be uint8",
        ),
        ({**arrays, "test_masks": ds.test_labels[:, :4]}, "test_masks has shape"),
        ({**arrays, "class_names": np.array(["a", "b"])}, "label values"),
        ({**arrays, "train_ids": np.array(["a", "a", "b"])}, "unique"),
    ]
    for i, (bad, message) in enumerate(cases):
        p = tmp_path / f"bad{i}.npz"
        np.savez(p, **bad)
        with pytest.raises(ValueError, match=message) as err:
            data.load_npz(str(p), "masks")
        assert str(p) in str(err.value)
    with pytest.raises(FileNotFoundError):
        data.load_npz(str(tmp_path / "none.npz"), "masks")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz: cannot be read"):
        data.load_npz(str(tmp_path / "junk.npz"), "masks")
    np.savez(tmp_path / "obj.npz", **{**arrays, "class_names": np.array([{}], object)})
    with pytest.raises(ValueError, match="obj.npz: cannot read its arrays"):
        data.load_npz(str(tmp_path / "obj.npz"), "masks")


def test_training_pixel_counts():
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 6, (4, 9, 9)).astype(np.uint8)
    masks[masks == 5] = 255
    counts = seg.pixel_counts(masks, 5)
    assert counts.dtype == np.int64
    assert counts.tolist() == [int(np.sum(masks == c)) for c in range(5)]


# ----------------------------------------------------------------------------------------
# The CIFAR-10 generator
# ----------------------------------------------------------------------------------------


class _FakeCifar:
    """10 classes of 32x32 images whose red channel is the class index (for checks)."""

    def __init__(self, n_per_class=6, seed=0):
        rng = np.random.default_rng(seed)
        k = 10
        self.class_names = tuple(f"c{i}" for i in range(k))
        for split in ("train", "test"):
            labels = np.repeat(np.arange(k), n_per_class)
            images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
            images[..., 0] = labels[:, None, None] * 20
            setattr(self, f"{split}_images", images)
            setattr(self, f"{split}_labels", labels)


def _tree_digest(root):
    import hashlib

    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_generator_is_deterministic_byte_for_byte(tmp_path):
    cifar = _FakeCifar()
    kw = dict(num_train=40, num_test=20, size=16, ratio=20.0)
    seg.write_cifar_segmentation(cifar, str(tmp_path / "a"), seed=1, **kw)
    seg.write_cifar_segmentation(cifar, str(tmp_path / "b"), seed=1, **kw)
    seg.write_cifar_segmentation(cifar, str(tmp_path / "c"), seed=2, **kw)
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert len(a) == 2 * (40 + 20) + 4  # images + labels, classes.txt, npz, stats.json/.md
    assert a == b
    assert a.keys() == c.keys() and a["cifar10_seg.npz"] != c["cifar10_seg.npz"]
    # what was written is what the folder and the npz sources read
    ds = seg.make_cifar_segmentation(cifar, seed=1, **kw)
    _assert_same(ds, data.load_seg_folder(str(tmp_path / "a")))
    _assert_same(ds, data.load_npz(str(tmp_path / "a" / "cifar10_seg.npz"), "masks"))
    # the test split is fixed: it depends on test_seed only
    other = seg.make_cifar_segmentation(cifar, seed=3, **{**kw, "num_train": 7})
    np.testing.assert_array_equal(other.test_labels, ds.test_labels)
    np.testing.assert_array_equal(other.test_images, ds.test_images)
    assert not np.array_equal(other.train_labels, ds.train_labels[:7])
    third = seg.make_cifar_segmentation(cifar, seed=1, test_seed=1, **kw)
    np.testing.assert_array_equal(third.train_labels, ds.train_labels)
    assert not np.array_equal(third.test_labels, ds.test_labels)
    with pytest.raises(ValueError, match="exists"):
        seg.write_cifar_segmentation(cifar, str(tmp_path / "a"), seed=1, **kw)


def test_ensure_reuses_the_same_set_and_refuses_another(tmp_path):
    calls = []

    def cifar():
        calls.append(1)
        return _FakeCifar()

    out = tmp_path / "set"
    kw = dict(num_train=10, num_test=20, size=12, ratio=5)
    stats = seg.ensure_cifar_segmentation(str(out), cifar=cifar, **kw)
    assert calls == [1] and stats["settings"]["ratio"] == 5.0
    assert stats["settings"]["cells"] == [2, 6] and stats["formats"] == ["folder", "npz"]
    before = _tree_digest(out)
    mtime = os.path.getmtime(out / "stats.json")
    again = seg.ensure_cifar_segmentation(str(out), cifar=cifar, **{**kw, "ratio": 5.0})
    assert calls == [1] and again == stats and _tree_digest(out) == before
    assert os.path.getmtime(out / "stats.json") == mtime
    assert (
        stats["train_pixels"]
        == seg.pixel_counts(data.load_seg_folder(str(out)).train_labels, 10).tolist()
    )
    with pytest.raises(ValueError, match=r"other settings \(ratio, seed\)"):
        seg.ensure_cifar_segmentation(str(out), cifar=cifar, **{**kw, "ratio": 6, "seed": 1})
    with pytest.raises(ValueError, match="formats"):
        seg.ensure_cifar_segmentation(str(out), cifar=cifar, formats=("npz",), **kw)
    with pytest.raises(ValueError, match="unknown settings"):
        seg.ensure_cifar_segmentation(str(out), cifar=cifar, colour="red")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="no stats.json"):
        seg.ensure_cifar_segmentation(str(tmp_path / "other"), cifar=cifar, **kw)


def test_generator_regions_boundaries_and_fill():
    cifar = _FakeCifar()
    ds = seg.make_cifar_segmentation(cifar, num_train=60, num_test=30, size=20, ratio=10.0)
    for x, m in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        lab = m != 255
        # every labelled pixel shows an image of its own class (red channel = 20 * class)
        np.testing.assert_array_equal(x[..., 0][lab], m[lab].astype(np.int64) * 20)
        # two 8-adjacent labelled pixels never differ in class: boundaries are ignore
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=255)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nb = p[:, 1 + dy : 1 + dy + 20, 1 + dx : 1 + dx + 20]
                both = lab & (nb != 255)
                assert np.all(m[both] == nb[both]), (dy, dx)
        assert 0.02 < 1 - lab.mean() < 0.5  # boundaries exist, and are thin
    # the boundary rule itself: 1 px on both sides of a region edge, 8-neighbourhood
    regions = np.zeros((1, 5, 6), np.int64)
    regions[0, :, 3:] = 1
    regions[0, 4, :] = 2
    expected = np.array(
        [
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(seg._boundaries(regions)[0], expected)


def test_generator_settings_are_checked():
    cifar = _FakeCifar()
    for bad, message in [
        (dict(cells=(3, 2)), "cells"),
        (dict(ratio=0.5), "ratio"),
        (dict(size=2), "size"),
        (dict(num_test=0), "positive"),
        (dict(num_test=1, cells=(1, 1)), "test split has no labelled pixel"),
    ]:
        with pytest.raises(ValueError, match=message):
            seg.make_cifar_segmentation(cifar, num_train=5, **{"num_test": 5, **bad})


def test_default_cifar_set_is_long_tailed_and_documented(
    tmp_path, cifar10_jpeg_archive, cifar10_jpeg_cache
):
    """The CLI with the default settings on the real CIFAR-10 copy: >= 100:1 between the
    most and least frequent training class, every class in the test set, the counts that
    docs/data.md lists, and the folder source reads back the npz's arrays."""
    import json
    import re

    from experiments import make_segmentation_data

    out = tmp_path / "seg"
    argv = [
        f"--out={out}",
        f"--archive={cifar10_jpeg_archive}",
        f"--cache_dir={cifar10_jpeg_cache}",
    ]
    assert make_segmentation_data.main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    train, test = np.array(stats["train_pixels"]), np.array(stats["test_pixels"])
    assert train.max() / train.min() >= 100
    assert np.all(test > 0) and test.max() / test.min() < 1.1
    ds = data.load_seg_folder(str(out))
    _assert_same(ds, data.load_npz(str(out / "cifar10_seg.npz"), "masks"))
    assert seg.pixel_counts(ds.train_labels, 10).tolist() == train.tolist()
    assert ds.train_images.shape == (2000, 32, 32, 3) and ds.test_images.shape == (500, 32, 32, 3)
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "data.md")).read()
    section = doc[doc.index("## Segmentation data") :]
    rows = re.findall(r"^\| (\d+) \| (\w+) \| ([\d,]+) \| ([\d,]+) \|$", section, re.M)
    assert [int(r[2].replace(",", "")) for r in rows] == train.tolist()
    assert [int(r[3].replace(",", "")) for r in rows] == test.tolist()
    assert [r[1] for r in rows] == list(ds.class_names)


# ----------------------------------------------------------------------------------------
# Every registry loss per pixel, with the ignore index and a mask, from pixel counts
# ----------------------------------------------------------------------------------------


def test_every_loss_per_pixel_with_ignore_and_pixel_counts():
    from cce_jax import losses

    k = 5
    rng = np.random.default_rng(5)
    # long-tailed training masks: class c with probability ∝ 10**-c, some pixels ignored
    p = 10.0 ** -np.arange(k)
    train_masks = rng.choice(k, (20, 8, 8), p=p / p.sum()).astype(np.uint8)
    train_masks[:, :, 0] = 255
    train_masks[0, 0, 1:k] = np.arange(1, k)  # every class at least once
    counts = seg.pixel_counts(train_masks, k)
    assert counts[0] > 100 * counts[-1] > 0
    labels = rng.integers(0, k, (2, 5, 6)).astype(np.uint8)
    labels[:, 0, :] = 255  # ignored rows
    where = rng.random(labels.shape) < 0.8
    logits = jnp.asarray(rng.normal(size=labels.shape + (k,)), jnp.float32)
    counted = (labels != 255) & where
    for name in losses.NAMES:
        fn = losses.get(name, class_counts=counts)

        def per_pixel_and_grad(z, fn=fn):
            def total(z):
                out = fn(z, jnp.asarray(labels), where=jnp.asarray(where))
                return jnp.sum(out), out

            return jax.grad(total, has_aux=True)(z)

        grad, per_pixel = fast_jit(per_pixel_and_grad)(logits)
        grad = np.asarray(grad)
        assert per_pixel.shape == labels.shape and per_pixel.dtype == jnp.float32, name
        assert bool(jnp.all(jnp.isfinite(per_pixel))), name
        np.testing.assert_array_equal(np.asarray(per_pixel)[~counted], 0.0, err_msg=name)
        # the same as the flat [N, K] computation of the counted pixels
        flat = fn(logits[counted], jnp.asarray(labels[counted].astype(np.int32)))
        np.testing.assert_allclose(per_pixel[counted], flat, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(grad[~counted], 0.0, err_msg=name)
        assert np.abs(grad[counted]).sum() > 0, name


def test_cli_refuses_bad_arguments_before_loading(tmp_path, capsys):
    from experiments import make_segmentation_data

    missing = str(tmp_path / "no-archive.tar.gz")
    argv = [f"--out={tmp_path / 'x'}", f"--archive={missing}"]
    assert make_segmentation_data.main([*argv, "--cells=3"]) == 2
    assert "--cells" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no-archive"):
        make_segmentation_data.main(argv)
    assert not (tmp_path / "x").exists()
