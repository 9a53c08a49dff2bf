"""Performance helpers: group_leaves, cast_state, low-precision
state options, and smoke runs of the benchmark scripts."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _layered_params(n_layers=6, dtype=jnp.float64, seed=0):
  """A deep-model-like tree: repeated shapes, a scalar, a None leaf, and a
  float32 leaf of a repeated shape (must not be grouped with float64 ones)."""
  rng = np.random.default_rng(seed)
  p = {f"layer{i}": {"w": jnp.asarray(rng.normal(size=(5, 3)), dtype),
                     "b": jnp.asarray(rng.normal(size=(3,)), dtype),
                     "scale": jnp.asarray(rng.normal(), dtype),
                     "frozen": None}
       for i in range(n_layers)}
  p["head"] = jnp.asarray(rng.normal(size=(3, 2)), dtype)
  p["b32"] = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
  return p


def _plan(state):
  """{group name: flattened leaf indices}, read from the names."""
  return {name: [int(i) for i in name[1:].split(".")] for name in state.groups}


def _grad_fn(params):
  """Gradient of sum(sin(x) + x^4/4) per leaf: nonlinear, varies per step."""
  return jax.tree.map(lambda x: (jnp.cos(x) + x ** 3).astype(x.dtype), params)


def _run(tx, params, steps, extra=None):
  state = tx.init(params)

  def body(carry, _):
    p, s = carry
    u, s = tx.update(_grad_fn(p), s, p, **(extra or {}))
    return (optax.apply_updates(p, u), s), None

  (p, s), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(
      (params, state))
  return p, s


INNERS = {
    "adam": lambda: optzoo.adam(1e-2),
    "adamw": lambda: optzoo.adamw(1e-2, weight_decay=0.1),
    "sgd_nesterov": lambda: optzoo.nag(1e-2, momentum=0.9),
    "rmsprop_centered": lambda: optzoo.rmsprop(1e-2, centered=True,
                                                momentum=0.5),
    "radam": lambda: optzoo.radam(1e-2),
    "clip_global_norm+adam": lambda: optax.chain(
        optax.clip_by_global_norm(0.5), optzoo.adam(1e-2)),
}


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_grouping_equals_inner_leaf_by_leaf(inner):
  """200 steps: grouped == ungrouped (elementwise and global-norm inners)."""
  params = _layered_params()
  p_ref, _ = _run(INNERS[inner](), params, 200)
  p_grp, _ = _run(optzoo.group_leaves(INNERS[inner]()), params, 200)
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_grp)
  for a, b in zip(jax.tree.leaves(p_grp), jax.tree.leaves(p_ref)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12,
                               atol=1e-14)


def test_grouping_changes_per_leaf_reductions():
  """The equality check above can fail: a per-leaf reduction (documented as
  unsupported) is *not* preserved by grouping."""
  params = _layered_params()
  per_leaf = optax.chain(optax.clip_by_block_rms(0.1), optax.sgd(1e-2))
  p_ref, _ = _run(per_leaf, params, 5)
  p_grp, _ = _run(optzoo.group_leaves(per_leaf), params, 5)
  assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(p_grp), jax.tree.leaves(p_ref))
             ) > 1e-6


def test_grouping_plan_and_state_layout():
  params = _layered_params(n_layers=6)
  tx = optzoo.group_leaves(optzoo.adam(1e-2))
  state = tx.init(params)
  leaves = jax.tree.leaves(params)
  plan = _plan(state)
  sizes = sorted(len(v) for v in plan.values())
  # 6 w's, 6 b's, 6 scales stacked; head and the float32 bias alone.
  assert sizes == [1, 1, 6, 6, 6], state.groups
  covered = sorted(int(i) for v in plan.values() for i in v)
  assert covered == list(range(len(leaves)))
  for name, idx in plan.items():  # arrays for stacks, None for loners
    if name[0] == "s":
      assert [int(i) for i in state.groups[name]] == idx
    else:
      assert state.groups[name] is None
  # chain(add_l2 (stateless), scale_by_adam, lr): the one state with a mu.
  mu = [s for s in state.inner_state if hasattr(s, "mu")][0].mu
  for name, idx in plan.items():
    first = leaves[int(idx[0])]
    want = first.shape if name[0] == "l" else (len(idx),) + first.shape
    assert mu[name].shape == want and mu[name].dtype == first.dtype
  n_state = len(jax.tree.leaves(state.inner_state))
  n_plain = len(jax.tree.leaves(optzoo.adam(1e-2).init(params)))
  assert n_state < n_plain / 3


def test_grouping_jit_once_dtypes_and_none():
  params = _layered_params(dtype=jnp.bfloat16)
  tx = optzoo.group_leaves(optzoo.adam(1e-2))
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  for _ in range(3):
    updates, state = step(_grad_fn(params), state, params)
    params = optax.apply_updates(params, updates)
  assert counter.count == 1
  assert params["layer0"]["frozen"] is None
  assert updates["layer0"]["frozen"] is None
  assert updates["layer0"]["w"].dtype == jnp.bfloat16
  assert updates["b32"].dtype == jnp.float32


def test_grouping_groups_param_shaped_extra_args():
  """Extra args shaped like the updates are grouped alongside them."""

  def scale_by_power():
    def update(u, s, p=None, *, input_power=None, **extra):
      del p, extra
      return jax.tree.map(lambda a, b: a / b, u, input_power), s
    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(),
                                                 update)

  params = _layered_params()
  params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
  power = jax.tree.map(lambda x: 1.0 + x ** 2, params)
  grads = _grad_fn(params)
  ref, _ = scale_by_power().update(grads, (), params, input_power=power)
  tx = optzoo.group_leaves(scale_by_power())
  out, _ = tx.update(grads, tx.init(params), params, input_power=power,
                     unknown_extra=3)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-15)


def test_grouping_large_groups_use_runtime_digits():
  """1,100 same-shape leaves: rows need three base-32 digits. The updates
  equal the inner transformation's (to float64 rounding: XLA fuses the two
  programs differently), the step compiles once, and the
  lowered program has no per-leaf static slice and no concatenate with more
  than 32 operands (what keeps XLA from compiling one kernel per leaf)."""
  rng = np.random.default_rng(1)
  params = {f"p{i:04d}": jnp.asarray(rng.normal(size=(2,))) for i in range(1100)}
  params["big"] = jnp.asarray(rng.normal(size=(70, 70)))  # > max_leaf_size
  tx = optzoo.group_leaves(optzoo.adam(1e-2))
  state = tx.init(params)
  assert len(state.digits) == 32
  assert [int(d) for d in state.digits] == list(range(32))
  assert sorted(len(v) for v in _plan(state).values()) == [1, 1100]
  ref = optzoo.adam(1e-2)
  ref_state = ref.init(params)
  ref_step = jax.jit(ref.update)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  p_grp, p_ref = params, params
  for _ in range(3):
    u, state = step(_grad_fn(p_grp), state, p_grp)
    p_grp = optax.apply_updates(p_grp, u)
    u_ref, ref_state = ref_step(_grad_fn(p_ref), ref_state, p_ref)
    p_ref = optax.apply_updates(p_ref, u_ref)
  assert counter.count == 1
  for k in params:
    np.testing.assert_allclose(np.asarray(p_grp[k]), np.asarray(p_ref[k]),
                               rtol=1e-13, atol=1e-16, err_msg=k)
  text = jax.jit(lambda g, s, p: tx.update(g, s, p)).lower(
      params, state, params).as_text()
  assert "stablehlo.slice" not in text
  assert text.count("call @dynamic_index_in_dim") >= 1100
  for line in text.splitlines():
    if "stablehlo.concatenate" in line:
      assert line.split("(")[0].count("%") <= 33, line[:200]


def test_grouping_max_leaf_size():
  params = {"small": [jnp.ones(4)] * 3, "big": [jnp.ones((80, 80))] * 3}
  names = lambda tx: sorted(len(v) for v in _plan(tx.init(params)).values())
  assert names(optzoo.group_leaves(optzoo.adam(1e-2))) == [1, 1, 1, 3]
  assert names(optzoo.group_leaves(optzoo.adam(1e-2),
                                   max_leaf_size=None)) == [3, 3]
  assert names(optzoo.group_leaves(optzoo.adam(1e-2),
                                   max_leaf_size=2)) == [1] * 6
  assert optzoo.group_leaves(optzoo.adam(1e-2),
                             max_leaf_size=2).init(params).digits == ()


def test_grouping_errors():
  with pytest.raises(TypeError, match="inner"):
    optzoo.group_leaves(3)
  params = _layered_params()
  tx = optzoo.group_leaves(optzoo.adam(1e-2))
  state = tx.init(params)
  with pytest.raises(ValueError, match="tx.init"):
    tx.update({"a": jnp.ones(3)}, state)


def test_cast_state_keeps_dtype_and_tracks_full_precision():
  params = _layered_params(dtype=jnp.float32)
  tx = optzoo.cast_state(optzoo.adam(1e-2), jnp.bfloat16)
  p_low, s_low = _run(tx, params, 50)
  for leaf in jax.tree.leaves(s_low):
    if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim > 0:
      assert leaf.dtype == jnp.bfloat16
  counts = [x for x in jax.tree.leaves(s_low) if x.dtype == jnp.int32]
  assert counts and all(int(c) == 50 for c in counts)
  p_full, _ = _run(optzoo.adam(1e-2), params, 50)
  for a, b in zip(jax.tree.leaves(p_low), jax.tree.leaves(p_full)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                               atol=5e-2)  # 50 steps of lr 1e-2: bf16-level
  # Casting to the state's own dtype is the identity.
  p_same, _ = _run(optzoo.cast_state(optzoo.adam(1e-2), jnp.float32), params,
                   50)
  for a, b in zip(jax.tree.leaves(p_same), jax.tree.leaves(p_full)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cast_state_errors():
  with pytest.raises(ValueError, match="dtype"):
    optzoo.cast_state(optzoo.adam(1e-2), jnp.int32)
  with pytest.raises(TypeError, match="dtype"):
    optzoo.cast_state(optzoo.adam(1e-2), "not-a-dtype")


def test_adam_mu_dtype_bf16_state_stays_bf16():
  params = _layered_params(dtype=jnp.float32)
  p, s = _run(optzoo.adam(1e-2, mu_dtype=jnp.bfloat16), params, 20)
  adam_state = next(x for x in s if hasattr(x, "mu")) if isinstance(s, tuple) and not hasattr(s, "mu") else s
  mus = [x for x in jax.tree.leaves(adam_state.mu)]
  nus = [x for x in jax.tree.leaves(adam_state.nu)]
  assert mus and all(x.dtype == jnp.bfloat16 for x in mus)
  assert all(x.dtype == jnp.float32 for x in nus)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))


def _import_benchmarks():
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from benchmarks import compile_time, step_time  # pylint: disable=g-import-not-at-top
  return step_time, compile_time


def test_step_time_benchmark_smoke(capsys, tmp_path):
  step_time, _ = _import_benchmarks()
  out = tmp_path / "rows.json"
  step_time.main(["--sizes", "4000", "--leaves", "1,3", "--repeats", "1",
                  "--methods", "adam,lookahead,adam+group_leaves",
                  "--json", str(out), "--torch-json", ""])
  text = capsys.readouterr().out
  assert "zoo/optax" in text and "lookahead" in text
  import json
  rows = json.load(open(out))["rows"]
  assert len(rows) == 6
  for r in rows:
    assert r["zoo_s"] > 0 and r["roof_s"] > 0 and r["optax_s"] > 0
    # adam: params 4 B + state 8 B per f32 parameter.
    if r["method"] == "adam":
      assert abs(r["state_bytes_per_param"] - 8.0) < 0.01
      state_bytes = round(r["state_bytes_per_param"] * 4000)
      assert r["bytes_moved"] == 3 * 4 * 4000 + 2 * state_bytes


def test_compile_time_benchmark_smoke(capsys):
  _, compile_time = _import_benchmarks()
  compile_time.main(["--leaves", "6", "--repeats", "1", "--in-process"])
  text = capsys.readouterr().out
  assert "group_leaves(optzoo.adam)" in text and "optax.adam" in text


@pytest.mark.parametrize("name,make,want", [
    ("rmsprop", lambda: optzoo.rmsprop(1e-2), 4.0),
    ("rmsprop_centered", lambda: optzoo.rmsprop(1e-2, centered=True), 8.0),
    ("adam", lambda: optzoo.adam(1e-2), 8.0),
    ("adam_mu_bf16", lambda: optzoo.adam(1e-2, mu_dtype=jnp.bfloat16), 6.0),
    ("sgd_momentum", lambda: optzoo.sgd(1e-2, momentum=0.9), 4.0),
    ("adagrad", lambda: optzoo.adagrad(1e-2), 4.0),
])
def test_state_bytes_per_param(name, make, want):
  """No method carries unused param-sized buffers (e.g. a non-centered
  RMSProp's mean): state bytes per float32 parameter, scalars excluded."""
  params = {"w": jnp.ones((100, 10), jnp.float32), "b": jnp.ones(10, jnp.float32)}
  state = make().init(params)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state) if np.ndim(x) > 0)
  assert nbytes / 1010 == want, name


def _distinct_kernels(step, *args):
  """Number of distinct fused computations XLA emits for ``step`` (names and
  metadata stripped, lines sorted): what XLA:CPU compiles one kernel each
  for; identical ones are compiled once."""
  import re
  txt = jax.jit(step).lower(*args).compile().as_text()
  bodies = set()
  for blk in re.split(r"\n\n", txt):
    lines = blk.strip().split("\n")
    if not lines[0].startswith("%"):
      continue  # the entry computation, module header
    body = [re.sub(r"%[\w.\-]+", "%x", re.sub(r", metadata=\{[^}]*\}", "", l))
            .strip() for l in lines[1:]]
    bodies.add("\n".join(sorted(body)))
  return len(bodies)


def test_grouping_distinct_kernels_do_not_grow_with_leaves():
  """What keeps compile time linear in the leaf count: doubling the number
  of same-shape leaves adds (almost) no distinct kernel. The negative control
  (static per-leaf slices, the naive unstack) adds one per leaf."""

  def params(n):
    p = {f"w{i:04d}": jnp.ones((3, 4)) for i in range(n)}
    p.update({f"b{i:04d}": jnp.ones((4,)) for i in range(n)})
    return p

  def grouped(n):
    tx = optzoo.group_leaves(optzoo.adam(1e-2))
    p = params(n)
    return _distinct_kernels(
        lambda p, s: optax.apply_updates(p, tx.update(p, s, p)[0]),
        p, tx.init(p))

  def static_unstack(n):
    p = params(n)

    def step(p):
      out = dict(p)
      for prefix in "wb":
        keys = sorted(k for k in p if k[0] == prefix)
        stacked = jnp.stack([p[k] for k in keys]) * 0.5
        out.update({k: p[k] + stacked[j] for j, k in enumerate(keys)})
      return out

    return _distinct_kernels(step, p)

  assert grouped(128) <= grouped(64) + 4
  assert static_unstack(128) >= static_unstack(64) + 64  # the metric can fail
