"""Every registered transformation under jax.sharding.

For each method (``optzoo.list_optimizers(kind="transformation")``) and two
layouts over a Mesh of the 8 simulated CPU devices (conftest.py):

* ``replicated``: data parallel, every parameter replicated (``P()``);
* ``sharded``: fully sharded, every non-scalar parameter split over the mesh
  axis (FSDP style), the scalar replicated;

we check that
1. ``tx.init`` on the sharded params gives every parameter-shaped state leaf
   the sharding of its parameter;
2. the jitted optimizer step keeps the shardings: outputs (params and every
   state leaf) are sharded like the inputs, step after step;
3. the compiled optimizer step contains no resharding collectives
   (all-gather / all-to-all / collective-permute); all-reduce is allowed in
   the sharded layout only (global norms, KOALA's and SWATS' scalars) and no
   collective at all appears in the replicated layout;
4. three steps give the same params as the unsharded run (float64, 1e-10
   relative to each leaf's scale).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optzoo
import registry_cases
import registry_harness as rh

STEPS = 3
TRANSFORMS = {i.name: i for i in optzoo.list_optimizers(kind="transformation")}

# Methods whose *optimizer step* legitimately moves data between devices in
# the sharded layout, with the reason. (Empty means: none known.)
RESHARDING_OK: dict = {
    "entropy_sgd": "its grad_fn closure evaluates the model inside the step;"
                   " the model's sharded matmul (not the optimizer) gathers",
    "lbfgs": "torch.optim.LBFGS's algorithm works on all parameters flattened"
             " into one vector (ravel_pytree), which gathers the sharded leaves",
    "quantize_state": "8-bit state in the paper's flat blocks of contiguous"
                      " entries: a sharded parameter's blocks cross device"
                      " boundaries, so its state is gathered in the step",
    "adam_8bit": "quantize_state(adam): see quantize_state",
    "adamw_8bit": "quantize_state(adamw): see quantize_state",
    "shard_state": "ZeRO-1 by design: the state is sharded over its own data"
                   " axis and the update is all-gathered to the params' layout",
}

# Wrappers that lay the state out themselves instead of like the params.
OWN_STATE_LAYOUT: dict = {
    "shard_state": "ZeRO-1: every state buffer is split over the data axis,"
                   " whatever the params' layout",
}
# The communication transforms are meant for jax.shard_map over the data axis,
# where each leaf is the replica's local block. Under plain jit they run as one
# replica on the global array, and their per-leaf compressors (top-k over the
# flattened leaf, sign packing, QSGD's norm, PowerSGD's (n, -1) matrix view)
# gather a sharded leaf.
for _name in ("topk_compression", "randomk_compression", "qsgd", "ef_signsgd",
              "signsgd_majority_vote", "powersgd"):
  RESHARDING_OK[_name] = ("a per-leaf compressor outside shard_map: one"
                          " replica on the global (sharded) leaf")


# Known bugs (not limitations): strict xfail, so the fix turns them red until
# the marker is removed. None at present.
KNOWN_BUGS: dict = {}


def _mesh():
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 (simulated) devices: see tests/conftest.py")
  return Mesh(devices, ("x",))


def _shardings(mesh, layout):
  if layout == "replicated":
    return {k: NamedSharding(mesh, P()) for k in ("w", "b", "v", "c", "s")}
  return {
      "w": NamedSharding(mesh, P(None, "x")),   # (8, 16): columns split
      "b": NamedSharding(mesh, P("x")),         # (16,)
      "v": NamedSharding(mesh, P("x", None)),   # (16, 8): rows split
      "c": NamedSharding(mesh, P("x")),         # (8,)
      "s": NamedSharding(mesh, P()),            # scalar: replicated
  }


_REF_CACHE: dict = {}


_PROBLEM = rh.make_problem()
_GRADS_FN = jax.jit(_PROBLEM.grad_fn)
_ARRAYS_FNS: dict = {}


def _arrays_fn(info):
  """Jitted array-valued extra args, shared by methods needing the same."""
  names = tuple(sorted(info.extra_args))
  if names not in _ARRAYS_FNS:
    _ARRAYS_FNS[names] = jax.jit(
        lambda p, t: rh.array_extra_args(info, p, _PROBLEM, t))
  return _ARRAYS_FNS[names]


def _trajectory(info, prob, params, place, state=None):
  """STEPS optimizer steps; gradients and array extras are computed on one
  device from the gathered params and then placed by ``place``, so that the
  sharded and unsharded runs feed the optimizer bit-identical inputs and
  only the optimizer step itself differs between them."""
  tx = registry_cases.build(info)
  state = tx.init(params) if state is None else state
  arrays_fn = _arrays_fn(info)
  opt_step = jax.jit(rh.make_update_step(tx, info, prob))
  history = []
  for t in range(STEPS):
    tt = jnp.asarray(t, jnp.int32)
    local = jax.device_get(params)
    grads, arrays = place(_GRADS_FN(local), arrays_fn(local, tt))
    history.append((params, state, grads, arrays, tt))
    params, state = opt_step(params, state, grads, arrays, tt)
  history.append((params, state, None, None, None))
  return params, state, opt_step, history


def _reference(name):
  """Unsharded (single-device) params after STEPS steps."""
  if name not in _REF_CACHE:
    params, _, _, _ = _trajectory(TRANSFORMS[name], _PROBLEM,
                                  _PROBLEM.params, lambda g, a: (g, a))
    _REF_CACHE[name] = jax.tree.map(np.asarray, params)
  return _REF_CACHE[name]


def _equiv(a, b, ndim):
  return a.is_equivalent_to(b, ndim)


def _collectives(hlo_text):
  ops = ("all-gather", "all-to-all", "collective-permute", "all-reduce",
         "reduce-scatter")
  return {op for op in ops if re.search(rf"\b{op}(-start)?\(", hlo_text)}


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_sharded_step(name, layout, request):
  if name in KNOWN_BUGS:
    request.applymarker(pytest.mark.xfail(reason=KNOWN_BUGS[name],
                                          strict=True))
  info = TRANSFORMS[name]
  mesh = _mesh()
  prob = _PROBLEM
  shardings = _shardings(mesh, layout)
  params = jax.device_put(prob.params, shardings)
  tx = registry_cases.build(info)

  # 1. init places parameter-shaped state like the parameters: every state
  # subtree with the params' tree structure, leaf by leaf.
  state = tx.init(params)
  pdef = jax.tree.structure(params)
  nodes = jax.tree.leaves(
      state, is_leaf=lambda n: n is not None and jax.tree.structure(n) == pdef)
  if name in OWN_STATE_LAYOUT:
    nodes = []
  for node in nodes:
    if jax.tree.structure(node) != pdef:
      continue
    for k in params:
      leaf = node[k]
      if np.shape(leaf) != params[k].shape or params[k].ndim == 0:
        continue
      assert isinstance(leaf, jax.Array), f"{name}: state leaf not an array"
      assert _equiv(leaf.sharding, params[k].sharding, leaf.ndim), (
          f"{name}: state[{k!r}] has {leaf.sharding}, its param has"
          f" {params[k].sharding}")

  # 2./3. the optimizer step alone, gradients and array extras from outside.
  replicated = NamedSharding(mesh, P())

  def like_params(v):
    # Params-shaped extras (input_power) take the params' shardings; extras
    # with a leading batch axis (per_example_grads) take them on the other
    # axes; anything else is replicated.
    if jax.tree.structure(v) != jax.tree.structure(params):
      return jax.device_put(v, replicated)

    def one(a, p, s):
      if np.shape(a) == np.shape(p):
        return jax.device_put(a, s)
      if np.shape(a)[1:] == np.shape(p):
        return jax.device_put(a, NamedSharding(mesh, P(None, *s.spec)))
      return jax.device_put(a, replicated)

    return jax.tree.map(one, v, params, shardings)

  def place(grads, arrays):
    arrays = {k: like_params(v) for k, v in arrays.items()}
    return jax.device_put(grads, shardings), arrays

  # Uncommitted scalars (fresh counters) would move to the mesh at the first
  # step anyway; place them now so that step 1 and step 2 share one compile.
  state = jax.tree.map(
      lambda x: jax.device_put(x, replicated)
      if isinstance(x, jax.Array) and not isinstance(x.sharding, NamedSharding)
      else x, state)
  params, state, opt_step, history = _trajectory(info, prob, params, place,
                                                 state=state)
  p1, s1, g1, a1, t1 = history[1]   # steady state: inputs of the 2nd step
  hlo = opt_step.lower(p1, s1, g1, a1, t1).compile().as_text()
  found = _collectives(hlo)
  if name in RESHARDING_OK:
    pass
  elif layout == "replicated":
    assert not found, f"{name}: collectives {found} in a replicated step"
  else:
    bad = found - {"all-reduce"}
    assert not bad, f"{name}: resharding collectives {bad} in the step"
  p2, s2 = history[2][:2]           # outputs of the 2nd step
  for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)):
    assert _equiv(a.sharding, b.sharding, a.ndim), (
        f"{name}: param resharded to {a.sharding} from {b.sharding}")
  for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(s1)):
    assert _equiv(a.sharding, b.sharding, a.ndim), (
        f"{name}: state leaf {a.shape} resharded to {a.sharding} from"
        f" {b.sharding}")
  for k, s in shardings.items():
    assert _equiv(params[k].sharding, s, params[k].ndim), (name, k)

  # 4. same numbers as the unsharded run.
  ref = _reference(name)
  # Sharded matmuls sum in another order (1e-16 differences in the grads);
  # primitives without a learning rate ascend and amplify them, hence the
  # tolerance relative to each leaf's scale.
  for k in ref:
    scale = max(1.0, float(np.max(np.abs(ref[k]))))
    np.testing.assert_allclose(np.asarray(params[k]), ref[k], rtol=1e-10,
                               atol=1e-10 * scale, err_msg=f"{name}/{layout}/{k}")


def test_registry_is_covered():
  """The sweep really runs: the core methods and the global-reduction ones."""
  for name in ("adam", "sgd", "lookahead", "swats", "koala", "sphere_sgd",
               "mini_block_fisher", "group_leaves"):
    assert name in TRANSFORMS, f"{name} missing from the registry"


def test_leaf_grouping_keeps_per_leaf_sharding():
  """Stacked groups are sharded P(None, *leaf_spec); leaves with different
  shardings are not stacked together; the step needs no collective."""
  mesh = _mesh()
  rows, cols = NamedSharding(mesh, P("x", None)), NamedSharding(mesh, P(None, "x"))
  rep = NamedSharding(mesh, P())
  rng = np.random.default_rng(0)
  params = {f"a{i}": jax.device_put(rng.normal(size=(16, 8)), rows)
            for i in range(3)}
  params.update({f"b{i}": jax.device_put(rng.normal(size=(16, 8)), cols)
                 for i in range(2)})
  params["r"] = jax.device_put(rng.normal(size=(16, 8)), rep)
  tx = optzoo.group_leaves(optzoo.adam(1e-2))
  state = tx.init(params)
  plan = {name: [int(i) for i in name[1:].split(".")] for name in state.groups}
  sizes = sorted(len(v) for v in plan.values())
  assert sizes == [1, 2, 3], state.groups.keys()
  leaves = jax.tree.leaves(params)
  for name, idx in plan.items():
    spec = leaves[int(idx[0])].sharding.spec
    want = NamedSharding(mesh, P(None, *spec)) if name[0] == "s" else \
        leaves[int(idx[0])].sharding
    mu = next(x for x in state.inner_state if hasattr(x, "mu")).mu[name]
    assert _equiv(mu.sharding, want, mu.ndim), (name, mu.sharding, want)

  grads = jax.tree.map(lambda x: 0.5 * x, params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  hlo = step.lower(params, state, grads).compile().as_text()
  assert not _collectives(hlo), _collectives(hlo)
  updates, new_state = step(params, state, grads)
  for k in params:
    assert _equiv(updates[k].sharding, params[k].sharding, 2), k
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    if a.ndim:  # (a fresh scalar counter is not yet committed to the mesh)
      assert _equiv(a.sharding, b.sharding, a.ndim)
  ref = optzoo.adam(1e-2)
  ref_u, _ = jax.jit(ref.update)(grads, ref.init(params), params)
  for k in params:  # same math; XLA may fuse differently (ulp level)
    np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(ref_u[k]),
                               rtol=1e-14)
