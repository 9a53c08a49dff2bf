"""Drop-in properties of specific configurations (lookahead with
``reset_state``, per-leaf swats, gradient noise around Adam, param_ema in a
chain, ...) that the registry-wide tests build only with their defaults:
jit compiles once, dtypes and ``None`` leaves kept, sharding kept, registry
cases build and reject bad input, ``optax.inject_hyperparams`` works."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optzoo
from helpers import TraceCounter
import registry_cases


TRANSFORMS = {
    "lookahead_adam": lambda: optzoo.lookahead(optzoo.adam(1e-2)),
    "lookahead_sgd_reset": lambda: optzoo.lookahead(
        optzoo.sgd(1e-2, momentum=0.9), 2, reset_state=True),
    "swats": lambda: optzoo.swats(1e-2),
    "swats_leaf": lambda: optzoo.swats(1e-2, granularity="leaf"),
    "add_gradient_noise": lambda: optzoo.add_gradient_noise(0.01),
    "gradient_noise": lambda: optzoo.gradient_noise(optzoo.adam(1e-2)),
    "param_ema": lambda: optax.chain(optzoo.adam(1e-2), optzoo.param_ema(
        optzoo.byol_tau_schedule(10))),
    "generic_adam": lambda: optzoo.generic_adam(1e-2),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_jit_once_keeps_dtypes_and_pytrees(name, dtype):
  tx = TRANSFORMS[name]()
  params = {"w": jnp.ones((3, 2), dtype), "none": None,
            "s": jnp.asarray(0.5, dtype)}
  grads = {"w": jnp.full((3, 2), 0.1, dtype), "none": None,
           "s": jnp.asarray(-0.2, dtype)}
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  for _ in range(5):
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  assert u["none"] is None and params["none"] is None
  assert u["w"].dtype == dtype and u["s"].dtype == dtype
  assert params["w"].dtype == dtype
  assert all(np.all(np.isfinite(np.asarray(l, np.float32)))
             for l in jax.tree.leaves(u))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_preserves_sharding(name):
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 devices")
  mesh = Mesh(devices, ("d",))
  shard = NamedSharding(mesh, P("d"))
  tx = TRANSFORMS[name]()
  params = {"w": jax.device_put(jnp.ones((16, 3)), shard)}
  grads = {"w": jax.device_put(jnp.full((16, 3), 0.1), shard)}
  state = jax.jit(tx.init)(params)
  u, state = jax.jit(tx.update)(grads, state, params)
  assert u["w"].sharding.is_equivalent_to(shard, 2)


def test_registry_entries_build_and_reject_bad_input():
  names = ["lookahead", "swats", "add_gradient_noise", "gradient_noise",
           "param_ema", "generic_adam", "generic_adam_condition",
           "lr_range_test"]
  for name in names:
    info = optzoo.get_info(name)
    obj = registry_cases.build(info)
    if info.kind == "transformation":
      params = {"w": jnp.ones(3)}
      state = obj.init(params)
      obj.update({"w": jnp.ones(3)}, state, params)
    assert registry_cases.invalid(info.name)
    for override, exc in registry_cases.invalid(info.name):
      with pytest.raises(exc):
        registry_cases.build(info, **override)


@pytest.mark.parametrize("factory,kwargs", [
    (optzoo.swats, dict(learning_rate=1e-2)),
    (optzoo.generic_adam, dict(learning_rate=1e-2)),
    (optzoo.add_gradient_noise, dict(eta=0.1)),
    (optzoo.param_ema, dict(decay=0.9)),
], ids=["swats", "generic_adam", "add_gradient_noise", "param_ema"])
def test_inject_hyperparams(factory, kwargs):
  tx = optax.inject_hyperparams(factory)(**kwargs)
  params = {"w": jnp.ones(3, jnp.float32)}
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  for _ in range(3):
    u, state = step({"w": jnp.ones(3, jnp.float32)}, state, params)
    params = optax.apply_updates(params, u)
  assert counter.count == 1 and u["w"].dtype == jnp.float32
  assert set(kwargs) <= set(state.hyperparams)
