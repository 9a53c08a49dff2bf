"""The LR range test (optzoo.lr_range_test) on a Flax MLP with sklearn digits."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


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
                             min_learning_rate=1e-5, max_learning_rate=10.0, num_steps=100)
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
                             optimizer=optax.sgd, min_learning_rate=1e-4, max_learning_rate=100.0,
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
    (dict(min_learning_rate=0.0), ValueError, "min_learning_rate"),
    (dict(max_learning_rate=1e-9), ValueError, "max_learning_rate"),
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
