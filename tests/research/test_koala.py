"""KOALA-V / KOALA-M vs an independent NumPy re-derivation of the official code.

The oracle below is written from the equations of ``Araachie/koala``
(``koala.py``: ``predict()`` before the forward pass, ``update(loss,
loss_sq)`` after it), structured like the PyTorch optimizer (a list of
tensors, in-place updates), not like the optax implementation.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter, max_rel_err

STEPS = 250
BATCH = 16


# ---------------------------------------------------------------------------
# Problem: noisy linear regression with three leaves (one never gets a grad).
# ---------------------------------------------------------------------------

def _data(seed=0, n=400):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3))
  w_true = rng.normal(size=(3, 2))
  y = x @ w_true + 0.5 * rng.normal(size=(n, 2))
  idx = rng.integers(0, n, size=(STEPS, BATCH))
  p0 = [rng.normal(size=(3, 2)), 0.1 * rng.normal(size=(2,)),
        rng.normal(size=(4,))]
  return x, y, idx, p0


def _np_losses_grads(p, xb, yb):
  """Per-example losses 0.5*||x W + b - y||^2, mean grads (NumPy)."""
  res = xb @ p[0] + p[1] - yb
  losses = 0.5 * np.sum(res ** 2, axis=1)
  gw = xb.T @ res / len(xb)
  gb = res.mean(axis=0)
  return losses, [gw, gb, np.zeros_like(p[2])]


def _jax_losses(p, xb, yb):
  res = xb @ p["w"] + p["b"] - yb
  return 0.5 * jnp.sum(res ** 2, axis=1)


class OracleVanilla:
  """VanillaKOALA written from the official equations (NumPy, float64)."""

  def __init__(self, params, sigma, q, r, alpha_r, wd, lr, eps=1e-9,
               cov_rule="code", gain_rule="code"):
    self.p = [np.array(x, np.float64) for x in params]
    self.sigma, self.q, self.r_fixed = sigma, q, r
    self.r_avg, self.alpha_r, self.wd, self.lr, self.eps = 1.0, alpha_r, wd, lr, eps
    self.cov_rule, self.gain_rule = cov_rule, gain_rule
    self.k = 0

  def predict(self):
    self.sigma += self.q

  def update(self, loss, loss_sq, grads):
    if self.r_fixed is None:
      self.r_avg = self.alpha_r * self.r_avg + (1 - self.alpha_r) * loss_sq
      r = self.r_avg
    else:
      r = self.r_fixed
    lr = self.lr(self.k) if callable(self.lr) else self.lr
    entries = []
    for i, (p, g) in enumerate(zip(self.p, grads)):
      if np.linalg.norm(g) < self.eps:
        continue
      lg = g + self.wd * p
      n2 = np.linalg.norm(lg) ** 2
      s = self.sigma * n2 + (r if self.gain_rule == "code" else 0.0)
      layer_loss = loss + 0.5 * self.wd * np.linalg.norm(p) ** 2
      self.p[i] = p - lr * layer_loss * self.sigma / s * g
      entries.append(n2 / s)
    h = max(entries)
    if self.cov_rule == "code":
      self.sigma -= self.sigma ** 2 * h
    else:  # deliberately wrong: linear instead of quadratic in sigma
      self.sigma -= self.sigma * h
    self.k += 1


class OracleMomentum:
  """MomentumKOALA written from the official equations (NumPy, float64)."""

  def __init__(self, params, sw, sc, sv, a, qw, qv, r, alpha_r, wd, lr,
               eps=1e-9, cov_rule="code", gain_rule="code"):
    self.p = [np.array(x, np.float64) for x in params]
    self.v = [np.zeros_like(x) for x in self.p]
    self.gt = [np.zeros_like(x) for x in self.p]
    self.n_total = float(sum(x.size for x in self.p))
    self.P = np.array([[sw, sc], [sc, sv]], np.float64)
    self.qw, self.qv = qw, qv
    self.F = np.array([[1.0, 1.0], [0.0, a]])
    self.r_fixed, self.r_avg, self.alpha_r = r, 1.0, alpha_r
    self.wd, self.lr, self.eps = wd, lr, eps
    self.cov_rule, self.gain_rule = cov_rule, gain_rule
    self.k = 0

  def predict(self):
    wdiff = []
    for i in range(len(self.p)):
      wdiff.append(np.linalg.norm(self.gt[i] - self.p[i]))
      self.p[i] = self.p[i] + self.v[i]
      self.v[i] = self.F[1, 1] * self.v[i]
    self.qw = 0.9 * self.qw + 0.1 * np.linalg.norm(np.array(wdiff)) / self.n_total
    Q = np.diag([self.qw, self.qv])
    self.P = self.F @ self.P @ self.F.T + Q

  def update(self, loss, loss_sq, grads):
    if self.r_fixed is None:
      self.r_avg = self.alpha_r * self.r_avg + (1 - self.alpha_r) * loss_sq
      r = self.r_avg
    else:
      r = self.r_fixed
    lr = self.lr(self.k) if callable(self.lr) else self.lr
    entries = []
    for i, (p, g) in enumerate(zip(self.p, grads)):
      if np.linalg.norm(g) < self.eps:
        continue
      lg = g + self.wd * p
      n2 = np.linalg.norm(lg) ** 2
      S = n2 * self.P[0, 0] + r
      layer_loss = loss + 0.5 * self.wd * np.linalg.norm(p) ** 2
      k1 = self.P[0, 0] / S * layer_loss * lr
      k2 = self.P[1, 0] / S * layer_loss * lr
      if self.gain_rule != "code":  # deliberately wrong gain: no K2 term
        k2 = 0.0
      self.p[i] = p - k1 * lg
      self.v[i] = self.v[i] - k2 * lg
      self.gt[i] = 0.9 * self.gt[i] + 0.1 * self.p[i]
      entries.append(n2 / S)
    h = max(entries)
    HH = np.array([[h, 0.0], [0.0, 0.0]])
    if self.cov_rule == "code":
      self.P = self.P - self.P @ HH @ self.P.T
    else:  # deliberately wrong: P (I - HH) instead of P - P HH P^T
      self.P = self.P @ (np.eye(2) - HH)
    self.k += 1


def _run_oracle(oracle, x, y, idx):
  """Records the parameters at which each next gradient is taken.

  optax's params after update t are the *predicted* point of step t+1, so the
  oracle records its params after the following ``predict()``.
  """
  traj = []
  oracle.predict()
  for t in range(STEPS):
    xb, yb = x[idx[t]], y[idx[t]]
    losses, grads = _np_losses_grads(oracle.p, xb, yb)
    oracle.update(losses.mean(), np.mean(losses ** 2), grads)
    oracle.predict()
    traj.append([q.copy() for q in oracle.p])
  return [np.stack([s[i] for s in traj]) for i in range(3)]


def _run_optzoo(tx, x, y, idx, p0, pass_value_sq=True):
  params = {"w": jnp.asarray(p0[0]), "b": jnp.asarray(p0[1]),
            "u": jnp.asarray(p0[2])}
  xs, ys = jnp.asarray(x[idx]), jnp.asarray(y[idx])

  def body(carry, batch):
    p, s = carry
    xb, yb = batch
    losses = _jax_losses(p, xb, yb)
    g = jax.grad(lambda q: jnp.mean(_jax_losses(q, xb, yb)))(p)
    extra = optzoo.koala_loss_stats(losses)
    if not pass_value_sq:
      extra = {"value": extra["value"]}
    u, s = tx.update(g, s, p, **extra)
    p = optax.apply_updates(p, u)
    return (p, s), p

  (_, _), traj = jax.jit(lambda c: jax.lax.scan(body, c, (xs, ys)))(
      (params, tx.init(params)))
  return [np.asarray(traj["w"]), np.asarray(traj["b"]), np.asarray(traj["u"])]


def _err(a, b):
  return max(max_rel_err(x, y, floor=1e-6) for x, y in zip(a, b))


V_CFG = dict(sigma=0.1, q=1.0, r=None, alpha_r=0.9, wd=5e-4)
def SCHED(count):  # float64 schedule (optax's schedules return f32 for int32)
  return 0.7 * 0.995 ** jnp.asarray(count, jnp.float64)


def _check_matches_oracle(tx, oracle_cls, cfg, lr, seed):
  """optzoo == oracle to 1e-9; a wrong covariance rule or gain is far off."""
  x, y, idx, p0 = _data(seed)
  ours = _run_optzoo(tx, x, y, idx, p0)
  ref = _run_oracle(oracle_cls(p0, lr=lr, **cfg), x, y, idx)
  assert _err(ours, ref) < 1e-9
  # The problem is noisy and the run moves the params a lot.
  assert np.linalg.norm(ours[0][-1] - p0[0]) > 0.5
  # A wrong covariance rule or a wrong gain gives a clearly different run.
  bad_cov = _run_oracle(oracle_cls(p0, lr=lr, cov_rule="wrong", **cfg),
                        x, y, idx)
  bad_gain = _run_oracle(oracle_cls(p0, lr=lr, gain_rule="wrong", **cfg),
                         x, y, idx)
  assert _err(ours, bad_cov) > 1e-3
  assert _err(ours, bad_gain) > 1e-3


@pytest.mark.parametrize("lr", [0.5, SCHED], ids=["const", "schedule"])
def test_koala_v_matches_oracle(lr):
  _check_matches_oracle(optzoo.koala(lr, "vanilla", sigma=0.1, q=1.0,
                                     weight_decay=5e-4),
                        OracleVanilla, V_CFG, lr, seed=0)


def test_koala_v_fixed_r_needs_no_value_sq():
  x, y, idx, p0 = _data(1)
  cfg = dict(V_CFG, r=0.3, sigma=0.5, q=0.2)
  ours = _run_optzoo(optzoo.koala(0.3, "vanilla", sigma=0.5, q=0.2, r=0.3),
                     x, y, idx, p0, pass_value_sq=False)
  ref = _run_oracle(OracleVanilla(p0, lr=0.3, **cfg), x, y, idx)
  assert _err(ours, ref) < 1e-9


M_CFG = dict(sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=1e-2, qv=1e-2, r=None,
             alpha_r=0.9, wd=5e-4)


@pytest.mark.parametrize("lr", [0.3, SCHED], ids=["const", "schedule"])
def test_koala_m_matches_oracle(lr):
  _check_matches_oracle(optzoo.koala(lr, "momentum"), OracleMomentum, M_CFG,
                        lr, seed=2)


def test_koala_m_nondefault_matrix():
  """Off-diagonal initial covariance, other a / q_v, fixed r."""
  x, y, idx, p0 = _data(3)
  cfg = dict(M_CFG, sw=0.2, sc=0.05, sv=0.3, a=0.8, qv=0.02, r=0.5, wd=1e-3)
  tx = optzoo.koala(0.2, "momentum", sigma=0.2, sigma_c=0.05, sigma_v=0.3,
                    momentum=0.8, q_v=0.02, r=0.5, weight_decay=1e-3)
  ours = _run_optzoo(tx, x, y, idx, p0, pass_value_sq=False)
  ref = _run_oracle(OracleMomentum(p0, lr=0.2, **cfg), x, y, idx)
  assert _err(ours, ref) < 1e-9


def test_regularized_direction_option_differs():
  x, y, idx, p0 = _data(4)
  a = _run_optzoo(optzoo.koala(0.5, weight_decay=0.05), x, y, idx, p0)
  b = _run_optzoo(optzoo.koala(0.5, weight_decay=0.05, direction="regularized"),
                  x, y, idx, p0)
  assert _err(a, b) > 1e-4


def test_init_applies_first_prediction():
  params = {"w": jnp.ones((2, 2))}
  s = optzoo.koala(sigma=0.1, q=1.0).init(params)
  np.testing.assert_allclose(s.sigma, 1.1)
  s = optzoo.koala(variant="momentum").init(params)
  qw = 0.9 * 1e-2 + 0.1 * 2.0 / 4.0   # ||(||p||)|| / N = 2 / 4
  f = np.array([[1, 1], [0, 0.9]])
  p = f @ np.diag([0.1, 0.1]) @ f.T + np.diag([qw, 1e-2])
  np.testing.assert_allclose(s.cov, p, rtol=1e-12)


# ---------------------------------------------------------------------------
# Errors, jit, dtypes, pytrees
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["vanilla", "momentum"])
def test_missing_extra_args(variant):
  params = {"w": jnp.ones(3)}
  tx = optzoo.koala(variant=variant)
  s = tx.init(params)
  with pytest.raises(ValueError, match=r"`value`.*value=loss"):
    tx.update(params, s, params)
  with pytest.raises(ValueError, match=r"`value_sq`"):
    tx.update(params, s, params, value=1.0)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, s, None, value=1.0, value_sq=1.0)
  # fixed r: value_sq not needed; unknown extra args are ignored
  tx = optzoo.koala(variant=variant, r=1.0)
  tx.update(params, tx.init(params), params, value=1.0, unrelated=3)


@pytest.mark.parametrize("kwargs, exc", [
    ({"learning_rate": -1.0}, ValueError), ({"variant": "adam"}, ValueError),
    ({"sigma": 0.0}, ValueError), ({"q": -1.0}, ValueError),
    ({"r": 0.0}, ValueError), ({"r_decay": 1.0}, ValueError),
    ({"weight_decay": -1.0}, ValueError), ({"momentum": 1.0}, ValueError),
    ({"sigma": "x"}, TypeError), ({"direction": "up"}, ValueError),
])
def test_bad_hyperparameters(kwargs, exc):
  with pytest.raises(exc, match=list(kwargs)[0]):
    optzoo.koala(**kwargs)


@pytest.mark.parametrize("variant", ["vanilla", "momentum"])
def test_jit_once_dtype_none_leaves(variant):
  params = {"a": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.ones(2, jnp.float32),
            "n": None, "s": jnp.asarray(0.5, jnp.float32)}
  grads = {"a": jnp.full((3, 2), 0.1, jnp.bfloat16),
           "b": jnp.full(2, 0.2, jnp.float32), "n": None,
           "s": jnp.asarray(0.3, jnp.float32)}
  tx = optzoo.koala(0.5, variant=variant)
  counter = TraceCounter(lambda g, s, p, v, v2: tx.update(g, s, p, value=v,
                                                          value_sq=v2))
  step = jax.jit(counter)
  s = tx.init(params)
  for i in range(3):
    u, s = step(grads, s, params, jnp.float32(1.0 + i), jnp.float32(2.0))
  assert counter.count == 1
  assert u["a"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.float32
  assert u["n"] is None
  assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
             for x in jax.tree.leaves(u))


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(optzoo.koala)(learning_rate=0.5, sigma=0.1)
  params = {"w": jnp.ones(3)}
  s = tx.init(params)
  u, s = jax.jit(lambda s: tx.update(params, s, params, value=1.0,
                                     value_sq=1.0))(s)
  assert u["w"].shape == (3,)


# ---------------------------------------------------------------------------
# Non-finite loss / loss_sq / gradients: the step is skipped on device.
# ---------------------------------------------------------------------------


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _bad_step_runs(variant, bad_at, poison, r=None, steps=6):
  """Runs ``steps`` jitted good steps with a poisoned step inserted before
  step ``bad_at``; returns (records of the bad step, final params/state of the
  run with it, of the run without it)."""
  x, y, idx, p0 = _data(5)
  params0 = {"w": jnp.asarray(p0[0]), "b": jnp.asarray(p0[1]),
             "u": jnp.asarray(p0[2])}
  tx = optzoo.koala(0.5, variant, r=r)
  counter = TraceCounter(lambda g, s, p, v, v2: tx.update(g, s, p, value=v,
                                                          value_sq=v2))
  step = jax.jit(counter)

  def good_inputs(p, k):
    xb, yb = jnp.asarray(x[idx[k]]), jnp.asarray(y[idx[k]])
    g = jax.grad(lambda q: jnp.mean(_jax_losses(q, xb, yb)))(p)
    st = optzoo.koala_loss_stats(_jax_losses(p, xb, yb))
    return g, st["value"], st["value_sq"]

  def run(with_bad):
    p, s, rec = params0, tx.init(params0), None
    for k in range(steps):
      if with_bad and k == bad_at:
        g, v, v2 = poison(*good_inputs(p, k))
        u, s_new = step(g, s, p, v, v2)
        rec = (s, u, s_new)
        p = optax.apply_updates(p, u)
        s = s_new
      g, v, v2 = good_inputs(p, k)
      u, s = step(g, s, p, v, v2)
      p = optax.apply_updates(p, u)
    return rec, p, s

  rec, p_bad, s_bad = run(True)
  _, p_ref, s_ref = run(False)
  assert counter.count == 1
  return rec, (p_bad, s_bad), (p_ref, s_ref)


def _poison_grad(bad):
  def f(g, v, v2):
    return dict(g, w=g["w"].at[1, 0].set(bad)), v, v2
  return f


_POISONS = {
    "value-nan": lambda g, v, v2: (g, jnp.nan * v, v2),
    "value-inf": lambda g, v, v2: (g, jnp.inf + v, v2),
    "value-neginf": lambda g, v, v2: (g, -jnp.inf + v, v2),
    "value_sq-nan": lambda g, v, v2: (g, v, jnp.nan * v2),
    "value_sq-inf": lambda g, v, v2: (g, v, jnp.inf + v2),
    "grad-nan": _poison_grad(jnp.nan),
    "grad-inf": _poison_grad(jnp.inf),
}


@pytest.mark.parametrize("what", sorted(_POISONS))
@pytest.mark.parametrize("variant", ["vanilla", "momentum"])
def test_nonfinite_inputs_skip_the_step_and_training_continues(variant, what):
  (s_before, u, s_after), (p_bad, s_bad), (p_ref, s_ref) = _bad_step_runs(
      variant, 3, _POISONS[what])
  # The bad step: zero update, state bit-identical (count included).
  for leaf in jax.tree.leaves(u):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)
  _assert_same_tree(s_after, s_before)
  # Training goes on exactly as if the bad step had never happened.
  _assert_same_tree(p_bad, p_ref)
  _assert_same_tree(s_bad, s_ref)
  # ... and it does move the params (the later steps are not all zero).
  assert float(jnp.abs(s_ref.r - 1.0)) > 0 and int(s_ref.count) == 6
  assert not np.allclose(np.asarray(p_ref["w"]), _data(5)[3][0])


def test_nonfinite_value_sq_is_ignored_with_a_fixed_r():
  """With a fixed ``r`` the ``value_sq`` extra arg is not used, so a NaN
  there must not skip the step."""
  (s_before, u, s_after), _, _ = _bad_step_runs(
      "vanilla", 2, _POISONS["value_sq-nan"], r=0.5, steps=3)
  assert int(s_after.count) == int(s_before.count) + 1
  assert float(jnp.max(jnp.abs(u["w"]))) > 0


@pytest.mark.parametrize("variant", ["vanilla", "momentum"])
def test_nonfinite_check_can_fail(variant):
  """Negative control: an extra *finite* step is not skipped, so the checks
  of the test above (zero update, same state, same run) do fail for it."""
  (s_before, u, s_after), (p_bad, _), (p_ref, _) = _bad_step_runs(
      variant, 3, lambda g, v, v2: (g, v, v2))
  assert float(jnp.max(jnp.abs(u["w"]))) > 0
  with pytest.raises(AssertionError):
    _assert_same_tree(s_after, s_before)
  with pytest.raises(AssertionError):
    _assert_same_tree(p_bad, p_ref)


def test_flax_training_step_passes_the_loss():
  import flax.linen as nn
  from flax.training import train_state

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=64))
  model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
  params = model.init(jax.random.key(0), x)["params"]
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optzoo.koala(0.5, variant="momentum"))

  @jax.jit
  def train_step(state):
    def loss_fn(p):
      logits = state.apply_fn({"params": p}, x)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return jnp.mean(losses), losses
    (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    # TrainState.apply_gradients does not forward extra args: call tx.update.
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                         **optzoo.koala_loss_stats(losses))
    return state.replace(step=state.step + 1, opt_state=opt_state,
                         params=optax.apply_updates(state.params, updates)), loss

  losses = []
  for _ in range(30):
    state, loss = train_step(state)
    losses.append(float(loss))
  assert losses[-1] < 0.8 * losses[0]


def test_nnx_optimizer_forwards_the_loss():
  from flax import nnx

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=64))
  model = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(16, 3, rngs=nnx.Rngs(1)))
  optimizer = nnx.Optimizer(model, optzoo.koala(0.5), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(m):
      losses = optax.softmax_cross_entropy_with_integer_labels(m(x), y)
      return jnp.mean(losses), losses
    (loss, losses), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, **optzoo.koala_loss_stats(losses))
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(30)]
  assert losses[-1] < 0.8 * losses[0]
