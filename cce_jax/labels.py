"""Label builders and label checks.

The builders are written for one example and `jax.vmap`-ed over any leading shape, so the
same code serves classification ([B]) and segmentation ([B, H, W]) labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from cce_jax import _validate

ORDERS = ("rarest_largest", "frequent_largest")


def class_ranks(class_counts, *, order: str = "rarest_largest"):
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
  if order not in ORDERS:
    raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}.")
  k = _validate.counts_length(class_counts)
  counts = _validate.class_vector(class_counts, k, "class_counts", positive=True)
  # Stable sort by decreasing count: position in that order is rank - 1.
  by_frequency = jnp.argsort(-counts, stable=True)
  ranks = jnp.zeros(k, jnp.int32).at[by_frequency].set(jnp.arange(1, k + 1, dtype=jnp.int32))
  if order == "frequent_largest":
    ranks = k + 1 - ranks
  return ranks


def _outlying_label(label, values):
  """Teacher vector of one example: ``values[label]`` at the true class, 0 elsewhere."""
  hot = jnp.arange(values.shape[0]) == label
  return jnp.where(hot, values, 0.0)


def outlying_labels(labels, class_counts, *, alpha: float = 1.0,
                    order: str = "rarest_largest"):
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
  flat = labels.reshape(-1)
  out = jax.vmap(_outlying_label, in_axes=(0, None))(flat, values)
  return out.reshape(labels.shape + values.shape)


def check_labels(labels, num_classes: int, *, where=None) -> None:
  """Checks that every (unmasked) label is an integer class id in ``[0, num_classes)``.

  The losses cannot raise inside ``jit`` on label *values*: they treat a label outside
  ``[0, K)`` like a masked entry (loss 0, gradient 0), which is what an ignore index such as
  255 in segmentation wants, and what hides a bug anywhere else. Data pipelines call this
  check on their labels.

  Eagerly (concrete arrays) it raises ``ValueError`` naming the bad values. Under ``jit`` it
  adds a :mod:`jax.experimental.checkify` check: wrap the jitted function with
  ``checkify.checkify`` and call ``err.throw()`` to raise.

  Example:
    >>> import cce_jax
    >>> cce_jax.labels.check_labels([0, 1, 9], 10)
    >>> cce_jax.labels.check_labels([0, 10, -1], 10)
    Traceback (most recent call last):
    ...
    ValueError: 2 of 3 labels are outside [0, 10): first bad values [10, -1]
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
  if not _validate.is_concrete(labels) or (where is not None and not _validate.is_concrete(where)):
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(f"`labels` must hold integer class ids, got dtype {labels.dtype}.")
    bad = (labels < 0) | (labels >= num_classes)
    if where is not None:
      bad = bad & jnp.asarray(where)
    checkify.check(~jnp.any(bad), f"labels outside [0, {num_classes})")
    return
  host = np.asarray(labels)
  if not np.issubdtype(host.dtype, np.integer):
    raise TypeError(f"`labels` must hold integer class ids, got dtype {host.dtype}.")
  bad = (host < 0) | (host >= num_classes)
  if where is not None:
    where_host = np.asarray(where, dtype=bool)
    if where_host.shape != host.shape:
      raise ValueError(f"`where` has shape {where_host.shape}, labels {host.shape}.")
    bad &= where_host
  if bad.any():
    raise ValueError(
        f"{int(bad.sum())} of {host.size} labels are outside [0, {num_classes}): "
        f"first bad values {host[bad][:5].tolist()}")
