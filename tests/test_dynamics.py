"""Gradient noise, parameter EMA, generic Adam and the LR range test,
plus jit / dtype / pytree / sharding properties of each of these transformations.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optzoo
from helpers import TraceCounter, fixture_path, pytree_problem
import registry_cases


# ---------------------------------------------------------------------------
# Gradient noise
# ---------------------------------------------------------------------------


def test_gradient_noise_variance_schedule():
  eta, gamma, n = 0.3, 0.55, 40_000
  tx = optzoo.add_gradient_noise(eta, gamma, seed=3)
  zeros = {"a": jnp.zeros((n // 2,)), "b": jnp.zeros((n // 4, 2))}
  state = tx.init(zeros)
  step = jax.jit(tx.update)
  prev = None
  for t in range(6):
    u, state = step(zeros, state)
    x = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(u)])
    want = eta / (1.0 + t) ** gamma
    # var estimate of N(0, want) from n samples: rel. std sqrt(2/n) ~ 0.7 %.
    assert np.var(x) == pytest.approx(want, rel=0.04)
    assert abs(np.mean(x)) < 5 * np.sqrt(want / n)
    if prev is not None:
      assert not np.allclose(x, prev)  # fresh noise every step
    prev = x
  assert int(state.count) == 6


def test_gradient_noise_keys_and_reproducibility():
  g = {"w": jnp.ones(5), "none": None}
  tx = optzoo.add_gradient_noise(1.0, seed=0)
  s = tx.init(g)
  a, s1 = tx.update(g, s)
  b, _ = tx.update(g, s)
  np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
  c, _ = optzoo.add_gradient_noise(1.0, seed=1).update(g, s._replace(
      key=jax.random.PRNGKey(1)))
  assert not np.allclose(np.asarray(a["w"]), np.asarray(c["w"]))
  # An explicit `key` extra arg overrides the state key (state key unchanged).
  d, s2 = tx.update(g, s, key=jax.random.PRNGKey(42), unknown_extra=1)
  e, _ = tx.update(g, s._replace(key=jax.random.PRNGKey(7)),
                   key=jax.random.PRNGKey(42))
  np.testing.assert_array_equal(np.asarray(d["w"]), np.asarray(e["w"]))
  np.testing.assert_array_equal(np.asarray(s2.key), np.asarray(s.key))
  assert a["none"] is None
  # eta = 0 is the identity.
  z, _ = optzoo.add_gradient_noise(0.0).update(g, s)
  np.testing.assert_array_equal(np.asarray(z["w"]), 1.0)


def test_gradient_noise_wrapper_chains_inner():
  params = jnp.zeros(4)
  tx = optzoo.gradient_noise(optzoo.sgd(1.0), eta=0.0)
  u, _ = tx.update(jnp.ones(4), tx.init(params), params)
  np.testing.assert_allclose(np.asarray(u), -1.0)
  tx = optzoo.gradient_noise(optzoo.sgd(1.0), eta=1.0)
  u, _ = tx.update(jnp.ones(4), tx.init(params), params)
  assert np.std(np.asarray(u)) > 0


# ---------------------------------------------------------------------------
# Parameter EMA
# ---------------------------------------------------------------------------

EMA_FIX = np.load(fixture_path("dynamics_ema.npz"))


@pytest.mark.parametrize("name,kwargs", [("ema09", dict(decay=0.9)),
                                         ("swa", dict(mode="uniform"))])
def test_param_ema_matches_torch_averaged_model(name, kwargs):
  seq = EMA_FIX["seq"]
  tx = optzoo.param_ema(**kwargs)
  p = jnp.full(5, 7.0)
  state = tx.init(p)
  step = jax.jit(tx.update)
  got = []
  for t in range(len(seq)):
    u = jnp.asarray(seq[t]) - p  # the optimizer moves params to seq[t]
    u2, state = step(u, state, p)
    np.testing.assert_array_equal(np.asarray(u2), np.asarray(u))
    p = optax.apply_updates(p, u)
    got.append(np.asarray(optzoo.ema_params(state)))
  np.testing.assert_allclose(np.array(got), EMA_FIX[name], rtol=1e-12,
                             atol=1e-12)


def test_param_ema_byol_schedule_and_readout_through_chain():
  total, tau_base = 50, 0.9
  tau = optzoo.byol_tau_schedule(total, tau_base)
  tx = optax.chain(optzoo.sgd(0.1), optzoo.param_ema(tau, copy_first=False))
  params, grad_fn, _ = pytree_problem()
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  target = jax.tree.map(np.asarray, params)  # BYOL: xi_0 = theta_0
  step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p))
  for k in range(60):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
    tk = 1 - (1 - tau_base) * (np.cos(np.pi * min(k, total) / total) + 1) / 2
    target = jax.tree.map(lambda x, th: x + (1 - tk) * (np.asarray(th) - x),
                          target, params)
  got = optzoo.ema_params(state)
  for key in target:
    np.testing.assert_allclose(np.asarray(got[key]), target[key], rtol=1e-12)
  # Readout also works inside inject_hyperparams and raises when absent.
  tx2 = optax.inject_hyperparams(optzoo.param_ema)(decay=0.5)
  s2 = tx2.init(params)
  assert optzoo.ema_params(s2) is not None
  with pytest.raises(ValueError, match="param_ema"):
    optzoo.ema_params(optzoo.sgd(0.1).init(params))


def test_param_ema_needs_params_and_bad_inputs():
  tx = optzoo.param_ema(0.9)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="decay"):
    optzoo.param_ema(1.5)
  with pytest.raises(ValueError, match="mode"):
    optzoo.param_ema(0.9, mode="median")


# ---------------------------------------------------------------------------
# Generic Adam
# ---------------------------------------------------------------------------


def np_generic_adam(grads, alpha, b1, theta, s, r, eps):
  m = v = 0.0
  x, xs = 0.0, []
  for t, g in enumerate(grads, start=1):
    a_t = alpha / t**s
    th = 1 - theta / t**r
    m = b1 * m + (1 - b1) * g
    v = th * v + (1 - th) * g * g
    x = x - a_t * m / np.sqrt(v + eps)
    xs.append(x)
  return np.array(xs)


def test_generic_adam_matches_numpy():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=300)
  tx = optzoo.generic_adam(0.1, 0.9, 0.01, eps=1e-8, s=0.5, r=1.0)
  state = tx.init(jnp.zeros(()))
  x, xs = jnp.zeros(()), []
  step = jax.jit(tx.update)
  for g in grads:
    u, state = step(jnp.asarray(g), state)
    x = x + u
    xs.append(float(x))
  np.testing.assert_allclose(xs, np_generic_adam(grads, 0.1, 0.9, 0.01, 0.5,
                                                 1.0, 1e-8), rtol=1e-10)


def _online_run(tx, grad_of_t, steps):
  """Projected online optimisation on [-1, 1] (Reddi et al.)."""

  def body(carry, t):
    x, s = carry
    u, s = tx.update(grad_of_t(t + 1), s, x)
    return (jnp.clip(x + u, -1.0, 1.0), s), None

  x0 = jnp.zeros(())
  (x, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(steps)))(
      (x0, tx.init(x0)))
  return float(x)


def test_reddi_counterexample_synthetic():
  # f_t(x) = 1010 x if t mod 101 == 1 else -10 x, beta1 = 0.9, alpha/sqrt(t).
  grad = lambda t: jnp.where(t % 101 == 1, 1010.0, -10.0)
  adam = optzoo.generic_adam(0.1, 0.9, theta=0.01, r=0.0)  # beta2 = 0.99
  good = optzoo.generic_adam(0.1, 0.9, theta=0.001, r=1.0)
  assert _online_run(adam, grad, 200_000) > 0.99  # wrong way: the worst point
  assert _online_run(good, grad, 200_000) < -0.99  # the optimum
  assert not optzoo.generic_adam_condition(0.1, 0.9, 0.01, r=0.0).holds
  rep = optzoo.generic_adam_condition(0.1, 0.9, 0.001, r=1.0)
  assert rep.holds and rep.rate == "O(log T / T^0.5)"


def test_reddi_counterexample_deterministic_amsgrad():
  # f_t(x) = 3x if t mod 3 == 1 else -x, beta1 = 0, beta2 = 1/(1+C^2) = 0.1.
  grad = lambda t: jnp.where(t % 3 == 1, 3.0, -1.0)
  lr = lambda i: 0.1 / jnp.sqrt(i + 1.0)
  steps = 60_000
  assert _online_run(optzoo.adam(lr, b1=0.0, b2=0.1), grad, steps) > 0.99
  assert _online_run(optzoo.generic_adam(0.1, 0.0, theta=0.9, r=0.0), grad,
                     steps) > 0.99
  assert _online_run(optzoo.amsgrad(lr, b1=0.0, b2=0.1), grad, steps) < -0.99
  assert _online_run(optzoo.generic_adam(0.1, 0.0, theta=0.9, r=1.0), grad,
                     steps) < -0.99
  assert optzoo.generic_adam_condition(0.1, 0.0, 0.9, r=1.0,
                                       num_steps=steps).holds


def test_generic_adam_condition_clauses():
  rep = optzoo.generic_adam_condition(0.1, 0.9, 0.01, r=0.0, num_steps=10_000)
  assert rep.momentum_bounded and rep.theta_valid and rep.gamma_below_one
  assert rep.chi_almost_nonincreasing and not rep.ratio_vanishes
  assert "FAIL" in str(rep)
  # theta_t = 1 - 1/t starts at 0: clause (b) fails.
  assert not optzoo.generic_adam_condition(0.1, 0.9, 1.0, r=1.0).theta_valid
  # beta1^2 / theta_1 >= 1 fails the gamma clause.
  assert not optzoo.generic_adam_condition(0.1, 0.95, 0.2,
                                           r=1.0).gamma_below_one
  # Growing step sizes fail (c).
  grow = optzoo.generic_adam_condition(lambda i: 0.1 * (i + 1.0), 0.9, 0.001,
                                       s=0.5, r=1.0, num_steps=1000)
  assert not grow.chi_almost_nonincreasing and grow.rate is None
  # A decaying beta1 schedule within bounds passes (a).
  dec = optzoo.generic_adam_condition(0.1, lambda i: 0.9 / (i + 1.0), 0.001)
  assert dec.momentum_bounded and dec.holds
  with pytest.raises(ValueError, match="num_steps"):
    optzoo.generic_adam_condition(num_steps=3)


@pytest.mark.parametrize("kw,name", [(dict(b1=1.0), "b1"),
                                     (dict(theta=0.0), "theta"),
                                     (dict(s=-1.0), "s"),
                                     (dict(learning_rate=-1.0),
                                      "learning_rate")])
def test_generic_adam_bad_input(kw, name):
  with pytest.raises(ValueError, match=name):
    optzoo.generic_adam(**kw)


# ---------------------------------------------------------------------------
# LR range test on a Flax MLP with sklearn digits
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_setup():
  import flax.linen as nn
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  y = y.astype(np.int32)

  class MLP(nn.Module):

    @nn.compact
    def __call__(self, h):
      h = nn.relu(nn.Dense(64)(h))
      return nn.Dense(10)(h)

  model = MLP()
  params = model.init(jax.random.PRNGKey(0), x[:1])

  def loss_fn(p, batch):
    xb, yb = batch
    logits = model.apply(p, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def batches(seed, n, bs=64):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
      perm = rng.permutation(len(x))
      for i in range(0, len(x) - bs + 1, bs):
        idx = perm[i:i + bs]
        out.append((x[idx], y[idx]))
    return out[:n]

  return x, y, params, loss_fn, batches


def _trainer(opt, steps=200):
  """A jitted short training run from the fixed init; lr is a run-time input
  (one compile for all learning rates)."""
  x, y, params, loss_fn, batches = _digits_setup()
  bs = batches(1, steps)
  xb = jnp.asarray(np.stack([b[0] for b in bs]))
  yb = jnp.asarray(np.stack([b[1] for b in bs]))

  @jax.jit
  def run(lr):
    tx = optax.inject_hyperparams(opt)(learning_rate=lr)

    def body(carry, batch):
      p, s = carry
      g = jax.grad(loss_fn)(p, batch)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), (xb, yb))
    return loss_fn(p, (x, y))

  return lambda lr: float(run(jnp.asarray(lr, jnp.float32)))


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_lr_range_test_suggestion_trains_best(name):
  opt = {"adam": optzoo.adam,
         "sgd_momentum": functools.partial(optzoo.sgd, momentum=0.9)}[name]
  _, _, params, loss_fn, batches = _digits_setup()
  res = optzoo.lr_range_test(loss_fn, params, batches(0, 100), optimizer=opt,
                             min_lr=1e-5, max_lr=10.0, num_steps=100)
  assert 1e-5 < res.suggestion < 10.0
  assert res.losses.shape == res.lrs.shape == res.raw_losses.shape
  assert np.all(np.diff(res.lrs) > 0)
  np.testing.assert_allclose(res.lrs[1] / res.lrs[0], 10.0 ** (6 / 99),
                             rtol=1e-12)
  train = _trainer(opt)
  base = train(res.suggestion)
  assert base < train(10.0 * res.suggestion)
  assert base < train(0.01 * res.suggestion)


def test_lr_range_test_stops_on_divergence_one_compile_and_plot():
  calls = []

  def loss_fn(p, b):
    calls.append(1)  # counts traces of the jitted step
    return jnp.sum((p - b) ** 2)

  res = optzoo.lr_range_test(loss_fn, jnp.zeros(4), [jnp.ones(4)] * 3,
                             optimizer=optax.sgd, min_lr=1e-4, max_lr=100.0,
                             num_steps=200, smoothing=0.5)
  # SGD on sum((p - 1)^2) diverges for lr > 1.
  assert res.diverged and len(res.lrs) < 200 and res.lrs[-1] > 1.0
  assert len(calls) == 1  # one trace: the lr is a run-time input
  assert 1e-4 < res.suggestion < 1.0
  import matplotlib
  matplotlib.use("Agg")
  ax = res.plot()
  assert ax.get_xscale() == "log"
  # An already injected transformation is accepted; a plain one is not.
  inj = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  r2 = optzoo.lr_range_test(lambda p, b: (jnp.sum((p - b) ** 2), {"aux": p}),
                            jnp.zeros(2), iter([jnp.ones(2)]), optimizer=inj,
                            num_steps=10, method="minimum", has_aux=True)
  assert len(r2.lrs) == 10
  with pytest.raises(TypeError, match="learning_rate"):
    optzoo.lr_range_test(loss_fn, jnp.zeros(2), [jnp.ones(2)],
                         optimizer=optax.adam(1e-3), num_steps=10)


@pytest.mark.parametrize("kw,exc,name", [
    (dict(min_lr=0.0), ValueError, "min_lr"),
    (dict(max_lr=1e-9), ValueError, "max_lr"),
    (dict(num_steps=1), ValueError, "num_steps"),
    (dict(smoothing=1.0), ValueError, "smoothing"),
    (dict(diverge_threshold=1.0), ValueError, "diverge_threshold"),
    (dict(method="valley"), ValueError, "method"),
    (dict(optimizer=3), TypeError, "optimizer"),
])
def test_lr_range_test_bad_input(kw, exc, name):
  args = dict(loss_fn=lambda p, b: jnp.sum(p**2), params=jnp.zeros(2),
              batches=[None], num_steps=10)
  args.update(kw)
  with pytest.raises(exc, match=name):
    optzoo.lr_range_test(**args)


# ---------------------------------------------------------------------------
# Properties shared by these transformations
# ---------------------------------------------------------------------------

TRANSFORMS = {
    "lookahead_adam": lambda: optzoo.lookahead(optzoo.adam(1e-2)),
    "lookahead_sgd_reset": lambda: optzoo.lookahead(
        optzoo.sgd(1e-2, momentum=0.9), 2, reset_state=True),
    "swats": lambda: optzoo.swats(1e-2),
    "swats_leaf": lambda: optzoo.swats(1e-2, granularity="leaf"),
    "add_gradient_noise": lambda: optzoo.add_gradient_noise(0.01),
    "gradient_noise": lambda: optzoo.gradient_noise(optzoo.adam(1e-2)),
    "param_ema": lambda: optax.chain(optzoo.adam(1e-2), optzoo.param_ema(
        optzoo.byol_tau_schedule(10))),
    "generic_adam": lambda: optzoo.generic_adam(1e-2),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_jit_once_keeps_dtypes_and_pytrees(name, dtype):
  tx = TRANSFORMS[name]()
  params = {"w": jnp.ones((3, 2), dtype), "none": None,
            "s": jnp.asarray(0.5, dtype)}
  grads = {"w": jnp.full((3, 2), 0.1, dtype), "none": None,
           "s": jnp.asarray(-0.2, dtype)}
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  for _ in range(5):
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  assert u["none"] is None and params["none"] is None
  assert u["w"].dtype == dtype and u["s"].dtype == dtype
  assert params["w"].dtype == dtype
  assert all(np.all(np.isfinite(np.asarray(l, np.float32)))
             for l in jax.tree.leaves(u))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_preserves_sharding(name):
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 devices")
  mesh = Mesh(devices, ("d",))
  shard = NamedSharding(mesh, P("d"))
  tx = TRANSFORMS[name]()
  params = {"w": jax.device_put(jnp.ones((16, 3)), shard)}
  grads = {"w": jax.device_put(jnp.full((16, 3), 0.1), shard)}
  state = jax.jit(tx.init)(params)
  u, state = jax.jit(tx.update)(grads, state, params)
  assert u["w"].sharding.is_equivalent_to(shard, 2)


def test_registry_entries_build_and_reject_bad_input():
  names = ["lookahead", "swats", "add_gradient_noise", "gradient_noise",
           "param_ema", "generic_adam", "generic_adam_condition",
           "lr_range_test"]
  for name in names:
    info = optzoo.get_info(name)
    obj = registry_cases.build(info)
    if info.kind == "transformation":
      params = {"w": jnp.ones(3)}
      state = obj.init(params)
      obj.update({"w": jnp.ones(3)}, state, params)
    assert registry_cases.invalid(info.name)
    for override, exc in registry_cases.invalid(info.name):
      with pytest.raises(exc):
        registry_cases.build(info, **override)


@pytest.mark.parametrize("factory,kwargs", [
    (optzoo.swats, dict(learning_rate=1e-2)),
    (optzoo.generic_adam, dict(learning_rate=1e-2)),
    (optzoo.add_gradient_noise, dict(eta=0.1)),
    (optzoo.param_ema, dict(decay=0.9)),
], ids=["swats", "generic_adam", "add_gradient_noise", "param_ema"])
def test_inject_hyperparams(factory, kwargs):
  tx = optax.inject_hyperparams(factory)(**kwargs)
  params = {"w": jnp.ones(3, jnp.float32)}
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  for _ in range(3):
    u, state = step({"w": jnp.ones(3, jnp.float32)}, state, params)
    params = optax.apply_updates(params, u)
  assert counter.count == 1 and u["w"].dtype == jnp.float32
  assert set(kwargs) <= set(state.hyperparams)
