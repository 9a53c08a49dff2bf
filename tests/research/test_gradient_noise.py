"""Gradient noise (Neelakantan et al., 2015): the annealed variance schedule,
keys and reproducibility, and the wrapper around an inner optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


def test_gradient_noise_variance_schedule():
  eta, gamma, n = 0.3, 0.55, 40_000
  tx = optzoo.add_gradient_noise(eta, gamma, key=3)
  zeros = {"a": jnp.zeros((n // 2,)), "b": jnp.zeros((n // 4, 2))}
  state = tx.init(zeros)
  step = jax.jit(tx.update)
  prev = None
  for t in range(6):
    u, state = step(zeros, state)
    x = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(u)])
    want = eta / (1.0 + t) ** gamma
    # var estimate of N(0, want) from n samples: rel. std sqrt(2/n) ~ 0.7 %.
    assert np.var(x) == pytest.approx(want, rel=0.04)
    assert abs(np.mean(x)) < 5 * np.sqrt(want / n)
    if prev is not None:
      assert not np.allclose(x, prev)  # fresh noise every step
    prev = x
  assert int(state.count) == 6


def test_gradient_noise_keys_and_reproducibility():
  g = {"w": jnp.ones(5), "none": None}
  tx = optzoo.add_gradient_noise(1.0, key=0)
  s = tx.init(g)
  a, s1 = tx.update(g, s)
  b, _ = tx.update(g, s)
  np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
  c, _ = optzoo.add_gradient_noise(1.0, key=1).update(g, s._replace(
      key=jax.random.PRNGKey(1)))
  assert not np.allclose(np.asarray(a["w"]), np.asarray(c["w"]))
  # An explicit `key` extra arg overrides the state key (state key unchanged).
  d, s2 = tx.update(g, s, key=jax.random.PRNGKey(42), unknown_extra=1)
  e, _ = tx.update(g, s._replace(key=jax.random.PRNGKey(7)),
                   key=jax.random.PRNGKey(42))
  np.testing.assert_array_equal(np.asarray(d["w"]), np.asarray(e["w"]))
  np.testing.assert_array_equal(np.asarray(s2.key), np.asarray(s.key))
  assert a["none"] is None
  # eta = 0 is the identity.
  z, _ = optzoo.add_gradient_noise(0.0).update(g, s)
  np.testing.assert_array_equal(np.asarray(z["w"]), 1.0)


def test_gradient_noise_wrapper_chains_inner():
  params = jnp.zeros(4)
  tx = optzoo.gradient_noise(optzoo.sgd(1.0), eta=0.0)
  u, _ = tx.update(jnp.ones(4), tx.init(params), params)
  np.testing.assert_allclose(np.asarray(u), -1.0)
  tx = optzoo.gradient_noise(optzoo.sgd(1.0), eta=1.0)
  u, _ = tx.update(jnp.ones(4), tx.init(params), params)
  assert np.std(np.asarray(u)) > 0
