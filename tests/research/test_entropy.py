"""Entropy-SGD, Replicated-SGD and local energy.

The oracles below are NumPy re-derivations of the update equations
(ucla-vision/entropy-sgd python/optim.py and the paper's Algorithm 1 for
Entropy-SGD; Pittorino et al., ICLR 2021, eqs. 4-6 for rSGD), written from the equations, not from
optzoo's code. The Langevin noise of Entropy-SGD is reproduced by re-drawing
it with jax.random from the documented key scheme (split per update, fold_in
per inner step, split per leaf), then used in float64 NumPy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo

from helpers import TraceCounter

SHAPES = {"b": (4,), "s": (), "w": (3, 4)}  # sorted = jax leaf order
N = sum(int(np.prod(s)) for s in SHAPES.values())


def _problem(seed=0, outer=200, inner=5):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(N, N)))
  a = (q * np.geomspace(0.5, 5.0, N)) @ q.T
  c = rng.normal(size=N)
  e = 0.3 * rng.normal(size=(outer, inner, N))   # minibatch noise per (t, i)
  x0 = rng.normal(size=N)
  return a, c, e, x0


def _flat(p):
  return np.concatenate([np.ravel(np.asarray(p[k], np.float64)) for k in sorted(SHAPES)])


def _unflat(x):
  out, k0 = {}, 0
  for k in sorted(SHAPES):
    n = int(np.prod(SHAPES[k]))
    out[k] = x[k0:k0 + n].reshape(SHAPES[k])
    k0 += n
  return out


def _np_grad(x, a, c, e_ti):
  return a @ x - c + 0.4 * x**3 / N + e_ti


def _jax_grad_fn(a, c, e, t):
  a, c = jnp.asarray(a), jnp.asarray(c)
  e_t = jnp.asarray(e)[t]

  def grad_fn(p, i):
    x = jnp.concatenate([jnp.ravel(p[k]) for k in sorted(SHAPES)])
    g = a @ x - c + 0.4 * x**3 / N + e_t[i]
    out, k0 = {}, 0
    for k in sorted(SHAPES):
      n = int(np.prod(SHAPES[k]))
      out[k] = g[k0:k0 + n].reshape(SHAPES[k])
      k0 += n
    return out
  return grad_fn


def _noise_draws(seed, outer, inner):
  """Re-draw the documented noise stream: (outer, inner, N) float64."""
  out = np.zeros((outer, inner, N))
  key = jax.random.PRNGKey(seed)
  for t in range(outer):
    key, sub = jax.random.split(key)
    for i in range(inner):
      keys = jax.random.split(jax.random.fold_in(sub, i), len(SHAPES))
      parts = [np.ravel(np.asarray(jax.random.normal(k, SHAPES[name], jnp.float64)))
               for k, name in zip(keys, sorted(SHAPES))]
      out[t, i] = np.concatenate(parts)
  return out


def _oracle_entropy(x0, a, c, e, z, *, lr, L, inner_lr, noise, alpha, g0, g1,
                    mom, nesterov, wd, mu_weighting, noise_form, outer_gamma,
                    gamma_max=None):
  x = x0.copy()
  buf = None
  traj = []
  sig = noise * np.sqrt((2.0 if noise_form == "code" else 1.0) * inner_lr)
  for t in range(e.shape[0]):
    gamma = g0 * (1.0 + g1) ** t
    if gamma_max is not None:
      gamma = min(gamma, gamma_max)
    xp, mu, b = x.copy(), x.copy(), None
    for i in range(L):
      g = _np_grad(xp, a, c, e[t, i]) + wd * xp
      b = g.copy() if b is None else mom * b + g
      d = g + mom * b if nesterov else b
      xp = xp - inner_lr * (d - gamma * (x - xp)) + sig * z[t, i]
      if mu_weighting == "paper":
        mu = (1 - alpha) * mu + alpha * xp
      else:
        mu = alpha * mu + (1 - alpha) * xp
    big_g = (gamma if outer_gamma else 1.0) * (x - mu) + wd * x
    buf = big_g.copy() if buf is None else mom * buf + big_g
    step = big_g + mom * buf if nesterov else buf
    x = x - lr * step
    traj.append(x.copy())
  return np.stack(traj)


def _run_entropy(tx, x0, a, c, e):
  params = {k: jnp.asarray(v) for k, v in _unflat(x0).items()}
  state = tx.init(params)
  step = jax.jit(lambda p, s, t: tx.update(p, s, p, grad_fn=_jax_grad_fn(a, c, e, t)))

  # Python loop over a jitted step that takes t as a traced index.
  def body(carry, t):
    p, s = carry
    u, s = step(p, s, t)
    p = optax.apply_updates(p, u)
    return (p, s), _flat_j(p)

  (_, _), traj = jax.jit(lambda c0: jax.lax.scan(body, c0, jnp.arange(e.shape[0])))(
      (params, state))
  return np.asarray(traj)


def _flat_j(p):
  return jnp.concatenate([jnp.ravel(p[k]) for k in sorted(SHAPES)])


def _rel(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


CASES = {
    "paper_defaults": dict(kw=dict(), mom=0.9, nesterov=True, mu_weighting="paper",
                           noise_form="code", outer_gamma=False),
    "code_variant": dict(kw=dict(mu_weighting="code", noise_form="paper", momentum=0.5,
                                 nesterov=False, scale_outer_by_gamma=True),
                         mom=0.5, nesterov=False, mu_weighting="code",
                         noise_form="paper", outer_gamma=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_entropy_sgd_matches_numpy_oracle_with_noise(name):
  case = CASES[name]
  outer, inner, seed = 200, 5, 3
  a, c, e, x0 = _problem(outer=outer, inner=inner)
  z = _noise_draws(seed, outer, inner)
  lr = 0.5 if case["outer_gamma"] else 0.05
  common = dict(inner_learning_rate=0.05, noise=3e-3, mu_decay=0.75, gamma=0.3 if case["outer_gamma"] else 0.03,
                gamma_scoping=1e-2, weight_decay=1e-3)
  tx = optzoo.entropy_sgd(lr, num_inner_steps=inner, key=seed, **common, **case["kw"])
  got = _run_entropy(tx, x0, a, c, e)
  want = _oracle_entropy(
      x0, a, c, e, z, lr=lr, L=inner, inner_lr=common["inner_learning_rate"], noise=common["noise"],
      alpha=0.75, g0=common["gamma"], g1=common["gamma_scoping"], mom=case["mom"],
      nesterov=case["nesterov"], wd=common["weight_decay"],
      mu_weighting=case["mu_weighting"], noise_form=case["noise_form"],
      outer_gamma=case["outer_gamma"])
  assert _rel(got, want) < 1e-9, _rel(got, want)
  # The test can fail: the other mu weighting, no scoping, or no noise are far.
  other = "code" if case["mu_weighting"] == "paper" else "paper"
  alt = _oracle_entropy(
      x0, a, c, e, z, lr=lr, L=inner, inner_lr=common["inner_learning_rate"], noise=common["noise"],
      alpha=0.75, g0=common["gamma"], g1=common["gamma_scoping"], mom=case["mom"],
      nesterov=case["nesterov"], wd=common["weight_decay"], mu_weighting=other,
      noise_form=case["noise_form"], outer_gamma=case["outer_gamma"])
  assert _rel(alt, want) > 1e-3
  unscoped = _oracle_entropy(
      x0, a, c, e, z, lr=lr, L=inner, inner_lr=common["inner_learning_rate"], noise=common["noise"],
      alpha=0.75, g0=common["gamma"], g1=0.0, mom=case["mom"],
      nesterov=case["nesterov"], wd=common["weight_decay"],
      mu_weighting=case["mu_weighting"], noise_form=case["noise_form"],
      outer_gamma=case["outer_gamma"])
  assert _rel(unscoped, want) > 1e-4   # the PyTorch port's never-incremented t


def test_entropy_sgd_noise_free_and_gamma_cap():
  outer, inner = 200, 4
  a, c, e, x0 = _problem(seed=5, outer=outer, inner=inner)
  z = np.zeros((outer, inner, N))
  tx = optzoo.entropy_sgd(0.1, num_inner_steps=inner, inner_learning_rate=0.05, noise=0.0, gamma=0.05,
                          gamma_scoping=0.02, gamma_max=0.5, weight_decay=0.0)
  got = _run_entropy(tx, x0, a, c, e)
  want = _oracle_entropy(x0, a, c, e, z, lr=0.1, L=inner, inner_lr=0.05, noise=0.0,
                         alpha=0.75, g0=0.05, g1=0.02, mom=0.9, nesterov=True, wd=0.0,
                         mu_weighting="paper", noise_form="code", outer_gamma=False,
                         gamma_max=0.5)
  assert _rel(got, want) < 1e-10


@pytest.mark.parametrize("noise", [0.0, 1e-2])
def test_entropy_sgd_step_is_the_local_entropy_gradient_of_a_quadratic(noise):
  """Defining property: for f = 1/2 sum a x^2 the Gibbs mean of the local-entropy
  measure is <x'> = gamma x / (a + gamma), so G = x - <x'> = a x / (a + gamma)
  (= grad of -F(x; gamma) / gamma); the SGLD chain must find it."""
  a = jnp.asarray([0.5, 1.0, 4.0])
  x = {"x": jnp.asarray([1.0, -2.0, 0.5])}
  gamma = 1.0
  tx = optzoo.entropy_sgd(1.0, num_inner_steps=600, inner_learning_rate=0.05, noise=noise, gamma=gamma,
                          gamma_scoping=0.0, momentum=0.0, nesterov=False,
                          # noise-free: the paper's weighting tracks the chain;
                          # noisy: a long average (code weighting, decay 0.99)
                          mu_weighting="paper" if noise == 0 else "code",
                          mu_decay=0.75 if noise == 0 else 0.99)
  grad_fn = lambda p, i: {"x": a * p["x"]}
  u, _ = jax.jit(lambda p, s: tx.update(p, s, p, grad_fn=grad_fn))(x, tx.init(x))
  want = -np.asarray(a * x["x"] / (a + gamma))
  np.testing.assert_allclose(np.asarray(u["x"]), want, atol=1e-6 if noise == 0 else 0.02)


def test_entropy_sgd_inner_zero_is_nesterov_sgd():
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": None}
  tx = optzoo.entropy_sgd(0.1, num_inner_steps=0, weight_decay=0.01)
  ref = optzoo.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
  s1, s2 = tx.init(params), ref.init(params)
  p1 = p2 = params
  for k in range(5):
    g = jax.tree.map(lambda x: jnp.sin(x + k), p1)
    u1, s1 = tx.update(g, s1, p1)
    g2 = jax.tree.map(lambda x: jnp.sin(x + k), p2)
    u2, s2 = ref.update(g2, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  np.testing.assert_allclose(p1["w"], p2["w"], rtol=1e-14)


def test_entropy_sgd_jit_once_dtypes_pytrees_and_key():
  params = {"w": jnp.ones((3, 2), jnp.bfloat16), "v": jnp.ones((2,), jnp.float32),
            "s": jnp.asarray(0.5, jnp.float32), "n": None}
  tx = optzoo.entropy_sgd(0.1, num_inner_steps=3, noise=1e-2)
  gf = lambda p, i: jax.tree.map(lambda x: (2 * x).astype(x.dtype), p)
  counter = TraceCounter(lambda p, s: tx.update(gf(p, 0), s, p, grad_fn=gf))
  step = jax.jit(counter)
  state = tx.init(params)
  for _ in range(3):
    u, new_state = step(params, state)
    assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state)
    state = new_state
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  # An explicit `key` extra arg replaces the state key (same key -> same noise).
  st = tx.init(params)
  k = jax.random.PRNGKey(7)
  with_key = jax.jit(lambda p, s, k: tx.update(p, s, p, grad_fn=gf, key=k)[0])
  u1 = with_key(params, st, k)
  u2 = with_key(params, st, k)
  u3 = with_key(params, st, jax.random.PRNGKey(8))
  np.testing.assert_array_equal(np.asarray(u1["v"]), np.asarray(u2["v"]))
  assert not np.array_equal(np.asarray(u1["v"]), np.asarray(u3["v"]))


def test_entropy_sgd_clear_errors_and_inject():
  params = {"w": jnp.ones(3)}
  tx = optzoo.entropy_sgd(0.1, num_inner_steps=2)
  st = tx.init(params)
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(params, st, params)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, st, None, grad_fn=lambda p, i: p)
  for bad, exc in [({"num_inner_steps": -1}, ValueError),
                   ({"inner_learning_rate": -1.0}, ValueError),
                   ({"mu_weighting": "lua"}, ValueError), ({"nesterov": "y"}, TypeError),
                   ({"gamma": float("nan")}, ValueError)]:
    with pytest.raises(exc, match=list(bad)[0]):
      optzoo.entropy_sgd(**bad)
  inj = optax.inject_hyperparams(optzoo.entropy_sgd, static_args=("num_inner_steps", "key"))(
      learning_rate=0.1, num_inner_steps=2)
  s = inj.init(params)
  u, s = jax.jit(lambda p, s: inj.update(p, s, p, grad_fn=lambda q, i: q))(params, s)
  assert np.all(np.isfinite(np.asarray(u["w"])))


def test_entropy_and_replicated_preserve_sharding():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("d",))
  sh = NamedSharding(mesh, P("d"))
  n = len(jax.devices())
  p = {"w": jax.device_put(jnp.ones((n, 3)), sh)}
  for tx in (optzoo.entropy_sgd(0.1, num_inner_steps=2, noise=1e-2),
             optzoo.replicated_sgd(0.1, gamma=0.5, momentum=0.9)):
    s = tx.init(p)
    u, s = jax.jit(lambda p, s: tx.update(p, s, p, grad_fn=lambda q, i: q))(p, s)
    assert u["w"].sharding.is_equivalent_to(sh, 2)


# ---------------------------------------------------------------------------
# Long runs: the scoped gamma never overflows (it used to give NaN after ~88k steps).
# ---------------------------------------------------------------------------

BIG = 2**31 - 2


def test_scoped_gamma_is_finite_and_bit_identical_to_the_plain_power():
  scoped_gamma = optzoo.research.scoped_gamma
  with jax.enable_x64(False):
    f = jax.jit(lambda t: scoped_gamma(1e-4, 1e-3, t))
    plain = jax.jit(lambda t: jnp.float32(1e-4) * jnp.power(jnp.float32(1.001),
                                                            t.astype(jnp.float32)))
    for t in [0, 1, 7, 1000, 50_000, 88_000]:
      want = np.asarray(plain(jnp.int32(t)))
      assert np.isfinite(want)
      assert np.asarray(f(jnp.int32(t))) == want, t      # bit-identical
    assert not np.isfinite(np.asarray(plain(jnp.int32(89_000))))  # the bug
    for t in [89_000, 10**6, BIG, BIG + 1]:
      v = np.asarray(f(jnp.int32(t)))
      assert v.dtype == np.float32 and np.isfinite(v) and v > 1e33, (t, v)
    # gamma0 = 0 stays 0 (no 0 * inf = nan); a cap applies; a schedule is clamped.
    assert float(scoped_gamma(0.0, 1e-3, jnp.int32(BIG))) == 0.0
    assert float(scoped_gamma(1e-4, 1e-3, jnp.int32(BIG), 5.0)) == 5.0
    assert np.isfinite(float(scoped_gamma(lambda t: jnp.float32(jnp.inf), 0.0, 3)))
  # float64: overflows much later (t ~ 7.1e5 for 1.001) but is clamped too.
  v = np.asarray(scoped_gamma(1e-4, 1e-3, jnp.int32(BIG)))
  assert v.dtype == np.float64 and np.isfinite(v)


def _f32_problem():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray([0.5, -1.0, 2.0], jnp.float32), "s": jnp.float32(0.3),
            "n": None}
  grad_fn = lambda p, i: jax.tree.map(lambda x: (x - 0.1 * i).astype(x.dtype), p)
  return params, grad_fn


def _run_from_count(tx, params, grad_fn, count, steps=3):
  state = tx.init(params)
  state = jax.tree_util.tree_map_with_path(
      lambda path, l: jnp.asarray(count, l.dtype)
      if str(getattr(path[-1], "name", "")) == "count" else l, state)
  step = jax.jit(lambda p, s: tx.update(grad_fn(p, 0), s, p, grad_fn=grad_fn))
  us = []
  for _ in range(steps):
    u, state = step(params, state)
    us.append(u)
    params = optax.apply_updates(params, u)
  return us, params, state


def _all_finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("which", ["entropy_sgd", "replicated_barycenter",
                                   "replicated_elastic"])
def test_scoped_gamma_at_count_2_31_float32_gives_finite_updates(which):
  with jax.enable_x64(False):
    params, grad_fn = _f32_problem()
    if which == "entropy_sgd":
      make = lambda **kw: optzoo.entropy_sgd(0.1, num_inner_steps=5, noise=1e-3, **kw)
    else:
      center = which.split("_")[1]
      make = lambda **kw: optzoo.replicated_sgd(0.1, momentum=0.9, center=center, **kw)
    us, p_end, state = _run_from_count(make(), params, grad_fn, BIG)
    assert all(_all_finite(u) for u in us) and _all_finite(p_end) and _all_finite(state)
    assert all(u["w"].dtype == jnp.float32 for u in us)
    counts = [l for path, l in jax.tree_util.tree_leaves_with_path(state)
              if str(getattr(path[-1], "name", "")) == "count"]
    assert counts and all(int(c) == 2**31 - 1 for c in counts)
    # The default cap is the documented one: same updates as passing it.
    if which == "entropy_sgd":
      cap = 1.0 / 0.1
    else:
      cap = 1.0 / 0.1 / (1 + 3 if which.endswith("elastic") else 1)
    us_cap, _, _ = _run_from_count(make(gamma_max=cap), params, grad_fn, BIG)
    for u, v in zip(us, us_cap):
      for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... and the cap matters there: without it (a huge explicit cap) the
    # update is not finite, which is the bug this guards against.
    us_big, _, _ = _run_from_count(make(gamma_max=3e38), params, grad_fn, BIG)
    assert not all(_all_finite(u) for u in us_big)


def test_default_gamma_cap_does_not_change_normal_runs():
  """Below the cap the default run equals an explicitly uncapped one."""
  params, grad_fn = _f32_problem()
  params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
  for make in (lambda **kw: optzoo.entropy_sgd(0.1, num_inner_steps=3, noise=1e-3, **kw),
               lambda **kw: optzoo.replicated_sgd(0.1, gamma=0.5, center="elastic", **kw)):
    a, _, _ = _run_from_count(make(), params, grad_fn, 1000)
    b, _, _ = _run_from_count(make(gamma_max=1e300), params, grad_fn, 1000)
    for u, v in zip(a, b):
      for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------
# Replicated-SGD
# ---------------------------------------------------------------------------


def _rep_problem(y=3, seed=0):
  rng = np.random.default_rng(seed)
  a = np.diag(np.geomspace(0.5, 4.0, 5))
  targets = rng.normal(size=(y, 5)) * 2.0   # each replica sees its own "data"
  w0 = rng.normal(size=(y, 5))
  return a, targets, w0


def _rep_grad(w, a, targets):
  return (w - targets) @ a


def test_replicated_sgd_gamma_zero_is_independent_sgd():
  a, tg, w0 = _rep_problem()
  tx = optzoo.replicated_sgd(0.1, gamma=0.0, gamma_scoping=1e-2, momentum=0.9, nesterov=True)
  ref = optzoo.sgd(0.1, momentum=0.9, nesterov=True)
  p = {"w": jnp.asarray(w0)}
  s = tx.init(p)
  pr = jnp.asarray(w0)
  sr = jax.vmap(ref.init)(pr)
  for _ in range(60):
    u, s = tx.update({"w": _rep_grad(p["w"], a, tg)}, s, p)
    p = optax.apply_updates(p, u)
    ur, sr = jax.vmap(ref.update)(_rep_grad(pr, a, tg), sr, pr)
    pr = pr + ur
  np.testing.assert_allclose(np.asarray(p["w"]), np.asarray(pr), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("center", ["barycenter", "elastic"])
def test_replicated_sgd_matches_numpy_oracle(center):
  a, tg, w0 = _rep_problem(seed=1)
  lr, g0, g1, mom, K = 0.05, 0.2, 5e-3, 0.8, 2
  tx = optzoo.replicated_sgd(lr, gamma=g0, gamma_scoping=g1, momentum=mom, nesterov=False,
                             weight_decay=1e-3, center=center, coupling_period=K)
  p = {"w": jnp.asarray(w0)}
  s = tx.init(p)
  step = jax.jit(lambda p, s: tx.update({"w": _rep_grad(p["w"], a, tg)}, s, p))
  w, buf, cen = w0.copy(), None, w0.mean(0)
  for t in range(200):
    u, s = step(p, s)
    p = optax.apply_updates(p, u)
    # oracle
    gam = g0 * (1 + g1) ** t if t % K == 0 else 0.0
    cbar = w.mean(0) if center == "barycenter" else cen
    g = _rep_grad(w, a, tg) + K * gam * (w - cbar) + 1e-3 * w
    if center == "elastic":
      cen = cen + lr * K * gam * np.sum(w - cen, axis=0)
    buf = g if buf is None else mom * buf + g
    w = w - lr * buf
  assert _rel(np.asarray(p["w"]), w) < 1e-10
  c = optzoo.replicated_center(p, s)
  np.testing.assert_allclose(np.asarray(c["w"]), cen if center == "elastic" else w.mean(0),
                             rtol=1e-10)


def test_replicated_sgd_large_gamma_collapses_replicas():
  a, tg, w0 = _rep_problem(seed=2)

  def spread(gamma):
    tx = optzoo.replicated_sgd(0.05, gamma=gamma, gamma_scoping=0.0)
    p = {"w": jnp.asarray(w0)}
    s = tx.init(p)
    for _ in range(300):
      u, s = tx.update({"w": _rep_grad(p["w"], a, tg)}, s, p)
      p = optax.apply_updates(p, u)
    w = np.asarray(p["w"])
    return float(np.max(np.abs(w - w.mean(0))))

  # At equilibrium the spread of replica a shrinks like A / (A + gamma).
  s0, s_small, s_big = spread(0.0), spread(1.0), spread(19.0)
  assert s_big < 0.2 * s0 and s_big < s_small < s0


def test_replicate_params_and_scalar_none_leaves():
  params = {"w": jnp.ones((2, 3)), "s": jnp.asarray(1.0), "n": None}
  reps = optzoo.replicate_params(params, 4, key=jax.random.PRNGKey(0), noise=0.1)
  assert reps["w"].shape == (4, 2, 3) and reps["s"].shape == (4,)
  tx = optzoo.replicated_sgd(0.1, gamma=0.5)
  s = tx.init(reps)
  u, s = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, reps), s, reps)
  # zero gradients: replicas move towards their barycentre
  new = optax.apply_updates(reps, u)
  assert np.std(np.asarray(new["w"]), 0).max() < np.std(np.asarray(reps["w"]), 0).max()
  # dtypes are kept (bf16 / f32), state is stable under jit
  pb = {"w": jnp.ones((3, 2), jnp.bfloat16), "v": jnp.arange(3.0, dtype=jnp.float32)}
  for center in ("barycenter", "elastic"):
    txb = optzoo.replicated_sgd(0.1, gamma=0.5, momentum=0.9, center=center)
    sb = txb.init(pb)
    ub, sb2 = jax.jit(txb.update)(pb, sb, pb)
    assert jax.tree.map(lambda a: a.dtype, ub) == jax.tree.map(lambda a: a.dtype, pb)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), sb2) == jax.tree.map(
        lambda a: (a.shape, a.dtype), sb)
  # a 0-d leaf (no replica axis) is shared and never coupled
  p0 = {"a": jnp.ones(3), "t": jnp.asarray(2.0)}
  u0, _ = tx.update(jax.tree.map(jnp.zeros_like, p0), tx.init(p0), p0)
  assert float(u0["t"]) == 0.0


# ---------------------------------------------------------------------------
# Local energy
# ---------------------------------------------------------------------------


def test_local_energy_quadratic_closed_form_and_flatness_order():
  a = jnp.asarray([1.0, 4.0, 0.25])
  loss = lambda p, b: 0.5 * jnp.sum(b * p**2)
  w = jnp.asarray([1.0, -0.5, 2.0])
  sig = jnp.asarray([0.5, 1.0, 2.0])   # MC error ~ 2 sigma / sqrt(n) vs sigma^2
  de = optzoo.local_energy(loss, w, a, sig, num_samples=4000, key=jax.random.PRNGKey(1))
  want = 0.5 * np.asarray(sig) ** 2 * float(jnp.sum(a * w**2))
  np.testing.assert_allclose(np.asarray(de), want, rtol=0.15)
  sharper = optzoo.local_energy(loss, w, 10 * a, sig, num_samples=200)
  assert np.all(np.asarray(sharper) > np.asarray(
      optzoo.local_energy(loss, w, a, sig, num_samples=200)))
