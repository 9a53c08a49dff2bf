"""optax 0.2.8 ``optax/_src/transform_test.py``, on optzoo's primitives.

Adapted: ``test_scalers`` runs over optzoo's scaling primitives;
``test_apply_every`` uses ``optzoo.sgd`` / ``optzoo.trace``; ``test_scale``
uses ``optzoo.scale_by_learning_rate(flip_sign=False)``;
``test_rms_match_adam`` is kept as is. Left out (no optzoo equivalent):
centralize, optimistic gradient, lion, polyak.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optax_suite._common import assert_trees_all_close

STEPS = 50
LR = 1e-2

INIT_PARAMS = (jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
PER_STEP_UPDATES = (jnp.array([500.0, 5.0]), jnp.array([300.0, 3.0]))


@pytest.mark.parametrize("scaler_constr", [
    optzoo.scale_by_adam, optzoo.scale_by_rms, optzoo.scale_by_adagrad,
    optzoo.scale_by_nadam, optzoo.rectify, optzoo.scale_by_bounds, optzoo.trace,
], ids=lambda f: f.__name__)
def test_scalers(scaler_constr):
  params = INIT_PARAMS
  scaler = scaler_constr()
  state = jax.jit(scaler.init)(params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
  updates, state = jax.jit(scaler.update)(PER_STEP_UPDATES, state, params)
  assert all(bool(jnp.all(jnp.isfinite(x)))
             for x in jax.tree.leaves((params, updates, state)))
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, updates)


def test_apply_every():
  k = 4
  zero_update = (jnp.array([0.0, 0.0]), jnp.array([0.0, 0.0]))

  sgd_params = INIT_PARAMS
  sgd = optzoo.sgd(LR, 0.0)
  state_sgd = sgd.init(sgd_params)

  sgd_apply_every_params = INIT_PARAMS
  sgd_apply_every = optax.chain(
      optax.apply_every(k=k),
      optzoo.trace(decay=0, nesterov=False),
      optzoo.scale_by_learning_rate(LR),
  )
  state_sgd_apply_every = sgd_apply_every.init(sgd_apply_every_params)
  transform_fn = jax.jit(sgd_apply_every.update)

  for i in range(STEPS):
    updates_sgd, state_sgd = sgd.update(PER_STEP_UPDATES, state_sgd)
    sgd_params = optax.apply_updates(sgd_params, updates_sgd)
    updates_ae, state_sgd_apply_every = transform_fn(
        PER_STEP_UPDATES, state_sgd_apply_every)
    sgd_apply_every_params = optax.apply_updates(sgd_apply_every_params, updates_ae)
    if i % k == k - 1:
      assert_trees_all_close(sgd_apply_every_params, sgd_params, atol=1e-6, rtol=1e-5)
    else:
      assert_trees_all_close(updates_ae, zero_update, atol=0.0, rtol=0.0)


def test_scale():
  updates = PER_STEP_UPDATES
  for i in range(1, STEPS + 1):
    factor = 0.1**i
    rescaler = optzoo.scale_by_learning_rate(factor, flip_sign=False)
    scaled_updates, _ = rescaler.update(updates, rescaler.init(updates))
    manual_updates = jax.tree.map(lambda t: t * factor, updates)  # noqa: B023
    assert_trees_all_close(scaled_updates, manual_updates)


def test_rms_match_adam():
  """scale_by_rms(eps_in_sqrt=False, bias_correction=True) == scale_by_adam(b1=0)."""
  fun = lambda x: optax.tree_utils.tree_norm(x, squared=True)

  rms = optzoo.scale_by_rms(decay=0.999, eps_in_sqrt=False, bias_correction=True)
  rms_params = INIT_PARAMS
  rms_state = rms.init(INIT_PARAMS)
  adam = optzoo.scale_by_adam(b1=0)
  adam_params = INIT_PARAMS
  adam_state = adam.init(INIT_PARAMS)

  for _ in range(5):
    rms_updates, rms_state = rms.update(jax.grad(fun)(rms_params), rms_state)
    rms_params = optax.apply_updates(rms_params, rms_updates)
    adam_updates, adam_state = adam.update(jax.grad(fun)(adam_params), adam_state)
    adam_params = optax.apply_updates(adam_params, adam_updates)

  assert_trees_all_close(adam_params, rms_params)
