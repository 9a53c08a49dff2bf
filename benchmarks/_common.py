"""Shared benchmark machinery: problems, donated jitted steps, timing, roofline.

A *step* is ``(params, state) <- apply_updates(params, tx.update(grads,
state, params))`` jitted with params and state donated, as in a real training
loop. Timings are medians over interleaved repeats (optzoo, optax, roofline
in turn) after a warm-up, each sample averaging enough calls to last ~30 ms.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_params(n_params: int, n_leaves: int, dtype=jnp.float32, seed=0):
  """``n_leaves`` 1-D leaves summing to ``n_params`` (a dict, sorted keys)."""
  sizes = [n_params // n_leaves] * n_leaves
  sizes[-1] += n_params - sum(sizes)
  key = jax.random.key(seed)
  params, grads = {}, {}
  for i, n in enumerate(sizes):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    params[f"p{i:04d}"] = jax.random.normal(k1, (n,), dtype)
    grads[f"p{i:04d}"] = 1e-2 * jax.random.normal(k2, (n,), dtype)
  return params, grads


def make_transformer_params(n_matrices: int = 4, shape=(1024, 4096),
                            dtype=jnp.float32, seed=0):
  """A transformer-like tree: ``n_matrices`` weight matrices of ``shape``,
  each with a bias of ``shape[-1]`` (dicts ``layer_i/{kernel,bias}``)."""
  key = jax.random.key(seed)
  params, grads = {}, {}
  for i in range(n_matrices):
    k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(key, i), 4)
    params[f"layer_{i}"] = {
        "kernel": jax.random.normal(k1, shape, dtype) / np.sqrt(shape[0]),
        "bias": 1e-2 * jax.random.normal(k2, shape[-1:], dtype)}
    grads[f"layer_{i}"] = {
        "kernel": 1e-2 * jax.random.normal(k3, shape, dtype),
        "bias": 1e-2 * jax.random.normal(k4, shape[-1:], dtype)}
  return params, grads


def state_bytes_per_param(tx: optax.GradientTransformation, params: Any) -> float:
  """Bytes of ``tx.init(params)`` per parameter, by ``jax.eval_shape`` (no
  allocation)."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
  state = jax.eval_shape(tx.init, shapes)
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(shapes))
  return tree_bytes(state) / n


def tree_bytes(tree: Any) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * np.size(x)
                 for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def copy_tree(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class Stepper:
  """A donated, AOT-compiled step; ``compile_s`` is trace+lower+compile."""

  def __init__(self, step_fn: Callable, params, state, grads):
    # Fresh buffers: init functions may hand out shared (cached) zeros, and a
    # donated buffer must appear only once.
    params, state = copy_tree(params), copy_tree(state)
    self.params, self.state, self.grads = params, state, grads
    t0 = time.perf_counter()
    self.compiled = jax.jit(step_fn, donate_argnums=(0, 1)).lower(
        params, state, grads).compile()
    self.compile_s = time.perf_counter() - t0
    self.calls = 1

  def run(self, calls: int) -> float:
    p, s = self.params, self.state
    t0 = time.perf_counter()
    for _ in range(calls):
      p, s = self.compiled(p, s, self.grads)
    jax.block_until_ready((p, s))
    dt = (time.perf_counter() - t0) / calls
    self.params, self.state = p, s
    return dt

  def calibrate(self, target_s: float = 0.03):
    self.run(2)  # warm-up
    one = self.run(1)
    self.calls = int(max(1, min(200, target_s / max(one, 1e-6))))


def optimizer_step(tx: optax.GradientTransformation):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def make_roofline():
  """The roofline kernel: the same bytes as an optimizer step (read params,
  grads and state; write params and state) with trivial elementwise math on
  donated buffers. Its measured bandwidth defines the roofline."""

  def leaf_update(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return (x * 0.999 + 1e-3).astype(x.dtype)
    if jnp.issubdtype(x.dtype, jnp.integer):
      return x + 1
    return x

  def step(params, state, grads):
    params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
    return params, jax.tree.map(leaf_update, state)

  return step


def timed_samples(steppers: dict, repeats: int) -> dict:
  """Interleaved rounds: {name: [seconds per step, one per round]}. In each
  round every stepper runs once, in turn, so slow drifts of the machine hit
  all of them alike."""
  for s in steppers.values():
    s.calibrate()
  samples = {k: [] for k in steppers}
  order = list(steppers)
  for r in range(repeats):
    # Alternate the order (ABC, CBA, ...) so that drift within a round does
    # not always favour the same stepper.
    for k in (order if r % 2 == 0 else order[::-1]):
      samples[k].append(steppers[k].run(steppers[k].calls))
  return samples


def paired_ratio(samples: dict, a: str, b: str) -> float:
  """Median over rounds of ``a``'s time / ``b``'s time in the same round."""
  return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


def min_ratio(samples: dict, a: str, b: str) -> float:
  """``a``'s fastest round / ``b``'s fastest round. Interference from other
  processes only ever slows a sample down, so the minimum is the least noisy
  estimate of what the code itself costs (the advice of Python's timeit)."""
  return min(samples[a]) / min(samples[b])


def machine_info() -> dict:
  import optax as _optax
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import os
  return {
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
      "cpu": cpu,
      "cores": os.cpu_count(),
      "jax": jax.__version__,
      "optax": _optax.__version__,
      "python": platform.python_version(),
  }
