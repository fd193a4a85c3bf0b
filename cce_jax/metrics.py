"""Classification and segmentation metrics (numpy; the on-device accumulator in jax.numpy).

Everything is derived from the confusion matrix ``C`` (rows: true class, columns: predicted
class), accumulated batch by batch (on device: :func:`confusion_update`, pixels in place of
examples for segmentation) and turned into metrics once on the host. A value that is not
defined (a group without a class, a class absent from the test set) is ``None``, never NaN.
"""

from typing import Any

import numpy as np

__all__ = [
    "POSTHOC_TAUS",
    "classification_metrics",
    "confusion_matrix",
    "confusion_update",
    "from_confusion",
    "pixel_frequency_groups",
    "posthoc",
    "segmentation_metrics",
    "shot_groups",
]


def confusion_matrix(labels, predictions, num_classes: int, mask=None) -> np.ndarray:
    """Counts ``C[i, j]`` = number of examples of true class i predicted as j (int64).

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(predictions, np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    if mask is not None:
        keep = np.asarray(mask, bool).reshape(-1)
        labels, predictions = labels[keep], predictions[keep]
    k = int(num_classes)
    if np.any((labels < 0) | (labels >= k) | (predictions < 0) | (predictions >= k)):
        raise ValueError(f"labels/predictions outside [0, {k})")
    return np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)


def shot_groups(class_counts, *, many_threshold: int = 100, few_threshold: int = 20):
    """Boolean masks (many, medium, few) over the classes from their training counts.

    The long-tail literature's groups (Liu et al. 2019, OLTR): "many" = more than 100
    training images, "medium" = 20 to 100, "few" = fewer than 20.
    """
    n = np.asarray(class_counts, np.int64)
    many, few = n > many_threshold, n < few_threshold
    return many, ~(many | few), few


def _ratio(numerator, denominator) -> np.ndarray:
    """``numerator / denominator`` per class, NaN where the denominator is 0."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def _mean(values, sel=True) -> float | None:
    """The mean of the non-NaN ``values[sel]``; ``None`` when there is none (never NaN)."""
    kept = values[sel & ~np.isnan(values)]
    return float(kept.mean()) if kept.size else None


def _listed(values) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


def _square(cm: np.ndarray) -> np.ndarray:
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    return cm


def _groups(counts, name: str, k: int, grouping) -> dict:
    """``{"many": mask, "medium": mask, "few": mask}``: ``grouping`` of the ``[k]`` counts."""
    counts = np.asarray(counts)
    if counts.shape != (k,):
        raise ValueError(f"{name} has shape {counts.shape}, expected ({k},)")
    return dict(zip(("many", "medium", "few"), grouping(counts)))


def from_confusion(cm, class_counts=None) -> dict[str, Any]:
    """All metrics from a confusion matrix (and the train class counts for the shot groups).

    Keys: ``top1``, ``balanced_accuracy`` (mean per-class recall over classes present in the
    test set), ``per_class_accuracy`` (list; ``None`` for a class absent from the test set),
    ``macro_f1`` (mean over classes of per-class F1; a class with no true and no predicted
    example is skipped), ``many``/``medium``/``few`` (mean per-class accuracy in each shot
    group, ``None`` if empty; only with ``class_counts``), ``num_examples``,
    ``test_class_counts``, ``confusion_matrix`` (nested lists).
    """
    cm = _square(np.asarray(cm, np.int64))
    support = cm.sum(axis=1)
    tp = np.diag(cm).astype(np.float64)
    total = int(cm.sum())
    recall = _ratio(tp, support)
    out: dict[str, Any] = {
        "top1": float(tp.sum() / total) if total else None,
        "balanced_accuracy": _mean(recall),
        "per_class_accuracy": _listed(recall),
        "macro_f1": _mean(_ratio(2 * tp, support + cm.sum(axis=0))),
        "num_examples": total,
        "test_class_counts": support.tolist(),
        "confusion_matrix": cm.tolist(),
    }
    if class_counts is not None:
        for name, group in _groups(class_counts, "class_counts", len(cm), shot_groups).items():
            out[name] = _mean(recall, group)
    return out


def classification_metrics(
    labels, predictions, num_classes: int, *, mask=None, class_counts=None
) -> dict[str, Any]:
    """:func:`from_confusion` of :func:`confusion_matrix`.

    >>> m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 2], 3)
    >>> m["top1"], m["balanced_accuracy"]
    (0.75, 0.8333333333333334)
    """
    return from_confusion(confusion_matrix(labels, predictions, num_classes, mask), class_counts)


def confusion_update(conf, labels, predictions, mask=None):
    """Adds the pixels (or examples) of one batch to a confusion matrix, on device (jittable).

    ``conf[i, j] += #{pixels with true class i predicted as j that count}``, with
    ``K = conf.shape[0]``: a pixel counts when its ``mask`` entry is True and its label and
    prediction are in ``[0, K)``; the rest (an ignore index such as 255, padding) adds nothing.

    Args:
      conf: integer ``[K, K]``, its dtype kept. An int32 cell holds at most ``2**31 - 1``
        pixels (about 1,000 images of 1024x2048); for more use int64 (``jax_enable_x64``), or
        add the matrix to an int64 one on the host every few batches and restart from zeros.
      labels: integer, any shape (e.g. ``[B, H, W]``).
      predictions: integer, the shape of ``labels`` (e.g. ``argmax(logits, -1)``).
      mask: bool, the shape of ``labels`` or a prefix of it (``[B]``: whole images, e.g. an
        evaluation batch's padding), or None (all count).

    >>> import jax.numpy as jnp
    >>> c = confusion_update(jnp.zeros((2, 2), jnp.int32), jnp.array([[0, 1], [1, 255]]),
    ...                      jnp.array([[0, 0], [1, 1]]))
    >>> c.tolist()
    [[1, 0], [1, 1]]
    """
    import jax.numpy as jnp

    conf, labels, predictions = jnp.asarray(conf), jnp.asarray(labels), jnp.asarray(predictions)
    k = len(_square(conf))
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    for what, a in (("conf", conf), ("labels", labels), ("predictions", predictions)):
        if not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{what} must be integers, got {a.dtype}")
    # int32 is enough for K * K indices; compare in int32 so uint8 labels (255) stay 255.
    y, p = labels.astype(jnp.int32), predictions.astype(jnp.int32)
    valid = (y >= 0) & (y < k) & (p >= 0) & (p < k)
    if mask is not None:
        m = jnp.asarray(mask, bool)
        if m.shape != labels.shape[: m.ndim]:
            raise ValueError(
                f"mask {m.shape} must have the shape of labels {labels.shape} or a prefix of it"
            )
        valid = valid & m.reshape(m.shape + (1,) * (labels.ndim - m.ndim))
    index = jnp.where(valid, y * k + p, 0).reshape(-1)
    counts = jnp.zeros(k * k, conf.dtype).at[index].add(valid.reshape(-1).astype(conf.dtype))
    return conf + counts.reshape(k, k)


def pixel_frequency_groups(pixel_counts):
    """Boolean masks (many, medium, few) over K classes by their training pixel counts.

    The classes sorted by count, most first (ties: the lower index first): the first
    ``K // 3`` are "many", the last ``K // 3`` "few", the rest "medium" (K = 10: 3 / 4 / 3,
    K = 11: 3 / 5 / 3, K = 19: 6 / 7 / 6; K < 3: all "medium").

    >>> [g.tolist() for g in pixel_frequency_groups([10, 500, 3, 90])]
    [[False, True, False, False], [True, False, False, True], [False, False, True, False]]
    """
    n = np.asarray(pixel_counts)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"pixel_counts must be a non-empty 1-D array, got shape {n.shape}")
    # Each class's position by count (descending; a stable sort keeps ties in index order).
    rank = np.argsort(np.argsort(-n.astype(np.float64), kind="stable"))
    many, few = rank < n.size // 3, rank >= n.size - n.size // 3
    return many, ~(many | few), few


def segmentation_metrics(confusion, pixel_counts=None) -> dict[str, Any]:
    """Segmentation metrics from a pixel confusion matrix ``C`` (rows true, columns predicted).

    With ``TP_k = C[k, k]``, ``T_k = sum_j C[k, j]`` (true pixels of class k),
    ``P_k = sum_i C[i, k]`` (pixels predicted k) and ``N = sum C``:

    * ``per_class_iou``: ``IoU_k = TP_k / (T_k + P_k - TP_k)``, ``None`` where
      ``T_k + P_k = 0``; ``miou``: the mean of the defined ``IoU_k``;
    * ``pixel_accuracy``: ``sum_k TP_k / N``; ``per_class_accuracy``: ``TP_k / T_k`` (``None``
      where ``T_k = 0``); ``mean_class_accuracy``: the mean of the defined ones;
    * ``fw_iou`` (frequency-weighted IoU): ``sum_k (T_k / N) IoU_k`` over ``T_k > 0``;
    * with ``pixel_counts`` (the TRAINING set's pixels per class): ``groups``, the class
      indices of each group of :func:`pixel_frequency_groups`, and ``many_miou``,
      ``medium_miou``, ``few_miou``, the mean defined IoU of each group;
    * ``num_pixels`` (N), ``test_pixel_counts`` (``T_k``), ``confusion_matrix``.

    >>> m = segmentation_metrics([[3, 1], [0, 4]])
    >>> m["per_class_iou"], m["miou"], m["pixel_accuracy"]
    ([0.75, 0.8], 0.775, 0.875)
    """
    cm = _square(np.asarray(confusion))
    if cm.size and (not np.issubdtype(cm.dtype, np.integer) or cm.min() < 0):
        raise ValueError("confusion matrix must hold non-negative integer counts")
    accuracy = from_confusion(cm)
    cm = cm.astype(np.int64)
    truth, total = cm.sum(axis=1), int(cm.sum())
    iou = _ratio(np.diag(cm).astype(np.float64), truth + cm.sum(axis=0) - np.diag(cm))
    present = truth > 0
    out: dict[str, Any] = {
        "miou": _mean(iou),
        "per_class_iou": _listed(iou),
        "pixel_accuracy": accuracy["top1"],
        "mean_class_accuracy": accuracy["balanced_accuracy"],
        "per_class_accuracy": accuracy["per_class_accuracy"],
        "fw_iou": float((truth[present] / total * iou[present]).sum()) if total else None,
        "num_pixels": total,
        "test_pixel_counts": truth.tolist(),
        "confusion_matrix": cm.tolist(),
    }
    if pixel_counts is not None:
        groups = _groups(pixel_counts, "pixel_counts", len(cm), pixel_frequency_groups)
        out["groups"] = {name: np.flatnonzero(group).tolist() for name, group in groups.items()}
        out.update({f"{name}_miou": _mean(iou, group) for name, group in groups.items()})
    return out


# Post-hoc logit adjustment (Menon et al. 2021): argmax of logits - tau * log(prior).
POSTHOC_TAUS = (0.0, 0.5, 1.0, 1.5, 2.0)


def posthoc(cms, class_counts, task: str = "") -> dict[str, Any]:
    """The metrics of ``cms[0]`` and ``posthoc_logit_adjustment``: per tau of
    :data:`POSTHOC_TAUS`, ``top1``, ``balanced_accuracy`` (segmentation: and ``miou``) of
    ``cms[t]``, the confusion matrix of ``argmax(logits - tau * log(prior))``. A segmentation
    (pixel) matrix's metrics add the classification names of its numbers (``top1`` = pixel
    accuracy, ...; docs/training.md)."""

    def of(cm):
        if task != "segmentation":
            return from_confusion(cm, class_counts)
        out = segmentation_metrics(cm, class_counts)
        out.update(
            top1=out["pixel_accuracy"],
            balanced_accuracy=out["mean_class_accuracy"],
            macro_f1=from_confusion(cm)["macro_f1"],
            test_class_counts=out["test_pixel_counts"],
            num_examples=out["num_pixels"],
        )
        return dict(out, **{g: out[f"{g}_miou"] for g in ("many", "medium", "few")})

    per_tau = [of(cm) for cm in cms]
    keys = ("top1", "balanced_accuracy") + (("miou",) if task == "segmentation" else ())
    table = [{"tau": float(t), **{k: m[k] for k in keys}} for t, m in zip(POSTHOC_TAUS, per_tau)]
    return dict(per_tau[0], posthoc_logit_adjustment=table)
