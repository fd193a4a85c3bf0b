"""Tests of cce_jax.losses against numpy references written from the formulas."""

import functools
import subprocess
import sys

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
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
  w = (1 - beta) / (1 - beta ** counts)
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
    "ce_weighted": (functools.partial(losses.cross_entropy, class_weights=W),
                    functools.partial(ref_ce, w=W)),
    "complement_entropy": (losses.complement_entropy, ref_hc),
    "cce_paper": (losses.complement_cross_entropy, ref_cce),
    "cce_code": (functools.partial(losses.complement_cross_entropy, gamma=1.0, normalizer="k"),
                 functools.partial(ref_cce, gamma=1.0, normalizer="k")),
    "cce_gamma3": (functools.partial(losses.complement_cross_entropy, gamma=-3.0),
                   functools.partial(ref_cce, gamma=-3.0)),
    "mse_ol": (functools.partial(losses.mse_outlying_loss, class_counts=COUNTS, alpha=5.0),
               functools.partial(ref_mse, counts=COUNTS, alpha=5.0)),
    "mse_ol_reversed": (functools.partial(losses.mse_outlying_loss, class_counts=COUNTS,
                                          order="frequent_largest"),
                        functools.partial(ref_mse, counts=COUNTS, order="frequent_largest")),
    "focal": (losses.focal_loss, ref_focal),
    "focal_weighted_g05": (functools.partial(losses.focal_loss, gamma=0.5, class_weights=W),
                           functools.partial(ref_focal, gamma=0.5, w=W)),
    "ldam": (functools.partial(losses.ldam_loss, class_counts=COUNTS, scale=3.0),
             functools.partial(ref_ldam, counts=COUNTS, scale=3.0)),
    "ldam_drw": (functools.partial(losses.ldam_loss, class_counts=COUNTS, class_weights=W),
                 functools.partial(ref_ldam, counts=COUNTS, w=W)),
    "la": (functools.partial(losses.logit_adjusted_loss, class_counts=COUNTS, tau=1.5),
           functools.partial(ref_la, counts=COUNTS, tau=1.5)),
    "bs": (functools.partial(losses.balanced_softmax_loss, class_counts=COUNTS),
           functools.partial(ref_bs, counts=COUNTS)),
}
# Every registry name, with its hyperparameters, for the generic API tests.
REGISTRY_CASES = {
    "ce": {}, "focal": {"gamma": 2.0}, "cb_ce": {"beta": 0.999}, "cb_focal": {"beta": 0.999},
    "ldam": {}, "la": {"tau": 1.0}, "bs": {}, "cce": {"gamma": -1.0}, "mse_ol": {"alpha": 5.0},
}


def _data(seed=0, shape=(16,), scale=3.0, k=K):
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=shape + (k,)) * scale).astype(np.float32)
  y = rng.integers(0, k, size=shape).astype(np.int32)
  return z, y


def _registry_fn(name):
  return losses.get(name, class_counts=COUNTS, **REGISTRY_CASES[name])


# --- values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(case, seed):
  fn, ref = CASES[case]
  z, y = _data(seed)
  np.testing.assert_allclose(fn(z, y), ref(z, y), rtol=2e-5, atol=2e-5)


def test_registry_matches_functions():
  z, y = _data(3)
  cb = ref_cb(COUNTS, beta=0.999)
  expected = {
      "ce": ref_ce(z, y), "focal": ref_focal(z, y), "cb_ce": ref_ce(z, y, w=cb),
      "cb_focal": ref_focal(z, y, w=cb), "ldam": ref_ldam(z, y, COUNTS),
      "la": ref_la(z, y, COUNTS), "bs": ref_bs(z, y, COUNTS), "cce": ref_cce(z, y),
      "mse_ol": ref_mse(z, y, counts=COUNTS, alpha=5.0),
  }
  assert set(expected) == set(losses.NAMES)
  for name, want in expected.items():
    np.testing.assert_allclose(_registry_fn(name)(z, y), want, rtol=5e-5, atol=5e-5,
                               err_msg=name)


def test_class_balanced_weights_reference():
  for beta in (0.0, 0.9, 0.999, 0.9999):
    got = losses.class_balanced_weights(COUNTS, beta=beta)
    np.testing.assert_allclose(got, ref_cb(COUNTS, beta), rtol=1e-5)
    np.testing.assert_allclose(np.sum(got), K, rtol=1e-5)
  # beta -> 1 approaches inverse frequency.
  inv = 1 / COUNTS / np.sum(1 / COUNTS) * K
  np.testing.assert_allclose(losses.class_balanced_weights(COUNTS, beta=1 - 1e-7), inv,
                             rtol=2e-2)


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


@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_where_equals_slicing_and_masked_grads_are_zero(name):
  fn = _registry_fn(name)
  z, y = _data(4, shape=(12,))
  where = np.arange(12) % 3 != 0
  z_bad = z.copy()
  z_bad[~where] = np.nan  # masked entries must not leak NaN
  out = fn(z_bad, y, where=jnp.asarray(where))
  np.testing.assert_allclose(out[where], fn(z[where], y[where]), rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(out)[~where] == 0)
  g = jax.grad(lambda zz: jnp.sum(fn(zz, y, where=jnp.asarray(where))))(jnp.asarray(z_bad))
  assert np.all(np.asarray(g)[~where] == 0) and np.all(np.isfinite(g))
  g_sliced = jax.grad(lambda zz: jnp.sum(fn(zz, y[where])))(jnp.asarray(z[where]))
  np.testing.assert_allclose(np.asarray(g)[where], g_sliced, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_out_of_range_labels_count_as_masked(name):
  fn = _registry_fn(name)
  z, y = _data(6, shape=(5,))
  y_bad = y.copy()
  y_bad[[1, 3]] = [255, -1]
  keep = np.array([True, False, True, False, True])
  np.testing.assert_allclose(fn(z, y_bad), fn(z, y, where=jnp.asarray(keep)), atol=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_axis_equals_moveaxis_and_leading_axes(case):
  fn, _ = CASES[case]
  z, y = _data(8, shape=(2, 5, 3))          # segmentation-like [B, H, W, K]
  flat = fn(z.reshape(-1, K), y.reshape(-1))
  np.testing.assert_allclose(fn(z, y), flat.reshape(y.shape), rtol=1e-6, atol=1e-6)
  z_first = np.moveaxis(z, -1, 1)          # [B, K, H, W], PyTorch layout
  np.testing.assert_allclose(fn(z_first, y, axis=1), fn(z, y), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fn(z_first, y, axis=-3), fn(z, y), rtol=1e-6, atol=1e-6)


# --- numerics --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_extreme_logits_are_finite(name, dtype):
  fn = _registry_fn(name)
  scales = (30.0, 1e4)  # 30: where the public PyTorch versions already return NaN
  value_and_grad = jax.jit(jax.value_and_grad(lambda zz, yy: jnp.mean(fn(zz, yy))))
  rng = np.random.default_rng(0)
  y = rng.integers(0, K, size=64).astype(np.int32)
  for scale in scales:
    for kind in ("confident_correct", "confident_wrong", "random", "ties"):
      z = rng.normal(size=(64, K))
      if kind == "confident_correct":
        z = np.zeros((64, K))
        z[np.arange(64), y] = 1.0
      elif kind == "confident_wrong":
        z = np.zeros((64, K))
        z[np.arange(64), (y + 1) % K] = 1.0
      elif kind == "ties":
        z = np.ones((64, K))
      z = jnp.asarray(z * scale, dtype)
      loss, grad = value_and_grad(z, y)
      assert loss.dtype == jnp.float32
      assert grad.dtype == dtype
      assert np.isfinite(float(loss)), (name, kind, scale, dtype)
      assert np.all(np.isfinite(np.asarray(grad, np.float32))), (name, kind, scale, dtype)


def test_complement_entropy_confident_prediction_is_accurate():
  # Where the public code's p / (1 - p_g) overflows (p_g rounds to 1 in float32), the
  # log-space form still gives the exact complement entropy of the wrong-class logits.
  wrong = np.array([0.3, -0.2, 1.0])
  z = np.concatenate([[200.0], wrong])[None].astype(np.float32)
  q = _softmax(wrong)
  np.testing.assert_allclose(losses.complement_entropy(z, np.array([0])),
                             [-np.sum(q * np.log(q))], rtol=1e-6)


def test_bfloat16_matches_float32_on_moderate_logits():
  z, y = _data(9)
  for name in REGISTRY_CASES:
    fn = _registry_fn(name)
    z16 = jnp.asarray(z, jnp.bfloat16)
    np.testing.assert_allclose(fn(z16, y), fn(np.asarray(z16, np.float32), y), rtol=1e-6,
                               err_msg=name)


# --- properties ------------------------------------------------------------------------------

logit_arrays = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)),
                          elements=st.floats(-50, 50, width=32))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(z=logit_arrays, data=st.data())
def test_complement_entropy_bounds(z, data):
  k = z.shape[-1]
  y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=z.shape[0],
                                  max_size=z.shape[0])), np.int32)
  h = np.asarray(losses.complement_entropy(z, y))
  assert np.all(h >= -1e-6) and np.all(h <= np.log(k - 1) + 1e-5)
  # Equality at a uniform wrong-class distribution, whatever the true logit.
  zu = np.full_like(z, data.draw(st.floats(-50, 50, width=32)))
  zu[np.arange(len(y)), y] = z[np.arange(len(y)), y]
  np.testing.assert_allclose(losses.complement_entropy(zu, y), np.log(k - 1), rtol=1e-5,
                             atol=1e-6)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(z=logit_arrays, seed=st.integers(0, 2 ** 16),
                  count=st.integers(1, 10 ** 6))
def test_reductions_to_cross_entropy(z, seed, count):
  k = z.shape[-1]
  y = np.random.default_rng(seed).integers(0, k, size=z.shape[0]).astype(np.int32)
  ce = np.asarray(losses.cross_entropy(z, y))
  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(losses.complement_cross_entropy(z, y, gamma=0.0), ce, **tol)
  np.testing.assert_allclose(losses.focal_loss(z, y, gamma=0.0), ce, **tol)
  equal = np.full(k, count)
  np.testing.assert_allclose(losses.logit_adjusted_loss(z, y, equal), ce, **tol)
  np.testing.assert_allclose(losses.balanced_softmax_loss(z, y, equal), ce, **tol)
  np.testing.assert_allclose(losses.ldam_loss(z, y, np.arange(1, k + 1), max_margin=0.0,
                                              scale=1.0), ce, **tol)
  np.testing.assert_allclose(losses.cross_entropy(z, y, class_weights=np.ones(k)), ce, **tol)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(z=logit_arrays, seed=st.integers(0, 2 ** 16))
def test_la_and_bs_agree(z, seed):
  k = z.shape[-1]
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, size=z.shape[0]).astype(np.int32)
  counts = rng.integers(1, 5000, size=k)
  np.testing.assert_allclose(losses.logit_adjusted_loss(z, y, counts, tau=1.0),
                             losses.balanced_softmax_loss(z, y, counts), rtol=1e-5, atol=1e-5)


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
  with pytest.raises(ValueError, match="`normalizer` must be one of"):
    losses.complement_cross_entropy(z, y, normalizer="n")
  with pytest.raises(ValueError, match="at least 2 classes"):
    losses.complement_entropy(z[:, :1], np.zeros(len(y), np.int32))
  with pytest.raises(ValueError, match="`beta` must be in"):
    losses.class_balanced_weights(COUNTS, beta=1.0)
  with pytest.raises(ValueError, match="unknown loss 'nope'; known losses: ce, focal"):
    losses.get("nope")
  with pytest.raises(ValueError, match="needs `class_counts`"):
    losses.get("mse_ol")
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['gama'\]"):
    losses.get("cce", gamma=1.0, gama=2.0)
  with pytest.raises(ValueError, match="must be > 0"):
    losses.get("la", class_counts=[3, 0, 2])
  with pytest.raises(ValueError, match="`axis`=3 is out of range"):
    losses.cross_entropy(z, y, axis=3)


def test_import_is_light():
  code = ("import sys, cce_jax, cce_jax.losses, cce_jax.labels; "
          "bad = [m for m in ('tensorflow', 'flax', 'tensorflow_datasets') if m in sys.modules]; "
          "print(bad); sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  assert cce_jax.losses is losses
