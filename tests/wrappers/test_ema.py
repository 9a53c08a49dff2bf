"""param_ema vs torch.optim.swa_utils.AveragedModel (torch 2.13, float64).

Fixture: tests/fixtures/dynamics_ema.npz (tests/gen_dynamics_fixtures.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import fixture_path, pytree_problem


EMA_FIX = np.load(fixture_path("dynamics_ema.npz"))


@pytest.mark.parametrize("name,kwargs", [("ema09", dict(decay=0.9)),
                                         ("swa", dict(mode="uniform"))])
def test_param_ema_matches_torch_averaged_model(name, kwargs):
  seq = EMA_FIX["seq"]
  tx = optzoo.param_ema(**kwargs)
  p = jnp.full(5, 7.0)
  state = tx.init(p)
  step = jax.jit(tx.update)
  got = []
  for t in range(len(seq)):
    u = jnp.asarray(seq[t]) - p  # the optimizer moves params to seq[t]
    u2, state = step(u, state, p)
    np.testing.assert_array_equal(np.asarray(u2), np.asarray(u))
    p = optax.apply_updates(p, u)
    got.append(np.asarray(optzoo.ema_params(state)))
  np.testing.assert_allclose(np.array(got), EMA_FIX[name], rtol=1e-12,
                             atol=1e-12)


def test_param_ema_byol_schedule_and_readout_through_chain():
  total, tau_base = 50, 0.9
  tau = optzoo.byol_tau_schedule(total, tau_base)
  tx = optax.chain(optzoo.sgd(0.1), optzoo.param_ema(tau, copy_first=False))
  params, grad_fn, _ = pytree_problem()
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  target = jax.tree.map(np.asarray, params)  # BYOL: xi_0 = theta_0
  step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p))
  for k in range(60):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
    tk = 1 - (1 - tau_base) * (np.cos(np.pi * min(k, total) / total) + 1) / 2
    target = jax.tree.map(lambda x, th: x + (1 - tk) * (np.asarray(th) - x),
                          target, params)
  got = optzoo.ema_params(state)
  for key in target:
    np.testing.assert_allclose(np.asarray(got[key]), target[key], rtol=1e-12)
  # Readout also works inside inject_hyperparams and raises when absent.
  tx2 = optax.inject_hyperparams(optzoo.param_ema)(decay=0.5)
  s2 = tx2.init(params)
  assert optzoo.ema_params(s2) is not None
  with pytest.raises(ValueError, match="param_ema"):
    optzoo.ema_params(optzoo.sgd(0.1).init(params))


def test_param_ema_needs_params_and_bad_inputs():
  tx = optzoo.param_ema(0.9)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="decay"):
    optzoo.param_ema(1.5)
  with pytest.raises(ValueError, match="mode"):
    optzoo.param_ema(0.9, mode="median")
