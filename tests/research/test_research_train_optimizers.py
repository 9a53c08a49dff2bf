"""Each research optimizer drops into a standard loop and trains a Flax MLP on digits.

sklearn digits (10 classes, chance = 10 %), float32, a few hundred steps.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import optzoo

STEPS = 300
BATCH = 64


@pytest.fixture(scope="module")
def digits():
  d = load_digits()
  x = (d.data / 16.0).astype(np.float32)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  return (x[:1400], y[:1400]), (x[1400:], y[1400:])


class MLP(nn.Module):
  normalized: bool = False   # LayerNorm after the hidden kernel (scale-invariant)

  @nn.compact
  def __call__(self, x):
    if self.normalized:
      h = nn.Dense(32, use_bias=False, name="hidden")(x)
      h = nn.LayerNorm(use_scale=False, use_bias=False)(h)
    else:
      h = nn.Dense(32, name="hidden")(x)
    return nn.Dense(10, name="head")(nn.relu(h))


def _train(tx, digits, extra="none", normalized=False, seed=0):
  (xtr, ytr), (xte, yte) = digits
  model = MLP(normalized=normalized)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 64), jnp.float32))[
      "params"]
  idx = np.random.default_rng(seed).integers(0, len(xtr), size=(STEPS, BATCH))
  xs, ys = jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx])

  def per_example(p, x, y):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  def body(carry, batch):
    p, s = carry
    x, y = batch
    if extra == "input_power":
      def loss_fn(q):
        logits, power = optzoo.collect_input_power(model, {"params": q}, x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y).mean(), power
      (loss, power), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      kw = {"input_power": power}
    elif extra == "per_example_grads":
      peg = optzoo.per_example_grads(
          lambda q, ex: per_example(q, ex[0][None], ex[1][None])[0], p, (x, y))
      g = jax.tree.map(lambda a: a.mean(0), peg)
      loss = per_example(p, x, y).mean()
      kw = {"per_example_grads": peg}
    else:
      losses, vjp = jax.vjp(lambda q: per_example(q, x, y), p)
      loss = losses.mean()
      (g,) = vjp(jnp.full_like(losses, 1.0 / losses.shape[0]))
      kw = optzoo.koala_loss_stats(losses) if extra == "loss" else {}
    u, s = tx.update(g, s, p, **kw)
    p = optax.apply_updates(p, u)
    return (p, s), loss

  (params, _), losses = jax.jit(lambda c: jax.lax.scan(body, c, (xs, ys)))(
      (params, tx.init(params)))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  logits = model.apply({"params": params}, jnp.asarray(xte))
  acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(yte)))
  return acc, np.asarray(losses), params


CASES = {
    "koala_v": (lambda: optzoo.koala(0.5), "loss", False),
    "koala_m": (lambda: optzoo.koala(0.5, variant="momentum"), "loss", False),
    "nsgd": (lambda: optzoo.nsgd(2.0, weight_decay=5e-4), "input_power", False),
    "nsgd_code": (lambda: optzoo.nsgd(0.05, mode="log_power"), "input_power",
                  False),
    "wrs": (lambda: optax.chain(
        optzoo.sgd(0.1, momentum=0.9),
        optzoo.weight_rescaling(
            mask={"hidden": {"kernel": True}, "head": {"kernel": False,
                                                       "bias": False}},
            granularity="filter")), "none", True),
    "sphere_sgd": (lambda: optzoo.sphere_sgd(
        0.02, mask={"hidden": {"kernel": True},
                    "head": {"kernel": False, "bias": False}},
        noninv_learning_rate=0.1), "none", True),
    "mbf": (lambda: optzoo.mini_block_fisher(0.05, damping=1e-2),
            "per_example_grads", False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_trains_digits(name, digits):
  make, extra, normalized = CASES[name]
  acc, losses, params = _train(make(), digits, extra=extra,
                               normalized=normalized)
  assert np.isfinite(losses).all()
  assert losses[-30:].mean() < 0.5 * losses[:10].mean(), name
  assert acc > 0.7, (name, acc)       # chance is 0.1
  if name == "wrs":
    np.testing.assert_allclose(
        np.linalg.norm(params["hidden"]["kernel"], axis=0), 1.0, rtol=1e-5)
