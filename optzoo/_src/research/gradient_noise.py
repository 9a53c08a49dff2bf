"""Gradient noise around any optimizer (Neelakantan et al., 2015)."""
from __future__ import annotations

import optax

from optzoo._src import registry
from optzoo._src import validation
from optzoo._src.transform import add_gradient_noise

__all__ = ["gradient_noise"]


@registry.register(
    family="research",
    summary="Gradient noise around any optimizer: chain(add_gradient_noise,"
    " inner).",
    paper="Neelakantan et al., Adding Gradient Noise Improves Learning for"
    " Very Deep Networks, 2015, https://arxiv.org/abs/1511.06807",
    reference="statistical test of the variance schedule",
    extra_args=("key",),
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
  validation.check_transformation("inner", inner)
  return optax.chain(add_gradient_noise(eta, gamma, seed), inner)
