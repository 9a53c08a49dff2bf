"""Team SGD / Team Adam aliases vs their PyTorch reference implementations.

The golden trajectories in ``tests/fixtures/aliases_*.npz`` were produced by
``tests/gen_torch_fixtures.py`` (torch 2.13 / pytorch_optimizer 4.1 /
adabound 0.0.5, float64, ``foreach=False``): 300 steps on a 6-d SPD quadratic
and on a pytree problem (leaves of shape (4,), () and (3, 4) coupled by a
17x17 SPD matrix plus a quartic term), for several hyperparameter settings of
every alias. This file needs no torch.

Besides the optzoo checks, the fixtures themselves are checked:

* positive controls: optax transformations documented to equal torch
  reproduce the fixtures to 1e-6, which
  validates the problem rebuild and the kwargs mapping independently of optzoo;
* negative controls: the known non-torch variants (optax.nadam, optax.amsgrad,
  optax.adagrad, eps inside the sqrt, a zero-initialised dampened momentum
  buffer, optax.radam's eps on sqrt(v_hat)) do NOT match, which proves the
  fixtures discriminate those mistakes;
* every setting produces a trajectory different from the alias' first
  setting, so each hyperparameter that is varied is actually exercised.
"""
from __future__ import annotations

import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers

RTOL = 1e-6
# Relative error is elementwise |a - e| / max(|e|, FLOOR): iterates are O(1),
# so the floor only matters for coordinates that pass close to zero.
FLOOR = 1e-3

ALIASES = ("sgd", "nag", "sgdw", "adagrad", "rmsprop", "adam", "amsgrad",
           "adamw", "nadam", "radam", "adabound")


@functools.lru_cache(maxsize=None)
def load_problems():
  with np.load(helpers.fixture_path("aliases_problems.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def load_alias(alias):
  with np.load(helpers.fixture_path(f"aliases_{alias}.npz")) as f:
    data = {k: f[k] for k in f.files}
  n = len([k for k in data if k.endswith("_kwargs")])
  settings = []
  for k in range(n):
    settings.append(dict(
        kwargs=json.loads(str(data[f"s{k}_kwargs"])),
        torch=str(data[f"s{k}_torch"]),
        quad=data[f"s{k}_quad"],
        tree={"b": data[f"s{k}_tree_b"], "s": data[f"s{k}_tree_s"],
              "w": data[f"s{k}_tree_w"]},
    ))
  return data["steps"], settings


def _cases():
  out = []
  for alias in ALIASES:
    _, settings = load_alias(alias)
    for k, s in enumerate(settings):
      out.append(pytest.param(alias, k, id=f"{alias}-s{k}-{_short(s['kwargs'])}"))
  return out


def _short(kw):
  parts = []
  for key, v in sorted(kw.items()):
    if isinstance(v, dict):
      v = "sched"
    parts.append(f"{key}={v}")
  return ",".join(parts).replace("learning_rate", "lr")


def to_optzoo_kwargs(kwargs):
  """Fixture kwargs -> Python kwargs (turns a schedule spec into a callable)."""
  kw = dict(kwargs)
  lr = kw.get("learning_rate")
  if isinstance(lr, dict):
    assert lr["schedule"] == "exponential"
    init, rate = lr["init"], lr["rate"]
    kw["learning_rate"] = lambda count: init * jnp.asarray(
        rate, jnp.float64) ** count
  return kw


def quad_problem():
  p = load_problems()
  a, b = jnp.asarray(p["quad_a"]), jnp.asarray(p["quad_b"])
  loss = lambda x: 0.5 * x @ a @ x - b @ x  # noqa: E731
  return jnp.asarray(p["quad_x0"]), jax.grad(loss)


def tree_problem():
  p = load_problems()
  a, c = jnp.asarray(p["tree_a"]), jnp.asarray(p["tree_c"])

  def loss(params):
    x = jnp.concatenate([jnp.ravel(params[k]) for k in ("b", "s", "w")])
    return 0.5 * x @ a @ x - c @ x + 0.1 * jnp.sum(x**4) / x.size

  params0 = {"b": jnp.asarray(p["tree_b0"]), "s": jnp.asarray(p["tree_s0"]),
             "w": jnp.asarray(p["tree_w0"])}
  return params0, jax.grad(loss)


def _scan(tx, params, grad_fn, num_steps):
  state = tx.init(params)

  def body(carry, _):
    p, s = carry
    u, s = tx.update(grad_fn(p), s, p)
    p = optax.apply_updates(p, u)
    return (p, s), p

  return jax.lax.scan(body, (params, state), None, length=num_steps)[1]


def trajectory_errors(tx, alias, k):
  """(quad error, tree error) of `tx` against fixture setting k of alias.

  Both problems run in one jitted function (one compilation per case).
  """
  steps, settings = load_alias(alias)
  s = settings[k]
  num_steps = int(load_problems()["num_steps"])
  idx = np.asarray(steps) - 1
  x0, gq = quad_problem()
  p0, gt = tree_problem()
  tq, tt = jax.jit(lambda a, b: (_scan(tx, a, gq, num_steps),
                                 _scan(tx, b, gt, num_steps)))(x0, p0)
  for leaf in jax.tree.leaves((tq, tt)):
    assert leaf.dtype == jnp.float64
  eq = helpers.max_rel_err(np.asarray(tq)[idx], s["quad"], floor=FLOOR)
  et = helpers.max_rel_err(jax.tree.map(lambda t: np.asarray(t)[idx], tt),
                           s["tree"], floor=FLOOR)
  return eq, et


# ---------------------------------------------------------------------------
# optzoo vs torch.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias,k", _cases())
def test_alias_matches_reference(alias, k):
  import optzoo
  _, settings = load_alias(alias)
  kwargs = settings[k]["kwargs"]
  tx = getattr(optzoo, alias)(**to_optzoo_kwargs(kwargs))
  eq, et = trajectory_errors(tx, alias, k)
  msg = (f"optzoo.{alias}({kwargs}) vs {settings[k]['torch']}: max rel err"
         f" quad={eq:.3g}, tree={et:.3g}")
  assert eq <= RTOL and et <= RTOL, msg


def test_fixtures_cover_every_alias_and_300_steps():
  files = {os.path.basename(f) for f in glob.glob(
      helpers.fixture_path("aliases_*.npz"))}
  assert {f"aliases_{a}.npz" for a in ALIASES} <= files
  assert int(load_problems()["num_steps"]) >= 300
  total = sum(os.path.getsize(helpers.fixture_path(f)) for f in files)
  assert total < 2 * 2**20, total
  for alias in ALIASES:
    steps, settings = load_alias(alias)
    assert steps[-1] >= 300 and len(settings) >= 2, alias


@pytest.mark.parametrize("alias", ALIASES)
def test_fixture_settings_are_distinct_and_move(alias):
  """Each setting changes the trajectory; no trajectory is trivially short."""
  _, settings = load_alias(alias)
  p = load_problems()
  xstar = np.linalg.solve(p["quad_a"], p["quad_b"])
  d0 = np.linalg.norm(p["quad_x0"] - xstar)
  for k, s in enumerate(settings):
    # Not converged after 10 steps, and far from the start after 300.
    assert np.linalg.norm(s["quad"][9] - xstar) > 0.1 * d0, (alias, k)
    assert np.linalg.norm(s["quad"][-1] - p["quad_x0"]) > 0.5 * d0, (alias, k)
    if k:
      diff = max(
          helpers.max_rel_err(s["quad"], settings[0]["quad"], floor=FLOOR),
          helpers.max_rel_err(s["tree"], settings[0]["tree"], floor=FLOOR))
      assert diff > 1e-4, (alias, k, diff)


# ---------------------------------------------------------------------------
# Positive controls: optax equivalents documented to equal torch.
# ---------------------------------------------------------------------------


def _optax_sgd(kw):
  assert not kw.get("dampening") and not kw.get("weight_decay")
  return optax.sgd(kw["learning_rate"], kw.get("momentum") or None,
                   nesterov=kw.get("nesterov", False))


def _optax_rmsprop(kw, eps_in_sqrt=False):
  assert not kw.get("weight_decay")
  return optax.rmsprop(kw["learning_rate"], decay=kw.get("decay", 0.99),
                       eps=kw.get("eps", 1e-8), eps_in_sqrt=eps_in_sqrt,
                       centered=kw.get("centered", False),
                       momentum=kw.get("momentum") or None)


POSITIVE = [
    ("sgd", 0, _optax_sgd),
    ("sgd", 1, _optax_sgd),
    ("sgd", 2, _optax_sgd),
    ("sgd", 5, _optax_sgd),
    ("nag", 0, lambda kw: optax.sgd(kw["learning_rate"], 0.9, nesterov=True)),
    ("adam", 0, lambda kw: optax.adam(kw["learning_rate"])),
    ("adam", 3, lambda kw: optax.adam(kw["learning_rate"], eps=kw["eps"])),
    ("adam", 4, lambda kw: optax.adam(kw["learning_rate"])),
    ("adamw", 0, lambda kw: optax.adamw(kw["learning_rate"], weight_decay=1e-2)),
    ("adamw", 2, lambda kw: optax.adamw(kw["learning_rate"], b1=kw["b1"],
                                        b2=kw["b2"],
                                        weight_decay=kw["weight_decay"])),
    ("rmsprop", 0, _optax_rmsprop),
    ("rmsprop", 1, _optax_rmsprop),
    ("rmsprop", 2, _optax_rmsprop),
]


@pytest.mark.parametrize("alias,k,make", POSITIVE,
                         ids=[f"{a}-s{k}" for a, k, _ in POSITIVE])
def test_positive_control_optax_equals_fixture(alias, k, make):
  _, settings = load_alias(alias)
  tx = make(to_optzoo_kwargs(settings[k]["kwargs"]))
  eq, et = trajectory_errors(tx, alias, k)
  assert eq <= RTOL and et <= RTOL, (eq, et)


# ---------------------------------------------------------------------------
# Negative controls: plausible wrong implementations must NOT match.
# ---------------------------------------------------------------------------


def _zero_init_dampened_sgd(kw):
  """torch-like SGD but with the momentum buffer starting at 0 (wrong)."""
  return optax.chain(
      optax.add_decayed_weights(kw["weight_decay"]),  # coupled L2 here
      optax.scale(1.0 - kw["dampening"]),
      optax.trace(kw["momentum"]),
      optax.scale(-kw["learning_rate"]))


NEGATIVE = [
    # optax.nadam has no mu_t schedule.
    ("nadam", 0, lambda kw: optax.nadam(kw["learning_rate"])),
    # optax.amsgrad takes the max over bias-corrected v_hat.
    ("amsgrad", 0, lambda kw: optax.amsgrad(kw["learning_rate"])),
    ("adam", 2, lambda kw: optax.amsgrad(kw["learning_rate"], b2=kw["b2"])),
    # optax.adagrad puts eps inside the sqrt.
    ("adagrad", 2, lambda kw: optax.adagrad(
        kw["learning_rate"], initial_accumulator_value=0.1, eps=kw["eps"])),
    # eps inside the sqrt (optax.rmsprop default).
    ("rmsprop", 1, functools.partial(_optax_rmsprop, eps_in_sqrt=True)),
    # optax.rmsprop applies the learning rate *before* the momentum trace, so
    # with a schedule its buffer mixes past learning rates (torch: after).
    ("rmsprop", 4, _optax_rmsprop),
    # Dampened momentum whose first buffer is (1-d) g instead of g.
    ("sgd", 3, _zero_init_dampened_sgd),
    # optax.radam puts eps on sqrt(v_hat) instead of sqrt(v).
    ("radam", 2, lambda kw: optax.radam(kw["learning_rate"], b1=kw["b1"],
                                        b2=kw["b2"], eps=kw["eps"])),
    # Adam with L2 instead of AdamW's decoupled decay.
    ("adamw", 2, lambda kw: optax.chain(
        optax.add_decayed_weights(kw["weight_decay"]),
        optax.adam(kw["learning_rate"], b1=kw["b1"], b2=kw["b2"]))),
]


@pytest.mark.parametrize("alias,k,make", NEGATIVE,
                         ids=[f"{a}-s{k}" for a, k, _ in NEGATIVE])
def test_negative_control_fixture_discriminates(alias, k, make):
  _, settings = load_alias(alias)
  tx = make(to_optzoo_kwargs(settings[k]["kwargs"]))
  eq, et = trajectory_errors(tx, alias, k)
  assert max(eq, et) > 100 * RTOL, (eq, et)
