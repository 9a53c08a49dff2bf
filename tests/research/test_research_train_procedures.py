"""Research methods that change the training procedure (inner loops, replicas,
masks, initialization, growth) each train a small Flax model on sklearn digits.

float32, tiny MLPs, a few hundred steps; chance is 10 %, every method must
reach a clear margin above it on the held-out split.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optzoo

MIN_ACC = 0.75   # chance = 0.10


@functools.lru_cache(maxsize=1)
def _data():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(0)
  idx = rng.permutation(len(y))
  x = (x[idx] / 16.0).astype(np.float32)
  y = y[idx].astype(np.int32)
  return x[:1400], y[:1400], x[1400:], y[1400:]


def _batches(steps, bs=128, seed=0, k=1):
  """(steps, k, bs) minibatch indices."""
  xtr, _, _, _ = _data()
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, len(xtr), size=(steps, k, bs)))


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _acc(apply, params):
  _, _, xte, yte = _data()
  return float(np.mean(np.argmax(np.asarray(apply(params, xte)), -1) == yte))


class MLP(nn.Module):
  width: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(self.width)(x))
    return nn.Dense(10)(x)


def _train(model, tx, steps=300, params=None, seed=0, lr_extra=None):
  xtr, ytr, _, _ = _data()
  xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
  if params is None:
    params = model.init(jax.random.PRNGKey(seed), xtr[:2])
  idx = _batches(steps, seed=seed)[:, 0]
  loss = lambda p, i: _xent(model.apply(p, xtr[i]), ytr[i])

  def body(carry, i):
    p, s = carry
    g = jax.grad(loss)(p, i)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, idx))((params, tx.init(params)))
  return params


def test_entropy_sgd_trains_digits():
  xtr, ytr, _, _ = _data()
  xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
  model = MLP()
  params = model.init(jax.random.PRNGKey(0), xtr[:2])
  inner, outer = 5, 60
  idx = _batches(outer, k=inner)
  tx = optzoo.entropy_sgd(0.5, num_inner_steps=inner, inner_learning_rate=0.1,
                          gamma=0.03)
  loss = lambda p, i: _xent(model.apply(p, xtr[i]), ytr[i])

  def body(carry, ib):
    p, s = carry
    grad_fn = lambda q, i: jax.grad(loss)(q, ib[i])
    u, s = tx.update(grad_fn(p, 0), s, p, grad_fn=grad_fn)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, idx))((params, tx.init(params)))
  assert _acc(model.apply, params) > MIN_ACC


def test_replicated_sgd_trains_digits():
  xtr, ytr, _, _ = _data()
  xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
  model = MLP()
  y = 3
  params = optzoo.replicate_params(model.init(jax.random.PRNGKey(0), xtr[:2]), y,
                                   key=jax.random.PRNGKey(1), noise=0.05)
  tx = optzoo.replicated_sgd(0.3, gamma=0.1, gamma_scoping=2e-3, momentum=0.9)
  idx = _batches(250, k=y)
  loss = lambda p, i: _xent(model.apply(p, xtr[i]), ytr[i])

  def body(carry, ib):
    p, s = carry
    g = jax.vmap(jax.grad(loss))(p, ib)       # each replica its own minibatch
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, idx))((params, tx.init(params)))
  center = optzoo.replicated_center(params, state)
  assert _acc(model.apply, center) > MIN_ACC


def test_svi_trains_digits():
  xtr, ytr, _, _ = _data()
  xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
  model = optzoo.SVIMLP((32, 10), activation=nn.tanh)
  params = model.init(jax.random.PRNGKey(0), xtr[:2])
  tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
  idx = _batches(300)[:, 0]

  def body(carry, i):
    p, s = carry
    _, f = optzoo.svi_gradients(model.apply, p, (xtr[i], ytr[i]))
    u, s = tx.update(f, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, idx))((params, tx.init(params)))
  assert _acc(lambda p, x: model.apply(p, x, svi=False), params) > MIN_ACC


class MaskedMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(optzoo.MaskedDense(32)(x))
    return optzoo.MaskedDense(10)(x)


def test_sparse_connectivity_trains_digits_sparsely():
  model = MaskedMLP()
  tx = optzoo.sparse_connectivity(0.1, mask_learning_rate=0.01, count_penalty=0.3)
  params = _train(model, tx, steps=300)
  total = 64 * 32 + 32 * 10
  n = int(optzoo.connection_count(params))
  assert n < 0.8 * total, n
  assert _acc(model.apply, params) > MIN_ACC


class DeepMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(4):
      x = nn.tanh(nn.Dense(32, kernel_init=nn.initializers.normal(1.0))(x))
    return nn.Dense(10, kernel_init=nn.initializers.normal(1.0))(x)


def test_gradinit_then_sgd_trains_digits():
  xtr, ytr, _, _ = _data()
  model = DeepMLP()
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(xtr[:2]))
  rng = np.random.default_rng(5)
  batches = [(jnp.asarray(xtr[i]), jnp.asarray(ytr[i]))
             for i in rng.integers(0, len(xtr), size=(90, 64))]
  loss_fn = lambda p, b: _xent(model.apply(p, b[0]), b[1])
  res = optzoo.gradinit(loss_fn, params, batches, num_iters=30, learning_rate=0.05)
  tx = optax.sgd(0.1, momentum=0.9)
  trained = _train(model, tx, steps=300, params=res.params)
  assert _acc(model.apply, trained) > MIN_ACC


def test_gradmax_growth_then_training_digits():
  xtr, ytr, _, _ = _data()
  xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
  small, wide = MLP(8), MLP(16)
  tx = optax.adam(1e-2)
  params = small.init(jax.random.PRNGKey(0), xtr[:2])["params"]
  state = tx.init(params)

  def run(model, p, s, steps, seed):
    idx = _batches(steps, seed=seed)[:, 0]
    loss = lambda q, i: _xent(model.apply({"params": q}, xtr[i]), ytr[i])

    def body(c, i):
      q, st = c
      u, st = tx.update(jax.grad(loss)(q, i), st, q)
      return (optax.apply_updates(q, u), st), None
    (p, s), _ = jax.jit(lambda c: jax.lax.scan(body, c, idx))((p, s))
    return p, s

  params, state = run(small, params, state, 100, 0)
  loss_fn = lambda q, b: _xent(small.apply({"params": q}, b[0]), b[1])
  res = optzoo.gradmax_grow(loss_fn, params, (xtr[:128], ytr[:128]), layer="Dense_0",
                            next_layer="Dense_1", k=8, opt_state=state)
  np.testing.assert_allclose(wide.apply({"params": res.params}, xtr[:64]),
                             small.apply({"params": params}, xtr[:64]), atol=1e-5)
  params, state = run(wide, res.params, res.opt_state, 150, 1)
  assert _acc(lambda p, x: wide.apply({"params": p}, x), params) > MIN_ACC


class WNMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.WeightNorm(nn.Dense(32))(x))
    return nn.WeightNorm(nn.Dense(10))(x)


def test_weightnorm_data_init_then_sgd_trains_digits():
  xtr, _, _, _ = _data()
  model = WNMLP()
  v = model.init(jax.random.PRNGKey(0), jnp.asarray(xtr[:2]))
  v = optzoo.weightnorm_data_init(model.apply, v, jnp.asarray(xtr[:256]))
  trained = _train(model, optax.sgd(0.1, momentum=0.9), steps=300, params=v)
  assert _acc(model.apply, trained) > MIN_ACC
