"""Loads the large-scale fixtures (tests/gen_large_scale_fixtures.py) and runs
an optzoo transformation on the same problem, all steps in one jitted scan."""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import helpers

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
RTOL = 1e-6
FLOOR = 1e-3   # relative errors are taken against max(|reference|, FLOOR)
LEAVES = ("b", "s", "t", "w", "z")


@functools.lru_cache(maxsize=None)
def problem():
  d = np.load(os.path.join(FIXTURES, "large_scale_problem.npz"))
  p0 = {k: d[f"p0_{k}"] for k in LEAVES}
  return d["a"], d["c"], p0, int(d["num_steps"])


@functools.lru_cache(maxsize=None)
def settings(method):
  d = np.load(os.path.join(FIXTURES, f"large_scale_{method}.npz"))
  out = []
  k = 0
  open_loop = set(int(i) for i in d["open_loop"])
  while f"s{k}_kwargs" in d:
    out.append({"kwargs": json.loads(str(d[f"s{k}_kwargs"])),
                "ref": str(d[f"s{k}_ref"]),
                "traj": {leaf: d[f"s{k}_{leaf}"] for leaf in LEAVES},
                "full": ({leaf: d[f"s{k}_full_{leaf}"] for leaf in LEAVES}
                         if k in open_loop else None)})
    k += 1
  return np.asarray(d["steps"]), out


def optzoo_kwargs(kwargs):
  kw = dict(kwargs)
  lr = kw.get("learning_rate")
  if isinstance(lr, dict):
    init, rate = lr["init"], lr["rate"]
    kw["learning_rate"] = lambda count: init * rate ** count
  return kw


def grad_fn():
  a, c, p0, _ = problem()
  a, c = jnp.asarray(a), jnp.asarray(c)
  n = a.shape[0]
  sizes = [int(np.prod(p0[k].shape)) for k in LEAVES]

  def g(params):
    x = jnp.concatenate([jnp.ravel(params[k]) for k in LEAVES])
    full = a @ x - c + 0.4 * x ** 3 / n
    out, off = {}, 0
    for k, m in zip(LEAVES, sizes):
      out[k] = full[off:off + m].reshape(p0[k].shape)
      off += m
    return out

  return g


def trajectory(tx, num_steps=None):
  """Params after every step (leading axis = step - 1), float64."""
  _, _, p0, n = problem()
  num_steps = n if num_steps is None else num_steps
  params = {k: jnp.asarray(v, jnp.float64) for k, v in p0.items()}
  g = grad_fn()

  @jax.jit
  def run(params):
    state = tx.init(params)

    def body(carry, _):
      p, s = carry
      u, s = tx.update(g(p), s, p)
      p = optax.apply_updates(p, u)
      return (p, s), p

    return jax.lax.scan(body, (params, state), None, length=num_steps)[1]

  return run(params)


def error(tx, method, k):
  """Max relative error of ``tx`` against setting k of ``method``."""
  steps, sets = settings(method)
  traj = trajectory(tx)
  idx = np.asarray(steps) - 1
  return helpers.max_rel_err({leaf: np.asarray(traj[leaf])[idx] for leaf in LEAVES},
                             sets[k]["traj"], floor=FLOOR)


def open_loop_error(tx, method, k):
  """Max relative error of one step of ``tx`` from each reference iterate.

  Step t starts from the reference's params after step t-1 (its gradients,
  hence its moments, are the reference's) and is compared with the
  reference's params after step t: no chaotic amplification of round-off.
  """
  _, sets = settings(method)
  full = {leaf: jnp.asarray(v) for leaf, v in sets[k]["full"].items()}
  g = grad_fn()

  @jax.jit
  def run(full):
    start = {leaf: v[0] for leaf, v in full.items()}
    prev = {leaf: v[:-1] for leaf, v in full.items()}

    def body(s, p):
      u, s = tx.update(g(p), s, p)
      return s, optax.apply_updates(p, u)

    return jax.lax.scan(body, tx.init(start), prev)[1]

  nxt = run(full)
  return helpers.max_rel_err({leaf: np.asarray(nxt[leaf]) for leaf in LEAVES},
                             {leaf: np.asarray(v[1:]) for leaf, v in full.items()},
                             floor=FLOOR)


def reference_error(tx, method, k):
  """Open-loop error for the settings stored for it, closed-loop otherwise."""
  s = settings(method)[1][k]
  if s["full"] is not None:
    return open_loop_error(tx, method, k)
  return error(tx, method, k)
