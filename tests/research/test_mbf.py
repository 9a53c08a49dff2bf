"""MBF vs a NumPy re-derivation with explicit block matrices and np.linalg.solve."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter, max_rel_err

STEPS = 200


def _model_loss(p, ex):
  """Per-example loss of a tiny conv -> dense -> dense regression net."""
  img = ex["x"][None]                                    # (1, 4, 4, 2)
  h = jax.lax.conv_general_dilated(img, p["conv"], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jnp.tanh(h + p["cb"]).mean(axis=(0, 1, 2))       # (3,)
  h = jnp.tanh(h @ p["d1"] + p["b1"])                  # (6,)
  out = h @ p["d2"]                                     # (2,)
  return 0.5 * jnp.sum((out - ex["y"]) ** 2)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  n = 96
  data = {"x": rng.normal(size=(n, 4, 4, 2)), "y": rng.normal(size=(n, 2))}
  idx = rng.integers(0, n, size=(STEPS, 12))
  p0 = {"conv": rng.normal(size=(2, 2, 2, 3)) * 0.5,
        "cb": np.zeros(3),
        "d1": rng.normal(size=(3, 6)) * 0.5,
        "b1": rng.normal(size=(6,)) * 0.1,
        "d2": rng.normal(size=(6, 2)) * 0.5}
  return data, idx, p0


# Explicit list of mini-blocks per leaf: each block is a list of flat indices.
def _blocks(name, shape):
  idx = np.arange(int(np.prod(shape))).reshape(shape)
  if len(shape) == 1:
    return [[i] for i in idx]
  if len(shape) == 2:
    n_in, n_out = shape
    if n_in <= n_out:   # one block per output unit (column)
      return [list(idx[:, j]) for j in range(n_out)]
    return [list(idx[i, :]) for i in range(n_in)]  # one block per input row
  kh, kw, cin, cout = shape
  return [list(idx[:, :, ci, co].ravel()) for ci in range(cin)
          for co in range(cout)]


def _np_mbf(p0, data, idx, lr, mu, beta, lam, period, wd, bias_correction=True):
  peg_fn = jax.jit(lambda p, b: optzoo.per_example_grads(_model_loss, p, b))
  p = {k: np.array(v, np.float64) for k, v in p0.items()}
  blocks = {k: _blocks(k, v.shape) for k, v in p.items()}
  fbar = {k: [np.zeros((len(b), len(b))) for b in blocks[k]] for k in p}
  cached = {k: [None] * len(blocks[k]) for k in p}
  m = {k: np.zeros(v.size) for k, v in p.items()}
  traj = []
  for t in range(STEPS):
    batch = {k: v[idx[t]] for k, v in data.items()}
    peg = {k: np.asarray(v) for k, v in peg_fn(p, batch).items()}
    for k in p:
      flat_pe = peg[k].reshape(len(idx[t]), -1)          # (B, size)
      g = flat_pe.mean(0)
      m[k] = mu * m[k] + (1 - mu) * g
      step = np.zeros(p[k].size)
      for j, b in enumerate(blocks[k]):
        gb = flat_pe[:, b]
        fb = sum(np.outer(gb[i], gb[i]) for i in range(len(gb))) / len(gb)
        fbar[k][j] = beta * fbar[k][j] + (1 - beta) * fb
        if t % period == 0:
          corr = (1 - beta ** (t + 1)) if bias_correction else 1.0
          cached[k][j] = fbar[k][j] / corr + lam * np.eye(len(b))
        step[b] = np.linalg.solve(cached[k][j], m[k][b])
      p[k] = p[k] - lr * (step.reshape(p[k].shape) + wd * p[k])
    traj.append({k: v.copy() for k, v in p.items()})
  return {k: np.stack([s[k] for s in traj]) for k in p}


def _run(tx, p0, data, idx):
  params = jax.tree.map(jnp.asarray, p0)
  batches = {k: jnp.asarray(v[idx]) for k, v in data.items()}

  def body(carry, batch):
    p, s = carry
    peg = optzoo.per_example_grads(_model_loss, p, batch)
    g = jax.tree.map(lambda a: a.mean(0), peg)
    u, s = tx.update(g, s, p, per_example_grads=peg)
    p = optax.apply_updates(p, u)
    loss = jnp.mean(jax.vmap(_model_loss, (None, 0))(p, batch))
    return (p, s), (p, loss)

  (_, _), (traj, losses) = jax.jit(lambda c: jax.lax.scan(body, c, batches))(
      (params, tx.init(params)))
  return traj, np.asarray(losses)


CFG = dict(lr=0.05, mu=0.9, beta=0.9, lam=1e-2, period=7, wd=1e-3)


def test_matches_block_oracle():
  data, idx, p0 = _problem(0)
  tx = optzoo.mini_block_fisher(CFG["lr"], momentum=CFG["mu"],
                                ema_decay=CFG["beta"], damping=CFG["lam"],
                                inverse_every=CFG["period"],
                                weight_decay=CFG["wd"])
  traj, losses = _run(tx, p0, data, idx)
  ref = _np_mbf(p0, data, idx, **CFG)
  assert max_rel_err(traj, ref, floor=1e-6) < 1e-8
  assert losses[-20:].mean() < 0.9 * losses[:5].mean()
  # the refresh period matters (a cached inverse is really reused)
  ref_every_step = _np_mbf(p0, data, idx, **dict(CFG, period=1))
  assert max_rel_err(traj, ref_every_step, floor=1e-6) > 1e-4


def test_matches_block_oracle_no_momentum_no_bias_correction():
  data, idx, p0 = _problem(1)
  cfg = dict(lr=0.02, mu=0.0, beta=0.5, lam=0.1, period=1, wd=0.0)
  tx = optzoo.mini_block_fisher(cfg["lr"], momentum=0.0, ema_decay=0.5,
                                damping=0.1, inverse_every=1,
                                bias_correction=False)
  traj, _ = _run(tx, p0, data, idx)
  ref = _np_mbf(p0, data, idx, bias_correction=False, **cfg)
  assert max_rel_err(traj, ref, floor=1e-6) < 1e-8


def test_block_diagonal_structure():
  """A block's step depends only on that block's per-example gradients."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.zeros((3, 5))}     # 'output' layout: 5 blocks of size 3
  peg = {"w": jnp.asarray(rng.normal(size=(8, 3, 5)))}
  tx = optzoo.scale_by_mini_block_fisher(momentum=0.0)
  g = jax.tree.map(lambda a: a.mean(0), peg)
  u1, _ = tx.update(g, tx.init(params), per_example_grads=peg)
  peg2 = {"w": peg["w"].at[:, :, 2].multiply(3.0)}   # change block 2 only
  u2, _ = tx.update(g, tx.init(params), per_example_grads=peg2)
  changed = np.any(np.abs(np.asarray(u1["w"] - u2["w"])) > 1e-12, axis=0)
  np.testing.assert_array_equal(changed, [False, False, True, False, False])
  # and within a block the coupling is a full (non-diagonal) matrix
  fb = np.einsum("bi,bj->ij", peg["w"][:, :, 0], peg["w"][:, :, 0]) / 8
  expect = np.linalg.solve(fb + 1e-3 * np.eye(3), np.asarray(g["w"][:, 0]))
  np.testing.assert_allclose(u1["w"][:, 0], expect, rtol=1e-8)


def test_partition():
  assert optzoo.mini_block_partition((3, 3, 16, 32)) == ("conv", 512, 9)
  assert optzoo.mini_block_partition((64, 10)) == ("input", 64, 10)
  assert optzoo.mini_block_partition((10, 64)) == ("output", 64, 10)
  assert optzoo.mini_block_partition((64, 10), "output") == ("output", 10, 64)
  assert optzoo.mini_block_partition((7,)) == ("diag", 7, 1)


def test_per_example_grads_helper():
  data, idx, p0 = _problem(2)
  batch = {k: jnp.asarray(v[:5]) for k, v in data.items()}
  params = jax.tree.map(jnp.asarray, p0)
  peg = jax.jit(lambda p, b: optzoo.per_example_grads(_model_loss, p, b))(
      params, batch)
  full = jax.jit(jax.grad(
      lambda p: jnp.mean(jax.vmap(_model_loss, (None, 0))(p, batch))))(params)
  for k in params:
    assert peg[k].shape == (5,) + params[k].shape
    np.testing.assert_allclose(peg[k].mean(0), full[k], rtol=1e-10, atol=1e-14)
  # keep_batch_dim gives each example a leading axis of size 1
  peg2 = jax.jit(lambda p, b: optzoo.per_example_grads(
      lambda q, ex: _model_loss(q, jax.tree.map(lambda a: a[0], ex)), p, b,
      keep_batch_dim=True))(params, batch)
  np.testing.assert_allclose(peg2["d1"], peg["d1"], rtol=1e-12)


def test_missing_extra_arg():
  params = {"w": jnp.ones((2, 2))}
  tx = optzoo.mini_block_fisher(0.1)
  with pytest.raises(ValueError, match=r"`per_example_grads`.*per_example_grads\("):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("kwargs, exc", [
    ({"learning_rate": -1.0}, ValueError), ({"momentum": 1.5}, ValueError),
    ({"damping": 0.0}, ValueError), ({"inverse_every": 0}, ValueError),
    ({"inverse_every": 2.5}, TypeError), ({"weight_decay": -1.0}, ValueError),
    ({"dense_block": "rows"}, ValueError), ({"ema_decay": 1.0}, ValueError),
])
def test_bad_hyperparameters(kwargs, exc):
  kw = {"learning_rate": 0.1}
  kw.update(kwargs)
  with pytest.raises(exc, match=list(kwargs)[0]):
    optzoo.mini_block_fisher(**kw)


def test_jit_once_dtype_none_leaves():
  params = {"k": jnp.ones((3, 2), jnp.bfloat16), "c": jnp.ones((2, 2, 1, 2), jnp.float32),
            "b": jnp.ones(2, jnp.float32), "n": None,
            "s": jnp.asarray(0.5, jnp.float32)}
  peg = jax.tree.map(lambda p: None if p is None else jnp.stack([p * 0.1, p * 0.3]),
                     params, is_leaf=lambda z: z is None)
  grads = jax.tree.map(lambda a: a.mean(0), peg)
  tx = optzoo.mini_block_fisher(0.1, inverse_every=2, weight_decay=1e-2)
  counter = TraceCounter(lambda g, s, p, e: tx.update(g, s, p, per_example_grads=e,
                                                      value=1.0))
  step = jax.jit(counter)
  s = tx.init(params)
  for _ in range(3):
    u, s = step(grads, s, params, peg)
  assert counter.count == 1
  assert u["k"].dtype == jnp.bfloat16 and u["c"].dtype == jnp.float32
  assert u["n"] is None and u["s"].shape == ()


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(optzoo.mini_block_fisher)(learning_rate=0.1,
                                                          damping=0.1)
  params = {"w": jnp.ones((2, 3))}
  peg = {"w": jnp.ones((4, 2, 3))}
  u, _ = jax.jit(lambda s: tx.update(params, s, params,
                                     per_example_grads=peg))(tx.init(params))
  assert u["w"].shape == (2, 3)


@pytest.mark.parametrize("dense_block", ["auto", "output", "input"])
def test_empty_leaves_pass_through(dense_block):
  """Leaves with a zero in their shape (no parameters) get an empty update and
  empty state, and do not change the other leaves' updates (they used to
  raise IndexError in the blockwise inverse)."""
  rng = np.random.default_rng(0)
  full = {"w": jnp.asarray(rng.normal(size=(3, 2))),
          "c": jnp.asarray(rng.normal(size=(2, 2, 1, 2)))}
  empty = {"e": jnp.zeros((0, 4)), "e4": jnp.zeros((4, 0)), "v": jnp.zeros((0,)),
           "k0": jnp.zeros((0, 2, 2, 3)), "k1": jnp.zeros((2, 2, 0, 3)),
           "f": jnp.zeros((0, 4), jnp.float32)}
  params = dict(full, **empty)

  def peg_of(p, k):
    return jax.tree.map(lambda x: jnp.stack([jnp.sin(x + k), jnp.cos(2 * x - k),
                                             0.3 * x + 0.1 * k]).astype(x.dtype), p)

  def run(p, tx):
    counter = TraceCounter(lambda g, s, e: tx.update(g, s, p, per_example_grads=e))
    step = jax.jit(counter)
    s = tx.init(p)
    out = []
    for k in range(4):
      peg = peg_of(p, k)
      g = jax.tree.map(lambda a: a.mean(0), peg)
      u, s = step(g, s, peg)
      out.append(u)
    assert counter.count == 1
    return out, s

  for make in (lambda: optzoo.mini_block_fisher(0.1, inverse_every=2,
                                                dense_block=dense_block),
               lambda: optzoo.scale_by_mini_block_fisher(inverse_every=2,
                                                         dense_block=dense_block)):
    got, state = run(params, make())
    ref, _ = run(full, make())
    for u, r in zip(got, ref):
      for name, x in empty.items():
        assert u[name].shape == x.shape and u[name].dtype == x.dtype
      for name in full:
        np.testing.assert_array_equal(np.asarray(u[name]), np.asarray(r[name]))
        assert np.all(np.isfinite(np.asarray(u[name])))
    # Trivial (empty) state for the empty leaves.
    inner = state[0] if isinstance(state, tuple) and not hasattr(state, "fisher") else state
    for tree in (inner.fisher, inner.inverse, inner.momentum):
      for name in empty:
        assert tree[name].size == 0
