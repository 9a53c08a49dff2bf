"""NSGD: NumPy re-derivation (manual backprop MLP), invariance, Flax helper."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter, max_rel_err

STEPS = 200


class MLP(nn.Module):
  hidden: int = 8

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Dense(self.hidden, name="l1")(x))
    return nn.Dense(3, name="l2")(h)


def _data(seed=0, n=64, d=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.array([1.0, 2.0, 0.5, 3.0, 1.0])[:d]
  y = rng.integers(0, 3, size=n)
  idx = rng.integers(0, n, size=(STEPS, 16))
  return x, y, idx


def _init_params(d=5, seed=0):
  p = MLP().init(jax.random.key(seed), jnp.zeros((1, d)))["params"]
  return jax.tree.map(lambda a: np.asarray(a, np.float64), p)


# ---------------------------------------------------------------------------
# Independent NumPy oracle: forward/backward by hand, optimizer by hand.
# ---------------------------------------------------------------------------


def _np_forward_backward(p, xb, yb):
  w1, b1 = p["l1"]["kernel"], p["l1"]["bias"]
  w2, b2 = p["l2"]["kernel"], p["l2"]["bias"]
  a = xb @ w1 + b1
  h = np.tanh(a)
  z = h @ w2 + b2
  z = z - z.max(axis=1, keepdims=True)
  prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  onehot = np.eye(3)[yb]
  dz = (prob - onehot) / len(xb)
  grads = {"l2": {"kernel": h.T @ dz, "bias": dz.sum(0)}}
  da = (dz @ w2.T) * (1 - h ** 2)
  grads["l1"] = {"kernel": xb.T @ da, "bias": da.sum(0)}
  return grads, {"l1": xb, "l2": h}


def _np_power(inp, norm, standardize):
  x = inp
  if standardize:
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, ddof=1, keepdims=True)
    x = (x - mean) / np.maximum(std, 0.01)
  if norm == "l1":
    return np.mean(np.abs(x).sum(axis=1))
  return np.mean((x ** 2).sum(axis=1))


def _np_nsgd(p0, x, y, idx, lr, momentum, wd, nesterov=False, mode="nlms",
             eps=1e-8, norm="l2", standardize=False, accum=None, floor=0.01):
  p = jax.tree.map(np.copy, p0)
  buf, pacc = {}, {"l1": 0.0, "l2": 0.0}
  traj = []
  for t in range(STEPS):
    xb, yb = x[idx[t]], y[idx[t]]
    grads, inputs = _np_forward_backward(p, xb, yb)
    for layer in ("l1", "l2"):
      power = _np_power(inputs[layer], norm, standardize)
      if accum == "leaky_sum":
        pacc[layer] = momentum * pacc[layer] + power
      else:
        pacc[layer] = power
      for name in ("kernel", "bias"):
        d = grads[layer][name] + wd * p[layer][name]
        key = (layer, name)
        buf[key] = d.copy() if t == 0 else momentum * buf[key] + d
        direction = d + momentum * buf[key] if nesterov else buf[key]
        if name == "kernel":
          if mode == "nlms":
            direction = direction / (eps + pacc[layer])
          elif mode == "log_power":
            direction = direction / max(np.log(pacc[layer]), floor)
        p[layer][name] = p[layer][name] - lr * direction
    traj.append(jax.tree.map(np.copy, p))
  return traj


def _optzoo_run(tx, p0, x, y, idx, norm="l2", standardize=False, scale=1.0):
  model = MLP()
  params = jax.tree.map(jnp.asarray, p0)
  xs = jnp.asarray(x[idx]) * scale
  ys = jnp.asarray(y[idx])

  def body(carry, batch):
    p, s = carry
    xb, yb = batch

    def loss_fn(q):
      out, power = optzoo.collect_input_power(
          model, {"params": q}, xb, norm=norm, standardize=standardize)
      loss = optax.softmax_cross_entropy_with_integer_labels(out, yb).mean()
      return loss, power

    (loss, power), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    u, s = tx.update(g, s, p, input_power=power)
    return (optax.apply_updates(p, u), s), (p, loss)

  (_, _), (traj, losses) = jax.jit(
      lambda c: jax.lax.scan(body, c, (xs, ys)))((params, tx.init(params)))
  return traj, np.asarray(losses)


def _compare(traj, ref):
  # traj[t] is the params *before* step t: compare traj[1:] with ref[:-1].
  ours = jax.tree.map(lambda a: np.asarray(a)[1:], traj)
  theirs = jax.tree.map(lambda *a: np.stack(a[:-1]), *ref)
  return max_rel_err(ours, theirs, floor=1e-6)


@pytest.mark.parametrize("cfg", [
    dict(lr=0.5, momentum=0.9, wd=5e-4, norm="l2"),
    dict(lr=0.2, momentum=0.9, wd=1e-3, norm="l1", nesterov=True),
    dict(lr=1.0, momentum=0.0, wd=0.0, norm="l2"),
], ids=["l2", "l1-nesterov", "plain"])
def test_nlms_matches_numpy(cfg):
  x, y, idx = _data(0)
  p0 = _init_params()
  tx = optzoo.nsgd(cfg["lr"], momentum=cfg["momentum"],
                   weight_decay=cfg["wd"], nesterov=cfg.get("nesterov", False))
  traj, losses = _optzoo_run(tx, p0, x, y, idx, norm=cfg["norm"])
  ref = _np_nsgd(p0, x, y, idx, cfg["lr"], cfg["momentum"], cfg["wd"],
                 nesterov=cfg.get("nesterov", False), norm=cfg["norm"])
  assert _compare(traj, ref) < 1e-8
  assert losses[-20:].mean() < 0.9 * losses[:5].mean()  # it trains
  # the normalization matters: plain SGD with the same lr is far away
  ref_sgd = _np_nsgd(p0, x, y, idx, cfg["lr"], cfg["momentum"], cfg["wd"],
                     nesterov=cfg.get("nesterov", False), norm=cfg["norm"],
                     mode="none")
  assert _compare(traj, ref_sgd) > 1e-3


def test_official_code_variant_matches_numpy():
  """mode='log_power' + standardized inputs + leaky sum + clamp (nisgd.py)."""
  x, y, idx = _data(1)
  p0 = _init_params()
  tx = optzoo.nsgd(0.1, momentum=0.9, weight_decay=5e-4, mode="log_power")
  traj, _ = _optzoo_run(tx, p0, x, y, idx, standardize=True)
  ref = _np_nsgd(p0, x, y, idx, 0.1, 0.9, 5e-4, mode="log_power",
                 standardize=True, accum="leaky_sum")
  assert _compare(traj, ref) < 1e-8
  ref_noacc = _np_nsgd(p0, x, y, idx, 0.1, 0.9, 5e-4, mode="log_power",
                       standardize=True, accum=None)
  assert _compare(traj, ref_noacc) > 1e-4


def test_ema_accumulation_and_floor():
  tx = optzoo.scale_by_input_power(mode="log_power", power_accum="ema",
                                   power_decay=0.5, floor=0.3)
  u = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
  s = tx.init(u)
  out, s = tx.update(u, s, input_power={"k": jnp.asarray(1.0), "b": None})
  np.testing.assert_allclose(out["k"], 1.0 / 0.3)  # log(0.5) < floor
  out, s = tx.update(u, s, input_power={"k": jnp.asarray(100.0), "b": None})
  p = 0.5 * 0.5 + 0.5 * 100.0
  np.testing.assert_allclose(out["k"], 1.0 / np.log(p))
  np.testing.assert_allclose(out["b"], 1.0)


# ---------------------------------------------------------------------------
# Defining property: NLMS invariance to the scale of a layer's input.
# ---------------------------------------------------------------------------


def test_invariance_to_input_scaling():
  """Scale the inputs of layer 1 by c and its kernel by 1/c.

  The network function is the same. With ℓ2 NSGD (eps=0, no weight decay)
  the whole training trajectory in function space (the losses, hence the
  predictions) is identical, because the kernel gradient scales by c and
  the input power by c**2. Plain SGD and the ℓ1 variant change.
  """
  x, y, idx = _data(2)
  p0 = _init_params()

  def scaled(c):
    p0c = jax.tree.map(np.copy, p0)
    p0c["l1"]["kernel"] = p0["l1"]["kernel"] / c
    return p0c

  def run(tx, p, scale, norm="l2"):
    return _optzoo_run(tx, p, x, y, idx, norm=norm, scale=scale)[1]

  nsgd = optzoo.nsgd(0.5, momentum=0.9, weight_decay=0.0, eps=0.0)
  base_losses = run(nsgd, p0, 1.0)
  assert base_losses[-20:].mean() < 0.9 * base_losses[:5].mean()
  for c in (10.0, 0.1):
    np.testing.assert_allclose(run(nsgd, scaled(c), c), base_losses,
                               rtol=1e-9)
  c, p0c = 10.0, scaled(10.0)

  sgd = optzoo.sgd(0.05, momentum=0.9)
  assert np.max(np.abs(run(sgd, p0c, c) - run(sgd, p0, 1.0))) > 1e-3
  l1a = run(nsgd, p0, 1.0, norm="l1")
  l1b = run(nsgd, p0c, c, norm="l1")
  assert np.max(np.abs(l1a - l1b)) > 1e-3


# ---------------------------------------------------------------------------
# Flax helper
# ---------------------------------------------------------------------------


class ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    x = nn.Conv(4, (3, 3), feature_group_count=4, name="dw")(x)
    x = x.mean(axis=(1, 2))
    shared = nn.Dense(4, name="shared")
    return shared(shared(x))


def test_collect_input_power_conv_and_shared_layers():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 5, 2))
  model = ConvNet()
  params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x))["params"]
  collect = jax.jit(lambda p, x, standardize: optzoo.collect_input_power(
      model, {"params": p}, x, standardize=standardize), static_argnums=2)
  out, power = collect(params, jnp.asarray(x), False)
  np.testing.assert_allclose(out, jax.jit(model.apply)({"params": params}, x))
  assert power["conv"]["bias"] is None
  # conv: per input channel, sum over positions, batch mean
  np.testing.assert_allclose(power["conv"]["kernel"].reshape(-1),
                             (x ** 2).sum(axis=(1, 2)).mean(0), rtol=1e-12)
  assert power["conv"]["kernel"].shape == (1, 1, 2, 1)
  # depthwise: aligned with the output axis
  h = jax.jit(nn.Conv(4, (3, 3)).apply)({"params": params["conv"]}, x)
  np.testing.assert_allclose(power["dw"]["kernel"].reshape(-1),
                             (np.asarray(h) ** 2).sum(axis=(1, 2)).mean(0),
                             rtol=1e-10)
  assert power["dw"]["kernel"].shape == (1, 1, 1, 4)
  # standardized (code) variant, per sample and channel
  _, pstd = collect(params, jnp.asarray(x), True)
  xs = x.reshape(3, 25, 2)
  z = (xs - xs.mean(1, keepdims=True)) / np.maximum(
      xs.std(1, ddof=1, keepdims=True), 0.01)
  np.testing.assert_allclose(pstd["conv"]["kernel"].reshape(-1),
                             (z ** 2).sum(1).mean(0), rtol=1e-10)
  # a layer used twice gets the mean of its two input powers
  assert power["shared"]["kernel"].shape == ()


def test_missing_input_power_error():
  params = {"k": jnp.ones((2, 2))}
  tx = optzoo.nsgd(0.1)
  with pytest.raises(ValueError, match=r"`input_power`.*collect_input_power"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("kwargs, exc", [
    ({"learning_rate": -0.1}, ValueError), ({"momentum": 1.0}, ValueError),
    ({"weight_decay": -1.0}, ValueError), ({"mode": "l3"}, ValueError),
    ({"power_accum": "sum"}, ValueError), ({"floor": -1.0}, ValueError),
    ({"eps": -1.0}, ValueError), ({"momentum": "x"}, TypeError),
])
def test_bad_hyperparameters(kwargs, exc):
  with pytest.raises(exc, match=list(kwargs)[0]):
    optzoo.nsgd(**kwargs)


def test_bad_helper_args():
  with pytest.raises(ValueError, match="norm"):
    optzoo.collect_input_power(MLP(), {"params": _init_params()},
                               jnp.ones((1, 5)), norm="l3")


@pytest.mark.parametrize("mode", ["nlms", "log_power"])
def test_jit_once_dtype_none_leaves(mode):
  params = {"k": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.ones(2, jnp.float32),
            "n": None, "s": jnp.asarray(0.5, jnp.float32)}
  grads = jax.tree.map(lambda p: None if p is None else p * 0.1, params,
                       is_leaf=lambda z: z is None)
  power = {"k": jnp.asarray(3.0, jnp.float32), "b": None, "n": None,
           "s": None}
  tx = optzoo.nsgd(0.1, mode=mode)
  counter = TraceCounter(lambda g, s, p, w: tx.update(g, s, p, input_power=w,
                                                      other=1))
  step = jax.jit(counter)
  s = tx.init(params)
  for _ in range(3):
    u, s = step(grads, s, params, power)
  assert counter.count == 1
  assert u["k"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.float32
  assert u["n"] is None


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(optzoo.nsgd)(learning_rate=0.1, momentum=0.9)
  params = {"k": jnp.ones((2, 2))}
  s = tx.init(params)
  u, _ = jax.jit(lambda s: tx.update(params, s, params,
                                     input_power={"k": 2.0}))(s)
  assert u["k"].shape == (2, 2)
