import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cce_jax import models

# These tests check shapes, parameter trees and what the layers compute, not speed: compiling
# without LLVM's optimisations (XLA:CPU) changes only speed and last-ulp rounding, and compiles
# a ResNet 3-5x faster (ResNet-8 init: 6.8 s -> 1.4 s on the project's 2-core CPU).
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _n_params(name, shape=(1, 32, 32, 3), **kw):
    m = models.get_model(name, num_classes=10, **kw)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(shape)))
    return models.param_count(v["params"]), v


def test_resnet32_param_count():
    n, v = _n_params("resnet32")
    assert 0.45e6 < n < 0.47e6, n  # He et al.: 0.46M
    assert n == 464154
    blocks = [k for k in v["params"] if k.startswith("stage")]
    assert len(blocks) == 15


def test_resnet34_param_count():
    n, _ = _n_params("resnet34")
    assert 21.0e6 < n < 21.5e6, n  # CIFAR-style ResNet-34: 21.3M


@pytest.mark.parametrize(
    "name,shape",
    [
        ("resnet8", (3, 8, 8, 1)),
        ("resnet8", (2, 32, 32, 3)),
        pytest.param("resnet32", (2, 16, 16, 3), marks=pytest.mark.slow),
    ],
)
def test_output_shapes_and_batch_stats(name, shape):
    m = models.get_model(name, num_classes=7, width=4)
    v = fast_jit(m.init)(jax.random.key(0), jnp.zeros(shape))
    x = jax.random.normal(jax.random.key(1), shape)
    out, upd = fast_jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert out.shape == (shape[0], 7) and out.dtype == jnp.float32
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], upd["batch_stats"])
    assert all(jax.tree.leaves(changed))
    assert fast_jit(m.apply)(v, x).shape == (shape[0], 7)


def test_width_option():
    n_narrow, v = _n_params("resnet8", width=8)
    n_default, _ = _n_params("resnet8")
    assert n_narrow < n_default
    assert v["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 8)
    assert v["params"]["stage3_block1"]["conv2"]["kernel"].shape == (3, 3, 32, 32)


def test_cosine_head_in_unit_interval():
    m = models.get_model("resnet8", num_classes=10, cosine_head=True, width=4)
    x = 10 * jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
    v = fast_jit(m.init)(jax.random.key(0), x)
    out, _ = fast_jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert out.shape == (8, 10)
    assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-6
    assert "bias" not in v["params"]["head"]


def test_bfloat16_compute_float32_params():
    m = models.get_model("resnet8", num_classes=3, dtype="bfloat16", width=4)
    v = fast_jit(m.init)(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
    assert {leaf.dtype for leaf in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    out = fast_jit(m.apply)(v, jnp.ones((2, 8, 8, 3)))
    assert out.dtype == jnp.float32
    ref32 = models.get_model("resnet8", num_classes=3, width=4)
    ref = fast_jit(ref32.apply)(v, jnp.ones((2, 8, 8, 3)))
    np.testing.assert_allclose(out, ref, atol=0.1)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("resnet50x", num_classes=10)
    with pytest.raises(ValueError, match="dtype"):
        models.get_model("resnet8", num_classes=10, dtype="int8")
    with pytest.raises(ValueError, match="width"):
        models.get_model("resnet8", num_classes=10, width=0)
