"""Classification metrics for imbalanced test sets (numpy only).

Everything is derived from the confusion matrix ``C`` (rows: true class, columns:
predicted class), so it can be accumulated on device batch by batch and turned into
metrics once on the host.

Shot groups follow the long-tail literature (Liu et al. 2019, OLTR): "many" = classes with
more than 100 training images, "medium" = 20 to 100, "few" = fewer than 20. A group with
no class, or whose classes have no test example, is reported as ``None`` (never NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "from_confusion", "classification_metrics", "shot_groups"]


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
    if labels.size and (
        labels.min() < 0 or labels.max() >= k or predictions.min() < 0 or predictions.max() >= k
    ):
        raise ValueError(f"labels/predictions outside [0, {k})")
    c = np.zeros((k, k), np.int64)
    np.add.at(c, (labels, predictions), 1)
    return c


def shot_groups(class_counts, *, many_threshold: int = 100, few_threshold: int = 20):
    """Boolean masks (many, medium, few) over the classes from their training counts."""
    n = np.asarray(class_counts, np.int64)
    many = n > many_threshold
    few = n < few_threshold
    return many, ~(many | few), few


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def from_confusion(cm, class_counts=None) -> dict[str, Any]:
    """All metrics from a confusion matrix (and the train class counts for the shot groups).

    Keys: ``top1``, ``balanced_accuracy`` (mean per-class recall over classes present in the
    test set), ``per_class_accuracy`` (list; ``None`` for a class absent from the test set),
    ``macro_f1`` (mean over classes of per-class F1; a class with no true and no predicted
    example is skipped), ``many``/``medium``/``few`` (mean per-class accuracy in each shot
    group, ``None`` if empty; only with ``class_counts``), ``num_examples``,
    ``test_class_counts``, ``confusion_matrix`` (nested lists).
    """
    cm = np.asarray(cm, np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    total = int(cm.sum())
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), np.nan)
    denom = support + predicted
    f1_defined = denom > 0
    f1 = np.where(f1_defined, 2 * tp / np.maximum(denom, 1), np.nan)
    out: dict[str, Any] = {
        "top1": _none_if_nan(tp.sum() / total) if total else None,
        "balanced_accuracy": _none_if_nan(recall[present].mean()) if present.any() else None,
        "per_class_accuracy": [_none_if_nan(r) for r in recall],
        "macro_f1": _none_if_nan(f1[f1_defined].mean()) if f1_defined.any() else None,
        "num_examples": total,
        "test_class_counts": support.tolist(),
        "confusion_matrix": cm.tolist(),
    }
    if class_counts is not None:
        counts = np.asarray(class_counts)
        if counts.shape != (cm.shape[0],):
            raise ValueError(f"class_counts has shape {counts.shape}, expected ({cm.shape[0]},)")
        for name, group in zip(("many", "medium", "few"), shot_groups(counts)):
            sel = group & present
            out[name] = _none_if_nan(recall[sel].mean()) if sel.any() else None
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
