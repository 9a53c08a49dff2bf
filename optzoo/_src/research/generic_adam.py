"""Generic Adam and Zou et al.'s sufficient condition (CVPR 2019)."""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src.complex_view import per_part
from optzoo._src import tree
from optzoo._src import validation

__all__ = [
    "generic_adam",
    "generic_adam_condition",
    "GenericAdamState",
    "GenericAdamReport",
]

ScalarOrSchedule = Union[float, optax.Schedule]


class GenericAdamState(NamedTuple):
  """State of :func:`generic_adam` (``count`` = :math:`t - 1`)."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _eval(x, step):
  return jnp.asarray(x(step) if callable(x) else x, tree.float_dtype())


def _hyper(learning_rate, b1, theta, s, r, step):
  """(alpha_t, beta1_t, theta_t) at the 0-based ``step`` (t = step + 1)."""
  t = jnp.asarray(step).astype(tree.float_dtype()) + 1.0
  alpha = _eval(learning_rate, step) / t ** jnp.asarray(s, tree.float_dtype())
  beta1 = _eval(b1, step)
  th = 1.0 - _eval(theta, step) / t ** jnp.asarray(r, tree.float_dtype())
  return alpha, beta1, th


@registry.register(
    family="research",
    summary="Generic Adam (Zou et al.): schedules alpha_t = a/t^s, beta1_t,"
    " theta_t = 1 - theta/t^r; no bias correction.",
    paper="Zou, Shen, Jie, Zhang & Liu, A Sufficient Condition for"
    " Convergences of Adam and RMSProp, CVPR 2019,"
    " https://arxiv.org/abs/1811.09358",
    reference="NumPy re-derivation; Reddi et al.'s counterexample",
    verified="NumPy re-derivation (tests/research/test_generic_adam.py)",
)
def generic_adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    theta: ScalarOrSchedule = 1e-3,
    eps: float = 1e-8,
    s: float = 0.5,
    r: float = 1.0,
) -> optax.GradientTransformation:
  r"""Generic Adam of Zou et al. (2019): Adam/RMSProp with schedules.

  With :math:`t = \text{step} + 1` (the first update has :math:`t = 1`):

  .. math::

    \alpha_t = \frac{\alpha(t)}{t^{s}}, \quad
    \theta_t = 1 - \frac{\theta(t)}{t^{r}}, \quad
    m_t = \beta_{1,t} m_{t-1} + (1-\beta_{1,t}) g_t, \quad
    v_t = \theta_t v_{t-1} + (1-\theta_t) g_t^2,

    x_{t+1} = x_t - \alpha_t\, m_t / \sqrt{v_t + \epsilon}

  (no bias correction, :math:`\epsilon` inside the square root, as in the
  paper). ``learning_rate`` (:math:`\alpha`), ``b1`` (:math:`\beta_{1,t}`)
  and ``theta`` may each be a float or a schedule of the 0-based step.
  Special cases: ``s=0, r=0`` is Adam without bias correction and
  :math:`\beta_2 = 1 - \theta` (RMSProp with ``b1=0``); ``r=1, theta=1``
  the AdaGrad-like average. The defaults (``s = 1/2``, ``r = 1``) give the
  paper's best rate :math:`O(\log T/\sqrt T)`; :math:`0 < r \le 2s < 2`
  satisfies the sufficient condition. Check a configuration with
  :func:`generic_adam_condition`.

  Args:
    learning_rate: :math:`\alpha` >= 0 (float or schedule), divided by
      :math:`t^s`.
    b1: :math:`\beta_{1,t}` in [0, 1) (float or schedule).
    theta: the coefficient in :math:`\theta_t = 1 - \theta/t^r`, in (0, 1]
      (float or schedule).
    eps: :math:`\epsilon` >= 0, inside the square root.
    s: exponent of the step-size decay, >= 0.
    r: exponent of :math:`1 - \theta_t`, >= 0.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Zou, Shen, Jie, Zhang & Liu, `A Sufficient Condition for Convergences of
    Adam and RMSProp <https://arxiv.org/abs/1811.09358>`_, CVPR 2019.
  """
  validation.check_lr(learning_rate)
  if not callable(b1):
    validation.check_beta("b1", b1)
  if not callable(theta):
    validation.check_unit_interval("theta", theta, low_open=True)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("s", s)
  validation.check_nonneg("r", r)

  def init_fn(params):
    return GenericAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree_utils.tree_zeros_like(params),
        nu=optax.tree_utils.tree_zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    alpha, beta1, th = _hyper(learning_rate, b1, theta, s, r, state.count)
    mu = tree.tree_moment(updates, state.mu, beta1, 1)
    # Complex leaves: the second moment and its root per real / imaginary
    # part (torch's view_as_real convention).
    nu = jax.tree.map(lambda g, v: per_part(
        lambda g, v: th * v + (1 - th) * g * g, g, v).astype(v.dtype), updates, state.nu)
    new_updates = jax.tree.map(
        lambda m, v, g: per_part(lambda m, v: -alpha * m / jnp.sqrt(v + eps), m, v
                                 ).astype(g.dtype),
        mu, nu, updates)
    return new_updates, GenericAdamState(
        count=optax.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class GenericAdamReport:
  """Result of :func:`generic_adam_condition` (per-clause pass/fail).

  Attributes:
    momentum_bounded: (a) :math:`0 \\le \\beta_{1,t} \\le \\beta_1 < 1`.
    theta_valid: (b) :math:`0 < \\theta_t < 1` and non-decreasing.
    gamma_below_one: :math:`\\gamma = \\beta_1^2/\\theta_1 < 1`.
    chi_almost_nonincreasing: (c) :math:`\\max_{s \\ge t}\\chi_s/\\chi_t \\le
      C_0` with :math:`\\chi_t = \\alpha_t/\\sqrt{1-\\theta_t}`.
    ratio_vanishes: (d) the bound ratio
      :math:`R(T) = \\sum_{t\\le T}\\alpha_t\\sqrt{1-\\theta_t}/(T\\alpha_T)`
      decreases: fitted log-log slope over the last decade < ``-slope_tol``.
    holds: all clauses pass.
    beta1: :math:`\\max_t \\beta_{1,t}`.
    gamma: :math:`\\beta_1^2/\\theta_1`.
    chi_ratio: :math:`\\max_{t \\le s}\\chi_s/\\chi_t`.
    slope: the fitted slope of :math:`\\log R` vs :math:`\\log T`.
    ratio: :math:`R(T)` at the last step.
    rate: closed-form rate for power-law schedules (constant ``learning_rate``
      and ``theta``), e.g. ``"O(log T / sqrt(T))"``; ``None`` otherwise.
  """

  momentum_bounded: bool
  theta_valid: bool
  gamma_below_one: bool
  chi_almost_nonincreasing: bool
  ratio_vanishes: bool
  holds: bool
  beta1: float
  gamma: float
  chi_ratio: float
  slope: float
  ratio: float
  rate: Union[str, None]

  def __str__(self) -> str:
    ok = lambda b: "pass" if b else "FAIL"
    return (
        f"generic Adam sufficient condition: {'HOLDS' if self.holds else 'FAILS'}\n"
        f"  (a) 0 <= beta1_t <= {self.beta1:.4g} < 1: {ok(self.momentum_bounded)}\n"
        f"  (b) 0 < theta_t < 1, non-decreasing: {ok(self.theta_valid)}\n"
        f"      gamma = beta1^2/theta_1 = {self.gamma:.4g} < 1:"
        f" {ok(self.gamma_below_one)}\n"
        f"  (c) chi_t almost non-increasing (max ratio {self.chi_ratio:.4g}):"
        f" {ok(self.chi_almost_nonincreasing)}\n"
        f"  (d) bound ratio R(T) -> 0 (slope {self.slope:.3f}, R(T)="
        f"{self.ratio:.4g}): {ok(self.ratio_vanishes)}\n"
        f"  rate: {self.rate}")


@registry.register(
    family="tool",
    kind="utility",
    summary="Checks Zou et al.'s sufficient condition for generic Adam"
    " schedules (per-clause report).",
    paper="Zou et al., CVPR 2019, https://arxiv.org/abs/1811.09358",
    reference="closed form",
    verified="closed form (tests/research/test_generic_adam.py)",
)
def generic_adam_condition(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    theta: ScalarOrSchedule = 1e-3,
    s: float = 0.5,
    r: float = 1.0,
    num_steps: int = 100_000,
    c0: float = 1.0,
    tol: float = 1e-9,
    slope_tol: float = 0.05,
) -> GenericAdamReport:
  r"""Evaluates Zou et al.'s sufficient condition on :math:`t = 1..T`.

  Uses the same parametrisation as :func:`generic_adam`. Clauses (see
  :class:`GenericAdamReport`): (a) :math:`0 \le \beta_{1,t} \le \beta_1 < 1`;
  (b) :math:`0 < \theta_t < 1`, non-decreasing, and :math:`\gamma =
  \beta_1^2/\theta_1 < 1`; (c) :math:`\chi_t = \alpha_t/\sqrt{1-\theta_t}`
  is almost non-increasing (:math:`\chi_s \le C_0 \chi_t` for
  :math:`s \ge t`); (d) the bound
  :math:`R(T) = \sum_{t\le T} \alpha_t\sqrt{1-\theta_t}\,/\,(T\alpha_T)`
  tends to 0 (its log–log slope over the last decade is below
  ``-slope_tol``). Constant :math:`\theta_t` (``r=0``, plain Adam/RMSProp)
  with :math:`\alpha_t = \alpha/\sqrt t` fails (d): :math:`R(T)` tends to a
  constant, which is why Reddi et al.'s counterexample breaks Adam.

  Args:
    learning_rate, b1, theta, s, r: as in :func:`generic_adam`.
    num_steps: :math:`T` >= 10.
    c0: :math:`C_0` >= 1 in clause (c).
    tol: numerical tolerance of the monotonicity checks.
    slope_tol: clause (d) needs a slope below ``-slope_tol``.

  Returns:
    A :class:`GenericAdamReport` (``print`` it for a readable summary).
  """
  validation.check_int("num_steps", num_steps, minimum=10)
  if c0 < 1:
    raise ValueError(f"`c0` must be >= 1, got {c0!r}.")
  steps = np.arange(num_steps)
  t = np.arange(1, num_steps + 1, dtype=np.float64)

  def values(x):
    if callable(x):
      v = jax.vmap(x)(jnp.asarray(steps))
    else:
      v = x
    return np.broadcast_to(np.asarray(v, np.float64), t.shape)

  # float64 NumPy even without jax x64: theta_t = 1 - 1e-3/t needs it.
  alpha = values(learning_rate) / t ** float(s)
  beta1 = values(b1)
  one_minus_th = values(theta) / t ** float(r)  # exact 1 - theta_t
  th = 1.0 - one_minus_th

  b1_max = float(beta1.max())
  momentum_bounded = bool(beta1.min() >= 0 and b1_max < 1)
  theta_valid = bool(np.all(one_minus_th < 1) and np.all(one_minus_th > 0)
                     and np.all(np.diff(one_minus_th) <= tol))
  gamma = b1_max ** 2 / th[0] if th[0] > 0 else math.inf
  gamma_below_one = bool(gamma < 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    chi = alpha / np.sqrt(one_minus_th)
    suffix_max = np.maximum.accumulate(chi[::-1])[::-1]
    chi_ratio = float(np.nanmax(suffix_max / chi))
    chi_ok = bool(np.all(np.isfinite(chi)) and chi_ratio <= c0 * (1 + tol))
    ratio = np.cumsum(alpha * np.sqrt(np.clip(one_minus_th, 0, None))) / (
        t * alpha)
  lo = max(num_steps // 10, 1)
  sel = slice(lo - 1, num_steps)
  if np.all(np.isfinite(ratio[sel])) and np.all(ratio[sel] > 0):
    slope = float(np.polyfit(np.log(t[sel]), np.log(ratio[sel]), 1)[0])
  else:
    slope = math.nan
  ratio_vanishes = bool(slope < -slope_tol)

  rate = None
  if not callable(learning_rate) and not callable(theta):
    e = min(1.0 - s, r / 2.0)
    if r == 0 or e <= 0:
      rate = "no guarantee (R(T) does not vanish)"
    elif math.isclose(1.0 - s, r / 2.0):
      rate = f"O(log T / T^{e:g})"
    else:
      rate = f"O(T^-{e:g})"
  holds = (momentum_bounded and theta_valid and gamma_below_one and chi_ok
           and ratio_vanishes)
  return GenericAdamReport(
      momentum_bounded=momentum_bounded, theta_valid=theta_valid,
      gamma_below_one=gamma_below_one, chi_almost_nonincreasing=chi_ok,
      ratio_vanishes=ratio_vanishes, holds=holds, beta1=b1_max,
      gamma=float(gamma), chi_ratio=chi_ratio, slope=slope,
      ratio=float(ratio[-1]), rate=rate)

