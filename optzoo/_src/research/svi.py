"""SVI: training networks through a monotone variational inequality.

Xu, Cheng and Xie, "An alternative approach to train neural networks using
monotone variational inequality" (arXiv 2202.08876); official notebooks
``hamrel-cxu/SVI-NN-training``. The SVI field of layer ``l`` is ordinary
backprop with only that layer's own activation derivative dropped:

    F_l = J_{theta_l}(z_l)^T  dL/da_l,   a_l = phi_l(z_l),

while the cotangent dL/da_l keeps the true derivatives of all later layers.
:class:`SVIDense` implements this as a reparameterization whose forward value
is exactly ``phi(x @ W + b)`` and whose ``jax.grad`` is the SVI field, so any
optax optimizer can consume it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optzoo._src import registry

__all__ = ["SVIDense", "SVIMLP", "svi_gradients", "svi_mse_loss"]

_sg = jax.lax.stop_gradient


class SVIDense(nn.Module):
  """A Dense layer followed by its activation, with the SVI backward pass.

  Forward: ``activation(x @ kernel + bias)`` (bit-identical to the plain
  layer). Backward with ``svi=True``: the parameters receive
  :math:`J_\\theta(z)^T \\bar a` (the activation's derivative is dropped for
  this layer's own parameters), while the input ``x`` receives the true
  cotangent :math:`J_x(z)^T (\\phi'(z) \\odot \\bar a)`, so earlier layers see
  exact derivatives of everything after them. With ``svi=False`` it is an
  ordinary ``Dense`` + activation.

  The field itself must not be differentiated again by AD (``stop_gradient``
  blocks higher-order derivatives); use finite differences for that.

  Attributes:
    features: output width.
    activation: the layer's monotone activation φ (the GLM link); the output
      layer of a classifier uses ``jax.nn.softmax``.
    use_bias: add a bias.
    svi: default mode (overridable per call).
  """

  features: int
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  use_bias: bool = True
  svi: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, svi: Optional[bool] = None) -> jax.Array:
    svi = self.svi if svi is None else svi
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        jnp.result_type(x))
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.result_type(x))
            if self.use_bias else None)

    def affine(xx, k, b):
      z = xx @ k
      return z + b if b is not None else z

    if not svi:
      return self.activation(affine(x, kernel, bias))
    b_sg = None if bias is None else _sg(bias)
    through_input = self.activation(affine(x, _sg(kernel), b_sg))
    param_path = affine(_sg(x), kernel, bias)
    return through_input + (param_path - _sg(param_path))


class SVIMLP(nn.Module):
  """An MLP of :class:`SVIDense` layers (hidden ``activation``, softmax output).

  ``model.apply(variables, x, svi=True)`` returns class probabilities; pair it
  with :func:`svi_mse_loss` (the official code's loss) and take ``jax.grad``
  (or :func:`svi_gradients`) to get the SVI field.
  """

  features: Sequence[int]
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  output_activation: Callable[[jax.Array], jax.Array] = nn.softmax

  @nn.compact
  def __call__(self, x: jax.Array, svi: bool = True) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for f in self.features[:-1]:
      x = SVIDense(f, self.activation)(x, svi=svi)
    return SVIDense(self.features[-1], self.output_activation)(x, svi=svi)


def svi_mse_loss(probs: jax.Array, labels: jax.Array) -> jax.Array:
  """``num_classes * mean((probs - onehot)^2)``: the official code's SVI loss.

  ``labels`` are integer classes or one-hot rows.
  """
  c = probs.shape[-1]
  if labels.ndim == probs.ndim - 1:
    labels = jax.nn.one_hot(labels, c, dtype=probs.dtype)
  return c * jnp.mean((probs - labels) ** 2)


@registry.register(
    family="research",
    summary="SVI pseudo-gradient of an SVIDense/SVIMLP model (each layer's own activation derivative dropped).",
    paper="Xu, Cheng & Xie, An alternative approach to train neural networks using monotone variational inequality, arXiv 2202.08876",
    reference="explicit NumPy backprop of a 2-layer MLP (tests); hamrel-cxu/SVI-NN-training",
    verified="NumPy backprop of a 2-layer MLP (tests/research/test_svi.py)",
    kind="utility",
)
def svi_gradients(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    batch: Any,
    loss_fn: Callable[[jax.Array, Any], jax.Array] = svi_mse_loss,
) -> tuple[jax.Array, Any]:
  r"""The monotone-VI pseudo-gradient ("SVI field") and the loss.

  .. math::

    F_l(\theta) = J_{\theta_l}(z_l)^\top \frac{\partial L}{\partial a_l},
    \qquad a_l = \phi_l(z_l)

  i.e. backprop in which each layer's parameters skip that layer's own
  activation derivative :math:`\phi_l'(z_l)` (later layers' derivatives are
  kept). For a single layer with link φ and the squared loss this is the
  Juditsky–Nemirovski GLM field :math:`\eta(x)(\phi(\eta(x)^\top\theta) - y)`.
  Feed the result to any optax optimizer (the paper: SGD lr 1e-3, Nesterov
  momentum 0.95, or Adam 1e-3).

  .. warning:: :math:`F` is **not the gradient of any loss** (its Jacobian is
     not symmetric); the returned loss is only for monitoring.

  Args:
    apply_fn: ``apply_fn(params, x, svi=True) -> outputs`` of a model built
      from :class:`SVIDense` layers, e.g. ``SVIMLP(...).apply``. The output
      layer must include its link (softmax for classification).
    params: the variables passed to ``apply_fn`` (e.g. ``{"params": ...}``).
    batch: ``(x, y)``.
    loss_fn: ``loss_fn(outputs, y)``; default :func:`svi_mse_loss`.

  Returns:
    ``(loss, field)`` with ``field`` shaped like ``params``.

  References:
    Xu, Cheng & Xie, `An alternative approach to train neural networks using
    monotone variational inequality <https://arxiv.org/abs/2202.08876>`_.
  """
  if not callable(apply_fn):
    raise TypeError("`apply_fn` must be a callable apply_fn(params, x, svi=True),"
                    f" got {type(apply_fn).__name__}.")
  x, y = batch
  return jax.value_and_grad(lambda p: loss_fn(apply_fn(p, x, svi=True), y))(params)
