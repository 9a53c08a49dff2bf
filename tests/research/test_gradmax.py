"""GradMax growth."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


class MLP(nn.Module):
  widths: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for w in self.widths[:-1]:
      x = nn.tanh(nn.Dense(w)(x))
    return nn.Dense(self.widths[-1])(x)


def _setup(seed=0, widths=(8, 6, 4)):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(32, 5)))
  y = jnp.asarray(rng.integers(0, widths[-1], size=32))
  model = MLP(widths)
  params = jax.tree.map(lambda a: a.astype(jnp.float64),
                        model.init(jax.random.PRNGKey(seed), x)["params"])

  def make_loss(m):
    def loss_fn(p, batch):
      xx, yy = batch
      return optax.softmax_cross_entropy_with_integer_labels(
          m.apply({"params": p}, xx), yy).mean()
    return loss_fn

  return model, params, (x, y), make_loss


def test_m_matrix_matches_explicit_backprop():
  model, params, (x, y), make_loss = _setup()
  res = optzoo.gradmax_grow(make_loss(model), params, (x, y), layer="Dense_1",
                            next_layer="Dense_2", k=2)
  # Explicit: h0 = tanh(x W0 + b0) is Dense_1's input, g = dL/dz2 at Dense_2's output.
  p = jax.tree.map(np.asarray, params)
  h0 = np.tanh(np.asarray(x) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  h1 = np.tanh(h0 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
  z2 = h1 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  prob = np.exp(z2 - z2.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  g = (prob - np.eye(4)[np.asarray(y)]) / len(y)
  np.testing.assert_allclose(res.m_matrix, g.T @ h0, rtol=1e-10, atol=1e-15)


def test_growth_keeps_output_and_maximizes_fanin_gradient():
  model, params, batch, make_loss = _setup(seed=1)
  k = 2
  res = optzoo.gradmax_grow(make_loss(model), params, batch, layer="Dense_1",
                            next_layer="Dense_2", k=k, scale=0.5)
  wide = MLP((8, 6 + k, 4))
  out_old = model.apply({"params": params}, batch[0])
  out_new = wide.apply({"params": res.params}, batch[0])
  np.testing.assert_allclose(out_new, out_old, rtol=1e-13, atol=1e-15)
  assert res.params["Dense_1"]["kernel"].shape == (8, 6 + k)
  np.testing.assert_array_equal(res.params["Dense_1"]["kernel"][:, 6:], 0.0)
  # Fan-out norms: scale * mean norm of the existing fan-out rows.
  ref = np.mean(np.linalg.norm(np.asarray(params["Dense_2"]["kernel"]), axis=1))
  np.testing.assert_allclose(np.linalg.norm(res.params["Dense_2"]["kernel"][6:], axis=1),
                             0.5 * ref, rtol=1e-12)

  @jax.jit
  def fanin_grad_norm(new_params):
    g = jax.grad(make_loss(wide))(new_params, batch)
    return jnp.linalg.norm(g["Dense_1"]["kernel"][:, 6:])

  g_max = float(fanin_grad_norm(res.params))
  g_rand = [float(fanin_grad_norm(optzoo.gradmax_grow(
      None, params, None, layer="Dense_1", next_layer="Dense_2", k=k, method="random",
      key=jax.random.PRNGKey(s)).params)) for s in range(20)]
  assert g_max > max(g_rand), (g_max, max(g_rand))
  # It is the optimum: ||U^T M||_F = 0.5 ref sqrt(s1^2 + s2^2).
  s = np.linalg.svd(np.asarray(res.m_matrix), compute_uv=False)
  np.testing.assert_allclose(g_max, 0.5 * ref * np.sqrt(np.sum(s[:k] ** 2)), rtol=1e-10)


def test_optimizer_state_is_padded_and_training_continues():
  model, params, batch, make_loss = _setup(seed=2)
  tx = optax.adam(1e-2)
  state = tx.init(params)
  loss_fn = make_loss(model)
  for _ in range(3):
    g = jax.jit(jax.grad(loss_fn))(params, batch)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  res = optzoo.gradmax_grow(loss_fn, params, batch, layer="Dense_0", next_layer="Dense_1",
                            k=3, opt_state=state)
  mu_of = lambda st: next(x for x in st if hasattr(x, "mu")).mu  # after add_l2
  mu_old, mu_new = mu_of(state), mu_of(res.opt_state)
  assert mu_new["Dense_0"]["kernel"].shape == (5, 11)
  assert mu_new["Dense_1"]["kernel"].shape == (11, 6)
  np.testing.assert_array_equal(mu_new["Dense_0"]["kernel"][:, :8], mu_old["Dense_0"]["kernel"])
  np.testing.assert_array_equal(mu_new["Dense_0"]["kernel"][:, 8:], 0.0)
  assert int(next(x for x in res.opt_state if hasattr(x, "count")).count) == 3
  wide = MLP((11, 6, 4))
  p, s = res.params, res.opt_state
  l0 = float(make_loss(wide)(p, batch))

  @jax.jit
  def step(p, s):
    g = jax.grad(make_loss(wide))(p, batch)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(20):
    p, s = step(p, s)
  assert float(make_loss(wide)(p, batch)) < l0


def test_gradmax_bad_input():
  model, params, batch, make_loss = _setup()
  with pytest.raises(ValueError, match="k"):
    optzoo.gradmax_grow(make_loss(model), params, batch, k=0)
  with pytest.raises(ValueError, match="not a Dense layer"):
    optzoo.gradmax_grow(make_loss(model), params, batch, layer="Dense_9")
  with pytest.raises(ValueError, match="consecutive"):
    optzoo.gradmax_grow(make_loss(model), params, batch, layer="Dense_0",
                        next_layer="Dense_2")
  with pytest.raises(ValueError, match="key"):
    optzoo.gradmax_grow(None, params, None, method="random")
  with pytest.raises(ValueError, match="method"):
    optzoo.gradmax_grow(None, params, None, method="zeros")
  with pytest.raises(ValueError, match="k"):
    optzoo.gradmax_fanout(np.eye(2), 3, 1.0)
