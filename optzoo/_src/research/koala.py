"""KOALA: Kalman Optimization Algorithm with Loss Adaptivity (Davtyan et al.).

Both variants of the official PyTorch code (``Araachie/koala``, ``koala.py``):
``VanillaKOALA`` (KOALA-V, scalar covariance) and ``MomentumKOALA`` (KOALA-M,
2x2 covariance over (weights, velocities)). The official optimizer splits a
step into ``predict()`` (before the forward pass) and ``update(loss,
loss_sq)`` (after the backward pass). An optax ``update`` receives the
gradient at the *predicted* point, so one call here does "correct at
x̂_k, then predict x̂_{k+1}" and returns ``x̂_{k+1} - x̂_k``; ``init``
already applies the first covariance prediction.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from optzoo._src import complex_view
from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src.tree import tree_all_finite

__all__ = ["koala", "koala_loss_stats", "scale_by_koala_m", "scale_by_koala_v",
           "KoalaVState", "KoalaMState"]

_PAPER = (
    "Davtyan, Sameni, Cerkezi, Meishvili, Bielski, Favaro. KOALA: A Kalman"
    " Optimization Algorithm with Loss Adaptivity. AAAI 2022."
    " https://arxiv.org/abs/2107.03331"
)
_HOW = (
    "pass the mean minibatch loss (and, unless a fixed `r` is given, the mean"
    " of the squared per-example losses) as keyword extra args, e.g."
    " `tx.update(grads, state, params, value=loss, value_sq=jnp.mean(losses**2))`"
    " or `tx.update(grads, state, params, **optzoo.koala_loss_stats(losses))`."
)


class KoalaVState(NamedTuple):
  """State of KOALA-V.

  Attributes:
    count: number of updates done (int32).
    sigma: the *predicted* scalar covariance ``σ̂_{k+1}`` (P = σ I).
    r: the running estimate of the measurement noise R.
  """

  count: chex.Array
  sigma: chex.Array
  r: chex.Array


class KoalaMState(NamedTuple):
  """State of KOALA-M.

  Attributes:
    count: number of updates done (int32).
    cov: the *predicted* 2x2 covariance ``P̂_{k+1}`` of (weights, velocity).
    r: the running estimate of the measurement noise R.
    q_w: the adaptive process noise of the weights (EMA of the drift).
    velocity: per-leaf velocities ``v`` (params' dtype).
    param_ema: per-leaf EMA of the parameters (``gt`` in the official code).
  """

  count: chex.Array
  cov: chex.Array
  r: chex.Array
  q_w: chex.Array
  velocity: Any
  param_ema: Any


def _sumsq(x: chex.Array, dt: Any) -> chex.Array:
  x = jnp.asarray(x, dt)
  return jnp.sum(x * x)


def _tree_max(tree: Any, dt: Any) -> chex.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], dt)
  return jnp.max(jnp.stack(leaves))


def _skip_if_bad(ok: chex.Array, deltas: Any, new_state: Any, state: Any):
  """(deltas, new_state) when ``ok``, else (zeros, the old state); no host sync."""
  deltas = jax.tree.map(lambda d: jnp.where(ok, d, jnp.zeros_like(d)), deltas)
  new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o).astype(o.dtype),
                           new_state, state)
  return deltas, new_state


def koala_loss_stats(per_example_losses: chex.Array) -> dict:
  """KOALA's extra args from the per-example losses of a minibatch.

  Args:
    per_example_losses: array of per-example losses (any shape).

  Returns:
    ``{"value": mean(losses), "value_sq": mean(losses**2)}``, to be passed as
    ``tx.update(grads, state, params, **koala_loss_stats(losses))``.
  """
  losses = jnp.asarray(per_example_losses)
  return {"value": jnp.mean(losses), "value_sq": jnp.mean(losses * losses)}


registry.register(
    family="research",
    summary="KOALA's extra args (value, value_sq) from per-example losses.",
    paper=_PAPER,
    reference="definition (mean loss and mean squared loss, as in the"
    " official training loop)",
    verified="definition (tests/research/test_koala.py)",
    kind="utility",
)(koala_loss_stats)


@registry.register(
    family="research",
    summary="KOALA-V / KOALA-M: Kalman-filter optimizer driven by the loss.",
    paper=_PAPER,
    reference="official code Araachie/koala (VanillaKOALA, MomentumKOALA);"
    " verified against a NumPy re-derivation (tests/research/test_koala.py)",
    verified="NumPy re-derivation of the official code Araachie/koala (tests/research/test_koala.py)",
    extra_args=("value", "value_sq"),
    needs_params=True,
)
def koala(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    variant: str = "vanilla",
    sigma: float = 0.1,
    q: float = 1.0,
    r: Optional[float] = None,
    r_decay: float = 0.9,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    sigma_v: float = 0.1,
    sigma_c: float = 0.0,
    q_w: float = 1e-2,
    q_v: float = 1e-2,
    q_w_decay: float = 0.9,
    ema_decay: float = 0.9,
    r_init: float = 1.0,
    eps: float = 1e-9,
    direction: str = "code",
) -> optax.GradientTransformationExtraArgs:
  r"""KOALA: an extended Kalman filter on the parameters, measured by the loss.

  The minibatch loss :math:`L_k` is a noisy measurement (noise variance
  :math:`R_k`) of a target loss; the EKF's measurement Jacobian is the
  gradient. Every parameter leaf is treated as its own "layer" (the paper's
  layer-wise approximation) and the posterior covariance is collapsed with
  the largest per-leaf eigenvalue. With :math:`\tilde g_p = g_p + \lambda p`
  (``weight_decay`` :math:`\lambda`), :math:`L_p = L + \tfrac{\lambda}{2}
  \|p\|^2`, the learning-rate multiplier :math:`\eta_k` and
  :math:`R_k = \alpha_R R_{k-1} + (1-\alpha_R)\,\overline{\ell^2}` (or a fixed
  ``r``):

  **KOALA-V** (``variant="vanilla"``), :math:`P = \sigma I`:

  .. math::

    \hat\sigma_k &= \sigma_{k-1} + q \\
    S_p &= \hat\sigma_k \|\tilde g_p\|^2 + R_k \\
    p &\leftarrow p - \eta_k L_p \frac{\hat\sigma_k}{S_p}\, g_p \\
    \sigma_k &= \hat\sigma_k - \hat\sigma_k^2 \max_p \|\tilde g_p\|^2 / S_p

  **KOALA-M** (``variant="momentum"``), state :math:`(p, v)` per leaf,
  :math:`F = [[1, 1], [0, a]]`, :math:`Q = \mathrm{diag}(q_w, q_v)`:

  .. math::

    S_p &= \|\tilde g_p\|^2 \hat P_{00} + R_k, \quad
    K_1 = \eta_k \hat P_{00} L_p / S_p, \quad K_2 = \eta_k \hat P_{10} L_p / S_p \\
    p &\leftarrow p - K_1 \tilde g_p, \quad v \leftarrow v - K_2 \tilde g_p,
    \quad \bar p \leftarrow 0.9\, \bar p + 0.1\, p \\
    P &= \hat P - \hat P\, \mathrm{diag}(h, 0)\, \hat P^\top,
    \quad h = \max_p \|\tilde g_p\|^2 / S_p \\
    q_w &\leftarrow 0.9\, q_w + 0.1\, \big\|(\|\bar p - p\|)_p\big\|_2 / N \\
    p &\leftarrow p + v, \quad v \leftarrow a v, \quad
    \hat P \leftarrow F P F^\top + Q

  (:math:`N` = total number of parameters.) Leaves whose raw gradient norm
  is below ``eps`` are skipped, as in the code (if every leaf is skipped the
  covariance is not reduced).

  Non-finite inputs. If the loss ``value``, the ``value_sq`` used by the
  online R estimate (only when ``r is None``) or any gradient entry is NaN or
  Inf, the step is skipped: the update is exactly 0 and the state (count,
  covariance, R, and KOALA-M's q_w, velocities and parameter EMA) is returned
  unchanged, so a single bad minibatch neither corrupts the parameters nor
  poisons R for good (a NaN ``value_sq`` would otherwise make R NaN forever,
  an Inf one would make R infinite and every later update 0). The check is
  done on device (``jnp.where``), without a host sync; the official code has
  no such guard.

  Paper vs official code. The code's learning rate :math:`\eta_k` multiplies
  the correction with a target loss of 0; this equals the paper's
  loss-adaptive target :math:`L^{target}_k = (1-\eta_k) L_k`. The paper does
  not treat weight decay; the code adds it to the loss (:math:`L_p`,
  :math:`\tilde g_p`) but KOALA-V's step uses the *raw* gradient
  :math:`g_p` while KOALA-M's uses :math:`\tilde g_p`. ``direction="code"``
  (default) reproduces that; ``direction="regularized"`` uses
  :math:`\tilde g_p` in both (the EKF-consistent choice). The code keeps KOALA-M's
  covariance in float64; here the scalar state uses the widest float dtype of
  the params (at least float32), i.e. float64 only under ``jax_enable_x64``.

  Defaults follow the official training script (``train.py``: ``sigma=0.1``,
  weight decay 5e-4, lr multiplier 1 with a step schedule); the optimizer
  classes' own defaults are ``sigma=1`` and weight decay 0.

  Complex parameters are treated as their real view (``torch.view_as_real``:
  real and imaginary parts as independent reals), so a layer's statistics sum
  over both parts.

  Args:
    learning_rate: the multiplier :math:`\eta_k` of the correction, a float
      or an ``optax.Schedule`` of the update count (0 for the first update).
    variant: ``"vanilla"`` (KOALA-V) or ``"momentum"`` (KOALA-M).
    sigma: initial covariance :math:`\sigma_0` (KOALA-V) / :math:`P_{00}`
      (KOALA-M, ``sw`` in the code).
    q: process noise of KOALA-V (unused by KOALA-M).
    r: fixed measurement noise :math:`R`; ``None`` estimates it online from
      the ``value_sq`` extra arg.
    r_decay: EMA coefficient :math:`\alpha_R` of the online R estimate.
    weight_decay: :math:`\lambda`, folded into the loss as in the code.
    momentum: KOALA-M's velocity decay :math:`a`.
    sigma_v: KOALA-M's initial velocity variance :math:`P_{11}` (``sv``).
    sigma_c: KOALA-M's initial off-diagonal :math:`P_{01}` (``sc``).
    q_w: KOALA-M's initial weight process noise (then adaptive).
    q_v: KOALA-M's fixed velocity process noise.
    q_w_decay: EMA coefficient of the adaptive :math:`q_w` (0.9 in the code).
    ema_decay: EMA coefficient of the parameter average :math:`\bar p`
      (0.9 in the code).
    r_init: initial value of the online R estimate (1.0 in the code).
    eps: leaves with a raw gradient norm below ``eps`` are skipped.
    direction: ``"code"`` or ``"regularized"`` (see above).

  With ``flax.nnx.Optimizer`` pass the extra args to
  ``optimizer.update(model, grads, value=..., value_sq=...)``; linen's
  ``TrainState.apply_gradients`` does not forward extra args, so call
  ``state.tx.update(grads, state.opt_state, state.params, value=...)``
  yourself (tests/research/test_koala.py shows both).

  ``koala`` validates every argument and returns
  :func:`scale_by_koala_v` (``variant="vanilla"``) or :func:`scale_by_koala_m`
  (``variant="momentum"``) with the arguments that variant uses.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``update`` needs ``params``
    and the extra args ``value`` (mean minibatch loss at ``params``) and,
    when ``r is None``, ``value_sq`` (mean squared per-example loss); unknown
    extra args are ignored.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optzoo
    >>> params = {"w": jnp.ones(3)}
    >>> def losses(p):  # per-example losses
    ...   return (p["w"] - jnp.arange(3.0)) ** 2
    >>> tx = optzoo.koala(learning_rate=0.5)
    >>> state = tx.init(params)
    >>> g = jax.grad(lambda p: jnp.mean(losses(p)))(params)
    >>> updates, state = tx.update(g, state, params,
    ...                            **optzoo.koala_loss_stats(losses(params)))
    >>> params = optax.apply_updates(params, updates)

  References:
    Davtyan et al., `KOALA: A Kalman Optimization Algorithm with Loss
    Adaptivity <https://arxiv.org/abs/2107.03331>`_, AAAI 2022; official
    code `Araachie/koala <https://github.com/Araachie/koala>`_.
  """
  _check_common(learning_rate, sigma, r, r_decay, weight_decay, r_init, eps,
                direction)
  validation.check_choice("variant", variant, ("vanilla", "momentum"))
  validation.check_nonneg("q", q)
  _check_momentum_args(momentum, sigma_v, sigma_c, q_w, q_v, q_w_decay,
                       ema_decay)
  common = dict(learning_rate=learning_rate, sigma=sigma, r=r,
                r_decay=r_decay, weight_decay=weight_decay, r_init=r_init,
                eps=eps, direction=direction)
  if variant == "vanilla":
    return scale_by_koala_v(q=q, **common)
  return scale_by_koala_m(
      momentum=momentum, sigma_v=sigma_v, sigma_c=sigma_c, q_w=q_w, q_v=q_v,
      q_w_decay=q_w_decay, ema_decay=ema_decay, **common)


# ---------------------------------------------------------------------------
# Pieces shared by both variants
# ---------------------------------------------------------------------------


def _check_common(learning_rate, sigma, r, r_decay, weight_decay, r_init, eps,
                  direction) -> None:
  validation.check_lr(learning_rate)
  validation.check_choice("direction", direction, ("code", "regularized"))
  validation.check_positive("sigma", sigma)
  if r is not None:
    validation.check_positive("r", r)
  validation.check_beta("r_decay", r_decay)
  validation.check_nonneg("weight_decay", weight_decay)
  validation.check_positive("r_init", r_init)
  validation.check_nonneg("eps", eps)


def _check_momentum_args(momentum, sigma_v, sigma_c, q_w, q_v, q_w_decay,
                         ema_decay) -> None:
  validation.check_beta("momentum", momentum)
  validation.check_nonneg("sigma_v", sigma_v)
  validation.check_number("sigma_c", sigma_c)
  validation.check_nonneg("q_w", q_w)
  validation.check_nonneg("q_v", q_v)
  validation.check_beta("q_w_decay", q_w_decay)
  validation.check_beta("ema_decay", ema_decay)


def _lr_at(learning_rate, count):
  return learning_rate(count) if callable(learning_rate) else learning_rate


def _measurement(name, r, r_decay, state, value, value_sq, dt):
  """(loss, R used now, R for the state, inputs-finite flag)."""
  validation.require_extra_arg(value, "value", name, _HOW)
  loss = jnp.asarray(value, dt)
  if r is None:
    validation.require_extra_arg(value_sq, "value_sq", name, _HOW)
    loss_sq = jnp.asarray(value_sq, dt)
    r_new = r_decay * state.r + (1.0 - r_decay) * loss_sq
    return loss, r_new, r_new, tree_all_finite((loss, loss_sq))
  return loss, jnp.asarray(r, dt), state.r, tree_all_finite(loss)


def _leaf_stats(g, p, dt, weight_decay, eps):
  """(active, ||g~||^2, layer regularized loss term, g in dt, g~ in dt)."""
  g_ = jnp.asarray(g, dt)
  p_ = jnp.asarray(p, dt)
  active = jnp.sqrt(jnp.sum(g_ * g_)) >= eps
  lg = g_ + weight_decay * p_
  return active, jnp.sum(lg * lg), 0.5 * weight_decay * jnp.sum(p_ * p_), g_, lg


# ---------------------------------------------------------------------------
# KOALA-V
# ---------------------------------------------------------------------------


def scale_by_koala_v(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    sigma: float = 0.1,
    q: float = 1.0,
    r: Optional[float] = None,
    r_decay: float = 0.9,
    weight_decay: float = 5e-4,
    r_init: float = 1.0,
    eps: float = 1e-9,
    direction: str = "code",
) -> optax.GradientTransformationExtraArgs:
  r"""KOALA-V, the scalar-covariance KOALA (``VanillaKOALA`` in the code).

  :func:`koala` with ``variant="vanilla"``; see it for the math, the
  arguments and the extra args ``value`` / ``value_sq``.
  """
  _check_common(learning_rate, sigma, r, r_decay, weight_decay, r_init, eps,
                direction)
  validation.check_nonneg("q", q)
  name = "koala(variant='vanilla')"
  raw_direction = direction == "code"

  def init_fn(params):
    dt = tree.widest_float_dtype(params)
    return KoalaVState(
        count=jnp.zeros([], jnp.int32),
        sigma=jnp.asarray(sigma, dt) + jnp.asarray(q, dt),  # first prediction
        r=jnp.asarray(r_init, dt),
    )

  def update_fn(updates, state, params=None, *, value=None, value_sq=None,
                **extra_args):
    del extra_args
    validation.require_params(params, name)
    dt = state.sigma.dtype
    loss, cur_r, r_state, ok = _measurement(name, r, r_decay, state, value,
                                            value_sq, dt)
    ok = ok & tree_all_finite(updates)
    sig = state.sigma
    eta = jnp.asarray(_lr_at(learning_rate, state.count), dt)

    def leaf(g, p):
      active, lgn2, reg, g_, lg = _leaf_stats(g, p, dt, weight_decay, eps)
      s = sig * lgn2 + cur_r
      scale = eta * (loss + reg) * sig / s
      d = g_ if raw_direction else lg
      delta = jnp.where(active, -scale * d, jnp.zeros_like(d))
      h = jnp.where(active, lgn2 / s, jnp.zeros([], dt))
      return delta.astype(jnp.asarray(g).dtype), h

    deltas, hs = tree.tree_unzip(jax.tree.map(leaf, updates, params), updates, 2)
    hh = _tree_max(jax.tree.leaves(hs), dt)
    sigma_post = sig - sig * sig * hh
    new_state = KoalaVState(
        count=optax.safe_increment(state.count),
        sigma=sigma_post + jnp.asarray(q, dt),
        r=r_state,
    )
    return _skip_if_bad(ok, deltas, new_state, state)

  # Complex leaves as their real view (per-layer sums over both parts).
  return complex_view.on_real_view(
      optax.GradientTransformationExtraArgs(init_fn, update_fn))


# ---------------------------------------------------------------------------
# KOALA-M
# ---------------------------------------------------------------------------


def _transition(momentum, dt):
  """The state transition F = [[1, 1], [0, a]] of (weights, velocity)."""
  return jnp.asarray([[1.0, 1.0], [0.0, momentum]], dt)


def _drift(param_ema, params, dt, n_total):
  """The norm of the per-leaf norms of ``param_ema - params``, over N."""
  sq = jax.tree.leaves(jax.tree.map(
      lambda e, p: _sumsq(jnp.asarray(e, dt) - jnp.asarray(p, dt), dt),
      param_ema, params))
  if not sq:
    return jnp.zeros([], dt)
  # norm of the per-leaf norms = sqrt of the sum of squares.
  return jnp.sqrt(jnp.sum(jnp.stack(sq))) / n_total


def _num_params(params) -> float:
  """The total number of parameters N (at least 1) as a float."""
  return max(float(sum(int(jnp.size(x)) for x in jax.tree.leaves(params))), 1.0)


def _predict_cov(f, cov_post, qw, q_v, dt):
  """P̂ = F P Fᵀ + diag(q_w, q_v)."""
  return f @ cov_post @ f.T + jnp.diag(jnp.stack([qw, jnp.asarray(q_v, dt)]))


def _koala_m_leaf(g, p, v, e, *, cov, r, loss, eta, dt, weight_decay, eps,
                  ema_decay, momentum):
  """One leaf of KOALA-M: (delta, new velocity, new EMA, corrected p, h)."""
  # correct: p <- p - K1 g~, v <- v - K2 g~, then the parameter EMA.
  active, lgn2, reg, _, lg = _leaf_stats(g, p, dt, weight_decay, eps)
  s = lgn2 * cov[0, 0] + r
  k1 = cov[0, 0] / s * (loss + reg) * eta
  k2 = cov[1, 0] / s * (loss + reg) * eta
  corr = jnp.where(active, -k1 * lg, jnp.zeros_like(lg))
  p1 = jnp.asarray(p, dt) + corr
  v1 = jnp.asarray(v, dt) + jnp.where(active, -k2 * lg, jnp.zeros_like(lg))
  e_ = jnp.asarray(e, dt)
  e1 = jnp.where(active, ema_decay * e_ + (1.0 - ema_decay) * p1, e_)
  h = jnp.where(active, lgn2 / s, jnp.zeros([], dt))
  # predict: p <- p + v ; v <- a v
  delta = corr + v1
  gdt = jnp.asarray(g).dtype
  return (delta.astype(gdt), (momentum * v1).astype(jnp.asarray(v).dtype),
          e1.astype(jnp.asarray(e).dtype), p1, h)


def scale_by_koala_m(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    sigma: float = 0.1,
    r: Optional[float] = None,
    r_decay: float = 0.9,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    sigma_v: float = 0.1,
    sigma_c: float = 0.0,
    q_w: float = 1e-2,
    q_v: float = 1e-2,
    q_w_decay: float = 0.9,
    ema_decay: float = 0.9,
    r_init: float = 1.0,
    eps: float = 1e-9,
    direction: str = "code",
) -> optax.GradientTransformationExtraArgs:
  r"""KOALA-M, KOALA with a 2x2 covariance over (weights, velocities).

  :func:`koala` with ``variant="momentum"`` (``MomentumKOALA`` in the code);
  see it for the math, the arguments and the extra args ``value`` /
  ``value_sq``. KOALA-M always steps along the regularized gradient, so
  ``direction`` has no effect here (it is accepted for symmetry with
  :func:`scale_by_koala_v`).
  """
  _check_common(learning_rate, sigma, r, r_decay, weight_decay, r_init, eps,
                direction)
  _check_momentum_args(momentum, sigma_v, sigma_c, q_w, q_v, q_w_decay,
                       ema_decay)
  name = "koala(variant='momentum')"

  def init_fn(params):
    dt = tree.widest_float_dtype(params)
    zeros = optax.tree_utils.tree_zeros_like(params)
    qw = (q_w_decay * jnp.asarray(q_w, dt)
          + (1.0 - q_w_decay) * _drift(zeros, params, dt, _num_params(params)))
    p0 = jnp.asarray([[sigma, sigma_c], [sigma_c, sigma_v]], dt)
    return KoalaMState(
        count=jnp.zeros([], jnp.int32),
        cov=_predict_cov(_transition(momentum, dt), p0, qw, q_v, dt),
        r=jnp.asarray(r_init, dt),
        q_w=qw,
        velocity=zeros,
        param_ema=optax.tree_utils.tree_zeros_like(params),
    )

  def update_fn(updates, state, params=None, *, value=None, value_sq=None,
                **extra_args):
    del extra_args
    validation.require_params(params, name)
    dt = state.cov.dtype
    loss, cur_r, r_state, ok = _measurement(name, r, r_decay, state, value,
                                            value_sq, dt)
    ok = ok & tree_all_finite(updates)
    pc = state.cov
    eta = jnp.asarray(_lr_at(learning_rate, state.count), dt)

    leaf = functools.partial(
        _koala_m_leaf, cov=pc, r=cur_r, loss=loss, eta=eta, dt=dt,
        weight_decay=weight_decay, eps=eps, ema_decay=ema_decay,
        momentum=momentum)
    deltas, vel, ema, p1, hs = tree.tree_unzip(
        jax.tree.map(leaf, updates, params, state.velocity, state.param_ema),
        updates, 5)
    hh = _tree_max(jax.tree.leaves(hs), dt)
    col = pc[:, 0]
    cov_post = pc - hh * jnp.outer(col, col)
    # predict for the next step
    qw = (q_w_decay * state.q_w
          + (1.0 - q_w_decay) * _drift(ema, p1, dt, _num_params(params)))
    new_state = KoalaMState(
        count=optax.safe_increment(state.count),
        cov=_predict_cov(_transition(momentum, dt), cov_post, qw, q_v, dt),
        r=r_state,
        q_w=qw,
        velocity=vel,
        param_ema=ema,
    )
    return _skip_if_bad(ok, deltas, new_state, state)

  # Complex leaves as their real view (per-layer sums over both parts).
  return complex_view.on_real_view(
      optax.GradientTransformationExtraArgs(init_fn, update_fn))
