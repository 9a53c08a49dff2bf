"""generic_adam vs a NumPy re-derivation, Reddi et al.'s counterexample and
the convergence condition of Zou et al. (CVPR 2019)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


def np_generic_adam(grads, alpha, b1, theta, s, r, eps):
  m = v = 0.0
  x, xs = 0.0, []
  for t, g in enumerate(grads, start=1):
    a_t = alpha / t**s
    th = 1 - theta / t**r
    m = b1 * m + (1 - b1) * g
    v = th * v + (1 - th) * g * g
    x = x - a_t * m / np.sqrt(v + eps)
    xs.append(x)
  return np.array(xs)


def test_generic_adam_matches_numpy():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=300)
  tx = optzoo.generic_adam(0.1, 0.9, 0.01, eps=1e-8, s=0.5, r=1.0)
  state = tx.init(jnp.zeros(()))
  x, xs = jnp.zeros(()), []
  step = jax.jit(tx.update)
  for g in grads:
    u, state = step(jnp.asarray(g), state)
    x = x + u
    xs.append(float(x))
  np.testing.assert_allclose(xs, np_generic_adam(grads, 0.1, 0.9, 0.01, 0.5,
                                                 1.0, 1e-8), rtol=1e-10)


def _online_run(tx, grad_of_t, steps):
  """Projected online optimisation on [-1, 1] (Reddi et al.)."""

  def body(carry, t):
    x, s = carry
    u, s = tx.update(grad_of_t(t + 1), s, x)
    return (jnp.clip(x + u, -1.0, 1.0), s), None

  x0 = jnp.zeros(())
  (x, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(steps)))(
      (x0, tx.init(x0)))
  return float(x)


def test_reddi_counterexample_synthetic():
  # f_t(x) = 1010 x if t mod 101 == 1 else -10 x, beta1 = 0.9, alpha/sqrt(t).
  grad = lambda t: jnp.where(t % 101 == 1, 1010.0, -10.0)
  adam = optzoo.generic_adam(0.1, 0.9, theta=0.01, r=0.0)  # beta2 = 0.99
  good = optzoo.generic_adam(0.1, 0.9, theta=0.001, r=1.0)
  assert _online_run(adam, grad, 200_000) > 0.99  # wrong way: the worst point
  assert _online_run(good, grad, 200_000) < -0.99  # the optimum
  assert not optzoo.generic_adam_condition(0.1, 0.9, 0.01, r=0.0).holds
  rep = optzoo.generic_adam_condition(0.1, 0.9, 0.001, r=1.0)
  assert rep.holds and rep.rate == "O(log T / T^0.5)"


def test_reddi_counterexample_deterministic_amsgrad():
  # f_t(x) = 3x if t mod 3 == 1 else -x, beta1 = 0, beta2 = 1/(1+C^2) = 0.1.
  grad = lambda t: jnp.where(t % 3 == 1, 3.0, -1.0)
  lr = lambda i: 0.1 / jnp.sqrt(i + 1.0)
  steps = 60_000
  assert _online_run(optzoo.adam(lr, b1=0.0, b2=0.1), grad, steps) > 0.99
  assert _online_run(optzoo.generic_adam(0.1, 0.0, theta=0.9, r=0.0), grad,
                     steps) > 0.99
  assert _online_run(optzoo.amsgrad(lr, b1=0.0, b2=0.1), grad, steps) < -0.99
  assert _online_run(optzoo.generic_adam(0.1, 0.0, theta=0.9, r=1.0), grad,
                     steps) < -0.99
  assert optzoo.generic_adam_condition(0.1, 0.0, 0.9, r=1.0,
                                       num_steps=steps).holds


def test_generic_adam_condition_clauses():
  rep = optzoo.generic_adam_condition(0.1, 0.9, 0.01, r=0.0, num_steps=10_000)
  assert rep.momentum_bounded and rep.theta_valid and rep.gamma_below_one
  assert rep.chi_almost_nonincreasing and not rep.ratio_vanishes
  assert "FAIL" in str(rep)
  # theta_t = 1 - 1/t starts at 0: clause (b) fails.
  assert not optzoo.generic_adam_condition(0.1, 0.9, 1.0, r=1.0).theta_valid
  # beta1^2 / theta_1 >= 1 fails the gamma clause.
  assert not optzoo.generic_adam_condition(0.1, 0.95, 0.2,
                                           r=1.0).gamma_below_one
  # Growing step sizes fail (c).
  grow = optzoo.generic_adam_condition(lambda i: 0.1 * (i + 1.0), 0.9, 0.001,
                                       s=0.5, r=1.0, num_steps=1000)
  assert not grow.chi_almost_nonincreasing and grow.rate is None
  # A decaying beta1 schedule within bounds passes (a).
  dec = optzoo.generic_adam_condition(0.1, lambda i: 0.9 / (i + 1.0), 0.001)
  assert dec.momentum_bounded and dec.holds
  with pytest.raises(ValueError, match="num_steps"):
    optzoo.generic_adam_condition(num_steps=3)


@pytest.mark.parametrize("kw,name", [(dict(b1=1.0), "b1"),
                                     (dict(theta=0.0), "theta"),
                                     (dict(s=-1.0), "s"),
                                     (dict(learning_rate=-1.0),
                                      "learning_rate")])
def test_generic_adam_bad_input(kw, name):
  with pytest.raises(ValueError, match=name):
    optzoo.generic_adam(**kw)
