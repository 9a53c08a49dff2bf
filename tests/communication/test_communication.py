"""Communication transforms inside jax.shard_map over the 8 (fake) CPU devices.

* ``powersgd`` equals torch's ``powerSGD_hook`` on a 2-rank gloo DDP run
  (``tests/gen_communication_fixtures.py``), error feedback and warm start on
  and off, 104 steps, float64: torch's local gradients are fed to the two
  replicas, torch's random initial Q is written into ``state.q``; with warm
  start the later Qs are optzoo's own (and are checked against torch's).
* ``local_sgd`` equals torch's ``PeriodicModelAverager`` (2 ranks, SGD with
  momentum, warm-up of all-reduced gradients), per-replica params, 40 steps.
* top-k, random-k, QSGD, EF-SignSGD and majority vote equal NumPy
  re-derivations (8 replicas, error feedback over 12 steps).
* bytes reporting, ``replica_specs`` / ``replicate_state``.

Each comparison has a negative control. One jit (a ``lax.scan`` over the
steps inside ``shard_map``) per case.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optzoo

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
NAMES = ("w1", "b1", "w2", "b2", "w3", "w4")


def _adam(state):
  """Adam's state in a chain's state tuple (the coupled-L2 link comes first)."""
  return next(s for s in state if hasattr(s, "mu"))


def _mesh(n):
  if len(jax.devices()) < n:
    pytest.skip(f"needs {n} devices")
  return Mesh(np.array(jax.devices()[:n]), ("data",))


def _put(tree, mesh, specs):
  return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                      tree, specs)


def run_replicas(tx, params, grads, n, inject=None, per_replica_params=False):
  """Runs ``tx`` on ``n`` replicas for ``T`` steps inside one shard_map.

  ``grads``: tree of ``(T, n, *shape)`` local gradients. ``inject(t, state)
  -> state`` edits the state before step ``t``. Returns the per-replica
  updates ``(T, n, *shape)``, the per-step comm_bytes of replica 0, the final
  state (per-replica leaves stacked). With ``per_replica_params`` the params
  are ``(n, *shape)`` and evolve per replica (params after each step are
  returned instead of the updates).
  """
  mesh = _mesh(n)
  p0 = jax.tree.map(lambda x: x[0], params) if per_replica_params else params
  state = optzoo.replicate_state(tx.init(p0), n)
  sspec = optzoo.replica_specs(state)
  state = _put(state, mesh, sspec)
  pspec = jax.tree.map(lambda _: P("data") if per_replica_params else P(), params)
  params = _put(params, mesh, pspec)
  gspec = jax.tree.map(lambda _: P(None, "data"), grads)
  grads = _put(grads, mesh, gspec)

  def body(params, state, grads):
    local = lambda t: jax.tree.map(lambda x: x[0], t)
    p = local(params) if per_replica_params else params

    def step(carry, xs):
      p, state = carry
      t, g = xs
      if inject is not None:
        state = inject(t, state)
      u, state = tx.update(local(g), state, p)
      if per_replica_params:
        p = optax.apply_updates(p, u)
        out = p
      else:
        out = u
      return (p, state), (jax.tree.map(lambda x: x[None], out), state.comm_bytes[None])

    T = jax.tree.leaves(grads)[0].shape[0]
    (p, state), (outs, nbytes) = jax.lax.scan(step, (p, state), (jnp.arange(T), grads))
    return outs, nbytes, state

  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(pspec, sspec, gspec),
                            out_specs=(gspec if not per_replica_params else
                                       jax.tree.map(lambda _: P(None, "data"), params),
                                       P(None, "data"), sspec)))
  outs, nbytes, state = f(params, state, grads)
  return jax.device_get(outs), np.asarray(nbytes)[:, 0], jax.device_get(state)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---------------------------------------------------------------------------
# PowerSGD vs torch powerSGD_hook
# ---------------------------------------------------------------------------


def _psgd_fixture(cfg):
  return dict(np.load(os.path.join(FIX, f"powersgd_{cfg}.npz")))


def _psgd_run(fx, ef, ws, negative=None):
  params = {n: jnp.zeros(fx[f"out_{n}"].shape[1:]) for n in NAMES}
  grads = {n: jnp.asarray(np.stack([fx[f"g0_{n}"], fx[f"g1_{n}"]], axis=1))
           for n in NAMES}
  qfix = {n: jnp.asarray(fx[f"q_{n}"]) for n in ("w1", "w2", "w3")}
  kw = dict(rank=2, start_iter=2, min_compression_rate=1.0,
            use_error_feedback=ef, warm_start=ws)
  kw.update(negative or {})
  tx = optzoo.powersgd(**kw)
  seen = {}

  def inject(t, state):
    q = dict(state.q)
    for n, qs in qfix.items():
      use = (t >= 2) if not ws else (t == 2)
      seen[n] = None
      q[n] = jnp.where(use, qs[t], q[n])
    return state._replace(q=q)

  outs, nbytes, _ = run_replicas(tx, params, grads, 2, inject=inject)
  return outs, nbytes


@pytest.mark.parametrize("ef,ws", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_powersgd_matches_torch_hook(ef, ws):
  fx = _psgd_fixture(f"ef{ef}_ws{ws}")
  outs, nbytes = _psgd_run(fx, bool(ef), bool(ws))
  T = fx["out_w1"].shape[0]
  assert T >= 100
  for n in NAMES:
    np.testing.assert_array_equal(outs[n][:, 0], outs[n][:, 1])  # same on replicas
    err = max(_rel(outs[n][t, 0], fx[f"out_{n}"][t]) for t in range(T))
    assert err <= 1e-6, (n, err)
  # bytes: 2 dense steps, then P/Q of w1, w2, w3 (rank 2) + b1, b2, w4 dense.
  dense = 8 * sum(fx[f"out_{n}"][0].size for n in NAMES)
  comp = 8 * (2 * ((8 + 5) + (3 + 8) + (4 + 6)) + 8 + 3 + 6)
  assert list(nbytes[:3]) == [dense, dense, comp]


def test_powersgd_warm_start_q_matches_torch():
  # Closed loop: optzoo's own warm-started Q equals the Q torch starts from.
  fx = _psgd_fixture("ef1_ws1")
  params = {n: jnp.zeros(fx[f"out_{n}"].shape[1:]) for n in NAMES}
  tx = optzoo.powersgd(rank=2, start_iter=2, min_compression_rate=1.0)
  mesh = _mesh(2)
  state = optzoo.replicate_state(tx.init(params), 2)
  sspec = optzoo.replica_specs(state)
  q0 = {n: jnp.asarray(fx[f"q_{n}"][2]) for n in ("w1", "w2", "w3")}
  state = state._replace(q={**state.q, **q0})
  state = _put(state, mesh, sspec)
  grads = {n: jnp.asarray(np.stack([fx[f"g0_{n}"], fx[f"g1_{n}"]], 1)) for n in NAMES}
  gspec = jax.tree.map(lambda _: P(None, "data"), grads)
  grads = _put(grads, mesh, gspec)

  def body(state, grads):
    def step(state, g):
      _, state = tx.update(jax.tree.map(lambda x: x[0], g), state, params)
      return state, {n: state.q[n] for n in ("w1", "w2", "w3")}
    _, qs = jax.lax.scan(step, state, grads)
    return qs
  qs = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(sspec, gspec),
                             out_specs=P()))(state, grads)
  for n in ("w1", "w2", "w3"):
    # state.q after step t is the Q torch orthogonalises at step t + 1.
    got, want = np.asarray(qs[n])[2:-1], fx[f"q_{n}"][3:]
    assert _rel(got, want) <= 1e-6, n


@pytest.mark.parametrize("negative", [dict(use_error_feedback=False),
                                      dict(warm_start=False)])
def test_powersgd_negative_control(negative):
  fx = _psgd_fixture("ef1_ws1")
  outs, _ = _psgd_run(fx, True, True, negative=negative)
  err = max(_rel(outs["w1"][t, 0], fx["out_w1"][t]) for t in range(len(fx["out_w1"])))
  assert err > 1e-3


def test_powersgd_validation():
  with pytest.raises(ValueError, match="start_iter"):
    optzoo.powersgd(start_iter=1)
  optzoo.powersgd(start_iter=0, use_error_feedback=False, warm_start=False)
  with pytest.raises(ValueError, match="rank"):
    optzoo.powersgd(rank=0)


# ---------------------------------------------------------------------------
# Local SGD vs torch PeriodicModelAverager
# ---------------------------------------------------------------------------


def _lsgd_run(warmup_steps=3, sync_period=4):
  fx = dict(np.load(os.path.join(FIX, "local_sgd.npz")))
  params = {n: jnp.asarray(np.stack([fx[f"p0init_{n}"]] * 2)) for n in NAMES}
  grads = {n: jnp.asarray(np.stack([fx[f"g0_{n}"], fx[f"g1_{n}"]], 1)) for n in NAMES}
  tx = optzoo.local_sgd(optzoo.sgd(0.05, momentum=0.9), sync_period=sync_period,
                        warmup_steps=warmup_steps)
  outs, nbytes, _ = run_replicas(tx, params, grads, 2, per_replica_params=True)
  return fx, outs, nbytes


def test_local_sgd_matches_torch_periodic_model_averager():
  fx, outs, nbytes = _lsgd_run()
  T = fx["p0_w1"].shape[0]
  for n in NAMES:
    for r in (0, 1):
      assert _rel(outs[n][:, r], fx[f"p{r}_{n}"]) <= 1e-10, (n, r)
  # replicas differ between syncs, agree right after one (steps 3, 7, ...)
  assert not np.allclose(outs["w1"][4, 0], outs["w1"][4, 1])
  # (to round-off: the update is mean(p + u) - p, applied as p + update)
  np.testing.assert_allclose(outs["w1"][7, 0], outs["w1"][7, 1], rtol=1e-14, atol=1e-15)
  dense = 8 * sum(fx[f"p0init_{n}"].size for n in NAMES)
  assert list(nbytes[:5]) == [dense, dense, dense, dense, 0]
  assert T == 40


def test_local_sgd_negative_control():
  fx, outs, _ = _lsgd_run(warmup_steps=0)
  assert _rel(outs["w1"][:, 0], fx["p0_w1"]) > 1e-3


# ---------------------------------------------------------------------------
# Compressors vs NumPy re-derivations (8 replicas)
# ---------------------------------------------------------------------------

N, T = 8, 12
SHAPES = {"a": (6, 5), "b": (7,), "s": ()}


def _grads(seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=(T, N) + s) for k, s in SHAPES.items()}


def _params():
  return {k: jnp.zeros(s) for k, s in SHAPES.items()}


def _np_ef(grads, compress, ef=True):
  """Generic NumPy loop: p = g + e, (agg, local) = compress(p list, t, leaf)."""
  out = {k: [] for k in grads}
  err = {k: np.zeros((N,) + SHAPES[k]) for k in grads}
  for t in range(T):
    for k in grads:
      p = grads[k][t].reshape(N, -1) + (err[k].reshape(N, -1) if ef else 0)
      agg, local = compress(p, t, k)
      out[k].append(agg.reshape(SHAPES[k]))
      if ef:
        err[k] = (p - local).reshape(err[k].shape)
  return {k: np.stack(v) for k, v in out.items()}


def _check(outs, want, tol=1e-12):
  for k in want:
    for r in range(N):
      assert _rel(outs[k][:, r], want[k]) <= tol, (k, r)


def test_topk_matches_numpy():
  g = _grads()
  ratio = 0.2
  outs, nbytes, _ = run_replicas(optzoo.topk_compression(ratio), _params(), g, N)

  def comp(p, t, k):
    d = p.shape[1]
    kk = max(1, int(np.ceil(ratio * d)))
    local = np.zeros_like(p)
    for r in range(N):
      idx = np.argsort(-np.abs(p[r]), kind="stable")[:kk]
      local[r, idx] = p[r, idx]
    return local.mean(0), local

  _check(outs, _np_ef(g, comp))
  # negative control: without error feedback
  with pytest.raises(AssertionError):
    _check(outs, _np_ef(g, comp, ef=False))
  assert nbytes[0] == (6 + 2 + 1) * (8 + 4)


def test_randomk_matches_numpy():
  g = _grads(1)
  ratio = 0.4
  tx = optzoo.randomk_compression(ratio, key=3)
  outs, nbytes, _ = run_replicas(tx, _params(), g, N)
  names = sorted(SHAPES)  # leaf order of a dict pytree

  def comp(p, t, k):
    d = p.shape[1]
    kk = max(1, int(np.ceil(ratio * d)))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(3), t),
                             names.index(k))
    u = np.asarray(jax.random.uniform(key, (d,), jnp.float32))
    idx = np.argsort(-u, kind="stable")[:kk]  # the kk largest uniforms
    local = np.zeros_like(p)
    local[:, idx] = p[:, idx]
    return local.mean(0), local

  _check(outs, _np_ef(g, comp))
  assert nbytes[0] == (12 + 3 + 1) * 8


def test_qsgd_matches_numpy_and_is_unbiased():
  g = _grads(2)
  s = 4
  tx = optzoo.qsgd(num_levels=s, key=5)
  outs, nbytes, _ = run_replicas(tx, _params(), g, N)
  names = sorted(SHAPES)

  def comp(p, t, k):
    local = np.zeros_like(p)
    for r in range(N):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
          jax.random.PRNGKey(5), t), names.index(k)), r)
      u = np.asarray(jax.random.uniform(key, (p.shape[1],), jnp.float64))
      norm = np.linalg.norm(p[r])
      lev = np.abs(p[r]) / norm * s
      xi = np.floor(lev) + (u < lev - np.floor(lev))
      local[r] = norm * np.sign(p[r]) * xi / s
    return local.mean(0), local

  _check(outs, _np_ef(g, comp, ef=False))
  assert nbytes[0] == (30 + 8) + (7 + 8) + (1 + 8)
  # unbiased: the mean over the 8 replicas' quantizations of the *same*
  # vector, over the 12 steps, approaches it (loose statistical check)
  same = {k: np.broadcast_to(v[:1, :1], v.shape).copy() for k, v in g.items()}
  o2, _, _ = run_replicas(tx, _params(), same, N)
  est = o2["a"][:, 0].mean(0)
  assert _rel(est, same["a"][0, 0]) < 0.35


def test_ef_signsgd_matches_numpy():
  g = _grads(3)
  for layerwise in (False, True):
    outs, nbytes, _ = run_replicas(optzoo.ef_signsgd(layerwise=layerwise),
                                   _params(), g, N)
    out = {k: [] for k in g}
    err = {k: np.zeros((N, int(np.prod(SHAPES[k])))) for k in g}
    for t in range(T):
      ps = {k: g[k][t].reshape(N, -1) + err[k] for k in g}
      if layerwise:
        sc = {k: np.abs(ps[k]).sum(1) / ps[k].shape[1] for k in g}
      else:
        tot = sum(np.abs(ps[k]).sum(1) for k in g) / sum(ps[k].shape[1] for k in g)
        sc = {k: tot for k in g}
      for k in g:
        delta = sc[k][:, None] * np.sign(ps[k])
        out[k].append(delta.mean(0).reshape(SHAPES[k]))
        err[k] = ps[k] - delta
    _check(outs, {k: np.stack(v) for k, v in out.items()})
  # 2 bits per entry: a: 60 bits -> 8 bytes, b: 14 -> 2, s: 2 -> 1 (+ scales)
  assert nbytes[0] == 8 + 2 + 1 + 3 * 8


def test_majority_vote_matches_numpy():
  g = _grads(4)
  beta = 0.5
  outs, nbytes, _ = run_replicas(optzoo.signsgd_majority_vote(beta), _params(), g, N)
  m = {k: np.zeros((N,) + SHAPES[k]) for k in g}
  want = {k: [] for k in g}
  for t in range(T):
    for k in g:
      m[k] = beta * m[k] + (1 - beta) * g[k][t]
      want[k].append(np.sign(np.sign(m[k]).sum(0)))
  _check(outs, {k: np.stack(v) for k, v in want.items()})
  assert nbytes[0] == 8 + 2 + 1
  ties = sum(int((np.stack(want[k]) == 0).sum()) for k in g)
  assert ties > 0  # 8 voters: ties happen and give 0


def _replica_axis_reductions(fn, *args):
  """reduce_sum equations over the leading (gathered, size N) axis of a 2-D+ array."""
  def walk(jaxpr):
    for e in jaxpr.eqns:
      yield e
      for v in e.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            yield from walk(inner)
  return [e for e in walk(jax.make_jaxpr(fn)(*args).jaxpr)
          if e.primitive.name == "reduce_sum" and 0 in e.params["axes"]
          and len(e.invars[0].aval.shape) >= 2 and e.invars[0].aval.shape[0] == N]


def test_decode_average_is_a_chain_of_adds_in_replica_order():
  # QSGD and EF-SignSGD average the N gathered decodes with replica_mean:
  # ((r_0 + r_1) + r_2) + ... in replica order, no reduce over the replica
  # axis (XLA:CPU's fused reduce of QSGD's (8, d) int8 decode took 4.3 s at
  # d = 1e6, 0.03 s at 1e5; the benchmark's 10M-param step did not finish).
  from optzoo._src.communication import _collectives as C
  rng = np.random.default_rng(9)
  rows = rng.normal(size=(N, 1000)) * 10.0 ** rng.integers(-8, 8, size=(N, 1000))
  acc = rows[0]
  for r in rows[1:]:
    acc = acc + r
  np.testing.assert_array_equal(np.asarray(jax.jit(C.replica_mean)(rows)), acc / N)
  rev = rows[-1]  # negative control: another order gives other bits
  for r in rows[-2::-1]:
    rev = rev + r
  assert np.any(rev / N != acc / N)

  mesh = _mesh(N)
  params = {"w": jnp.zeros((6, 5))}
  for tx in (optzoo.qsgd(4), optzoo.ef_signsgd(), optzoo.ef_signsgd(layerwise=True)):
    state = optzoo.replicate_state(tx.init(params), N)
    sspec = optzoo.replica_specs(state)
    f = jax.shard_map(lambda g, s: tx.update({"w": g[0]}, s)[0]["w"][None], mesh=mesh,
                      in_specs=(P("data"), sspec), out_specs=P("data"))
    assert _replica_axis_reductions(f, jnp.zeros((N, 6, 5)), state) == [], tx
  # negative control: the walker sees a mean over the gathered axis
  g = jax.shard_map(lambda x: jnp.mean(jax.lax.all_gather(x[0], "data"), axis=0)[None],
                    mesh=mesh, in_specs=P("data"), out_specs=P("data"))
  assert len(_replica_axis_reductions(g, jnp.zeros((N, 30)))) == 1


@pytest.mark.parametrize("name", ["topk", "randomk", "qsgd", "ef_signsgd",
                                  "majority", "powersgd"])
def test_output_is_replicated_for_a_stateful_optimizer_after_it(name):
  # The aggregated update is the same on every replica and typed so (not
  # varying over the data axis): Adam chained after it keeps a replicated
  # state (PartitionSpec()) through a scan of steps inside shard_map.
  comp = {"topk": lambda: optzoo.topk_compression(0.3),
          "randomk": lambda: optzoo.randomk_compression(0.3),
          "qsgd": lambda: optzoo.qsgd(4), "ef_signsgd": optzoo.ef_signsgd,
          "majority": lambda: optzoo.signsgd_majority_vote(0.5),
          "powersgd": lambda: optzoo.powersgd(rank=1, start_iter=2)}[name]()
  tx = optax.chain(comp, optzoo.adam(1e-2))
  params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros((5,)), "c": jnp.zeros((3,), jnp.complex128)}
  state = optzoo.replicate_state(tx.init(params), N)
  sspec = optzoo.replica_specs(state)
  assert _adam(state[1]).mu["w"].shape == (6, 5)  # replicated, not per replica
  mesh = _mesh(N)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: jnp.asarray(
      rng.normal(size=(3, N) + p.shape) * (1 + 1j if p.dtype.kind == "c" else 1)), params)
  gspec = jax.tree.map(lambda _: P(None, "data"), params)
  pspec = jax.tree.map(lambda _: P(), params)

  def body(p, s, g):
    def step(c, gt):
      p, s = c
      u, s = tx.update(jax.tree.map(lambda x: x[0], gt), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (p, s), g)[0]
  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(pspec, sspec, gspec),
                            out_specs=(pspec, sspec)))
  p, s = f(_put(params, mesh, pspec), _put(state, mesh, sspec), _put(grads, mesh, gspec))
  assert np.all(np.isfinite(np.asarray(p["w"]))) and np.any(np.asarray(p["w"]) != 0)


def test_unbound_axis_is_one_replica():
  # Outside shard_map: no communication; top-k of g + e on the one replica.
  tx = optzoo.topk_compression(0.5)
  params = {"a": jnp.zeros((4,))}
  state = tx.init(params)
  g = {"a": jnp.asarray([1.0, -3.0, 0.5, 2.0])}
  u, state = jax.jit(tx.update)(g, state)
  np.testing.assert_array_equal(u["a"], [0.0, -3.0, 0.0, 2.0])
  np.testing.assert_array_equal(state.error["a"][0], [1.0, 0.0, 0.5, 0.0])
  stats = optzoo.communication_stats(state)
  assert stats["dense_bytes"] == 32 and stats["comm_bytes"] == 2 * 12


def test_replica_specs_in_a_chain():
  tx = optax.chain(optzoo.powersgd(rank=1, start_iter=2), optzoo.adam(1e-3))
  params = {"w": jnp.zeros((8, 6)), "b": jnp.zeros((6,))}
  state = tx.init(params)
  specs = optzoo.replica_specs(state, "data")
  flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert sum(s == P("data") for s in flat) == 2  # the two error leaves
  big = optzoo.replicate_state(state, 4)
  assert big[0].error["w"].shape == (4, 8, 6)
  assert _adam(big[1]).mu["w"].shape == (8, 6)


def test_local_sgd_average_state():
  rng = np.random.default_rng(7)
  params = {"w": jnp.asarray(np.stack([rng.normal(size=(3, 2))] * 2))}
  grads = {"w": jnp.asarray(rng.normal(size=(5, 2, 3, 2)))}
  def final_traces(average_state):
    tx = optzoo.local_sgd(optzoo.sgd(0.1, momentum=0.9), sync_period=4,
                          average_state=average_state)
    _, nbytes, state = run_replicas(tx, params, grads, 2, per_replica_params=True)
    tr = [np.asarray(x) for x in jax.tree.leaves(state.inner_state)
          if np.asarray(x).dtype == np.float64 and np.asarray(x).shape == (2, 3, 2)]
    return tr[0], nbytes
  tr, nbytes = final_traces(True)   # synced at steps 0 and 4
  np.testing.assert_allclose(tr[0], tr[1], rtol=1e-14)
  assert nbytes[4] == 2 * 6 * 8 and nbytes[1] == 0   # params + momentum
  tr, _ = final_traces(False)
  assert not np.allclose(tr[0], tr[1])
