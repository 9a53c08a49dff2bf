"""Learning-rate and momentum schedules.

Every schedule here is a plain ``optax.Schedule``: a function of the step count
(a Python int or a traced integer array, starting at 0 = the value used by the
first update) that returns a ``jnp`` scalar. They contain no Python branching
on the step, so they work under ``jit``, inside ``optax.inject_hyperparams``
and with ``optax.scale_by_schedule``. Past their end (``total_steps`` for the
one-cycle schedules) they hold their final value instead of failing.

The numbers reproduce ``torch.optim.lr_scheduler`` (``CyclicLR`` with
``cycle_momentum=False``, ``CosineAnnealingWarmRestarts``, ``OneCycleLR`` incl.
its momentum, ``LinearLR``) value for value in float64; the fixtures are
written by ``tests/gen_dynamics_fixtures.py``.
"""
from __future__ import annotations

import math
from typing import Union

import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import validation

__all__ = [
    "cyclical",
    "sgdr",
    "one_cycle",
    "one_cycle_momentum",
    "linear_warmup",
    "exponential_warmup",
    "radam_warmup",
    "scale_for_batch_size",
    "byol_tau_schedule",
]

ScalarOrSchedule = Union[float, jax.typing.ArrayLike, optax.Schedule]


def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _as_float(step):
  """The step count as a float array (float64 when x64 is on)."""
  return jnp.asarray(step).astype(_float_dtype())


def _value(x: ScalarOrSchedule, step) -> jax.Array:
  """Evaluates a float-or-schedule hyperparameter at ``step``."""
  if callable(x):
    return jnp.asarray(x(step), _float_dtype())
  return jnp.asarray(x, _float_dtype())


# ---------------------------------------------------------------------------
# Cyclical learning rates (Smith 2017) = torch CyclicLR(cycle_momentum=False)
# ---------------------------------------------------------------------------


@registry.register(
    family="schedule",
    kind="schedule",
    summary="Cyclical learning rate: triangular, triangular2, exp_range.",
    paper="Smith, Cyclical Learning Rates for Training Neural Networks, WACV"
    " 2017, https://arxiv.org/abs/1506.01186",
    reference="torch.optim.lr_scheduler.CyclicLR(cycle_momentum=False)",
    verified="torch.optim.lr_scheduler.CyclicLR 2.13 (tests/test_schedules.py)",
)
def cyclical(
    base_lr: float,
    max_lr: float,
    step_size_up: int,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> optax.Schedule:
  r"""Cyclical learning rate (CLR) of Smith (2017).

  With :math:`i` the step, :math:`T = \text{up} + \text{down}` and
  :math:`r = \text{up}/T`:

  .. math::

    c = \lfloor 1 + i/T \rfloor, \quad x = 1 + i/T - c, \quad
    s = \begin{cases} x / r & x \le r \\ (x - 1)/(r - 1) & x > r\end{cases}

    \eta_i = \eta_{\text{base}} + (\eta_{\max} - \eta_{\text{base}})\, s\,
    \sigma, \qquad \sigma = \begin{cases} 1 & \text{triangular} \\
    2^{-(c-1)} & \text{triangular2} \\ \gamma^{i} & \text{exp\_range}
    \end{cases}

  The number of cycles is unbounded. This reproduces
  ``torch.optim.lr_scheduler.CyclicLR(..., cycle_momentum=False)`` value for
  value (step 0 = the lr at construction). For the momentum cycling of
  ``CyclicLR(cycle_momentum=True)`` build the inverse schedule yourself
  (``max_m - (max_m - base_m) * (lr - base_lr) / (max_lr - base_lr)``).

  Args:
    base_lr: lower boundary of the cycle (>= 0).
    max_lr: upper boundary (amplitude ``max_lr - base_lr``; may be below
      ``base_lr``, as in torch).
    step_size_up: steps in the increasing half (integer >= 1).
    step_size_down: steps in the decreasing half; default ``step_size_up``.
    mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
    gamma: per-step decay of the amplitude in ``"exp_range"`` mode (> 0).

  Returns:
    An ``optax.Schedule``.

  Examples:
    >>> import optzoo
    >>> sched = optzoo.schedules.cyclical(1e-3, 1e-2, step_size_up=4)
    >>> [round(float(sched(i)), 5) for i in (0, 2, 4, 6, 8)]
    [0.001, 0.0055, 0.01, 0.0055, 0.001]

  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, WACV 2017.
  """
  validation.check_nonneg("base_lr", base_lr)
  validation.check_nonneg("max_lr", max_lr)
  validation.check_int("step_size_up", step_size_up, minimum=1)
  if step_size_down is None:
    step_size_down = step_size_up
  validation.check_int("step_size_down", step_size_down, minimum=1)
  validation.check_choice("mode", mode, ("triangular", "triangular2", "exp_range"))
  validation.check_positive("gamma", gamma)
  total = float(step_size_up + step_size_down)
  ratio = float(step_size_up) / total

  def schedule(step):
    i = _as_float(step)
    cycle = jnp.floor(1.0 + i / total)
    x = 1.0 + i / total - cycle
    sf = jnp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    height = (max_lr - base_lr) * sf
    if mode == "triangular":
      scale = 1.0
    elif mode == "triangular2":
      scale = 1.0 / (2.0 ** (cycle - 1.0))
    else:
      scale = jnp.asarray(gamma, i.dtype) ** i
    return base_lr + height * scale

  return schedule


# ---------------------------------------------------------------------------
# SGDR = torch CosineAnnealingWarmRestarts
# ---------------------------------------------------------------------------


@registry.register(
    family="schedule",
    kind="schedule",
    summary="Cosine annealing with warm restarts (SGDR), T_mult, unbounded"
    " restarts.",
    paper="Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm"
    " Restarts, ICLR 2017, https://arxiv.org/abs/1608.03983",
    reference="torch.optim.lr_scheduler.CosineAnnealingWarmRestarts",
    verified="torch.optim.lr_scheduler.CosineAnnealingWarmRestarts 2.13 (tests/test_schedules.py)",
)
def sgdr(
    learning_rate: ScalarOrSchedule,
    t_0: int,
    t_mult: int = 1,
    eta_min: float = 0.0,
) -> optax.Schedule:
  r"""Cosine annealing with warm restarts (SGDR).

  .. math::

    \eta_t = \eta_{\min} + \tfrac12 (\eta_{\max} - \eta_{\min})
    \bigl(1 + \cos(\pi\, T_{\text{cur}} / T_i)\bigr)

  where :math:`T_{\text{cur}}` counts the steps since the last restart and
  the :math:`i`-th period lasts :math:`T_i = T_0 \, T_{\text{mult}}^{\,i}`
  steps. The number of restarts is unbounded (closed form, integer exact at
  the restart boundaries). Reproduces
  ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` stepped once per
  update (step 0 = the lr at construction). Unlike ``optax.sgdr_schedule`` no
  list of per-cycle kwargs is needed.

  Args:
    learning_rate: :math:`\eta_{\max}` (float, or a schedule of the global
      step, e.g. to decay the peaks).
    t_0: length of the first period in steps (integer >= 1).
    t_mult: period growth factor after each restart (integer >= 1, as in
      torch).
    eta_min: the minimum learning rate (>= 0).

  Returns:
    An ``optax.Schedule``.

  Examples:
    >>> import optzoo
    >>> sched = optzoo.schedules.sgdr(0.1, t_0=2, t_mult=2)
    >>> [round(float(sched(i)), 4) for i in range(7)]
    [0.1, 0.05, 0.1, 0.0854, 0.05, 0.0146, 0.1]

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017.
  """
  validation.check_lr(learning_rate)
  validation.check_int("t_0", t_0, minimum=1)
  validation.check_int("t_mult", t_mult, minimum=1)
  validation.check_nonneg("eta_min", eta_min)
  t_0 = int(t_0)
  t_mult = int(t_mult)

  def schedule(step):
    i = _as_float(step)
    if t_mult == 1:
      t_i = jnp.asarray(float(t_0), i.dtype)
      t_cur = i - t_0 * jnp.floor(i / t_0)
    else:
      # Period n starts at s_n = t_0 (m^n - 1) / (m - 1). Estimate n with a
      # log, then fix the off-by-one that rounding may cause at boundaries.
      m = float(t_mult)
      n = jnp.floor(jnp.log1p(i * (m - 1.0) / t_0) / math.log(m))
      n = jnp.maximum(n, 0.0)

      def start(k):
        return t_0 * (m ** k - 1.0) / (m - 1.0)

      n = jnp.where(i < start(n), n - 1.0, n)
      n = jnp.where(i >= start(n + 1.0), n + 1.0, n)
      t_i = t_0 * m ** n
      t_cur = i - start(n)
    eta_max = _value(learning_rate, step)
    return eta_min + (eta_max - eta_min) * (
        1.0 + jnp.cos(math.pi * t_cur / t_i)) / 2.0

  return schedule


# ---------------------------------------------------------------------------
# One-cycle = torch OneCycleLR
# ---------------------------------------------------------------------------


def _check_one_cycle(total_steps, pct_start, anneal_strategy, three_phase):
  validation.check_int("total_steps", total_steps, minimum=2)
  validation.check_unit_interval("pct_start", pct_start, low_open=True,
                           high_open=True)
  validation.check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
  validation.check_bool("three_phase", three_phase)
  up_end = float(pct_start * total_steps) - 1.0
  if up_end <= 0.0:
    raise ValueError(
        f"`pct_start * total_steps` must be > 1 so that the warm-up phase has"
        f" at least one step; got pct_start={pct_start!r},"
        f" total_steps={total_steps!r}.")
  if three_phase and float(2 * pct_start * total_steps) - 2.0 >= total_steps - 1:
    raise ValueError(
        f"with three_phase=True, `pct_start` must leave room for the final"
        f" annihilation phase (2 * pct_start * total_steps - 2 <"
        f" total_steps - 1); got pct_start={pct_start!r}.")


def _one_cycle_phases(total_steps, pct_start, three_phase, start, peak, end):
  """(end_step, start_value, end_value) per phase, as in torch OneCycleLR."""
  if three_phase:
    return (
        (float(pct_start * total_steps) - 1.0, start, peak),
        (float(2 * pct_start * total_steps) - 2.0, peak, start),
        (float(total_steps) - 1.0, start, end),
    )
  return (
      (float(pct_start * total_steps) - 1.0, start, peak),
      (float(total_steps) - 1.0, peak, end),
  )


def _one_cycle_eval(step, phases, anneal_strategy):
  i = _as_float(step)
  i = jnp.clip(i, 0.0, phases[-1][0])  # hold the final value past the end
  out = jnp.asarray(phases[-1][2], i.dtype)
  begin = 0.0
  # Evaluate the phases from last to first so that the first matching one
  # wins (torch: `step <= end_step` picks the earliest phase).
  bounds = []
  for end_step, a, b in phases:
    bounds.append((begin, end_step, a, b))
    begin = end_step
  for k in range(len(bounds) - 1, -1, -1):
    s0, s1, a, b = bounds[k]
    pct = (i - s0) / (s1 - s0)
    if anneal_strategy == "cos":
      val = b + (a - b) / 2.0 * (jnp.cos(math.pi * pct) + 1.0)
    else:
      val = (b - a) * pct + a
    cond = (i <= s1) if k < len(bounds) - 1 else jnp.asarray(True)
    out = jnp.where(cond, val, out)
  return out


@registry.register(
    family="schedule",
    kind="schedule",
    summary="One-cycle learning rate (2- or 3-phase, cos/linear).",
    paper="Smith & Topin, Super-Convergence, 2018,"
    " https://arxiv.org/abs/1708.07120; Smith, A disciplined approach to"
    " neural network hyper-parameters, 2018, https://arxiv.org/abs/1803.09820",
    reference="torch.optim.lr_scheduler.OneCycleLR",
    verified="torch.optim.lr_scheduler.OneCycleLR 2.13 (tests/test_schedules.py)",
)
def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> optax.Schedule:
  r"""One-cycle learning rate, value for value equal to torch ``OneCycleLR``.

  Initial lr :math:`\eta_0 = \eta_{\max}/\text{div\_factor}`, final lr
  :math:`\eta_{\min} = \eta_0/\text{final\_div\_factor}`. With
  :math:`p = \text{pct\_start}`, :math:`T` = ``total_steps``, the phases end at
  steps (shared boundaries, as in torch):

  * 2-phase (default, fastai): :math:`pT-1` (:math:`\eta_0\to\eta_{\max}`),
    :math:`T-1` (:math:`\eta_{\max}\to\eta_{\min}`);
  * 3-phase (Smith's paper): :math:`pT-1` (:math:`\eta_0\to\eta_{\max}`),
    :math:`2pT-2` (:math:`\eta_{\max}\to\eta_0`), :math:`T-1`
    (:math:`\eta_0\to\eta_{\min}`).

  Within a phase from step :math:`s_0` to :math:`s_1`, with
  :math:`\rho = (t - s_0)/(s_1 - s_0)`, the value goes from :math:`a` to
  :math:`b` as

  .. math::

    \text{cos: } b + \tfrac{a-b}{2}(1 + \cos \pi\rho), \qquad
    \text{linear: } a + (b - a)\rho.

  Past step :math:`T-1` the schedule holds :math:`\eta_{\min}` (torch raises
  after step T, and its cos anneal would bounce back up at step T).

  Args:
    max_lr: the peak learning rate (>= 0).
    total_steps: the length of the cycle in steps (integer >= 2).
    pct_start: fraction of the cycle spent increasing the lr, in (0, 1)
      (``pct_start * total_steps`` must exceed 1).
    anneal_strategy: ``"cos"`` or ``"linear"``.
    div_factor: initial lr = ``max_lr / div_factor`` (> 0).
    final_div_factor: final lr = initial lr / ``final_div_factor`` (> 0).
    three_phase: use the 3-phase schedule of the paper.

  Returns:
    An ``optax.Schedule``. Use :func:`one_cycle_momentum` with the same
    ``total_steps, pct_start, anneal_strategy, three_phase`` for the matching
    momentum (e.g. through ``optax.inject_hyperparams``).

  Examples:
    >>> import optax, optzoo
    >>> T = 100
    >>> tx = optax.inject_hyperparams(optax.sgd)(
    ...     learning_rate=optzoo.schedules.one_cycle(0.1, T),
    ...     momentum=optzoo.schedules.one_cycle_momentum(T))

  References:
    Smith & Topin, `Super-Convergence <https://arxiv.org/abs/1708.07120>`_,
    2018; Smith, `A disciplined approach to neural network hyper-parameters
    <https://arxiv.org/abs/1803.09820>`_, 2018.
  """
  validation.check_nonneg("max_lr", max_lr)
  validation.check_positive("div_factor", div_factor)
  validation.check_positive("final_div_factor", final_div_factor)
  _check_one_cycle(total_steps, pct_start, anneal_strategy, three_phase)
  initial = max_lr / div_factor
  final = initial / final_div_factor
  phases = _one_cycle_phases(total_steps, pct_start, three_phase, initial,
                             max_lr, final)

  def schedule(step):
    return _one_cycle_eval(step, phases, anneal_strategy)

  return schedule


@registry.register(
    family="schedule",
    kind="schedule",
    summary="The momentum (or Adam b1) schedule matching one_cycle.",
    paper="Smith, A disciplined approach to neural network hyper-parameters,"
    " 2018, https://arxiv.org/abs/1803.09820",
    reference="torch.optim.lr_scheduler.OneCycleLR(cycle_momentum=True)"
    " momentum",
    verified="torch.optim.lr_scheduler.OneCycleLR(cycle_momentum=True) 2.13 (tests/test_schedules.py)",
)
def one_cycle_momentum(
    total_steps: int,
    pct_start: float = 0.3,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
) -> optax.Schedule:
  r"""Momentum schedule of the one-cycle policy (cycled inversely to the lr).

  Same phase boundaries and annealing as :func:`one_cycle`; the momentum goes
  ``max -> base -> max`` (3-phase: ``max -> base -> max -> max``), as torch
  ``OneCycleLR`` sets ``momentum`` (SGD) or ``betas[0]`` (Adam). Pass it as
  ``momentum=`` (SGD) or ``b1=`` (Adam) through ``optax.inject_hyperparams``.

  Args:
    total_steps: length of the cycle (integer >= 2).
    pct_start: fraction of the cycle in the first phase, in (0, 1).
    base_momentum: the lowest momentum, reached at the lr peak, in [0, 1).
    max_momentum: the momentum at the start and end, in [0, 1).
    anneal_strategy: ``"cos"`` or ``"linear"``.
    three_phase: 3-phase schedule (as :func:`one_cycle`).

  Returns:
    An ``optax.Schedule``.
  """
  validation.check_beta("base_momentum", base_momentum)
  validation.check_beta("max_momentum", max_momentum)
  _check_one_cycle(total_steps, pct_start, anneal_strategy, three_phase)
  # Same phase table as the lr, mirrored: max -> base (-> max) -> max.
  phases = _one_cycle_phases(total_steps, pct_start, three_phase,
                             max_momentum, base_momentum, max_momentum)

  def schedule(step):
    return _one_cycle_eval(step, phases, anneal_strategy)

  return schedule


# ---------------------------------------------------------------------------
# Warm-up
# ---------------------------------------------------------------------------


@registry.register(
    family="schedule",
    kind="schedule",
    summary="Linear warm-up (LinearLR), then hand over to any schedule.",
    paper="Goyal et al., Accurate, Large Minibatch SGD, 2017,"
    " https://arxiv.org/abs/1706.02677",
    reference="torch.optim.lr_scheduler.LinearLR (+ SequentialLR hand-over)",
    verified="torch.optim.lr_scheduler.LinearLR 2.13 (tests/test_schedules.py)",
)
def linear_warmup(
    learning_rate: ScalarOrSchedule,
    warmup_steps: int,
    start_factor: float = 1.0 / 3.0,
    end_factor: float = 1.0,
) -> optax.Schedule:
  r"""Linear warm-up, then hand over to ``learning_rate`` (float or schedule).

  .. math::

    f_t = s + (e - s) \min(t, W)/W, \qquad
    \eta_t = f_t \cdot \eta^{\text{after}}_{\max(t - W,\, 0)}

  For a float ``learning_rate`` this is exactly
  ``torch.optim.lr_scheduler.LinearLR(start_factor, end_factor,
  total_iters=warmup_steps)`` (defaults ``start_factor=1/3``,
  ``end_factor=1`` as in torch). For a schedule, the schedule is held at its
  step-0 value during the warm-up and then runs from its own step 0 (the
  ``SequentialLR([LinearLR, sched], milestones=[W])`` convention), so e.g.
  ``linear_warmup(optax.cosine_decay_schedule(0.1, 1000), 100)`` warms up
  for 100 steps and then decays over 1000 more. Use ``start_factor=0.0`` to
  start from zero (the first update is then a no-op, as in optax's
  ``warmup_cosine_decay_schedule``).

  Args:
    learning_rate: the value (or schedule) reached after the warm-up.
    warmup_steps: :math:`W`, integer >= 1.
    start_factor: :math:`s` >= 0, the multiplier at step 0.
    end_factor: :math:`e` >= 0, the multiplier from step :math:`W` on.

  Returns:
    An ``optax.Schedule``.
  """
  validation.check_lr(learning_rate)
  validation.check_int("warmup_steps", warmup_steps, minimum=1)
  validation.check_nonneg("start_factor", start_factor)
  validation.check_nonneg("end_factor", end_factor)
  w = float(warmup_steps)

  def schedule(step):
    t = _as_float(step)
    f = start_factor + (end_factor - start_factor) * jnp.clip(t, 0.0, w) / w
    if callable(learning_rate):
      after_step = jnp.maximum(jnp.asarray(step) - warmup_steps, 0)
      return f * _value(learning_rate, after_step)
    return f * learning_rate

  return schedule


@registry.register(
    family="schedule",
    kind="schedule",
    summary="Exponential warm-up 1 - exp(-(t+1)/tau) multiplying any"
    " schedule.",
    paper="Ma & Yarats, On the adequacy of untuned warmup for adaptive"
    " optimization, AAAI 2021, https://arxiv.org/abs/1910.04209",
    reference="closed form (NumPy re-derivation)",
    verified="closed form (tests/test_schedules.py)",
)
def exponential_warmup(
    learning_rate: ScalarOrSchedule,
    time_constant: float,
) -> optax.Schedule:
  r"""Exponential warm-up of Ma & Yarats (2021).

  .. math::

    \eta_t = \bigl(1 - e^{-(t+1)/\tau}\bigr)\, \eta^{\text{after}}_t

  with :math:`t` starting at 0 (the paper's first step :math:`t = 1`). The
  factor multiplies ``learning_rate`` (a float or a schedule evaluated at the
  same step: the warm-up never ends exactly, so there is no hand-over
  point). The "untuned" rule :math:`\tau = 1/(1 - \beta_2)` is
  :func:`radam_warmup` with ``kind="exponential"``.

  Args:
    learning_rate: the float or schedule being warmed up.
    time_constant: :math:`\tau` > 0, in steps (the factor is
      :math:`1 - 1/e \approx 0.63` at :math:`t + 1 = \tau`).

  Returns:
    An ``optax.Schedule``.
  """
  validation.check_lr(learning_rate)
  validation.check_positive("time_constant", time_constant)

  def schedule(step):
    t = _as_float(step)
    return -jnp.expm1(-(t + 1.0) / time_constant) * _value(learning_rate, step)

  return schedule


@registry.register(
    family="schedule",
    kind="schedule",
    summary="Untuned warm-up for Adam: linear over 2/(1-b2) steps (or"
    " exponential with tau = 1/(1-b2)).",
    paper="Ma & Yarats, On the adequacy of untuned warmup for adaptive"
    " optimization, AAAI 2021, https://arxiv.org/abs/1910.04209",
    reference="closed form (NumPy re-derivation)",
    verified="closed form (tests/test_schedules.py)",
)
def radam_warmup(
    learning_rate: ScalarOrSchedule,
    b2: float = 0.999,
    kind: str = "linear",
) -> optax.Schedule:
  r"""The untuned warm-up rule for Adam, derived from :math:`\beta_2`.

  Ma & Yarats (2021) show that RAdam's rectification is approximately a
  warm-up of about :math:`2/(1-\beta_2)` steps and recommend, with
  :math:`t = \text{step} + 1`,

  .. math::

    \text{linear: } \omega_t = \min\bigl(1, \tfrac{1-\beta_2}{2} t\bigr),
    \qquad \text{exponential: } \omega_t = 1 - e^{-(1-\beta_2) t},

  and :math:`\eta_t = \omega_t\, \eta^{\text{after}}_t` (the factor multiplies
  ``learning_rate`` evaluated at the same step, as in the paper). With the
  default :math:`\beta_2 = 0.999` the linear warm-up lasts 2000 steps.

  Args:
    learning_rate: float or schedule to warm up.
    b2: Adam's :math:`\beta_2` in [0, 1).
    kind: ``"linear"`` (default) or ``"exponential"``.

  Returns:
    An ``optax.Schedule``.

  References:
    Ma & Yarats, `On the adequacy of untuned warmup for adaptive optimization
    <https://arxiv.org/abs/1910.04209>`_, AAAI 2021.
  """
  validation.check_lr(learning_rate)
  validation.check_beta("b2", b2)
  validation.check_choice("kind", kind, ("linear", "exponential"))
  rate = 1.0 - float(b2)

  def schedule(step):
    t = _as_float(step) + 1.0
    if kind == "linear":
      w = jnp.minimum(1.0, rate / 2.0 * t)
    else:
      w = -jnp.expm1(-rate * t)
    return w * _value(learning_rate, step)

  return schedule


# ---------------------------------------------------------------------------
# Batch-size scaling (Granziol et al.)
# ---------------------------------------------------------------------------


@registry.register(
    family="schedule",
    kind="schedule",
    summary="Rescale a learning rate (schedule) for a new batch size: linear"
    " (SGD) or square-root (Adam).",
    paper="Granziol, Zohren & Roberts, Learning Rates as a Function of Batch"
    " Size, JMLR 2022, https://arxiv.org/abs/2006.09092",
    reference="closed form",
    verified="closed form (tests/test_schedules.py)",
)
def scale_for_batch_size(
    learning_rate: ScalarOrSchedule,
    base_batch_size: int,
    batch_size: int,
    rule: str = "linear",
) -> optax.Schedule:
  r"""Scales a learning rate tuned at ``base_batch_size`` to ``batch_size``.

  .. math::

    \eta(B) = \eta(B_0) \cdot \begin{cases} B/B_0 & \text{linear (SGD-type)}
    \\ \sqrt{B/B_0} & \text{sqrt (Adam-type)} \end{cases}

  Granziol et al. derive the linear rule for SGD and the square-root rule for
  adaptive methods from the batch-size dependence of the extremal Hessian
  eigenvalues. ``rule`` also accepts the aliases ``"sgd"`` (= linear) and
  ``"adam"`` (= sqrt).

  Args:
    learning_rate: the float or schedule tuned at ``base_batch_size``.
    base_batch_size: :math:`B_0` (integer >= 1).
    batch_size: :math:`B` (integer >= 1).
    rule: ``"linear"``/``"sgd"`` or ``"sqrt"``/``"adam"``.

  Returns:
    An ``optax.Schedule`` (a constant one for a float ``learning_rate``).
  """
  validation.check_lr(learning_rate)
  validation.check_int("base_batch_size", base_batch_size, minimum=1)
  validation.check_int("batch_size", batch_size, minimum=1)
  validation.check_choice("rule", rule, ("linear", "sqrt", "sgd", "adam"))
  ratio = float(batch_size) / float(base_batch_size)
  factor = ratio if rule in ("linear", "sgd") else math.sqrt(ratio)

  def schedule(step):
    return factor * _value(learning_rate, step)

  return schedule


@registry.register(
    family="schedule",
    kind="schedule",
    summary="BYOL target-network decay: tau rises from tau_base to 1 (cosine).",
    paper="Grill et al., Bootstrap Your Own Latent, NeurIPS 2020,"
    " https://arxiv.org/abs/2006.07733",
    reference="closed form",
    verified="closed form (tests/test_schedules.py)",
)
def byol_tau_schedule(total_steps: int, tau_base: float = 0.996
                      ) -> optax.Schedule:
  r"""The BYOL decay schedule for the target network (use with ``param_ema``).

  .. math::

    \tau_k = 1 - (1 - \tau_{\text{base}})\,\bigl(\cos(\pi k / K) + 1\bigr)/2

  for :math:`k \le K` = ``total_steps``, then held at 1.

  Args:
    total_steps: :math:`K` (integer >= 1).
    tau_base: :math:`\tau_{\text{base}}` in [0, 1].

  Returns:
    An ``optax.Schedule``.
  """
  validation.check_int("total_steps", total_steps, minimum=1)
  validation.check_unit_interval("tau_base", tau_base)

  def schedule(step):
    k = jnp.clip(_as_float(step), 0.0, float(total_steps))
    return 1.0 - (1.0 - tau_base) * (jnp.cos(math.pi * k / total_steps) + 1.0
                                     ) / 2.0

  return schedule
