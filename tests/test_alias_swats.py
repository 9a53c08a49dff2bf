"""swats vs an independent NumPy re-derivation of Algorithm 1 of
Keskar & Socher (2017). The PyTorch ports are not used as oracles: see the
bugs listed in swats' docstring."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter, run_trajectory, spd_quadratic


def np_swats(grad, x0, steps, lr, b1=0.9, b2=0.999, eps=1e-9, atol=1e-9,
             rtol=0.0, groups=None, nesterov=False, weight_decay=0.0):
  """Algorithm 1, written from the paper, on a flat vector.

  ``groups``: list of index arrays that switch independently (default: one
  global group). Returns (trajectory, switch steps, learned lrs).
  """
  x = np.array(x0, np.float64)
  n = x.size
  groups = groups or [np.arange(n)]
  m, a, v = np.zeros(n), np.zeros(n), np.zeros(n)
  lam = [0.0] * len(groups)
  phase = ["adam"] * len(groups)
  big = [0.0] * len(groups)
  sw = [0] * len(groups)
  traj = []
  for k in range(1, steps + 1):
    g = grad(x) + weight_decay * x
    new_x = x.copy()
    for j, idx in enumerate(groups):
      gj = g[idx]
      if phase[j] == "sgd":
        v[idx] = b1 * v[idx] + gj
        d = gj + b1 * v[idx] if nesterov else v[idx]
        new_x[idx] = x[idx] - (1 - b1) * big[j] * d
        continue
      m[idx] = b1 * m[idx] + (1 - b1) * gj
      a[idx] = b2 * a[idx] + (1 - b2) * gj * gj
      p = -lr * np.sqrt(1 - b2**k) / (1 - b1**k) * m[idx] / (
          np.sqrt(a[idx]) + eps)
      new_x[idx] = x[idx] + p
      if p @ gj != 0:
        gamma = (p @ p) / (-(p @ gj))
        lam[j] = b2 * lam[j] + (1 - b2) * gamma
        lam_hat = lam[j] / (1 - b2**k)
        if k > 1 and abs(lam_hat - gamma) < atol + rtol * abs(gamma) and (
            lam_hat > 0):
          phase[j] = "sgd"
          v[idx] = 0.0
          big[j] = lam_hat
          sw[j] = k
    x = new_x
    traj.append(x.copy())
  return np.array(traj), sw, big


A, B, X0 = spd_quadratic(6, seed=0, cond=50.0)


def _grad_np(x):
  return A @ x - B


def _grad_jnp(x):
  return jnp.asarray(A) @ x - jnp.asarray(B)


# (lr, switch_atol, switch_rtol, expected switch step): a mid-run switch with
# an absolute tolerance, the paper's defaults (switch at k = 2 on this
# deterministic problem), and a relative tolerance.
CONFIGS = [(0.05, 1e-6, 0.0, 270), (1e-4, 1e-9, 0.0, 2), (0.1, 0.0, 1e-2, 193)]


@pytest.mark.parametrize("lr,atol,rtol,switch", CONFIGS)
def test_matches_numpy_algorithm_1(lr, atol, rtol, switch):
  steps = 600
  ref, sw, lam = np_swats(_grad_np, X0, steps, lr, atol=atol, rtol=rtol)
  assert sw[0] == switch  # the problem does exercise a switch
  tx = optzoo.swats(lr, switch_atol=atol, switch_rtol=rtol)
  traj = np.asarray(run_trajectory(tx, jnp.asarray(X0), _grad_jnp, steps))
  rel = np.abs(traj - ref) / np.maximum(np.abs(ref), 1e-12)
  assert rel.max() <= 1e-6
  # Phase, switch step and learned lr readable from the state.
  state = tx.init(jnp.asarray(X0))
  x = jnp.asarray(X0)
  step = jax.jit(tx.update)
  for k in range(1, switch + 2):
    u, state = step(_grad_jnp(x), state, x)
    x = x + u
    assert bool(state.sgd_phase) == (k >= switch)
  assert int(state.switch_step) == switch
  assert float(state.sgd_lr) == pytest.approx(lam[0], rel=1e-9)


def test_adam_phase_is_adam_and_sgd_phase_is_sgd_with_learned_lr():
  lr, atol, switch = 0.05, 1e-6, 270
  steps = 500
  tx = optzoo.swats(lr, eps=0.0, switch_atol=atol)
  traj = np.asarray(run_trajectory(tx, jnp.asarray(X0), _grad_jnp, steps))
  adam = np.asarray(run_trajectory(optzoo.adam(lr, eps=0.0), jnp.asarray(X0),
                                   _grad_jnp, steps))
  # Identical to (torch-exact) Adam up to and including the switch step.
  np.testing.assert_allclose(traj[:switch], adam[:switch], rtol=1e-12,
                             atol=1e-14)
  assert np.abs(traj[switch + 5] - adam[switch + 5]).max() > 1e-9
  # Afterwards: SGD with momentum, lr (1 - b1) * Lambda, buffer from zero.
  _, _, lam = np_swats(_grad_np, X0, steps, lr, eps=0.0, atol=atol)
  x = traj[switch - 1]
  buf = np.zeros(6)
  sgd = []
  for _ in range(steps - switch):
    buf = 0.9 * buf + _grad_np(x)
    x = x - 0.1 * lam[0] * buf
    sgd.append(x)
  np.testing.assert_allclose(traj[switch:], np.array(sgd), rtol=1e-9)


def test_leaf_granularity_switches_each_leaf():
  idx_a, idx_b = np.arange(0, 1), np.arange(1, 6)
  lr, atol, steps = 0.1, 1e-5, 600
  ref, sw, lam = np_swats(_grad_np, X0, steps, lr, atol=atol,
                          groups=[idx_a, idx_b])
  assert sw[0] != sw[1] and min(sw) > 2  # independent, non-trivial switches

  def grad_tree(p):
    g = _grad_jnp(jnp.concatenate([p["a"], p["b"]]))
    return {"a": g[:1], "b": g[1:]}

  tx = optzoo.swats(lr, switch_atol=atol, granularity="leaf")
  p0 = {"a": jnp.asarray(X0[:1]), "b": jnp.asarray(X0[1:])}
  traj = run_trajectory(tx, p0, grad_tree, steps)
  got = np.concatenate([np.asarray(traj["a"]), np.asarray(traj["b"])], axis=1)
  np.testing.assert_allclose(got, ref, rtol=1e-6)
  def body(carry, _):
    p, st = carry
    u, st = tx.update(grad_tree(p), st, p)
    return (optax.apply_updates(p, u), st), None

  (_, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(
      (p0, tx.init(p0)))
  assert int(state.switch_step["a"]) == sw[0]
  assert int(state.switch_step["b"]) == sw[1]
  assert float(state.sgd_lr["a"]) == pytest.approx(lam[0], rel=1e-9)
  p0 = {"a": jnp.asarray(X0[:1]), "b": jnp.asarray(X0[1:])}
  # Global granularity on the same tree = one switch.
  ref_g, sw_g, _ = np_swats(_grad_np, X0, steps, lr, atol=atol)
  tx_g = optzoo.swats(lr, switch_atol=atol)
  traj_g = run_trajectory(tx_g, p0, grad_tree, steps)
  got_g = np.concatenate([np.asarray(traj_g["a"]), np.asarray(traj_g["b"])],
                         axis=1)
  np.testing.assert_allclose(got_g, ref_g, rtol=1e-6)


def test_nesterov_and_weight_decay():
  lr, atol, steps = 0.05, 1e-6, 500
  for kw in (dict(nesterov=True), dict(weight_decay=0.01)):
    ref, sw, _ = np_swats(_grad_np, X0, steps, lr, atol=atol, **kw)
    assert 2 < sw[0] < steps
    tx = optzoo.swats(lr, switch_atol=atol, **kw)
    traj = np.asarray(run_trajectory(tx, jnp.asarray(X0), _grad_jnp, steps))
    np.testing.assert_allclose(traj, ref, rtol=1e-6)


def test_constant_schedule_equals_float_lr():
  steps = 400
  a = run_trajectory(optzoo.swats(0.05, switch_atol=1e-6), jnp.asarray(X0),
                     _grad_jnp, steps)
  b = run_trajectory(optzoo.swats(optax.constant_schedule(0.05),
                                  switch_atol=1e-6), jnp.asarray(X0),
                     _grad_jnp, steps)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_jit_once_dtypes_and_pytrees():
  tx = optzoo.swats(1e-2)
  for dtype in (jnp.bfloat16, jnp.float32):
    params = {"w": jnp.ones((3, 2), dtype), "n": None,
              "s": jnp.asarray(0.5, dtype)}
    state = tx.init(params)
    counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
    step = jax.jit(counter)
    grads = {"w": jnp.full((3, 2), 0.1, dtype), "n": None,
             "s": jnp.asarray(-0.2, dtype)}
    for _ in range(4):
      u, state = step(grads, state, params)
      params = optax.apply_updates(params, u)
    assert counter.count == 1
    assert u["w"].dtype == dtype and u["s"].dtype == dtype and u["n"] is None
    assert params["w"].dtype == dtype
    assert state.count.dtype == jnp.int32


def test_weight_decay_needs_params():
  tx = optzoo.swats(1e-2, weight_decay=0.1)
  state = tx.init(jnp.ones(2))
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), state)


BAD = [
    (dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (dict(b1=1.0), ValueError, "b1"),
    (dict(b2=1.5), ValueError, "b2"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(switch_atol=-1e-9), ValueError, "switch_atol"),
    (dict(switch_rtol=-1.0), ValueError, "switch_rtol"),
    (dict(granularity="tensor"), ValueError, "granularity"),
    (dict(nesterov="yes"), TypeError, "nesterov"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input(i):
  kw, exc, name = BAD[i]
  with pytest.raises(exc, match=name):
    optzoo.swats(**kw)
