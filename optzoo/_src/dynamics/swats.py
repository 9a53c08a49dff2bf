"""SWATS: switching from Adam to SGD (Keskar & Socher, 2017) -- issue 3."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo._src import base

__all__ = ["swats", "SwatsState"]


class SwatsState(NamedTuple):
  """State of :func:`swats`.

  With ``granularity="global"`` the switch fields are scalars; with
  ``"leaf"`` they are trees of scalars shaped like the params.

  Attributes:
    count: steps taken so far (int32; the paper's :math:`k` after the step).
    mu: Adam first moment :math:`m`.
    nu: Adam second moment :math:`a`.
    momentum: the SGD-phase buffer :math:`v` (zero until the switch).
    lam: the running average :math:`\\lambda` of the projected SGD lr
      :math:`\\gamma` (not bias-corrected).
    sgd_phase: ``True`` once switched to SGD.
    switch_step: the step :math:`k` at which the switch happened (0 = not
      yet). The first SGD step is ``switch_step + 1``.
    sgd_lr: the learned SGD learning rate :math:`\\Lambda` (0 before the
      switch).
    lr_at_switch: the Adam learning rate :math:`\\alpha_k` at the switch (the
      SGD lr follows later changes of a learning-rate schedule).
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  momentum: optax.Updates
  lam: Any
  sgd_phase: Any
  switch_step: Any
  sgd_lr: Any
  lr_at_switch: Any


def _fdtype():
  return jnp.result_type(float)


@base.register(
    family="Team Adam",
    summary="SWATS: Adam, then SGD with momentum at the learning rate"
    " estimated by projection, switched on device.",
    paper="Keskar & Socher, Improving Generalization Performance by Switching"
    " from Adam to SGD, 2017, https://arxiv.org/abs/1712.07628",
    reference="NumPy re-derivation of the paper's Algorithm 1 (the"
    " torch_optimizer / pytorch_optimizer ports have bugs, see docstring)",
    example=dict(learning_rate=1e-3),
    invalid=(
        (dict(learning_rate=-1.0), ValueError),
        (dict(b1=1.0), ValueError),
        (dict(b2=-0.1), ValueError),
        (dict(eps=-1e-8), ValueError),
        (dict(weight_decay=-1.0), ValueError),
        (dict(switch_atol=-1.0), ValueError),
        (dict(switch_rtol=-1.0), ValueError),
        (dict(granularity="tensor"), ValueError),
        (dict(nesterov=1), TypeError),
    ),
)
def swats(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    switch_atol: float = 1e-9,
    switch_rtol: float = 0.0,
    granularity: str = "global",
) -> optax.GradientTransformation:
  r"""SWATS: start with Adam, switch to SGD with momentum (Algorithm 1).

  Adam phase (step :math:`k`, gradient :math:`g_k`, eps on the raw
  :math:`\sqrt{a_k}` as in the paper):

  .. math::

    m_k = \beta_1 m_{k-1} + (1-\beta_1) g_k, \quad
    a_k = \beta_2 a_{k-1} + (1-\beta_2) g_k^2, \quad
    p_k = -\alpha_k \frac{\sqrt{1-\beta_2^k}}{1-\beta_1^k}
          \frac{m_k}{\sqrt{a_k} + \epsilon}, \quad w_k = w_{k-1} + p_k.

  Projection estimate of the SGD learning rate (if :math:`p_k^\top g_k \ne
  0`):

  .. math::

    \gamma_k = \frac{p_k^\top p_k}{-p_k^\top g_k}, \quad
    \lambda_k = \beta_2 \lambda_{k-1} + (1-\beta_2)\gamma_k, \quad
    \Lambda_k = \frac{\lambda_k}{1-\beta_2^k}.

  Switch when :math:`k > 1` and :math:`|\Lambda_k - \gamma_k| <
  \text{atol} + \text{rtol}\,|\gamma_k|` (paper: absolute tolerance
  :math:`10^{-9}`, ``switch_rtol=0``); then :math:`\Lambda = \Lambda_k`,
  :math:`v = 0`, and every later step is SGD with momentum

  .. math::

    v_k = \beta_1 v_{k-1} + g_k, \qquad w_k = w_{k-1} - (1-\beta_1)\Lambda v_k

  (``nesterov=True`` uses :math:`g_k + \beta_1 v_k` instead of :math:`v_k`,
  the torch SGD convention). The switch decision is taken at the end of step
  :math:`k` (that step is still an Adam step). Everything runs on device: both
  branches are computed and selected with ``jnp.where``; the phase, switch
  step and :math:`\Lambda` are in the state (:class:`SwatsState`). Safety
  guard beyond the paper: a switch also requires :math:`\Lambda_k > 0`.

  With a learning-rate schedule the SGD lr follows its relative changes:
  the SGD step uses :math:`\Lambda\,\alpha_k/\alpha_{\text{switch}}` (equal
  to :math:`\Lambda` for a constant lr). ``weight_decay`` is coupled L2
  (added to the gradient in both phases). ``granularity="global"`` (paper:
  one parameter vector, one switch) sums :math:`p^\top g` and :math:`p^\top
  p` over all leaves; ``"leaf"`` gives every leaf its own estimate and switch
  (as the PyTorch ports do per tensor).

  Defaults follow the paper (``eps = switch_atol = 1e-9``). Known problems of
  the PyTorch ports (see the issue / reference-semantics.md 3.8):
  ``torch_optimizer.SWATS`` rescales its SGD momentum buffer in place by
  :math:`(1-\beta_1)` every step (effective momentum
  :math:`\beta_1(1-\beta_1)`), mutates ``p.grad``, uses a hard-coded
  ``allclose(rtol=1e-6)`` test and switches the whole group mid-loop;
  ``pytorch_optimizer.SWATS`` ties the switch tolerance to ``eps``
  (``rtol=eps``) and adds ``1e-15`` inside the square root. Neither is
  reproduced here; the tests use a NumPy re-derivation of Algorithm 1.

  Args:
    learning_rate: Adam's :math:`\alpha` (float or schedule).
    b1: :math:`\beta_1` in [0, 1) (Adam and the SGD momentum).
    b2: :math:`\beta_2` in [0, 1) (Adam and the average of :math:`\gamma`).
    eps: :math:`\epsilon` >= 0 in the Adam denominator.
    weight_decay: coupled L2 coefficient >= 0.
    nesterov: Nesterov momentum in the SGD phase.
    switch_atol: absolute tolerance of the switch test (>= 0).
    switch_rtol: relative tolerance of the switch test (>= 0).
    granularity: ``"global"`` (paper) or ``"leaf"``.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optzoo
    >>> tx = optzoo.swats(1e-3)
    >>> state = tx.init({"w": jnp.zeros(3)})
    >>> bool(state.sgd_phase), int(state.switch_step)
    (False, 0)

  References:
    Keskar & Socher, `Improving Generalization Performance by Switching from
    Adam to SGD <https://arxiv.org/abs/1712.07628>`_, 2017.
  """
  base.check_lr(learning_rate)
  base.check_beta("b1", b1)
  base.check_beta("b2", b2)
  base.check_nonneg("eps", eps)
  base.check_nonneg("weight_decay", weight_decay)
  base.check_bool("nesterov", nesterov)
  base.check_nonneg("switch_atol", switch_atol)
  base.check_nonneg("switch_rtol", switch_rtol)
  base.check_choice("granularity", granularity, ("global", "leaf"))
  per_leaf = granularity == "leaf"

  def _scalars(params, value, dtype):
    if per_leaf:
      return jax.tree.map(lambda _: jnp.full([], value, dtype), params)
    return jnp.full([], value, dtype)

  def init_fn(params):
    fd = _fdtype()
    zeros = jax.tree.map(jnp.zeros_like, params)
    return SwatsState(
        count=jnp.zeros([], jnp.int32),
        mu=zeros,
        nu=jax.tree.map(jnp.zeros_like, params),
        momentum=jax.tree.map(jnp.zeros_like, params),
        lam=_scalars(params, 0.0, fd),
        sgd_phase=_scalars(params, False, jnp.bool_),
        switch_step=_scalars(params, 0, jnp.int32),
        sgd_lr=_scalars(params, 0.0, fd),
        lr_at_switch=_scalars(params, 0.0, fd),
    )

  def update_fn(updates, state, params=None):
    fd = _fdtype()
    grads = updates
    if not base.is_literal_zero(weight_decay):
      base.require_params(params, "swats(weight_decay > 0)")
      grads = jax.tree.map(lambda g, p: g + weight_decay * p.astype(g.dtype),
                           grads, params)
    count = optax.safe_increment(state.count)
    k = count.astype(fd)
    lr = (learning_rate(state.count) if callable(learning_rate)
          else learning_rate)
    lr = jnp.asarray(lr, fd)
    b1_ = jnp.asarray(b1, fd)
    b2_ = jnp.asarray(b2, fd)
    bc1 = 1.0 - b1_ ** k
    bc2 = 1.0 - b2_ ** k

    # --- Adam phase (always computed) ---------------------------------------
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda a, g: b2 * a + (1.0 - b2) * g * g, state.nu, grads)
    step_size = -lr * jnp.sqrt(bc2) / bc1
    adam_p = jax.tree.map(
        lambda m, a: step_size * m / (jnp.sqrt(a) + eps), mu, nu)

    def dot(x, y):
      return jnp.sum(x.astype(fd) * y.astype(fd))

    pg = jax.tree.map(dot, adam_p, grads)
    pp = jax.tree.map(dot, adam_p, adam_p)
    if not per_leaf:
      pg = sum(jax.tree.leaves(pg), jnp.zeros([], fd))
      pp = sum(jax.tree.leaves(pp), jnp.zeros([], fd))

    def switch_logic(pg, pp, lam, phase, sw_step, sgd_lr, lr_sw):
      nonzero = pg != 0
      gamma = pp / jnp.where(nonzero, -pg, 1.0)
      lam_new = jnp.where(nonzero, b2_ * lam + (1.0 - b2_) * gamma, lam)
      big_lam = lam_new / bc2
      close = jnp.abs(big_lam - gamma) < switch_atol + switch_rtol * jnp.abs(
          gamma)
      switch = (~phase) & nonzero & (count > 1) & close & (big_lam > 0)
      return (
          jnp.where(phase, lam, lam_new),
          phase | switch,
          jnp.where(switch, count, sw_step),
          jnp.where(switch, big_lam, sgd_lr),
          jnp.where(switch, lr, lr_sw),
      )

    if per_leaf:
      outs = jax.tree.map(switch_logic, pg, pp, state.lam, state.sgd_phase,
                          state.switch_step, state.sgd_lr, state.lr_at_switch)
      lam, new_phase, sw_step, sgd_lr, lr_sw = base.tree_unzip(outs, pg, 5)
      old_phase = state.sgd_phase
      eff_lr = jax.tree.map(
          lambda lam_, lsw: lam_ * jnp.where(lsw > 0, lr / jnp.where(
              lsw > 0, lsw, 1.0), 1.0), state.sgd_lr, state.lr_at_switch)
    else:
      lam, new_phase, sw_step, sgd_lr, lr_sw = switch_logic(
          pg, pp, state.lam, state.sgd_phase, state.switch_step,
          state.sgd_lr, state.lr_at_switch)
      lsw = state.lr_at_switch
      scalar_eff = state.sgd_lr * jnp.where(
          lsw > 0, lr / jnp.where(lsw > 0, lsw, 1.0), 1.0)
      old_phase = jax.tree.map(lambda _: state.sgd_phase, grads)
      eff_lr = jax.tree.map(lambda _: scalar_eff, grads)

    # --- SGD phase (for leaves already switched before this step) ----------
    buf = jax.tree.map(lambda v, g: b1 * v + g, state.momentum, grads)
    if nesterov:
      direction = jax.tree.map(lambda v, g: g + b1 * v, buf, grads)
    else:
      direction = buf
    sgd_u = jax.tree.map(lambda d, e: -(1.0 - b1_) * e * d, direction, eff_lr)

    new_updates = jax.tree.map(
        lambda ph, s, a, g: jnp.where(ph, s, a).astype(g.dtype),
        old_phase, sgd_u, adam_p, updates)
    keep = lambda ph, old, new: jnp.where(ph, old, new).astype(old.dtype)
    mu = jax.tree.map(keep, old_phase, state.mu, mu)
    nu = jax.tree.map(keep, old_phase, state.nu, nu)
    momentum = jax.tree.map(
        lambda ph, b, old: jnp.where(ph, b, jnp.zeros_like(b)).astype(
            old.dtype), old_phase, buf, state.momentum)
    return new_updates, SwatsState(
        count=count, mu=mu, nu=nu, momentum=momentum, lam=lam,
        sgd_phase=new_phase, switch_step=sw_step, sgd_lr=sgd_lr,
        lr_at_switch=lr_sw)

  return optax.GradientTransformation(init_fn, update_fn)
