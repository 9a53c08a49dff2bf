"""Weight normalization data-dependent init."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optzoo


class WNNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nn.tanh(nn.WeightNorm(nn.Dense(16))(x))
    x = nn.relu(nn.WeightNorm(nn.Dense(12))(x))
    return nn.WeightNorm(nn.Dense(10))(x)


class WNConv(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.WeightNorm(nn.Conv(6, (3, 3)))(x))
    x = x.reshape((x.shape[0], -1))
    return nn.WeightNorm(nn.Dense(5, use_bias=False))(x)


def _wn_outputs(model, variables, x):
  outs = []

  def interceptor(next_fun, a, kw, ctx):
    y = next_fun(*a, **kw)
    if ctx.method_name == "__call__" and isinstance(ctx.module, nn.WeightNorm):
      outs.append(np.asarray(y))
    return y

  with nn.intercept_methods(interceptor):
    model.apply(variables, x)
  return outs


def _digits(n=256, seed=0):
  from sklearn.datasets import load_digits
  x, _ = load_digits(return_X_y=True)
  rng = np.random.default_rng(seed)
  return jnp.asarray(x[rng.choice(len(x), n, replace=False)] / 16.0)


def test_data_init_standardizes_every_layer_in_forward_order():
  x = _digits()
  model = WNNet()
  v0 = model.init(jax.random.PRNGKey(0), x)
  v0 = jax.tree.map(lambda a: a.astype(jnp.float64), v0)
  before = _wn_outputs(model, v0, x)
  assert max(abs(np.std(o, 0) - 1).max() for o in before) > 0.1   # not already standard
  v = optzoo.weightnorm_data_init(model.apply, v0, x)
  assert jax.tree.structure(v) == jax.tree.structure(v0)
  layers = optzoo.weightnorm_layers(model.apply, v0, x)
  assert [l[0] for l in layers] == [("WeightNorm_0",), ("WeightNorm_1",), ("WeightNorm_2",)]
  assert [l[1] for l in layers] == [("Dense_0",), ("Dense_1",), ("Dense_2",)]
  for o in _wn_outputs(model, v, x):
    np.testing.assert_allclose(o.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(o.std(0), 1.0, rtol=1e-5)
  # Directions v are untouched; only g and b changed.
  np.testing.assert_array_equal(v["params"]["Dense_1"]["kernel"], v0["params"]["Dense_1"]["kernel"])
  # On another batch from the same data the statistics are close to standard.
  other = _wn_outputs(model, v, _digits(seed=1))[0]
  assert abs(other.mean(0)).max() < 0.5 and abs(other.std(0) - 1).max() < 0.5


def test_data_init_conv_per_channel_and_no_bias_and_scale():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 6, 6, 2)) * 3.0 + 1.0)
  model = WNConv()
  v0 = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(1), x))
  v = optzoo.weightnorm_data_init(model.apply, v0, x, init_scale=2.0)
  conv_out, dense_out = _wn_outputs(model, v, x)
  np.testing.assert_allclose(conv_out.mean((0, 1, 2)), 0.0, atol=1e-10)
  np.testing.assert_allclose(conv_out.std((0, 1, 2)), 2.0, rtol=1e-5)
  np.testing.assert_allclose(dense_out.std(0), 2.0, rtol=1e-5)     # no bias: std only


def test_weightnorm_bad_input():
  with pytest.raises(ValueError, match="init_scale"):
    optzoo.weightnorm_data_init(lambda v, x: x, {"params": {}}, jnp.ones(2), init_scale=0.0)
  with pytest.raises(TypeError, match="apply_fn"):
    optzoo.weightnorm_data_init(None, {"params": {}}, jnp.ones(2))
