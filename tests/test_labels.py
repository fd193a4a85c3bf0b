"""Tests of cce_jax.labels."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from cce_jax import labels


def test_class_ranks_most_frequent_first_ties_by_index():
    counts = [50, 5000, 500, 500, 7]
    np.testing.assert_array_equal(labels.class_ranks(counts), [4, 1, 2, 3, 5])
    np.testing.assert_array_equal(
        labels.class_ranks(counts, order="frequent_largest"), [2, 5, 4, 3, 1]
    )
    # CIFAR-10-LT exp profile: class 0 is the head, class 9 the rarest.
    lt = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    np.testing.assert_array_equal(labels.class_ranks(lt), np.arange(1, 11))


def test_class_ranks_traced_counts():
    ranks = jax.jit(labels.class_ranks)(jnp.array([3.0, 9.0, 1.0]))
    np.testing.assert_array_equal(ranks, [2, 1, 3])


@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 4, 4)])
def test_outlying_labels_any_leading_shape(shape):
    counts = np.array([100, 10, 1000, 1])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=shape)
    t = np.asarray(labels.outlying_labels(y, counts, alpha=5.0))
    assert t.shape == shape + (4,)
    ranks = {0: 2, 1: 3, 2: 1, 3: 4}
    expected = np.zeros(shape + (4,))
    for idx in np.ndindex(*shape):
        expected[idx + (int(y[idx]),)] = 5.0 * ranks[int(y[idx])]
    np.testing.assert_array_equal(t, expected)


def test_outlying_labels_jit_vmap_and_out_of_range():
    counts = jnp.array([10, 20])
    y = jnp.array([[0, 1], [1, 7]])
    jitted = jax.jit(lambda yy: labels.outlying_labels(yy, counts, alpha=2.0))(y)
    mapped = jax.vmap(lambda yy: labels.outlying_labels(yy, counts, alpha=2.0))(y)
    np.testing.assert_array_equal(jitted, mapped)
    np.testing.assert_array_equal(jitted, [[[4, 0], [0, 2]], [[0, 2], [0, 0]]])


def test_outlying_labels_bad_input():
    with pytest.raises(TypeError, match="integer class ids"):
        labels.outlying_labels(jnp.array([0.0]), [1, 2])
    with pytest.raises(ValueError, match="must be > 0"):
        labels.outlying_labels(jnp.array([0]), [1, 0])
    with pytest.raises(ValueError, match="`order` must be one of"):
        labels.outlying_labels(jnp.array([0]), [1, 2], order="up")


def test_check_labels_eager():
    labels.check_labels(np.array([0, 9, 3]), 10)
    labels.check_labels(np.array([0, 255]), 10, where=np.array([True, False]))
    with pytest.raises(
        ValueError, match=r"1 of 2 labels are outside \[0, 10\): first bad values \[255\]"
    ):
        labels.check_labels(np.array([0, 255]), 10)
    with pytest.raises(TypeError, match="integer class ids"):
        labels.check_labels(np.array([0.5]), 10)
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        labels.check_labels(np.array([0]), 0)


def test_check_labels_under_jit_with_checkify():
    checked = checkify.checkify(jax.jit(lambda y: labels.check_labels(y, 3)))
    err, _ = checked(jnp.array([0, 1, 2]))
    err.throw()
    err, _ = checked(jnp.array([0, 3]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels outside \[0, 3\)"):
        err.throw()


def test_outlying_labels_shape_and_type_with_chex():
    t = labels.outlying_labels(jnp.zeros((2, 3), jnp.int32), [4, 2, 1, 9], alpha=0.5)
    chex.assert_shape(t, (2, 3, 4))
    chex.assert_type(t, jnp.float32)
    chex.assert_trees_all_close(t[0, 0], jnp.array([1.0, 0.0, 0.0, 0.0]))


def test_check_class_counts_eager_and_under_jit():
    labels.check_class_counts([5000, 50])
    labels.check_class_counts(np.array([0.9, 0.1]))  # float counts (a prior) are fine
    with pytest.raises(ValueError, match="must be > 0"):
        labels.check_class_counts([5, -1])
    with pytest.raises(ValueError, match="must be finite"):
        labels.check_class_counts([5, np.inf])
    with pytest.raises(ValueError, match="must be whole numbers"):
        labels.check_class_counts([5.5, 1], integer=True)
    checked = checkify.checkify(jax.jit(lambda c: labels.check_class_counts(c, integer=True)))
    err, _ = checked(jnp.array([3.0, 1.0]))
    err.throw()
    for bad, message in [
        (jnp.array([3.0, -1.0]), "finite and > 0"),
        (jnp.array([3.0, jnp.nan]), "finite and > 0"),
        (jnp.array([3.5, 1.0]), "whole numbers"),
    ]:
        err, _ = checked(bad)
        with pytest.raises(checkify.JaxRuntimeError, match=message):
            err.throw()


def test_check_labels_refuses_labels_beyond_int32():
    with pytest.raises(ValueError, match="1 of 3 labels are beyond the int32 range.*1099511627776"):
        labels.check_labels(np.array([0, 2**40, 1], np.int64), 10)
    labels.check_labels(np.array([0, 9], np.int64), 10)
