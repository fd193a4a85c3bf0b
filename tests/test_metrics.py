import numpy as np
import pytest

from cce_jax import metrics


def test_confusion_matrix_with_mask():
    cm = metrics.confusion_matrix(
        [0, 1, 2, 2, 1], [0, 2, 2, 1, 0], 3, mask=[True, True, True, True, False]
    )
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 1, 1]])


def test_hand_computed():
    # true: 0 0 0 0 1 1 2 ; pred: 0 0 0 1 1 0 2
    y = [0, 0, 0, 0, 1, 1, 2]
    p = [0, 0, 0, 1, 1, 0, 2]
    m = metrics.classification_metrics(y, p, 3, class_counts=[150, 50, 5])
    assert m["top1"] == pytest.approx(5 / 7)
    # recalls 3/4, 1/2, 1
    assert m["per_class_accuracy"] == pytest.approx([0.75, 0.5, 1.0])
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # precisions 3/4, 1/2, 1 -> F1 = 2PR/(P+R): 0.75, 0.5, 1.0
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert m["many"] == pytest.approx(0.75)
    assert m["medium"] == pytest.approx(0.5)
    assert m["few"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["num_examples"] == 7 and m["test_class_counts"] == [4, 2, 1]


def test_f1_asymmetric():
    # class 0: tp 2, fn 0, fp 2 -> P 0.5, R 1, F1 2/3; class 1: tp 0, fn 2 -> F1 0
    m = metrics.classification_metrics([0, 0, 1, 1], [0, 0, 0, 0], 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_empty_groups_and_absent_classes_are_none():
    # class 2 has no test example; no class has > 100 training images.
    m = metrics.classification_metrics([0, 1], [0, 0], 3, class_counts=[50, 30, 10])
    assert m["many"] is None
    assert m["medium"] == pytest.approx(0.5)
    assert m["few"] is None  # class 2 is few-shot but absent from the test set
    assert m["per_class_accuracy"][2] is None
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # class 2: never true, never predicted -> skipped in macro F1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    import json

    json.dumps(m)  # no NaN, plain Python types


def test_shot_group_thresholds():
    many, medium, few = metrics.shot_groups([101, 100, 20, 19])
    assert many.tolist() == [True, False, False, False]
    assert medium.tolist() == [False, True, True, False]
    assert few.tolist() == [False, False, False, True]


def test_bad_inputs():
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError):
        metrics.from_confusion(np.zeros((2, 3)))
    empty = metrics.from_confusion(np.zeros((2, 2)))
    assert empty["top1"] is None and empty["balanced_accuracy"] is None
