"""Annealed Gaussian gradient noise (Neelakantan et al., 2015) -- issue 3."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo._src import base

__all__ = ["add_gradient_noise", "gradient_noise", "AddGradientNoiseState"]


class AddGradientNoiseState(NamedTuple):
  """State of :func:`add_gradient_noise`.

  Attributes:
    count: number of updates so far (int32; :math:`t` of the current update).
    key: the PRNG key used for the next update.
  """

  count: jax.Array
  key: jax.Array


@base.register(
    family="primitive",
    summary="Add annealed Gaussian noise N(0, eta/(1+t)^gamma) to the"
    " gradients; key kept in state.",
    paper="Neelakantan et al., Adding Gradient Noise Improves Learning for"
    " Very Deep Networks, 2015, https://arxiv.org/abs/1511.06807",
    reference="statistical test of the variance schedule (same law as"
    " optax.add_noise)",
    example=dict(eta=0.01, gamma=0.55, seed=0),
    extra_args=("key",),
    invalid=(
        (dict(eta=-1.0), ValueError),
        (dict(gamma=-0.5), ValueError),
        (dict(seed=1.5), TypeError),
    ),
)
def add_gradient_noise(
    eta: float = 0.01,
    gamma: float = 0.55,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds annealed Gaussian noise to the updates (gradients).

  .. math::

    \tilde g_t = g_t + \mathcal N(0, \sigma_t^2), \qquad
    \sigma_t^2 = \frac{\eta}{(1 + t)^{\gamma}}

  with :math:`t = 0` for the first update (the same law as
  ``optax.add_noise``). The paper uses :math:`\gamma = 0.55` and
  :math:`\eta \in \{0.01, 0.3, 1.0\}` and adds the noise after gradient
  clipping, before the optimizer: put this first in an ``optax.chain``.

  The PRNG key lives in the state (seeded by ``seed``) and is split at every
  update; an extra argument ``key=`` (a PRNG key) overrides it for that
  update (the state key then stays unchanged). Unknown extra arguments are
  ignored. Noise is drawn in each leaf's dtype (bf16 stays bf16).

  Args:
    eta: :math:`\eta` >= 0, the variance at :math:`t = 0`.
    gamma: :math:`\gamma` >= 0, the annealing exponent.
    seed: integer seed of the state's key.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Neelakantan et al., `Adding Gradient Noise Improves Learning for Very Deep
    Networks <https://arxiv.org/abs/1511.06807>`_, 2015.
  """
  base.check_nonneg("eta", eta)
  base.check_nonneg("gamma", gamma)
  base.check_int("seed", seed)

  def init_fn(params):
    del params
    return AddGradientNoiseState(count=jnp.zeros([], jnp.int32),
                                 key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, key=None, **extra_args):
    del params, extra_args
    if key is None:
      next_key, use_key = jax.random.split(state.key)
    else:
      next_key, use_key = state.key, key
    t = state.count.astype(jnp.result_type(float))
    std = jnp.sqrt(eta / (1.0 + t) ** gamma)
    leaves, treedef = jax.tree.flatten(updates)
    leaves = [jnp.asarray(g) for g in leaves]
    keys = jax.random.split(use_key, max(len(leaves), 1))
    noisy = [
        (g + std.astype(g.dtype) * jax.random.normal(k, g.shape, g.dtype))
        for g, k in zip(leaves, keys)
    ]
    return treedef.unflatten(noisy), AddGradientNoiseState(
        count=optax.safe_increment(state.count), key=next_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@base.register(
    family="research",
    summary="Gradient noise around any optimizer: chain(add_gradient_noise,"
    " inner).",
    paper="Neelakantan et al., Adding Gradient Noise Improves Learning for"
    " Very Deep Networks, 2015, https://arxiv.org/abs/1511.06807",
    reference="statistical test of the variance schedule",
    example=dict(inner="adam", eta=0.01),
    extra_args=("key",),
    invalid=(
        (dict(eta=-1.0), ValueError),
        (dict(inner=None), TypeError),
    ),
)
def gradient_noise(
    inner: optax.GradientTransformation,
    eta: float = 0.01,
    gamma: float = 0.55,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Annealed gradient noise in front of an optimizer (Neelakantan et al.).

  ``chain(add_gradient_noise(eta, gamma, seed), inner)``: the inner optimizer
  sees :math:`g_t + \mathcal N(0, \eta/(1+t)^\gamma)`. E.g.
  ``gradient_noise(optzoo.adam(1e-3), eta=0.3)``. Extra args are passed to
  both links (``key=`` is consumed by the noise).

  Args:
    inner: the optimizer that receives the noisy gradients.
    eta: :math:`\eta` >= 0.
    gamma: :math:`\gamma` >= 0 (paper 0.55).
    seed: integer seed of the noise key.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  base.check_transformation("inner", inner)
  return optax.chain(add_gradient_noise(eta, gamma, seed), inner)
