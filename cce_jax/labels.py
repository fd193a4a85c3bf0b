"""Label builders and label checks, for labels of any shape: classification ([B]) and
segmentation ([B, H, W]) alike."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from cce_jax import _validate

ORDERS = ("rarest_largest", "frequent_largest")


def class_ranks(class_counts: ArrayLike, *, order: str = "rarest_largest") -> jax.Array:
    """Rank of every class by its training-sample count, 1..K.

    With ``order="rarest_largest"`` (the default, as in the abstract of Kato & Hotta 2021)
    the most frequent class gets rank 1 and the rarest rank K; ``"frequent_largest"`` reverses
    it (the direction one third-party port uses). Ties are broken by class index: among equal
    counts the lower index is treated as the more frequent class.

    Args:
      class_counts: [K] training-sample counts (positive).
      order: ``"rarest_largest"`` or ``"frequent_largest"``.

    Returns:
      int32 array [K] holding a permutation of 1..K.

    Example:
      >>> import cce_jax
      >>> cce_jax.labels.class_ranks([50, 5000, 500, 500]).tolist()
      [4, 1, 2, 3]
      >>> cce_jax.labels.class_ranks([50, 5000, 500, 500], order="frequent_largest").tolist()
      [1, 4, 3, 2]
    """
    _validate.choice(order, "class_ranks", "order", ORDERS)
    counts = _validate.class_counts(class_counts)
    k = len(counts)
    # Stable sort by decreasing count: position in that order is rank - 1.
    by_frequency = jnp.argsort(-counts, stable=True)
    ranks = jnp.zeros(k, jnp.int32).at[by_frequency].set(jnp.arange(1, k + 1, dtype=jnp.int32))
    return ranks if order == "rarest_largest" else k + 1 - ranks


def outlying_labels(
    labels: ArrayLike, class_counts: ArrayLike, *, alpha: float = 1.0, order: str = "rarest_largest"
) -> jax.Array:
    r"""Outlying teacher labels of Kato & Hotta (2021), for any leading shape of `labels`.

    .. math::
      t_j = 0 \quad (j \ne g), \qquad t_g = \alpha \, r(g)

    where ``r`` ranks the classes by training-sample count (:func:`class_ranks`): 1 for the most
    frequent class up to K for the rarest, so rare classes get targets far from the origin.
    Labels outside ``[0, K)`` get an all-zero vector (see :func:`check_labels`).

    Args:
      labels: integer class ids, any shape ``S``.
      class_counts: [K] training-sample counts; K = ``len(class_counts)``.
      alpha: scale of the outlying value (the paper's reported values: CIFAR-10 5, CIFAR-100 1).
      order: rank direction, see :func:`class_ranks`.

    Returns:
      float32 array of shape ``S + (K,)``.

    References:
      Kato, Hotta. MSE Loss with Outlying Label for Imbalanced Classification.
      arXiv:2107.02393, 2021.

    Example:
      >>> import cce_jax
      >>> cce_jax.labels.outlying_labels([0, 2], [500, 50, 5000], alpha=2.0).tolist()
      [[4.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must hold integer class ids, got dtype {labels.dtype}.")
    values = alpha * class_ranks(class_counts, order=order).astype(jnp.float32)
    return jnp.where(jnp.arange(len(values)) == labels[..., None], values, 0.0)


def check_labels(labels: ArrayLike, num_classes: int, *, where: ArrayLike | None = None) -> None:
    """Checks that every (unmasked) label is an integer class id in ``[0, num_classes)``.

    The losses treat a label outside ``[0, K)`` as masked (they cannot raise inside ``jit``):
    right for an ignore index such as 255, a hidden bug anywhere else. Data pipelines call
    this check on their labels. Eagerly it raises ``ValueError`` naming the bad values; under
    ``jit`` it adds a :mod:`jax.experimental.checkify` check (wrap the jitted function with
    ``checkify.checkify`` and call ``err.throw()``).

    Example:
      >>> import cce_jax
      >>> cce_jax.labels.check_labels([0, 1, 9], 10)
      >>> cce_jax.labels.check_labels([0, 10, -1], 10)
      Traceback (most recent call last):
      ...
      ValueError: 2 of 3 labels are outside [0, 10): first bad values [10, -1]
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
    concrete = _validate.is_concrete(labels) and _validate.is_concrete(where)
    xp = np if concrete else jnp
    labels = xp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must hold integer class ids, got dtype {labels.dtype}.")
    bad = (labels < 0) | (labels >= num_classes)
    if where is not None:
        where = xp.asarray(where, dtype=bool)
        if concrete and where.shape != labels.shape:
            raise ValueError(f"`where` has shape {where.shape}, labels {labels.shape}.")
        bad = bad & where
    if not concrete:  # under jit: a checkify check
        checkify.check(~jnp.any(bad), f"labels outside [0, {num_classes})")
        return
    beyond = (labels < np.iinfo(np.int32).min) | (labels > np.iinfo(np.int32).max)
    if beyond.any():
        raise ValueError(
            f"{int(beyond.sum())} of {labels.size} labels are beyond the int32 range that JAX "
            "uses (without x64 they would wrap to other classes): "
            f"first {labels[beyond][:5].tolist()}"
        )
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {labels.size} labels are outside [0, {num_classes}): "
            f"first bad values {labels[bad][:5].tolist()}"
        )


def check_class_counts(class_counts: ArrayLike, *, integer: bool = False) -> None:
    """Checks per-class counts: finite and ``> 0`` (and whole numbers with ``integer=True``).

    The losses check concrete ``class_counts`` themselves, but cannot check a *traced* one (an
    argument of a jitted function; a negative count gives NaN): call this check on it. Eagerly
    it raises ``ValueError``; under ``jit`` it adds a :mod:`jax.experimental.checkify` check
    (as :func:`check_labels`). Float counts are accepted (every loss but
    :func:`cce_jax.losses.class_balanced_weights` depends only on their ratios).

    Example:
      >>> import cce_jax
      >>> cce_jax.labels.check_class_counts([5000, 50])
      >>> cce_jax.labels.check_class_counts([5000, -1])
      Traceback (most recent call last):
      ...
      ValueError: every entry of `class_counts` must be > 0, got [5000.0, -1.0].
    """
    _validate.class_counts(class_counts, whole=integer)  # the values too when concrete
    if not _validate.is_concrete(class_counts):
        counts = jnp.asarray(class_counts)
        ok = jnp.all(jnp.isfinite(counts) & (counts > 0))
        checkify.check(ok, "class_counts must be finite and > 0")
        if integer:
            checkify.check(
                jnp.all(counts == jnp.round(counts)), "class_counts must be whole numbers"
            )
