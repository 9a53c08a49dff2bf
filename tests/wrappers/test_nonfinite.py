"""Non-finite gradients and losses never corrupt params or state.

For every registered transformation:

* under ``optax.apply_if_finite`` a NaN / Inf gradient gives a zero update and
  leaves the inner state bit-identical, and the run then continues exactly
  like a run that never saw the bad step;
* the same with ``optzoo.skip_nonfinite``, which also skips a non-finite
  ``value`` (loss) for the methods that take one;
* methods that take a loss (``value``) keep a finite state and give finite
  updates when the loss itself is NaN/Inf, even without a wrapper.

Plus unit tests of ``skip_nonfinite`` (counters, give-up rule, dtypes, jit).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
import helpers
from test_registry_validation import (assert_trees_equal, build, ids,
                                      make_step, problem, transformation_infos)

_TRANSFORMS = transformation_infos()
_WITH_VALUE = [i for i in _TRANSFORMS if "value" in i.extra_args]


def _poison(tree, bad):
  """Puts ``bad`` into the first entry of the first non-empty leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  for k, x in enumerate(leaves):
    if x.size:
      leaves[k] = x.reshape(-1).at[0].set(bad).reshape(x.shape)
      break
  return jax.tree.unflatten(treedef, leaves)


_G = (0.0, 0.0, 0.0)  # a good step; otherwise NaN/Inf added to grad / value / value_sq


def _runs(info, wrap, schedule, **overrides):
  """Runs ``schedule`` (a list of (gbad, vbad, sqbad) per step) and the same run with
  the bad steps removed, with one compiled step. Returns both records."""
  tx = wrap(build(info, **overrides))
  params0, pel, targets = problem()
  step = make_step(info, tx, pel, targets)

  def go(sched):
    params, state = params0, tx.init(params0)
    records, i_good = [], 0
    for bads in sched:
      is_bad = bads != _G
      new_params, new_state, u = step(params, state, i_good, *bads)
      records.append((state, u, new_state, is_bad))
      params, state = new_params, new_state
      i_good += 0 if is_bad else 1
    return records, params, state

  bad = go(schedule)
  good = go([s for s in schedule if s == _G])
  return bad, good


def _check_skip(records, inner_state_of):
  for state, u, new_state, is_bad in records:
    if is_bad:
      for leaf in jax.tree.leaves(u):
        np.testing.assert_array_equal(np.asarray(leaf), 0)
      assert_trees_equal(inner_state_of(state), inner_state_of(new_state),
                         "inner state changed on a skipped step")


def test_check_skip_can_fail():
  """Negative control: without a wrapper a NaN gradient does corrupt Adam."""
  info = optzoo.get_info("adam")
  (records, _, _), _ = _runs(info, lambda tx: tx, [_G, (np.nan, 0, 0), _G])
  with pytest.raises(AssertionError):
    _check_skip(records, lambda s: s)


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_apply_if_finite_skips_nonfinite_grads(info):
  wrap = lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=3)
  sched = [_G, _G, (np.nan, 0, 0), (np.inf, 0, 0), (-np.inf, 0, 0), _G, _G]
  (records, params, state), (_, ref_params, ref_state) = _runs(info, wrap, sched)
  _check_skip(records, lambda s: s.inner_state)
  assert int(state.total_notfinite) == 3
  assert_trees_equal(params, ref_params, "params after resuming")
  assert_trees_equal(state.inner_state, ref_state.inner_state, "state after resuming")


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_skip_nonfinite_skips_nonfinite_grads_and_values(info):
  wrap = optzoo.skip_nonfinite
  sched = [_G, _G, (np.nan, 0, 0), (np.inf, 0, 0), _G]
  if "value" in info.extra_args:
    sched += [(0, np.nan, 0), (0, np.inf, 0)]
  if "value_sq" in info.extra_args:
    sched += [(0, 0, np.nan)]
  sched += [_G]
  (records, params, state), (_, ref_params, ref_state) = _runs(info, wrap, sched)
  _check_skip(records, lambda s: s.inner_state)
  n_bad = sum(1 for s in sched if s != _G)
  assert int(state.total_skipped) == n_bad and int(state.notfinite_count) == 0
  assert_trees_equal(params, ref_params, "params after resuming")
  assert_trees_equal(state.inner_state, ref_state.inner_state, "state after resuming")


# Variants worth covering besides the registry example.
_VARIANTS = {"koala": [{}, {"variant": "momentum"}]}


def _loss_cases():
  out = []
  for info in _WITH_VALUE:
    for ov in _VARIANTS.get(info.name, [{}]):
      for arg in [a for a in ("value", "value_sq") if a in info.extra_args]:
        for bad in ("nan", "inf"):
          label = "".join(f"-{k}={v}" for k, v in ov.items())
          out.append(pytest.param(info, ov, arg, bad,
                                  id=f"{info.name}{label}-{arg}-{bad}"))
  return out


@pytest.mark.parametrize("info,overrides,arg,bad", _loss_cases())
def test_nonfinite_loss_does_not_corrupt_state(info, overrides, arg, bad):
  """No wrapper: a NaN/Inf loss must not leave NaN in the updates or state."""
  b = float(bad)
  poison = (0, b, 0) if arg == "value" else (0, 0, b)
  sched = [_G, _G, poison, _G, _G]
  (records, params, state), _ = _runs(info, lambda tx: tx, sched, **overrides)
  for k, (_, u, new_state, is_bad) in enumerate(records):
    for what, tree in (("update", u), ("state", new_state)):
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.inexact):
          assert np.all(np.isfinite(leaf)), (
              f"{info.name}: {arg}={bad} at step 2 gives a non-finite {what}"
              f" {jax.tree_util.keystr(path)} at step {k}")
  for leaf in jax.tree.leaves(params):
    assert np.all(np.isfinite(np.asarray(leaf)))


# ---------------------------------------------------------------------------
# skip_nonfinite unit tests.
# ---------------------------------------------------------------------------


def _sgd_problem():
  params = {"w": jnp.ones(3, jnp.float32), "n": None, "s": jnp.float32(2.0)}
  good = {"w": jnp.array([1.0, -2.0, 0.5], jnp.float32), "n": None,
          "s": jnp.float32(1.0)}
  bad = {"w": jnp.array([1.0, jnp.nan, 0.5], jnp.float32), "n": None,
         "s": jnp.float32(1.0)}
  return params, good, bad


def test_skip_nonfinite_counts_and_gives_up_after_max_consecutive():
  tx = optzoo.skip_nonfinite(optax.sgd(0.1, momentum=0.9), max_consecutive=2)
  params, good, bad = _sgd_problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  u, state = step(good, state)
  momentum_after_good = state.inner_state
  for k in (1, 2):
    u, state = step(bad, state)
    assert int(state.notfinite_count) == k and int(state.total_skipped) == k
    assert not bool(state.last_finite)
    np.testing.assert_array_equal(u["w"], 0.0)
    assert_trees_equal(state.inner_state, momentum_after_good)
  # Third consecutive bad step: more than max_consecutive -> applied (loudly).
  u, state = step(bad, state)
  assert int(state.notfinite_count) == 3 and int(state.total_skipped) == 2
  assert np.isnan(np.asarray(u["w"][1]))
  # A finite step resets the consecutive counter, not the total.
  tx2 = optzoo.skip_nonfinite(optax.sgd(0.1), max_consecutive=2)
  s2 = tx2.init(params)
  _, s2 = tx2.update(bad, s2)
  _, s2 = tx2.update(good, s2)
  assert int(s2.notfinite_count) == 0 and int(s2.total_skipped) == 1
  assert bool(s2.last_finite)


def test_skip_nonfinite_default_never_gives_up():
  tx = optzoo.skip_nonfinite(optax.adam(0.1))
  params, good, bad = _sgd_problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(10):
    u, state = step(bad, state)
    np.testing.assert_array_equal(u["w"], 0.0)
  assert int(state.total_skipped) == 10
  assert int(next(x for x in state.inner_state if hasattr(x, "count")).count) == 0


def test_skip_nonfinite_checks_value_and_value_sq_only_when_given():
  tx = optzoo.skip_nonfinite(optax.sgd(1.0))
  params, good, _ = _sgd_problem()
  state = tx.init(params)
  u, s = tx.update(good, state, value=jnp.float32(jnp.inf))
  assert int(s.total_skipped) == 1
  u, s = tx.update(good, state, value=1.0, value_sq=jnp.nan)
  assert int(s.total_skipped) == 1
  u, s = tx.update(good, state, value=1.0, value_sq=None, other=jnp.nan)
  assert int(s.total_skipped) == 0
  np.testing.assert_array_equal(u["w"], -good["w"])
  tx = optzoo.skip_nonfinite(optax.sgd(1.0), check_extra_args=())
  u, s = tx.update(good, tx.init(params), value=jnp.nan)
  assert int(s.total_skipped) == 0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_skip_nonfinite_keeps_dtypes_and_compiles_once(dtype):
  tx = optzoo.skip_nonfinite(optax.adam(1e-2), max_consecutive=1)
  params = {"a": jnp.ones((2, 3), dtype), "e": jnp.zeros((0,), dtype), "n": None}
  state = tx.init(params)
  counter = helpers.TraceCounter(tx.update)
  step = jax.jit(counter)
  g = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  for gk in (g, _poison(g, jnp.inf), g, _poison(g, jnp.nan)):
    u, state = step(gk, state)
    assert jax.tree.structure(u) == jax.tree.structure(params)
    for a, p in zip(jax.tree.leaves(u), jax.tree.leaves(params)):
      assert a.dtype == p.dtype and a.shape == p.shape
  assert counter.count == 1
  assert int(state.total_skipped) == 2
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, jax.Array)


def test_skip_nonfinite_in_chain_and_inject_hyperparams():
  params, good, bad = _sgd_problem()
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optzoo.skip_nonfinite(optzoo.adam(0.1)))
  state = tx.init(params)
  u, state = tx.update(bad, state, params, value=1.0)
  np.testing.assert_array_equal(u["w"], 0.0)
  tx = optax.inject_hyperparams(optzoo.skip_nonfinite, static_args=("inner", "check_extra_args"))(
      inner=optzoo.sgd(0.1), max_consecutive=1)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(bad, state, params)
  np.testing.assert_array_equal(u["w"], 0.0)


def test_tree_all_finite():
  assert bool(optzoo.tree_all_finite({"a": None, "b": jnp.zeros((0, 2))}))
  assert bool(optzoo.tree_all_finite([jnp.arange(3), jnp.ones(2, jnp.bfloat16)]))
  assert not bool(optzoo.tree_all_finite([jnp.ones(2), jnp.array([1.0, -jnp.inf])]))
  assert not bool(jax.jit(optzoo.tree_all_finite)({"x": jnp.array(jnp.nan, jnp.float16)}))


# ---------------------------------------------------------------------------
# Tools that take a loss.
# ---------------------------------------------------------------------------


def test_lr_range_test_survives_a_diverging_loss():
  x = jnp.linspace(-1.0, 1.0, 16)
  y = 3.0 * x + 1.0

  def loss_fn(params, batch):
    xb, yb = batch
    return jnp.mean((params["a"] * xb + params["b"] - yb) ** 2)

  batches = [(x, y)] * 60
  res = optzoo.lr_range_test(loss_fn, {"a": 0.0, "b": 0.0}, batches,
                             optimizer=optzoo.sgd, min_learning_rate=1e-4, max_learning_rate=1e6,
                             num_steps=60)
  losses = np.asarray(res.losses, np.float64)
  lrs = np.asarray(res.lrs, np.float64)
  assert lrs.shape == losses.shape and lrs.size >= 1
  assert lrs.size < 60, "the diverging run was not stopped"
  # The huge learning rates blow the loss up; the tool must stop or record
  # it, and still suggest a finite, positive learning rate below the blow-up.
  sug = float(res.suggestion)
  assert np.isfinite(sug) and 0 < sug < 1e6
