"""The classic ``torch.optim`` methods: Adamax, Adadelta, Rprop and ASGD.

Each alias is an ``optax.chain`` of small primitives and reproduces the
``torch.optim`` class of the same name (torch 2.13, ``foreach=False``) to
float64 round-off, defaults included (tests/test_classic.py, fixtures
from tests/gen_torch_optim_fixtures.py).

``maximize=True`` (torch's flag) negates the gradient first, before the
coupled weight decay is added, exactly where torch does it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from optzoo._src import complex_view
from optzoo._src import registry
from optzoo._src import tree as tree_lib
from optzoo._src import validation
from optzoo._src import transform

__all__ = [
    "adadelta",
    "adamax",
    "asgd",
    "asgd_averaged_params",
    "rprop",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_asgd",
    "scale_by_rprop",
]



def _zeros_like(params):
  return jax.tree.map(jnp.zeros_like, params)


def _lerp(a, b, w):
  """``torch.lerp(a, b, w)`` for a scalar weight, with torch's two formulas.

  torch uses ``a + w (b - a)`` for ``|w| < 0.5`` and ``b - (b - a)(1 - w)``
  otherwise; the two differ in the last bit.
  """
  if isinstance(w, (int, float)):
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1 - w)
  return jnp.where(jnp.abs(w) < 0.5, a + w * (b - a), b - (b - a) * (1 - w))


# ---------------------------------------------------------------------------
# Adamax
# ---------------------------------------------------------------------------


class ScaleByAdamaxState(NamedTuple):
  """State of :func:`scale_by_adamax`."""

  count: chex.Array  # int32
  mu: optax.Updates  # torch exp_avg
  nu: optax.Updates  # torch exp_inf (exponentially weighted infinity norm)


@registry.register(
    family="primitive",
    summary="Adamax scaling: first moment over an exponentially weighted infinity norm.",
    paper="Kingma & Ba, ICLR 2015 (Section 7.1)",
    reference="torch.optim.Adamax",
    verified="torch.optim.Adamax 2.13, float64, 300 steps, via adamax (tests/test_classic.py)",
)
def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
  r"""Adamax's preconditioning, as ``torch.optim.Adamax`` computes it.

  .. math::

    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad
    \Delta_t = \frac{m_t}{(1-\beta_1^t)\, u_t}.

  ``eps`` is added to :math:`|g_t|` inside the max (torch and optax). The first
  moment uses torch's ``lerp`` formula. A complex leaf is two real coordinates
  per entry (torch's ``view_as_real``): :math:`|g|`, the max and the division
  are taken per real / imaginary part.

  Args:
    b1: first-moment decay in [0, 1).
    b2: infinity-norm decay in [0, 1).
    eps: >= 0.
  """
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)

  def init_fn(params):
    return ScaleByAdamaxState(count=jnp.zeros([], jnp.int32),
                              mu=_zeros_like(params),
                              nu=_zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    fd = tree_lib.float_dtype()
    bc = 1.0 - jnp.asarray(b1, fd) ** jnp.asarray(count, fd)
    mu = jax.tree.map(lambda g, m: _lerp(m, g, 1 - b1).astype(m.dtype),
                      updates, state.mu)
    nu = jax.tree.map(lambda g, u: complex_view.per_part(
        lambda g, u: jnp.maximum(b2 * u, jnp.abs(g) + eps), g, u).astype(u.dtype),
        updates, state.nu)
    new = jax.tree.map(lambda g, m, u: complex_view.per_part(
        lambda m, u: (m / u) / bc, m, u).astype(g.dtype), updates, mu, nu)
    return new, ScaleByAdamaxState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team Adam",
    summary="Adamax: Adam with the infinity norm in place of the second moment.",
    paper="Kingma & Ba, ICLR 2015 (Section 7.1)",
    reference="torch.optim.Adamax",
    verified="torch.optim.Adamax 2.13, float64, 300 steps (tests/test_classic.py)",
)
def adamax(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Adamax, exactly ``torch.optim.Adamax``.

  .. math::

    \theta_t = \theta_{t-1} - \frac{\eta_t}{1-\beta_1^t}\,
      \frac{m_t}{\max(\beta_2 u_{t-1}, |g_t| + \epsilon)}.

  Chain: ``[negate] -> [add_l2(weight_decay)] -> scale_by_adamax ->
  scale_by_learning_rate``. ``weight_decay`` is coupled L2 (torch);
  ``optax.adamaxw`` decouples it and differs.

  Args:
    learning_rate: :math:`\eta` (torch default 2e-3) or a schedule.
    b1, b2: torch's ``betas``.
    eps: >= 0, added to :math:`|g|` inside the max.
    weight_decay: coupled L2 coefficient.
    maximize: ascend instead of descend (torch's flag).

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
  """
  validation.check_lr(learning_rate)
  return optax.chain(*transform.maximize_links(maximize),
                     *transform.l2_links(weight_decay),
                     scale_by_adamax(b1, b2, eps),
                     transform.scale_by_learning_rate(learning_rate))


# ---------------------------------------------------------------------------
# Adadelta
# ---------------------------------------------------------------------------


class ScaleByAdadeltaState(NamedTuple):
  """State of :func:`scale_by_adadelta`."""

  square_avg: optax.Updates  # EMA of g^2
  acc_delta: optax.Updates  # EMA of the squared steps


@registry.register(
    family="primitive",
    summary="Adadelta scaling: ratio of the RMS of past steps to the RMS of gradients.",
    paper="Zeiler, arXiv:1212.5701, 2012",
    reference="torch.optim.Adadelta",
    verified="torch.optim.Adadelta 2.13, float64, 300 steps, via adadelta (tests/test_classic.py)",
)
def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> optax.GradientTransformation:
  r"""Adadelta's scaling, as ``torch.optim.Adadelta`` computes it.

  .. math::

    v_t = \rho v_{t-1} + (1-\rho) g_t^2, \quad
    \Delta_t = \frac{\sqrt{a_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \quad
    a_t = \rho a_{t-1} + (1-\rho)\Delta_t^2.

  The learning rate is *not* part of :math:`a_t` (torch, Zeiler's Algorithm 1);
  it multiplies the step afterwards. A complex leaf is two real coordinates
  per entry (torch's ``view_as_real``): the squares and square roots are
  taken per real / imaginary part.

  Args:
    rho: decay in [0, 1] (torch allows 1).
    eps: >= 0, inside both square roots.
  """
  validation.check_unit_interval("rho", rho)
  validation.check_nonneg("eps", eps)

  def init_fn(params):
    return ScaleByAdadeltaState(_zeros_like(params),
                                _zeros_like(params))

  def real_leaf(g, v, a):
    v = (rho * v + (1 - rho) * (g * g)).astype(v.dtype)
    delta = jnp.sqrt(a + eps) / jnp.sqrt(v + eps) * g
    a = (rho * a + (1 - rho) * (delta * delta)).astype(a.dtype)
    return delta.astype(g.dtype), v, a

  def leaf(g, v, a):
    # Complex leaves: per real / imaginary part (torch's view_as_real).
    return complex_view.per_part(real_leaf, g, v, a)

  def update_fn(updates, state, params=None):
    del params
    new, v, a = tree_lib.tree_unzip(
        jax.tree.map(leaf, updates, state.square_avg, state.acc_delta), updates, 3)
    return new, ScaleByAdadeltaState(v, a)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team Adam",
    summary="Adadelta: unit-corrected per-coordinate steps without a tuned learning rate.",
    paper="Zeiler, arXiv:1212.5701, 2012",
    reference="torch.optim.Adadelta",
    verified="torch.optim.Adadelta 2.13, float64, 300 steps (tests/test_classic.py)",
)
def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Adadelta, exactly ``torch.optim.Adadelta``.

  Chain: ``[negate] -> [add_l2(weight_decay)] -> scale_by_adadelta(rho, eps)
  -> scale_by_learning_rate``. torch's default learning rate is 1.0 (Zeiler's
  method has none); ``weight_decay`` is coupled L2.

  Args:
    learning_rate: multiplies the Adadelta step (torch default 1.0).
    rho: decay in [0, 1].
    eps: >= 0 (torch default 1e-6).
    weight_decay: coupled L2 coefficient.
    maximize: ascend instead of descend.

  References:
    Zeiler, `ADADELTA: An Adaptive Learning Rate Method
    <https://arxiv.org/abs/1212.5701>`_, 2012.
  """
  validation.check_lr(learning_rate)
  return optax.chain(*transform.maximize_links(maximize),
                     *transform.l2_links(weight_decay),
                     scale_by_adadelta(rho, eps),
                     transform.scale_by_learning_rate(learning_rate))


# ---------------------------------------------------------------------------
# Rprop
# ---------------------------------------------------------------------------


class ScaleByRpropState(NamedTuple):
  """State of :func:`scale_by_rprop`."""

  prev: optax.Updates  # the previous (masked) gradient
  step_size: optax.Updates  # per-coordinate step sizes


@registry.register(
    family="primitive",
    summary="Rprop: sign of the gradient times an adaptive per-coordinate step size.",
    paper="Riedmiller & Braun, ICNN 1993",
    reference="torch.optim.Rprop",
    verified="torch.optim.Rprop 2.13, float64, 300 steps, via rprop (tests/test_classic.py)",
)
def scale_by_rprop(
    initial_step_size: float = 1e-2,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> optax.GradientTransformation:
  r"""Rprop's step (the "Rprop-" variant torch implements), before the sign flip.

  With :math:`s = \mathrm{sign}(g_t\, g_{t-1})`:

  .. math::

    \delta_t = \mathrm{clip}(\delta_{t-1}\cdot
      \{\eta^+ \text{ if } s>0,\ \eta^- \text{ if } s<0,\ 1 \text{ if } s=0\},
      \delta_{\min}, \delta_{\max}),

    \tilde g_t = 0 \text{ where } s<0 \text{ else } g_t, \qquad
    \Delta_t = \mathrm{sign}(\tilde g_t)\,\delta_t,

  and :math:`\tilde g_t` is stored as the previous gradient. The clip also
  applies where :math:`s = 0` (torch); ``optax.scale_by_rprop`` skips it there
  and stores :math:`\delta_t\,\mathrm{sign}(g_t)`, which differs.

  Args:
    initial_step_size: :math:`\delta_0` (torch's ``lr``) > 0.
    eta_minus, eta_plus: torch's ``etas``, ``0 < eta_minus < 1 < eta_plus``.
    min_step_size, max_step_size: torch's ``step_sizes``.
  """
  validation.check_nonneg("initial_step_size", initial_step_size)
  validation.check_unit_interval("eta_minus", eta_minus, low_open=True, high_open=True)
  validation.check_number("eta_plus", eta_plus)
  if not isinstance(eta_plus, jax.core.Tracer) and not eta_plus > 1:
    raise ValueError(f"`eta_plus` must be > 1, got {eta_plus!r}.")
  validation.check_nonneg("min_step_size", min_step_size)
  validation.check_nonneg("max_step_size", max_step_size)

  def init_fn(params):
    return ScaleByRpropState(
        prev=_zeros_like(params),
        step_size=jax.tree.map(
            lambda p: complex_view.full_like(p, initial_step_size), params))

  def leaf(g, prev, step):
    # Complex leaves: real and imaginary parts as independent reals (torch's
    # view_as_real), each with its own step size.
    return complex_view.per_part(real_leaf, g, prev, step)

  def real_leaf(g, prev, step):
    s = jnp.sign(g * prev)
    factor = jnp.where(s > 0, eta_plus, jnp.where(s < 0, eta_minus, 1.0))
    step = jnp.clip(step * factor.astype(step.dtype), min_step_size,
                    max_step_size).astype(step.dtype)
    g = jnp.where(s < 0, jnp.zeros_like(g), g)
    return (jnp.sign(g) * step).astype(g.dtype), g.astype(prev.dtype), step

  def update_fn(updates, state, params=None):
    del params
    new, prev, step = tree_lib.tree_unzip(
        jax.tree.map(leaf, updates, state.prev, state.step_size), updates, 3)
    return new, ScaleByRpropState(prev, step)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team SGD",
    summary="Rprop: resilient backpropagation (sign-based, per-coordinate step sizes).",
    paper="Riedmiller & Braun, ICNN 1993",
    reference="torch.optim.Rprop",
    verified="torch.optim.Rprop 2.13, float64, 300 steps (tests/test_classic.py)",
)
def rprop(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Rprop, exactly ``torch.optim.Rprop``.

  ``learning_rate`` is torch's ``lr``: the *initial* step size of every
  coordinate (torch never uses ``lr`` again, so a schedule is evaluated once,
  at step 0, and an injected learning rate only matters at ``init``).
  ``eta_minus, eta_plus`` = torch ``etas``; ``min_step_size, max_step_size``
  = torch ``step_sizes``. Chain: ``[negate] -> scale_by_rprop -> scale(-1)``.

  References:
    Riedmiller & Braun, `A direct adaptive method for faster backpropagation
    learning: the RPROP algorithm <https://doi.org/10.1109/ICNN.1993.298623>`_,
    ICNN 1993.
  """
  validation.check_lr(learning_rate)
  init = learning_rate(0) if callable(learning_rate) else learning_rate
  links = transform.maximize_links(maximize)
  links += [scale_by_rprop(init, eta_minus, eta_plus, min_step_size, max_step_size),
            optax.scale(-1.0)]
  return optax.chain(*links)


# ---------------------------------------------------------------------------
# ASGD
# ---------------------------------------------------------------------------


class ScaleByAsgdState(NamedTuple):
  """State of :func:`scale_by_asgd`."""

  count: chex.Array  # int32 steps taken
  eta: chex.Array  # the step size of the next update
  mu: chex.Array  # the averaging weight of the next update
  ax: optax.Params  # the averaged parameters (read with asgd_averaged_params)


@registry.register(
    family="primitive",
    summary="Averaged SGD step with decay, and the Polyak-Ruppert average of the iterates.",
    paper="Polyak & Juditsky, SIAM J. Control Optim. 1992",
    reference="torch.optim.ASGD",
    verified="torch.optim.ASGD 2.13, float64, 300 steps, via asgd (tests/test_classic.py)",
    needs_params=True,
)
def scale_by_asgd(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
) -> optax.GradientTransformation:
  r"""torch's ASGD step (the final update: it includes the step size and sign).

  .. math::

    \theta_t = \theta_{t-1}(1 - \lambda\eta_t) - \eta_t g_t, \qquad
    \bar\theta_t = \bar\theta_{t-1} + \mu_t(\theta_t - \bar\theta_{t-1}),

    \eta_{t+1} = \frac{\gamma_t}{(1 + \lambda\gamma_t t)^{\alpha}}, \qquad
    \mu_{t+1} = \frac{1}{\max(1, t - t_0)},

  with :math:`\eta_1 = \gamma_0`, :math:`\mu_1 = 1` and :math:`\gamma_t` the
  learning rate of step :math:`t`. Where :math:`\mu_t = 1` the average is a
  copy of :math:`\theta_t` (torch). The learning rate enters the decay of
  :math:`\eta` itself, so it cannot be a separate last link.

  Args:
    learning_rate: :math:`\gamma` (float >= 0 or schedule).
    lambd: decay term :math:`\lambda`.
    alpha: power :math:`\alpha` of the step-size decay.
    t0: the step from which on the average starts.
  """
  validation.check_lr(learning_rate)
  validation.check_number("lambd", lambd)
  validation.check_number("alpha", alpha)
  validation.check_number("t0", t0)
  fd = tree_lib.float_dtype()
  lr_at = learning_rate if callable(learning_rate) else (lambda c: learning_rate)

  def init_fn(params):
    return ScaleByAsgdState(count=jnp.zeros([], jnp.int32),
                            eta=jnp.asarray(lr_at(0), fd),
                            mu=jnp.ones([], fd),
                            ax=_zeros_like(params))

  def update_fn(updates, state, params=None):
    validation.require_params(params, "asgd")
    eta, mu = state.eta, state.mu

    def leaf(g, p, ax):
      cd = tree_lib.compute_dtype(p)
      e = eta.astype(cd)
      new_p = p.astype(cd) * (1 - lambd * e) - e * g.astype(cd)
      u = (new_p - p).astype(g.dtype)
      p_applied = (p + u).astype(p.dtype)
      m = mu.astype(ax.dtype)
      new_ax = jnp.where(mu == 1, p_applied, ax + (p_applied - ax) * m).astype(ax.dtype)
      return u, new_ax

    new, ax = tree_lib.tree_unzip(jax.tree.map(leaf, updates, params, state.ax), updates, 2)
    count = optax.safe_increment(state.count)
    t = jnp.asarray(count, fd)
    lr = jnp.asarray(lr_at(state.count), fd)
    new_eta = lr / (1 + lambd * lr * t) ** alpha
    new_mu = 1 / jnp.maximum(1.0, t - t0)
    return new, ScaleByAsgdState(count, new_eta.astype(fd), new_mu.astype(fd), ax)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team SGD",
    summary="ASGD: averaged SGD (Polyak-Ruppert averaging with a decaying step size).",
    paper="Polyak & Juditsky, SIAM J. Control Optim. 1992",
    reference="torch.optim.ASGD",
    verified="torch.optim.ASGD 2.13 incl. its averaged params, float64, 300 steps (tests/test_classic.py)",
    needs_params=True,
)
def asgd(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Averaged SGD, exactly ``torch.optim.ASGD`` (see :func:`scale_by_asgd`).

  The parameters follow the (decayed) SGD iterates; the averaged parameters
  :math:`\bar\theta` (torch's ``state["ax"]``) live in the optimizer state:
  read them with :func:`asgd_averaged_params`. With torch's default
  ``t0 = 1e6`` the average is a copy of the iterate for the first million
  steps. Chain: ``[negate] -> [add_l2(weight_decay)] -> scale_by_asgd``.

  Args:
    learning_rate: torch's ``lr``.
    lambd: decay term (torch default 1e-4).
    alpha: power for the step-size update (torch default 0.75).
    t0: step at which averaging starts (torch default 1e6).
    weight_decay: coupled L2 coefficient.
    maximize: ascend instead of descend.

  References:
    Polyak & Juditsky, `Acceleration of Stochastic Approximation by Averaging
    <https://doi.org/10.1137/0330046>`_, SIAM J. Control Optim. 30(4), 1992.
  """
  validation.check_lr(learning_rate)
  return optax.chain(*transform.maximize_links(maximize),
                     *transform.l2_links(weight_decay),
                     scale_by_asgd(learning_rate, lambd, alpha, t0))


def asgd_averaged_params(state: Any) -> Any:
  """The averaged parameters (torch's ``state["ax"]``) from an :func:`asgd` state.

  Works on the state of :func:`asgd`, of :func:`scale_by_asgd` and of any
  chain / ``optax.inject_hyperparams`` wrapper holding exactly one of them.
  """
  found = []

  def visit(x):
    if isinstance(x, ScaleByAsgdState):
      found.append(x.ax)
      return
    if isinstance(x, (tuple, list)):
      for y in x:
        visit(y)
    elif hasattr(x, "_fields"):
      for y in x:
        visit(y)
    elif isinstance(x, dict):
      for y in x.values():
        visit(y)
    elif hasattr(x, "inner_state"):
      visit(x.inner_state)

  visit(state)
  if len(found) != 1:
    raise ValueError(
        f"asgd_averaged_params: expected exactly one ASGD state, found {len(found)}.")
  return found[0]
