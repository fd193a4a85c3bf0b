"""Tests of cce_jax.losses against numpy references written from the formulas."""

import functools
import subprocess
import sys

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import cce_jax
from cce_jax import losses

COUNTS = np.array([500, 20, 300, 7, 150, 60, 3, 1000, 40, 90])
K = len(COUNTS)


# --- numpy references, float64, written from the formulas (one row at a time) -------------


def _rows(fn):
    """Applies a per-example reference fn(z[K], g) over [N, K], [N]."""

    def apply(z, y, **kw):
        z = np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1])
        y = np.asarray(y).reshape(-1)
        return np.array([fn(zi, int(yi), **kw) for zi, yi in zip(z, y)])

    return apply


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


@_rows
def ref_ce(z, g, w=None):
    loss = -np.log(_softmax(z)[g])
    return loss * (1.0 if w is None else w[g])


@_rows
def ref_hc(z, g):
    p = _softmax(z)
    q = np.delete(p, g) / (1.0 - p[g])
    return -np.sum(q * np.log(q))


def ref_cce(z, y, gamma=-1.0, normalizer="k_minus_1"):
    k = np.shape(z)[-1]
    n = k - 1 if normalizer == "k_minus_1" else k
    return ref_ce(z, y) + gamma / n * ref_hc(z, y)


def ref_ranks(counts, order="rarest_largest"):
    by_freq = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    ranks = np.empty(len(counts), int)
    for r, c in enumerate(by_freq):
        ranks[c] = r + 1
    return ranks if order == "rarest_largest" else len(counts) + 1 - ranks


@_rows
def ref_mse(z, g, counts, alpha=1.0, order="rarest_largest"):
    t = np.zeros_like(z)
    t[g] = alpha * ref_ranks(counts, order)[g]
    return np.mean((z - t) ** 2)


@_rows
def ref_focal(z, g, gamma=2.0, w=None):
    p = _softmax(z)[g]
    return -((1 - p) ** gamma) * np.log(p) * (1.0 if w is None else w[g])


def ref_cb(counts, beta=0.9999):
    counts = np.asarray(counts, np.float64)
    w = (1 - beta) / (1 - beta**counts)
    return w / w.sum() * len(counts)


def ref_ldam(z, y, counts, max_margin=0.5, scale=30.0, w=None):
    m = np.asarray(counts, np.float64) ** -0.25
    m = m * (max_margin / m.max())
    z = np.array(z, np.float64)
    z[np.arange(len(y)), y] -= m[y]
    return ref_ce(scale * z, y, w=w)


def ref_la(z, y, counts, tau=1.0):
    prior = np.asarray(counts, np.float64) / np.sum(counts)
    return ref_ce(np.asarray(z) + tau * np.log(prior), y)


def ref_bs(z, y, counts):
    return ref_ce(np.asarray(z) + np.log(np.asarray(counts, np.float64)), y)


W = ref_cb(COUNTS, beta=0.999)

# name -> (cce_jax fn(logits, labels, **axis/where), numpy reference(z [N,K], y [N]))
CASES = {
    "ce": (losses.cross_entropy, ref_ce),
    "ce_weighted": (
        functools.partial(losses.cross_entropy, class_weights=W),
        functools.partial(ref_ce, w=W),
    ),
    "complement_entropy": (losses.complement_entropy, ref_hc),
    "cce_paper": (losses.complement_cross_entropy, ref_cce),
    "cce_code": (
        functools.partial(losses.complement_cross_entropy, gamma=1.0, normalizer="k"),
        functools.partial(ref_cce, gamma=1.0, normalizer="k"),
    ),
    "cce_gamma3": (
        functools.partial(losses.complement_cross_entropy, gamma=-3.0),
        functools.partial(ref_cce, gamma=-3.0),
    ),
    "mse_ol": (
        functools.partial(losses.mse_outlying_loss, class_counts=COUNTS, alpha=5.0),
        functools.partial(ref_mse, counts=COUNTS, alpha=5.0),
    ),
    "mse_ol_reversed": (
        functools.partial(losses.mse_outlying_loss, class_counts=COUNTS, order="frequent_largest"),
        functools.partial(ref_mse, counts=COUNTS, order="frequent_largest"),
    ),
    "focal": (losses.focal_loss, ref_focal),
    "focal_weighted_g05": (
        functools.partial(losses.focal_loss, gamma=0.5, class_weights=W),
        functools.partial(ref_focal, gamma=0.5, w=W),
    ),
    "ldam": (
        functools.partial(losses.ldam_loss, class_counts=COUNTS, scale=3.0),
        functools.partial(ref_ldam, counts=COUNTS, scale=3.0),
    ),
    "ldam_drw": (
        functools.partial(losses.ldam_loss, class_counts=COUNTS, class_weights=W),
        functools.partial(ref_ldam, counts=COUNTS, w=W),
    ),
    "la": (
        functools.partial(losses.logit_adjusted_loss, class_counts=COUNTS, tau=1.5),
        functools.partial(ref_la, counts=COUNTS, tau=1.5),
    ),
    "bs": (
        functools.partial(losses.balanced_softmax_loss, class_counts=COUNTS),
        functools.partial(ref_bs, counts=COUNTS),
    ),
}
# Every registry name, with its hyperparameters, for the generic API tests.
REGISTRY_CASES = {
    "ce": {},
    "focal": {"gamma": 2.0},
    "cb_ce": {"beta": 0.999},
    "cb_focal": {"beta": 0.999},
    "ldam": {},
    "la": {"tau": 1.0},
    "bs": {},
    "cce": {"gamma": -1.0},
    "mse_ol": {"alpha": 5.0},
}


def _data(seed=0, shape=(16,), scale=3.0, k=K):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=shape + (k,)) * scale).astype(np.float32)
    y = rng.integers(0, k, size=shape).astype(np.int32)
    return z, y


def _registry_fn(name):
    return losses.get(name, class_counts=COUNTS, **REGISTRY_CASES.get(name, {}))


def _value_and_vjp(fn, z, y, **kw):
    """Per-entry loss and the gradient of its sum (without summing: a sum of finite losses near
    1e38 can overflow by itself)."""
    out, pull = jax.vjp(lambda zz: fn(zz, y, **kw), z)
    (grad,) = pull(jnp.ones_like(out))
    return out, grad


def _assert_finite(*arrays, msg=""):
    for a in arrays:
        assert np.all(np.isfinite(np.asarray(a, np.float32))), (msg, a)


# Stated domain edge per loss (module docstring of cce_jax.losses): float32/bfloat16.
DOMAIN_EDGE = {name: 1e38 for name in REGISTRY_CASES}
DOMAIN_EDGE["ldam"] = 1e38 / 30.0  # |z| <= 1e38 / scale, default scale 30
DOMAIN_EDGE["mse_ol"] = 1e19


def _edge_logits(y, edge, k=K):
    """Rows at the edge of the domain: confident right, confident wrong, ties, random signs."""
    n = len(y)
    rows = np.arange(n)
    sign = np.where(np.random.default_rng(0).random((4, n, k)) < 0.5, -1.0, 1.0)
    right = -np.ones((n, k))
    right[rows, y] = 1.0
    wrong = -np.ones((n, k))
    wrong[rows, (y + 1) % k] = 1.0
    ties = np.ones((n, k))
    return np.concatenate([right, wrong, ties, -ties, sign[0], sign[1]]) * edge


# --- the losses under chex variants: each test runs with and without jit ------------------


class LossVariantsTest(chex.TestCase):
    """Value, masking and numerics tests, each run eagerly and under ``jax.jit``."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(CASES))
    def test_matches_numpy_reference(self, case):
        fn, ref = CASES[case]
        for seed in (0, 1):
            z, y = _data(seed)
            out = self.variant(fn)(z, y)
            chex.assert_shape(out, y.shape)
            chex.assert_type(out, jnp.float32)
            chex.assert_trees_all_close(out, ref(z, y).astype(np.float32), rtol=2e-5, atol=2e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(REGISTRY_CASES))
    def test_masked_and_out_of_range_entries(self, name):
        fn = _registry_fn(name)
        value_and_grad = self.variant(functools.partial(_value_and_vjp, fn))
        z, y = _data(4, shape=(12,))
        keep = np.arange(12) % 3 != 0
        z_nan = z.copy()
        z_nan[~keep] = np.nan  # entries that do not count must not leak NaN
        # `where`: equals slicing, masked entries get loss 0 and gradient exactly 0.
        out, g = value_and_grad(jnp.asarray(z_nan), y, where=jnp.asarray(keep))
        chex.assert_trees_all_close(out[keep], fn(z[keep], y[keep]), rtol=1e-6, atol=1e-6)
        assert np.all(np.asarray(out)[~keep] == 0)
        assert np.all(np.asarray(g)[~keep] == 0) and np.all(np.isfinite(g))
        g_sliced = jax.grad(lambda zz: jnp.sum(fn(zz, y[keep])))(jnp.asarray(z[keep]))
        chex.assert_trees_all_close(g[keep], g_sliced, rtol=1e-5, atol=1e-6)
        # Issue 9 item 12: an ignore-index entry (255, -1) holding NaN logits had loss 0 but a
        # NaN gradient. It is now treated exactly as a `where`-masked one.
        y_bad = y.copy()
        y_bad[~keep] = np.where(np.arange(12)[~keep] % 2 == 0, 255, -1)
        out_bad, g_bad = value_and_grad(jnp.asarray(z_nan), y_bad)
        chex.assert_trees_all_close((out_bad, g_bad), (out, g), atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(REGISTRY_CASES))
    def test_neg_inf_logits(self, name):
        fn = _registry_fn(name)
        z, y = _data(11, shape=(8,))
        y = np.where(y == 3, 0, y).astype(np.int32)  # class 3 is never the true class
        rows = np.arange(8)
        z[:, 3] = -np.inf  # rows 0-3: one wrong class at -inf
        z[4:6] = -np.inf  # rows 4-5: every wrong class at -inf
        z[rows[4:6], y[4:6]] = [1.0, -3.0]
        z[rows[6:], y[6:]] = -np.inf  # rows 6-7: the true class at -inf
        out, g = self.variant(functools.partial(_value_and_vjp, fn))(jnp.asarray(z), y)
        out, g = np.asarray(out), np.asarray(g)
        # -inf on the TRUE class: p_g = 0, and +inf is the exact value of every loss here.
        assert np.all(out[6:] == np.inf), (name, out)
        if name == "mse_ol":  # a regression on the raw outputs: -inf is outside its domain
            assert np.all(out == np.inf)
            return
        # Issue 9 item 11: -inf on a wrong class made cce and complement entropy NaN. A class at
        # -inf has q = 0 and contributes 0 (0 log 0 = 0): the same as -1e4 in float32.
        _assert_finite(out[:6], g, msg=name)
        assert np.all(g[:6, 3] == 0)
        z_far = np.where(np.isneginf(z[:4]), -1e4, z[:4])
        out_far, g_far = _value_and_vjp(fn, jnp.asarray(z_far), y[:4])
        chex.assert_trees_all_close((out[:4], g[:4]), (out_far, g_far), rtol=1e-5, atol=1e-6)
        # Every wrong class at -inf: no wrong-class mass, loss 0 and gradient 0.
        assert np.all(out[4:6] == 0) and np.all(g[4:6] == 0)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("complement_entropy", "cce_paper", "cce_code")
    def test_neg_inf_wrong_class_matches_reference(self, case):
        fn, ref = CASES[case]
        z, y = _data(12, shape=(6,))
        y = np.where(y == 5, 0, y).astype(np.int32)
        z_inf = z.copy()
        z_inf[:, 5] = -np.inf
        z_ref = z.copy()
        z_ref[:, 5] = -700.0  # q ~ 1e-304 in float64: q log q = 0 to any tolerance
        chex.assert_trees_all_close(
            self.variant(fn)(z_inf, y), ref(z_ref, y).astype(np.float32), rtol=2e-5, atol=2e-5
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(REGISTRY_CASES))
    def test_finite_over_the_stated_domain(self, name):
        # Issue 9 item 13: the stated domain (module docstring of cce_jax.losses), tested at its
        # edge, and at 30 (where the public PyTorch versions already return NaN) and 1e4: loss and
        # gradient finite for |z| <= 1e38 (ldam: 1e38 / scale, mse_ol: 1e19) in float32 and
        # bfloat16, and for every finite float16 value.
        fn = _registry_fn(name)
        value_and_grad = self.variant(functools.partial(_value_and_vjp, fn))
        y = np.random.default_rng(1).integers(0, K, size=8).astype(np.int32)
        yy = np.tile(y, 6)
        for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
            edge = float(jnp.finfo(jnp.float16).max) if dtype == jnp.float16 else DOMAIN_EDGE[name]
            for scale in (30.0, 1e4, edge):
                z = jnp.asarray(_edge_logits(y, scale), dtype)
                assert np.all(np.isfinite(np.asarray(z, np.float32)))
                out, g = value_and_grad(z, yy)
                chex.assert_type(out, jnp.float32)
                chex.assert_type(g, dtype)
                _assert_finite(out, g, msg=(name, dtype, scale))

    @chex.variants(with_jit=True, without_jit=True)
    def test_ldam_single_class_has_zero_gradient(self):
        # Issue 9 item 13: ldam_loss with K=1 had a NaN gradient (no wrong class: loss 0).
        fn = functools.partial(losses.ldam_loss, class_counts=np.array([7]))
        z = jnp.array([[0.3], [-2.0]])
        out, g = self.variant(functools.partial(_value_and_vjp, fn))(z, np.zeros(2, np.int32))
        chex.assert_trees_all_close((out, g), (jnp.zeros(2), jnp.zeros((2, 1))), atol=0)


@pytest.mark.parametrize("name", losses.NAMES)
def test_int64_labels_beyond_int32_are_masked_not_wrapped(name):
    # 2**40 wrapped to class 0 when JAX cast int64 labels to int32; out-of-range labels are
    # masked (loss 0, gradient 0), as for -1 or 255, and check_labels refuses them.
    fn = _registry_fn(name)
    z, y = _data(5, shape=(6,))
    wide = y.astype(np.int64)
    wide[[1, 4]] = [2**40, 2**32 + 2]  # int32 casts: 0 and 2
    out, grad = _value_and_vjp(fn, jnp.asarray(z), wide)
    ref_y = y.copy()
    ref_y[[1, 4]] = -1
    ref_out, ref_grad = _value_and_vjp(fn, jnp.asarray(z), ref_y)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(grad, ref_grad)
    assert out[1] == 0 and out[4] == 0 and not np.any(np.asarray(grad)[[1, 4]])
    with pytest.raises(ValueError, match="beyond the int32 range"):
        cce_jax.labels.check_labels(wide, K)


def test_beyond_the_domain_is_not_claimed():
    # Just beyond the stated edge the loss overflows (so the documented bound is tight to ~2x):
    # mse_ol at 4e19 is +inf, ldam at 1e38 (x scale 30) is not finite.
    y = np.array([0], np.int32)
    z = np.full((1, K), -4e19, np.float32)
    assert np.isinf(losses.mse_outlying_loss(z, y, COUNTS))[0]
    z = np.full((1, K), -1e38, np.float32)
    z[0, 1] = 1e38
    assert not np.isfinite(losses.ldam_loss(z, y, COUNTS))[0]


# --- values ----------------------------------------------------------------------------------


def test_registry_matches_functions():
    z, y = _data(3)
    cb = ref_cb(COUNTS, beta=0.999)
    expected = {
        "ce": ref_ce(z, y),
        "focal": ref_focal(z, y),
        "cb_ce": ref_ce(z, y, w=cb),
        "cb_focal": ref_focal(z, y, w=cb),
        "ldam": ref_ldam(z, y, COUNTS),
        "la": ref_la(z, y, COUNTS),
        "bs": ref_bs(z, y, COUNTS),
        "cce": ref_cce(z, y),
        "mse_ol": ref_mse(z, y, counts=COUNTS, alpha=5.0),
        "cce_paper": ref_cce(z, y, gamma=-1.0, normalizer="k_minus_1"),
        "cce_code": ref_cce(z, y, gamma=1.0, normalizer="k"),
    }
    assert set(expected) == set(losses.NAMES)
    for name, want in expected.items():
        np.testing.assert_allclose(
            _registry_fn(name)(z, y), want, rtol=5e-5, atol=5e-5, err_msg=name
        )


def test_class_balanced_weights_reference():
    for beta in (0.0, 0.9, 0.999, 0.9999):
        got = losses.class_balanced_weights(COUNTS, beta=beta)
        np.testing.assert_allclose(got, ref_cb(COUNTS, beta), rtol=1e-5)
        np.testing.assert_allclose(np.sum(got), K, rtol=1e-5)
    # beta -> 1 approaches inverse frequency.
    inv = 1 / COUNTS / np.sum(1 / COUNTS) * K
    np.testing.assert_allclose(losses.class_balanced_weights(COUNTS, beta=1 - 1e-7), inv, rtol=2e-2)


def test_cce_sign_and_normalizer_differ():
    z, y = _data(5)
    paper = losses.complement_cross_entropy(z, y)
    code = losses.complement_cross_entropy(z, y, gamma=1.0, normalizer="k")
    ce = losses.cross_entropy(z, y)
    hc = losses.complement_entropy(z, y)
    np.testing.assert_allclose(paper, ce - hc / (K - 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(code, ce + hc / K, rtol=1e-5, atol=1e-6)
    # The paper's form rewards flat wrong-class distributions: its gradient raises H_c.
    step = jax.grad(lambda zz: jnp.sum(losses.complement_cross_entropy(zz, y, gamma=-1e3)))(z)
    h_after = losses.complement_entropy(z - 1e-4 * step, y)
    assert float(jnp.sum(h_after)) > float(jnp.sum(hc))


# --- gradients and transformations -----------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_finite_differences(case):
    fn, _ = CASES[case]
    z, y = _data(7, shape=(3,), scale=2.0)
    with jax.enable_x64(True):
        z64 = jnp.asarray(z, jnp.float64)
        check_grads(lambda zz: fn(zz, y), (z64,), order=2, modes=("rev",), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_jit_vmap_and_grad(name):
    fn = _registry_fn(name)
    z, y = _data(2, shape=(4, 6))
    eager = fn(z, y)
    np.testing.assert_allclose(jax.jit(fn)(z, y), eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(z, y), eager, rtol=1e-6, atol=1e-6)
    g = jax.jit(jax.grad(lambda zz: jnp.mean(fn(zz, y))))(z)
    assert g.shape == z.shape and np.all(np.isfinite(g))


@pytest.mark.parametrize("case", sorted(CASES))
def test_axis_equals_moveaxis_and_leading_axes(case):
    fn, _ = CASES[case]
    z, y = _data(8, shape=(2, 5, 3))  # segmentation-like [B, H, W, K]
    flat = fn(z.reshape(-1, K), y.reshape(-1))
    np.testing.assert_allclose(fn(z, y), flat.reshape(y.shape), rtol=1e-6, atol=1e-6)
    z_first = np.moveaxis(z, -1, 1)  # [B, K, H, W], PyTorch layout
    np.testing.assert_allclose(fn(z_first, y, axis=1), fn(z, y), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fn(z_first, y, axis=-3), fn(z, y), rtol=1e-6, atol=1e-6)


# --- numerics --------------------------------------------------------------------------------


def test_complement_entropy_confident_prediction_is_accurate():
    # Where the public code's p / (1 - p_g) overflows (p_g rounds to 1 in float32), the
    # log-space form still gives the exact complement entropy of the wrong-class logits.
    wrong = np.array([0.3, -0.2, 1.0])
    z = np.concatenate([[200.0], wrong])[None].astype(np.float32)
    q = _softmax(wrong)
    np.testing.assert_allclose(
        losses.complement_entropy(z, np.array([0])), [-np.sum(q * np.log(q))], rtol=1e-6
    )


def test_bfloat16_matches_float32_on_moderate_logits():
    z, y = _data(9)
    for name in REGISTRY_CASES:
        fn = _registry_fn(name)
        z16 = jnp.asarray(z, jnp.bfloat16)
        np.testing.assert_allclose(
            fn(z16, y), fn(np.asarray(z16, np.float32), y), rtol=1e-6, err_msg=name
        )


# --- properties ------------------------------------------------------------------------------

# A few fixed shapes (K = 2, the smallest complement, up to 12): each loss compiles once per
# shape, so drawing shapes freely spends the test's time in XLA, not in the properties.
logit_arrays = hnp.arrays(
    np.float32,
    st.sampled_from([(1, 2), (4, 2), (3, 3), (5, 7), (6, 12)]),
    elements=st.floats(-50, 50, width=32),
)


_complement_entropy = jax.jit(losses.complement_entropy)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(z=logit_arrays, data=st.data())
def test_complement_entropy_bounds(z, data):
    k = z.shape[-1]
    y = np.array(
        data.draw(st.lists(st.integers(0, k - 1), min_size=z.shape[0], max_size=z.shape[0])),
        np.int32,
    )
    h = np.asarray(_complement_entropy(z, y))
    assert np.all(h >= -1e-6) and np.all(h <= np.log(k - 1) + 1e-5)
    # Equality at a uniform wrong-class distribution, whatever the true logit.
    zu = np.full_like(z, data.draw(st.floats(-50, 50, width=32)))
    zu[np.arange(len(y)), y] = z[np.arange(len(y)), y]
    np.testing.assert_allclose(_complement_entropy(zu, y), np.log(k - 1), rtol=1e-5, atol=1e-6)


# Jitted once (one program per shape, instead of every eager op compiled per shape).
_REDUCTIONS = {
    "cce_gamma0": jax.jit(functools.partial(losses.complement_cross_entropy, gamma=0.0)),
    "focal_gamma0": jax.jit(functools.partial(losses.focal_loss, gamma=0.0)),
    "la_equal": jax.jit(losses.logit_adjusted_loss),
    "bs_equal": jax.jit(losses.balanced_softmax_loss),
    "ldam_no_margin": jax.jit(functools.partial(losses.ldam_loss, max_margin=0.0, scale=1.0)),
    "ce_unit_weights": jax.jit(lambda z, y, w: losses.cross_entropy(z, y, class_weights=w)),
}


# slow: 30 examples x 5 shapes x 7 compiled losses; every loss also has a fast numpy-reference
# test (LossVariantsTest.test_matches_numpy_reference, with and without jit).
@pytest.mark.slow
@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(z=logit_arrays, seed=st.integers(0, 2**16), count=st.integers(1, 10**6))
def test_reductions_to_cross_entropy(z, seed, count):
    k = z.shape[-1]
    y = np.random.default_rng(seed).integers(0, k, size=z.shape[0]).astype(np.int32)
    ce = np.asarray(losses.cross_entropy(z, y))
    tol = {"rtol": 1e-5, "atol": 1e-5}
    f = _REDUCTIONS
    np.testing.assert_allclose(f["cce_gamma0"](z, y), ce, **tol)
    np.testing.assert_allclose(f["focal_gamma0"](z, y), ce, **tol)
    equal = np.full(k, count)
    np.testing.assert_allclose(f["la_equal"](z, y, equal), ce, **tol)
    np.testing.assert_allclose(f["bs_equal"](z, y, equal), ce, **tol)
    np.testing.assert_allclose(f["ldam_no_margin"](z, y, np.arange(1, k + 1)), ce, **tol)
    np.testing.assert_allclose(f["ce_unit_weights"](z, y, np.ones(k, np.float32)), ce, **tol)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(z=logit_arrays, seed=st.integers(0, 2**16))
def test_la_and_bs_agree(z, seed):
    k = z.shape[-1]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=z.shape[0]).astype(np.int32)
    counts = rng.integers(1, 5000, size=k)
    np.testing.assert_allclose(
        losses.logit_adjusted_loss(z, y, counts, tau=1.0),
        losses.balanced_softmax_loss(z, y, counts),
        rtol=1e-5,
        atol=1e-5,
    )


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_bad_inputs_raise_at_trace_time(name):
    fn = jax.jit(_registry_fn(name))
    z, y = _data(0)
    with pytest.raises(TypeError, match="`labels` must hold integer"):
        fn(z, y.astype(np.float32))
    with pytest.raises(TypeError, match="`logits` must be a floating"):
        fn(y[:, None].repeat(K, 1), y)
    with pytest.raises(ValueError, match="`labels` has shape"):
        fn(z, y[:-1])
    with pytest.raises(ValueError, match="`where` has shape"):
        fn(z, y, where=jnp.ones(3, bool))
    with pytest.raises(TypeError, match="`where` must be a boolean"):
        fn(z, y, where=jnp.ones(y.shape, jnp.float32))


def test_bad_hyperparameters():
    z, y = _data(0)
    with pytest.raises(ValueError, match="`class_counts` must have shape"):
        losses.mse_outlying_loss(z, y, COUNTS[:-1])
    with pytest.raises(ValueError, match="must be > 0"):
        losses.ldam_loss(z, y, np.r_[COUNTS[:-1], 0])
    with pytest.raises(ValueError, match="`class_weights` must have shape"):
        losses.cross_entropy(z, y, class_weights=np.ones(3))
    with pytest.raises(ValueError, match="complement_cross_entropy: `normalizer` must be one of"):
        losses.complement_cross_entropy(z, y, normalizer="n")
    with pytest.raises(ValueError, match="at least 2 classes"):
        losses.complement_entropy(z[:, :1], np.zeros(len(y), np.int32))
    with pytest.raises(ValueError, match=r"`beta` must be a finite real number >= 0.0 and < 1.0"):
        losses.class_balanced_weights(COUNTS, beta=1.0)
    with pytest.raises(ValueError, match="unknown loss 'nope'; known losses: ce, focal"):
        losses.get("nope")
    with pytest.raises(ValueError, match="needs `class_counts`"):
        losses.get("mse_ol")
    with pytest.raises(
        ValueError, match=r"unknown hyperparameter 'gama' \(did you mean 'gamma'\?\)"
    ):
        losses.get("cce", gamma=1.0, gama=2.0)
    with pytest.raises(ValueError, match="must be > 0"):
        losses.get("la", class_counts=[3, 0, 2])
    with pytest.raises(ValueError, match="`axis`=3 is out of range"):
        losses.cross_entropy(z, y, axis=3)


def test_import_is_light():
    code = (
        "import sys, cce_jax, cce_jax.losses, cce_jax.labels; "
        "bad = [m for m in ('tensorflow', 'flax', 'tensorflow_datasets') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert cce_jax.losses is losses


@pytest.mark.parametrize("scale", [1e8, 1e9, 1e10, 1e12])
def test_ldam_under_jit_large_logits(scale):
    # Found while testing the domain edge: under jit XLA fused `s * z - max(s * z)` into a
    # multiply-add, whose unrounded product exceeds the rounded max; exp of the excess
    # overflowed and jitted LDAM returned inf at |z| = 1e9 for a confidently right row.
    y = np.array([2], np.int32)
    z = -np.ones((1, K), np.float32) * scale
    z[0, 2] = scale
    fn = jax.jit(_registry_fn("ldam"))
    np.testing.assert_array_equal(fn(z, y), [0.0])


# --- hyperparameters are checked when the loss is built (issue 9 item 5) ---------------------

BAD_HPARAMS = [
    # (loss, hparams, expected message): each a one-line ValueError naming loss and hparam.
    (
        "focal",
        {"gamma": "nan"},
        "loss 'focal': `gamma` must be a finite real number >= 0.0, got 'nan' (str)",
    ),
    ("cce", {"gamma": "abc"}, "loss 'cce': `gamma` must be a finite real number, got 'abc'"),
    ("cce", {"gamma": float("nan")}, "loss 'cce': `gamma` must be a finite real number, got nan"),
    ("focal", {"gamma": float("inf")}, "loss 'focal': `gamma` must be a finite real number"),
    ("focal", {"gamma": -1.0}, "loss 'focal': `gamma` must be a finite real number >= 0.0"),
    ("cb_focal", {"gamma": True}, "loss 'cb_focal': `gamma` must be a finite real number"),
    (
        "cce",
        {"normalizer": "bad"},
        "loss 'cce': `normalizer` must be one of ('k_minus_1', 'k'), got 'bad'",
    ),
    ("cce", {"gama": -1.0}, "loss 'cce': unknown hyperparameter 'gama' (did you mean 'gamma'?)"),
    (
        "mse_ol",
        {"alpah": 5.0},
        "loss 'mse_ol': unknown hyperparameter 'alpah' (did you mean 'alpha'?)",
    ),
    ("mse_ol", {"alpha": 0.0}, "loss 'mse_ol': `alpha` must be a finite real number > 0.0"),
    ("mse_ol", {"alpha": "5"}, "loss 'mse_ol': `alpha` must be a finite real number"),
    ("mse_ol", {"order": "up"}, "loss 'mse_ol': `order` must be one of"),
    ("cb_ce", {"beta": 1.0}, "loss 'cb_ce': `beta` must be a finite real number >= 0.0 and < 1.0"),
    ("cb_ce", {"beta": float("nan")}, "loss 'cb_ce': `beta` must be a finite real number"),
    ("ldam", {"scale": -1.0}, "loss 'ldam': `scale` must be a finite real number > 0.0"),
    ("ldam", {"max_margin": float("nan")}, "loss 'ldam': `max_margin` must be a finite real"),
    ("la", {"tau": "1.0"}, "loss 'la': `tau` must be a finite real number, got '1.0' (str)"),
    ("la", {"tau": np.array([1.0, 2.0])}, "loss 'la': `tau` must be a finite real number"),
    ("ce", {"class_weights": [1.0, -1.0, 1.0]}, "loss 'ce': every entry of `class_weights`"),
    ("ldam", {"class_weights": np.ones(3)}, "loss 'ldam': `class_weights` must have shape (10,)"),
    ("focal", {"class_weights": [np.nan, 1.0]}, "loss 'focal': `class_weights` must be finite"),
]


@pytest.mark.parametrize("name,hparams,message", BAD_HPARAMS)
def test_get_refuses_bad_hyperparameters_when_built(name, hparams, message):
    with pytest.raises(ValueError) as info:
        losses.get(name, class_counts=COUNTS, **hparams)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_get_checks_counts_and_names():
    for counts, message in [
        ([3, 0, 2], "loss 'la': every entry of `class_counts` must be > 0"),
        ([3, np.nan], "loss 'la': `class_counts` must be finite"),
        (np.ones((2, 2)), "loss 'la': `class_counts` must be a 1-D"),
    ]:
        with pytest.raises(ValueError) as info:
            losses.get("la", class_counts=counts)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ValueError, match=r"unknown loss 'focl' \(did you mean 'focal'\?\)"):
        losses.get("focl")
    assert losses.NAMES == (
        "ce",
        "focal",
        "cb_ce",
        "cb_focal",
        "ldam",
        "la",
        "bs",
        "cce",
        "mse_ol",
        "cce_paper",
        "cce_code",
    )


def test_table_names_work_as_they_are():
    """Every loss name of the result tables is a registry name, or says what to run."""
    z, y = _data(4)
    np.testing.assert_array_equal(
        losses.get("cce_paper")(z, y), losses.get("cce", gamma=-1.0, normalizer="k_minus_1")(z, y)
    )
    np.testing.assert_array_equal(
        losses.get("cce_code")(z, y), losses.get("cce", gamma=1.0, normalizer="k")(z, y)
    )
    with pytest.raises(ValueError, match=r"loss 'cce_code' is 'cce' with .*use 'cce'"):
        losses.get("cce_code", gamma=-1.0)
    with pytest.raises(ValueError, match="--config.loss.name=ldam --config.model.cosine_head"):
        losses.get("ldam_drw", class_counts=COUNTS)
    with pytest.raises(ValueError, match="--config.loss.name=cot"):
        losses.get("cot")
    with pytest.raises(ValueError, match=r"did you mean 'cce_paper'"):
        losses.get("cce_papr")


def test_good_hyperparameters_of_every_kind_are_accepted():
    z, y = _data(0)
    for name, hp in [
        ("focal", {"gamma": 0}),
        ("focal", {"gamma": np.float32(2.0)}),
        ("cce", {"gamma": jnp.asarray(-1.0), "normalizer": "k"}),
        ("ldam", {"class_weights": losses.class_balanced_weights(COUNTS)}),
        ("mse_ol", {"alpha": 5, "order": "frequent_largest"}),
    ]:
        assert np.all(np.isfinite(losses.get(name, class_counts=COUNTS, **hp)(z, y))), name


def test_functions_check_their_hyperparameters_too():
    z, y = _data(0)
    with pytest.raises(ValueError, match="focal_loss: `gamma` must be a finite real number"):
        losses.focal_loss(z, y, gamma="2")
    with pytest.raises(ValueError, match="logit_adjusted_loss: `tau` must be a finite"):
        losses.logit_adjusted_loss(z, y, COUNTS, tau=np.inf)
    # A traced hyperparameter cannot be checked and is used as given.
    out = jax.jit(lambda g: losses.focal_loss(z, y, gamma=g))(2.0)
    np.testing.assert_allclose(out, losses.focal_loss(z, y, gamma=2.0), rtol=1e-6)


# --- class counts (issue 9 item 14) ----------------------------------------------------------


def test_float_counts_are_accepted_and_only_ratios_matter():
    z, y = _data(2)
    prior = COUNTS / COUNTS.sum()  # float counts: a prior
    for name in ("ldam", "la", "bs", "mse_ol"):
        chex.assert_trees_all_close(
            losses.get(name, class_counts=prior)(z, y),
            losses.get(name, class_counts=COUNTS)(z, y),
            rtol=2e-5,
            atol=2e-5,
            custom_message=name,
        )


def test_class_balanced_weights_refuse_non_integer_counts():
    with pytest.raises(ValueError, match="class_balanced_weights: `class_counts` must be whole"):
        losses.class_balanced_weights([10.5, 3.0])
    with pytest.raises(ValueError, match="must be whole"):
        losses.get("cb_ce", class_counts=COUNTS / COUNTS.sum())
    chex.assert_trees_all_close(
        losses.class_balanced_weights(COUNTS.astype(np.float32)),
        losses.class_balanced_weights(COUNTS),
    )


def test_traced_counts_are_not_checked_inside_jit_use_check_class_counts():
    # Documented limit: a traced class_counts skips the value checks (a negative count gives
    # NaN); cce_jax.labels.check_class_counts finds it under jit with checkify.
    from jax.experimental import checkify

    z, y = _data(3, shape=(4,))
    bad = COUNTS.copy()
    bad[2] = -5

    def step(zz, counts):
        cce_jax.labels.check_class_counts(counts)
        return losses.logit_adjusted_loss(zz, y, counts)

    with pytest.raises(ValueError, match="must be > 0"):
        losses.logit_adjusted_loss(z, y, bad)  # concrete: refused
    out = jax.jit(lambda zz, c: losses.logit_adjusted_loss(zz, y, c))(z, bad)
    assert np.isnan(np.asarray(out)).any()  # traced: the documented NaN
    err, _ = checkify.checkify(jax.jit(step))(z, bad)
    with pytest.raises(checkify.JaxRuntimeError, match="class_counts must be finite and > 0"):
        err.throw()
    err, _ = checkify.checkify(jax.jit(step))(z, COUNTS)
    err.throw()
