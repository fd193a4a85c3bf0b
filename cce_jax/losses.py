r"""Losses for class-imbalanced classification.

Every loss here is pure and unreduced, in the manner of ``optax.losses``:

* ``logits`` has the class axis at ``axis`` (default -1) and otherwise the shape of the
  integer class ids ``labels`` ([B], [B, H, W] for segmentation, anything); the result, the
  per-entry loss, has the shape of ``labels``. Reduce it yourself (usually ``jnp.mean`` or a
  masked mean).
* ``where`` (bool, shape of ``labels``) masks entries: a masked entry's loss is 0 and its
  gradient is exactly 0, whatever its logits hold.
* Labels outside ``[0, K)`` cannot raise inside ``jit``: such an entry is treated exactly as
  masked (NaN logits included), so an ignore index like 255 works. Check your labels with
  :func:`cce_jax.labels.check_labels` in the data pipeline.
* bfloat16/float16 logits are computed in float32; the loss is float32.
* Hyperparameters are keyword-only and checked when given concretely (a one-line
  ``ValueError`` naming the loss and the hyperparameter); :func:`get` checks them all when the
  loss is built. Bad dtypes and shapes raise at trace time.
* ``class_counts`` are positive, finite reals; every loss but :func:`class_balanced_weights`
  (which refuses non-integer counts) depends only on their ratios, so a prior works too.
  Their values are checked when concrete; a *traced* ``class_counts`` (an argument of a jitted
  function) cannot be, inside ``jit``: check it with :func:`cce_jax.labels.check_class_counts`.

**Numerical domain** (tested at its edges, loss and gradient, with and without ``jit``,
K = 10): all from log-sum-exps, with no epsilon and no division by ``1 - p``. Finite for every
finite float16 logit and for float32/bfloat16 logits with ``|z| <= 1e38``, except
``ldam_loss``: ``|z| <= 1e38 / scale`` (tested with the default 30) and ``mse_outlying_loss``:
``|z| <= 1e19`` (a mean of squares; float32 overflows from ``|z - t| ~ 1.8e19``).

A ``-inf`` logit on a wrong class (masking a class out) is exact: ``p = q = 0``, it contributes
0 and loss and gradient stay finite. ``-inf`` on the true class gives ``+inf``, the exact cross
entropy at ``p_g = 0``, with a finite gradient; mask such entries with ``where``. Not for
``mse_outlying_loss``, a regression on the raw outputs: any ``-inf`` logit gives ``+inf`` (and
on the true class a gradient of ``-inf``). ``+inf`` and NaN logits are outside the domain,
except in entries that do not count.

Notation: ``z`` logits [..., K], ``p = softmax(z)``, ``g`` the true class, ``n_k`` the number of
training samples of class ``k``.
"""

import difflib
import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from cce_jax import _validate
from cce_jax import labels as labels_lib

__all__ = [
    "NAMES",
    "PRESETS",
    "RECIPES",
    "balanced_softmax_loss",
    "class_balanced_weights",
    "complement_cross_entropy",
    "complement_entropy",
    "cross_entropy",
    "focal_loss",
    "get",
    "ldam_loss",
    "logit_adjusted_loss",
    "mse_outlying_loss",
]

NORMALIZERS = ("k_minus_1", "k")


# --- cores: canonical inputs (class axis last, float32, labels in range) ---------------------


def _weighted(loss, class_weights, labels):
    return loss if class_weights is None else loss * class_weights[labels]


def _ce(z, labels, class_weights=None):
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
    return _weighted(loss, class_weights, labels)


# Up to this many classes, sibling reductions over the class axis run as one XLA variadic
# reduce: on the CPU, XLA does not fuse sibling reductions of the same input, and one pass
# makes CCE ~2.5x faster at K=19 (segmentation shapes). For long rows (K=100) the plain,
# vectorised reductions are faster (measured with benchmarks/bench_losses.py).
_VARIADIC_MAX_K = 32


def _reduce_last(a, b, *, first: str):
    """``(reduce_first(a), sum(b))`` over the last axis; ``first`` is "max" or "sum"."""
    if a.shape[-1] > _VARIADIC_MAX_K:
        return (jnp.max if first == "max" else jnp.sum)(a, axis=-1), jnp.sum(b, axis=-1)
    op = jnp.maximum if first == "max" else jnp.add
    init = jnp.asarray(-jnp.inf if first == "max" else 0.0, a.dtype)
    return jax.lax.reduce(
        (a, b),
        (init, jnp.asarray(0.0, b.dtype)),
        lambda x, y: (op(x[0], y[0]), x[1] + y[1]),
        (a.ndim - 1,),
    )


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
    # Every wrong class at -inf (or K = 1): no wrong-class mass. Shift by 0 so that `shifted`
    # is -inf there, not NaN (-inf - -inf).
    top = jnp.where(top > -jnp.inf, top, 0.0)
    # -inf for a class at -inf. The minimum is exact arithmetic's `z - top <= 0`: under jit, XLA
    # may contract `s * z - top` (LDAM's scaled logits) into a fused multiply-add, whose
    # unrounded product can exceed the rounded `top` by half an ulp of `s * z`: ~1e29 at 1e38,
    # enough for exp to overflow from |s z| ~ 1e10.
    shifted = jnp.where(hot, 0.0, jnp.minimum(z - top[..., None], 0.0))
    e = jnp.where(hot, 0.0, jnp.exp(shifted))
    # 0 log 0 = 0: a class with e = 0 (at -inf, or underflowed) contributes nothing.
    total, weighted = _reduce_last(e, jnp.where(e > 0, e * shifted, 0.0), first="sum")
    has_mass = total > 0
    total = jnp.where(has_mass, total, 1.0)
    log_total = jnp.where(has_mass, jnp.log(total), -jnp.inf)
    h_c = jnp.where(has_mass, log_total - weighted / total, 0.0)
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
    # The coefficient of dz in d h_c, with q log q = 0 where q = 0 (a class at -inf): it is a
    # constant of the linear rule, so a NaN here would reach the gradient even if masked later.
    coef_h = jnp.where(q > 0, q * (shifted - log_total[..., None] + h_c[..., None]), 0.0)
    dz_g = jnp.sum(jnp.where(hot, dz, 0.0), axis=-1)
    d_lse = jnp.sum(q * dz, axis=-1)
    d_h = -jnp.sum(coef_h * dz, axis=-1)
    return (z_g, lse_wrong, h_c), (dz_g, d_lse, d_h)


# Rules for the hyperparameters, shared by the functions and by `get`:
# name -> check(value, owner, name); focal's `gamma` differs from CCE's.
_HPARAM_RULES = {
    "gamma": _validate.real,
    "normalizer": functools.partial(_validate.choice, choices=NORMALIZERS),
    "alpha": functools.partial(_validate.real, bounds=[(">", 0.0)]),
    "order": functools.partial(_validate.choice, choices=labels_lib.ORDERS),
    "beta": functools.partial(_validate.real, bounds=[(">=", 0.0), ("<", 1.0)]),
    "max_margin": functools.partial(_validate.real, bounds=[(">=", 0.0)]),
    "scale": functools.partial(_validate.real, bounds=[(">", 0.0)]),
    "tau": _validate.real,
}
_FOCAL_RULES = dict(_HPARAM_RULES, gamma=functools.partial(_validate.real, bounds=[(">=", 0.0)]))


def _check_hparams(owner: str, rules=None, **values) -> None:
    rules = _HPARAM_RULES if rules is None else rules
    for name, value in values.items():
        rules[name](value, owner, name)


def _check_k(z, minimum: int, what: str) -> int:
    k = z.shape[-1]
    if k < minimum:
        raise ValueError(f"{what} needs at least {minimum} classes, got logits with K={k}.")
    return k


# --- public losses ---------------------------------------------------------------------------


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross entropy with integer labels, optionally class-weighted.

    .. math:: \ell(z, g) = w_g \left(\log \sum_j e^{z_j} - z_g\right)

    The unweighted core is ``optax.losses.softmax_cross_entropy_with_integer_labels``.
    With weights, the per-example loss is ``w_g * CE``; note that PyTorch's weighted ``mean``
    divides by ``sum(w_g)`` while ``jnp.mean`` of this divides by the number of entries.

    Args:
      logits: [..., K, ...] floating logits, the class axis at ``axis``.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      class_weights: optional [K] non-negative weights ``w``.
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    References:
      The standard softmax cross entropy; see ``optax.losses``.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
      >>> [round(v, 4) for v in cce_jax.losses.cross_entropy(logits, jnp.array([0, 2])).tolist()]
      [0.1698, 1.0986]
    """
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    w = _validate.class_vector(class_weights, z.shape[-1], "class_weights", positive=False)
    return _validate.finish(_ce(z, labels, w), valid)


def complement_entropy(
    logits: ArrayLike, labels: ArrayLike, *, axis: int = -1, where: ArrayLike | None = None
) -> jax.Array:
    r"""Complement entropy: the entropy of the renormalised wrong-class distribution.

    .. math::
      q_j = \frac{p_j}{1 - p_g} \;(j \ne g), \qquad
      H_c(z, g) = -\sum_{j \ne g} q_j \log q_j, \qquad 0 \le H_c \le \log(K - 1)

    ``log q`` is the log-softmax of the logits with the true class left out: exact and finite
    for any finite logits, even when ``p_g -> 1`` (where ``p / (1 - p_g)`` overflows). Natural
    log. A wrong class at ``-inf`` has ``q = 0`` and contributes 0; with every wrong class at
    ``-inf`` (or ``K = 1``) ``H_c = 0``.

    Args:
      logits: [..., K, ...] floating logits, ``K >= 2``.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    Returns:
      float32 per-entry complement entropy, in ``[0, log(K - 1)]``, the shape of ``labels``.

    References:
      Chen et al. Complement Objective Training. ICLR 2019, arXiv:1903.01182.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[5.0, 1.0, 1.0, 1.0], [5.0, 4.0, 0.0, -4.0]])
      >>> h = cce_jax.losses.complement_entropy(logits, jnp.array([0, 0]))
      >>> [round(v, 4) for v in h.tolist()]  # uniform wrong classes reach log(3) = 1.0986
      [1.0986, 0.093]
    """
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    _check_k(z, 2, "complement_entropy")
    _, _, h_c = _complement_parts(z, labels)
    return _validate.finish(h_c, valid)


def complement_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = -1.0,
    normalizer: str = "k_minus_1",
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Complement cross entropy (CCE) of Kim, Lee & Jeon (2021).

    .. math:: \mathrm{CCE}(z, g) = \mathrm{CE}(z, g) + \frac{\gamma}{n} H_c(z, g)

    with :func:`complement_entropy` ``H_c`` and ``n = K - 1`` (``normalizer="k_minus_1"``) or
    ``n = K`` (``normalizer="k"``).

    **Sign.** The paper writes ``gamma = -1`` and ``n = K - 1`` (the default): minimising CCE
    *maximises* the complement entropy, flattening ("neutralising") the wrong-class
    probabilities. The authors' public PyTorch code adds ``+ H_c / K`` instead (it *lowers* the
    complement entropy): ``gamma=1.0, normalizer="k"``. Which sign helps is measured in
    ``experiments/results/`` (suite ``cifar10_lt``). ``gamma=0`` is cross entropy.

    **Numerics.** The public code's ``p / (1 - p_g) + 1e-7`` overflows to inf/NaN once a
    prediction is confident; here ``log q`` is a log-softmax over the wrong classes: finite loss
    and gradients for ``|z| <= 1e38`` and wrong classes at ``-inf`` (see the module docstring).

    Args:
      logits: [..., K, ...] floating logits, ``K >= 2``.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      gamma: weight of the complement term (paper: -1; public code: +1).
      normalizer: ``"k_minus_1"`` (paper) or ``"k"`` (public code).
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    References:
      Kim, Lee, Jeon. Imbalanced Image Classification with Complement Cross Entropy.
      Pattern Recognition Letters 151:33-40, 2021. arXiv:2009.02189.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[3.0, 1.0, 0.0, -2.0]])
      >>> loss = cce_jax.losses.complement_cross_entropy(logits, jnp.array([0]))
      >>> [round(v, 4) for v in loss.tolist()]
      [-0.0624]
      >>> loss = cce_jax.losses.complement_cross_entropy(  # the public code's form
      ...     logits, jnp.array([0]), gamma=1.0, normalizer="k")
      >>> [round(v, 4) for v in loss.tolist()]
      [0.354]
    """
    _check_hparams("complement_cross_entropy", gamma=gamma, normalizer=normalizer)
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    k = _check_k(z, 2, "complement_cross_entropy")
    n = k - 1 if normalizer == "k_minus_1" else k
    z_g, lse_wrong, h_c = _complement_parts(z, labels)
    # CE = logsumexp_j z_j - z_g = softplus(logsumexp_{j != g} z_j - z_g), from the same pass.
    loss = jax.nn.softplus(lse_wrong - z_g) + (gamma / n) * h_c
    return _validate.finish(loss, valid)


def mse_outlying_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    class_counts: ArrayLike,
    *,
    alpha: float = 1.0,
    order: str = "rarest_largest",
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""MSE loss with outlying label (Kato & Hotta, 2021).

    .. math:: \ell(z, g) = \frac{1}{K} \sum_{j=1}^{K} (z_j - t_j)^2

    on the raw outputs ``z`` (no softmax), against the teacher vector ``t`` of
    :func:`cce_jax.labels.outlying_labels`: ``t_g = alpha * r(g)`` with ``r`` the rank of the
    class by training-sample count (1 for the most frequent, K for the rarest), 0 elsewhere.
    Every output gets a gradient for every input. Predict with ``argmax(z)``.
    The loss is a mean of squares: finite for ``|z| <= 1e19`` (it overflows float32 from
    ``|z - t| ~ 1.8e19``); a ``-inf`` logit gives ``+inf``.

    Args:
      logits: [..., K, ...] raw network outputs.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      class_counts: [K] training-sample counts.
      alpha: outlying scale (reported: CIFAR-10 5, CIFAR-100 1).
      order: rank direction, ``"rarest_largest"`` (abstract; default) or ``"frequent_largest"``.
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

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
    _check_hparams("mse_outlying_loss", alpha=alpha, order=order)
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
    target = labels_lib.outlying_labels(labels, class_counts, alpha=alpha, order=order)
    # sum(d^2 / K), not sum(d^2) / K: the sum cannot overflow while every d^2 is finite.
    loss = jnp.sum(jnp.square(z - target) / z.shape[-1], axis=-1)
    return _validate.finish(loss, valid)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax focal loss (Lin et al. 2017).

    .. math:: \ell(z, g) = -w_g (1 - p_g)^\gamma \log p_g

    ``1 - p_g`` is computed as ``-expm1(-CE)``, exact when ``p_g -> 1`` (where ``1 - p_g``
    rounds to 0 the loss and its gradient are 0). ``gamma = 0`` is cross entropy; ``gamma``
    must be ``>= 0``. With the true logit at ``-inf`` (``p_g = 0``) the loss is ``+inf`` and the
    gradient is that of cross entropy (the modulator is 1 and flat there).

    Args:
      logits: [..., K, ...] floating logits, the class axis at ``axis``.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      gamma: focusing parameter, ``>= 0`` (the paper's default 2).
      class_weights: optional [K] non-negative weights ``w`` (the paper's ``alpha_t``).
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    References:
      Lin, Goyal, Girshick, He, Dollar. Focal Loss for Dense Object Detection. ICCV 2017.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
      >>> [round(v, 4) for v in cce_jax.losses.focal_loss(logits, jnp.array([0, 2])).tolist()]
      [0.0041, 0.4883]
    """
    _check_hparams("focal_loss", _FOCAL_RULES, gamma=gamma)
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    w = _validate.class_vector(class_weights, z.shape[-1], "class_weights", positive=False)
    ce = _ce(z, labels)
    # Where p_g = exp(-ce) is 0 in float32 (ce > ~104, or +inf for a true logit at -inf), the
    # modulator is 1 with a slope of exactly 0: keep ce's huge (or infinite) value out of the
    # modulator's branch of the product rule, where it would meet that 0 (0 * inf = NaN).
    finite = jnp.isfinite(ce)
    ce_f = jnp.where(finite, ce, 0.0)
    ce_m = jnp.where(jnp.exp(-ce_f) > 0, ce_f, jax.lax.stop_gradient(ce_f))
    miss = -jnp.expm1(-ce_m)  # 1 - p_g, in [0, 1]
    safe = jnp.where(miss > 0, miss, 1.0)
    modulator = jnp.where(miss > 0, safe**gamma, jnp.where(gamma > 0, 0.0, 1.0))
    loss = jnp.where(finite, modulator * ce_f, ce)
    return _validate.finish(_weighted(loss, w, labels), valid)


def class_balanced_weights(class_counts: ArrayLike, *, beta: float = 0.9999) -> jax.Array:
    r"""Class-balanced weights by effective number of samples (Cui et al. 2019).

    .. math:: w_k \propto \frac{1 - \beta}{1 - \beta^{n_k}}, \qquad \sum_k w_k = K

    ``1 - beta^n`` is computed as ``-expm1(n log beta)``, accurate for beta near 1.
    ``beta = 0`` gives equal weights; ``beta -> 1`` approaches inverse frequency. The weights
    depend on the counts themselves, not only on their ratios: non-integer (concrete) counts are
    refused here.

    Args:
      class_counts: [K] training-sample counts: positive integers (integer or float dtype).
      beta: in ``[0, 1)``; the paper uses 0.9999 (CIFAR-LT) or 0.999.

    Returns:
      float32 [K] weights, summing to K.

    References:
      Cui, Jia, Lin, Song, Belongie. Class-Balanced Loss Based on Effective Number of Samples.
      CVPR 2019.

    Example:
      >>> import cce_jax
      >>> w = cce_jax.losses.class_balanced_weights([5000, 500, 50], beta=0.999)
      >>> [round(v, 4) for v in w.tolist()]
      [0.1256, 0.317, 2.5574]
    """
    _check_hparams("class_balanced_weights", beta=beta)
    try:
        counts = _validate.class_counts(class_counts, whole=True)
    except (TypeError, ValueError) as e:
        raise type(e)(f"class_balanced_weights: {e}") from None
    effective = -jnp.expm1(counts * jnp.log(jnp.asarray(beta, jnp.float32)))
    w = (1.0 - beta) / effective
    return w * (len(counts) / jnp.sum(w))


def ldam_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    class_counts: ArrayLike,
    *,
    max_margin: float = 0.5,
    scale: float = 30.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Label-distribution-aware margin loss (Cao et al. 2019).

    .. math::
      m_k = m_{\max} \left(\frac{\min_i n_i}{n_k}\right)^{1/4}, \qquad
      \ell = w_g \, \mathrm{CE}\big(s\,(z - m_g e_g),\, g\big)

    The margin is subtracted from the true-class logit and all logits are scaled by ``s``
    (use it with a cosine-normalised last layer). ``max_margin=0, scale=1`` is cross entropy.
    For LDAM-DRW pass ``class_weights=class_balanced_weights(counts)`` from the DRW epoch on.
    The logits are multiplied by ``scale``: finite for ``|z| <= 1e38 / scale``. ``K = 1`` gives
    loss 0 and gradient 0 (no wrong class).

    Args:
      logits: [..., K, ...] floating logits (cosine similarities in the paper).
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      class_counts: [K] training-sample counts (positive; only their ratios matter).
      max_margin: the largest margin ``m_max`` (of the rarest class), ``>= 0``.
      scale: the logit scale ``s``, ``> 0``.
      class_weights: optional [K] non-negative weights ``w`` (DRW).
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    References:
      Cao, Wei, Gaidon, Arechiga, Ma. Learning Imbalanced Datasets with Label-Distribution-Aware
      Margin Loss. NeurIPS 2019.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[0.5, 0.2], [0.5, 0.2]])
      >>> loss = cce_jax.losses.ldam_loss(logits, jnp.array([0, 1]), [160, 10])
      >>> [round(v, 4) for v in loss.tolist()]
      [0.2014, 24.0]
    """
    _check_hparams("ldam_loss", max_margin=max_margin, scale=scale)
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    counts = _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
    w = _validate.class_vector(class_weights, z.shape[-1], "class_weights", positive=False)
    margins = max_margin * (jnp.min(counts) / counts) ** 0.25
    # Only the true-class logit moves: CE = softplus(lse_{j != g}(s z_j) - s (z_g - m_g)).
    z_g, lse_wrong, _ = _complement_parts(scale * z, labels)
    loss = jax.nn.softplus(lse_wrong - z_g + scale * margins[labels])
    return _validate.finish(_weighted(loss, w, labels), valid)


def logit_adjusted_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    class_counts: ArrayLike,
    *,
    tau: float = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Logit-adjusted softmax cross entropy (Menon et al. 2021).

    .. math:: \ell(z, g) = \mathrm{CE}(z + \tau \log \pi, g), \qquad \pi_k = n_k / \sum_i n_i

    Predict with ``argmax(z)`` (the unadjusted logits). Equal counts give cross entropy.

    Args:
      logits: [..., K, ...] floating logits, the class axis at ``axis``.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      class_counts: [K] training-sample counts (positive; only their ratios matter, so a prior
        works too).
      tau: adjustment strength (the paper's default 1).
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    References:
      Menon, Jayasumana, Rawat, Jain, Veit, Kumar. Long-tail learning via logit adjustment.
      ICLR 2021.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[1.0, 1.0]])
      >>> loss = cce_jax.losses.logit_adjusted_loss(logits, jnp.array([1]), [90, 10])
      >>> [round(v, 4) for v in loss.tolist()]
      [2.3026]
    """
    _check_hparams("logit_adjusted_loss", tau=tau)
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    counts = _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
    log_prior = jnp.log(counts) - jnp.log(jnp.sum(counts))
    return _validate.finish(_ce(z + tau * log_prior, labels), valid)


def balanced_softmax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    class_counts: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Balanced softmax cross entropy (Ren et al. 2020).

    .. math:: \ell(z, g) = \mathrm{CE}(z + \log n, g)

    Softmax is shift-invariant, so this equals :func:`logit_adjusted_loss` with ``tau=1``.

    Args:
      logits: [..., K, ...] floating logits, the class axis at ``axis``.
      labels: integer class ids, the shape of ``logits`` without ``axis``.
      class_counts: [K] training-sample counts (positive; only their ratios matter).
      axis, where: the class ``axis``; the optional bool mask ``where``, the shape of ``labels``.

    References:
      Ren, Yu, Sheng, Ma, Zhao, Yi, Li. Balanced Meta-Softmax for Long-Tailed Visual
      Recognition. NeurIPS 2020.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> logits = jnp.array([[1.0, 1.0]])
      >>> loss = cce_jax.losses.balanced_softmax_loss(logits, jnp.array([1]), [90, 10])
      >>> [round(v, 4) for v in loss.tolist()]
      [2.3026]
    """
    z, labels, valid = _validate.logits_and_labels(logits, labels, axis, where)
    counts = _validate.class_vector(class_counts, z.shape[-1], "class_counts", positive=True)
    return _validate.finish(_ce(z + jnp.log(counts), labels), valid)


# --- registry --------------------------------------------------------------------------------

# name -> (loss function, needs class_counts, class-balanced weights from the counts)
_REGISTRY = {
    "ce": (cross_entropy, False, False),
    "focal": (focal_loss, False, False),
    "cb_ce": (cross_entropy, True, True),
    "cb_focal": (focal_loss, True, True),
    "ldam": (ldam_loss, True, False),
    "la": (logit_adjusted_loss, True, False),
    "bs": (balanced_softmax_loss, True, False),
    "cce": (complement_cross_entropy, False, False),
    "mse_ol": (mse_outlying_loss, True, False),
}
# Names of the result tables that fix hyperparameters of a loss above: name -> (loss, hparams).
PRESETS = {
    "cce_paper": ("cce", {"gamma": -1.0, "normalizer": "k_minus_1"}),  # CE - H_c/(K-1)
    "cce_code": ("cce", {"gamma": 1.0, "normalizer": "k"}),  # CE + H_c/K, the public code
}
# Names of the result tables that are training recipes, not loss functions: what to run.
RECIPES = {
    "ldam_drw": (
        "LDAM-DRW is a training recipe, not a loss function: the 'ldam' loss with a cosine "
        "classifier head and deferred re-weighting (class-balanced weights from 80% of the "
        "epochs on); in experiments.train: --config.loss.name=ldam --config.model.cosine_head=True "
        "--config.loss.drw_epoch=160 (for 200 epochs)"
    ),
    "cot": (
        "COT is a training recipe, not a loss function: cross entropy steps alternating with "
        "steps that maximise the complement entropy; in experiments.train: "
        "--config.loss.name=cot"
    ),
}
NAMES = tuple(_REGISTRY) + tuple(PRESETS)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve(name, hparams: dict) -> tuple[str, dict]:
    """The registry name of ``name`` and its hyperparameters (a preset fixes some)."""
    if isinstance(name, str) and name in RECIPES:
        raise ValueError(f"loss {name!r}: {RECIPES[name]}.")
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(
            f"unknown loss {name!r}{_did_you_mean(str(name), NAMES)}; "
            f"known losses: {', '.join(NAMES)}."
        )
    if name not in PRESETS:
        return name, hparams
    base, fixed = PRESETS[name]
    clash = sorted(set(hparams) & set(fixed))
    if clash:
        raise ValueError(
            f"loss {name!r} is {base!r} with {fixed}; to choose {clash[0]!r}, use {base!r}."
        )
    return base, {**fixed, **hparams}


def _check_get_args(name: str, base: str, class_counts, hparams: dict) -> None:
    """Checks what :func:`get` was given: hyperparameter names, types, finiteness, ranges, and
    ``class_counts`` (for the losses that need them)."""
    owner = f"loss {name!r}"
    loss_fn, needs_counts, class_balanced = _REGISTRY[base]
    if needs_counts and class_counts is None:
        raise ValueError(f"{owner} needs `class_counts` (the per-class training-sample counts).")
    allowed = {
        hp
        for hp, p in inspect.signature(loss_fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and hp not in ("axis", "where")
    }
    if class_balanced:
        allowed = allowed - {"class_weights"} | {"beta"}
    allowed = sorted(allowed)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(
            f"{owner}: unknown hyperparameter {unknown[0]!r}{_did_you_mean(unknown[0], allowed)}; "
            f"it takes {allowed}."
        )
    rules = _FOCAL_RULES if loss_fn is focal_loss else _HPARAM_RULES
    _check_hparams(owner, rules, **{hp: v for hp, v in hparams.items() if hp != "class_weights"})
    try:
        weights = hparams.get("class_weights")
        if needs_counts:
            k = len(_validate.class_counts(class_counts))
        else:
            k = np.shape(weights)[0] if np.ndim(weights) == 1 else -1
        _validate.class_vector(weights, k, "class_weights", positive=False)  # None passes
    except (TypeError, ValueError) as e:
        raise ValueError(f"{owner}: {e}") from None


def get(name: str, *, class_counts: ArrayLike | None = None, **hparams) -> Callable[..., jax.Array]:
    """Builds ``fn(logits, labels, where=None)`` for a loss name and its hyperparameters.

    Everything is checked here, before any training step: the name, ``class_counts`` and every
    hyperparameter (its name, type, finiteness, range or choice). A problem raises a one-line
    ``ValueError`` naming the loss and the hyperparameter (and the closest valid name).

    Args:
      name: one of :data:`NAMES`. ``cb_ce`` and ``cb_focal`` are cross entropy and focal with
        :func:`class_balanced_weights` (hyperparameter ``beta``). The names of the result
        tables work as they are: ``cce_paper`` and ``cce_code`` are ``cce`` with the paper's
        and the public code's sign (:data:`PRESETS`); ``ldam_drw`` and ``cot`` are training
        recipes, and the error says what to run (:data:`RECIPES`).
      class_counts: [K] per-class training-sample counts; required by ``cb_ce, cb_focal, ldam,
        la, bs, mse_ol``, ignored by the others.
      **hparams: the keyword-only hyperparameters of the loss function (not ``axis`` or
        ``where``), e.g. ``gamma``, ``normalizer``, ``alpha``, ``tau``, ``class_weights``.

    Returns:
      ``fn(logits, labels, where=None) -> jax.Array``, the per-entry loss.

    Example:
      >>> import jax.numpy as jnp, cce_jax
      >>> fn = cce_jax.losses.get("cce", gamma=-1.0)
      >>> [round(v, 4) for v in fn(jnp.array([[3.0, 1.0, 0.0, -2.0]]), jnp.array([0])).tolist()]
      [-0.0624]
      >>> cce_jax.losses.get("ldam")
      Traceback (most recent call last):
      ...
      ValueError: loss 'ldam' needs `class_counts` (the per-class training-sample counts).
      >>> cce_jax.losses.get("focal", gama=2.0)
      Traceback (most recent call last):
      ...
      ValueError: loss 'focal': unknown hyperparameter 'gama' (did you mean 'gamma'?); ...
      >>> cce_jax.losses.get("focal", gamma="nan")
      Traceback (most recent call last):
      ...
      ValueError: loss 'focal': `gamma` must be a finite real number >= 0.0, got 'nan' (str).
    """
    base, hparams = _resolve(name, hparams)
    _check_get_args(name, base, class_counts, hparams)
    loss_fn, needs_counts, class_balanced = _REGISTRY[base]
    kwargs = dict(hparams)
    if class_balanced:
        beta = kwargs.pop("beta", 0.9999)
        kwargs["class_weights"] = class_balanced_weights(class_counts, beta=beta)
    elif needs_counts:
        kwargs["class_counts"] = jnp.asarray(class_counts)

    def loss(logits: ArrayLike, labels: ArrayLike, where: ArrayLike | None = None) -> jax.Array:
        return loss_fn(logits, labels, where=where, **kwargs)

    loss.__name__ = f"{name}_loss"
    loss.__doc__ = f"cce_jax.losses.get({name!r}, ...): {loss_fn.__name__} with {hparams}."
    return loss
