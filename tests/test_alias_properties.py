"""Drop-in properties of every Team SGD / Team Adam alias.

For each alias: works under ``optax.inject_hyperparams`` (changing the
learning rate in the state takes effect and does not retrace), keeps bf16/f32
params in their dtype, accepts pytrees with ``None`` leaves and 0-d leaves,
traces once for repeated jitted steps (float and schedule learning rates),
preserves sharding, and rejects bad hyperparameters at construction with a
``ValueError`` naming the parameter.
"""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter
import registry_cases

ALIASES = ("sgd", "nag", "sgdw", "adagrad", "rmsprop", "adam", "amsgrad",
           "adamw", "nadam", "radam", "adabound", "lars", "lamb", "adafactor",
           "sm3")

# Non-default settings that switch on every branch of each alias, so that the
# properties below are checked on the full chain (momentum, Nesterov, L2,
# centered, AMSGrad, ...). All with a float learning rate of 0.01.
FULL = {
    "sgd": dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    "nag": dict(momentum=0.9, weight_decay=1e-2),
    "sgdw": dict(momentum=0.9, weight_decay=1e-2),
    "adagrad": dict(lr_decay=1e-3, weight_decay=1e-2,
                    initial_accumulator_value=0.1),
    "rmsprop": dict(momentum=0.9, centered=True, weight_decay=1e-2),
    "adam": dict(weight_decay=1e-2, amsgrad=True),
    "amsgrad": dict(weight_decay=1e-2),
    "adamw": dict(weight_decay=1e-2, amsgrad=True),
    "nadam": dict(weight_decay=1e-2),
    "radam": dict(weight_decay=1e-2),
    "adabound": dict(weight_decay=1e-2, amsbound=True, final_lr=0.05),
    "lars": dict(momentum=0.9, nesterov=True, dampening=0.0, weight_decay=1e-2,
                 trust_coefficient=0.02),
    "lamb": dict(weight_decay=1e-2, pre_norm=True, max_grad_norm=1.0),
    "adafactor": dict(weight_decay=1e-2, b1=0.9),
    "sm3": dict(momentum=0.9, b2=0.5),
}


def make(alias, lr=0.01, **over):
  kw = dict(FULL[alias], **over)
  return getattr(optzoo, alias)(learning_rate=lr, **kw)


def tree(dtype=jnp.float64, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"w": jax.random.normal(k1, (3, 4), dtype),
          "b": jax.random.normal(k2, (4,), dtype),
          "s": jax.random.normal(k3, (), dtype)}


def grads_of(params):
  """A deterministic, param-dependent gradient (non-quadratic)."""
  return jax.tree.map(lambda p: jnp.sin(3 * p) + 0.5 * p, params)


def _step_fn(tx):
  def step(params, state):
    u, state = tx.update(grads_of(params), state, params)
    return optax.apply_updates(params, u), state, u
  return step


# ---------------------------------------------------------------------------
# jit: one trace for repeated steps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("lr_kind", ["float", "schedule"])
def test_repeated_jitted_steps_trace_once(alias, lr_kind):
  lr = 0.01 if lr_kind == "float" else optax.exponential_decay(0.01, 10, 0.5)
  tx = make(alias, lr)
  counter = TraceCounter(_step_fn(tx))
  step = jax.jit(counter)
  params = tree()
  state = tx.init(params)
  p1, _, _ = step(params, state)
  for _ in range(5):
    params, state, _ = step(params, state)
  assert counter.count == 1
  assert not np.allclose(np.asarray(p1["w"]), np.asarray(params["w"]))
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, jax.Array)
  counts = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]
  for c in counts:
    assert c.dtype == jnp.int32, c.dtype


# ---------------------------------------------------------------------------
# inject_hyperparams
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
def test_inject_hyperparams_lr_change_no_retrace(alias):
  tx = optax.inject_hyperparams(getattr(optzoo, alias))(
      learning_rate=0.01, **FULL[alias])
  counter = TraceCounter(_step_fn(tx))
  step = jax.jit(counter)
  params = tree()
  state = tx.init(params)
  params, state, _ = step(params, state)
  lr0 = state.hyperparams["learning_rate"]
  assert float(lr0) == pytest.approx(0.01)
  # Same state, two learning rates: both steps reuse the compiled function.
  state_a = state
  _, _, u_a = step(params, state_a)
  state_b = jax.tree.map(lambda x: x, state)  # copy
  state_b.hyperparams["learning_rate"] = jnp.asarray(0.02, lr0.dtype)
  _, new_state_b, u_b = step(params, state_b)
  assert counter.count == 1, "changing the injected learning rate retraced"
  assert float(new_state_b.hyperparams["learning_rate"]) == pytest.approx(0.02)
  if alias in ("adabound", "lamb", "adafactor"):
    # Not linear in lr (documented, as the references): adabound's bounds use
    # the injected lr; LAMB's trust ratio takes the weight norm after the
    # lr-scaled decoupled decay; Adafactor's momentum averages lr-scaled steps.
    assert not np.allclose(np.asarray(u_a["w"]), np.asarray(u_b["w"]))
  else:
    # The learning rate is the last link: the update is linear in it.
    for a, b in zip(jax.tree.leaves(u_a), jax.tree.leaves(u_b)):
      np.testing.assert_allclose(np.asarray(b), 2 * np.asarray(a),
                                 rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("alias", ALIASES)
def test_inject_hyperparams_equals_plain(alias):
  """Injected and closed-over hyperparameters give the same trajectory."""
  tx_i = optax.inject_hyperparams(getattr(optzoo, alias))(
      learning_rate=0.01, **FULL[alias])
  tx_p = make(alias)

  def run(tx):
    params = tree()
    state = tx.init(params)
    step = _step_fn(tx)

    def body(c, _):
      p, s, _ = step(*c)
      return (p, s), None
    return jax.lax.scan(body, (params, state), None, length=20)[0][0]

  pi, pp = jax.jit(lambda: (run(tx_i), run(tx_p)))()
  for a, b in zip(jax.tree.leaves(pi), jax.tree.leaves(pp)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_keeps_param_dtype(alias, dtype):
  tx = make(alias)
  counter = TraceCounter(_step_fn(tx))
  step = jax.jit(counter)
  params = tree(dtype)
  state = tx.init(params)
  state_dtypes = [x.dtype for x in jax.tree.leaves(state)]
  for _ in range(3):
    params, state, updates = step(params, state)
    for u in jax.tree.leaves(updates):
      assert u.dtype == dtype, (alias, u.dtype)
    for p in jax.tree.leaves(params):
      assert p.dtype == dtype, (alias, p.dtype)
    assert [x.dtype for x in jax.tree.leaves(state)] == state_dtypes
  assert counter.count == 1
  for p in jax.tree.leaves(params):
    assert np.all(np.isfinite(np.asarray(p, np.float32)))


# ---------------------------------------------------------------------------
# pytrees with None and scalar leaves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
def test_none_and_scalar_leaves(alias):
  tx = make(alias)
  params = {"a": jnp.arange(3.0), "frozen": None, "s": jnp.asarray(2.0),
            "nested": {"m": jnp.ones((2, 2)), "n": None}}

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, u), state, u

  state = tx.init(params)
  for _ in range(3):
    params, state, updates = step(params, state)
  assert updates["frozen"] is None and updates["nested"]["n"] is None
  assert params["frozen"] is None
  assert updates["s"].shape == ()
  assert float(jnp.abs(updates["s"])) > 0
  for leaf in jax.tree.leaves(params):
    assert np.all(np.isfinite(np.asarray(leaf)))


# ---------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
def test_preserves_sharding(alias):
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip("needs several devices")
  mesh = jax.sharding.Mesh(np.array(devices[:4]), ("x",))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
  params = {"w": jax.device_put(jnp.linspace(-1.0, 1.0, 16).reshape(8, 2), sh)}
  tx = make(alias)
  state = tx.init(params)
  new_params, state, _ = jax.jit(_step_fn(tx))(params, state)
  new_params, state, _ = jax.jit(_step_fn(tx))(new_params, state)
  assert new_params["w"].sharding.is_equivalent_to(sh, 2)
  for leaf in jax.tree.leaves(state):
    if leaf.shape == (8, 2):
      assert leaf.sharding.is_equivalent_to(sh, 2)


# ---------------------------------------------------------------------------
# Bad hyperparameters raise at construction, naming the parameter.
# ---------------------------------------------------------------------------

BAD_VALUES = {
    "learning_rate": (-1e-3,),
    "b1": (1.0, -0.1, 1.5),
    "b2": (1.0, -0.1, 1.5),
    "eps": (-1e-8,),
    "weight_decay": (-0.1,),
    "momentum": (-0.1,),
    "decay": (1.0, -0.1),
    "lr_decay": (-0.1,),
    "initial_accumulator_value": (-0.1,),
    "momentum_decay": (-1.0,),
    "final_lr": (-0.1,),
    "gamma": (-1.0,),
    "dampening": (-0.1, 1.5),
}


def _bad_cases():
  out = []
  for alias in ALIASES:
    sig = inspect.signature(getattr(optzoo, alias))
    for name, values in BAD_VALUES.items():
      if name not in sig.parameters:
        continue
      for v in values:
        out.append(pytest.param(alias, name, v, id=f"{alias}-{name}={v}"))
  return out


@pytest.mark.parametrize("alias,name,value", _bad_cases())
def test_bad_hyperparameter_raises_naming_it(alias, name, value):
  fn = getattr(optzoo, alias)
  kw = {"learning_rate": 0.01, name: value}
  if alias in ("sgd",) and name == "dampening":
    kw["momentum"] = 0.9
  # The message must name the parameter (as a whole word: "decay" must not be
  # satisfied by "weight_decay").
  with pytest.raises(ValueError, match=rf"(?<!\w){name}(?!\w)"):
    fn(**kw)


@pytest.mark.parametrize("alias", ["sgd", "sgdw"])
def test_nesterov_without_momentum_raises(alias):
  with pytest.raises(ValueError, match=r"(?<!\w)momentum(?!\w)"):
    getattr(optzoo, alias)(learning_rate=0.1, momentum=0.0, nesterov=True)


def test_nag_with_zero_momentum_raises():
  with pytest.raises(ValueError, match="momentum"):
    optzoo.nag(learning_rate=0.1, momentum=0.0)


def test_nag_with_dampening_raises():
  """torch.optim.SGD(nesterov=True) rejects dampening != 0."""
  with pytest.raises(ValueError, match="dampening"):
    optzoo.nag(learning_rate=0.1, dampening=0.1)


@pytest.mark.parametrize("alias", ALIASES)
def test_edge_values_are_accepted(alias):
  """Boundary values that the references accept must not be rejected."""
  sig = inspect.signature(getattr(optzoo, alias))
  kw = {"learning_rate": 0.0 if alias != "adabound" else 1e-3}
  for name, v in (("b1", 0.0), ("eps", 0.0), ("weight_decay", 0.0),
                  ("lr_decay", 0.0), ("initial_accumulator_value", 0.0),
                  ("decay", 0.0)):
    if name in sig.parameters:
      kw[name] = v
  getattr(optzoo, alias)(**kw)
  # Schedules are accepted as learning rates.
  getattr(optzoo, alias)(learning_rate=optax.constant_schedule(0.01))


@pytest.mark.parametrize("alias", ALIASES)
def test_constant_schedule_equals_float(alias):
  """A constant schedule and the float learning rate give identical steps."""
  tx_f = make(alias, 0.01)
  tx_s = make(alias, optax.constant_schedule(0.01))

  def run(tx):
    params, state = tree(), tx.init(tree())
    for _ in range(3):
      params, state, _ = _step_fn(tx)(params, state)
    return params

  pf, ps = jax.jit(lambda: (run(tx_f), run(tx_s)))()
  for a, b in zip(jax.tree.leaves(pf), jax.tree.leaves(ps)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)


@pytest.mark.parametrize("alias", ALIASES)
def test_registered(alias):
  info = optzoo.get_info(alias)
  assert info.family == ("Team SGD" if alias in ("sgd", "nag", "sgdw", "lars")
                         else "Team Adam")
  assert info.reference and info.paper
  tx = registry_cases.build(info)
  params = tree()
  u, _ = tx.update(grads_of(params), tx.init(params), params)
  assert jax.tree.structure(u) == jax.tree.structure(params)
  for override, exc in registry_cases.invalid(info.name):
    with pytest.raises(exc):
      registry_cases.build(info, **override)
