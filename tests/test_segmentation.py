"""Semantic segmentation: metrics, the FCN model, the data sources and the generator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cce_jax import metrics

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
