"""Tests for optzoo.diagnostics.

Oracles: closed-form Hessians (x^2 - y^2, quadratics with a chosen spectrum,
a two-layer linear network), ``numpy.linalg.eigvalsh`` of a dense Hessian
that is itself checked against central finite differences of ``jax.grad``,
closed-form Gaussian integrals for the perturbation measures, and
``optax.global_norm`` / plain ``optax.adam`` for the monitor.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo.diagnostics as dg
from optzoo._src import registry

from helpers import TraceCounter, pytree_problem
import registry_cases


# ---------------------------------------------------------------------------
# Problems with known Hessians
# ---------------------------------------------------------------------------


def _rotation(n, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  return q


def _quadratic(eigs, seed=0):
  """f(x) = 1/2 x^T Q diag(eigs) Q^T x: Hessian spectrum = eigs."""
  eigs = np.asarray(eigs, np.float64)
  q = _rotation(len(eigs), seed)
  a = jnp.asarray((q * eigs) @ q.T)
  return (lambda x: 0.5 * x @ a @ x), np.asarray(a)


class MLP(nn.Module):
  hidden: int = 8
  out: int = 3

  @nn.compact
  def __call__(self, x):
    kw = dict(param_dtype=jnp.float64, dtype=jnp.float64)
    x = jnp.tanh(nn.Dense(self.hidden, **kw)(x))
    return nn.Dense(self.out, **kw)(x)


@functools.lru_cache(maxsize=None)
def _mlp_problem(n_in=5, hidden=8, out=3, n=40, seed=0):
  """Cached, so every test reuses one `loss_fn` object and its compiled kernels."""
  model = MLP(hidden, out)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, n_in)))
  y = jnp.asarray(rng.integers(0, out, size=n))
  params = model.init(jax.random.key(seed), x)

  def loss_fn(p, batch):
    xb, yb = batch
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

  return model, params, loss_fn, (x, y)


# ---------------------------------------------------------------------------
# HVP and dense Hessian
# ---------------------------------------------------------------------------


def test_hvp_and_dense_hessian_match_analytic_pytree():
  params, _, loss_fn = pytree_problem()
  # loss = 1/2 x^T A x - c^T x + 0.1 sum(x^4)/n, x = concat(sorted leaves).
  from helpers import spd_quadratic
  flat = np.concatenate([np.ravel(params[k]) for k in sorted(params)])
  n = flat.size
  a, _, _ = spd_quadratic(n, seed=11, cond=20.0)
  h_true = a + np.diag(1.2 * flat**2 / n)
  # ravel_pytree orders dict leaves by sorted key too.
  h = dg.dense_hessian(loss_fn, params)
  np.testing.assert_allclose(h, h_true, rtol=1e-12, atol=1e-12)
  v = {k: np.random.default_rng(3).normal(size=np.shape(p)) for k, p in params.items()}
  hv = dg.hvp(loss_fn, params, v)
  v_flat = np.concatenate([np.ravel(v[k]) for k in sorted(v)])
  hv_flat = np.concatenate([np.ravel(hv[k]) for k in sorted(hv)])
  np.testing.assert_allclose(hv_flat, h_true @ v_flat, rtol=1e-12, atol=1e-12)
  # make_hvp_fn: the `hvp_fn(params, v)` extra-arg convention, jittable.
  hvp_fn = jax.jit(dg.make_hvp_fn(lambda p, b: loss_fn(p) * b, batch=2.0))
  hv2 = jax.tree.map(lambda t: t / 2.0, hvp_fn(params, v))
  for k in params:
    np.testing.assert_allclose(hv2[k], hv[k], rtol=1e-12, atol=1e-14)


def test_dense_hessian_of_flax_mlp_matches_finite_differences():
  _, params, loss_fn, batch = _mlp_problem()
  h = dg.dense_hessian(loss_fn, params, batch)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  grad = jax.jit(lambda x: jax.flatten_util.ravel_pytree(
      jax.grad(loss_fn)(unravel(x), batch))[0])
  eps = 1e-5
  eye = np.eye(flat.size)
  cols = [(np.asarray(grad(flat + eps * e)) - np.asarray(grad(flat - eps * e))) / (2 * eps)
          for e in eye[::7]]
  np.testing.assert_allclose(np.stack(cols, 1), h[:, ::7], atol=1e-7)


def test_params_with_none_and_scalar_leaves():
  params = {"a": jnp.array([1.0, -2.0]), "skip": None, "s": jnp.array(0.5)}

  def f(p):
    return jnp.sum(p["a"] ** 2) * p["s"] + p["s"] ** 3

  h = dg.dense_hessian(f, params)
  # order: a0, a1, s
  a, s = np.array([1.0, -2.0]), 0.5
  h_true = np.array([[2 * s, 0, 2 * a[0]], [0, 2 * s, 2 * a[1]],
                     [2 * a[0], 2 * a[1], 6 * s]])
  np.testing.assert_allclose(h, h_true, atol=1e-12)
  r = dg.hessian_eigenvalues(f, params, k=1, which="bottom", return_eigenvectors=True)
  np.testing.assert_allclose(r.eigenvalues, np.linalg.eigvalsh(h_true)[:1], rtol=1e-10)
  assert r.eigenvectors[0]["skip"] is None


def test_unhashable_callable_loss():
  class Loss:  # defines __eq__, so it is unhashable (like many modules)
    def __init__(self, a):
      self.a = jnp.asarray(a)

    def __eq__(self, other):
      return self is other

    def __call__(self, x):
      return 0.5 * jnp.sum(self.a * x**2)

  f = Loss([1.0, -2.0, 3.0])
  cp = dg.classify_critical_point(f, jnp.zeros(3), method="lanczos", num_iters=3)
  assert cp.label == "saddle point"
  np.testing.assert_allclose(dg.hessian_eigenvalues(f, jnp.zeros(3), k=1).eigenvalues, [3.0])
  assert dg.sharpness(f, jnp.zeros(3), num_iters=3).top_eigenvalue == pytest.approx(3.0)


# ---------------------------------------------------------------------------
# Lanczos vs numpy.linalg.eigvalsh
# ---------------------------------------------------------------------------


def test_lanczos_matches_eigvalsh_on_flax_mlp():
  _, params, loss_fn, batch = _mlp_problem()
  n = jax.flatten_util.ravel_pytree(params)[0].size
  assert n == 5 * 8 + 8 + 8 * 3 + 3
  ref = np.linalg.eigvalsh(dg.dense_hessian(loss_fn, params, batch))
  assert ref[0] < 0 < ref[-1]  # an indefinite Hessian: bottom is negative
  k = 3
  top = dg.hessian_eigenvalues(loss_fn, params, batch, k=k, which="top", num_iters=50)
  bot = dg.hessian_eigenvalues(loss_fn, params, batch, k=k, which="bottom", num_iters=50)
  assert top.num_iters == 50 < n  # genuinely matrix-free: fewer steps than n
  np.testing.assert_allclose(top.eigenvalues, ref[::-1][:k], rtol=1e-4)
  np.testing.assert_allclose(bot.eigenvalues, ref[:k], rtol=1e-4)
  # The residual bounds are honest: every Ritz value is within its bound.
  for val, res in zip(top.eigenvalues, top.residuals):
    assert np.min(np.abs(ref - val)) <= res + 1e-10


def test_lanczos_returns_eigenvectors():
  _, params, loss_fn, batch = _mlp_problem()
  r = dg.hessian_eigenvalues(loss_fn, params, batch, k=1, num_iters=50,
                             return_eigenvectors=True)
  v = r.eigenvectors[0]
  hv = dg.hvp(loss_fn, params, v, batch)
  hv_f = jax.flatten_util.ravel_pytree(hv)[0]
  v_f = jax.flatten_util.ravel_pytree(v)[0]
  np.testing.assert_allclose(float(jnp.linalg.norm(v_f)), 1.0, rtol=1e-12)
  np.testing.assert_allclose(hv_f, r.eigenvalues[0] * v_f, atol=1e-6 * abs(r.eigenvalues[0]))


def test_raw_lanczos_recovers_multiplicities_after_breakdown():
  eigs = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 3.0])
  q = _rotation(6, 4)
  a = jnp.asarray((q * eigs) @ q.T)
  res = jax.jit(lambda v0, key: dg.lanczos(lambda v: a @ v, v0, 6, key))(
      jnp.ones(6), jax.random.key(1))
  t = np.diag(res.alphas) + np.diag(res.betas[:5], 1) + np.diag(res.betas[:5], -1)
  np.testing.assert_allclose(np.linalg.eigvalsh(t), eigs, atol=1e-10)
  np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(6), atol=1e-10)
  assert np.sum(np.asarray(res.betas[:5]) == 0) >= 1  # it did restart


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_quadratic_with_given_spectrum(which):
  eigs = np.linspace(-3.0, 10.0, 30)
  f, _ = _quadratic(eigs, seed=2)
  r = dg.hessian_eigenvalues(f, jnp.ones(30), k=4, which=which, num_iters=30)
  want = np.sort(eigs)[::-1][:4] if which == "top" else np.sort(eigs)[:4]
  np.testing.assert_allclose(r.eigenvalues, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# Critical points
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_saddle_x2_minus_y2(method):
  f = lambda p: p["x"] ** 2 - p["y"] ** 2
  cp = dg.classify_critical_point(f, {"x": 0.0, "y": 0.0}, method=method)
  assert cp.label == "saddle point"
  np.testing.assert_allclose([cp.min_eigenvalue, cp.max_eigenvalue], [-2.0, 2.0],
                             rtol=1e-12)
  u = cp.escape_direction
  np.testing.assert_allclose([abs(float(u["x"])), abs(float(u["y"]))], [0.0, 1.0],
                             atol=1e-10)
  # Off the critical point: not critical.
  cp2 = dg.classify_critical_point(f, {"x": 0.5, "y": 0.0}, method=method)
  assert cp2.label == "not a critical point"
  np.testing.assert_allclose(cp2.grad_norm, 1.0)
  assert cp2.escape_direction is None


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_quadratic_classification_and_minimum_ratio(method):
  n = 12
  pos = np.geomspace(0.5, 20.0, n)
  mixed = np.concatenate([-np.array([0.3, 1.0, 4.0]), np.geomspace(0.5, 20.0, n - 3)])
  for eigs, label, ratio in [(pos, "local minimum", 1.0),
                             (-pos, "local maximum", 0.0),
                             (mixed, "saddle point", (n - 3) / n)]:
    f, _ = _quadratic(eigs, seed=5)
    cp = dg.classify_critical_point(f, jnp.zeros(n), method=method, num_iters=n)
    assert cp.label == label
    np.testing.assert_allclose([cp.min_eigenvalue, cp.max_eigenvalue],
                               [eigs.min(), eigs.max()], rtol=1e-9)
    if method == "dense":
      np.testing.assert_allclose(cp.eigenvalues, np.sort(eigs), rtol=1e-10)
      assert cp.minimum_ratio == ratio
    assert dg.minimum_ratio(f, jnp.zeros(n), method="dense") == ratio
    if label == "saddle point":
      u = np.asarray(cp.escape_direction)
      q = _rotation(n, 5)
      u_true = q[:, np.argmin(eigs)]
      np.testing.assert_allclose(abs(u @ u_true), 1.0, atol=1e-8)
      # Moving along it lowers the loss by ~ 1/2 lambda_min eps^2.
      eps = 1e-3
      np.testing.assert_allclose(float(f(eps * jnp.asarray(u))), 0.5 * eigs.min() * eps**2,
                                 rtol=1e-8)
    elif label == "local minimum":
      assert cp.escape_direction is None
    else:  # a local maximum: any direction escapes; the steepest one is given
      np.testing.assert_allclose(float(f(jnp.asarray(cp.escape_direction))),
                                 0.5 * eigs.min(), rtol=1e-9)


def test_minimum_ratio_slq_estimate():
  # SLQ estimate vs the exact count on a 200-dim diagonal quadratic.
  eigs = np.concatenate([-np.geomspace(0.1, 2.0, 50), np.geomspace(0.1, 5.0, 150)])
  f = lambda x: 0.5 * jnp.sum(jnp.asarray(eigs) * x**2)
  est = dg.minimum_ratio(f, jnp.zeros(200), method="lanczos", num_iters=40,
                         num_probes=16)
  assert abs(est - 0.75) < 0.05


def test_two_layer_linear_network():
  # Lecture example: y_hat = w2 * w1 * x with x = 1, y = 1, L = (y - w1 w2 x)^2.
  def loss(p, batch):
    x, y = batch
    return jnp.mean((y - p["w2"] * p["w1"] * x) ** 2)

  batch = (jnp.array([1.0]), jnp.array([1.0]))
  origin = {"w1": jnp.array(0.0), "w2": jnp.array(0.0)}
  cp = dg.classify_critical_point(loss, origin, batch)
  assert cp.label == "saddle point"
  np.testing.assert_allclose(cp.eigenvalues, [-2.0, 2.0], rtol=1e-12)
  u = cp.escape_direction
  np.testing.assert_allclose(abs(float(u["w1"])), 1 / math.sqrt(2), rtol=1e-12)
  np.testing.assert_allclose(float(u["w1"]), float(u["w2"]), rtol=1e-12)  # (1,1)/sqrt2
  step = jax.tree.map(lambda p, d: p + 0.5 * d, origin, u)
  assert float(loss(step, batch)) < float(loss(origin, batch))
  # On the valley of minima w1 w2 = 1 the Hessian [[2,2],[2,2]] has a zero
  # eigenvalue: second-order test inconclusive.
  cp2 = dg.classify_critical_point(loss, {"w1": jnp.array(1.0), "w2": jnp.array(1.0)},
                                   batch)
  assert cp2.label == "degenerate"
  np.testing.assert_allclose(cp2.eigenvalues, [0.0, 4.0], atol=1e-12)


def test_two_layer_linear_network_matrices_at_origin():
  # y = W2 W1 x, W1: (h, d), W2: (1, h), L = mean (y - W2 W1 x)^2 at the origin:
  # the Hessian is [[0, B], [B^T, 0]] with B_{(i,j),(1,i')} = -2 d_{ii'} E[x_j y],
  # so the eigenvalues are +-2 ||E[x y]|| (multiplicity h each) and zeros.
  rng = np.random.default_rng(0)
  d, h, m = 3, 2, 20
  x = rng.normal(size=(m, d))
  y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=m)

  def loss(p, batch):
    xb, yb = batch
    return jnp.mean((yb - (xb @ p["W1"].T) @ p["W2"][0]) ** 2)

  origin = {"W1": jnp.zeros((h, d)), "W2": jnp.zeros((1, h))}
  cp = dg.classify_critical_point(loss, origin, (jnp.asarray(x), jnp.asarray(y)))
  assert cp.label == "saddle point"
  c = 2 * np.linalg.norm((x * y[:, None]).mean(0))
  want = np.sort(np.concatenate([[-c] * h, [c] * h, np.zeros(h * d + h - 2 * h)]))
  np.testing.assert_allclose(cp.eigenvalues, want, atol=1e-12)


# ---------------------------------------------------------------------------
# Spectral density, sharpness, flatness
# ---------------------------------------------------------------------------


def test_slq_quadrature_is_exact_for_diagonal_hessian():
  # With Rademacher probes and a diagonal H, v^T H^p v = tr(H^p)/n exactly.
  eigs = np.repeat([-1.0, 0.5, 2.0, 7.0], 10)
  f = lambda x: 0.5 * jnp.sum(jnp.asarray(eigs) * x**2)
  d = dg.hessian_spectral_density(f, jnp.zeros(40), num_iters=8, num_probes=3,
                                  num_points=4000)
  for p in range(4):
    moments = np.sum(d.weights * d.nodes**p, axis=1)
    np.testing.assert_allclose(moments, np.mean(eigs**p), rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(d.trace(), eigs.sum(), rtol=1e-9)
  np.testing.assert_allclose(np.trapezoid(d.density, d.grid), 1.0, atol=1e-3)
  # Four distinct eigenvalues: the weighted nodes are exactly those.
  heavy = d.nodes[d.weights > 1e-8]
  assert np.all(np.min(np.abs(heavy[:, None] - np.unique(eigs)[None]), axis=1) < 1e-8)
  np.testing.assert_allclose(d.fraction_above(0.0), 0.75, atol=1e-9)
  assert d.plot() is not None


def test_sharpness_on_quadratic_minimum():
  eigs = np.array([0.1, 0.5, 1.0, 3.0, 8.0])
  f, _ = _quadratic(eigs, seed=7)
  rho = 0.1
  s = dg.sharpness(f, jnp.zeros(5), rho=rho, num_random=2000, num_iters=5)
  np.testing.assert_allclose(s.top_eigenvalue, 8.0, rtol=1e-10)
  np.testing.assert_allclose(s.worst_case_increase, 0.5 * rho**2 * 8.0, rtol=1e-8)
  # Uniform direction on the sphere: E[u^T A u] = tr(A)/n.
  want = 0.5 * rho**2 * eigs.mean()
  assert abs(s.random_increase - want) < 4 * s.random_increase_std / math.sqrt(2000)
  assert s.worst_case_increase > s.random_increase
  d = jax.flatten_util.ravel_pytree(s.worst_case_perturbation)[0]
  np.testing.assert_allclose(float(jnp.linalg.norm(d)), rho, rtol=1e-10)


def test_sharpness_box_and_ascent():
  # Diagonal PSD quadratic away from 0: max over the box |d_i| <= rho(1+|x_i|)
  # is at the corner sign(d_i) = sign(x_i) (closed form).
  lam = np.array([1.0, 2.0, 0.5, 4.0])
  x0 = np.array([0.3, -1.0, 2.0, 0.0])
  f = lambda x: 0.5 * jnp.sum(jnp.asarray(lam) * x**2)
  rho = 0.05
  s = dg.sharpness(f, jnp.asarray(x0), rho=rho, perturbation="box", num_ascent_steps=5)
  r = rho * (1 + np.abs(x0))
  corner = x0 + r * np.where(x0 >= 0, 1.0, -1.0)
  want = 0.5 * np.sum(lam * corner**2) - 0.5 * np.sum(lam * x0**2)
  np.testing.assert_allclose(s.worst_case_increase, want, rtol=1e-10)
  s0 = dg.sharpness(f, jnp.asarray(x0), rho=rho, perturbation="box",
                    num_ascent_steps=5, compute_eigenvalue=False)
  assert s0.top_eigenvalue is None
  np.testing.assert_allclose(s0.worst_case_increase, want, rtol=1e-10)
  # l2 ball away from a minimum: ascent beats the first SAM step.
  g = lam * x0
  sam = x0 + 0.5 * g / np.linalg.norm(g)
  s2 = dg.sharpness(f, jnp.asarray(x0), rho=0.5, num_ascent_steps=30)
  assert s2.worst_case_increase >= 0.5 * np.sum(lam * sam**2) - 0.5 * np.sum(lam * x0**2)


def test_local_entropy_flatness_closed_form():
  # For 1/2 sum lam_i x_i^2 at 0: E exp(-beta D) = prod (1 + beta s^2 lam_i)^(-1/2).
  lam = np.array([0.5, 1.0, 2.0, 4.0])
  f = lambda x: 0.5 * jnp.sum(jnp.asarray(lam) * x**2)
  sigma, beta = 0.3, 2.0
  r = dg.local_entropy_flatness(f, jnp.zeros(4), sigma=sigma, beta=beta,
                                num_samples=20000, key=jax.random.key(3))
  gap = np.sum(np.log1p(beta * sigma**2 * lam)) / (2 * beta)
  energy = 0.5 * sigma**2 * lam.sum()
  np.testing.assert_allclose(r.local_entropy_gap, gap, rtol=0.02)
  np.testing.assert_allclose(r.local_energy, energy, rtol=0.03)
  assert r.local_entropy_gap < r.local_energy
  # Sharper quadratic -> larger gap, for the same samples.
  r2 = dg.local_entropy_flatness(lambda x: 10 * f(x), jnp.zeros(4), sigma=sigma,
                                 beta=beta, num_samples=20000, key=jax.random.key(3))
  assert r2.local_entropy_gap > r.local_entropy_gap
  # Multiplicative noise: at params = 0 nothing moves.
  r3 = dg.local_entropy_flatness(f, jnp.zeros(4), relative=True, num_samples=4)
  assert r3.local_energy == 0.0


# ---------------------------------------------------------------------------
# The norm monitor
# ---------------------------------------------------------------------------


def _grads_seq(params, steps, seed=0):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=np.shape(p)), p.dtype),
                       params) for _ in range(steps)]


def test_monitor_leaves_updates_bit_identical_and_compiles_once():
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "s": jnp.array(0.3, jnp.float64)}
  plain = optax.adam(1e-2)
  watched = optax.chain(dg.monitor_norms(history=4), optax.adam(1e-2),
                        dg.monitor_norms(history=4))

  def step(tx):
    def f(p, s, g, value):
      u, s = tx.update(g, s, p, value=value)
      return optax.apply_updates(p, u), s, u
    return f

  counter = TraceCounter(step(watched))
  jstep_w, jstep_p = jax.jit(counter), jax.jit(step(plain))
  pw, sw = params, watched.init(params)
  pp, sp = params, plain.init(params)
  grads = _grads_seq(params, 6)
  for t, g in enumerate(grads):
    pw, sw, uw = jstep_w(pw, sw, g, jnp.asarray(float(t)))
    pp, sp, up = jstep_p(pp, sp, g, 0.0)
    for k in params:
      np.testing.assert_array_equal(np.asarray(uw[k]), np.asarray(up[k]))
      np.testing.assert_array_equal(np.asarray(pw[k]), np.asarray(pp[k]))
    np.testing.assert_allclose(float(sw[0].norm), float(optax.global_norm(g)), rtol=1e-13)
    np.testing.assert_allclose(float(sw[2].norm), float(optax.global_norm(up)), rtol=1e-13)
    np.testing.assert_allclose(float(sw[0].leaf_norms["w"]),
                               float(jnp.linalg.norm(g["w"])), rtol=1e-13)
  assert counter.count == 1
  h = dg.norm_history(sw)  # first monitor: gradient norms, last 4 of 6 steps
  np.testing.assert_array_equal(h.steps, [3, 4, 5, 6])
  np.testing.assert_allclose(h.norms, [float(optax.global_norm(g)) for g in grads[2:]],
                             rtol=1e-13)
  np.testing.assert_array_equal(h.values, [2.0, 3.0, 4.0, 5.0])
  assert len(dg.find_monitor_states(sw)) == 2
  assert int(sw[0].count) == 6


def test_monitor_shows_stuck_loss_with_large_gradient():
  # GD on 1/2 lam x^2 with lr = 2/lam bounces x -> -x: the loss never moves,
  # yet the gradient norm stays lam |x0| ("training stuck != small gradient"),
  # while a well-tuned lr drives both to 0.
  lam, x0 = 4.0, jnp.array([1.0, -0.5], jnp.float64)
  loss = lambda x: 0.5 * lam * jnp.sum(x**2)

  def run(lr, steps=12):
    tx = optax.chain(dg.monitor_norms(history=steps), optax.sgd(lr))

    @jax.jit
    def step(x, s):
      v, g = jax.value_and_grad(loss)(x)
      u, s = tx.update(g, s, x, value=v)
      return optax.apply_updates(x, u), s

    x, s = x0, tx.init(x0)
    for _ in range(steps):
      x, s = step(x, s)
    return dg.norm_history(s)

  stuck = run(2.0 / lam)
  np.testing.assert_allclose(stuck.values, float(loss(x0)), rtol=1e-12)
  np.testing.assert_allclose(stuck.norms, lam * float(jnp.linalg.norm(x0)), rtol=1e-12)
  good = run(1.0 / lam)
  assert good.norms[-1] < 1e-12 and good.values[-1] < 1e-12
  np.testing.assert_array_equal(good.steps, np.arange(1, 13))


def test_monitor_pytrees_dtypes_and_extra_args():
  params = {"a": jnp.ones(3, jnp.bfloat16), "none": None, "c": jnp.ones((), jnp.float32)}
  tx = dg.monitor_norms()
  st = tx.init(params)
  assert st.norm.dtype == jnp.float32 and st.norms.shape == (0,)
  g = {"a": jnp.full(3, 2.0, jnp.bfloat16), "none": None, "c": jnp.array(1.0, jnp.float32)}
  f = jax.jit(lambda g, s, p: tx.update(g, s, p, unknown_arg=1, key=jax.random.key(0)))
  u, st2 = f(g, st, params)
  assert u["a"].dtype == jnp.bfloat16 and u["none"] is None
  np.testing.assert_array_equal(np.asarray(u["a"]), np.asarray(g["a"]))
  np.testing.assert_allclose(float(st2.norm), math.sqrt(13.0), rtol=1e-6)
  np.testing.assert_allclose(float(st2.params_norm), 2.0, rtol=1e-6)
  assert math.isnan(float(st2.value))
  chex_shapes = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), st, st2)
  assert all(jax.tree.leaves(chex_shapes))
  u, st3 = tx.update(g, st2)  # no params
  assert math.isnan(float(st3.params_norm))
  with pytest.raises(ValueError, match="no history"):
    dg.norm_history(st3)


def test_monitor_preserves_sharding():
  devs = np.array(jax.devices()[:8])
  mesh = jax.sharding.Mesh(devs, ("d",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  params = {"w": jax.device_put(jnp.ones((8, 4)), shard), "b": jnp.zeros(3)}
  grads = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4), shard),
           "b": jnp.ones(3)}
  tx = optax.chain(dg.monitor_norms(history=2), optax.sgd(0.1))
  u, st = jax.jit(tx.update)(grads, tx.init(params), params)
  assert u["w"].sharding.is_equivalent_to(grads["w"].sharding, 2)
  np.testing.assert_allclose(float(st[0].norm), float(optax.global_norm(grads)))


def test_lanczos_compiles_once_per_loss():
  _, params, loss_fn, batch = _mlp_problem()
  counter = TraceCounter(loss_fn)
  dg.hessian_eigenvalues(counter, params, batch, k=2, num_iters=12)
  first = counter.count
  params2 = jax.tree.map(lambda p: p * 1.01, params)
  r = dg.hessian_eigenvalues(counter, params2, batch, k=2, num_iters=12)
  assert counter.count - first == 1  # only the input check (eval_shape) traces
  assert first >= 2 and np.all(np.isfinite(r.eigenvalues))


def test_monitor_registered_and_validates():
  info = registry.registry()["monitor_norms"]
  assert info.family == "tool" and info.kind == "transformation"
  tx = registry_cases.build(info)
  params = {"w": jnp.ones(2)}
  tx.update(params, tx.init(params), params)
  for override, exc in registry_cases.invalid(info.name):
    with pytest.raises(exc, match="history"):
      registry_cases.build(info, **override)
  inj = optax.inject_hyperparams(dg.monitor_norms, static_args=("history",))(history=3)
  inj.update(params, inj.init(params), params)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
  model, params, loss_fn, (x, y) = _mlp_problem()
  with pytest.raises(ValueError, match="scalar loss.*shape \\(40,\\)"):
    dg.hessian_eigenvalues(
        lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, b[0]), b[1]), params, (x, y))
  with pytest.raises(ValueError, match="(?s)could not be evaluated.*batch shapes"):
    dg.classify_critical_point(loss_fn, params, (x[:, :3], y))  # wrong feature count
  with pytest.raises(ValueError, match="disagree on the batch"):
    dg.sharpness(loss_fn, params, (x, y[:30]))
  with pytest.raises(ValueError, match="`k`=100 is larger than the number of parameters"):
    dg.hessian_eigenvalues(loss_fn, params, (x, y), k=100)
  with pytest.raises(ValueError, match="\\(loss, aux\\)"):
    dg.hessian_eigenvalues(lambda p, b: (loss_fn(p, b), 0.0), params, (x, y))
  with pytest.raises(TypeError, match="must be callable|must be a callable"):
    dg.hessian_eigenvalues("loss", params, (x, y))
  with pytest.raises(TypeError, match="floating-point"):
    dg.dense_hessian(lambda p: jnp.sum(p["i"]) * 1.0, {"i": jnp.arange(3)})
  with pytest.raises(ValueError, match="`which`"):
    dg.hessian_eigenvalues(loss_fn, params, (x, y), which="largest")
  with pytest.raises(ValueError, match="num_iters"):
    dg.hessian_eigenvalues(loss_fn, params, (x, y), k=2, num_iters=1000)
  with pytest.raises(ValueError, match="max_params"):
    dg.dense_hessian(loss_fn, params, (x, y), max_params=10)
  with pytest.raises(ValueError, match="`rho`"):
    dg.sharpness(loss_fn, params, (x, y), rho=-1.0)
  with pytest.raises(ValueError, match="`method`"):
    dg.minimum_ratio(loss_fn, params, (x, y), method="exact")
  with pytest.raises(ValueError, match="batch size 1000 is larger"):
    dg.batch_size_experiment(model, params, (np.asarray(x), np.asarray(y)),
                             batch_sizes=(1000,))


# ---------------------------------------------------------------------------
# Float32 models and the batch-size experiment
# ---------------------------------------------------------------------------


def test_float32_mlp_top_eigenvalues():
  _, params64, loss_fn, (x, y) = _mlp_problem()
  params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params64)
  batch32 = (x.astype(jnp.float32), y)
  ref = np.linalg.eigvalsh(dg.dense_hessian(loss_fn, params64, (x, y)))[::-1][:2]
  r = dg.hessian_eigenvalues(loss_fn, params32, batch32, k=2, num_iters=40)
  np.testing.assert_allclose(r.eigenvalues, ref, rtol=1e-3)


def test_batch_size_experiment_small():
  from optzoo.apps.data import load_digits
  ds = load_digits().subset(256, 128)
  x_tr = ds.x_train.reshape(len(ds.x_train), -1)
  x_te = ds.x_test.reshape(len(ds.x_test), -1)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(jnp.tanh(nn.Dense(16)(x)))

  model = Net()
  params = model.init(jax.random.key(0), x_tr[:1])
  rep = dg.batch_size_experiment(
      model, params, (x_tr, ds.y_train), (x_te, ds.y_test), batch_sizes=(8, 64),
      base_learning_rate=0.05, rule="linear", num_epochs=3, sharpness_examples=128,
      keep_params=True)
  assert [r.batch_size for r in rep.runs] == [8, 64]
  np.testing.assert_allclose([r.learning_rate for r in rep.runs], [0.05, 0.4])
  assert [r.num_steps for r in rep.runs] == [96, 12]
  lf = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, b[0]), b[1]).mean()
  sub = (jnp.asarray(x_tr[:128]), jnp.asarray(ds.y_train[:128]))
  for r in rep.runs:
    assert r.train_accuracy > 0.3 and 0.0 <= r.val_accuracy <= 1.0
    # The reported sharpness is the top eigenvalue of the train-subset loss.
    ref = dg.hessian_eigenvalues(lf, r.params, sub, k=1, num_iters=40).eigenvalues[0]
    np.testing.assert_allclose(r.top_eigenvalue, ref, rtol=1e-3)
  assert "lambda_max" in rep.table()
  assert len(rep.plot()) == 2
  np.testing.assert_allclose(dg.scaled_learning_rate(0.1, 16, 64, "sqrt"), 0.2)
