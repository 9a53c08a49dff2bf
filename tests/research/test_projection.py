"""WRS (weight_rescaling), sphere_sgd and their shared projection primitive."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter, max_rel_err

STEPS = 200


def _filter_norms(k):
  k = np.asarray(k, np.float64)
  return np.sqrt((k.reshape(-1, k.shape[-1]) ** 2).sum(0))


# ---------------------------------------------------------------------------
# A scale-invariant problem: every SI kernel is normalized per output unit
# (as a BatchNorm after it would do), the bias is not scale-invariant.
# ---------------------------------------------------------------------------


def _si_problem(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(128, 5))
  y = rng.integers(0, 3, size=128)
  idx = rng.integers(0, 128, size=(STEPS, 32))
  p0 = {"conv": rng.normal(size=(5, 6)) * 0.7,
        "head": rng.normal(size=(6, 3)) * 2.0,
        "bias": rng.normal(size=(3,)) * 0.1}

  def loss_fn(p, xb, yb):
    def unit(k):
      return k / jnp.sqrt(jnp.sum(k * k, axis=0, keepdims=True))
    h = jnp.tanh(3.0 * xb @ unit(p["conv"]))
    z = 3.0 * h @ unit(p["head"]) + p["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

  return x, y, idx, p0, loss_fn


def _run(tx, p0, loss_fn, x, y, idx):
  params = jax.tree.map(jnp.asarray, p0)
  xs, ys = jnp.asarray(x[idx]), jnp.asarray(y[idx])

  def body(carry, batch):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p, *batch)
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    return (p, s), (p, loss)

  (_, s), (traj, losses) = jax.jit(
      lambda c: jax.lax.scan(body, c, (xs, ys)))(
          (params, tx.init(params)))
  return traj, np.asarray(losses), s


def _np_sphere(p0, loss_fn, x, y, idx, elr, si=("conv", "head"), per_filter=False,
               noninv_lr=0.0):
  """The official code's loop: SGD step, then fix_si_pnorm / fix_si_pnorms."""
  grad = jax.jit(jax.grad(loss_fn))
  p = {k: np.array(v, np.float64) for k, v in p0.items()}
  sq0 = sum(np.sum(p[k] ** 2) for k in si)
  if per_filter:
    n_filters = sum(p[k].shape[-1] for k in si)
    rho = np.sqrt(sq0 / n_filters)
  else:
    rho = np.sqrt(sq0)
  lr = elr * sq0
  traj = []
  for t in range(STEPS):
    g = {k: np.asarray(v) for k, v in grad(p, x[idx[t]], y[idx[t]]).items()}
    for k in p:
      p[k] = p[k] - (lr if k in si else noninv_lr) * g[k]
    if per_filter:
      for k in si:
        p[k] = p[k] * (rho / np.sqrt((p[k] ** 2).sum(0, keepdims=True)))
    else:
      coef = rho / np.sqrt(sum(np.sum(p[k] ** 2) for k in si))
      for k in si:
        p[k] = p[k] * coef
    traj.append({k: v.copy() for k, v in p.items()})
  return {k: np.stack([s[k] for s in traj]) for k in p}, rho


@pytest.mark.parametrize("per_filter", [False, True])
def test_sphere_sgd_matches_official_loop(per_filter):
  x, y, idx, p0, loss_fn = _si_problem(0)
  tx = optzoo.sphere_sgd(learning_rate=0.05,
                         granularity="filter" if per_filter else "joint",
                         noninv_learning_rate=0.1)
  traj, losses, state = _run(tx, p0, loss_fn, x, y, idx)
  ref, rho = _np_sphere(p0, loss_fn, x, y, idx, 0.05, per_filter=per_filter,
                        noninv_lr=0.1)
  assert max_rel_err(traj, ref, floor=1e-6) < 1e-9
  np.testing.assert_allclose(state.radius, rho, rtol=1e-12)
  assert losses[-20:].mean() < losses[:5].mean()


def test_sphere_sgd_joint_norm_constant_and_elr_fixed():
  """Joint norm stays rho; theta/rho follows the same path for any rho."""
  x, y, idx, p0, loss_fn = _si_problem(1)
  tx = optzoo.sphere_sgd(learning_rate=0.05)
  traj, losses, state = _run(tx, p0, loss_fn, x, y, idx)
  rho = np.sqrt(np.sum(p0["conv"] ** 2) + np.sum(p0["head"] ** 2))
  joint = np.sqrt((np.asarray(traj["conv"]) ** 2).sum((1, 2))
                  + (np.asarray(traj["head"]) ** 2).sum((1, 2)))
  np.testing.assert_allclose(joint, rho, rtol=1e-12)
  assert np.all(np.asarray(traj["bias"]) == p0["bias"])  # non-SI frozen
  # rescale the SI part by c: the trajectory of theta/rho is unchanged
  c = 7.0
  p0c = dict(p0, conv=c * p0["conv"], head=c * p0["head"])
  traj_c, losses_c, state_c = _run(tx, p0c, loss_fn, x, y, idx)
  np.testing.assert_allclose(state_c.radius, c * rho, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(traj_c["conv"]) / c, traj["conv"],
                             rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(losses_c, losses, rtol=1e-9)
  # plain SGD with a fixed lr has an ELR that depends on the norm
  sgd = optax.sgd(0.05 * rho ** 2)
  _, l1, _ = _run(sgd, p0, loss_fn, x, y, idx)
  _, l2, _ = _run(sgd, p0c, loss_fn, x, y, idx)
  assert np.max(np.abs(l1 - l2)) > 1e-3


def test_sphere_sgd_fixed_radius_and_state():
  params = {"k": jnp.full((2, 2), 3.0), "b": jnp.zeros(2)}
  s = optzoo.sphere_sgd(0.1).init(params)
  np.testing.assert_allclose(s.radius, 6.0)
  np.testing.assert_allclose(s.lr_scale, 36.0)
  s = optzoo.sphere_sgd(0.1, granularity="filter").init(params)
  np.testing.assert_allclose(s.radius, np.sqrt(36.0 / 2))
  np.testing.assert_allclose(s.lr_scale, 36.0)
  tx = optzoo.sphere_sgd(0.1, radius=2.0)
  s = tx.init(params)
  u, s = tx.update({"k": jnp.ones((2, 2)), "b": jnp.ones(2)}, s, params)
  new = optax.apply_updates(params, u)
  np.testing.assert_allclose(np.linalg.norm(new["k"]), 2.0)
  np.testing.assert_allclose(new["b"], 0.0)


# ---------------------------------------------------------------------------
# WRS
# ---------------------------------------------------------------------------


def _wrs_params(rng):
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * 3),
                   "bias": jnp.asarray(rng.normal(size=(4,)))},
          "head": {"kernel": jnp.asarray(rng.normal(size=(4, 3)) * 0.2),
                   "bias": jnp.asarray(rng.normal(size=(3,)))}}


def test_wrs_unit_filters_after_every_step():
  rng = np.random.default_rng(0)
  params = _wrs_params(rng)
  mask = lambda p: {"conv": {"kernel": True, "bias": False},  # noqa: E731
                    "head": {"kernel": False, "bias": False}}
  tx = optax.chain(optzoo.sgd(0.1, momentum=0.9), optzoo.weight_rescaling(mask))
  s = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(20):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    u, s = step(g, s, params)
    new = optax.apply_updates(params, u)
    np.testing.assert_allclose(_filter_norms(new["conv"]["kernel"]), 1.0,
                               rtol=1e-12)
    params = new
  assert not np.allclose(_filter_norms(params["head"]["kernel"]), 1.0)


def test_wrs_matches_formula_and_passes_other_leaves():
  rng = np.random.default_rng(1)
  params = _wrs_params(rng)
  upd = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
  u, _ = optzoo.weight_rescaling(target_norm=2.0).update(
      upd, optzoo.weight_rescaling().init(params), params)
  for name in ("conv", "head"):  # default mask: every ndim >= 2 leaf
    w = np.asarray(params[name]["kernel"] + upd[name]["kernel"])
    flat = w.reshape(-1, w.shape[-1])
    expect = (2.0 * flat / np.linalg.norm(flat, axis=0)).reshape(w.shape)
    np.testing.assert_allclose(params[name]["kernel"] + u[name]["kernel"],
                               expect, rtol=1e-12)
    np.testing.assert_array_equal(u[name]["bias"], upd[name]["bias"])
  # tensor granularity: the whole leaf has the target norm
  u, _ = optzoo.weight_rescaling(granularity="tensor").update(
      upd, optzoo.weight_rescaling().init(params), params)
  new = optax.apply_updates(params, u)
  np.testing.assert_allclose(np.linalg.norm(new["conv"]["kernel"]), 1.0)
  assert not np.allclose(_filter_norms(new["conv"]["kernel"]), 0.5)


def test_wrs_every():
  params = {"k": jnp.full((2, 3), 2.0)}
  tx = optzoo.weight_rescaling(every=3)
  s = tx.init(params)
  zero = {"k": jnp.zeros((2, 3))}
  norms = []
  for _ in range(4):
    u, s = tx.update(zero, s, params)
    norms.append(_filter_norms(params["k"] + u["k"])[0])
  np.testing.assert_allclose(norms, [1.0, np.sqrt(8.0), np.sqrt(8.0), 1.0])


def test_project_to_sphere_joint():
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((3, 1)), "c": jnp.ones(3)}
  u = jax.tree.map(jnp.zeros_like, params)
  d = optzoo.project_to_sphere(params, u, 5.0, granularity="joint")
  new = optax.apply_updates(params, d)
  np.testing.assert_allclose(
      np.sqrt(np.sum(new["a"] ** 2) + np.sum(new["b"] ** 2)), 5.0)
  np.testing.assert_allclose(new["c"], 1.0)


# ---------------------------------------------------------------------------
# Errors, jit, dtypes, pytrees
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [optzoo.weight_rescaling,
                                  lambda: optzoo.sphere_sgd(0.1)])
def test_missing_params(make):
  tx = make()
  params = {"k": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match=r"parameters.*tx.update\(grads, state, params\)"):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize("factory, kwargs, exc", [
    (optzoo.weight_rescaling, {"granularity": "layer"}, ValueError),
    (optzoo.weight_rescaling, {"target_norm": 0.0}, ValueError),
    (optzoo.weight_rescaling, {"every": 0}, ValueError),
    (optzoo.weight_rescaling, {"every": 1.5}, TypeError),
    (optzoo.sphere_sgd, {"learning_rate": -1.0}, ValueError),
    (optzoo.sphere_sgd, {"learning_rate": 0.1, "radius": -2.0}, ValueError),
    (optzoo.sphere_sgd, {"learning_rate": 0.1, "granularity": "tensor"}, ValueError),
    (optzoo.sphere_sgd, {"learning_rate": 0.1, "noninv_learning_rate": -1.0},
     ValueError),
])
def test_bad_hyperparameters(factory, kwargs, exc):
  with pytest.raises(exc, match=list(kwargs)[-1]):
    factory(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: optax.chain(optzoo.sgd(0.1), optzoo.weight_rescaling(every=2)),
    lambda: optzoo.sphere_sgd(0.1, noninv_learning_rate=0.1),
    lambda: optzoo.sphere_sgd(0.1, granularity="filter"),
])
def test_jit_once_dtype_none_leaves(make):
  params = {"k": jnp.ones((3, 2), jnp.bfloat16), "f": jnp.ones((2, 2), jnp.float32),
            "b": jnp.ones(2, jnp.float32), "n": None,
            "s": jnp.asarray(0.5, jnp.float32)}
  grads = jax.tree.map(lambda p: None if p is None else p * 0.1, params,
                       is_leaf=lambda z: z is None)
  tx = make()
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  s = tx.init(params)
  for _ in range(3):
    u, s = step(grads, s, params)
  assert counter.count == 1
  assert u["k"].dtype == jnp.bfloat16 and u["f"].dtype == jnp.float32
  assert u["n"] is None
  new = optax.apply_updates(params, u)
  assert new["k"].dtype == jnp.bfloat16


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(optzoo.sphere_sgd)(learning_rate=0.1)
  params = {"k": jnp.ones((2, 2))}
  u, _ = jax.jit(lambda s: tx.update(params, s, params))(tx.init(params))
  assert u["k"].shape == (2, 2)
