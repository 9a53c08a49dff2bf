"""optax 0.2.8 ``optax/transforms/_conditionality_test.py``: ``apply_if_finite``.

``optax.apply_if_finite`` around optzoo's SGD (plain, with momentum 0, and
chained with an extra-args transformation), and the same scenario with
``optzoo.skip_nonfinite`` (optzoo's equivalent; its ``max_consecutive`` is
``apply_if_finite``'s ``max_consecutive_errors`` and ``total_skipped`` its
``total_notfinite``). Left out: ``conditionally_transform`` /
``conditionally_mask`` (optax-only wrappers, nothing optzoo-specific).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optzoo


def _build_sgd():
  return optzoo.sgd(1.0)


def _build_stateful_sgd():
  return optzoo.sgd(1.0, momentum=0.0)


def _build_sgd_extra_args():
  def init_fn(params):
    del params
    return {"foo": jnp.asarray(1)}

  def update_fn(grads, state, params=None, *, foo=None, **extra_args):
    del extra_args, foo, params
    return grads, state

  t = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return optax.chain(_build_sgd(), t)


# (wrapper, name of the total counter, its value at the end of the scenario):
# optax counts the 5 non-finite steps; optzoo counts the 4 *skipped* ones (the
# fifth non-finite step is applied, max_consecutive being reached).
_WRAPPERS = {
    "apply_if_finite": (lambda tx: optax.apply_if_finite(tx, 2), "total_notfinite", 5),
    "skip_nonfinite": (lambda tx: optzoo.skip_nonfinite(tx, 2), "total_skipped", 4),
}


@pytest.mark.parametrize("wrapper", list(_WRAPPERS))
@pytest.mark.parametrize("opt_builder", [_build_sgd, _build_stateful_sgd,
                                         _build_sgd_extra_args],
                         ids=["sgd", "stateful_sgd", "sgd_extra_args"])
def test_apply_if_finite(opt_builder, wrapper):
  wrap, total_name, total = _WRAPPERS[wrapper]
  one = jnp.array(1.0)
  nan = jnp.array(jnp.nan)

  def fn(p, x):
    return p * x

  params = jnp.array(0.0)
  opt = wrap(opt_builder())
  state = opt.init(params)
  grads_fn = jax.grad(jax.jit(fn))
  grads = grads_fn(params, one)
  updates, state = opt.update(grads, state, params)
  params = optax.apply_updates(params, updates)
  assert -1.0 == float(jax.tree.flatten(params)[0][0])
  assert bool(state.last_finite)
  for step in range(2):
    updates, state = opt.update(grads_fn(params, nan), state, params)
    params = optax.apply_updates(params, updates)
    assert -1.0 == float(jax.tree.flatten(params)[0][0])
    assert not bool(state.last_finite)
    assert step + 1 == int(state.notfinite_count)
  updates, state = opt.update(grads_fn(params, one), state, params)
  params = optax.apply_updates(params, updates)
  assert -2.0 == float(jax.tree.flatten(params)[0][0])
  assert bool(state.last_finite)
  for step in range(2):
    updates, state = opt.update(grads_fn(params, nan), state, params)
    params = optax.apply_updates(params, updates)
    assert -2.0 == float(jax.tree.flatten(params)[0][0])
    assert not bool(state.last_finite)
    assert step + 1 == int(state.notfinite_count)
  # Next param update with NaN is accepted since we reached maximum
  updates, state = opt.update(grads_fn(params, nan), state, params)
  params = optax.apply_updates(params, updates)
  assert bool(jnp.isnan(jax.tree.flatten(params)[0][0]))
  assert total == int(getattr(state, total_name))


def test_apply_if_finite_pmap():
  half = jnp.ones([1]) / 2.0
  two = jnp.ones([1]) * 2.0  # Causes a NaN in arctanh

  def fn(p, x):
    return jnp.arctanh(x) * p

  opt = optax.apply_if_finite(optzoo.sgd(1.0), 2)

  def fn_update(params, opt_state, x):
    grads = jax.grad(fn)(params, x)
    grads = jax.lax.psum(grads, axis_name="i")
    updates, new_opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt_state

  fn_update = jax.pmap(fn_update, axis_name="i", devices=jax.devices()[:1])
  params = jnp.array(0.0)
  opt_state = opt.init(params)
  params = jax.tree.map(lambda x: x[None], params)
  opt_state = jax.tree.map(lambda x: x[None], opt_state)
  params, opt_state = fn_update(params, opt_state, half)
  assert bool(opt_state.last_finite)
  for step in range(2):
    params, opt_state = fn_update(params, opt_state, two)
    assert not bool(opt_state.last_finite)
    assert step + 1 == opt_state.notfinite_count.item()
  params, opt_state = fn_update(params, opt_state, half)
  assert bool(opt_state.last_finite)
  for step in range(2):
    params, opt_state = fn_update(params, opt_state, two)
    assert not bool(opt_state.last_finite)
    assert step + 1 == opt_state.notfinite_count.item()
  _, opt_state = fn_update(params, opt_state, two)
  assert 5 == opt_state.total_notfinite.item()
