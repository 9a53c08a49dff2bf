"""optax 0.2.8 ``optax/schedules/_inject_test.py``, on optzoo's primitives.

``optax.inject_hyperparams`` wrapping optzoo factories (``scale_by_adam``,
``trace``, ``scale_by_learning_rate``). Left out: the tests of optax's own
stateful-schedule classes and of inject_hyperparams' argument checking on
optax.scale (nothing optzoo-specific), and the PRNG-key test (optzoo's
``key`` hyperparameters are covered by the registry-wide test in
test_inject_registry.py). Added: bf16 hyperparameters outside ``jit``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optax_suite._common import assert_trees_all_close


def test_updates():
  optim = optax.inject_hyperparams(optzoo.scale_by_learning_rate)(
      learning_rate=optax.piecewise_constant_schedule(3.0, {1: 5, 7: 2, 12: 1.5}),
      flip_sign=False)
  params = [jnp.zeros([], dtype=jnp.float32)]
  state = jax.jit(optim.init)(params)
  state = optax.tree_map_params(optim, lambda v: v, state)
  update_fn = jax.jit(optim.update)
  expected_step_size = [3.0] * 2 + [15.0] * 6 + [30.0] * 5 + [45.0] * 3
  grads = [jnp.ones([], dtype=jnp.float32)]
  for i in range(15):
    updates, state = update_fn(grads, state, params=params)
    np.testing.assert_almost_equal(updates[0], expected_step_size[i + 1])


def test_hyperparams_state():
  optim = optax.inject_hyperparams(optzoo.trace)(
      decay=optax.piecewise_constant_schedule(0.8, {3: 0.5, 9: 1.25}),
      nesterov=True)
  params = [jnp.zeros([2, 3]) for _ in range(3)]
  state = jax.jit(optim.init)(params)
  update_fn = jax.jit(optim.update)
  expected_mom = [0.8] * 4 + [0.4] * 6 + [0.5] * 2
  grads = jax.tree.map(jnp.ones_like, params)
  for i in range(12):
    np.testing.assert_almost_equal(state.hyperparams["decay"], expected_mom[i])
    _, state = update_fn(grads, state)
  np.testing.assert_almost_equal(state.hyperparams["decay"], expected_mom[-1])


def test_constant_hyperparams():
  optim = optax.inject_hyperparams(optzoo.scale_by_adam)(b1=0.0, b2=0.0)
  params = [jnp.zeros([2, 3]) for _ in range(3)]
  state = jax.jit(optim.init)(params)
  update_fn = jax.jit(optim.update)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(5):
    updates, state = update_fn(grads, state, params)
    np.testing.assert_almost_equal(state.hyperparams["b1"], 0.0)
    np.testing.assert_almost_equal(state.hyperparams["b2"], 0.0)
    np.testing.assert_almost_equal(state.hyperparams["eps"], 1e-8)
    np.testing.assert_almost_equal(state.hyperparams["eps_root"], 0.0)
    assert "eps" in state.hyperparams
    assert_trees_all_close(updates, grads)


@pytest.mark.parametrize("static_args", ["b1", ["b1", "b2"]])
def test_numeric_static_args(static_args):
  optim = optax.inject_hyperparams(optzoo.scale_by_adam, static_args=static_args)(
      b1=0.9, b2=0.95)
  params = [jnp.ones((1, 2)), jnp.ones(2), jnp.ones((1, 1, 1))]
  state = jax.jit(optim.init)(params)
  _, state = jax.jit(optim.update)(params, state)
  static = {static_args} if isinstance(static_args, str) else set(static_args)
  assert not set(state.hyperparams.keys()).intersection(static)


@pytest.mark.parametrize("hyperparam_dtype,param_dtype,grad_dtype", [
    (jnp.bfloat16, jnp.float32, jnp.bfloat16),
    (jnp.bfloat16, jnp.float32, jnp.float32),
    (jnp.float32, jnp.bfloat16, jnp.bfloat16),
    (jnp.float32, jnp.float32, jnp.bfloat16),
    (jnp.float32, jnp.bfloat16, jnp.float32),
])
def test_hyperparam_dtypes(hyperparam_dtype, param_dtype, grad_dtype):
  optim = optax.inject_hyperparams(
      optzoo.scale_by_adam, hyperparam_dtype=hyperparam_dtype)(b1=0.9, b2=0.95)
  params = [jnp.ones((1, 2), dtype=param_dtype), jnp.ones(2, dtype=param_dtype),
            jnp.ones((1, 1, 1), dtype=param_dtype)]
  grads = jax.tree.map(lambda x: x.astype(grad_dtype), params)
  state = jax.jit(optim.init)(params)
  assert state.hyperparams["b1"].dtype == hyperparam_dtype
  assert state.hyperparams["b2"].dtype == hyperparam_dtype
  _, state = jax.jit(optim.update)(grads, state)
  assert state.hyperparams["b1"].dtype == hyperparam_dtype
  assert state.hyperparams["b2"].dtype == hyperparam_dtype


@pytest.mark.parametrize("param_dtype", [jnp.bfloat16, jnp.float32])
def test_hyperparam_default_dtype(param_dtype):
  params = [jnp.ones((1, 2), dtype=param_dtype), jnp.ones(2, dtype=param_dtype)]
  optim = optax.inject_hyperparams(optzoo.scale_by_adam)(b1=0.9, b2=0.95)
  state = jax.jit(optim.init)(params)
  assert state.hyperparams["b1"].dtype == param_dtype
  assert state.hyperparams["b2"].dtype == param_dtype
  optim = optax.inject_hyperparams(optzoo.scale_by_adam)(
      b1=jnp.asarray(0.9), b2=jnp.asarray(0.95))
  state = jax.jit(optim.init)(params)
  assert state.hyperparams["b1"].dtype == param_dtype
  assert state.hyperparams["b2"].dtype == param_dtype
  optim = optax.inject_hyperparams(optzoo.scale_by_adam)(
      b1=jnp.array(0.9, dtype=jnp.float32), b2=jnp.asarray(0.95, dtype=jnp.bfloat16))
  state = jax.jit(optim.init)(params)
  assert state.hyperparams["b1"].dtype == jnp.float32
  assert state.hyperparams["b2"].dtype == jnp.bfloat16


def test_inject_hyperparams_starts_with_step_count_zero():
  opt = optax.inject_hyperparams(optzoo.scale_by_learning_rate)(lambda count: count)
  params = jnp.zeros(3)
  grads = jnp.array([-1.0, 0.0, 1.0])
  updates, _ = jax.jit(opt.update)(grads, opt.init(params))
  np.testing.assert_array_equal(updates, np.zeros(3))


@pytest.mark.parametrize("static_args", ["mask", ["mask"]])
def test_static_args(static_args):
  @functools.partial(optax.inject_hyperparams, static_args=static_args)
  def custom_optim(learning_rate, mask):
    return optax.masked(optzoo.scale_by_learning_rate(learning_rate), mask)

  optim = custom_optim(0.1, functools.partial(jax.tree.map, lambda x: x.ndim > 1))
  params = [jnp.ones((1, 2)), jnp.ones(2), jnp.ones((1, 1, 1))]
  state = jax.jit(optim.init)(params)
  updates, state = jax.jit(optim.update)(params, state)
  expected = jax.tree.map(lambda x: -0.1 * x if x.ndim > 1 else x, params)
  assert set(state.hyperparams.keys()) == {"learning_rate"}, state.hyperparams
  assert_trees_all_close(updates, expected)


# --- added: low-precision hyperparameters outside jit -----------------------


def test_bf16_hyperparameters_are_accepted():
  """A bf16 learning rate / beta is a real number (numpy says kind 'V')."""
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  for tx in (optzoo.adam(bf(1e-3)), optzoo.adam(1e-3, b1=bf(0.9), b2=bf(0.99)),
             optzoo.sgd(bf(0.1), momentum=bf(0.9)), optzoo.rmsprop(bf(1e-2))):
    state = tx.init(params)
    updates, _ = tx.update(params, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(updates["w"])))


def test_inject_with_bf16_params_runs_outside_jit():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  opt = optax.inject_hyperparams(optzoo.adam)(1e-3, b2=0.99)
  state = opt.init(params)
  updates, state = opt.update(params, state, params)
  assert state.hyperparams["learning_rate"].dtype == jnp.bfloat16
  assert updates["w"].dtype == jnp.bfloat16


def test_bf16_rounding_to_one_is_a_clear_error():
  """b2 = 0.999 rounds to 1.0 in bfloat16: say so instead of a silent no-op."""
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  opt = optax.inject_hyperparams(optzoo.adam)(1e-3)
  with pytest.raises(ValueError, match="bfloat16"):
    opt.init(params)
  # The fix the message suggests works.
  opt = optax.inject_hyperparams(optzoo.adam, hyperparam_dtype=jnp.float32)(1e-3)
  state = opt.init(params)
  updates, _ = opt.update(params, state, params)
  assert updates["w"].dtype == jnp.bfloat16
