"""SCL: automatic sparse connectivity learning (Tang et al., 2021).

Tang et al., "Automatic Sparse Connectivity Learning for Neural Networks"
(arXiv 2201.05020). Each weight is gated by a binary mask ``step(m)`` of a
trainable mask variable ``m``; the backward pass uses the identity
straight-through estimator (STE). The paper's abstract fixes the identity STE,
the per-feature normalization of mask gradients and a connection-count
penalty; the exact normalization formula and λ are [recon] (no public code).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import validation
from optzoo._src import transform

__all__ = [
    "MaskedConv",
    "MaskedDense",
    "add_count_penalty",
    "connection_count",
    "normalize_mask_gradients",
    "scl_labels",
    "sparse_connectivity",
    "step_ste",
]

MASK = "mask"


@jax.custom_vjp
def step_ste(m: jax.Array) -> jax.Array:
  r"""Unit step :math:`1[m > 0]` with the identity straight-through gradient.

  Forward values are exactly 0 or 1 (in ``m``'s dtype); the backward pass
  returns the incoming cotangent unchanged (:math:`\partial\,\mathrm{step}/\partial m := 1`).
  """
  return (m > 0).astype(m.dtype)


def _step_fwd(m):
  return step_ste(m), None


def _step_bwd(_, g):
  return (g,)


step_ste.defvjp(_step_fwd, _step_bwd)


class MaskedDense(nn.Module):
  r"""Dense layer with a learnable binary connection mask (SCL).

  Parameters ``kernel``, ``bias`` and ``mask`` (same shape as ``kernel``);
  :math:`y = x\,(W \odot \mathrm{step}(m)) + b`. With the identity STE,
  :math:`\partial L/\partial m = \bar W_{eff} \odot W` and
  :math:`\partial L/\partial W = \bar W_{eff} \odot \mathrm{step}(m)`.

  Attributes:
    features: output width.
    use_bias: add a bias.
    mask_init_value: initial value of every mask variable (> 0: all on).
  """

  features: int
  use_bias: bool = True
  mask_init_value: float = 0.1
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = jnp.result_type(x)
    shape = (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, dt)
    mask = self.param(MASK, nn.initializers.constant(self.mask_init_value), shape, dt)
    y = x @ (kernel * step_ste(mask))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), dt)
    return y


class MaskedConv(nn.Module):
  """2-D convolution (NHWC, HWIO kernel) with a learnable binary mask per weight."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Union[str, Sequence[tuple[int, int]]] = "SAME"
  use_bias: bool = True
  mask_init_value: float = 0.1
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = jnp.result_type(x)
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, dt)
    mask = self.param(MASK, nn.initializers.constant(self.mask_init_value), shape, dt)
    y = jax.lax.conv_general_dilated(
        x, kernel * step_ste(mask), window_strides=tuple(self.strides),
        padding=self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), dt)
    return y


def _is_mask_path(path) -> bool:
  return bool(path) and getattr(path[-1], "key", None) == MASK


def scl_labels(params: Any) -> Any:
  """Labels ``"mask"`` for leaves named ``mask`` and ``"weight"`` otherwise (for ``optax.multi_transform``)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: MASK if _is_mask_path(p) else "weight", params)


def connection_count(params: Any) -> jax.Array:
  r"""Number of active connections :math:`\sum_l \sum \mathrm{step}(m_l)` over the ``mask`` leaves.

  Differentiable through the identity STE (gradient 1 per mask variable), so
  ``loss + lam * connection_count(params)`` is the count regularizer.
  """
  total = jnp.zeros([], jnp.int32)
  leaves = [l for p, l in jax.tree_util.tree_leaves_with_path(params) if _is_mask_path(p)]
  if not leaves:
    return total
  return sum(jnp.sum(step_ste(l)) for l in leaves)


def _feature_normalize(g, norm, eps):
  if g.ndim >= 2:
    axes = tuple(range(g.ndim - 1))   # output feature = last axis (flax layout)
  else:
    axes = None
  if norm == "rms":
    s = jnp.sqrt(jnp.mean(jnp.square(g), axis=axes, keepdims=True))
  elif norm == "l2":
    s = jnp.sqrt(jnp.sum(jnp.square(g), axis=axes, keepdims=True))
  else:
    s = jnp.max(jnp.abs(g), axis=axes, keepdims=True)
  return (g / (s + eps)).astype(g.dtype)


@registry.register(
    family="research",
    summary="SCL mask-gradient normalization: rescale each output feature's mask gradient (rms/l2/max).",
    paper="Tang et al., Automatic Sparse Connectivity Learning for Neural Networks, arXiv 2201.05020",
    reference="definition (recon of the paper's per-feature normalization)",
    verified="definition (tests/research/test_scl.py)",
)
def normalize_mask_gradients(norm: str = "rms", eps: float = 1e-8
                             ) -> optax.GradientTransformation:
  r"""Per-output-feature normalization of (mask) gradients.

  For a kernel leaf (output features on the last axis, the Flax layout) and
  each feature :math:`j` with :math:`n_j` entries:

  .. math::

    \hat g_{\cdot j} = g_{\cdot j} / (s_j + \epsilon), \quad
    s_j = \lVert g_{\cdot j}\rVert_2/\sqrt{n_j}\ (\text{rms}),\
    \lVert g_{\cdot j}\rVert_2\ (\text{l2}),\ \max|g_{\cdot j}|\ (\text{max}).

  Leaves with fewer than two axes are normalized as a whole. Apply it to the
  mask subtree (see :func:`sparse_connectivity` / :func:`scl_labels`).
  """
  validation.check_choice("norm", norm, ("rms", "l2", "max"))
  validation.check_nonneg("eps", eps)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: _feature_normalize(g, norm, eps), updates), state

  return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


@registry.register(
    family="research",
    summary="SCL connection-count penalty: add lam (the identity-STE gradient of lam * sum step(m)) to mask gradients.",
    paper="Tang et al., arXiv 2201.05020",
    reference="definition (gradient of lam * connection_count under the identity STE)",
    verified="definition: the gradient of lam * connection_count (tests/research/test_scl.py)",
)
def add_count_penalty(count_penalty: float = 1e-3) -> optax.GradientTransformation:
  r"""Adds :math:`\lambda` to every gradient entry: the gradient of
  :math:`\lambda\sum\mathrm{step}(m)` under the identity STE."""
  validation.check_nonneg("count_penalty", count_penalty)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: (g + count_penalty).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


@registry.register(
    family="research",
    summary="SCL optimizer: normalized + count-penalized SGD on `mask` leaves, any optimizer on the weights.",
    paper="Tang et al., Automatic Sparse Connectivity Learning for Neural Networks, arXiv 2201.05020",
    reference="composition of normalize_mask_gradients, add_count_penalty and torch-style SGD (tests)",
    verified="definition: normalize_mask_gradients, add_count_penalty and SGD (tests/research/test_scl.py)",
)
def sparse_connectivity(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    mask_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    count_penalty: float = 0.1,
    momentum: float = 0.9,
    mask_momentum: float = 0.0,
    norm: str = "rms",
    *,
    weight_optimizer: Optional[optax.GradientTransformation] = None,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
  r"""SCL training: masks and weights of :class:`MaskedDense`/:class:`MaskedConv` models.

  Leaves named ``mask`` get

  .. math::

    m \leftarrow m - \eta_m\,\mathrm{SGD}_{\mu_m}\big(\mathrm{normalize}(\nabla_m L) + \lambda\big)

  (per-feature normalization, then the count penalty λ, i.e. the gradient of
  :math:`\lambda\sum\mathrm{step}(m)` under the identity STE, which pushes
  unneeded connections below 0), and every other leaf gets
  ``weight_optimizer`` (default torch-style SGD with ``momentum``).
  Because the task part is normalized to unit RMS per feature, λ is relative
  to it: a connection survives when its normalized task gradient resists λ.
  Expressed as ``optax.multi_transform`` over :func:`scl_labels`.

  Args:
    learning_rate: weight learning rate (default weight optimizer).
    mask_learning_rate: mask learning rate (default: ``learning_rate``).
    count_penalty: λ ≥ 0.
    momentum: momentum of the default weight optimizer.
    mask_momentum: momentum of the mask SGD.
    norm: ``"rms"``, ``"l2"`` or ``"max"`` (see :func:`normalize_mask_gradients`).
    weight_optimizer: optimizer for the non-mask leaves.
    eps: normalization ε.

  References:
    Tang et al., `Automatic Sparse Connectivity Learning for Neural Networks
    <https://arxiv.org/abs/2201.05020>`_ (normalization form and λ scale are
    [recon]: no public code).
  """
  validation.check_lr(learning_rate)
  if mask_learning_rate is not None:
    validation.check_lr(mask_learning_rate, "mask_learning_rate")
  validation.check_nonneg("count_penalty", count_penalty)
  validation.check_beta("momentum", momentum)
  validation.check_beta("mask_momentum", mask_momentum)
  validation.check_choice("norm", norm, ("rms", "l2", "max"))
  if weight_optimizer is not None:
    validation.check_transformation("weight_optimizer", weight_optimizer)
  mlr = learning_rate if mask_learning_rate is None else mask_learning_rate
  w_tx = weight_optimizer if weight_optimizer is not None else optax.chain(
      transform.trace(momentum), transform.scale_by_learning_rate(learning_rate))
  m_tx = optax.chain(
      normalize_mask_gradients(norm, eps),
      add_count_penalty(count_penalty),
      transform.trace(mask_momentum),
      transform.scale_by_learning_rate(mlr),
  )
  return optax.multi_transform({MASK: m_tx, "weight": w_tx}, scl_labels)
