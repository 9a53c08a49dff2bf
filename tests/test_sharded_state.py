"""ZeRO stage 1: optzoo.shard_state on the 8 simulated CPU devices.

* Each device holds 1/8 of every sharded state buffer (addressable bytes),
  leaves with no dimension divisible by 8 stay replicated.
* The compiled step of an elementwise optimizer contains all-gathers (of the
  updates) and no other collective; the number of all-gathers is at most the
  number of sharded update leaves.
* Same numbers as the unsharded optimizer (adam, rmsprop with momentum,
  sgd with Nesterov momentum, and optax.lamb, whose trust ratio adds one
  all-reduce per norm), on Explicit and Auto meshes; jit compiles once.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optzoo
from helpers import TraceCounter

N_DEV = 8
STEPS = 4


def _adam(state):
  """Adam's state in a chain's state tuple (the coupled-L2 link comes first)."""
  return next(s for s in state if hasattr(s, "mu"))


def _mesh(kind="explicit"):
  if jax.device_count() < N_DEV:
    pytest.skip("needs 8 (simulated) devices: see tests/conftest.py")
  devices = np.asarray(jax.devices()[:N_DEV])
  types = {"explicit": jax.sharding.AxisType.Explicit,
           "auto": jax.sharding.AxisType.Auto}[kind]
  return Mesh(devices, ("data",), axis_types=(types,))


def _params(mesh):
  rng = np.random.default_rng(0)
  p = {"w": rng.normal(size=(64, 24)),     # dim 0 divisible: P("data", None)
       "v": rng.normal(size=(6, 40)),      # only dim 1 divisible: P(None, "data")
       "b": rng.normal(size=(24,)),        # P("data")
       "odd": rng.normal(size=(5, 3)),     # nothing divisible: replicated
       "s": np.asarray(1.3)}               # scalar: replicated
  return jax.device_put(jax.tree.map(jnp.asarray, p), NamedSharding(mesh, P()))


def _grads(params, t):
  return jax.tree.map(lambda p: jnp.sin(p * (t + 1.0)) + 0.1 * p, params)


_SHARDED = {"w": P("data", None), "v": P(None, "data"), "b": P("data"),
            "odd": P(None, None), "s": P()}


def _collectives(hlo):
  ops = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute",
         "all-to-all")
  return {op: len(re.findall(rf"\b{op}(-start)?\(", hlo)) for op in ops}


def _run(tx, params, steps=STEPS):
  counter = TraceCounter(
      lambda p, s, t: (lambda u, s: (optax.apply_updates(p, u), s))(
          *tx.update(_grads(p, t), s, p)))
  step = jax.jit(counter)
  state = tx.init(params)
  for t in range(steps):
    params, state = step(params, state, jnp.asarray(float(t)))
  return params, state, step, counter


def test_layout_and_addressable_bytes():
  mesh = _mesh()
  params = _params(mesh)
  tx = optzoo.shard_state(optzoo.adam(1e-2), mesh)
  state = tx.init(params)
  adam_state = _adam(state)
  total = local = 0
  for moment in (adam_state.mu, adam_state.nu):
    for k, leaf in moment.items():
      assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, _SHARDED[k]),
                                            leaf.ndim), (k, leaf.sharding)
      shards = leaf.addressable_shards
      assert len(shards) == N_DEV
      per_dev = {s.data.nbytes for s in shards}
      assert len(per_dev) == 1
      if k in ("w", "v", "b"):
        assert per_dev == {leaf.nbytes // N_DEV}, k
      else:
        assert per_dev == {leaf.nbytes}, k
      total += leaf.nbytes
      local += per_dev.pop()
  replicated = 2 * (5 * 3 + 1) * 8      # the odd leaf and the scalar, twice
  assert local == (total - replicated) // N_DEV + replicated
  assert optzoo.shard_spec((16, 3), 8, "data") == P("data")
  assert optzoo.shard_spec((3, 16), 8, "data") == P(None, "data")
  assert optzoo.shard_spec((3, 5), 8, "data") == P()
  assert optzoo.shard_spec((0, 8), 8, "data") == P()


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_only_the_update_is_all_gathered(kind):
  mesh = _mesh(kind)
  params = _params(mesh)
  tx = optzoo.shard_state(optzoo.adam(1e-2), mesh)
  _, state, step, _ = _run(tx, params, steps=1)
  hlo = step.lower(params, state, jnp.asarray(1.0)).compile().as_text()
  found = _collectives(hlo)
  assert 1 <= found["all-gather"] <= 3, found   # w, v, b updates (maybe fused)
  assert all(n == 0 for op, n in found.items() if op != "all-gather"), found
  # Negative control: without the wrapper the replicated step has none.
  plain = optzoo.adam(1e-2)
  _, s_plain, step_plain, _ = _run(plain, params, steps=1)
  hlo = step_plain.lower(params, s_plain, jnp.asarray(1.0)).compile().as_text()
  assert sum(_collectives(hlo).values()) == 0


CASES = {
    "adam": lambda: optzoo.adam(1e-2, weight_decay=1e-3),
    "rmsprop": lambda: optzoo.rmsprop(1e-2, momentum=0.9, centered=True),
    "sgd": lambda: optzoo.sgd(1e-2, momentum=0.9, nesterov=True),
    "optax.lamb": lambda: optax.lamb(1e-2),
}


@pytest.mark.parametrize("name,kind", [(n, "explicit") for n in sorted(CASES)]
                         + [("adam", "auto")])
def test_same_numbers_as_unsharded(name, kind):
  mesh = _mesh(kind)
  params = _params(mesh)
  p_ref, s_ref, _, _ = _run(CASES[name](), params)
  tx = optzoo.shard_state(CASES[name](), mesh)
  p_sh, s_sh, step, counter = _run(tx, params)
  assert counter.count == 1, "the sharded step retraced"
  for k in params:
    assert p_sh[k].sharding.is_equivalent_to(NamedSharding(mesh, P()),
                                             p_sh[k].ndim), k
    np.testing.assert_allclose(np.asarray(p_sh[k]), np.asarray(p_ref[k]),
                               rtol=1e-13, atol=1e-15, err_msg=f"{name}/{k}")
  if name == "optax.lamb":   # per-leaf norms of sharded buffers: all-reduces
    hlo = step.lower(p_sh, s_sh, jnp.asarray(1.0)).compile().as_text()
    found = _collectives(hlo)
    assert found["all-reduce"] >= 1 and found["collective-permute"] == 0


def test_default_mesh_and_update_sharding():
  """mesh=None: a 1-D 'data' mesh over all devices; update_sharding keeps
  the updates sharded (e.g. to apply them to sharded params)."""
  params = _params(_mesh())
  params = jax.device_get(params)
  tx = optzoo.shard_state(optzoo.adam(1e-2))
  state = tx.init(params)
  assert _adam(state).mu["w"].sharding.spec in (P("data"), P("data", None))
  u, _ = jax.jit(tx.update)(params, state, params)
  assert u["w"].sharding.is_fully_replicated
  mesh = _mesh()
  tx2 = optzoo.shard_state(optzoo.adam(1e-2), mesh,
                           update_sharding={k: _SHARDED[k] for k in params})
  p = _params(mesh)
  u2, _ = jax.jit(tx2.update)(p, tx2.init(p), p)
  assert u2["w"].sharding.spec in (P("data"), P("data", None))
  np.testing.assert_allclose(np.asarray(u2["w"]), np.asarray(u["w"]), rtol=1e-14)


def test_bad_arguments():
  mesh = _mesh()
  with pytest.raises(TypeError, match="inner"):
    optzoo.shard_state("adam", mesh)
  with pytest.raises(ValueError, match="axis"):
    optzoo.shard_state(optzoo.adam(), mesh, axis="model")
  with pytest.raises(TypeError, match="mesh"):
    optzoo.shard_state(optzoo.adam(), "data")


def test_composes_with_8bit_state():
  """shard_state(adam_8bit): the uint8 codes and the absmax scales are split
  over the devices too; same numbers as unsharded adam_8bit."""
  mesh = _mesh()
  rng = np.random.default_rng(3)
  params = jax.device_put(
      {"w": jnp.asarray(rng.normal(size=(64, 256)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(256,)), jnp.float32)},
      NamedSharding(mesh, P()))
  p_ref, _, _, _ = _run(optzoo.adam_8bit(1e-2, min_size=1), params, steps=3)
  tx = optzoo.shard_state(optzoo.adam_8bit(1e-2, min_size=1), mesh)
  p_sh, s_sh, step, counter = _run(tx, params, steps=3)
  assert counter.count == 1
  codes = _adam(s_sh).mu["w"].codes          # the parameter's shape
  assert codes.dtype == jnp.uint8 and codes.shape == (64, 256)
  assert {s.data.nbytes for s in codes.addressable_shards} == {2048}
  for k in params:
    np.testing.assert_allclose(np.asarray(p_sh[k]), np.asarray(p_ref[k]),
                               rtol=1e-6, atol=1e-7, err_msg=k)
  found = _collectives(step.lower(p_sh, s_sh, jnp.asarray(1.0)).compile().as_text())
  assert found["collective-permute"] == 0 and found["all-to-all"] == 0, found
