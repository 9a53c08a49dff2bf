"""The fused CPU Adam kernel (optzoo/_src/cpu_kernels) vs the plain jnp path.

Every fused result must be bitwise equal to the plain path compiled by XLA
(``OPTZOO_CPU_KERNELS=0``): float64 (x64, as conftest sets) and float32
(x64 off), with coupled / decoupled weight decay, AMSGrad, schedules,
injected hyperparameters, under jit, scan and vmap; and the torch fixtures
of tests/test_alias_oracles.py must still pass with the kernel forced on.
Skipped where no C++ compiler is found.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo._src import cpu_kernels
from optzoo._src.cpu_kernels import adam as fused
from optzoo._src.cpu_kernels import step

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="no g++ to build the kernel")


@pytest.fixture(autouse=True)
def force_kernel(monkeypatch):
  # conftest simulates 8 devices, where the default ('auto') takes the plain
  # path; these arrays all live on one device.
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", "1")
  if cpu_kernels.load() is None:
    pytest.skip("the kernel did not build here")


def _params(dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"w": jax.random.normal(k[0], (257, 33), dtype),
          "b": jax.random.normal(k[1], (33,), dtype),
          "s": jax.random.normal(k[2], (), dtype), "none": None}


def _grads(params, i):
  # Varying scales, signs and exact zeros.
  scale = 10.0 ** (-(i % 4))
  return jax.tree.map(lambda p: scale * jnp.sin(p * (i + 1)) *
                      (jnp.abs(p) > 0.05), params)


def _step_fn(tx, kind):
  if kind == "apply":
    return lambda p, s, g: optzoo.update_and_apply(tx, g, s, p)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  return step


def _uses_kernel(fn, *args) -> bool:
  # A fresh function object: jit caches traces by function, and the
  # environment variable is read while tracing.
  txt = jax.jit(lambda *a: fn(*a)).lower(*args).as_text()
  return "optzoo_adam" in txt or "optzoo_sgd" in txt


def _run(tx, params, kind, env, monkeypatch, steps=25, expect_kernel=None):
  """``steps`` jitted steps (a fresh jit, traced under ``env``)."""
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
  step = _step_fn(tx, kind)
  state = tx.init(params)
  if expect_kernel is not None:
    assert _uses_kernel(step, params, state, _grads(params, 0)) == expect_kernel
  f = jax.jit(step)
  p, s = params, state
  for i in range(steps):
    p, s = f(p, s, _grads(params, i))
  return p, s


def _assert_bitwise(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)


CASES = {
    "adam": lambda: optzoo.adam(1e-2),
    "adam_l2": lambda: optzoo.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6,
                                   weight_decay=0.1),
    "adam_b1_0": lambda: optzoo.adam(1e-2, b1=0.0, eps=0.0),
    "adamw": lambda: optzoo.adamw(1e-2),
    "adamw_0": lambda: optzoo.adamw(1e-2, weight_decay=0.0),
    "amsgrad": lambda: optzoo.amsgrad(1e-2, weight_decay=0.05),
    "adamw_ams": lambda: optzoo.adamw(1e-2, weight_decay=0.3, amsgrad=True),
    "schedule": lambda: optzoo.adam(optax.linear_schedule(1e-2, 1e-3, 10)),
    "adamw_schedule": lambda: optzoo.adamw(
        optax.cosine_decay_schedule(1e-2, 20), weight_decay=0.1),
}


@pytest.mark.parametrize("kind", ["update", "apply"])
@pytest.mark.parametrize("name", list(CASES))
def test_bitwise_float64(name, kind, monkeypatch):
  tx, params = CASES[name](), _params(jnp.float64)
  plain = _run(tx, params, kind, "0", monkeypatch, expect_kernel=False)
  fast = _run(tx, params, kind, "1", monkeypatch, expect_kernel=True)
  _assert_bitwise(fast, plain)


@pytest.mark.parametrize("kind", ["update", "apply"])
@pytest.mark.parametrize("name", list(CASES))
def test_bitwise_float32(name, kind, monkeypatch):
  with jax.enable_x64(False):
    tx, params = CASES[name](), _params(jnp.float32)
    plain = _run(tx, params, kind, "0", monkeypatch, expect_kernel=False)
    fast = _run(tx, params, kind, "1", monkeypatch, expect_kernel=True)
  _assert_bitwise(fast, plain)


SGD_CASES = {
    "momentum": lambda: optzoo.sgd(1e-2, momentum=0.9),
    "momentum_0": lambda: optzoo.sgd(1e-2, momentum=0.0),
    "l2": lambda: optzoo.sgd(3e-2, momentum=0.8, weight_decay=0.1),
    "nesterov": lambda: optzoo.nag(1e-2, momentum=0.9),
    "nesterov_l2": lambda: optzoo.sgd(1e-2, momentum=0.9, nesterov=True,
                                      weight_decay=1e-2),
    "schedule": lambda: optzoo.sgd(optax.linear_schedule(1e-1, 1e-3, 10),
                                   momentum=0.9, weight_decay=1e-3),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(SGD_CASES))
def test_sgd_update_and_apply_bitwise(name, dtype, monkeypatch):
  """SGD-momentum's whole step in one call equals the plain path's two
  loops, bit for bit; tx.update alone stays plain (nothing to fuse)."""
  with jax.enable_x64(dtype == "float64"):
    tx, params = SGD_CASES[name](), _params(jnp.dtype(dtype))
    plain = _run(tx, params, "apply", "0", monkeypatch, expect_kernel=False)
    fast = _run(tx, params, "apply", "1", monkeypatch, expect_kernel=True)
    assert not _uses_kernel(_step_fn(tx, "update"), params, tx.init(params),
                            params)
    _assert_bitwise(fast, plain)
    _assert_bitwise(_run(tx, params, "update", "1", monkeypatch), plain)


@pytest.mark.parametrize("tx", [
    optzoo.sgd(1e-2, momentum=0.9, dampening=0.1),
    optzoo.sgd(1e-2, momentum=0.9, maximize=True),
    optzoo.sgd(1e-2),
    optzoo.sgd(1e-2, momentum=0.9, accumulator_dtype=jnp.float32),
], ids=["dampening", "maximize", "no_momentum", "f32_buffer"])
def test_sgd_plain_where_the_kernel_does_not_apply(tx, monkeypatch):
  params = _params(jnp.float64)
  assert not _uses_kernel(_step_fn(tx, "apply"), params, tx.init(params), params)
  plain = _run(tx, params, "update", "0", monkeypatch, steps=5)
  _assert_bitwise(_run(tx, params, "apply", "1", monkeypatch, steps=5), plain)


def test_sgd_state_and_extra_args():
  params = _params(jnp.float64)
  fused, chain = optzoo.sgd(1e-2, momentum=0.9), optax.chain(
      optzoo.add_l2(0.0), optzoo.trace(0.9), optzoo.scale_by_learning_rate(1e-2))
  assert (jax.tree.structure(fused.init(params)) ==
          jax.tree.structure(chain.init(params)))
  u, _ = fused.update(params, fused.init(params), params, unused_extra=1)
  assert jax.tree.structure(u) == jax.tree.structure(params)


def test_float32_leaves_under_x64(monkeypatch):
  """x64 on, float32 leaves: the moments fuse (their scalars are Python
  floats, cast to float32 as the plain path casts them); the whole step
  (update_and_apply) does not, since the plain path computes the direction
  in float64 there (float64 bias corrections), and falls back."""
  tx, params = optzoo.adamw(1e-2, weight_decay=0.1), _params(jnp.float32)
  plain = _run(tx, params, "update", "0", monkeypatch)
  _assert_bitwise(_run(tx, params, "update", "1", monkeypatch,
                       expect_kernel=True), plain)
  # update_and_apply falls back to tx.update (which fuses the moments).
  step = _step_fn(tx, "apply")
  txt = jax.jit(step).lower(params, tx.init(params), params).as_text()
  assert "apply = false" in txt and "apply = true" not in txt
  # The direction's scalars (float64 bias corrections) would not keep
  # float32 either: only the moments come from the call.
  assert "direction = true" not in txt
  _assert_bitwise(_run(tx, params, "apply", "1", monkeypatch), plain)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_small_leaves_direction_large_leaves_moments(name, dtype, monkeypatch):
  """tx.update: leaves up to _DIRECTION_MAX_ELEMENTS get scale_by_adam's
  direction from the call, larger ones only the moments (the direction by
  XLA): both kinds of call in one step, bitwise the plain path."""
  monkeypatch.setattr(fused, "_DIRECTION_MAX_ELEMENTS", 40)  # b, s | w
  with jax.enable_x64(dtype == "float64"):
    tx, params = CASES[name](), _params(jnp.dtype(dtype))
    txt = jax.jit(_step_fn(tx, "update")).lower(
        params, tx.init(params), params).as_text()
    assert txt.count("direction = true") == 1, txt[:3000]
    assert txt.count("direction = false") == 1
    plain = _run(tx, params, "update", "0", monkeypatch, steps=12)
    fast = _run(tx, params, "update", "1", monkeypatch, steps=12)
  _assert_bitwise(fast, plain)


def test_mixed_dtype_tree_one_call_per_dtype(monkeypatch):
  tx = optzoo.adam(1e-2, weight_decay=0.01)
  params = {**_params(jnp.float64), "f32": jnp.linspace(-1, 1, 50, dtype=jnp.float32)}
  plain = _run(tx, params, "update", "0", monkeypatch)
  fast = _run(tx, params, "update", "1", monkeypatch, expect_kernel=True)
  _assert_bitwise(fast, plain)
  txt = jax.jit(_step_fn(tx, "update")).lower(
      params, tx.init(params), params).as_text()
  assert txt.count("@optzoo_adam(") == 2


def test_many_leaves_chunked_calls(monkeypatch):
  """Leaves go to calls of at most _MAX_LEAVES (compile time stays linear)."""
  params = {f"x{i:03d}": jnp.full((3,), i, jnp.float64) for i in range(40)}
  tx = optzoo.adamw(1e-2)
  txt = jax.jit(_step_fn(tx, "apply")).lower(
      params, tx.init(params), params).as_text()
  assert txt.count("@optzoo_adam(") == -(-40 // step.MAX_LEAVES)
  plain = _run(tx, params, "apply", "0", monkeypatch, steps=5)
  _assert_bitwise(_run(tx, params, "apply", "1", monkeypatch, steps=5), plain)


@pytest.mark.parametrize("make_tx,kind", [
    (lambda: optzoo.adamw(1e-2, weight_decay=0.1), "apply"),
    (lambda: optzoo.adamw(1e-2, weight_decay=0.1), "update"),
    (lambda: optzoo.sgd(1e-1, momentum=0.9, weight_decay=0.1), "apply"),
], ids=["adamw", "adamw-update", "sgd"])
def test_negative_control_without_fma_emulation(make_tx, kind, monkeypatch):
  """The kernel with XLA's multiply-add contraction switched off differs:
  the bitwise tests do see rounding-level differences (kind "update": in
  the moments and the direction written by the call)."""
  real = cpu_kernels.load()
  if not real.fma:
    pytest.skip("XLA does not contract multiply-adds on this CPU")
  tx, params = make_tx(), _params(jnp.float64)
  plain = _run(tx, params, kind, "0", monkeypatch)
  monkeypatch.setattr(step, "load", lambda: cpu_kernels.Kernels(fma=False))
  wrong = _run(tx, params, kind, "1", monkeypatch, expect_kernel=True)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(wrong), jax.tree.leaves(plain)))
  # ... yet equal to round-off: the same algorithm.
  for x, y in zip(jax.tree.leaves(wrong[0]), jax.tree.leaves(plain[0])):
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)


def test_state_structure_and_init_unchanged(monkeypatch):
  params = _params(jnp.float64)
  for name, make in CASES.items():
    tx = make()
    s0 = tx.init(params)
    monkeypatch.setenv("OPTZOO_CPU_KERNELS", "0")
    plain_state = jax.eval_shape(lambda s: tx.update(params, s, params)[1], s0)
    monkeypatch.setenv("OPTZOO_CPU_KERNELS", "1")
    fast_state = jax.eval_shape(lambda s: tx.update(params, s, params)[1], s0)
    assert jax.tree.structure(fast_state) == jax.tree.structure(plain_state), name
    assert jax.tree.structure(s0) == jax.tree.structure(plain_state), name


@pytest.mark.parametrize("kind", ["update", "apply"])
def test_scan(kind, monkeypatch):
  tx, params = optzoo.adamw(1e-2, amsgrad=True), _params(jnp.float64)
  grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(params, i)
                                                    for i in range(30)])

  def run(env):
    monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
    step = _step_fn(tx, kind)

    def train(p, s, gs):
      def body(carry, g):
        return step(*carry, g), None
      return jax.lax.scan(body, (p, s), gs)[0]
    f = jax.jit(train)
    args = (params, tx.init(params), grads)
    assert ("optzoo_adam" in f.lower(*args).as_text()) == (env == "1")
    return f(*args)
  _assert_bitwise(run("1"), run("0"))


@pytest.mark.parametrize("kind", ["update", "apply"])
def test_vmap_batched_params_and_hyperparameters(kind, monkeypatch):
  """vmap over params, grads, state (and, for update, injected per-member
  learning rates and weight decays): each batch row uses its own scalars."""
  batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -x]), _params(jnp.float64))
  if kind == "update":
    make = lambda lr, wd: optax.inject_hyperparams(optzoo.adamw)(
        learning_rate=lr, weight_decay=wd)
    hp = (jnp.array([1e-2, 3e-3, 1e-1]), jnp.array([0.0, 0.1, 0.5]))
  else:
    make = lambda lr, wd: optzoo.adam(1e-2, weight_decay=0.1)
    hp = (jnp.zeros(3), jnp.zeros(3))

  def run(env):
    monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)

    def member_init(p, lr, wd):
      return make(lr, wd).init(p)

    def member_step(p, s, g, lr, wd):
      return _step_fn(make(lr, wd), kind)(p, s, g)
    f = jax.jit(jax.vmap(member_step))
    p, s = batch, jax.vmap(member_init)(batch, *hp)
    g0 = jax.vmap(lambda p: _grads(p, 0))(batch)
    assert ("optzoo_adam" in f.lower(p, s, g0, *hp).as_text()) == (env == "1")
    for i in range(6):
      p, s = f(p, s, jax.vmap(lambda p: _grads(p, i))(batch), *hp)
    return p, s
  _assert_bitwise(run("1"), run("0"))


def test_inject_hyperparams_no_recompile(monkeypatch):
  tx = optax.inject_hyperparams(optzoo.adam)(learning_rate=1e-2, b1=0.9,
                                             b2=0.99, eps=1e-8,
                                             weight_decay=1e-3)
  params = _params(jnp.float64)
  traces = []

  def step(p, s, g):
    traces.append(1)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def run(env):
    monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
    f = jax.jit(lambda *a: step(*a))
    p, s = params, tx.init(params)
    for i in range(12):
      s.hyperparams["learning_rate"] = jnp.asarray(1e-2 / (i + 1))
      s.hyperparams["b1"] = jnp.asarray(0.9 - 0.01 * i)
      p, s = f(p, s, _grads(params, i))
    return p, s

  fast = run("1")
  assert len(traces) == 1  # new hyperparameter values: no retrace
  assert _uses_kernel(step, params, tx.init(params), params)
  _assert_bitwise(fast, run("0"))


@pytest.mark.parametrize("make,why", [
    (lambda: optzoo.adam(1e-2, maximize=True), "maximize: plain chain"),
    (lambda: optzoo.adam(1e-2, mu_dtype=jnp.bfloat16), "mu_dtype"),
    (lambda: optzoo.adamw(1e-2, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p)), "mask"),
])
def test_variants_that_stay_plain(make, why, monkeypatch):
  tx, params = make(), _params(jnp.float64)
  step = _step_fn(tx, "update")
  assert not _uses_kernel(step, params, tx.init(params), params), why


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.complex128])
def test_other_dtypes_fall_back(dtype, monkeypatch):
  tx = optzoo.adam(1e-2)
  params = {"x": jnp.linspace(-1, 1, 40).astype(dtype)}
  for kind in ("update", "apply"):
    step = _step_fn(tx, kind)
    assert not _uses_kernel(step, params, tx.init(params), params)
    plain = _run(tx, params, kind, "0", monkeypatch, steps=5)
    _assert_bitwise(_run(tx, params, kind, "1", monkeypatch, steps=5), plain)


def test_sharded_arrays_fall_back(monkeypatch):
  mesh = jax.make_mesh((8,), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  params = {"x": jax.device_put(jnp.linspace(-1, 1, 64), sharding)}
  tx = optzoo.adam(1e-2)
  state = tx.init(params)
  # Eager (concrete) sharded arrays: the plain path.
  assert fused._fused_step(fused._SPECS[tx.update], params, state, params,
                           apply=False) is None
  u, _ = tx.update(params, state, params)
  assert u["x"].sharding.is_equivalent_to(sharding, 1)
  # Under jit, shardings of explicit-axis meshes are visible while tracing.
  explicit = jax.make_mesh((8,), ("d",),
                           axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(explicit, jax.sharding.PartitionSpec("d"))
  params = {"x": jax.device_put(jnp.linspace(-1, 1, 64), sharding)}
  for kind in ("update", "apply"):
    assert not _uses_kernel(_step_fn(tx, kind), params, tx.init(params), params)


def test_modes(monkeypatch):
  tx, params = optzoo.adam(1e-2), _params(jnp.float64)
  step = _step_fn(tx, "update")
  args = (params, tx.init(params), params)
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", "0")
  assert not _uses_kernel(step, *args)
  monkeypatch.delenv("OPTZOO_CPU_KERNELS")  # auto: 8 simulated devices here
  assert _uses_kernel(step, *args) == (jax.device_count() == 1)
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", "1")
  assert _uses_kernel(step, *args)


def test_update_and_apply_other_transformations(monkeypatch):
  params = _params(jnp.float64)
  for tx in (optax.sgd(0.1, momentum=0.9), optzoo.rmsprop(1e-2),
             optax.inject_hyperparams(optzoo.adam)(learning_rate=1e-2)):
    args = (params, tx.init(params), _grads(params, 1))
    _assert_bitwise(jax.jit(_step_fn(tx, "apply"))(*args),
                    jax.jit(_step_fn(tx, "update"))(*args))


def test_update_and_apply_bad_input():
  params = _params(jnp.float64)
  with pytest.raises(TypeError, match="tx"):
    optzoo.update_and_apply(lambda g: g, params, (), params)
  tx = optzoo.adam(1e-2)
  with pytest.raises(ValueError, match="params"):
    optzoo.update_and_apply(tx, params, tx.init(params), None)


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setenv("CXX", "/bin/false")
  cpu_kernels.load.cache_clear()
  try:
    tx, params = optzoo.adam(1e-2), _params(jnp.float64)
    with warnings.catch_warnings(record=True) as w:
      warnings.simplefilter("always")
      step = _step_fn(tx, "update")
      assert not _uses_kernel(step, params, tx.init(params), params)
      assert not _uses_kernel(_step_fn(tx, "apply"), params, tx.init(params),
                              params)
    msgs = [str(x.message) for x in w if "fused CPU kernels" in str(x.message)]
    assert len(msgs) == 1, msgs
  finally:
    monkeypatch.undo()
    cpu_kernels.load.cache_clear()
    assert cpu_kernels.load() is not None


# ---------------------------------------------------------------------------
# The torch fixtures with the kernel forced on.
# ---------------------------------------------------------------------------


def _fixture_cases():
  import test_alias_oracles as T  # pylint: disable=g-import-not-at-top
  out = []
  for alias in ("adam", "amsgrad", "adamw"):
    _, settings = T.load_alias(alias)
    out += [pytest.param(alias, k, id=f"{alias}-s{k}")
            for k in range(len(settings))]
  return out


@pytest.mark.parametrize("alias,k", _fixture_cases())
def test_torch_fixtures_with_kernel(alias, k, monkeypatch):
  import test_alias_oracles as T  # pylint: disable=g-import-not-at-top
  _, settings = T.load_alias(alias)
  kwargs = settings[k]["kwargs"]
  tx = getattr(optzoo, alias)(**T.to_optzoo_kwargs(kwargs))
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", "1")
  eq, et = T.trajectory_errors(tx, alias, k)
  assert eq <= T.RTOL and et <= T.RTOL, (alias, kwargs, eq, et)
  x0, gq = T.quad_problem()
  uses = _uses_kernel(lambda x: T._scan(tx, x, gq, 3), x0)
  assert uses == (not kwargs.get("maximize", False)), kwargs


@pytest.mark.parametrize("env", ["0", "1"])
def test_update_ignores_unknown_extra_args(env, monkeypatch):
  """Like every optzoo/optax chain, the fused ``update`` takes and ignores
  extra keyword arguments (optax's test_optimizers_accept_extra_args)."""
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
  tx = optzoo.adam(1e-2)
  params = _params(jnp.float64)
  state = tx.init(params)
  g = _grads(params, 1)
  want = jax.jit(lambda g, s, p: tx.update(g, s, p))(g, state, params)
  got = jax.jit(lambda g, s, p: tx.update(g, s, p, some_extra_arg=3.0))(
      g, state, params)
  _assert_bitwise(got, want)


# ---------------------------------------------------------------------------
# 8-bit Adam (quantize_state around optzoo.adam / adamw; cpu_kernels/adam8.py)
# ---------------------------------------------------------------------------

Q8_CASES = {
    "adam_8bit": lambda: optzoo.adam_8bit(1e-2, min_size=1),
    # Leaves below min_size keep float32 state: those take the plain path.
    "adam_8bit_default_sizes": lambda: optzoo.adam_8bit(1e-2),
    # Coupled L2; blocks of 256 (the last one short), a leaf of one block.
    "adam_8bit_l2": lambda: optzoo.adam_8bit(3e-3, b1=0.8, b2=0.99, eps=1e-6,
                                             weight_decay=0.1, block_size=256,
                                             min_size=1),
    "adamw_8bit_schedule": lambda: optzoo.adamw_8bit(
        optax.linear_schedule(1e-2, 1e-3, 10), weight_decay=0.1,
        block_size=100, min_size=1),
    "quantize_state_adam": lambda: optzoo.quantize_state(
        optzoo.adam(1e-2, b1=0.0), block_size=1000, min_size=1),
}


def _q8_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"w": jax.random.normal(k[0], (257, 33), jnp.float32),
          "v": jax.random.normal(k[1], (3 * 2048 + 13,), jnp.float32),
          "b": jax.random.normal(k[2], (33,), jnp.float32),
          "s": jnp.float32(0.5), "none": None}


def _q8_run(tx, params, env, monkeypatch, steps=12, expect_kernel=None):
  """Like _run (kind "update"), and the updates of every step."""
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
  state = tx.init(params)

  def step_fn(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, u

  if expect_kernel is not None:
    txt = jax.jit(lambda *a: step_fn(*a)).lower(
        params, state, _grads(params, 0)).as_text()
    assert ("optzoo_adam8" in txt) == expect_kernel
  f = jax.jit(step_fn)
  p, s, out = params, state, []
  for i in range(steps):
    p, s, u = f(p, s, _grads(params, i))
    out.append(u)
  return p, s, out


@pytest.mark.parametrize("name", list(Q8_CASES))
def test_8bit_bitwise(name, monkeypatch):
  """Params, 8-bit state (codes and absmax) and updates of every step are
  bitwise those of quantize_state's plain path."""
  with jax.enable_x64(False):
    tx, params = Q8_CASES[name](), _q8_params()
    plain = _q8_run(tx, params, "0", monkeypatch, expect_kernel=False)
    fast = _q8_run(tx, params, "1", monkeypatch, expect_kernel=True)
  _assert_bitwise(fast, plain)


def _q8_whole_run(tx, params, env, monkeypatch, steps=12):
  """``steps`` of optzoo.update_and_apply (env "1": the 8-bit kernel in
  apply mode, checked in the lowered text); returns params and state."""
  monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
  f = jax.jit(lambda p, s, g: optzoo.update_and_apply(tx, g, s, p))
  state = tx.init(params)
  txt = f.lower(params, state, _grads(params, 0)).as_text()
  assert ("optzoo_adam8" in txt) == (env == "1")
  if env == "1":
    assert "apply = true" in txt, txt[:2000]
  p, s = params, state
  for i in range(steps):
    p, s = f(p, s, _grads(params, i))
  return p, s


@pytest.mark.parametrize("name", list(Q8_CASES))
def test_8bit_update_and_apply_bitwise(name, monkeypatch):
  """optzoo.update_and_apply runs the whole 8-bit step in the kernel (the
  decoupled decay, -lr and the new params included): params and state of
  every step are bitwise those of tx.update + optax.apply_updates on the
  plain path, with the same state tree."""
  with jax.enable_x64(False):
    tx, params = Q8_CASES[name](), _q8_params()
    plain = _q8_run(tx, params, "0", monkeypatch, expect_kernel=False)
    whole = _q8_whole_run(tx, params, "1", monkeypatch)
  _assert_bitwise(whole, plain[:2])


# The kernel's loops (kernels.cc, Q8Loop): the default runs the fastest this
# CPU has (AVX-512 with VBMI, else AVX2).
Q8_LOOPS = {"best": 0, "avx2": 1, "scalar": 2}


@pytest.mark.parametrize("whole", [False, True], ids=["update", "whole_step"])
@pytest.mark.parametrize("loop", ["avx2", "scalar"])
@pytest.mark.parametrize("name", ["adam_8bit_l2", "adamw_8bit_schedule"])
def test_8bit_other_loops_bitwise(name, loop, whole, monkeypatch):
  """The kernel's AVX2 loop (CPUs without AVX-512 VBMI) and its scalar loop
  (other CPUs; a block's last entries) give the plain path's bits, as the
  default loop does, for tx.update and for the whole step."""
  from optzoo._src.cpu_kernels import adam8  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(False):
    tx, params = Q8_CASES[name](), _q8_params(1)
    plain = _q8_run(tx, params, "0", monkeypatch)
    monkeypatch.setattr(adam8, "_LOOP", Q8_LOOPS[loop])
    if whole:
      _assert_bitwise(_q8_whole_run(tx, params, "1", monkeypatch), plain[:2])
    else:
      _assert_bitwise(_q8_run(tx, params, "1", monkeypatch, expect_kernel=True),
                      plain)


def test_8bit_negative_control_without_fma_emulation(monkeypatch):
  """Without XLA's multiply-add contraction the 8-bit kernel differs (the
  bitwise test sees rounding), yet only by rounding in the moments."""
  if not cpu_kernels.load().fma:
    pytest.skip("XLA does not contract multiply-adds on this CPU")
  with jax.enable_x64(False):
    tx, params = Q8_CASES["adamw_8bit_schedule"](), _q8_params()
    plain = _q8_run(tx, params, "0", monkeypatch, steps=4)
    monkeypatch.setattr(step, "load", lambda: cpu_kernels.Kernels(fma=False))
    wrong = _q8_run(tx, params, "1", monkeypatch, steps=4, expect_kernel=True)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(wrong), jax.tree.leaves(plain)))
  for x, y in zip(jax.tree.leaves(wrong[0]), jax.tree.leaves(plain[0])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loop", ["best", "avx2"])
def test_8bit_encoder_dense(loop):
  """The kernel's encoders (the AVX-512 loop's decade arithmetic, the AVX2
  loop's bucket table) on 2^21 float32 patterns in [-1, 1] (every
  sign, exponent and many mantissas, +-0, the map's values and midpoints
  and their neighbours): with b1 = b2 = 0 and a zero state, mu' = g and
  nu' = g * g, and with 1 in every block the block scale is 1, so the codes
  are the encoder's of g itself. Compared with searchsorted over the
  midpoints (the definition) and with the plain path."""
  from optzoo._src import quantized as Q  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  bits = rng.integers(0, 0x3F800001, 1 << 21, dtype=np.uint32)
  bits[rng.random(bits.size) < 0.5] |= np.uint32(1 << 31)
  special = [Q._boundaries(True), Q._boundaries(False),
             Q.dynamic_quantization_map(True), Q.dynamic_quantization_map(False)]
  near = np.concatenate([np.concatenate([s, -s]) for s in special])
  near = near[np.abs(near) <= 1].astype(np.float32)
  ulps = np.concatenate([np.nextafter(near, np.float32(np.inf)), near,
                         np.nextafter(near, np.float32(-np.inf)),
                         np.float32([0.0, -0.0, 1.0, -1.0])])
  y = np.concatenate([bits.view(np.float32), np.clip(ulps, -1, 1)])
  block = 4096
  y = np.concatenate([y, np.zeros(-y.size % (block - 1), np.float32)])
  y = np.concatenate([np.ones((y.size // (block - 1), 1), np.float32),
                      y.reshape(-1, block - 1)], axis=1).reshape(-1)
  from optzoo._src.cpu_kernels import adam8  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(False), pytest.MonkeyPatch.context() as mp:
    mp.setattr(adam8, "_LOOP", Q8_LOOPS[loop])
    tx = optzoo.quantize_state(optzoo.adam(1e-3, b1=0.0, b2=0.0),
                               block_size=block, min_size=1)
    params = {"w": jnp.zeros(y.shape, jnp.float32)}
    g = {"w": jnp.asarray(y)}
    codes = {}
    for env in ("0", "1"):
      mp.setenv("OPTZOO_CPU_KERNELS", env)
      f = jax.jit(lambda g, s, p: tx.update(g, s, p)[1])
      txt = f.lower(g, tx.init(params), params).as_text()
      assert ("optzoo_adam8" in txt) == (env == "1")
      st = f(g, tx.init(params), params)[1]
      codes[env] = (np.asarray(st.mu["w"].codes), np.asarray(st.nu["w"].codes),
                    np.asarray(st.mu["w"].absmax))
  np.testing.assert_array_equal(codes["1"][2], 1.0)
  want = np.minimum(np.searchsorted(Q._boundaries(True), y, side="left"), 255)
  np.testing.assert_array_equal(codes["1"][0], want)
  for a, b in zip(codes["1"], codes["0"]):
    np.testing.assert_array_equal(a, b, strict=True)


def test_8bit_plain_where_the_kernel_does_not_apply(monkeypatch):
  """Several devices (auto mode), x64 scalars next to float32 leaves,
  complex or float64 parameters, a non-Adam inner: the plain path."""
  tx = optzoo.adam_8bit(1e-2, min_size=1)

  def uses(tx, params):
    state = tx.init(params)
    txt = jax.jit(lambda p, s, g: tx.update(g, s, p)).lower(
        params, state, params).as_text()
    return "optzoo_adam8" in txt

  with jax.enable_x64(False):
    params = _q8_params()
    monkeypatch.delenv("OPTZOO_CPU_KERNELS", raising=False)
    assert uses(tx, params) == (jax.device_count() == 1)
    monkeypatch.setenv("OPTZOO_CPU_KERNELS", "1")
    assert uses(tx, params)
    assert not uses(tx, {"c": jnp.ones((64,), jnp.complex64)})
    assert not uses(optzoo.quantize_state(optzoo.sgd(1e-2, momentum=0.9),
                                          min_size=1), params)
  assert not uses(tx, {"w": jnp.ones((64,), jnp.float64)})
  # x64: the bias corrections are float64, the plain path promotes.
  assert not uses(tx, {"w": jnp.ones((64,), jnp.float32)})


def test_8bit_nan_and_inf_gradients(monkeypatch):
  """A NaN or inf gradient entry: the block's absmax is NaN (NaN-propagating
  max, as the plain path), its codes those of the plain path; other blocks
  unaffected. (NaN payloads are not compared.)"""
  with jax.enable_x64(False):
    tx = optzoo.adam_8bit(1e-2, block_size=64, min_size=1)
    params = {"w": jnp.linspace(-1, 1, 1000, dtype=jnp.float32)}
    g = np.sin(np.arange(1000, dtype=np.float32)) * np.float32(1e-2)
    g[5], g[300], g[301], g[700] = np.nan, np.inf, -np.inf, np.nan
    outs = []
    for env in ("0", "1"):
      monkeypatch.setenv("OPTZOO_CPU_KERNELS", env)
      f = jax.jit(lambda p, s, g: tx.update(g, s, p))
      s = tx.init(params)
      txt = f.lower(params, s, {"w": jnp.asarray(g)}).as_text()
      assert ("optzoo_adam8" in txt) == (env == "1")
      for _ in range(2):
        u, s = f(params, s, {"w": jnp.asarray(g)})
      outs.append((u, s))
  (u0, s0), (u1, s1) = outs
  for a, b in zip(jax.tree.leaves((u0, s0)), jax.tree.leaves((u1, s1))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)
  assert np.isnan(np.asarray(s1[1].mu["w"].absmax)[[0, 4, 10]]).all()


def test_8bit_one_call_per_leaf_bitwise(monkeypatch):
  """Leaves above the grouping size take a call each (chained by the
  previous direction): the same bits."""
  from optzoo._src.cpu_kernels import adam8  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(adam8, "_GROUP_ELEMENTS", 1)
  with jax.enable_x64(False):
    tx, params = Q8_CASES["adam_8bit_l2"](), _q8_params(2)
    plain = _q8_run(tx, params, "0", monkeypatch, steps=4)
    fast = _q8_run(tx, params, "1", monkeypatch, steps=4, expect_kernel=True)
    txt = jax.jit(lambda p, s, g: tx.update(g, s, p)).lower(
        params, tx.init(params), params).as_text()
  assert txt.count("optzoo_adam8") == 3  # w, v, b
  _assert_bitwise(fast, plain)


@pytest.mark.slow
def test_8bit_kernel_encoders_on_every_float32():
  """All 2^32 float32 patterns, both maps: the AVX-512 loop's decade
  arithmetic and the bucket table equal the definition (a binary search
  over the midpoints). tests/cpu_kernels/check_q8_encoder_exhaustive.py."""
  if shutil.which(os.environ.get("CXX", "g++")) is None:
    pytest.skip("no C++ compiler")
  script = pathlib.Path(__file__).with_name("check_q8_encoder_exhaustive.py")
  root = script.parents[2]
  env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  res = subprocess.run([sys.executable, str(script)], env=env, cwd=root,
                       capture_output=True, text=True, timeout=900, check=False)
  if res.returncode == 77:
    pytest.skip("no AVX-512 VBMI: only the bucket table was checked")
  assert res.returncode == 0, res.stdout + res.stderr
