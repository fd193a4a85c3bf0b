"""CIFAR-style ResNets and a small segmentation FCN in flax.linen (NHWC).

* ``resnet32``: He et al. (2016), section 4.2: a 3x3 conv stem with 16 channels, three
  stages of five basic blocks with 16/32/64 channels (stride 2 at stages 2 and 3), global
  average pooling and a dense layer. Shortcuts are parameter-free ("option A": subsample and
  zero-pad the channels), as in the paper and in the long-tail literature's code (LDAM-DRW),
  which gives 0.46M parameters for 10 classes.
* ``resnet34``: the CIFAR-style ResNet-34 of the CCE paper: a 3x3 stride-1 stem with 64
  channels, no max-pool, basic blocks [3, 4, 6, 3] with 64/128/256/512 channels, 1x1
  projection shortcuts ("option B"); 21.3M parameters for 10 classes.
* ``resnet8`` and ``resnet20``: the ResNet-32 layout with one and three blocks per stage.
* ``fcn8`` and ``fcn20`` (:data:`SEGMENTATION_MODEL_NAMES`): the :class:`FCN` on the
  encoder of ``resnet8`` and ``resnet20``, logits ``[B, H, W, K]`` for any H, W.

``width`` overrides the channel count of the first stage (later stages double it), so
``get_model("resnet8", num_classes=10, width=8)`` is a narrow 8/16/32 network.

The final layer is either a dense layer or, with ``cosine_head=True``, a cosine-normalised
one (``normalize(features) @ normalize(W)``, each logit in [-1, 1]; LDAM's scale ``s``
multiplies it inside the loss). ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``);
parameters and BatchNorm statistics stay float32 and the logits are returned as float32.

``conv`` is the convolution the layers call (a hook, ``lax.conv_general_dilated`` by
default); ``get_model(..., conv_impl="shifted_matmul")`` plugs in the optional
:mod:`cce_jax.conv` (the weight gradient as matmuls, for CPUs where XLA's is slow). The two
differ only in float rounding.

To add a model: a module here and its name in :func:`get_model`'s table.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "shifted_matmul")

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection."""

    features: int
    strides: int = 1
    shortcut: str = "A"  # "A": subsample + zero-pad channels; "B": 1x1 conv + BN
    conv: Callable[..., nn.Module] = nn.Conv
    norm: Callable[..., nn.Module] = nn.BatchNorm

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        y = self.conv(self.features, (3, 3), s, name="conv1")(x)
        y = self.norm(name="bn1")(y)
        y = nn.relu(y)
        y = self.conv(self.features, (3, 3), name="conv2")(y)
        y = self.norm(name="bn2", scale_init=nn.initializers.ones)(y)
        residual = x
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                residual = x[:, :: self.strides, :: self.strides, :]
                pad = self.features - x.shape[-1]
                residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
            else:
                residual = self.conv(self.features, (1, 1), s, name="proj_conv")(x)
                residual = self.norm(name="proj_bn")(residual)
        return nn.relu(y + residual)


class CosineDense(nn.Module):
    """Cosine-normalised linear layer: ``normalize(x) @ normalize(W)`` (no bias)."""

    features: int
    eps: float = 1e-12

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32
        )
        x = x.astype(jnp.float32)
        xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), self.eps)
        wn = kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), self.eps)
        return xn @ wn


def _conv_and_norm(m, train: bool):
    """The convolution and BatchNorm layers of model ``m`` (its dtype, conv, BN axis)."""
    conv = functools.partial(
        nn.Conv,
        conv_general_dilated=m.conv,
        use_bias=False,
        padding="SAME",
        dtype=m.dtype,
        param_dtype=jnp.float32,
        kernel_init=_conv_init,
    )
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=m.bn_momentum,
        epsilon=1e-5,
        dtype=m.dtype,
        param_dtype=jnp.float32,
        axis_name=m.bn_axis_name,
    )
    return conv, norm


def _encoder(m, x, conv, norm) -> list:
    """The stem and the stages of basic blocks of model ``m`` (called inside its compact
    ``__call__``); returns every stage's output, the deepest last."""
    x = jnp.asarray(x, m.dtype)
    x = nn.relu(norm(name="stem_bn")(conv(m.widths[0], (3, 3), name="stem_conv")(x)))
    outputs = []
    for i, (n_blocks, width) in enumerate(zip(m.stage_sizes, m.widths)):
        for j in range(n_blocks):
            strides = 2 if (i > 0 and j == 0) else 1
            x = BasicBlock(
                width, strides, m.shortcut, conv=conv, norm=norm, name=f"stage{i + 1}_block{j + 1}"
            )(x)
        outputs.append(x)
    return outputs


def _head(m, x):
    """The last layer of model ``m`` (dense, or cosine with ``cosine_head``): float32 logits."""
    if m.cosine_head:
        return CosineDense(m.num_classes, name="head")(x)
    x = nn.Dense(m.num_classes, dtype=m.dtype, param_dtype=jnp.float32, name="head")(x)
    return x.astype(jnp.float32)


class _Backbone(nn.Module):
    """The fields of the ResNet stem and stages that the classifier and the FCN share."""

    stage_sizes: Sequence[int]
    widths: Sequence[int]  # per stage; the stem has the first stage's width
    num_classes: int
    shortcut: str = "A"
    cosine_head: bool = False
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: str | None = None
    conv: Callable = lax.conv_general_dilated


class ResNet(_Backbone):
    """A CIFAR-style ResNet of basic blocks; ``__call__(x, train)`` returns float32 logits."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = _conv_and_norm(self, train)
        x = _encoder(self, x, conv, norm)[-1]
        return _head(self, jnp.mean(x, axis=(1, 2)))


class FCN(_Backbone):
    """A small fully convolutional network; ``__call__(x, train)`` returns float32 logits
    ``[B, H, W, num_classes]`` for NHWC input ``[B, H, W, C]``.

    Encoder: the :class:`ResNet` stem and stages (basic blocks, stride 2 at every stage but
    the first). Decoder: from the deepest stage up, ``resize`` (bilinear) to the spatial size
    of the stage before, concatenate that stage's output, 3x3 conv (the earlier stage's
    width) + BatchNorm + ReLU; then a 1x1 head (dense, or cosine with ``cosine_head``). The
    sizes of the skip features are taken as they are, so any H, W works (a stride-2 stage
    of an odd size n gives ceil(n / 2)).
    """

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = _conv_and_norm(self, train)
        skips = _encoder(self, x, conv, norm)
        x = skips[-1]
        for i, skip in reversed(list(enumerate(skips[:-1]))):
            b, h, w, _ = skip.shape
            x = jax.image.resize(x, (b, h, w, x.shape[-1]), "bilinear").astype(self.dtype)
            x = jnp.concatenate([x, skip], axis=-1)
            x = conv(skip.shape[-1], (3, 3), name=f"up{i + 1}_conv")(x)
            x = norm(name=f"up{i + 1}_bn")(x)
            x = nn.relu(x)
        return _head(self, x)


# name -> (module, stage_sizes, first-stage width = stem width, shortcut)
_SPECS = {
    "resnet8": (ResNet, (1, 1, 1), 16, "A"),
    "resnet20": (ResNet, (3, 3, 3), 16, "A"),
    "resnet32": (ResNet, (5, 5, 5), 16, "A"),
    "resnet34": (ResNet, (3, 4, 6, 3), 64, "B"),
    "fcn8": (FCN, (1, 1, 1), 16, "A"),
    "fcn20": (FCN, (3, 3, 3), 16, "A"),
}
CLASSIFIER_NAMES = tuple(name for name, spec in _SPECS.items() if spec[0] is ResNet)
SEGMENTATION_MODEL_NAMES = tuple(name for name, spec in _SPECS.items() if spec[0] is FCN)
MODEL_NAMES = CLASSIFIER_NAMES + SEGMENTATION_MODEL_NAMES


def model_task(name: str) -> str:
    """``"classification"`` (logits ``[B, K]``) or ``"segmentation"`` (``[B, H, W, K]``).

    >>> model_task("resnet32"), model_task("fcn8")
    ('classification', 'segmentation')
    """
    check_model_config(name)
    return "segmentation" if _SPECS[name][0] is FCN else "classification"


def get_model(
    name: str,
    *,
    num_classes: int,
    dtype=jnp.float32,
    cosine_head: bool = False,
    width: int | None = None,
    bn_axis_name: str | None = None,
    conv_impl: str = "xla",
) -> nn.Module:
    """Returns the flax module ``name`` (one of :data:`MODEL_NAMES`).

    ``conv_impl``: ``"xla"`` or ``"shifted_matmul"``; ``width``: see the module docstring.
    ``dtype`` may be a dtype or a string ("float32", "bfloat16"). A classifier
    (:data:`CLASSIFIER_NAMES`) is a :class:`ResNet` (logits ``[B, K]``); a segmentation
    model (:data:`SEGMENTATION_MODEL_NAMES`) is an :class:`FCN` (logits ``[B, H, W, K]``).

    >>> m = get_model("resnet8", num_classes=3, width=4)
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = jax.jit(m.init)(jax.random.key(0), x)
    >>> jax.jit(m.apply)(variables, x).shape
    (2, 3)
    >>> jax.eval_shape(get_model("fcn8", num_classes=3, width=4).init, jax.random.key(0),
    ...                jnp.zeros((2, 9, 9, 3)))["params"]["head"]["kernel"].shape
    (4, 3)
    """
    dtype = check_model_config(name, dtype=dtype, width=width, conv_impl=conv_impl)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    module, stages, w0, shortcut = _SPECS[name]
    w0 = int(width) if width else w0
    widths = tuple(w0 * 2**i for i in range(len(stages)))
    conv = lax.conv_general_dilated
    if conv_impl == "shifted_matmul":
        from cce_jax import conv as shifted

        conv = shifted.conv_general_dilated
    return module(
        stage_sizes=stages,
        widths=widths,
        num_classes=int(num_classes),
        shortcut=shortcut,
        cosine_head=bool(cosine_head),
        dtype=dtype,
        bn_axis_name=bn_axis_name,
        conv=conv,
    )


def check_model_config(
    name: str, *, dtype=jnp.float32, width: int | None = None, conv_impl: str = "xla"
):
    """Checks a model name, compute dtype, width and conv_impl; returns the dtype.

    The one place these rules live (the trainer's config check calls it too).

    >>> check_model_config("resnet32", dtype="bfloat16")
    dtype(bfloat16)
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_NAMES)}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; expected one of {CONV_IMPLS}")
    if width is not None and (isinstance(width, bool) or int(width) != width or int(width) < 1):
        raise ValueError(f"width must be a positive integer or None, got {width!r}")
    names = ("float32", "bfloat16", "float16")
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {names}")
    return dt


def param_count(params) -> int:
    """Number of scalars in a parameter pytree (works on ``jax.eval_shape`` output)."""
    return int(sum(p.size for p in jax.tree.leaves(params)))
