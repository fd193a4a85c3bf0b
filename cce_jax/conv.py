"""A 2-D convolution whose weight gradient is a sum of matmuls, for XLA:CPU.

XLA:CPU computes the weight gradient of a convolution (the ``rhs`` transpose) one to two
orders of magnitude slower than the forward pass or the input gradient, while plain matrix
products run at full speed. For a kernel of size ``kh x kw``, stride ``(sh, sw)`` and
padding ``P``, the weight gradient is, tap by tap::

    dW[a, b] = sum_{n,i,j} pad(x, P)[n, a + sh*i, b + sw*j, :]^T  g[n, i, j, :]

that is ``kh * kw`` matrix products of a strided view of the padded input
(``[N*Ho*Wo, Cin]``) with the output gradient (``[N*Ho*Wo, Cout]``).
:func:`conv_general_dilated` computes exactly that inside a ``jax.custom_vjp``; its forward
pass and its input gradient are XLA's own convolution. It is a drop-in for
``lax.conv_general_dilated`` (``flax.linen.Conv(conv_general_dilated=...)``) for the case
every model here uses: NHWC input, HWIO kernel, no dilation, one feature group; any other
case raises ``NotImplementedError``.

Which is faster depends on the CPU: on a 2-core AMD EPYC (AVX2) XLA's weight gradient was
the outlier (one 32x32x16 layer at batch 128: ~220 ms against 10.7 ms forward) and the
matmuls halved the ResNet step; on an Intel Xeon with AVX-512/AMX both take about the same
time (docs/training.md has the measurements). So ``conv_impl="auto"`` (:func:`conv_fn`)
decides by measurement: on the CPU each convolution shape uses whichever weight gradient
:func:`choose` timed faster on this machine (once; the choice is kept on disk), and on GPU
and TPU XLA's convolution is used untouched.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_IMPLS",
    "autotuned_conv_general_dilated",
    "choose",
    "conv_fn",
    "conv_general_dilated",
    "resolve_conv_impl",
]

CONV_IMPLS = ("auto", "xla", "shifted_matmul")

_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """Returns ``"xla"``, ``"shifted_matmul"`` or ``"measured"`` for ``impl``.

    ``impl`` is one of :data:`CONV_IMPLS`. ``"auto"`` is ``"xla"`` on GPU and TPU (``backend``,
    default ``jax.default_backend()``) and ``"measured"`` on the CPU: each convolution then
    uses whichever weight gradient :func:`choose` measured faster on this machine.

    >>> resolve_conv_impl("auto", backend="gpu")
    'xla'
    >>> resolve_conv_impl("auto", backend="cpu")
    'measured'
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}")
    if impl == "auto":
        backend = jax.default_backend() if backend is None else backend
        return "measured" if backend == "cpu" else "xla"
    return impl


def conv_fn(impl: str):
    """The ``lax.conv_general_dilated``-compatible function for ``impl`` (resolved first)."""
    return {
        "xla": lax.conv_general_dilated,
        "shifted_matmul": conv_general_dilated,
        "measured": autotuned_conv_general_dilated,
    }[resolve_conv_impl(impl)]


# --- The measured choice -----------------------------------------------------------------

MIN_FLOPS = 1e7  # smaller convolutions: XLA's (too short to time reliably, and it is fast)
SPEEDUP = 1.2  # shifted_matmul is chosen only when its weight gradient is this much faster
_CHOICES: dict[str, str] = {}


def cache_path() -> str:
    """The JSON file of measured choices: ``$CCE_JAX_CACHE_DIR`` or ``~/.cache/cce_jax``."""
    root = os.environ.get("CCE_JAX_CACHE_DIR") or os.path.join("~", ".cache", "cce_jax")
    return os.path.join(os.path.expanduser(root), "conv_choices.json")


def _machine() -> str:
    """The CPU model and the jax version: a measured choice holds for these only."""
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    return f"{name} | {os.cpu_count()} cpus | jax {jax.__version__}"


def choose(lhs_shape, rhs_shape, dtype, strides, pads) -> str:
    """``"xla"`` or ``"shifted_matmul"`` for one convolution on this machine (CPU).

    Measured once (both weight gradients, jitted, best of 5) and kept in memory and in
    :func:`cache_path` (a few hundred bytes, keyed by CPU model, core count and jax
    version), so a resumed run makes the same choice. Convolutions under
    :data:`MIN_FLOPS` and multi-process runs use XLA's.
    """
    n, h, w, cin = lhs_shape
    kh, kw, _, cout = rhs_shape
    ho = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
    wo = (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
    if 2.0 * n * ho * wo * kh * kw * cin * cout < MIN_FLOPS or jax.process_count() > 1:
        return "xla"
    key = f"{_machine()} | {tuple(lhs_shape)} {tuple(rhs_shape)} {jnp.dtype(dtype).name} " + (
        f"{strides} {pads}"
    )
    if key not in _CHOICES:
        _CHOICES.update(_read_cache())
    if key not in _CHOICES:
        _CHOICES[key] = _measure(lhs_shape, rhs_shape, dtype, strides, pads)
        _write_cache(key, _CHOICES[key])
    return _CHOICES[key]


def _measure(lhs_shape, rhs_shape, dtype, strides, pads) -> str:
    kx, kg = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, lhs_shape, jnp.float32).astype(dtype)
    w = jnp.zeros(rhs_shape, dtype)
    g = jax.random.normal(kg, jax.eval_shape(lambda: _xla_conv(x, w, strides, pads, None)).shape)
    g = g.astype(dtype)

    def xla_dw(x, g):
        return jax.vjp(lambda w_: _xla_conv(x, w_, strides, pads, None), w)[1](g)[0]

    def shifted_dw(x, g):
        return _weight_grad(x, g, rhs_shape, dtype, strides, pads, None)

    times = {}
    for name, f in (("xla", xla_dw), ("shifted_matmul", shifted_dw)):
        f = jax.jit(f)
        jax.block_until_ready(f(x, g))
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, g))
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    return "shifted_matmul" if times["xla"] > SPEEDUP * times["shifted_matmul"] else "xla"


def _read_cache() -> dict:
    try:
        with open(cache_path()) as f:
            data = json.load(f)
        return {k: v for k, v in data.items() if v in ("xla", "shifted_matmul")}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_cache(key: str, value: str) -> None:
    """Adds one choice to the cache file (atomic replace); an unwritable cache is skipped."""
    path = cache_path()
    data = _read_cache()
    data[key] = value
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass


def _dimension_numbers(dimension_numbers, lhs_shape, rhs_shape):
    """The NHWC/HWIO/NHWC dimension numbers, or ``NotImplementedError`` for any other layout."""
    if len(lhs_shape) != 4 or len(rhs_shape) != 4:
        raise NotImplementedError(
            f"shifted_matmul convolution is 2-D only (rank-4 operands), got lhs {lhs_shape}, "
            f"rhs {rhs_shape}"
        )
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers or _NHWC)
    if dn != _NHWC:
        raise NotImplementedError(
            f"shifted_matmul convolution supports NHWC/HWIO/NHWC only, got {dimension_numbers}"
        )
    return dn


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
    strides, pads = _supported(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
        preferred_element_type,
    )
    return _conv(strides, pads, precision, False)(lhs, rhs)


def autotuned_conv_general_dilated(
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
    """``lax.conv_general_dilated`` whose weight gradient is XLA's or the matmuls, whichever
    was measured faster here.

    The forward pass and the input gradient are XLA's. The weight gradient is chosen by
    :func:`choose` when the backward pass is traced (a forward-only use never measures).
    Cases :func:`conv_general_dilated` does not support are ``lax.conv_general_dilated``.
    """
    try:
        strides, pads = _supported(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            preferred_element_type,
        )
    except NotImplementedError:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    return _conv(strides, pads, precision, True)(lhs, rhs)


def _explicitly_sharded(x) -> bool:
    """Whether ``x`` lives on a mesh with Explicit axes (sharding in types)."""
    try:
        types = jax.typeof(x).sharding.mesh.axis_types
    except Exception:  # no sharding information: not explicit
        return False
    return any(t == jax.sharding.AxisType.Explicit for t in types)


def _supported(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    preferred_element_type,
):
    """(strides, explicit pads) of a supported call; ``NotImplementedError`` otherwise."""
    if _explicitly_sharded(lhs):
        raise NotImplementedError(
            "shifted_matmul convolution: operands on a mesh with Explicit axes; use "
            "lax.conv_general_dilated (conv_impl='xla')"
        )
    lhs_shape, rhs_shape = jnp.shape(lhs), jnp.shape(rhs)
    _dimension_numbers(dimension_numbers, lhs_shape, rhs_shape)
    for name, dil in (("lhs_dilation", lhs_dilation), ("rhs_dilation", rhs_dilation)):
        if dil is not None and tuple(dil) != (1, 1):
            raise NotImplementedError(f"shifted_matmul convolution: {name} must be 1, got {dil}")
    if feature_group_count != 1 or batch_group_count != 1:
        raise NotImplementedError("shifted_matmul convolution: one feature/batch group only")
    if preferred_element_type is not None:
        raise NotImplementedError("shifted_matmul convolution: no preferred_element_type")
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
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
def _conv(strides, pads, precision, measured):
    """A ``custom_vjp`` convolution for one (strides, pads, precision); ``measured``: the
    weight gradient is the one :func:`choose` picks, else always the matmuls."""

    @jax.custom_vjp
    def conv(x, w):
        return _xla_conv(x, w, strides, pads, precision)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        if measured and choose(x.shape, w.shape, x.dtype, strides, pads) == "xla":
            _, vjp = jax.vjp(lambda x_, w_: _xla_conv(x_, w_, strides, pads, precision), x, w)
            return vjp(g)
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
