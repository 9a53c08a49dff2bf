"""Muon: Newton-Schulz orthogonalized momentum for 2-D leaves (torch.optim.Muon).

``muon`` reproduces ``torch.optim.Muon`` (torch 2.13) on the 2-D leaves and
sends every other leaf to a ``fallback`` transformation (AdamW by default),
which is what torch users do with two optimizers / two parameter groups.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import tree as tree_lib
from optzoo._src import validation
from optzoo._src import transform

__all__ = ["muon", "newton_schulz", "orthogonalize", "scale_by_muon"]

DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def _zeros_like(params):
  return jax.tree.map(jnp.zeros_like, params)


def newton_schulz(
    x: jax.Array,
    ns_coefficients: Sequence[float] = DEFAULT_NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    ns_dtype: Any = jnp.bfloat16,
) -> jax.Array:
  r"""The quintic Newton-Schulz iteration of torch's Muon on one matrix.

  With :math:`X_0 = G / \max(\lVert G\rVert_F, \epsilon)` (transposed first
  when :math:`G` has more rows than columns), :math:`k` times

  .. math::

    A = X X^\top, \qquad X \leftarrow aX + (bA + cA^2)X,

  computed in ``ns_dtype`` (torch: bfloat16; ``None``: ``x``'s dtype, at
  least float32) and returned in ``x.dtype``.
  The result approximates :math:`UV^\top` of the SVD :math:`G = USV^\top`
  (with singular values roughly in [0.5, 1.5] for the default coefficients).
  """
  if x.ndim != 2:
    raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {x.shape}.")
  if jnp.iscomplexobj(x):
    raise TypeError(f"newton_schulz needs a real matrix, got {x.dtype.name}"
                    " (torch.optim.Muon rejects complex parameters).")
  a, b, c = ns_coefficients
  out_dtype = x.dtype
  ns_dtype = (jnp.promote_types(x.dtype, jnp.float32) if ns_dtype is None
              else jnp.dtype(ns_dtype))
  # Arithmetic in at least float32, rounded to ns_dtype where torch's bf16
  # kernels round: after the norm, the division, each matmul / addmm.
  w = jnp.promote_types(ns_dtype, jnp.float32)
  y = x.astype(ns_dtype)
  transposed = y.shape[0] > y.shape[1]
  if transposed:
    y = y.T
  norm = jnp.sqrt(jnp.sum(jnp.square(y.astype(w)))).astype(ns_dtype)
  y = (y.astype(w) / jnp.maximum(norm, eps).astype(w)).astype(ns_dtype)

  def body(_, y):
    yw = y.astype(w)
    gram = (yw @ yw.T).astype(ns_dtype).astype(w)
    update = (b * gram + c * (gram @ gram)).astype(ns_dtype).astype(w)
    return (a * yw + update @ yw).astype(ns_dtype)

  y = jax.lax.fori_loop(0, ns_steps, body, y)
  if transposed:
    y = y.T
  return y.astype(out_dtype)


def _check_ns(ns_coefficients, ns_steps, eps):
  if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
    raise ValueError(
        f"`ns_coefficients` must be a tuple of 3 numbers, got {ns_coefficients!r}.")
  for i, v in enumerate(ns_coefficients):
    validation.check_number(f"ns_coefficients[{i}]", v)
  validation.check_int("ns_steps", ns_steps, minimum=0)
  if not isinstance(ns_steps, jax.core.Tracer) and int(ns_steps) >= 100:
    raise ValueError(f"`ns_steps` must be < 100 (as torch), got {ns_steps!r}.")
  validation.check_nonneg("eps", eps)


def _check_2d(updates, who):
  for leaf in jax.tree.leaves(updates):
    if jnp.ndim(leaf) != 2:
      raise ValueError(
          f"{who} only handles 2-D leaves, got a leaf of shape {jnp.shape(leaf)};"
          " use optzoo.muon, which routes the other leaves to `fallback`.")
    if jnp.iscomplexobj(leaf):
      raise TypeError(
          f"{who} only handles real leaves (torch.optim.Muon rejects complex"
          f" parameters), got a {jnp.result_type(leaf).name} leaf; use"
          " optzoo.muon, which routes complex leaves to `fallback`.")


def orthogonalize(
    ns_coefficients: Sequence[float] = DEFAULT_NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    ns_dtype: Any = jnp.bfloat16,
) -> optax.GradientTransformation:
  """Stateless: replace every (2-D) update by :func:`newton_schulz` of it."""
  _check_ns(ns_coefficients, ns_steps, eps)
  ns_dtype = None if ns_dtype is None else jnp.dtype(ns_dtype)
  coeffs = tuple(ns_coefficients)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    _check_2d(updates, "orthogonalize")
    return jax.tree.map(
        lambda g: newton_schulz(g, coeffs, ns_steps, eps, ns_dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _adjust_ratio(shape, adjust_lr_fn):
  rows, cols = shape[:2]
  if adjust_lr_fn in (None, "original"):
    return math.sqrt(max(1.0, rows / cols))
  return 0.2 * math.sqrt(max(rows, cols))


class ScaleByMuonState(NamedTuple):
  """State of :func:`scale_by_muon`."""

  momentum_buffer: optax.Updates


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = DEFAULT_NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: Optional[str] = "original",
    *,
    ns_dtype: Any = jnp.bfloat16,
) -> optax.GradientTransformation:
  r"""Muon's direction for 2-D leaves, before weight decay and learning rate.

  .. math::

    B_t = B_{t-1} + (1-\mu)(G_t - B_{t-1}), \qquad
    \tilde B_t = G_t + \mu(B_t - G_t)\ (\text{Nesterov})\ \text{or}\ B_t,

    \Delta_t = r(A, B)\;\mathrm{NS}_k^{(a,b,c)}(\tilde B_t;\epsilon),

  with torch's ``lerp`` forms (the buffer is an EMA of the gradients),
  :math:`r = \sqrt{\max(1, A/B)}` (``"original"``, Keller Jordan's code) or
  :math:`0.2\sqrt{\max(A, B)}` (``"match_rms_adamw"``, Moonshot) for an
  :math:`A \times B` leaf. Every leaf must be 2-D (see :func:`muon`).
  """
  validation.check_nonneg("momentum", momentum)
  validation.check_bool("nesterov", nesterov)
  _check_ns(ns_coefficients, ns_steps, eps)
  if adjust_lr_fn is not None:
    validation.check_choice("adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS)
  ns_dtype = None if ns_dtype is None else jnp.dtype(ns_dtype)
  coeffs = tuple(ns_coefficients)

  def init_fn(params):
    return ScaleByMuonState(_zeros_like(params))

  def leaf(g, buf):
    buf = (buf + (1 - momentum) * (g - buf)).astype(buf.dtype)
    direction = g + momentum * (buf - g) if nesterov else buf
    o = newton_schulz(direction, coeffs, ns_steps, eps, ns_dtype)
    ratio = _adjust_ratio(g.shape, adjust_lr_fn)
    return (ratio * o.astype(tree_lib.compute_dtype(g))).astype(g.dtype), buf

  def update_fn(updates, state, params=None):
    del params
    _check_2d(updates, "scale_by_muon")
    new, buf = tree_lib.tree_unzip(
        jax.tree.map(leaf, updates, state.momentum_buffer), updates, 2)
    return new, ScaleByMuonState(buf)

  return optax.GradientTransformation(init_fn, update_fn)


def _label(params):
  return jax.tree.map(lambda p: "muon" if jnp.ndim(p) == 2 and not jnp.iscomplexobj(p)
                      else "fallback", params)


@registry.register(
    family="Team SGD",
    summary="Muon: Newton-Schulz orthogonalized momentum for 2-D leaves, fallback for the rest.",
    paper="Jordan et al., 2024 (kellerjordan.github.io/posts/muon); Liu et al., arXiv:2502.16982",
    reference="torch.optim.Muon (+ torch.optim.AdamW for non-2-D leaves)",
    verified="torch.optim.Muon + AdamW 2.13: float64 Newton-Schulz 300 steps, bf16 per step (tests/test_muon.py)",
    needs_params=True,
)
def muon(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = DEFAULT_NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: Optional[str] = "original",
    *,
    ns_dtype: Any = jnp.bfloat16,
    fallback: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformation:
  r"""Muon, exactly ``torch.optim.Muon`` on the 2-D leaves.

  For every 2-D leaf :math:`\theta` of shape :math:`A\times B`:

  .. math::

    \theta_t = \theta_{t-1}(1 - \eta_t\lambda) - \eta_t\, r(A,B)\,
      \mathrm{NS}_k(\tilde B_t)

  (see :func:`scale_by_muon`; the weight decay uses the unadjusted
  :math:`\eta_t`, as torch). Chain on 2-D leaves: ``scale_by_muon ->
  add_decayed_weights(weight_decay) -> scale_by_learning_rate``.

  torch's Muon accepts only real 2-D parameters; here every other leaf
  (biases, norm scales, scalars, 3-D/4-D convolution kernels, and complex
  leaves, whose Newton-Schulz iteration torch does not define) goes to
  ``fallback``, as torch users pass them to a second optimizer (torch's
  docs: AdamW). ``fallback=None`` means ``optzoo.adamw(learning_rate)``
  (torch AdamW's defaults otherwise, ``weight_decay=1e-2``) with the *same*
  learning rate or schedule; pass your own transformation (with its own
  learning rate) to reproduce two torch optimizers with different ``lr``.

  ``ns_dtype``: torch runs Newton-Schulz in bfloat16 (the default here too);
  pass ``jnp.float32`` / ``jnp.float64`` for a more precise orthogonalization
  (the float64 path equals torch's algorithm at float64 to round-off), or
  ``None`` for each leaf's own dtype (at least float32).

  Args:
    learning_rate: :math:`\eta` (torch default 1e-3) or a schedule.
    weight_decay: decoupled decay :math:`\lambda` (torch default 0.1).
    momentum: :math:`\mu \ge 0` (torch default 0.95).
    nesterov: Nesterov form (torch default True).
    ns_coefficients: :math:`(a, b, c)` of the quintic iteration.
    eps: floor of the Frobenius norm in the normalization (torch 1e-7).
    ns_steps: :math:`k` in [0, 100) (torch default 5).
    adjust_lr_fn: ``"original"`` (torch's ``None``) or ``"match_rms_adamw"``.
    ns_dtype: dtype of the Newton-Schulz iteration.
    fallback: transformation for the non-2-D leaves.

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024; Liu et al., `Muon is
    Scalable for LLM Training <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  validation.check_lr(learning_rate)
  validation.check_nonneg("weight_decay", weight_decay)
  if fallback is None:
    from optzoo._src import alias  # pylint: disable=g-import-not-at-top
    fallback = alias.adamw(learning_rate)
  validation.check_transformation("fallback", fallback)
  core = optax.chain(
      scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn,
                    ns_dtype=ns_dtype),
      transform.add_decayed_weights(weight_decay),
      transform.scale_by_learning_rate(learning_rate),
  )
  return optax.partition({"muon": core, "fallback": fallback}, _label)
