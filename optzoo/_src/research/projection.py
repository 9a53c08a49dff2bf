"""Projections onto spheres: WRS (weight rescaling) and fixed-ELR sphere SGD.

Both methods share one primitive, :func:`project_to_sphere`, which returns
the increment that moves ``params + updates`` onto a sphere (per filter, per
tensor, or jointly over all selected leaves).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import chex
import jax
import jax.numpy as jnp
import optax

from optzoo._src import complex_view
from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = [
    "project_to_sphere",
    "weight_rescaling",
    "sphere_sgd",
    "WeightRescalingState",
    "SphereSgdState",
]

_WRS_PAPER = (
    "Liu, Cui, Wan, Mao, Chan. Weight Rescaling: Effective and Robust"
    " Regularization for Deep Neural Networks with Batch Normalization."
    " arXiv 2102.03497. https://arxiv.org/abs/2102.03497"
)
_SPHERE_PAPER = (
    "Kodryan, Lobacheva, Nakhodnov, Vetrov. Training Scale-Invariant Neural"
    " Networks on the Sphere Can Happen in Three Regimes. NeurIPS 2022."
    " https://arxiv.org/abs/2209.03695"
)
_GRANULARITIES = ("filter", "tensor", "joint")

MaskOrFn = Optional[Union[Any, Callable[[Any], Any]]]


def _default_mask(params: Any) -> Any:
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _resolve_mask(mask: MaskOrFn, params: Any) -> Any:
  if mask is None:
    return _default_mask(params)
  if callable(mask):
    return mask(params)
  return mask



def _reduce_axes(ndim: int, axis: int) -> tuple:
  if ndim == 0:
    return ()
  axis = axis % ndim
  return tuple(a for a in range(ndim) if a != axis)


def _sq_sum(w, axes):
  """``sum |w|^2`` over ``axes`` (kept): :func:`complex_view.real_dot`'s
  ``Re(conj(w) w)`` per filter (``w * w`` for a real ``w``, bit for bit)."""
  return jnp.sum(jnp.real(jnp.conj(w) * w), axis=axes, keepdims=True)


def project_to_sphere(
    params: Any,
    updates: Any,
    radius: Any = 1.0,
    *,
    mask: MaskOrFn = None,
    granularity: str = "filter",
    axis: int = -1,
    eps: float = 1e-12,
) -> Any:
  r"""The increment that puts ``params + updates`` on a sphere of ``radius``.

  For every selected leaf, with :math:`w = \theta + u`:

  .. math::

    \Delta = r\, \frac{w}{\|w\|} - \theta

  where the norm is taken per filter (``granularity="filter"``: every slice
  along ``axis``, i.e. every output unit of a Flax kernel, whose last axis is
  the output axis), per leaf (``"tensor"``) or jointly over all selected
  leaves (``"joint"``: one sphere for their concatenation). Unselected leaves
  keep ``updates``. Norms are computed in at least float32 and the result is
  cast back to the updates' dtype.

  Norms of complex leaves are those of their real view (``sum |w|^2``).

  Args:
    params: current parameters :math:`\theta`.
    updates: the step :math:`u` proposed by an optimizer.
    radius: :math:`r` (a scalar).
    mask: pytree of bools (or a callable of params returning one) selecting
      the leaves to project; ``None`` selects every leaf with ``ndim >= 2``
      (kernels).
    granularity: ``"filter"``, ``"tensor"`` or ``"joint"``.
    axis: the filter (output-unit) axis for ``"filter"``.
    eps: lower clamp of the norm.

  Returns:
    The new updates (same structure as ``updates``).
  """
  validation.check_choice("granularity", granularity, _GRANULARITIES)
  mask = _resolve_mask(mask, params)
  treedef = jax.tree.structure(updates, is_leaf=lambda z: z is None)
  us = treedef.flatten_up_to(updates)
  ps = treedef.flatten_up_to(params)
  ms = treedef.flatten_up_to(mask)
  news = []
  for u, p, m in zip(us, ps, ms):
    if u is None or not m:
      news.append(None)
      continue
    dt = tree.compute_dtype(u)
    news.append(jnp.asarray(p, dt) + jnp.asarray(u, dt))

  out = list(us)
  if granularity == "joint":
    sq = [complex_view.real_dot(w, w) for w in news if w is not None]
    if sq:
      total = jnp.sqrt(sum(sq))
      for i, w in enumerate(news):
        if w is None:
          continue
        target = radius * w / jnp.maximum(total, eps)
        out[i] = (target - jnp.asarray(ps[i], w.dtype)).astype(us[i].dtype)
  else:
    for i, w in enumerate(news):
      if w is None:
        continue
      if granularity == "filter" and w.ndim > 0:
        axes = _reduce_axes(w.ndim, axis)
      else:
        axes = tuple(range(w.ndim))
      norm = jnp.sqrt(_sq_sum(w, axes))
      target = radius * w / jnp.maximum(norm, eps)
      out[i] = (target - jnp.asarray(ps[i], w.dtype)).astype(us[i].dtype)
  return treedef.unflatten(out)


registry.register(
    family="research",
    summary="Increment that moves params + updates onto a sphere (per filter/tensor/joint).",
    paper=_WRS_PAPER + "; " + _SPHERE_PAPER,
    reference="definition (tests/research/test_projection.py)",
    verified="definition (tests/research/test_projection.py)",
    kind="utility",
)(project_to_sphere)


class WeightRescalingState(NamedTuple):
  """State of :func:`weight_rescaling`: the update count (int32)."""

  count: chex.Array


@registry.register(
    family="research",
    summary="WRS: rescale each selected filter to unit norm after every step.",
    paper=_WRS_PAPER,
    reference="paper's rule (mechanics reconstructed); tested for"
    " unit filter norms (tests/research/test_projection.py)",
    needs_params=True,
)
def weight_rescaling(
    mask: MaskOrFn = None,
    granularity: str = "filter",
    target_norm: float = 1.0,
    every: int = 1,
    axis: int = -1,
    eps: float = 1e-12,
) -> optax.GradientTransformation:
  r"""WRS: after the optimizer's step, rescale scale-invariant weights.

  Placed *after* an optimizer in a chain, it replaces the proposed step
  :math:`u` of every selected leaf by

  .. math::

    \Delta = r\, \frac{\theta + u}{\|\theta + u\|_f} - \theta

  so that after ``optax.apply_updates`` every selected filter :math:`f`
  (output unit: the last axis of a Flax kernel) has norm ``target_norm``
  (``granularity="tensor"``: the whole leaf). This keeps the effective
  learning rate :math:`\eta/\|w\|^2` of weights followed by a normalization
  layer from drifting, replacing weight decay on them. Rescale only
  scale-invariant weights (kernels followed by BatchNorm/LayerNorm) and do
  not also weight-decay them; the final classifier is usually excluded via
  ``mask``.

  The paper's abstract fixes the rule (unit norm, every step); the
  per-filter granularity, ``every`` and the mask default are a
  reconstruction (no public code), kept configurable.

  Args:
    mask: pytree of bools, or a callable of params returning one, selecting
      the leaves to rescale; ``None`` selects every leaf with ``ndim >= 2``.
    granularity: ``"filter"`` (default) or ``"tensor"``.
    target_norm: the norm :math:`r` (1 in the paper).
    every: rescale every ``every`` updates (on updates 1, 1 + every, ...);
      in between the step passes through.
    axis: the output-unit axis for ``"filter"`` (``-1`` for Flax kernels).
    eps: lower clamp of the norm.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax, optzoo
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9),
    ...                  optzoo.weight_rescaling())

  References:
    Liu et al., `Weight Rescaling: Effective and Robust Regularization for
    Deep Neural Networks with Batch Normalization
    <https://arxiv.org/abs/2102.03497>`_.
  """
  validation.check_choice("granularity", granularity, ("filter", "tensor"))
  validation.check_positive("target_norm", target_norm)
  validation.check_int("every", every, minimum=1)
  validation.check_int("axis", axis)
  validation.check_nonneg("eps", eps)

  def init_fn(params):
    del params
    return WeightRescalingState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    validation.require_params(params, "weight_rescaling")
    projected = project_to_sphere(params, updates, target_norm, mask=mask,
                                  granularity=granularity, axis=axis, eps=eps)
    if not isinstance(every, int) or every != 1:
      do = state.count % every == 0
      projected = jax.tree.map(lambda a, b: jnp.where(do, a, b),
                               projected, updates)
    return projected, WeightRescalingState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _granularity_from_per_filter(per_filter: bool) -> str:
  """The old ``per_filter`` flag of :func:`sphere_sgd` as a granularity."""
  validation.check_bool("per_filter", per_filter)
  return "filter" if per_filter else "joint"


class SphereSgdState(NamedTuple):
  """State of :func:`sphere_sgd`.

  Attributes:
    count: number of updates (int32).
    radius: the sphere radius :math:`\\rho` (per filter when
      ``granularity="filter"``).
    lr_scale: :math:`\\rho^2` (joint) or :math:`\\sum\\|\\theta_0\\|^2`
      (per filter): the plain SGD lr is ``learning_rate * lr_scale``.
  """

  count: chex.Array
  radius: chex.Array
  lr_scale: chex.Array


@registry.register(
    family="research",
    summary="Projected SGD on the sphere with a fixed effective learning rate (Kodryan et al.).",
    paper=_SPHERE_PAPER,
    reference="official code tipt0p/three_regimes_on_the_sphere (fix_elr,"
    " fix_all_elr); NumPy re-derivation (tests/research/test_projection.py)",
    verified="NumPy re-derivation of tipt0p/three_regimes_on_the_sphere (tests/research/test_projection.py)",
    needs_params=True,
)
@validation.renamed(elr="learning_rate",
                    per_filter=("granularity", _granularity_from_per_filter))
def sphere_sgd(
    learning_rate: optax.ScalarOrSchedule,
    radius: Optional[float] = None,
    granularity: str = "joint",
    mask: MaskOrFn = None,
    noninv_learning_rate: optax.ScalarOrSchedule = 0.0,
    axis: int = -1,
    eps: float = 1e-12,
) -> optax.GradientTransformation:
  r"""SGD on the sphere with a fixed effective learning rate (ELR).

  For scale-invariant (SI) parameters the effective learning rate of plain
  SGD is :math:`\tilde\eta = \eta/\|\theta\|^2`. Kodryan et al. fix it by
  keeping :math:`\|\theta\|` constant: with :math:`\rho = \|\theta_0\|`
  (jointly over all SI leaves) and :math:`\eta = \tilde\eta \rho^2`,

  .. math::

    \theta \leftarrow \rho\, \frac{\theta - \tilde\eta \rho^2 g}
                                   {\|\theta - \tilde\eta \rho^2 g\|}

  (the official code's ``--fix_elr``: a plain SGD step, then the joint
  renormalization; ``granularity="joint"``). ``granularity="filter"`` is
  the code's ``--fix_all_elr``:
  every filter is normalized to :math:`\rho_f = \sqrt{\sum\|\theta_0\|^2 /
  F}` (:math:`F` filters in all SI leaves) and :math:`\eta = \tilde\eta
  \sum\|\theta_0\|^2`. For an SI loss the trajectory of
  :math:`\theta/\rho` does not depend on :math:`\rho`: it is projected SGD
  on the unit sphere with step :math:`\tilde\eta`.

  Non-SI leaves (outside ``mask``) take plain SGD steps with
  ``noninv_learning_rate`` (0 = frozen, as in the paper's fully
  scale-invariant setup). No momentum and no weight decay (the code warns
  that fixing the ELR with momentum is ambiguous).

  Norms of complex leaves are those of their real view (``sum |w|^2``).

  Args:
    learning_rate: the effective learning rate :math:`\tilde\eta` (ELR;
      float or schedule; ``elr`` in the code).
    radius: :math:`\rho` (:math:`\rho_f` with ``granularity="filter"``);
      ``None`` takes it from the params given to ``init``.
    granularity: ``"joint"`` (one sphere for all SI leaves) or ``"filter"``
      (normalize each filter), as in :func:`project_to_sphere`.
    mask: pytree of bools (or callable) selecting the SI leaves; ``None``
      selects every leaf with ``ndim >= 2``.
    noninv_learning_rate: SGD learning rate of the other leaves.
    axis: the output-unit axis of a filter (``-1`` for Flax kernels).
    eps: lower clamp of norms.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``; the radius
    and the SGD lr scale are readable from the state.

  Examples:
    >>> import jax.numpy as jnp, optzoo
    >>> params = {"conv": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)}
    >>> tx = optzoo.sphere_sgd(learning_rate=1e-3)
    >>> state = tx.init(params)   # radius = ||conv|| = 8.485...

  References:
    Kodryan et al., `Training Scale-Invariant Neural Networks on the Sphere
    Can Happen in Three Regimes <https://arxiv.org/abs/2209.03695>`_,
    NeurIPS 2022; code `tipt0p/three_regimes_on_the_sphere
    <https://github.com/tipt0p/three_regimes_on_the_sphere>`_.
  """
  validation.check_lr(learning_rate)
  if radius is not None:
    validation.check_positive("radius", radius)
  validation.check_choice("granularity", granularity, ("joint", "filter"))
  per_filter = granularity == "filter"
  validation.check_lr(noninv_learning_rate, "noninv_learning_rate")
  validation.check_int("axis", axis)
  validation.check_nonneg("eps", eps)

  def si_leaves(params):
    m = _resolve_mask(mask, params)
    treedef = jax.tree.structure(params, is_leaf=lambda z: z is None)
    ps = treedef.flatten_up_to(params)
    ms = treedef.flatten_up_to(m)
    return [p for p, k in zip(ps, ms) if k and p is not None]

  def init_fn(params):
    leaves = si_leaves(params)
    dt = tree.widest_float_dtype(leaves)
    sq = sum((complex_view.real_dot(p, p, dt) for p in leaves),
             jnp.zeros([], dt))
    if per_filter:
      n_filters = sum(jnp.shape(p)[axis] if jnp.ndim(p) else 1 for p in leaves)
      n_filters = max(n_filters, 1)
      if radius is None:
        rho = jnp.sqrt(sq / n_filters)
      else:
        rho = jnp.asarray(radius, dt)
      scale = n_filters * rho ** 2
    else:
      rho = jnp.sqrt(sq) if radius is None else jnp.asarray(radius, dt)
      scale = rho ** 2
    return SphereSgdState(count=jnp.zeros([], jnp.int32),
                          radius=jnp.asarray(rho, dt),
                          lr_scale=jnp.asarray(scale, dt))

  def update_fn(updates, state, params=None):
    validation.require_params(params, "sphere_sgd")
    e = (learning_rate(state.count) if callable(learning_rate)
         else learning_rate)
    lr = e * state.lr_scale
    nlr = (noninv_learning_rate(state.count) if callable(noninv_learning_rate)
           else noninv_learning_rate)
    m = _resolve_mask(mask, params)
    steps = jax.tree.map(
        lambda g, k: None if g is None else (
            -(lr if k else nlr) * jnp.asarray(g, tree.compute_dtype(g))).astype(
                jnp.asarray(g).dtype),
        updates, m, is_leaf=lambda z: z is None)
    new = project_to_sphere(params, steps, state.radius, mask=m,
                            granularity=granularity,
                            axis=axis, eps=eps)
    return new, state._replace(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
