"""GradInit.

Oracle: a NumPy re-derivation of the official algorithm (zhuchen03/gradinit
``gradinit_utils.gradinit`` + ``RescaleAdam``) for a linear model, where the
scale gradients (including the second-order constraint gradient) are written
by hand from the closed-form loss.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


def _lin_loss(p, batch):
  x, y = batch
  r = x @ p["w"] + p["b"] - y
  return 0.5 * jnp.mean(r**2)


def _oracle(w0, b0, batches, iters, *, eta, gamma, lr, m_min, clip, b1=0.9, b2=0.999,
            eps=1e-8):
  mw = mb = 1.0
  adam = {True: [0, np.zeros(2), np.zeros(2)], False: [0, np.zeros(2), np.zeros(2)]}
  flags, k = [], 0
  for _ in range(iters):
    (xa, ya), (xb, yb), (xc, yc) = batches[k], batches[k + 1], batches[k + 2]
    k += 3
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    n = len(y)
    w, b = mw * w0, mb * b0
    r = x @ w + b - y
    gw, gb = x.T @ r / n, r.mean()
    gn = np.sqrt(gw @ gw + gb**2)
    con = gn > gamma
    if con:   # d||g||/dm, by hand (second order)
      dgw_dmw, dgb_dmw = x.T @ (x @ w0) / n, np.mean(x @ w0)
      dgw_dmb, dgb_dmb = x.T @ np.ones(n) * b0 / n, b0
      grad = np.array([(gb * dgb_dmb + gw @ dgw_dmb) / gn,
                       (gb * dgb_dmw + gw @ dgw_dmw) / gn])   # order (b, w)
    else:     # first order: the step direction g/||g|| is a constant
      w1, b1_ = w - eta * gw / gn, b - eta * gb / gn
      x2, y2 = np.concatenate([xa, xc]), np.concatenate([ya, yc])
      r2 = x2 @ w1 + b1_ - y2
      grad = np.array([r2.mean() * b0, (x2.T @ r2 / len(y2)) @ w0]) / eta
    grad = np.clip(grad, -clip, clip)
    st = adam[con]
    st[0] += 1
    st[1] = b1 * st[1] + (1 - b1) * grad
    st[2] = b2 * st[2] + (1 - b2) * grad**2
    bc1, bc2 = 1 - b1 ** st[0], 1 - b2 ** st[0]
    m = np.array([mb, mw]) - lr / bc1 * st[1] / (np.sqrt(st[2] / bc2) + eps)
    mb, mw = np.maximum(m, m_min)
    flags.append(con)
  return mb, mw, np.array(flags)


def test_gradinit_matches_numpy_reimplementation_of_official_code():
  rng = np.random.default_rng(0)
  d, half, iters = 5, 8, 60
  w_true = rng.normal(size=d)
  batches = []
  for _ in range(3 * iters):
    x = rng.normal(size=(half, d))
    batches.append((x, x @ w_true + 0.3 + 0.1 * rng.normal(size=half)))
  w0, b0 = 3.0 * rng.normal(size=d), 0.7
  kw = dict(eta=0.1, gamma=2.0, m_min=0.01, clip=1.0)
  res = optzoo.gradinit(_lin_loss, {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, batches,
                        num_iters=iters, learning_rate=0.05, **kw)
  mb, mw, flags = _oracle(w0, b0, batches, iters, lr=0.05, **kw)
  np.testing.assert_array_equal(res.history["constraint"], flags)
  assert flags.any() and (~flags).any()         # both branches exercised
  np.testing.assert_allclose(float(res.scales["b"]), mb, rtol=1e-10)
  np.testing.assert_allclose(float(res.scales["w"]), mw, rtol=1e-10)
  np.testing.assert_allclose(res.params["w"], mw * w0, rtol=1e-10)


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for w in (32, 32, 32):
      x = nn.tanh(nn.Dense(w, kernel_init=nn.initializers.normal(0.6))(x))
    return nn.Dense(10, kernel_init=nn.initializers.normal(0.6))(x)


def _digits_batches(n_batches, half=32, seed=0):
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n_batches):
    idx = rng.choice(len(y), half, replace=False)
    out.append((jnp.asarray(x[idx]), jnp.asarray(y[idx])))
  return out


def test_gradinit_lowers_one_step_loss_and_compiles_once():
  model = _MLP()
  calls = {"n": 0}

  def loss_fn(p, batch):
    calls["n"] += 1
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

  batches = _digits_batches(3 * 40, seed=1)
  params = model.init(jax.random.PRNGKey(0), batches[0][0])
  held = _digits_batches(40, seed=2)

  objective = jax.jit(lambda p, b, nb: optzoo.gradinit_objective(loss_fn, p, b, nb, eta=0.1))

  def one_step_loss(p):
    vals = [objective(p, jax.tree.map(
        lambda a, b: jnp.concatenate([a, b]), held[k], held[k + 1]),
        jax.tree.map(lambda a, b: jnp.concatenate([a, b]), held[k], held[k + 2]))
        for k in range(0, 36, 3)]
    return float(np.mean(vals))

  before = one_step_loss(params)
  calls["n"] = 0
  res = optzoo.gradinit(loss_fn, params, iter(batches[:3 * 2]), num_iters=2, learning_rate=0.05,
                        gamma=10.0)
  n_5, calls["n"] = calls["n"], 0
  res = optzoo.gradinit(loss_fn, params, batches, num_iters=40, learning_rate=0.05,
                        gamma=10.0)
  assert calls["n"] == n_5 > 0          # traced once per gradinit call, not per iteration
  after = one_step_loss(res.params)
  assert after < before - 0.05, (before, after)
  scales = np.array(jax.tree.leaves(res.scales))
  assert np.all(scales >= 0.0) and not np.allclose(scales, 1.0)
  assert res.history["loss"].shape == (40,)


def test_gradinit_gradient_norm_constraint_and_options():
  rng = np.random.default_rng(3)
  d = 4
  batches = []
  for _ in range(3 * 40):
    x = rng.normal(size=(8, d))
    batches.append((x, x @ np.ones(d)))
  p0 = {"w": jnp.asarray(10.0 * rng.normal(size=d)), "b": jnp.asarray(0.0)}
  res = optzoo.gradinit(_lin_loss, p0, batches, num_iters=40, gamma=1.0,
                        learning_rate=0.1)
  h = res.history
  assert h["constraint"][0] and h["gnorm"][-1] < h["gnorm"][0] / 3
  assert float(res.scales["b"]) == 1.0        # zero tensor: nothing to rescale
  res_adam = optzoo.gradinit(_lin_loss, p0, batches, num_iters=5, target="adam", gamma=1e9)
  res_2nd = optzoo.gradinit(_lin_loss, p0, batches, num_iters=40, gamma=1e9, second_order=True,
                            clip=0.0)
  res_1st = optzoo.gradinit(_lin_loss, p0, batches, num_iters=40, gamma=1e9, clip=0.0)
  # Differentiating through A[g] changes the path (slightly, on this problem).
  assert abs(float(res_2nd.scales["w"]) - float(res_1st.scales["w"])) > 1e-8
  assert np.isfinite(float(res_adam.scales["w"]))
  with pytest.raises(ValueError, match="ran out"):
    optzoo.gradinit(_lin_loss, p0, iter(batches[:4]), num_iters=2)


def test_gradinit_bad_input():
  p = {"w": jnp.ones(2)}
  for bad, exc in [({"target": "rmsprop"}, ValueError), ({"eta": 0.0}, ValueError),
                   ({"num_iters": 0}, ValueError), ({"learning_rate": -1.0}, ValueError),
                   ({"second_order": "no"}, TypeError)]:
    with pytest.raises(exc, match=list(bad)[0]):
      optzoo.gradinit(_lin_loss, p, [], **bad)
  with pytest.raises(TypeError, match="loss_fn"):
    optzoo.gradinit(None, p, [])
