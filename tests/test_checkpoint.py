"""Optimizer state survives checkpoints, for every registered method.

* The state is a pytree of arrays only: every leaf is a ``jax.Array`` /
  ``np.ndarray`` (no Python numbers, strings, callables), and
  ``optax.tree_map_params`` can walk it.
* ``{params, opt_state}`` round-trips through Orbax (``StandardCheckpointer``
  in a tmp dir) and through ``flax.serialization`` bytes, bit for bit, with
  the same tree structure and dtypes.
* Training resumed from the restored checkpoint continues bit-identically to
  the uninterrupted run.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import serialization


from test_registry_validation import (assert_trees_equal, build, ids, cached_setup,
                                      transformation_infos)

_TRANSFORMS = transformation_infos()
N_BEFORE, N_AFTER = 3, 3


def _state_after(name, steps=N_BEFORE):
  """(tx, compiled step, params, state) after ``steps`` steps (the compiled
  step is cached, shared by the tests of one method)."""
  tx, step, params = cached_setup(name)
  state = tx.init(params)
  for i in range(steps):
    params, state, _ = step(params, state, i)
  return tx, step, params, state


def _non_array_leaves(tree):
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if not isinstance(leaf, (jax.Array, np.ndarray)):
      bad.append(f"{jax.tree_util.keystr(path)}: {type(leaf).__name__}")
  return bad


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_state_is_a_pytree_of_arrays(info):
  tx, _, params, state = _state_after(info.name)
  init = tx.init(params)
  for what, s in (("init", init), ("after some steps", state)):
    bad = _non_array_leaves(s)
    assert not bad, f"{info.name}: state {what} has non-array leaves: {bad}"
    weak = [jax.tree_util.keystr(k) for k, x in jax.tree_util.tree_leaves_with_path(s)
            if getattr(x, "weak_type", False)]
    assert not weak, f"{info.name}: weak-typed state leaves {weak} (recompiles)"
  # Shapes and dtypes are stable across steps (no recompilation, scan-able).
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), init)
          == jax.tree.map(lambda x: (x.shape, x.dtype), state)), info.name
  # The usual tree utilities work on it.
  leaves, treedef = jax.tree.flatten(state)
  assert_trees_equal(jax.tree.unflatten(treedef, leaves), state)
  assert_trees_equal(jax.tree.map(lambda x: x, state), state)


# Transformations whose state holds no params-shaped subtree by design, so
# `optax.tree_map_params` (which calls `init` on a placeholder instead of the
# params) cannot rebuild their state structure. Same as `optax.flatten`.
NO_PARAMS_SUBTREE = {
    "group_leaves": "stores the inner state of *stacked* same-shape leaves, "
                    "grouped by the params' shapes; see its docstring",
}


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_tree_map_params_walks_the_state(info):
  if info.name in NO_PARAMS_SUBTREE:
    tx, _, params, state = _state_after(info.name)
    with pytest.raises(Exception):
      optax.tree_map_params(tx, lambda p: p, state)
    pytest.skip(NO_PARAMS_SUBTREE[info.name])
  tx, _, params, state = _state_after(info.name)
  mapped = optax.tree_map_params(tx, lambda p: p, state)
  assert_trees_equal(mapped, state)
  # Mapping params-shaped parts to zeros changes only those parts' values.
  zeroed = optax.tree_map_params(tx, jnp.zeros_like, state)
  assert jax.tree.structure(zeroed) == jax.tree.structure(state)


def _resume_and_compare(info, step, params, state, restored, what):
  assert_trees_equal(restored["params"], params, f"{what} params")
  assert_trees_equal(restored["opt_state"], state, f"{what} opt_state")
  p_ref, s_ref = params, state
  p_res, s_res = restored["params"], restored["opt_state"]
  for i in range(N_BEFORE, N_BEFORE + N_AFTER):
    p_ref, s_ref, _ = step(p_ref, s_ref, i)
    p_res, s_res, _ = step(p_res, s_res, i)
  assert_trees_equal(p_res, p_ref, f"{what}: params after resuming")
  assert_trees_equal(s_res, s_ref, f"{what}: state after resuming")


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_orbax_round_trip_and_bit_identical_resume(info, tmp_path):
  _, step, params, state = _state_after(info.name)
  ckpt = {"params": params, "opt_state": state}
  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / info.name
  checkpointer.save(path, ckpt)
  checkpointer.wait_until_finished()
  # Restore into the abstract structure of a *fresh* state, as a resumed job
  # would (it has no concrete state, only the optimizer and the params).
  tx = build(info)
  target = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
  restored = checkpointer.restore(path, target)
  checkpointer.close()
  _resume_and_compare(info, step, params, state, restored, "orbax")


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_flax_serialization_round_trip_and_bit_identical_resume(info):
  _, step, params, state = _state_after(info.name)
  ckpt = {"params": params, "opt_state": state}
  data = serialization.to_bytes(ckpt)
  tx = build(info)
  fresh = {"params": params, "opt_state": tx.init(params)}
  restored = serialization.from_bytes(fresh, data)
  restored = jax.tree.map(jnp.asarray, restored)
  _resume_and_compare(info, step, params, state, restored, "flax.serialization")


def test_round_trip_detects_a_changed_state():
  """The comparison above is not vacuous: a one-ulp change is caught."""
  info = [i for i in _TRANSFORMS if i.name == "adam"][0]
  _, step, params, state = _state_after(info.name)
  changed = jax.tree.map(
      lambda x: jnp.nextafter(x, jnp.inf) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      state)
  with pytest.raises(AssertionError):
    _resume_and_compare(info, step, params, state,
                        {"params": params, "opt_state": changed}, "changed")
