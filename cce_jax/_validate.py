"""Trace-time argument checks shared by `cce_jax.losses` and `cce_jax.labels`.

Everything here runs on shapes and dtypes (static under `jit`), plus value checks on
arguments that are concrete (numpy arrays, Python lists): those are skipped for tracers.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np

# Logits in these dtypes are computed in float32 (and the loss is returned in float32).
_LOW_PRECISION = (jnp.bfloat16, jnp.float16)
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt}


def is_concrete(x) -> bool:
    """True when `x` has values now (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def _narrow_host_labels(labels, num_classes: int):
    """Host labels wider than 32 bits, with x64 off (JAX would wrap them: 2**40 -> 0): every
    value outside ``[0, K)`` becomes -1 before the cast to int32, so it is masked as the docs
    say, never wrapped into a class. Arrays on device (tracers too) were cast when they got
    there."""
    if isinstance(labels, jax.Array) or jax.config.jax_enable_x64:
        return labels
    host = np.asarray(labels)
    if host.dtype.kind not in "iu" or host.dtype.itemsize <= 4:
        return labels
    return np.where((host < 0) | (host >= num_classes), -1, host).astype(np.int32)


def logits_and_labels(logits, labels, axis, where):
    """Checks and canonicalises the common (logits, labels, axis, where) arguments.

    Returns `(z, labels, valid)`: `z` is float32 (or float64) with the class axis moved last,
    `labels` int32 with invalid entries replaced by 0, and `valid` the boolean mask of entries
    that count: `where` (if given) and label in [0, K).
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"`logits` must be a floating array, got dtype {logits.dtype}.")
    if logits.ndim < 1:
        raise ValueError("`logits` must have at least one axis (the class axis).")
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"`axis` must be an int, got {axis!r}.")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"`axis`={axis} is out of range for logits of rank {logits.ndim}.")
    labels = jnp.asarray(_narrow_host_labels(labels, logits.shape[axis]))
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`labels` must hold integer class ids, got dtype {labels.dtype} "
            "(one-hot or soft labels are not accepted; pass argmax ids)."
        )
    z = jnp.moveaxis(logits, axis, -1)
    if labels.shape != z.shape[:-1]:
        raise ValueError(
            f"`labels` has shape {labels.shape} but `logits` without its class axis "
            f"(axis={axis}) has shape {z.shape[:-1]}; they must be equal."
        )
    if z.dtype in _LOW_PRECISION:
        z = z.astype(jnp.float32)
    num_classes = z.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"`where` must be a boolean array, got dtype {where.dtype}.")
        if where.shape != labels.shape:
            raise ValueError(
                f"`where` has shape {where.shape}; it must have the shape of `labels`, "
                f"{labels.shape}."
            )
        valid = valid & where
    # Entries that do not count (masked by `where`, or a label outside [0, K) such as an ignore
    # index) must not leak NaN/inf from their logits into the gradient: zero their logits.
    z = jnp.where(valid[..., None], z, 0.0)
    labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    return z, labels, valid


def class_vector(values, num_classes: int, name: str, *, positive: bool, whole: bool = False):
    """Checks a per-class vector (class counts or weights) of length `num_classes`; its values
    (finite, > 0 or >= 0, whole numbers with `whole`) when they are concrete. Returns it as
    float32; ``None`` (an optional vector not given) passes through as ``None``.
    """
    if values is None:
        return None
    arr = jnp.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != num_classes:
        raise ValueError(
            f"`{name}` must have shape ({num_classes},), one entry per class, "
            f"got shape {arr.shape}."
        )
    if not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
        raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}.")
    if is_concrete(values):
        host = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(host)):
            raise ValueError(f"`{name}` must be finite, got {host.tolist()}.")
        sign = ">" if positive else ">="
        if not np.all(_COMPARE[sign](host, 0)):
            raise ValueError(f"every entry of `{name}` must be {sign} 0, got {host.tolist()}.")
        if whole and np.any(host != np.round(host)):
            raise ValueError(f"`{name}` must be whole numbers, got {host.tolist()}.")
    return arr.astype(jnp.float32)


def class_counts(values, *, whole: bool = False):
    """:func:`class_vector` of per-class counts, one per class (any number of classes >= 1)."""
    shape = np.shape(values)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"`class_counts` must be a 1-D sequence with one count per class, got shape {shape}."
        )
    return class_vector(values, shape[0], "class_counts", positive=True, whole=whole)


def finish(loss, valid):
    """Zeroes the loss (and hence its gradient) of entries that do not count."""
    return jnp.where(valid, loss, 0.0)


def real(value, owner: str, name: str, *, bounds=()):
    """Checks a real-valued hyperparameter; a traced value passes unchecked.

    Raises a one-line ``ValueError`` naming ``owner`` (the loss) and ``name`` for a value that
    is not a real number (a string such as ``'nan'``, a bool, an array with more than one
    element), not finite, or outside ``bounds`` (pairs such as ``(">=", 0.0)``). Returns
    ``value`` unchanged.
    """
    if not is_concrete(value):
        return value
    limits = " and ".join(f"{op} {bound}" for op, bound in bounds)
    want = f"a finite real number {limits}".rstrip()
    is_real_scalar = isinstance(value, (int, float, np.integer, np.floating)) or (
        isinstance(value, (np.ndarray, jax.Array))
        and value.ndim == 0
        and (jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating))
    )
    if not is_real_scalar or isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"{owner}: `{name}` must be {want}, got {value!r} ({type(value).__name__})."
        )
    number = float(value)
    if not (np.isfinite(number) and all(_COMPARE[op](number, b) for op, b in bounds)):
        raise ValueError(f"{owner}: `{name}` must be {want}, got {value!r}.")
    return value


def choice(value, owner: str, name: str, choices) -> str:
    """Checks a string hyperparameter against its choices (one-line ``ValueError``)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}: `{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value
