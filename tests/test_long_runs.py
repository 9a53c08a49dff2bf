"""Long runs: counters saturate, schedules stay finite, low precision works.

* Every int32 step counter in every registered method's state saturates at
  ``2**31 - 1``: set to ``2**31 - 2`` and stepped a few times it never wraps
  to a negative value, and updates, state and params stay finite.
* Every registered schedule is finite (and >= 0) at steps up to
  ``2**31 - 1``, jitted with one compilation.
* bf16 / fp16 params: every method keeps the dtype, stays finite, and its
  updates at step 1 (where ``1 - b**t`` computed in low precision would round
  to 0) and at a saturated step match the same method run in float64 on the
  same inputs, to a tolerance set by the format's precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import registry_cases
import optzoo
import helpers
from test_registry_validation import (cached_setup, ids, schedule_infos,
                                      transformation_infos)

_TRANSFORMS = transformation_infos()
_SCHEDULES = schedule_infos()
BIG = 2**31 - 2
MAX = 2**31 - 1


def _is_counter(path, leaf) -> bool:
  last = path[-1] if path else None
  name = str(getattr(last, "name", getattr(last, "key", "")))
  return (leaf.dtype == jnp.int32 and leaf.shape == ()
          and ("count" in name.lower() or name == "total_skipped"))


def _counters(state):
  return [(jax.tree_util.keystr(p), l) for p, l in
          jax.tree_util.tree_leaves_with_path(state) if _is_counter(p, l)]


def _set_counters(state, value):
  return jax.tree_util.tree_map_with_path(
      lambda p, l: jnp.asarray(value, l.dtype) if _is_counter(p, l) else l, state)


def _assert_finite(tree, what, allowed=None):
  """All float entries finite, except where ``allowed`` (a tree of bool
  masks, e.g. NaN "not recorded yet" sentinels of the initial state) says."""
  masks = (jax.tree.leaves(allowed) if allowed is not None
           else [None] * len(jax.tree.leaves(tree)))
  for (path, leaf), ok in zip(jax.tree_util.tree_leaves_with_path(tree), masks):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) or a.dtype == jnp.bfloat16:
      fin = np.isfinite(a.astype(np.float64))
      if ok is not None:
        fin = fin | np.asarray(ok)
      assert np.all(fin), f"{what}{jax.tree_util.keystr(path)} is not finite"


def _nonfinite_mask(state):
  return jax.tree.map(
      lambda x: (~np.isfinite(np.asarray(x, np.float64))
                 if (jnp.issubdtype(x.dtype, jnp.inexact)) else np.zeros(x.shape, bool)),
      state)


def _uses_randomness(info, state) -> bool:
  has_key = any(l.dtype == jnp.uint32 or jnp.issubdtype(l.dtype, jax.dtypes.prng_key)
                for l in jax.tree.leaves(state))
  return "key" in info.extra_args or has_key


def _rel_err(u, ref):
  num = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64))**2))
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref)))
  den = sum(float(np.sum(np.asarray(b, np.float64)**2)) for b in jax.tree.leaves(ref))
  return np.sqrt(num) / max(np.sqrt(den), 1e-30), np.sqrt(den)


# Norm-wise relative tolerance of a low-precision update vs float64: a few
# ulps of the format, amplified by the update's few operations.
_TOL = {"bfloat16": 6e-2, "float16": 1e-2}
# Methods whose step-1 update is not a few operations on the gradient, with
# the reason; their low-precision run is only checked for dtype, finiteness
# and counter saturation.
# Fresh (zero) moments at a saturated count: torch's Adafactor adds eps1 =
# the params' machine epsilon (bf16: 2**-7, float64: 2**-52) to the squared
# gradient, so with fresh moments the bf16 and float64 updates differ by design.
_EPS_IS_THE_FORMATS = {"adafactor", "scale_by_factored_rms"}

_NOT_FORMAT_BOUND = {
    "lbfgs": "several quasi-Newton iterations per update: y = g_new - g_old of"
             " low-precision gradients cancels, and the curvature pairs amplify"
             " the format's rounding far beyond a few ulps",
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_low_precision_and_counter_saturation(info, dtype):
  tx, step, params0 = cached_setup(info.name, dtype)
  tx64, step64, _ = cached_setup(info.name, "float64")
  p64 = jax.tree.map(lambda x: x.astype(jnp.float64), params0)
  state = tx.init(params0)
  noisy = _uses_randomness(info, state)
  # Entries that are NaN/Inf at init (sentinels such as "no loss recorded
  # yet") may stay so; any other entry must stay finite.
  sentinel = _nonfinite_mask(state)

  # Steps 1..3 from init: finite, dtype kept; step 1 matches float64.
  params = params0
  for i in range(3):
    new_params, state, u = step(params, state, i)
    _assert_finite(u, f"{info.name}[{dtype}] update at step {i + 1}: ")
    _assert_finite(state, f"{info.name}[{dtype}] state at step {i + 1}: ", sentinel)
    for a, p in zip(jax.tree.leaves(u), jax.tree.leaves(params0)):
      assert a.dtype == p.dtype and a.shape == p.shape, (
          f"{info.name}: update dtype {a.dtype} for a {p.dtype} param")
    if i == 0 and not noisy and info.name not in _NOT_FORMAT_BOUND:
      _, _, u64 = step64(p64, tx64.init(p64), 0)
      err, size = _rel_err(u, u64)
      assert err <= _TOL[dtype] or size < 1e-6, (
          f"{info.name}[{dtype}] step-1 update off by {err:.3g} (norm-wise) vs"
          " float64: is 1 - b**t computed in low precision?")
    params = new_params

  # Saturation: counters at 2**31 - 2, three more steps.
  counters = _counters(state)
  state = _set_counters(state, BIG)
  for i in range(3, 6):
    params, state, u = step(params, state, i)
    _assert_finite(u, f"{info.name}[{dtype}] update near 2**31: ")
    _assert_finite(state, f"{info.name}[{dtype}] state near 2**31: ", sentinel)
  _assert_finite(params, f"{info.name}[{dtype}] params near 2**31: ")
  after = dict(_counters(state))
  for name, _ in counters:
    assert int(after[name]) >= 0, f"{info.name}: counter {name} wrapped around"
  if counters:
    assert max(int(v) for v in after.values()) == MAX, (
        f"{info.name}: no counter saturated at 2**31 - 1: {after}")

  # Bias corrections at a saturated count from fresh moments vs float64
  # (bf16 only: fp16's range cannot hold fresh second moments scaled by
  # 1/t-type factors at t = 2**31, a state no real run reaches).
  if not noisy and dtype == "bfloat16" and info.name not in _EPS_IS_THE_FORMATS:
    s_lp = _set_counters(tx.init(params0), BIG)
    s_64 = _set_counters(tx64.init(p64), BIG)
    _, _, u = step(params0, s_lp, 0)
    _, _, u64 = step64(p64, s_64, 0)
    err, size = _rel_err(u, u64)
    assert err <= _TOL[dtype] or size < 1e-6, (
        f"{info.name}[{dtype}] update at t = 2**31 - 1 off by {err:.3g} vs float64")


def test_counter_helpers_find_counters():
  state = optzoo.adam(1e-3).init({"w": jnp.ones(2)})
  names = [n for n, _ in _counters(state)]
  assert names == ["[1].count"]   # after the (stateless) coupled-L2 link
  assert int(_counters(_set_counters(state, BIG))[0][1]) == BIG


def _schedule_fns(info):
  obj = registry_cases.build(info)
  if callable(obj):
    return [obj]
  return [f for f in obj if callable(f)]


_STEPS = [0, 1, 2, 3, 10, 99, 100, 101, 1000, 2**20, 2**24 + 1, BIG, MAX]


@pytest.mark.parametrize("info", _SCHEDULES, ids=ids(_SCHEDULES))
def test_schedules_finite_at_huge_steps(info):
  for fn in _schedule_fns(info):
    counted = helpers.TraceCounter(fn)
    jfn = jax.jit(counted)
    vals = []
    for t in _STEPS:
      v = np.asarray(jfn(jnp.asarray(t, jnp.int32)), np.float64)
      assert v.shape == (), f"{info.name}({t}) has shape {v.shape}"
      assert np.isfinite(v) and v >= 0, f"{info.name}({t}) = {v}"
      vals.append(float(v))
      # Python ints (eager) agree with the jitted int32 path.
      e = float(np.asarray(fn(t), np.float64))
      assert np.isfinite(e), f"{info.name}({t}) eager = {e}"
      np.testing.assert_allclose(e, v, rtol=1e-5, atol=1e-12,
                                 err_msg=f"{info.name}({t}): eager vs jit")
    assert counted.count == 1, f"{info.name}: retraced for each step value"


def test_schedule_inside_an_optimizer_at_a_saturated_count():
  """The count that drives a schedule inside a transformation saturates too."""
  for info in _SCHEDULES:
    fn = _schedule_fns(info)[0]
    tx = optax.chain(optax.scale_by_schedule(fn))
    params = {"w": jnp.ones(3, jnp.float32)}
    state = _set_counters(tx.init(params), BIG)
    step = jax.jit(tx.update)
    for _ in range(3):
      u, state = step(params, state)
      assert np.all(np.isfinite(np.asarray(u["w"]))), info.name
    assert int(next(x for x in state if hasattr(x, "count")).count) == MAX
