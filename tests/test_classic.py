"""Adamax, Adadelta, Rprop, ASGD vs torch.optim (torch 2.13, float64).

Golden trajectories: ``tests/fixtures/torch_optim_*.npz`` from
``tests/gen_torch_optim_fixtures.py`` (300 closed-loop steps on a 17-d pytree
problem, leaves (4,), () and (3, 4), coupled by an SPD matrix plus a quartic
term; several settings per optimizer, every flag incl. ``maximize``). This
file needs no torch.

Controls: ``optax.adamax`` / ``optax.adadelta`` are documented to equal torch
and must match (validates the problem rebuild); the known-different variants
(``optax.adamaxw``'s decoupled decay, ``optax.rprop``, Adadelta with eps
outside the square roots, ASGD without the ``1 - lambd * eta`` decay) must not.
"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
import optzoo
from optzoo._src import classic

RTOL = 1e-6
FLOOR = 1e-3
TREE_KEYS = ("b", "s", "w")
NAMES = ("adamax", "adadelta", "rprop", "asgd")


@functools.lru_cache(maxsize=None)
def problems():
  with np.load(helpers.fixture_path("torch_optim_problems.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def load(name):
  with np.load(helpers.fixture_path(f"torch_optim_{name}.npz")) as f:
    data = {k: f[k] for k in f.files}
  n = len([k for k in data if k.endswith("_kwargs")])
  out = []
  for k in range(n):
    pre = f"s{k}_"
    out.append(dict(kwargs=json.loads(str(data[pre + "kwargs"])),
                    torch=str(data[pre + "torch"]),
                    arrays={key[len(pre):]: v for key, v in data.items()
                            if key.startswith(pre) and key[len(pre):] not in
                            ("kwargs", "torch")}))
  return data["steps"], out


def tree_loss(params, c=None):
  p = problems()
  a = jnp.asarray(p["tree_a"])
  c = jnp.asarray(p["tree_c"]) if c is None else c
  x = jnp.concatenate([jnp.ravel(params[k]) for k in TREE_KEYS])
  return 0.5 * x @ a @ x - c @ x + 0.1 * jnp.sum(x ** 4) / x.size


def tree_params0():
  p = problems()
  return {k: jnp.asarray(p[f"tree_{k}0"]) for k in TREE_KEYS}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(tx, num_steps, maximize):
  sign = -1.0 if maximize else 1.0
  grad = jax.grad(lambda q: sign * tree_loss(q))

  def body(carry, _):
    params, state = carry
    u, state = tx.update(grad(params), state, params)
    params = optax.apply_updates(params, u)
    return (params, state), (params, _maybe_ax(state))

  params = tree_params0()
  (_, state), (traj, ax) = jax.lax.scan(body, (params, tx.init(params)), None,
                                        length=num_steps)
  return traj, ax


def _maybe_ax(state):
  try:
    return classic.asgd_averaged_params(state)
  except ValueError:
    return {}


def rel_err(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), FLOOR)))


def trajectory_error(tx, name, setting, steps, with_ax=False):
  maximize = bool(setting["kwargs"].get("maximize", False))
  traj, ax = _run(tx, int(steps[-1]), maximize)
  idx = np.asarray(steps) - 1
  err = max(rel_err(np.asarray(traj[k])[idx], setting["arrays"][k]) for k in TREE_KEYS)
  if with_ax:
    err = max(err, max(rel_err(np.asarray(ax[k])[idx], setting["arrays"][f"ax_{k}"])
                       for k in TREE_KEYS))
  return err


def _cases():
  out = []
  for name in NAMES:
    _, settings = load(name)
    for k, s in enumerate(settings):
      out.append(pytest.param(name, k, id=f"{name}-s{k}"))
  return out


@pytest.mark.parametrize("name,k", _cases())
def test_matches_torch(name, k):
  steps, settings = load(name)
  s = settings[k]
  assert steps[-1] >= 300
  tx = getattr(optzoo, name)(**s["kwargs"])
  err = trajectory_error(tx, name, s, steps, with_ax=(name == "asgd"))
  assert err <= RTOL, (name, s["torch"], err)


def test_settings_differ():
  """Each setting gives a different trajectory (every flag is exercised)."""
  for name in NAMES:
    _, settings = load(name)
    base = settings[0]["arrays"]["w"]
    for s in settings[1:]:
      assert rel_err(s["arrays"]["w"], base) > 1e-3, (name, s["torch"])


@pytest.mark.parametrize("name,k,make", [
    ("adamax", 1, lambda kw: optax.adamax(kw["learning_rate"], kw["b1"], kw["b2"],
                                          kw["eps"])),
    ("adadelta", 1, lambda kw: optax.adadelta(kw["learning_rate"], kw["rho"],
                                              kw["eps"])),
])
def test_positive_control_optax(name, k, make):
  steps, settings = load(name)
  assert trajectory_error(make(settings[k]["kwargs"]), name, settings[k], steps) <= RTOL


def _adadelta_eps_outside(lr, rho, eps):
  def init(params):
    return (jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params))

  def update(g, state, params=None):
    v, a = state
    v = jax.tree.map(lambda g, v: rho * v + (1 - rho) * g * g, g, v)
    d = jax.tree.map(lambda g, v, a: (jnp.sqrt(a) + eps) / (jnp.sqrt(v) + eps) * g, g, v, a)
    a = jax.tree.map(lambda d, a: rho * a + (1 - rho) * d * d, d, a)
    return jax.tree.map(lambda d: -lr * d, d), (v, a)

  return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("name,k,make", [
    ("adamax", 2, lambda kw: optax.chain(
        optzoo.negate(), optax.adamaxw(kw["learning_rate"], kw["b1"],
                                       weight_decay=kw["weight_decay"]))),
    ("rprop", 1, lambda kw: optax.rprop(kw["learning_rate"], kw["eta_minus"],
                                        kw["eta_plus"], kw["min_step_size"],
                                        kw["max_step_size"])),
    ("adadelta", 1, lambda kw: _adadelta_eps_outside(kw["learning_rate"], kw["rho"],
                                                     kw["eps"])),
    ("asgd", 1, lambda kw: optax.chain(optzoo.scale_by_asgd(
        kw["learning_rate"], 0.0, kw["alpha"], kw["t0"]))),
])
def test_negative_control(name, k, make):
  steps, settings = load(name)
  err = trajectory_error(make(settings[k]["kwargs"]), name, settings[k], steps)
  assert err > 1e-3, (name, err)


def test_asgd_average_is_iterate_before_t0():
  tx = optzoo.asgd(0.01)
  params = tree_params0()
  state = tx.init(params)
  g = jax.grad(tree_loss)(params)
  u, state = tx.update(g, state, params)
  new = optax.apply_updates(params, u)
  ax = optzoo.asgd_averaged_params(state)
  for k in TREE_KEYS:
    np.testing.assert_array_equal(ax[k], new[k])
  inj = optax.inject_hyperparams(optzoo.asgd)(learning_rate=0.01)
  s = inj.init(params)
  assert jax.tree.structure(optzoo.asgd_averaged_params(s)) == jax.tree.structure(params)


@pytest.mark.parametrize("name", NAMES)
def test_jit_compiles_once_and_keeps_dtype(name):
  tx = getattr(optzoo, name)(learning_rate=optax.exponential_decay(0.01, 10, 0.5)
                             if name != "rprop" else 0.01)
  params = {"w": jnp.ones((3, 2), jnp.bfloat16), "s": jnp.ones((), jnp.float32),
            "n": None}
  counter = helpers.TraceCounter(lambda p, s: tx.update(
      jax.tree.map(lambda x: 0.1 * x + 0.3, p), s, p))
  step = jax.jit(counter)
  state = tx.init(params)
  for _ in range(4):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  assert params["w"].dtype == jnp.bfloat16 and params["s"].dtype == jnp.float32
  assert params["n"] is None


@pytest.mark.parametrize("name,kwargs,param", [
    ("adamax", {"b1": 1.0}, "b1"),
    ("adamax", {"b2": 1.5}, "b2"),
    ("adamax", {"weight_decay": -1.0}, "weight_decay"),
    ("adadelta", {"rho": 1.1}, "rho"),
    ("adadelta", {"eps": -1.0}, "eps"),
    ("rprop", {"eta_minus": 1.0}, "eta_minus"),
    ("rprop", {"eta_plus": 0.5}, "eta_plus"),
    ("rprop", {"max_step_size": -1.0}, "max_step_size"),
    ("asgd", {"learning_rate": -1.0}, "learning_rate"),
    ("asgd", {"weight_decay": -1.0}, "weight_decay"),
    ("asgd", {"maximize": "yes"}, "maximize"),
])
def test_bad_input_names_parameter(name, kwargs, param):
  with pytest.raises((ValueError, TypeError), match=param):
    getattr(optzoo, name)(**kwargs)


# ---------------------------------------------------------------------------
# torch flags of the existing aliases: maximize, decoupled_weight_decay
# ---------------------------------------------------------------------------


def _flag_cases():
  _, settings = load("flags")
  return [pytest.param(k, id=f"{s['kwargs']['_alias']}-s{k}")
          for k, s in enumerate(settings)]


def _flag_tx(kwargs, **over):
  kw = {k: v for k, v in kwargs.items() if not k.startswith("_")}
  kw.update(over)
  return getattr(optzoo, kwargs["_alias"])(**kw)


@pytest.mark.parametrize("k", _flag_cases())
def test_alias_flags_match_torch(k):
  steps, settings = load("flags")
  s = settings[k]
  err = trajectory_error(_flag_tx(s["kwargs"]), s["kwargs"]["_alias"], s, steps)
  assert err <= RTOL, (s["torch"], err)


def test_alias_flags_negative_controls():
  steps, settings = load("flags")
  by_torch = {s["torch"]: s for s in settings}
  # decoupled_weight_decay ignored (coupled L2 instead) must fail.
  s = next(s for s in settings if "NAdam" in s["torch"] and "decoupled" in s["torch"])
  tx = _flag_tx(s["kwargs"], decoupled_weight_decay=False)
  assert trajectory_error(tx, "nadam", s, steps) > 1e-3
  # maximize ignored: descending the negated loss must fail.
  s = next(s for s in settings if s["kwargs"]["_alias"] == "adamw")
  tx = _flag_tx(s["kwargs"], maximize=False)
  assert trajectory_error(tx, "adamw", s, steps) > 1e-3
  del by_torch


@pytest.mark.parametrize("alias", ["sgd", "adagrad", "rmsprop", "adam", "amsgrad",
                                   "adamw", "nadam", "radam"])
def test_alias_maximize_bad_input(alias):
  with pytest.raises(TypeError, match="maximize"):
    getattr(optzoo, alias)(maximize="yes")


@pytest.mark.parametrize("name,k,make", [
    ("adamax", 1, lambda kw: optax.chain(
        optzoo.scale_by_adamax(kw["b1"], kw["b2"], kw["eps"]),
        optzoo.scale_by_learning_rate(kw["learning_rate"]))),
    ("adadelta", 2, lambda kw: optax.chain(
        optzoo.negate(), optzoo.add_l2(kw["weight_decay"]),
        optzoo.scale_by_adadelta(kw["rho"]),
        optzoo.scale_by_learning_rate(kw["learning_rate"]))),
    ("rprop", 1, lambda kw: optax.chain(
        optzoo.scale_by_rprop(kw["learning_rate"], kw["eta_minus"], kw["eta_plus"],
                              kw["min_step_size"], kw["max_step_size"]),
        optax.scale(-1.0))),
])
def test_primitives_chain_to_the_torch_optimizer(name, k, make):
  """The aliases are these chains: scale_by_adamax / scale_by_adadelta /
  scale_by_rprop composed by hand reproduce torch."""
  steps, settings = load(name)
  assert trajectory_error(make(settings[k]["kwargs"]), name, settings[k], steps) <= RTOL
