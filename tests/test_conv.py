"""The shifted-matmul convolution (cce_jax.conv) against XLA's ``lax.conv_general_dilated``.

Tolerances: float32 results and gradients agree with XLA's within 2e-5 relative to the
largest entry (the sums are taken in another order; seen: up to ~4e-6); bfloat16 operands
within 2e-2 (bfloat16 keeps 8 bits; both accumulate in float32).
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cce_jax import conv, models

NHWC = ("NHWC", "HWIO", "NHWC")
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _xla(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _shifted(x, w, strides, padding):
    return conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _compare(x_shape, w_shape, strides, padding, dtype=jnp.float32, tol=2e-5):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape).astype(dtype)
    w = (0.3 * jax.random.normal(kw, w_shape)).astype(dtype)
    y_ref, vjp_ref = jax.vjp(lambda x, w: _xla(x, w, strides, padding), x, w)
    g = jax.random.normal(kg, y_ref.shape).astype(dtype)
    y, vjp = jax.vjp(lambda x, w: _shifted(x, w, strides, padding), x, w)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert _rel(y, y_ref) == 0.0  # the forward pass is XLA's own
    (dx_ref, dw_ref), (dx, dw) = vjp_ref(g), vjp(g)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype and dw.shape == w.shape
    assert _rel(dx, dx_ref) == 0.0  # so is the input gradient
    assert _rel(dw, dw_ref) < tol, _rel(dw, dw_ref)


# Every convolution of the models (ResNet-8/20/32 option A, ResNet-34 option B) at small batch,
# and the padding forms.
MODEL_SHAPES = [
    ((4, 32, 32, 3), (3, 3, 3, 16), (1, 1), "SAME"),  # stem
    ((4, 32, 32, 16), (3, 3, 16, 16), (1, 1), "SAME"),  # stage 1
    ((4, 32, 32, 16), (3, 3, 16, 32), (2, 2), "SAME"),  # stage 2, first block
    ((4, 8, 8, 64), (3, 3, 64, 64), (1, 1), "SAME"),  # stage 3
    ((4, 16, 16, 64), (1, 1, 64, 128), (2, 2), "SAME"),  # ResNet-34 projection shortcut
    ((3, 8, 8, 1), (3, 3, 1, 4), (1, 1), "SAME"),  # digits, 1 channel
    ((2, 9, 7, 3), (3, 3, 3, 5), (2, 2), "SAME"),  # odd sizes, uneven SAME padding
    ((2, 9, 7, 3), (3, 2, 3, 5), (1, 2), "VALID"),
    ((2, 9, 7, 3), (3, 3, 3, 5), (2, 1), ((2, 0), (1, 3))),  # explicit, asymmetric
]


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", MODEL_SHAPES)
def test_matches_xla_float32(x_shape, w_shape, strides, padding):
    _compare(x_shape, w_shape, strides, padding)


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", MODEL_SHAPES[1:5:3])
def test_matches_xla_bfloat16(x_shape, w_shape, strides, padding):
    _compare(x_shape, w_shape, strides, padding, dtype=jnp.bfloat16, tol=2e-2)


def test_weight_gradient_is_the_definition():
    """The weight gradient against a numpy sum written from the definition (not from XLA)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 3))
    g = rng.standard_normal((2, 2, 3, 4))  # stride 2, pads ((1, 0), (1, 0)), 3x3 kernel
    pads, s = ((1, 0), (1, 0)), 2
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    want = np.zeros((3, 3, 3, 4))
    for a in range(3):
        for b in range(3):
            for i in range(2):
                for j in range(3):
                    want[a, b] += np.einsum("nc,no->co", xp[:, s * i + a, s * j + b], g[:, i, j])
    w0 = jnp.zeros((3, 3, 3, 4))
    _, vjp = jax.vjp(lambda w: _shifted(jnp.asarray(x, jnp.float32), w, (s, s), pads), w0)
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], want, rtol=1e-5, atol=1e-5)


def test_check_grads():
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))
    f = lambda x, w: jnp.tanh(_shifted(x, w, (2, 2), "SAME"))
    jax.test_util.check_grads(f, (x, w), order=1, modes=("rev",), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_vmap_jit_and_second_use():
    """Inside vmap (the vmapped seeds) and jit, with a per-model kernel."""
    x = jax.random.normal(jax.random.key(1), (3, 2, 8, 8, 4))  # 3 models
    w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4, 5))

    def loss(impl, x, w):
        return jnp.sum(jnp.sin(impl(x, w, (1, 1), "SAME")))

    for argnums in (0, 1):
        ref = jax.vmap(jax.grad(functools.partial(loss, _xla), argnums))(x, w)
        got = jax.jit(jax.vmap(jax.grad(functools.partial(loss, _shifted), argnums)))(x, w)
        assert _rel(got, ref) < 2e-5


_MESH_CHECK = """
import jax, jax.numpy as jnp
from jax import lax
from cce_jax import conv, parallel
mesh = parallel.make_mesh()
assert len(mesh.devices.flat) == jax.device_count(), mesh
x = jax.device_put(jax.random.normal(jax.random.key(1), (16, 8, 8, 3)),
                   jax.NamedSharding(mesh, jax.P("data")))
w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))
def grads(impl):
    f = lambda x, w: jnp.mean(impl(x, w, (2, 2), "SAME", dimension_numbers=conv._NHWC) ** 2)
    return jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
(dx, dw), (dx0, dw0) = grads(conv.conv_general_dilated), grads(lax.conv_general_dilated)
assert dx.sharding.is_equivalent_to(x.sharding, 4), dx.sharding
rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
print("devices", jax.device_count(), "dx", rel(dx, dx0), "dw", rel(dw, dw0))
assert rel(dx, dx0) < 2e-5 and rel(dw, dw0) < 2e-5
"""


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("devices", [1, 8])
def test_data_parallel_mesh(devices):
    """Under jit with the batch sharded on the trainer's ``data`` mesh axis, on 1 and on 8
    simulated CPU devices (a subprocess: the device count is fixed when JAX starts)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-c", _MESH_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"devices {devices} " in r.stdout


def test_unsupported_cases_are_refused():
    x, w = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
    with pytest.raises(NotImplementedError, match="rhs_dilation"):
        conv.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2))
    with pytest.raises(NotImplementedError, match="group"):
        conv.conv_general_dilated(x, jnp.zeros((3, 3, 2, 4)), (1, 1), "SAME", feature_group_count=2)
    with pytest.raises(NotImplementedError, match="negative"):
        conv.conv_general_dilated(x, w, (1, 1), ((-1, 1), (1, 1)))
    with pytest.raises(NotImplementedError, match="NHWC"):
        conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    with pytest.raises(ValueError, match="unknown conv_impl 'auto'"):
        models.get_model("resnet8", num_classes=3, conv_impl="auto")


def test_the_model_takes_the_convolution_as_a_hook():
    assert models.get_model("resnet8", num_classes=3).conv is lax.conv_general_dilated
    m = models.get_model("resnet8", num_classes=3, conv_impl="shifted_matmul")
    assert m.conv is conv.conv_general_dilated


@pytest.mark.slow
def test_short_training_matches_xla():
    """ResNet-8 on fixed data, 30 SGD steps: both implementations end at the same loss and
    nearly the same parameters (they differ only in float rounding)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 16, 16, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 32), jnp.int32)
    tx = optax.sgd(0.05, momentum=0.9)

    def train(impl):
        m = models.get_model("resnet8", num_classes=4, width=8, conv_impl=impl)
        v = m.init(jax.random.key(0), x[:1])

        @fast_jit
        def step(params, stats, opt):
            def obj(p):
                logits, new = m.apply(
                    {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
                )
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

            (loss, new), grads = jax.value_and_grad(obj, has_aux=True)(params)
            upd, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, upd), new["batch_stats"], opt, loss

        params, stats, opt = v["params"], v["batch_stats"], tx.init(v["params"])
        losses = []
        for _ in range(30):
            params, stats, opt, loss = step(params, stats, opt)
            losses.append(float(loss))
        return losses, params

    (l_xla, p_xla), (l_sm, p_sm) = train("xla"), train("shifted_matmul")
    assert l_xla[-1] < 0.5 * l_xla[0]  # it trained
    np.testing.assert_allclose(l_sm, l_xla, rtol=1e-3, atol=1e-4)
    flat = lambda p: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(p)])
    assert _rel(flat(p_sm), flat(p_xla)) < 1e-2  # 30 momentum steps amplify rounding
