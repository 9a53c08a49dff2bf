"""SVI pseudo-gradients vs explicit NumPy backprop."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optzoo


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_fields(x, y1h, layers):
  """SVI field and true gradient of C*mean((softmax - y)^2) for a tanh MLP.

  layers: list of (W, b). Written from the chain rule, layer by layer.
  """
  hs, zs = [x], []
  for k, (w, b) in enumerate(layers):
    z = hs[-1] @ w + b
    zs.append(z)
    hs.append(_softmax(z) if k == len(layers) - 1 else np.tanh(z))
  p = hs[-1]
  bsz, c = p.shape
  loss = c * np.mean((p - y1h) ** 2)
  d_a = 2.0 * (p - y1h) / bsz                # dL/da_L (C * 1/(B C) * 2)
  svi, true = [None] * len(layers), [None] * len(layers)
  for k in reversed(range(len(layers))):
    w, _ = layers[k]
    h_in, z, a = hs[k], zs[k], hs[k + 1]
    svi[k] = (h_in.T @ d_a, d_a.sum(0))       # own activation derivative dropped
    if k == len(layers) - 1:
      d_z = a * (d_a - np.sum(d_a * a, axis=-1, keepdims=True))   # softmax VJP
    else:
      d_z = d_a * (1.0 - a ** 2)                                # tanh'
    true[k] = (h_in.T @ d_z, d_z.sum(0))
    d_a = d_z @ w.T                           # true cotangent for earlier layers
  return loss, svi, true


@pytest.mark.parametrize("widths", [(6, 4), (7, 5, 4)])
def test_svi_field_matches_numpy_backprop(widths):
  rng = np.random.default_rng(0)
  bsz, d = 9, 5
  x = rng.normal(size=(bsz, d))
  labels = rng.integers(0, widths[-1], size=bsz)
  y1h = np.eye(widths[-1])[labels]
  model = optzoo.SVIMLP(widths, activation=nn.tanh)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x))
  # Non-zero biases so every term is exercised.
  variables = jax.tree.map(lambda v: v + 0.1 * rng.normal(size=v.shape), variables)
  names = [f"SVIDense_{k}" for k in range(len(widths))]
  layers = [(np.asarray(variables["params"][n]["kernel"]),
             np.asarray(variables["params"][n]["bias"])) for n in names]
  loss, svi, true = _numpy_fields(x, y1h, layers)

  got_loss, field = optzoo.svi_gradients(model.apply, variables, (jnp.asarray(x), labels))
  np.testing.assert_allclose(float(got_loss), loss, rtol=1e-12)
  grad = jax.grad(lambda v: optzoo.svi_mse_loss(model.apply(v, x, svi=False), labels))(variables)
  for k, n in enumerate(names):
    np.testing.assert_allclose(field["params"][n]["kernel"], svi[k][0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(field["params"][n]["bias"], svi[k][1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grad["params"][n]["kernel"], true[k][0], rtol=1e-10, atol=1e-14)
    # The field is not the gradient (the test could fail if phi' were kept).
    assert np.max(np.abs(svi[k][0] - true[k][0])) > 1e-3 * np.max(np.abs(true[k][0]))
  # Forward values are identical with and without the SVI backward pass.
  np.testing.assert_array_equal(np.asarray(model.apply(variables, x, svi=True)),
                                np.asarray(model.apply(variables, x, svi=False)))


def test_single_layer_is_the_glm_field():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 3))
  y = rng.uniform(size=(8, 1))
  layer = optzoo.SVIDense(1, activation=jax.nn.sigmoid)
  v = layer.init(jax.random.PRNGKey(1), x)
  w, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
  loss_fn = lambda out, t: jnp.mean(0.5 * (out - t) ** 2)
  _, f = optzoo.svi_gradients(lambda p, xx, svi: layer.apply(p, xx, svi=svi), v, (x, y),
                              loss_fn=loss_fn)
  resid = 1.0 / (1.0 + np.exp(-(x @ w + b))) - y           # phi(eta^T theta) - y
  np.testing.assert_allclose(f["params"]["kernel"], x.T @ resid / 8, rtol=1e-12)
  np.testing.assert_allclose(f["params"]["bias"], resid.sum(0) / 8, rtol=1e-12)


def test_svi_field_is_not_conservative():
  """The Jacobian of the field is not symmetric, so F is no loss's gradient."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(6, 3))
  labels = rng.integers(0, 3, size=6)
  model = optzoo.SVIMLP((4, 3), activation=nn.tanh)
  v = model.init(jax.random.PRNGKey(2), x)
  flat, unravel = jax.flatten_util.ravel_pytree(v)

  @jax.jit
  def field(theta):
    return jax.flatten_util.ravel_pytree(
        optzoo.svi_gradients(model.apply, unravel(theta), (x, labels))[1])[0]

  # Central differences: the field's own derivatives are not available by AD
  # (SVIDense uses stop_gradient to drop phi').
  h = 1e-6
  eye = np.eye(flat.size)
  j = np.stack([(np.asarray(field(flat + h * e)) - np.asarray(field(flat - h * e))) / (2 * h)
                for e in eye], axis=1)
  assert np.max(np.abs(j - j.T)) > 1e-2 * np.max(np.abs(j))
  j_true = np.asarray(jax.hessian(
      lambda t: optzoo.svi_mse_loss(model.apply(unravel(t), x, svi=False), labels))(flat))
  np.testing.assert_allclose(j_true, j_true.T, atol=1e-10)


def test_svi_bad_input():
  with pytest.raises(TypeError, match="apply_fn"):
    optzoo.svi_gradients(None, {}, (np.ones((1, 1)), np.zeros(1)))
