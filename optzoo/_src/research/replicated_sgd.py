"""Replicated-SGD: y coupled replicas on a leading axis of every leaf.

Baldassi et al., PNAS 2020; Pittorino et al., ICLR 2021. The replicas are
stored along a leading axis of every parameter leaf and coupled elastically to
their centre.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src import transform
from optzoo._src.research.entropy_sgd import _leaf_normals
from optzoo._src.research.entropy_sgd import scoped_gamma

__all__ = [
    "ReplicaCouplingState",
    "replica_coupling",
    "replicate_params",
    "replicated_center",
    "replicated_sgd",
]


class ReplicaCouplingState(NamedTuple):
  """State of :func:`replica_coupling`.

  Attributes:
    count: int32 number of updates made.
    center: the elastic centre (params without the replica axis) when
      ``center="elastic"``; for ``"barycenter"`` an unused copy of shape ().
  """

  count: jax.Array
  center: Any


def _replica_mean(tree):
  # 0-d leaves carry no replica axis: they are shared and never coupled.
  return jax.tree.map(lambda x: jnp.mean(x, axis=0) if jnp.ndim(x) else x, tree)


def _num_replicas(params) -> int:
  """``y``: the leading axis of the first leaf that has one (1 if none)."""
  for x in jax.tree.leaves(params):
    if jnp.ndim(x):
      return int(jnp.shape(x)[0])
  return 1


def _bcast(c, w):
  return c[None] if jnp.ndim(w) else c


@registry.register(
    family="research",
    summary="Elastic coupling of replicas (leading axis) to their centre: adds K*gamma*(w_a - center).",
    paper="Baldassi et al., PNAS 2020; Pittorino et al., ICLR 2021",
    reference="NumPy re-derivation of Pittorino et al. (ICLR 2021), eqs. 4-6",
    verified="NumPy re-derivation of Pittorino et al. 2021, as the coupling link of optzoo.replicated_sgd (tests/research/test_entropy.py)",
    needs_params=True,
)
def replica_coupling(
    gamma: Union[float, optax.Schedule] = 1e-2,
    gamma_scoping: float = 0.0,
    *,
    center: str = "barycenter",
    coupling_period: int = 1,
    learning_rate: optax.ScalarOrSchedule = 0.1,
    gamma_max: Optional[float] = None,
) -> optax.GradientTransformation:
  r"""Adds the elastic force :math:`K\gamma_t (w^a - \bar w)` to every replica's gradient.

  Every leaf of ``params`` (and of the gradients) carries the replicas along
  its leading axis (see :func:`replicate_params`; 0-d leaves have no replica
  axis and are not coupled). On steps with
  :math:`t \bmod K = 0` (``K = coupling_period``):

  .. math::

    g^a \leftarrow g^a + K\gamma_t\,(w^a - \bar w)

  and nothing is added on the other steps. The centre :math:`\bar w` is the
  barycentre :math:`\frac1y\sum_a w^a` (``center="barycenter"``) or an
  elastic variable kept in the state (``center="elastic"``), updated on
  coupling steps as :math:`\bar w \leftarrow \bar w + \eta_t K\gamma_t
  \sum_a (w^a - \bar w)` with the current (pre-update) replicas.

  :math:`\gamma_t = \min(\gamma_0 (1+\gamma_1)^t, \gamma_{max})`
  (:func:`scoped_gamma`, never ``inf``). With ``gamma_max=None`` the cap is
  the collapse point of one coupling step with learning rate
  :math:`\eta_t` (the ``learning_rate`` the coupled gradients are applied
  with): :math:`\gamma_{max} = 1/(K\eta_t)` for the barycentre and
  :math:`1/(K\eta_t (1+y))` for the elastic centre (:math:`y` replicas);
  there a plain SGD step moves every replica (and the centre) exactly onto
  their common mean, the :math:`\gamma \to \infty` limit, while larger
  values overshoot and, beyond twice the cap, diverge. Without a cap the scoping
  :math:`(1+\gamma_1)^t` overflows (about 88k steps in float32 for
  :math:`\gamma_1 = 10^{-3}`) and the updates become NaN. Runs with
  :math:`\gamma_t` below the cap are unchanged; a larger explicit
  ``gamma_max`` replaces the default cap.

  Args:
    gamma: coupling γ₀ (or a schedule of the step count).
    gamma_scoping: γ₁ of the exponential scoping.
    center: ``"barycenter"`` or ``"elastic"``.
    coupling_period: K.
    learning_rate: the learning rate the coupled gradients are applied with
      (:func:`replicated_sgd` passes its own); used by the elastic centre and
      by the default γ cap.
    gamma_max: cap on γ_t; ``None`` uses the collapse point above.
  """
  if not callable(gamma):
    validation.check_nonneg("gamma", gamma)
  validation.check_nonneg("gamma_scoping", gamma_scoping)
  validation.check_choice("center", center, ("barycenter", "elastic"))
  validation.check_int("coupling_period", coupling_period, minimum=1)
  validation.check_lr(learning_rate)
  if gamma_max is not None:
    validation.check_positive("gamma_max", gamma_max)

  def init_fn(params):
    if center == "elastic":
      c = _replica_mean(params)
    else:
      c = jnp.zeros([], jnp.float32)
    return ReplicaCouplingState(count=jnp.zeros([], jnp.int32), center=c)

  def update_fn(updates, state, params=None):
    validation.require_params(params, "replica_coupling / replicated_sgd")
    count = state.count
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    if gamma_max is None:
      cap = 1.0 / (coupling_period * jnp.asarray(lr, tree.float_dtype()))
      if center == "elastic":
        cap = cap / (1.0 + _num_replicas(params))
    else:
      cap = gamma_max
    gamma_t = scoped_gamma(gamma, gamma_scoping, count, cap)
    active = (count % coupling_period) == 0
    k_gamma = jnp.where(active, coupling_period * gamma_t, 0.0)
    c = state.center if center == "elastic" else _replica_mean(params)
    new_updates = jax.tree.map(
        lambda g, w, cc: (g + k_gamma.astype(w.dtype) * (w - _bcast(cc, w))).astype(g.dtype),
        updates, params, c)
    new_center = state.center
    if center == "elastic":
      new_center = jax.tree.map(
          lambda cc, w: (cc + (lr * k_gamma).astype(cc.dtype)
                         * (jnp.sum(w - cc[None], axis=0) if jnp.ndim(w) else 0.0)
                         ).astype(cc.dtype),
          state.center, params)
    return new_updates, ReplicaCouplingState(optax.safe_increment(count), new_center)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="research",
    summary="Replicated-SGD: y replicas (leading param axis) with scoped elastic coupling to a centre.",
    paper="Baldassi et al., PNAS 2020; Pittorino et al., Entropic gradient descent algorithms and wide flat minima, ICLR 2021",
    reference="NumPy re-derivation of Pittorino et al. (ICLR 2021); gamma=0 equals independent torch-style SGD per replica",
    verified="NumPy re-derivation of Pittorino et al. 2021 (tests/research/test_entropy.py)",
    needs_params=True,
)
def replicated_sgd(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    gamma: Union[float, optax.Schedule] = 1e-2,
    gamma_scoping: float = 1e-3,
    momentum: Optional[float] = None,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    center: str = "barycenter",
    coupling_period: int = 1,
    gamma_max: Optional[float] = None,
) -> optax.GradientTransformation:
  r"""Replicated-SGD: ``y`` replicas coupled elastically to their centre.

  Parameters hold the replicas along the leading axis of every leaf (build
  them with :func:`replicate_params`; compute per-replica gradients with
  ``jax.vmap(jax.grad(loss))(params, batches)`` so that each replica sees its
  own minibatch). Each replica does torch-style SGD on

  .. math::

    \sum_a L(w^a) + \frac{\gamma_t}{2}\sum_a \lVert w^a - \bar w\rVert^2,
    \qquad w^a \leftarrow w^a - \eta\,\mathrm{SGD}_m\big(\nabla L(w^a)
       + \lambda w^a + K\gamma_t (w^a - \bar w)[t \bmod K = 0]\big)

  i.e. ``chain(replica_coupling, add_l2, trace, scale_by_learning_rate)``.
  Scoping :math:`\gamma_t = \min(\gamma_0(1+\gamma_1)^t, \gamma_{max})`
  (t = number of updates made). By default (``gamma_max=None``) γ is capped
  where :math:`\eta_t K \gamma_t = 1` (barycentre; :math:`\eta_t K
  \gamma_t (1+y) = 1` for the elastic centre), the point where one coupling
  step moves the replicas onto the centre (see :func:`replica_coupling`):
  larger values overshoot, and the uncapped scoping overflows to ``inf``
  (NaN updates) after about 88k steps in float32 with γ₁ = 1e-3. The final model is the centre
  (:func:`replicated_center`). With ``gamma = 0`` this is exactly independent
  SGD per replica; as :math:`\eta\gamma \to 1` the replicas collapse onto the
  centre. The coupling enters the momentum buffer (it is part of the
  objective's gradient) and the coupling period multiplies γ by K as in
  Pittorino et al. (reconstructed: no official code was found).

  Args:
    learning_rate: η (float or schedule).
    gamma: coupling γ₀ (or a schedule of the step count).
    gamma_scoping: γ₁.
    momentum: SGD momentum (torch semantics); ``None`` (default): no momentum
      buffer. Any number, 0.0 included, keeps one, so the state has the same
      structure as under ``optax.inject_hyperparams``.
    nesterov: Nesterov momentum.
    weight_decay: coupled L2 λ.
    center: ``"barycenter"`` (mean of the replicas) or ``"elastic"`` (its
      own variable, moved by :math:`\eta K\gamma\sum_a (w^a - \bar w)`).
    coupling_period: K, couple every K steps with strength Kγ.
    gamma_max: cap on γ_t; ``None`` (default) uses the collapse point above.

  References:
    Pittorino et al., `Entropic gradient descent algorithms and wide flat
    minima <https://arxiv.org/abs/2006.07897>`_, ICLR 2021; Baldassi et al.,
    `Shaping the learning landscape in neural networks around wide flat
    minima <https://www.pnas.org/doi/10.1073/pnas.1908636117>`_, PNAS 2020.
  """
  validation.check_lr(learning_rate)
  if momentum is not None:
    validation.check_beta("momentum", momentum)
  validation.check_bool("nesterov", nesterov)
  if nesterov and (momentum is None or tree.is_literal_zero(momentum)):
    raise ValueError("`nesterov=True` requires `momentum > 0`.")
  validation.check_nonneg("weight_decay", weight_decay)
  links = [replica_coupling(gamma, gamma_scoping, center=center,
                            coupling_period=coupling_period,
                            learning_rate=learning_rate, gamma_max=gamma_max)]
  links.append(transform.add_l2(weight_decay))  # a literal 0 is a no-op
  if momentum is not None:
    links.append(transform.trace(momentum, nesterov=nesterov))
  links.append(transform.scale_by_learning_rate(learning_rate))
  return optax.chain(*links)


@registry.register(
    family="research",
    summary="Stack y copies of params along a new leading axis (optionally perturbed) for replicated_sgd.",
    paper="Pittorino et al., ICLR 2021",
    reference="-",
    kind="utility",
)
def replicate_params(params: Any, num_replicas: int = 3, *,
                     key: Optional[jax.Array] = None, noise: float = 0.0) -> Any:
  """``y`` copies of ``params`` stacked on axis 0, plus optional N(0, noise²) jitter."""
  validation.check_int("num_replicas", num_replicas, minimum=1)
  validation.check_nonneg("noise", noise)
  reps = jax.tree.map(
      lambda x: jnp.broadcast_to(jnp.asarray(x)[None], (num_replicas,) + jnp.shape(x)),
      params)
  if key is not None and noise > 0:
    z = _leaf_normals(key, reps)
    reps = jax.tree.map(lambda r, zi: (r + noise * zi).astype(r.dtype), reps, z)
  return reps


def replicated_center(params: Any, state: Any = None) -> Any:
  """The centre of replicated params: the elastic centre found in ``state`` if any, else the barycentre."""
  if state is not None:
    for s in tree.find_states(state, ReplicaCouplingState):
      if jax.tree.structure(s.center) == jax.tree.structure(params):
        return s.center
  return _replica_mean(params)


# ---------------------------------------------------------------------------
# Flatness probe
# ---------------------------------------------------------------------------
