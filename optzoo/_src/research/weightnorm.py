"""Weight normalization with data-dependent initialization (Salimans & Kingma, NeurIPS 2016).

Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to
Accelerate Training of Deep Neural Networks", NeurIPS 2016. The
reparameterization itself is ``flax.linen.WeightNorm``; this module adds the
paper's data-dependent initialization of the scale ``g`` and bias ``b``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optzoo._src import registry
from optzoo._src import validation

__all__ = ["weightnorm_data_init", "weightnorm_layers"]


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _set(tree[path[0]], path[1:], value)
  return out


def weightnorm_layers(apply_fn: Callable[..., Any], variables: Any, *args: Any,
                      **kwargs: Any) -> list[tuple[tuple, tuple]]:
  """``(weightnorm_path, wrapped_layer_path)`` of every ``nn.WeightNorm`` call, in forward order."""
  found: list[tuple[tuple, tuple]] = []
  stack: list[list] = []

  def interceptor(next_fun, a, kw, context):
    mod = context.module
    if context.method_name != "__call__" or mod.path is None:
      return next_fun(*a, **kw)
    path = tuple(mod.path)
    if isinstance(mod, nn.WeightNorm):
      stack.append([path, None])
      try:
        return next_fun(*a, **kw)
      finally:
        wn_path, inner = stack.pop()
        if inner is not None and all(f[0] != wn_path for f in found):
          found.append((wn_path, inner))
    if stack and stack[-1][1] is None:
      stack[-1][1] = path
    return next_fun(*a, **kw)

  with nn.intercept_methods(interceptor):
    apply_fn(variables, *args, **kwargs)
  return found


def _capture_output(apply_fn, variables, target, args, kwargs):
  out = {}

  def interceptor(next_fun, a, kw, context):
    y = next_fun(*a, **kw)
    mod = context.module
    if (context.method_name == "__call__" and mod.path is not None
        and tuple(mod.path) == target and isinstance(mod, nn.WeightNorm)
        and "y" not in out):
      out["y"] = y
    return y

  with nn.intercept_methods(interceptor):
    apply_fn(variables, *args, **kwargs)
  return out["y"]


@registry.register(
    family="research",
    summary="Data-dependent init of flax.linen.WeightNorm layers: per-unit zero-mean, unit-std pre-activations.",
    paper="Salimans & Kingma, Weight Normalization, NeurIPS 2016",
    reference="definition; tests check per-unit mean 0 / std 1 of every WN layer's output",
    kind="utility",
)
def weightnorm_data_init(
    apply_fn: Callable[..., Any],
    variables: Any,
    x: Any,
    *args: Any,
    eps: float = 1e-8,
    init_scale: float = 1.0,
    **kwargs: Any,
) -> Any:
  r"""Data-dependent initialization of every ``flax.linen.WeightNorm`` layer.

  For each weight-normalized layer, in forward order (so later layers see the
  already initialized earlier ones), with :math:`t = v\cdot x/\lVert v\rVert`
  the layer's output at :math:`g = 1, b = 0` on the batch ``x``:

  .. math::

    g \leftarrow \frac{s}{\sqrt{\sigma^2[t] + \epsilon}}, \qquad
    b \leftarrow -\mu[t]\, g

  per output unit (statistics over every axis but the last, the feature axis),
  with ``s = init_scale``. Afterwards the layer's pre-activations on ``x`` have
  mean 0 and standard deviation ``s`` per unit. The direction :math:`v` is
  kept as initialized (its scale does not matter; the paper samples
  :math:`v \sim \mathcal N(0, 0.05^2)`). Layers without a bias only get ``g``.

  Args:
    apply_fn: ``model.apply``.
    variables: the model's variables (``{"params": ...}``).
    x: one data batch (the paper uses a single minibatch).
    *args, **kwargs: more arguments for ``apply_fn``.
    eps: added to the variance.
    init_scale: target standard deviation ``s``.

  Returns:
    New variables (same structure) with the WN scales and biases set.

  Example::

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.WeightNorm(nn.Dense(64))(x))
        return nn.WeightNorm(nn.Dense(10))(x)

    variables = Net().init(key, x)
    variables = optzoo.weightnorm_data_init(Net().apply, variables, x)

  References:
    Salimans & Kingma, `Weight Normalization: A Simple Reparameterization to
    Accelerate Training of Deep Neural Networks
    <https://arxiv.org/abs/1602.07868>`_, NeurIPS 2016.
  """
  validation.check_nonneg("eps", eps)
  validation.check_positive("init_scale", init_scale)
  if not callable(apply_fn):
    raise TypeError("`apply_fn` must be callable (e.g. model.apply).")
  variables = jax.tree.map(lambda a: a, variables)  # shallow copy of the containers
  if hasattr(variables, "unfreeze"):
    variables = variables.unfreeze()
  for wn_path, inner_path in weightnorm_layers(apply_fn, variables, x, *args, **kwargs):
    wn_params = _get(variables["params"], wn_path)
    keys = [k for k in wn_params if k.endswith("kernel/scale")]
    if len(keys) != 1:
      raise ValueError(f"weightnorm_data_init: WeightNorm {'/'.join(wn_path)} must"
                       " normalize exactly one kernel (variable_filter={'kernel'}).")
    scale_key = keys[0]
    inner = _get(variables["params"], inner_path)
    has_bias = "bias" in inner
    ones = jnp.ones_like(wn_params[scale_key])
    wn_new = dict(wn_params)
    wn_new[scale_key] = ones
    variables["params"] = _set(variables["params"], wn_path, wn_new)
    if has_bias:
      inner_new = dict(inner)
      inner_new["bias"] = jnp.zeros_like(inner["bias"])
      variables["params"] = _set(variables["params"], inner_path, inner_new)
    t = _capture_output(apply_fn, variables, wn_path, (x,) + args, kwargs)
    axes = tuple(range(t.ndim - 1))
    mu = jnp.mean(t, axis=axes)
    var = jnp.var(t, axis=axes)
    g = init_scale / jnp.sqrt(var + eps)
    wn_new[scale_key] = g.astype(ones.dtype).reshape(ones.shape)
    variables["params"] = _set(variables["params"], wn_path, wn_new)
    if has_bias:
      inner_new["bias"] = (-mu * g).astype(inner["bias"].dtype)
      variables["params"] = _set(variables["params"], inner_path, inner_new)
  return variables
