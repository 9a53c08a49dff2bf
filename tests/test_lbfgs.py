"""optzoo.lbfgs vs torch.optim.LBFGS (torch 2.13, float64).

Fixture ``tests/fixtures/torch_optim_lbfgs.npz`` (tests/gen_torch_optim_fixtures.py).
Each ``update`` is one ``LBFGS.step(closure)`` with up to ``max_iter`` inner
iterations, so few outer steps cover many iterations: per setting the torch
run's total inner iterations / function evaluations are stored and must be
reproduced exactly, and the parameters after every outer step to 1e-6.

* tree problem, a new "batch" (linear term) every outer step, 20 outer steps:
  fixed step lr=0.2 (400 iterations); lr=0.2, max_iter=25, max_eval=22
  (10 outer steps, 210 iterations, cut by max_eval); lr=0.2, tolerance_grad=1e-2,
  tolerance_change=1e-6 (397 iterations, early stops); strong Wolfe with
  torch defaults (129 iterations, 154 evaluations);
* 6-d Rosenbrock, 12 outer steps, strong Wolfe: history 5 (the memory wraps
  around), max_iter 30 (71 iterations, 84 evaluations, bracket and zoom phases
  both used) and max_iter 8, max_eval 10, lr 0.7 (58 iterations: the line
  search is cut by max_eval).

Fixed-step runs with a small history on the noisy problem are chaotic in
torch itself (a 1e-13 change of x0 moves the result by 1e-3), so the memory
wrap-around is checked on Rosenbrock with the line search.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from test_classic import load, problems, rel_err, tree_loss, tree_params0


def rosen(params):
  x = params["x"]
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def build(kwargs, **over):
  kw = {k: v for k, v in kwargs.items() if not k.startswith("_")}
  kw.update(over)
  return optzoo.lbfgs(**kw)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(tx, problem, outer):
  p = problems()
  if problem == "rosen":
    params = {"x": jnp.asarray(p["rosen_x0"])}
  else:
    params = tree_params0()
  cs = jnp.asarray(p["tree_c"]) + jnp.asarray(p["lbfgs_noise"])[:outer]

  def body(carry, c):
    params, state = carry
    if problem == "rosen":
      f = rosen
    else:
      f = lambda q: tree_loss(q, c)  # noqa: E731
    value_fn = lambda q, i: f(q)  # noqa: E731
    u, state = tx.update(jax.grad(f)(params), state, params, value_fn=value_fn)
    params = optax.apply_updates(params, u)
    return (params, state), (params, state.n_iter, state.func_evals)

  _, out = jax.lax.scan(body, (params, tx.init(params)), cs)
  return out


def run(setting, **over):
  kw = setting["kwargs"]
  return _run(build(kw, **over), kw["_problem"], kw["_outer"])


@pytest.mark.parametrize("k", range(6))
def test_matches_torch(k):
  _, settings = load("lbfgs")
  s = settings[k]
  traj, n_iter, evals = run(s)
  a = s["arrays"]
  np.testing.assert_array_equal(np.asarray(n_iter), a["n_iter"])
  np.testing.assert_array_equal(np.asarray(evals), a["func_evals"])
  err = max(rel_err(traj[key], a[key]) for key in traj)
  assert err <= 1e-6, (s["torch"], err)


def test_many_iterations_covered():
  _, settings = load("lbfgs")
  total = [int(s["arrays"]["n_iter"][-1]) for s in settings]
  assert sum(total) >= 800 and max(total) >= 300
  ls = [t for s, t in zip(settings, total) if "line_search_fn" in s["kwargs"]]
  assert sum(ls) >= 250


def test_negative_control():
  """A different memory (history 2 vs torch's 5) or no line search must fail."""
  _, settings = load("lbfgs")
  s = settings[3]
  traj, _, _ = run(s, history_size=2)
  assert max(rel_err(traj[key], s["arrays"][key]) for key in traj) > 1e-3
  s = settings[3]
  traj, _, _ = run(s, line_search_fn=None, learning_rate=1e-3)
  assert max(rel_err(traj[key], s["arrays"][key]) for key in traj) > 1e-3


def test_jit_once_dtype_and_value_arg():
  from helpers import TraceCounter
  tx = optzoo.lbfgs(0.5, max_iter=4, history_size=3)
  f = lambda p: jnp.sum((p["w"] - 0.3) ** 2) + (p["s"] - 1.0) ** 2  # noqa: E731

  def update(p, st, value=None):
    return tx.update(jax.grad(f)(p), st, p, value_fn=lambda q, i: f(q), value=value)

  counter = TraceCounter(update)
  step = jax.jit(counter)
  params = {"w": jnp.ones((3, 2), jnp.float32), "n": None,
            "s": jnp.asarray(2.0, jnp.float32)}
  p0 = params
  state0 = state = tx.init(params)
  for _ in range(3):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  assert params["w"].dtype == jnp.float32 and params["n"] is None
  assert float(f(params)) < 1e-6
  # Passing `value` saves the first evaluation and gives the same result.
  u1, _ = step(p0, state0)
  u2, _ = step(p0, state0, f(p0))
  np.testing.assert_allclose(u1["w"], u2["w"])


def test_missing_value_fn_is_clear():
  tx = optzoo.lbfgs()
  p = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="value_fn"):
    tx.update(p, tx.init(p), p)


@pytest.mark.parametrize("kwargs,param", [
    ({"max_iter": 0}, "max_iter"), ({"max_eval": 0}, "max_eval"),
    ({"history_size": 0}, "history_size"), ({"tolerance_grad": -1.0}, "tolerance_grad"),
    ({"line_search_fn": "wolfe"}, "line_search_fn"), ({"learning_rate": -1.0}, "learning_rate"),
    ({"history_size": 2.0}, "history_size"),
])
def test_bad_input(kwargs, param):
  with pytest.raises((ValueError, TypeError), match=param):
    optzoo.lbfgs(**kwargs)
