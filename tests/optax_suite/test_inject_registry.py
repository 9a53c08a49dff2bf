"""Every registered transformation under ``optax.inject_hyperparams``.

* State structure does not depend on whether a hyperparameter is a Python
  literal or an injected array: a checkpoint of ``X(**example)`` restores
  into ``inject_hyperparams(X)(**example)`` (and back) and training continues
  bit-identically (float64, the jitted steps of tests/test_checkpoint.py).
  Exception (``LAST_BIT``: sgdw, rmsprop): XLA:CPU fuses ``p + (-lr) * u``
  into one kernel when ``lr`` is a literal and not when it is an array, and
  LLVM contracts a multiply-add inside one kernel into an FMA instruction, so
  a scalar parameter differs in the last bit; the resumed run agrees to 1e-14
  (the updates themselves are bit-identical). optax's own chains of the same
  links do the same, and on a CPU target without FMA instructions
  (``--xla_cpu_max_isa=AVX``) both runs are bit-identical (tested below).
* float32, bfloat16 and complex64 params, ``init`` and ``update`` outside
  ``jit`` (hyperparameters then arrive as bf16 / complex64 arrays): updates
  keep the params' dtype, are finite, and equal the non-injected updates.
  A bf16 hyperparameter that rounds onto a bound (``b2=0.999`` -> 1.0) is a
  ValueError naming bfloat16; ``hyperparam_dtype=jnp.float32`` then works.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import optzoo
import registry_cases
from test_registry_validation import (assert_trees_equal, cached_setup,
                                      extra_args, ids, make_step, problem,
                                      transformation_infos)

_TRANSFORMS = transformation_infos()
N_BEFORE, N_AFTER = 3, 3

# Hyperparameters that shape the computation (sizes, axes): static under
# inject_hyperparams, as optax's own tests do for adafactor.
STATIC_ARGS: dict = {
    "group_leaves": ("max_leaf_size",),
    "weight_rescaling": ("axis",),
    "monitor_norms": ("history",),
    "adam_8bit": ("block_size", "min_size"),
    "adamw_8bit": ("block_size", "min_size"),
    "quantize_state": ("block_size", "min_size"),
    "lbfgs": ("max_iter", "max_eval", "history_size"),
    # Payload sizes (ratio, rank, levels) shape the communicated arrays; an
    # integer seed is not a PRNG key array.
    "topk_compression": ("ratio",),
    "randomk_compression": ("ratio", "key"),
    "qsgd": ("num_levels", "key"),
    "powersgd": ("rank", "start_iter", "min_compression_rate", "key"),
}
# Same state, same steps, but XLA contracts the literal -lr * u into the
# parameter add (an FMA) and not the injected one (last bit of a scalar leaf).
# Without FMA instructions there is nothing to contract: bitwise for all.
NO_FMA_FLAG = "--xla_cpu_max_isa=AVX"
LAST_BIT = (set() if NO_FMA_FLAG in os.environ.get("XLA_FLAGS", "")
            else {"sgdw", "rmsprop"})


def _kwargs(info):
  kw = registry_cases.example(info.name)
  for key in ("inner", "base_optimizer"):
    if isinstance(kw.get(key), str):
      kw[key] = registry_cases.build(kw[key])
  return kw


def _injected(info, **inject_kw):
  return optax.inject_hyperparams(
      info.factory, static_args=STATIC_ARGS.get(info.name, ()), **inject_kw)(
          **_kwargs(info))


def _avals(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.asarray(x).dtype), tree)


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_checkpoint_moves_between_literal_and_injected(info):
  tx, step, params0 = cached_setup(info.name)
  inj = _injected(info)
  s_lit, s_inj = tx.init(params0), inj.init(params0)
  assert jax.tree.structure(s_lit) == jax.tree.structure(s_inj.inner_state), (
      f"{info.name}: X(...) and inject_hyperparams(X)(...) states differ:\n"
      f"{jax.tree.structure(s_lit)}\n{jax.tree.structure(s_inj.inner_state)}")
  assert _avals(s_lit) == _avals(s_inj.inner_state), info.name

  _, pel, targets = problem(jnp.float64)
  inj_step = make_step(info, inj, pel, targets)
  params, state = params0, s_lit
  for i in range(N_BEFORE):
    params, state, _ = step(params, state, i)
  # Literal -> injected: restore the bytes into the injected state's slot.
  data = serialization.to_bytes({"params": params, "opt_state": state})
  restored = serialization.from_bytes(
      {"params": params0, "opt_state": s_inj.inner_state}, data)
  restored = jax.tree.map(jnp.asarray, restored)
  p_inj = restored["params"]
  st_inj = s_inj._replace(count=jnp.asarray(N_BEFORE, jnp.int32),
                          inner_state=restored["opt_state"])
  p_ref, s_ref = params, state
  for i in range(N_BEFORE, N_BEFORE + N_AFTER):
    p_ref, s_ref, _ = step(p_ref, s_ref, i)
    p_inj, st_inj, _ = inj_step(p_inj, st_inj, i)
  if info.name in LAST_BIT:
    for a, b in zip(jax.tree.leaves((p_inj, st_inj.inner_state)),
                    jax.tree.leaves((p_ref, s_ref))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14,
                                 atol=1e-300, err_msg=info.name)
  else:
    assert_trees_equal(p_inj, p_ref, f"{info.name} injected vs literal: params")
    assert_trees_equal(st_inj.inner_state, s_ref, f"{info.name}: state")
  # Injected -> literal.
  data = serialization.to_bytes(st_inj.inner_state)
  back = jax.tree.map(jnp.asarray, serialization.from_bytes(tx.init(params0), data))
  assert_trees_equal(back, st_inj.inner_state, f"{info.name}: injected state into X")


# optax's own chains for the LAST_BIT methods (same links, same hyperparameters).
_OPTAX_TWINS = {
    "sgdw": lambda learning_rate=0.05, weight_decay=5e-4: optax.chain(
        optax.trace(0.9), optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate)),
    "rmsprop": lambda learning_rate=0.01: optax.rmsprop(
        learning_rate, decay=0.99, eps=1e-8, eps_in_sqrt=False),
}


def _final_params(info, tx, num_steps=N_BEFORE + N_AFTER):
  params, pel, targets = problem(jnp.float64)
  state, step = tx.init(params), make_step(info, tx, pel, targets)
  for i in range(num_steps):
    params, state, _ = step(params, state, i)
  return params


def _bit_identical(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", sorted(LAST_BIT))
def test_last_bit_exceptions_are_xla_fusion_shared_by_optax(name):
  """The LAST_BIT difference is XLA's, not optzoo's: the same chain built from
  optax's own links shows it too (a literal ``-lr`` is fused into the params
  add, an injected one is not), and optzoo's literal/injected runs agree
  exactly when and only when optax's do."""
  info = optzoo.get_info(name)
  twin = _OPTAX_TWINS[name]
  optax_same = _bit_identical(_final_params(info, twin()),
                              _final_params(info, optax.inject_hyperparams(twin)()))
  optzoo_same = _bit_identical(_final_params(info, info.factory(**_kwargs(info))),
                               _final_params(info, _injected(info)))
  assert optax_same == optzoo_same, (name, optax_same, optzoo_same)


def test_last_bit_exceptions_are_bitwise_without_fma():
  """The same checkpoint test for the LAST_BIT methods, in a fresh process
  whose XLA:CPU target has no FMA instructions: literal and injected runs are
  then bit-identical (LAST_BIT is empty there), so the difference is the FMA
  contraction alone."""
  flags = f"--xla_force_host_platform_device_count=8 {NO_FMA_FLAG}"
  tests = [f"{__file__}::test_checkpoint_moves_between_literal_and_injected[{n}]"
           for n in ("sgdw", "rmsprop")]
  env = dict(os.environ, XLA_FLAGS=flags)
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       "-p", "no:xdist", *tests],
      env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "2 passed" in out.stdout, out.stdout[-3000:]


def _grads(params):
  def g(p):
    x = 0.5 * p + 0.25
    if jnp.iscomplexobj(p):
      x = x * (1.0 - 0.5j)
    return x.astype(p.dtype)
  return jax.tree.map(g, params)


_SMALL = {"w": (3, 4), "s": ()}


def _run_eager(tx, info, params):
  """init and one update, outside jit."""
  _, pel, targets = problem(jnp.float64, shapes=_SMALL)
  state = tx.init(params)
  extra = extra_args(info, jax.tree.map(lambda p: p.real.astype(jnp.float64),
                                        params), pel, targets, step=0)
  return tx.update(_grads(params), state, params, **extra)[0]


# A complex value cast to a real dtype would drop the imaginary part silently.
@pytest.mark.filterwarnings("error::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_inject_hyperparams_f32_bf16_complex64_outside_jit(info):
  base_params = problem(jnp.float32, shapes=_SMALL)[0]
  dtypes = (jnp.float32, jnp.bfloat16, jnp.complex64)
  for dtype in dtypes:
    params = jax.tree.map(lambda p: p.astype(dtype), base_params)
    if dtype == jnp.complex64:
      params = jax.tree.map(lambda p: p * (1 + 0.5j), params)
    try:
      u_inj = _run_eager(_injected(info), info, params)
    except ValueError as e:
      if dtype != jnp.bfloat16 or "bfloat16" not in str(e):
        raise
      u_inj = _run_eager(_injected(info, hyperparam_dtype=jnp.float32), info, params)
    if dtype == jnp.bfloat16:
      continue  # bf16 hyperparameters (e.g. 0.99 -> 0.98828125) differ by design
    u_lit = _run_eager(registry_cases.build(info), info, params)
    for (path, u), p in zip(jax.tree_util.tree_leaves_with_path(u_inj),
                            jax.tree.leaves(params)):
      where = f"{info.name} {jnp.dtype(dtype).name}{jax.tree_util.keystr(path)}"
      assert u.dtype == p.dtype, where
      assert bool(jnp.all(jnp.isfinite(u))), where
    tol = 1e-4  # float32 hyperparameters vs Python-float literals
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(u_inj),
                            jax.tree.leaves(u_lit)):
      np.testing.assert_allclose(
          np.asarray(a.astype(jnp.complex64 if dtype == jnp.complex64 else jnp.float32)),
          np.asarray(b.astype(jnp.complex64 if dtype == jnp.complex64 else jnp.float32)),
          rtol=tol, atol=tol * 1e-2,
          err_msg=f"{info.name} {jnp.dtype(dtype).name}{jax.tree_util.keystr(path)}")
