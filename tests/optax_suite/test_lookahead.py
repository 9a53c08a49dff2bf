"""optax 0.2.8 ``optax/_src/lookahead_test.py``, on ``optzoo.lookahead``.

Adapted: optzoo's Lookahead trains ordinary params (no ``LookaheadParams``):
the slow weights live in the state (``optzoo.lookahead_slow_params``) and,
right after a sync, the params equal them. So where optax checks
``final_params.slow`` this checks both the slow weights and the params.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optax_suite._common import assert_trees_all_close


class OptimizerTestState(NamedTuple):
  aggregate_grads: optax.Params
  is_reset: bool = True


def _test_optimizer(step_size: float) -> optax.GradientTransformation:
  def init_fn(params):
    return OptimizerTestState(jax.tree.map(jnp.zeros_like, params), is_reset=True)

  def update_fn(updates, state, params):
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    aggregate_grads = optax.apply_updates(state.aggregate_grads, updates)
    updates = jax.tree.map(lambda u: step_size * u, updates)
    return updates, OptimizerTestState(aggregate_grads, is_reset=False)

  return optax.GradientTransformation(init_fn, update_fn)


GRADS = {"x": np.array(2.0), "y": np.array(-2.0)}
INITIAL_PARAMS = {"x": np.array(3.0), "y": np.array(-3.0)}


def loop(optimizer, num_steps, params):
  init_fn, update_fn = optimizer.init, optimizer.update
  step = jax.jit(update_fn)
  opt_state = jax.jit(init_fn)(params)
  opt_state = optax.tree_map_params(init_fn, lambda v: v, opt_state)
  for _ in range(num_steps):
    updates, opt_state = step(GRADS, opt_state, params)
    params = optax.apply_updates(params, updates)
  return params, opt_state


def test_lookahead():
  sync_period = 3
  optimizer = optzoo.lookahead(_test_optimizer(-0.5), sync_period=sync_period,
                               slow_step_size=1 / 3)
  final_params, state = loop(optimizer, 2 * sync_period, INITIAL_PARAMS)
  # x steps must be: 3 -> 2 -> 1 -> 2 (sync) -> 1 -> 0 -> 1 (sync).
  correct_final_params = {"x": 1, "y": -1}
  assert_trees_all_close(optzoo.lookahead_slow_params(state),
                         jax.tree.map(jnp.asarray, correct_final_params), atol=1e-6)
  assert_trees_all_close(final_params, jax.tree.map(jnp.asarray, correct_final_params),
                         atol=1e-6)


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_state_reset(reset_state):
  num_steps = sync_period = 3
  fast_optimizer = _test_optimizer(-0.5)
  optimizer = optzoo.lookahead(fast_optimizer, sync_period=sync_period,
                               slow_step_size=0.5, reset_state=reset_state)
  _, opt_state = loop(optimizer, num_steps, INITIAL_PARAMS)
  opt_state = optax.tree_map_params(optimizer, lambda v: v, opt_state)
  fast_state = opt_state.inner_state
  if reset_state:
    correct_state = fast_optimizer.init(INITIAL_PARAMS)
  else:
    _, correct_state = loop(fast_optimizer, num_steps, INITIAL_PARAMS)
  assert_trees_all_close(fast_state, jax.tree.map(jnp.asarray, correct_state))


@pytest.mark.parametrize("sync_period,slow_step_size,correct_result", [
    [1, 0.5, {"x": np.array(1.), "y": np.array(-1.)}],
    [1, 0, {"x": np.array(3.), "y": np.array(-3.)}],
    [1, 1, {"x": np.array(-1.), "y": np.array(1.)}],
    [2, 1, {"x": np.array(-1.), "y": np.array(1.)}]])
def test_lookahead_edge_cases(sync_period, slow_step_size, correct_result):
  optimizer = optzoo.lookahead(_test_optimizer(-1), sync_period, slow_step_size)
  final_params, state = loop(optimizer, num_steps=2, params=INITIAL_PARAMS)
  assert_trees_all_close(optzoo.lookahead_slow_params(state),
                         jax.tree.map(jnp.asarray, correct_result))
