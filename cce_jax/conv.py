"""A 2-D convolution whose weight gradient is a sum of matmuls, for XLA:CPU (optional).

XLA:CPU computes the weight gradient of a convolution (the ``rhs`` transpose) on some CPUs one
to two orders of magnitude slower than the forward pass, while plain matrix products run at
full speed. For a kernel of size ``kh x kw``, stride ``(sh, sw)`` and padding ``P``, the
weight gradient is, tap by tap::

    dW[a, b] = sum_{n,i,j} pad(x, P)[n, a + sh*i, b + sw*j, :]^T  g[n, i, j, :]

that is ``kh * kw`` matrix products of a strided view of the padded input
(``[N*Ho*Wo, Cin]``) with the output gradient (``[N*Ho*Wo, Cout]``).
:func:`conv_general_dilated` computes exactly that inside a ``jax.custom_vjp``, a drop-in for
``lax.conv_general_dilated`` (``flax.linen.Conv(conv_general_dilated=...)``) in the case every
model here uses. The models use it with ``model.conv_impl="shifted_matmul"``
(:func:`cce_jax.models.get_model`); measured speeds: docs/training.md.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated"]

_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated`` with the weight gradient as ``kh*kw`` matmuls.

    Same arguments and result as ``lax.conv_general_dilated``; supported: 2-D, NHWC input,
    HWIO kernel, NHWC output, any strides, ``"SAME"``/``"VALID"``/explicit (non-negative)
    padding, no dilation, one feature and batch group, operands not on a mesh with Explicit
    axes (otherwise ``NotImplementedError``). The forward pass and the input gradient are
    XLA's convolution; the weight gradient sums, over the kernel taps, the strided input view
    (transposed) times the output gradient, accumulated in float32, returned in the kernel's
    dtype.

    >>> x = jnp.ones((2, 5, 5, 3)); w = jnp.ones((3, 3, 3, 4))
    >>> f = lambda w: jnp.sum(conv_general_dilated(x, w, (2, 2), "SAME") ** 2)
    >>> def g(w):
    ...     y = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=_NHWC)
    ...     return jnp.sum(y**2)
    >>> bool(jnp.allclose(jax.grad(f)(w), jax.grad(g)(w), rtol=1e-6))
    True
    """
    if _explicitly_sharded(lhs):
        raise NotImplementedError(
            "shifted_matmul convolution: operands on a mesh with Explicit axes; use "
            "lax.conv_general_dilated (conv_impl='xla')"
        )
    lhs_shape, rhs_shape = jnp.shape(lhs), jnp.shape(rhs)
    if len(lhs_shape) != 4 or len(rhs_shape) != 4:
        raise NotImplementedError(
            f"shifted_matmul convolution is 2-D only (rank-4 operands), got lhs {lhs_shape}, "
            f"rhs {rhs_shape}"
        )
    if lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers or _NHWC) != _NHWC:
        raise NotImplementedError(
            f"shifted_matmul convolution supports NHWC/HWIO/NHWC only, got {dimension_numbers}"
        )
    for name, dil in (("lhs_dilation", lhs_dilation), ("rhs_dilation", rhs_dilation)):
        if dil is not None and tuple(dil) != (1, 1):
            raise NotImplementedError(f"shifted_matmul convolution: {name} must be 1, got {dil}")
    if feature_group_count != 1 or batch_group_count != 1:
        raise NotImplementedError("shifted_matmul convolution: one feature/batch group only")
    if preferred_element_type is not None:
        raise NotImplementedError("shifted_matmul convolution: no preferred_element_type")
    strides, pads = _strides_and_pads(window_strides, padding, lhs_shape, rhs_shape)
    return _conv(strides, pads, precision)(lhs, rhs)


def _explicitly_sharded(x) -> bool:
    """Whether ``x`` lives on a mesh with Explicit axes (sharding in types)."""
    try:
        types = jax.typeof(x).sharding.mesh.axis_types
    except Exception:  # no sharding information: not explicit
        return False
    return any(t == jax.sharding.AxisType.Explicit for t in types)


def _strides_and_pads(window_strides, padding, lhs_shape, rhs_shape):
    """The strides and the explicit (non-negative) pads of a 2-D convolution."""
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(strides) != 2 or len(pads) != 2:
        raise ValueError(f"2-D convolution needs 2 strides and 2 pads, got {strides}, {pads}")
    if min(min(p) for p in pads) < 0:
        raise NotImplementedError(f"shifted_matmul convolution: negative padding {pads}")
    return strides, pads


def _xla_conv(x, w, strides, pads, precision):
    return lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.lru_cache(maxsize=None)
def _conv(strides, pads, precision):
    """A ``custom_vjp`` convolution for one (strides, pads, precision)."""

    @jax.custom_vjp
    def conv(x, w):
        return _xla_conv(x, w, strides, pads, precision)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        _, x_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, precision), x)
        (dx,) = x_vjp(g)
        return dx, _weight_grad(x, g, w.shape, w.dtype, strides, pads, precision)

    conv.defvjp(fwd, bwd)
    return conv


def _weight_grad(x, g, w_shape, w_dtype, strides, pads, precision):
    """dW[a, b] = (strided view of pad(x) at tap (a, b))^T @ g, for every tap (a, b)."""
    kh, kw, cin, cout = w_shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    n, ho, wo = g.shape[0], g.shape[1], g.shape[2]
    # The barrier keeps XLA from fusing the producer of x (BatchNorm, ReLU) into every tap's
    # slice, which would recompute it kh*kw times at a cache-hostile stride.
    x, g = lax.optimization_barrier((x, g))
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    g2 = g.reshape(n * ho * wo, cout)
    dims = (((0,), (0,)), ((), ()))
    taps = []
    for a in range(kh):
        for b in range(kw):
            start = (0, a, b, 0)
            limit = (n, start[1] + sh * (ho - 1) + 1, start[2] + sw * (wo - 1) + 1, cin)
            view = lax.slice(xp, start, limit, (1, sh, sw, 1)).reshape(n * ho * wo, cin)
            taps.append(
                lax.dot_general(
                    view, g2, dims, precision=precision, preferred_element_type=jnp.float32
                )
            )
    return jnp.stack(taps).reshape(w_shape).astype(w_dtype)
