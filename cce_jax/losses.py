r"""Losses for class-imbalanced classification.

Every loss here is pure and unreduced, in the manner of ``optax.losses``:

* ``logits`` has the class axis at ``axis`` (default -1) and otherwise the shape of
  ``labels`` ([B], [B, H, W] for segmentation, anything); the result has the shape of
  ``labels``. Reduce it yourself (usually ``jnp.mean`` or a masked mean).
* ``labels`` are integer class ids.
* ``where`` (bool, shape of ``labels``) masks entries: a masked entry's loss is 0 and its
  gradient is exactly 0, whatever its logits hold.
* Labels outside ``[0, K)`` cannot raise inside ``jit``; such an entry is treated as masked
  (loss 0, gradient 0), so an ignore index like 255 works as expected. Check your labels with
  :func:`cce_jax.labels.check_labels` in the data pipeline.
* bfloat16/float16 logits are computed in float32; the loss is float32.
* Hyperparameters are keyword-only. Bad dtypes and shapes raise at trace time.
* All losses are finite, with finite gradients, for any finite logits (tested to
  ``|z| = 1e4`` in float32 and bfloat16): everything is computed from log-sum-exps, with no
  epsilon and no division by ``1 - p``.

Notation: ``z`` logits [..., K], ``p = softmax(z)``, ``g`` the true class, ``n_k`` the number of
training samples of class ``k``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from cce_jax import _validate
from cce_jax import labels as labels_lib

__all__ = [
    "cross_entropy", "complement_entropy", "complement_cross_entropy", "mse_outlying_loss",
    "focal_loss", "class_balanced_weights", "ldam_loss", "logit_adjusted_loss",
    "balanced_softmax_loss", "get", "NAMES",
]

NORMALIZERS = ("k_minus_1", "k")


# --- cores: canonical inputs (class axis last, float32, labels in range) ---------------------

def _ce(z, labels, class_weights=None):
  loss = optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
  if class_weights is not None:
    loss = loss * class_weights[labels]
  return loss


# Up to this many classes, sibling reductions over the class axis run as one XLA variadic
# reduce: on the CPU, XLA does not fuse sibling reductions of the same input, and one pass
# makes CCE ~2.5x faster at K=19 (segmentation shapes). For long rows (K=100) the plain,
# vectorised reductions are faster (measured with experiments/bench_losses.py).
_VARIADIC_MAX_K = 32


def _reduce_last(a, b, *, first: str):
  """``(reduce_first(a), sum(b))`` over the last axis; ``first`` is "max" or "sum"."""
  if a.shape[-1] > _VARIADIC_MAX_K:
    return (jnp.max if first == "max" else jnp.sum)(a, axis=-1), jnp.sum(b, axis=-1)
  op = jnp.maximum if first == "max" else jnp.add
  init = jnp.asarray(-jnp.inf if first == "max" else 0.0, a.dtype)
  return jax.lax.reduce((a, b), (init, jnp.asarray(0.0, b.dtype)),
                        lambda x, y: (op(x[0], y[0]), x[1] + y[1]), (a.ndim - 1,))


def _split(z, labels):
  """The softmax split at the true class, in two passes over ``z``.

  Returns ``hot`` (one-hot of ``labels``), ``z_g``, ``lse_wrong = log sum_{j != g} exp(z_j)``,
  ``shifted = z - top`` on the wrong classes (``top`` their largest logit, 0 at g), their
  exponentials ``e`` (0 at g), ``total = sum e >= 1``, ``log_total`` and the complement
  entropy ``h_c = log_total - sum_j e_j shifted_j / total``
  (that is ``-sum_{j != g} q_j log q_j`` with ``log q = shifted - log_total``). The true class
  is masked out before the exponential: no ``-inf``, no overflow, no ``1 / (1 - p_g)``.
  """
  hot = jnp.arange(z.shape[-1]) == labels[..., None]
  top, z_g = _reduce_last(jnp.where(hot, -jnp.inf, z), jnp.where(hot, z, 0.0), first="max")
  shifted = jnp.where(hot, 0.0, z - top[..., None])
  e = jnp.where(hot, 0.0, jnp.exp(shifted))
  total, weighted = _reduce_last(e, e * shifted, first="sum")
  log_total = jnp.log(total)
  h_c = log_total - weighted / total
  return hot, z_g, top + log_total, shifted, e, total, log_total, h_c


@jax.custom_jvp
def _complement_parts(z, labels):
  """``(z_g, lse_wrong, h_c)`` of :func:`_split`, with a closed-form derivative.

  With ``q_j = exp(z_j - lse_wrong)`` on the wrong classes (0 at g):
  ``d z_g = dz_g``, ``d lse_wrong = sum_j q_j dz_j``,
  ``d h_c = -sum_j q_j (log q_j + h_c) dz_j``.
  The rule is linear in the tangents, so reverse mode (its transpose), ``jacfwd`` and higher
  orders work; it also makes the derivative a single elementwise pass.
  """
  _, z_g, lse_wrong, *_, h_c = _split(z, labels)
  return z_g, lse_wrong, h_c


@_complement_parts.defjvp
def _complement_parts_jvp(primals, tangents):
  z, labels = primals
  dz, _ = tangents
  hot, z_g, lse_wrong, shifted, e, total, log_total, h_c = _split(z, labels)
  q = e / total[..., None]
  log_q = shifted - log_total[..., None]
  dz_g = jnp.sum(jnp.where(hot, dz, 0.0), axis=-1)
  q_dz = q * dz
  d_lse = jnp.sum(q_dz, axis=-1)
  d_h = -jnp.sum(q_dz * (log_q + h_c[..., None]), axis=-1)
  return (z_g, lse_wrong, h_c), (dz_g, d_lse, d_h)


def _check_k(z, minimum: int, what: str) -> int:
  k = z.shape[-1]
  if k < minimum:
    raise ValueError(f"{what} needs at least {minimum} classes, got logits with K={k}.")
  return k


# --- public losses ---------------------------------------------------------------------------

def cross_entropy(logits, labels, *, class_weights=None, axis: int = -1, where=None):
  r"""Softmax cross entropy with integer labels, optionally class-weighted.

  .. math:: \ell(z, g) = w_g \left(\log \sum_j e^{z_j} - z_g\right)

  The unweighted core is ``optax.losses.softmax_cross_entropy_with_integer_labels``.
  With weights, the per-example loss is ``w_g * CE``; note that PyTorch's weighted ``mean``
  divides by ``sum(w_g)`` while ``jnp.mean`` of this divides by the number of entries.

  Args:
    logits: [..., K, ...] floating logits, the class axis at ``axis``.
    labels: integer class ids, the shape of ``logits`` without ``axis``.
    class_weights: optional [K] non-negative weights ``w``.
    axis: the class axis of ``logits``.
    where: optional bool mask, the shape of ``labels``.

  Returns:
    float32 per-entry loss, the shape of ``labels``.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    >>> cce_jax.losses.cross_entropy(logits, jnp.array([0, 2])).tolist()
    [0.1698, 1.0986]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  w = _validate.class_vector(class_weights, z.shape[-1], "class_weights", positive=False)
  return _validate.finish(_ce(z, labels, w), valid)


def complement_entropy(logits, labels, *, axis: int = -1, where=None):
  r"""Complement entropy: the entropy of the renormalised wrong-class distribution.

  .. math::
    q_j = \frac{p_j}{1 - p_g} \;(j \ne g), \qquad
    H_c(z, g) = -\sum_{j \ne g} q_j \log q_j, \qquad 0 \le H_c \le \log(K - 1)

  ``q`` is computed in log space, ``log q = log_softmax`` of the logits with the true class
  left out, which is exact and finite for any finite logits: unlike ``p / (1 - p_g)``, it does
  not overflow when ``p_g -> 1``. Natural log.

  References:
    Chen et al. Complement Objective Training. ICLR 2019, arXiv:1903.01182.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[5.0, 1.0, 1.0, 1.0], [5.0, 4.0, 0.0, -4.0]])
    >>> h = cce_jax.losses.complement_entropy(logits, jnp.array([0, 0]))
    >>> h.tolist()  # uniform wrong classes reach log(3) = 1.0986
    [1.0986, 0.0930]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  _check_k(z, 2, "complement_entropy")
  _, _, h_c = _complement_parts(z, labels)
  return _validate.finish(h_c, valid)


def complement_cross_entropy(logits, labels, *, gamma: float = -1.0,
                             normalizer: str = "k_minus_1", axis: int = -1, where=None):
  r"""Complement cross entropy (CCE) of Kim, Lee & Jeon (2021).

  .. math:: \mathrm{CCE}(z, g) = \mathrm{CE}(z, g) + \frac{\gamma}{n} H_c(z, g)

  with :func:`complement_entropy` ``H_c`` and ``n = K - 1`` (``normalizer="k_minus_1"``) or
  ``n = K`` (``normalizer="k"``).

  **Sign.** The paper writes ``gamma = -1`` and ``n = K - 1``: minimising CCE *maximises* the
  complement entropy, flattening ("neutralising") the wrong-class probabilities, as the
  paper's text describes. That is the default. The authors' public PyTorch code instead adds
  ``+ H_c / K`` (it *lowers* the complement entropy and uses ``K``): reach it with
  ``gamma=1.0, normalizer="k"``. Which sign helps is measured in
  ``experiments/results/`` (suite ``cifar10_lt``). ``gamma=0`` is plain cross entropy.

  **Numerics.** The public code computes ``p / (1 - p_g) + 1e-7``, which overflows to inf/NaN
  once a prediction is confident (logits of scale ~30 in float32). Here ``log q`` is a
  log-softmax over the wrong classes: finite loss and gradients for any finite logits.

  Args:
    logits: [..., K, ...] floating logits, ``K >= 2``.
    labels: integer class ids, the shape of ``logits`` without ``axis``.
    gamma: weight of the complement term (paper: -1; public code: +1).
    normalizer: ``"k_minus_1"`` (paper) or ``"k"`` (public code).
    axis: the class axis.
    where: optional bool mask, the shape of ``labels``.

  Returns:
    float32 per-entry loss, the shape of ``labels``.

  References:
    Kim, Lee, Jeon. Imbalanced Image Classification with Complement Cross Entropy.
    Pattern Recognition Letters 151:33-40, 2021. arXiv:2009.02189.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[3.0, 1.0, 0.0, -2.0]])
    >>> cce_jax.losses.complement_cross_entropy(logits, jnp.array([0])).tolist()
    [-0.0624]
    >>> cce_jax.losses.complement_cross_entropy(  # the public code's form
    ...     logits, jnp.array([0]), gamma=1.0, normalizer="k").tolist()
    [0.3540]
  """
  if normalizer not in NORMALIZERS:
    raise ValueError(f"`normalizer` must be one of {NORMALIZERS}, got {normalizer!r}.")
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  k = _check_k(z, 2, "complement_cross_entropy")
  n = k - 1 if normalizer == "k_minus_1" else k
  z_g, lse_wrong, h_c = _complement_parts(z, labels)
  # CE = logsumexp_j z_j - z_g = softplus(logsumexp_{j != g} z_j - z_g), from the same pass.
  loss = jax.nn.softplus(lse_wrong - z_g) + (gamma / n) * h_c
  return _validate.finish(loss, valid)


def mse_outlying_loss(logits, labels, class_counts, *, alpha: float = 1.0,
                      order: str = "rarest_largest", axis: int = -1, where=None):
  r"""MSE loss with outlying label (Kato & Hotta, 2021).

  .. math:: \ell(z, g) = \frac{1}{K} \sum_{j=1}^{K} (z_j - t_j)^2

  on the raw outputs ``z`` (no softmax), against the teacher vector ``t`` of
  :func:`cce_jax.labels.outlying_labels`: ``t_g = alpha * r(g)`` with ``r`` the rank of the
  class by training-sample count (1 for the most frequent, K for the rarest), 0 elsewhere.
  Every output gets a gradient for every input. Predict with ``argmax(z)``.

  Args:
    logits: [..., K, ...] raw network outputs.
    labels: integer class ids, the shape of ``logits`` without ``axis``.
    class_counts: [K] training-sample counts.
    alpha: outlying scale (reported: CIFAR-10 5, CIFAR-100 1).
    order: rank direction, ``"rarest_largest"`` (abstract; default) or ``"frequent_largest"``.
    axis: the class axis.
    where: optional bool mask, the shape of ``labels``.

  References:
    Kato, Hotta. MSE Loss with Outlying Label for Imbalanced Classification.
    arXiv:2107.02393, 2021.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    >>> cce_jax.losses.mse_outlying_loss(
    ...     logits, jnp.array([0, 2]), [5000, 500, 50], alpha=1.0).tolist()
    [0.0, 0.0]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
  target = labels_lib.outlying_labels(labels, class_counts, alpha=alpha, order=order)
  loss = jnp.mean(jnp.square(z - target), axis=-1)
  return _validate.finish(loss, valid)


def focal_loss(logits, labels, *, gamma: float = 2.0, class_weights=None, axis: int = -1,
               where=None):
  r"""Softmax focal loss (Lin et al. 2017).

  .. math:: \ell(z, g) = -w_g (1 - p_g)^\gamma \log p_g

  ``1 - p_g`` is computed as ``-expm1(-CE)``, exact when ``p_g -> 1`` (where ``1 - p_g``
  rounds to 0 the loss and its gradient are 0). ``gamma = 0`` is cross entropy.

  References:
    Lin, Goyal, Girshick, He, Dollar. Focal Loss for Dense Object Detection. ICCV 2017.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    >>> cce_jax.losses.focal_loss(logits, jnp.array([0, 2])).tolist()
    [0.0041, 0.4883]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  w = _validate.class_vector(class_weights, z.shape[-1], "class_weights", positive=False)
  ce = _ce(z, labels)
  miss = -jnp.expm1(-ce)                               # 1 - p_g, in [0, 1]
  safe = jnp.where(miss > 0, miss, 1.0)
  modulator = jnp.where(miss > 0, safe ** gamma, 0.0 if gamma > 0 else 1.0)
  loss = modulator * ce
  if w is not None:
    loss = loss * w[labels]
  return _validate.finish(loss, valid)


def class_balanced_weights(class_counts, *, beta: float = 0.9999):
  r"""Class-balanced weights by effective number of samples (Cui et al. 2019).

  .. math:: w_k \propto \frac{1 - \beta}{1 - \beta^{n_k}}, \qquad \sum_k w_k = K

  ``1 - beta^n`` is computed as ``-expm1(n log beta)``, accurate for beta near 1.
  ``beta = 0`` gives equal weights; ``beta -> 1`` approaches inverse frequency.

  References:
    Cui, Jia, Lin, Song, Belongie. Class-Balanced Loss Based on Effective Number of Samples.
    CVPR 2019.

  Example:
    >>> import cce_jax
    >>> cce_jax.losses.class_balanced_weights([5000, 500, 50], beta=0.999).tolist()
    [0.126, 0.317, 2.557]
  """
  k = _validate.counts_length(class_counts)
  counts = _validate.class_vector(class_counts, k, "class_counts", positive=True)
  if _validate.is_concrete(beta) and not 0.0 <= float(beta) < 1.0:
    raise ValueError(f"`beta` must be in [0, 1), got {beta}.")
  effective = -jnp.expm1(counts * jnp.log(jnp.asarray(beta, jnp.float32)))
  w = (1.0 - beta) / effective
  return w * (k / jnp.sum(w))


def ldam_loss(logits, labels, class_counts, *, max_margin: float = 0.5, scale: float = 30.0,
              class_weights=None, axis: int = -1, where=None):
  r"""Label-distribution-aware margin loss (Cao et al. 2019).

  .. math::
    m_k = m_{\max} \left(\frac{\min_i n_i}{n_k}\right)^{1/4}, \qquad
    \ell = w_g \, \mathrm{CE}\big(s\,(z - m_g e_g),\, g\big)

  The margin is subtracted from the true-class logit and all logits are scaled by ``s``
  (use it with a cosine-normalised last layer). ``max_margin=0, scale=1`` is cross entropy.
  For LDAM-DRW pass ``class_weights=class_balanced_weights(counts)`` from the DRW epoch on.

  References:
    Cao, Wei, Gaidon, Arechiga, Ma. Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss. NeurIPS 2019.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[0.5, 0.2], [0.5, 0.2]])
    >>> cce_jax.losses.ldam_loss(logits, jnp.array([0, 1]), [160, 10]).tolist()
    [0.2014, 24.0]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  counts = _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
  w = _validate.class_vector(class_weights, z.shape[-1], "class_weights", positive=False)
  margins = max_margin * (jnp.min(counts) / counts) ** 0.25
  # Only the true-class logit moves: CE = softplus(lse_{j != g}(s z_j) - s (z_g - m_g)).
  z_g, lse_wrong, _ = _complement_parts(scale * z, labels)
  loss = jax.nn.softplus(lse_wrong - z_g + scale * margins[labels])
  if w is not None:
    loss = loss * w[labels]
  return _validate.finish(loss, valid)


def logit_adjusted_loss(logits, labels, class_counts, *, tau: float = 1.0, axis: int = -1,
                        where=None):
  r"""Logit-adjusted softmax cross entropy (Menon et al. 2021).

  .. math:: \ell(z, g) = \mathrm{CE}(z + \tau \log \pi, g), \qquad \pi_k = n_k / \sum_i n_i

  Predict with ``argmax(z)`` (the unadjusted logits). Equal counts give cross entropy.

  References:
    Menon, Jayasumana, Rawat, Jain, Veit, Kumar. Long-tail learning via logit adjustment.
    ICLR 2021.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[1.0, 1.0]])
    >>> cce_jax.losses.logit_adjusted_loss(logits, jnp.array([1]), [90, 10]).tolist()
    [2.3026]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  counts = _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
  log_prior = jnp.log(counts) - jnp.log(jnp.sum(counts))
  return _validate.finish(_ce(z + tau * log_prior, labels), valid)


def balanced_softmax_loss(logits, labels, class_counts, *, axis: int = -1, where=None):
  r"""Balanced softmax cross entropy (Ren et al. 2020).

  .. math:: \ell(z, g) = \mathrm{CE}(z + \log n, g)

  Softmax is shift-invariant, so this equals :func:`logit_adjusted_loss` with ``tau=1``.

  References:
    Ren, Yu, Sheng, Ma, Zhao, Yi, Li. Balanced Meta-Softmax for Long-Tailed Visual
    Recognition. NeurIPS 2020.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> logits = jnp.array([[1.0, 1.0]])
    >>> cce_jax.losses.balanced_softmax_loss(logits, jnp.array([1]), [90, 10]).tolist()
    [2.3026]
  """
  z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
  counts = _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
  return _validate.finish(_ce(z + jnp.log(counts), labels), valid)


# --- registry --------------------------------------------------------------------------------

def _class_balanced(loss_fn):
  """`loss_fn` with class-balanced weights built from the counts (``beta`` hyperparameter)."""
  def build(class_counts, *, beta: float = 0.9999, **hparams):
    weights = class_balanced_weights(class_counts, beta=beta)
    return functools.partial(loss_fn, class_weights=weights, **hparams)
  build.__signature__ = inspect.Signature(
      [inspect.Parameter("beta", inspect.Parameter.KEYWORD_ONLY, default=0.9999)]
      + [p for name, p in inspect.signature(loss_fn).parameters.items()
         if p.kind is inspect.Parameter.KEYWORD_ONLY
         and name not in ("class_weights", "axis", "where")])
  return build


# name -> (loss function, needs class_counts, builder or None)
_REGISTRY = {
    "ce": (cross_entropy, False, None),
    "focal": (focal_loss, False, None),
    "cb_ce": (cross_entropy, True, _class_balanced(cross_entropy)),
    "cb_focal": (focal_loss, True, _class_balanced(focal_loss)),
    "ldam": (ldam_loss, True, None),
    "la": (logit_adjusted_loss, True, None),
    "bs": (balanced_softmax_loss, True, None),
    "cce": (complement_cross_entropy, False, None),
    "mse_ol": (mse_outlying_loss, True, None),
}
NAMES = tuple(_REGISTRY)


def _hparam_names(fn) -> set:
  sig = getattr(fn, "__signature__", None) or inspect.signature(fn)
  return {name for name, p in sig.parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("axis", "where")}


def get(name: str, *, class_counts=None, **hparams) -> Callable:
  """Returns ``fn(logits, labels, where=None)`` for a loss name and its hyperparameters.

  Names: ``ce, focal, cb_ce, cb_focal, ldam, la, bs, cce, mse_ol``. ``cb_*`` are cross
  entropy / focal with :func:`class_balanced_weights` (hyperparameter ``beta``). Losses that
  depend on the class distribution (``cb_ce, cb_focal, ldam, la, bs, mse_ol``) need
  ``class_counts``. Unknown names and hyperparameters raise ``ValueError`` here, not later.

  Example:
    >>> import jax.numpy as jnp, cce_jax
    >>> fn = cce_jax.losses.get("cce", gamma=-1.0)
    >>> fn(jnp.array([[3.0, 1.0, 0.0, -2.0]]), jnp.array([0])).tolist()
    [-0.0624]
    >>> cce_jax.losses.get("ldam")
    Traceback (most recent call last):
    ...
    ValueError: loss 'ldam' needs `class_counts` (the per-class training-sample counts).
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(NAMES)}.")
  loss_fn, needs_counts, builder = _REGISTRY[name]
  if needs_counts and class_counts is None:
    raise ValueError(
        f"loss {name!r} needs `class_counts` (the per-class training-sample counts).")
  allowed = _hparam_names(builder or loss_fn)
  unknown = sorted(set(hparams) - allowed)
  if unknown:
    raise ValueError(
        f"unknown hyperparameter(s) {unknown} for loss {name!r}; it takes {sorted(allowed)}.")
  if builder is not None:
    fn = builder(class_counts, **hparams)
  elif needs_counts:
    fn = functools.partial(loss_fn, class_counts=jnp.asarray(class_counts), **hparams)
    _validate.class_vector(class_counts, _validate.counts_length(class_counts),
                           "class_counts", positive=True)
  else:
    fn = functools.partial(loss_fn, **hparams)

  def loss(logits, labels, where: Optional[jax.Array] = None):
    return fn(logits, labels, where=where)

  loss.__name__ = f"{name}_loss"
  loss.__doc__ = f"cce_jax.losses.get({name!r}, ...): {loss_fn.__name__} with {hparams}."
  return loss
