"""Shared test utilities: problems, trajectory runners, compile counters."""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_path(name: str) -> str:
  return os.path.join(FIXTURES, name)


def spd_quadratic(n: int = 6, seed: int = 0, cond: float = 50.0):
  """A random SPD quadratic f(x) = 1/2 x^T A x - b^T x (NumPy arrays)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eig = np.geomspace(1.0, cond, n)
  a = (q * eig) @ q.T
  b = rng.normal(size=n)
  x0 = rng.normal(size=n)
  return a, b, x0


def pytree_problem(seed: int = 1):
  """A pytree quadratic with several leaves of different shapes.

  Returns (params0, grad_fn, loss_fn) with params a dict of float64 arrays;
  the loss couples leaves through a shared SPD matrix.
  """
  rng = np.random.default_rng(seed)
  shapes = {"w": (3, 4), "b": (4,), "s": ()}
  n = sum(int(np.prod(s)) for s in shapes.values())
  a, c, _ = spd_quadratic(n, seed=seed + 10, cond=20.0)
  params0 = {k: rng.normal(size=s) for k, s in shapes.items()}

  def flat(p):
    return jnp.concatenate([jnp.ravel(p[k]) for k in sorted(shapes)])

  def loss_fn(p):
    x = flat(p)
    return 0.5 * x @ jnp.asarray(a) @ x - jnp.asarray(c) @ x + 0.1 * jnp.sum(x**4) / n

  return params0, jax.grad(loss_fn), loss_fn


def run_trajectory(
    tx: optax.GradientTransformation,
    params,
    grad_fn: Callable[[Any], Any],
    steps: int,
    extra_args_fn: Callable[[Any, int], dict] | None = None,
):
  """Runs `steps` jitted optimizer steps; returns the stacked params trajectory.

  The trajectory has shape (steps, *param_shape) per leaf: entry t is the
  params after step t+1.
  """
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)

  def body(carry, t):
    p, s = carry
    g = grad_fn(p)
    extra = extra_args_fn(p, t) if extra_args_fn is not None else {}
    u, s = tx.update(g, s, p, **extra)
    p = optax.apply_updates(p, u)
    return (p, s), p

  (_, _), traj = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(steps)))(
      (params, state))
  return traj


def max_rel_err(actual, expected, floor: float = 1e-12) -> float:
  """max |a - e| / max(|e|, floor) over all leaves, NumPy float64."""
  errs = jax.tree.map(
      lambda a, e: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64))
                                / np.maximum(np.abs(np.asarray(e, np.float64)), floor))),
      actual, expected)
  return max(jax.tree.leaves(errs)) if jax.tree.leaves(errs) else 0.0


class TraceCounter:
  """Wraps a function for jax.jit and counts how often it is traced.

  >>> step = TraceCounter(lambda p, s, g: tx.update(g, s, p))
  >>> jstep = jax.jit(step)
  ... call twice ...
  >>> assert step.count == 1
  """

  def __init__(self, fn):
    self.fn = fn
    self.count = 0

  def __call__(self, *args, **kwargs):
    self.count += 1
    return self.fn(*args, **kwargs)
