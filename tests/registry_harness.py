"""A generic harness to drive every registered optzoo transformation.

Used by tests/test_sharding.py and the other registry-wide tests. It builds one small, smooth problem with a data batch, and
supplies each method's extra arguments generically:

>>> prob = make_problem()
>>> info = optzoo.get_info("koala")
>>> tx = registry_cases.build(info)
>>> state = tx.init(prob.params)
>>> grads = prob.grad_fn(prob.params)
>>> extra = extra_args_for(info, prob.params, prob, step=0)
>>> updates, state = tx.update(grads, state, prob.params, **extra)

The parameter leaves have pairwise distinct shapes, so a state leaf can be
matched to "its" parameter by shape (``param_for_shape``), and their leading
or trailing dimension is 8 or 16 so they can be sharded over 8 devices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

BATCH = 4
N_IN = 8
N_HID = 16


@dataclasses.dataclass(frozen=True)
class Problem:
  """A tiny regression net ``y = tanh(x W + b) V + c`` plus a scale ``s``.

  Attributes:
    params: dict of arrays (shapes (8,16), (16,), (16,8), (8,), ()).
    batch: ``(x, y)`` with ``x: (4, 8)``, ``y: (4, 8)``.
    loss_fn: ``loss_fn(params) -> scalar`` (mean over the batch).
    per_example_loss: ``per_example_loss(params, x_i, y_i) -> scalar``.
    grad_fn: ``grad_fn(params) -> grads`` (of ``loss_fn``).
  """

  params: dict
  batch: tuple
  loss_fn: Callable[[Any], Any]
  per_example_loss: Callable[..., Any]
  grad_fn: Callable[[Any], Any]


def make_problem(seed: int = 0, dtype: Any = jnp.float64) -> Problem:
  """Builds the problem (float64 by default; conftest enables x64)."""
  rng = np.random.default_rng(seed)
  params = {
      "w": jnp.asarray(rng.normal(size=(N_IN, N_HID)) / np.sqrt(N_IN), dtype),
      "b": jnp.asarray(0.1 * rng.normal(size=(N_HID,)), dtype),
      "v": jnp.asarray(rng.normal(size=(N_HID, N_IN)) / np.sqrt(N_HID), dtype),
      "c": jnp.asarray(0.1 * rng.normal(size=(N_IN,)), dtype),
      "s": jnp.asarray(1.0 + 0.1 * rng.normal(), dtype),
  }
  x = jnp.asarray(rng.normal(size=(BATCH, N_IN)), dtype)
  y = jnp.asarray(rng.normal(size=(BATCH, N_IN)), dtype)

  def per_example_loss(p, xi, yi):
    h = jnp.tanh(xi @ p["w"] + p["b"])
    pred = p["s"] * (h @ p["v"]) + p["c"]
    return 0.5 * jnp.sum((pred - yi) ** 2) + 0.01 * jnp.sum(p["w"] ** 2)

  def loss_fn(p):
    return jnp.mean(jax.vmap(per_example_loss, (None, 0, 0))(p, x, y))

  return Problem(params=params, batch=(x, y), loss_fn=loss_fn,
                 per_example_loss=per_example_loss, grad_fn=jax.grad(loss_fn))


def param_for_shape(params: Any, shape: tuple) -> Any:
  """The unique parameter leaf with this shape, or None."""
  hits = [p for p in jax.tree.leaves(params) if np.shape(p) == tuple(shape)]
  return hits[0] if len(hits) == 1 else None


def extra_args_for(info: Any, params: Any, problem: Problem, step: int = 0,
                   key: Any = None) -> dict:
  """The extra arguments ``info.extra_args`` names, computed at ``params``.

  Array-valued arguments are computed here (call it inside ``jit`` to keep
  them on device); callables close over ``problem``. Only the arguments the
  method declares are returned (methods must ignore unknown ones anyway).
  """
  x, y = problem.batch
  wanted = tuple(info.extra_args) if info is not None else ()
  out = {}
  for name in wanted:
    if name == "value":
      out[name] = problem.loss_fn(params)
    elif name == "value_sq":
      losses = jax.vmap(problem.per_example_loss, (None, 0, 0))(params, x, y)
      out[name] = jnp.mean(losses ** 2)
    elif name == "input_power":
      # Data-dependent, as a forward pass's statistics are (a constant would
      # be constant-folded with literal hyperparameters, and not with
      # injected ones: a last-bit difference between the two).
      out[name] = jax.tree.map(lambda p: (1.0 + p * p).astype(p.dtype), params)
    elif name == "per_example_grads":
      out[name] = jax.vmap(jax.grad(problem.per_example_loss), (None, 0, 0))(
          params, x, y)
    elif name == "grad_fn":
      out[name] = lambda p, i: problem.grad_fn(p)
    elif name == "value_fn":
      out[name] = lambda p, i: problem.loss_fn(p)
    elif name == "hvp_fn":
      out[name] = lambda p, v: jax.jvp(problem.grad_fn, (p,), (v,))[1]
    elif name == "batch_size":
      out[name] = BATCH
    elif name == "key":
      base_key = jax.random.key(0) if key is None else key
      out[name] = jax.random.fold_in(base_key, step)
    else:
      raise KeyError(f"registry_harness: unknown extra argument {name!r} of"
                     f" {info.name}; add it to extra_args_for.")
  return out


def make_step(tx: optax.GradientTransformation, info: Any,
              problem: Problem) -> Callable:
  """``step(params, state, t) -> (params, state)``: grads, extras, update."""

  def step(params, state, t):
    grads = problem.grad_fn(params)
    extra = extra_args_for(info, params, problem, step=t)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


def make_update_step(tx: optax.GradientTransformation, info: Any,
                     problem: Problem) -> Callable:
  """``step(params, state, grads, arrays, t) -> (params, state)``.

  Only the optimizer step: gradients and array-valued extra arguments come in
  (computed outside, e.g. by a separately jitted function), the callable
  extra arguments (``grad_fn``, ``value_fn``, ``hvp_fn``) are built inside.
  Use it to inspect what the *optimizer* compiles to (collectives, shardings).
  """

  def step(params, state, grads, arrays, t):
    extra = {k: v for k, v in extra_args_for(info, params, problem, t).items()
             if not _is_array_arg(v)}
    extra.update(arrays)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


def array_extra_args(info: Any, params: Any, problem: Problem, t: Any = 0):
  """The array-valued extra arguments only (jit-friendly)."""
  return {k: v for k, v in extra_args_for(info, params, problem, t).items()
          if _is_array_arg(v)}


def _is_array_arg(v: Any) -> bool:
  """Arrays and pytrees of arrays (not callables, not Python ints)."""
  return not callable(v) and not isinstance(v, (int, float))


def run(tx, info, problem, params=None, steps: int = 3, jit_kwargs=None):
  """Runs ``steps`` jitted steps from ``params``; returns (params, state, fn)."""
  params = problem.params if params is None else params
  state = tx.init(params)
  fn = jax.jit(make_step(tx, info, problem), **(jit_kwargs or {}))
  for t in range(steps):
    params, state = fn(params, state, jnp.asarray(t, jnp.int32))
  return params, state, fn
