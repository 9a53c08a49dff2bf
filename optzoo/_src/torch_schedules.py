"""Every ``torch.optim.lr_scheduler`` class as an ``optax.Schedule``.

Each factory takes the base learning rate first, then torch's arguments in
lower case, and returns a :class:`TorchSchedule`: a plain ``optax.Schedule``
(``sched(step)`` with ``step = 0`` the lr of the first update = torch's lr
after ``step`` calls of ``scheduler.step()``) that also carries torch's
*recursive* (chainable) form, so that :func:`sequential_lr` and
:func:`chained_scheduler` reproduce ``SequentialLR`` / ``ChainedScheduler``
value for value, including where the recursive form differs from a product
of closed forms (e.g. ``CosineAnnealingLR`` in a ``ChainedScheduler``: its
additive restart branch resets the other schedulers' accumulated factors,
``LambdaLR`` ignores the lr it is handed, ``ConstantLR`` divides by its
factor at ``total_iters``).

No Python branching on the step: every schedule works under ``jit`` with a
traced integer step, in float32 and with x64. A standalone schedule is
evaluated in closed form (O(1)); so are :func:`sequential_lr` and
:func:`chained_scheduler` whose members are purely multiplicative
(``step_lr``, ``multi_step_lr``, ``constant_lr``, ``linear_lr``,
``exponential_lr``, ``polynomial_lr``, ``multiplicative_lr`` with a constant
factor). A :func:`chained_scheduler` with a ``cosine_annealing_lr``,
``lambda_lr``, callable ``multiplicative_lr`` or ``sequential_lr`` member (and
a callable ``multiplicative_lr`` anywhere) runs torch's recursion in a
``lax.fori_loop`` over the steps: exact, but O(step) per call.

``reduce_lr_on_plateau`` (a ``GradientTransformation``) and the momentum
schedule of ``CyclicLR(cycle_momentum=True)`` are here too. The fixtures that
pin all of this to torch 2.13 are written by
``tests/gen_torch_schedule_fixtures.py``.
"""

import math
import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import validation

__all__ = [
    "lambda_lr",
    "multiplicative_lr",
    "step_lr",
    "multi_step_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "sequential_lr",
    "chained_scheduler",
    "cyclic_momentum",
    "reduce_lr_on_plateau",
    "ReduceLROnPlateauState",
    "TorchSchedule",
]


def _fdtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _idtype():
  return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def _as_int(step) -> jax.Array:
  """The step as an integer array (>= 0)."""
  t = jnp.asarray(step)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    t = jnp.floor(t).astype(_idtype())
  return jnp.maximum(t, 0)


def _f(x) -> jax.Array:
  return jnp.asarray(x).astype(_fdtype())


class TorchSchedule:
  """An ``optax.Schedule`` that also knows torch's recursive form.

  Call it like any schedule: ``sched(step)``. The attributes are used by
  :func:`sequential_lr` and :func:`chained_scheduler`:

  * ``torch_class``: the name of the torch class reproduced;
  * ``learning_rate``: the base lr (torch's ``initial_lr``);
  * ``init(lr)``: the lr after the scheduler's construction-time step, given
    the lr found in the optimizer;
  * ``step(lr, t)``: torch's ``get_lr()`` at ``last_epoch = t >= 1`` given
    the current lr;
  * ``restart(lr)``: ``_update_lr(0)``, what ``SequentialLR`` does at a
    milestone (the closed form at 0 where torch has one);
  * ``factor(t)``: for purely multiplicative schedules the closed-form factor
    (``sched(t) = learning_rate * factor(t)``), else ``None``;
  * ``loop``: True when the closed form itself needs an O(step) loop.
  """

  def __init__(self, torch_class: str, learning_rate: float, closed, *, init,
               step, restart, factor=None, loop: bool = False):
    self.torch_class = torch_class
    self.learning_rate = float(learning_rate)
    self._closed = closed
    self.init = init
    self.step = step
    self.restart = restart
    self.factor = factor
    self.loop = loop
    self.cumulative = None  # MultiplicativeLR: t -> prod_{s<=t} lambda(s)

  def __call__(self, count) -> jax.Array:
    return _f(self._closed(_as_int(count)))

  def __repr__(self):
    return f"<optzoo TorchSchedule {self.torch_class}(lr={self.learning_rate})>"


def _check_base_lr(learning_rate):
  if callable(learning_rate):
    raise TypeError(
        "`learning_rate` must be a float (torch's initial lr), got the"
        f" callable {learning_rate!r}; use sequential_lr/chained_scheduler to"
        " compose schedules.")
  validation.check_nonneg("learning_rate", learning_rate)


def _multiplicative(torch_class, learning_rate, factor, *, ratio, init_factor):
  """A schedule whose recursive form is ``lr -> lr * ratio(t)``."""
  lr0 = float(learning_rate)
  return TorchSchedule(
      torch_class, lr0, lambda t: lr0 * factor(t),
      init=lambda lr: lr * init_factor,
      step=lambda lr, t: lr * ratio(t),
      restart=lambda lr: lr0 * factor(jnp.zeros((), _idtype())),
      factor=factor)


_SCHED = dict(family="schedule", kind="schedule")


# ---------------------------------------------------------------------------
# LambdaLR, MultiplicativeLR
# ---------------------------------------------------------------------------


@registry.register(
    **_SCHED,
    summary="torch LambdaLR: lr = base_lr * lr_lambda(step).",
    paper="PyTorch, torch.optim.lr_scheduler.LambdaLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "LambdaLR.html",
    reference="torch.optim.lr_scheduler.LambdaLR",
    verified="torch.optim.lr_scheduler.LambdaLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def lambda_lr(learning_rate: float,
              lr_lambda: Callable[[jax.Array], jax.typing.ArrayLike]
              ) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.LambdaLR``: :math:`\eta_t = \eta_0\,\lambda(t)`.

  ``lr_lambda`` receives the step as an integer ``jnp`` array and must be
  written with ``jnp`` (it is traced under ``jit``). LambdaLR is not
  chainable in torch: in a :func:`chained_scheduler` it overwrites the lr it
  is handed with ``base_lr * lr_lambda(t)`` every step, as torch does.

  Args:
    learning_rate: the base lr :math:`\eta_0` (torch's ``initial_lr``).
    lr_lambda: ``t -> factor``, jnp-traceable.

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  if not callable(lr_lambda):
    raise TypeError(f"`lr_lambda` must be a callable t -> factor, got"
                    f" {lr_lambda!r}.")
  lr0 = float(learning_rate)
  zero = lambda: jnp.zeros((), _idtype())
  return TorchSchedule(
      "LambdaLR", lr0, lambda t: lr0 * _f(lr_lambda(t)),
      init=lambda lr: lr0 * _f(lr_lambda(zero())),
      step=lambda lr, t: lr0 * _f(lr_lambda(t)),
      restart=lambda lr: lr0 * _f(lr_lambda(zero())))


@registry.register(
    **_SCHED,
    summary="torch MultiplicativeLR: lr_t = lr_{t-1} * lr_lambda(t).",
    paper="PyTorch, torch.optim.lr_scheduler.MultiplicativeLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "MultiplicativeLR.html",
    reference="torch.optim.lr_scheduler.MultiplicativeLR",
    verified="torch.optim.lr_scheduler.MultiplicativeLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def multiplicative_lr(
    learning_rate: float,
    lr_lambda: Union[float, Callable[[jax.Array], jax.typing.ArrayLike]],
) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.MultiplicativeLR``.

  .. math::

    \eta_0 = \text{lr}, \qquad \eta_t = \eta_{t-1}\,\lambda(t) \quad (t \ge 1)

  i.e. :math:`\eta_t = \eta_0 \prod_{s=1}^{t} \lambda(s)`. A float
  ``lr_lambda`` is a constant factor (closed form :math:`\eta_0 f^t`, O(1));
  a callable one (jnp-traceable, receives the integer step) is multiplied up
  in a ``lax.fori_loop`` (O(step) per call). As in torch, at a
  ``SequentialLR`` milestone the lr found is multiplied by
  :math:`\lambda(0)`.

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    lr_lambda: a float factor >= 0 or a callable ``t -> factor``.

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  lr0 = float(learning_rate)
  if callable(lr_lambda):
    fn = lambda t: _f(lr_lambda(t))

    def cumulative(t):
      return jax.lax.fori_loop(jnp.ones((), t.dtype), t + 1,
                               lambda s, acc: acc * fn(s),
                               jnp.ones((), _fdtype()))
    out = TorchSchedule(
        "MultiplicativeLR", lr0, lambda t: lr0 * cumulative(t),
        init=lambda lr: lr,
        step=lambda lr, t: lr * fn(t),
        restart=lambda lr: lr * fn(jnp.zeros((), _idtype())),
        loop=True)
    out.cumulative = cumulative
    return out
  if isinstance(lr_lambda, str):
    raise TypeError(f"`lr_lambda` must be a float factor or a callable, got"
                    f" {lr_lambda!r}.")
  validation.check_nonneg("lr_lambda", lr_lambda)
  g = float(lr_lambda)
  s = _multiplicative("MultiplicativeLR", lr0, lambda t: g ** _f(t),
                      ratio=lambda t: g, init_factor=1.0)
  # A milestone multiplies the lr found (torch has no closed form here).
  s.restart = lambda lr: lr * g
  s.cumulative = lambda t: g ** _f(t)
  return s


# ---------------------------------------------------------------------------
# StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR
# ---------------------------------------------------------------------------


@registry.register(
    **_SCHED,
    summary="torch StepLR: decay by gamma every step_size steps.",
    paper="PyTorch, torch.optim.lr_scheduler.StepLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "StepLR.html",
    reference="torch.optim.lr_scheduler.StepLR",
    verified="torch.optim.lr_scheduler.StepLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def step_lr(learning_rate: float, step_size: int, gamma: float = 0.1
            ) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.StepLR``:
  :math:`\eta_t = \eta_0\,\gamma^{\lfloor t / \text{step\_size}\rfloor}`.

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    step_size: the decay period in steps (integer >= 1).
    gamma: the decay factor (>= 0, default 0.1).

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  validation.check_int("step_size", step_size, minimum=1)
  validation.check_nonneg("gamma", gamma)
  n, g = int(step_size), float(gamma)
  return _multiplicative(
      "StepLR", learning_rate, lambda t: g ** _f(t // n),
      ratio=lambda t: jnp.where((t > 0) & (t % n == 0), g, 1.0),
      init_factor=1.0)


def _check_milestones(name, milestones, minimum):
  if isinstance(milestones, (str, bytes)) or not isinstance(
      milestones, (Sequence, np.ndarray)):
    raise TypeError(f"`{name}` must be a list of integers, got"
                    f" {milestones!r}.")
  out = []
  for k, m in enumerate(milestones):
    if isinstance(m, (bool, np.bool_)) or not isinstance(
        m, (numbers.Integral, np.integer)):
      raise TypeError(f"`{name}[{k}]` must be an integer, got {m!r}.")
    if m < minimum:
      raise ValueError(f"`{name}[{k}]` must be >= {minimum}, got {m!r}.")
    out.append(int(m))
  return out


@registry.register(
    **_SCHED,
    summary="torch MultiStepLR: decay by gamma at each milestone.",
    paper="PyTorch, torch.optim.lr_scheduler.MultiStepLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "MultiStepLR.html",
    reference="torch.optim.lr_scheduler.MultiStepLR",
    verified="torch.optim.lr_scheduler.MultiStepLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def multi_step_lr(learning_rate: float, milestones: Sequence[int],
                  gamma: float = 0.1) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.MultiStepLR``:
  :math:`\eta_t = \eta_0\,\gamma^{\#\{m \in \text{milestones}: m \le t\}}`.

  A milestone listed twice decays twice, as in torch (which counts them).

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    milestones: non-decreasing list of steps >= 0.
    gamma: the decay factor (>= 0, default 0.1).

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  ms = _check_milestones("milestones", milestones, 0)
  for k in range(1, len(ms)):
    if ms[k] < ms[k - 1]:
      raise ValueError(f"`milestones` must be non-decreasing, got {ms!r}"
                       f" (milestones[{k}] < milestones[{k - 1}]).")
  validation.check_nonneg("gamma", gamma)
  g = float(gamma)
  arr = np.asarray(ms, np.int64)

  def count(t, op):
    if not len(ms):
      return jnp.zeros((), _fdtype())
    return _f(jnp.sum(op(t[..., None], jnp.asarray(arr, t.dtype)), axis=-1))

  n0 = int(np.sum(arr == 0))
  return _multiplicative(
      "MultiStepLR", learning_rate,
      lambda t: g ** count(t, jnp.greater_equal),
      ratio=lambda t: g ** count(t, jnp.equal),
      init_factor=g ** n0)


@registry.register(
    **_SCHED,
    summary="torch ConstantLR: lr * factor until total_iters, then lr.",
    paper="PyTorch, torch.optim.lr_scheduler.ConstantLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "ConstantLR.html",
    reference="torch.optim.lr_scheduler.ConstantLR",
    verified="torch.optim.lr_scheduler.ConstantLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def constant_lr(learning_rate: float, factor: float = 1.0 / 3.0,
                total_iters: int = 5) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.ConstantLR``:
  :math:`\eta_t = \eta_0\,f` for :math:`t <` ``total_iters``, then
  :math:`\eta_0`.

  Recursive form (used in chains): multiply by ``factor`` at construction,
  by ``1/factor`` at ``total_iters``. ``factor = 0`` is rejected (torch
  divides by it at ``total_iters``), so is ``total_iters = 0`` (torch's
  recursive form then keeps the factor forever while its closed form says 1).

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    factor: in (0, 1], default 1/3.
    total_iters: integer >= 1, default 5.

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  validation.check_unit_interval("factor", factor, low_open=True)
  validation.check_int("total_iters", total_iters, minimum=1)
  f, n = float(factor), int(total_iters)
  return _multiplicative(
      "ConstantLR", learning_rate, lambda t: jnp.where(t >= n, 1.0, f),
      ratio=lambda t: jnp.where(t == n, 1.0 / f, 1.0), init_factor=f)


@registry.register(
    **_SCHED,
    summary="torch LinearLR: factor goes linearly start -> end over"
    " total_iters.",
    paper="PyTorch, torch.optim.lr_scheduler.LinearLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "LinearLR.html",
    reference="torch.optim.lr_scheduler.LinearLR",
    verified="torch.optim.lr_scheduler.LinearLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def linear_lr(learning_rate: float, start_factor: float = 1.0 / 3.0,
              end_factor: float = 1.0, total_iters: int = 5
              ) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.LinearLR``.

  .. math::

    \eta_t = \eta_0 \bigl(s + (e - s)\min(t, T)/T\bigr)

  Recursive form: :math:`\eta_t = \eta_{t-1}\bigl(1 + \frac{e - s}{T s +
  (t - 1)(e - s)}\bigr)` for :math:`1 \le t \le T`.

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    start_factor: :math:`s` in (0, 1] (torch's range), default 1/3.
    end_factor: :math:`e` in [0, 1], default 1.
    total_iters: :math:`T`, integer >= 1, default 5.

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  validation.check_unit_interval("start_factor", start_factor, low_open=True)
  validation.check_unit_interval("end_factor", end_factor)
  validation.check_int("total_iters", total_iters, minimum=1)
  s, e, n = float(start_factor), float(end_factor), int(total_iters)

  def ratio(t):
    den = n * s + _f(t - 1) * (e - s)
    den = jnp.where(den == 0, 1.0, den)
    return jnp.where(t <= n, 1.0 + (e - s) / den, 1.0)

  return _multiplicative(
      "LinearLR", learning_rate,
      lambda t: s + (e - s) * _f(jnp.minimum(t, n)) / n,
      ratio=ratio, init_factor=s)


@registry.register(
    **_SCHED,
    summary="torch ExponentialLR: lr * gamma^t.",
    paper="PyTorch, torch.optim.lr_scheduler.ExponentialLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "ExponentialLR.html",
    reference="torch.optim.lr_scheduler.ExponentialLR",
    verified="torch.optim.lr_scheduler.ExponentialLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def exponential_lr(learning_rate: float, gamma: float) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.ExponentialLR``:
  :math:`\eta_t = \eta_0\,\gamma^t`.

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    gamma: the per-step factor (>= 0).

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  validation.check_nonneg("gamma", gamma)
  g = float(gamma)
  return _multiplicative("ExponentialLR", learning_rate,
                         lambda t: g ** _f(t), ratio=lambda t: g,
                         init_factor=1.0)


@registry.register(
    **_SCHED,
    summary="torch PolynomialLR: lr * (1 - min(t, T)/T)^power.",
    paper="PyTorch, torch.optim.lr_scheduler.PolynomialLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "PolynomialLR.html",
    reference="torch.optim.lr_scheduler.PolynomialLR",
    verified="torch.optim.lr_scheduler.PolynomialLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def polynomial_lr(learning_rate: float, total_iters: int = 5,
                  power: float = 1.0) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.PolynomialLR``:
  :math:`\eta_t = \eta_0\,(1 - \min(t, T)/T)^p`.

  Recursive form: :math:`\eta_t = \eta_{t-1}\bigl(\frac{1 - t/T}{1 -
  (t-1)/T}\bigr)^p` for :math:`t \le T`.

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    total_iters: :math:`T`, integer >= 1, default 5.
    power: :math:`p` >= 0, default 1.

  Returns:
    A :class:`TorchSchedule`.
  """
  _check_base_lr(learning_rate)
  validation.check_int("total_iters", total_iters, minimum=1)
  validation.check_nonneg("power", power)
  n, p = int(total_iters), float(power)

  def frac(t):  # 1 - t/T in [0, 1]; computed as (T - t)/T so that XLA's
    # reciprocal rewrite of a division cannot leave -1e-16 at t = T.
    return jnp.clip(_f(n - jnp.clip(t, 0, n)) / n, 0.0, 1.0)

  def ratio(t):
    num, den = frac(t), frac(t - 1)
    den = jnp.where(den == 0, 1.0, den)
    return jnp.where((t >= 1) & (t <= n), (num / den) ** p, 1.0)

  return _multiplicative("PolynomialLR", learning_rate,
                         lambda t: frac(t) ** p, ratio=ratio, init_factor=1.0)


# ---------------------------------------------------------------------------
# CosineAnnealingLR
# ---------------------------------------------------------------------------


@registry.register(
    **_SCHED,
    summary="torch CosineAnnealingLR (closed form standalone, torch's"
    " recursive form inside sequential_lr / chained_scheduler).",
    paper="Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm"
    " Restarts, ICLR 2017, https://arxiv.org/abs/1608.03983",
    reference="torch.optim.lr_scheduler.CosineAnnealingLR",
    verified="torch.optim.lr_scheduler.CosineAnnealingLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def cosine_annealing_lr(learning_rate: float, t_max: int,
                        eta_min: float = 0.0) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.CosineAnnealingLR``.

  Standalone (closed form, which torch's recursion equals):

  .. math::

    \eta_t = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})
    \bigl(1 + \cos(\pi t / T_{\max})\bigr)

  for every :math:`t`: past :math:`T_{\max}` the lr climbs back (period
  :math:`2T_{\max}`), exactly as torch does when stepped further. Recursive
  form, used inside :func:`chained_scheduler`:

  .. math::

    \eta_t = \eta_{\min} + (\eta_{t-1} - \eta_{\min})
    \frac{1 + \cos(\pi t / T_{\max})}{1 + \cos(\pi (t-1)/T_{\max})}

  except at :math:`t - 1 - T_{\max} \equiv 0 \pmod{2 T_{\max}}`, where torch
  adds :math:`(\eta_0 - \eta_{\min})(1 - \cos(\pi/T_{\max}))/2` to the
  current lr instead (which, in a chain, drops the factors the other
  schedulers had accumulated).

  Args:
    learning_rate: the base lr :math:`\eta_0`.
    t_max: :math:`T_{\max}` (integer >= 1).
    eta_min: :math:`\eta_{\min}` >= 0.

  Returns:
    A :class:`TorchSchedule`.

  References:
    Loshchilov & Hutter, `SGDR <https://arxiv.org/abs/1608.03983>`_, 2017.
  """
  _check_base_lr(learning_rate)
  validation.check_int("t_max", t_max, minimum=1)
  validation.check_nonneg("eta_min", eta_min)
  lr0, n, lo = float(learning_rate), int(t_max), float(eta_min)

  def c(t):  # 1 + cos(pi t / T), with t reduced mod 2T in integers
    return 1.0 + jnp.cos(math.pi * _f(t % (2 * n)) / n)

  def step(lr, t):
    restart = (t - 1 - n) % (2 * n) == 0
    den = c(t - 1)
    den = jnp.where(den == 0, 1.0, den)
    rec = c(t) / den * (lr - lo) + lo
    add = lr + (lr0 - lo) * (1.0 - math.cos(math.pi / n)) / 2.0
    return jnp.where(restart, add, rec)

  return TorchSchedule(
      "CosineAnnealingLR", lr0, lambda t: lo + (lr0 - lo) * c(t) / 2.0,
      init=lambda lr: lr, step=step, restart=lambda lr: lr0 + 0.0 * lr)


# ---------------------------------------------------------------------------
# SequentialLR, ChainedScheduler
# ---------------------------------------------------------------------------


def _check_members(name, schedulers, *, allow_sequential):
  if isinstance(schedulers, TorchSchedule) or not isinstance(
      schedulers, (list, tuple)):
    raise TypeError(f"`{name}` must be a list of optzoo torch-style schedules"
                    f" (e.g. optzoo.schedules.cosine_annealing_lr(...)), got"
                    f" {schedulers!r}.")
  if not schedulers:
    raise ValueError(f"`{name}` must contain at least one schedule.")
  for k, s in enumerate(schedulers):
    if not isinstance(s, TorchSchedule):
      raise TypeError(
          f"`{name}[{k}]` must be an optzoo torch-style schedule (made by"
          " optzoo.schedules.step_lr, cosine_annealing_lr, ...), got"
          f" {s!r}. A plain optax schedule has no chainable form; wrap it"
          " in optzoo.schedules.lambda_lr(lr, lambda t: sched(t) / lr).")
    if s.torch_class == "ChainedScheduler" and name == "schedulers" and (
        not allow_sequential):
      raise ValueError(f"`{name}[{k}]`: torch's SequentialLR cannot hold a"
                       " ChainedScheduler (it has no get_lr).")
    if s.torch_class == "SequentialLR" and not allow_sequential:
      raise ValueError(f"`{name}[{k}]`: torch's SequentialLR cannot hold"
                       " another SequentialLR (its milestone step fails).")
  lrs = {s.learning_rate for s in schedulers}
  if len(lrs) != 1:
    raise ValueError(
        f"all `{name}` must share one base learning rate (torch's"
        f" initial_lr of the optimizer), got {sorted(lrs)!r}.")
  return list(schedulers), lrs.pop()


def _segment(t, milestones):
  """Index k of the member active at step t (bisect_right)."""
  if not milestones:
    return jnp.zeros_like(t)
  return jnp.sum(t[..., None] >= jnp.asarray(milestones, t.dtype), axis=-1)


@registry.register(
    **_SCHED,
    summary="torch SequentialLR: hand over between schedules at milestones.",
    paper="PyTorch, torch.optim.lr_scheduler.SequentialLR,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "SequentialLR.html",
    reference="torch.optim.lr_scheduler.SequentialLR",
    verified="torch.optim.lr_scheduler.SequentialLR 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def sequential_lr(schedulers: Sequence[TorchSchedule],
                  milestones: Sequence[int]) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.SequentialLR``.

  Member ``k`` is active for :math:`m_{k-1} \le t < m_k`. At a milestone
  torch calls ``_update_lr(0)``: the member restarts from its closed form at
  0 (from the base lr, not from the lr reached so far; ``MultiplicativeLR``
  multiplies the lr found by :math:`\lambda(0)` instead), then runs its
  recursion, so its value at step :math:`t` is its own standalone value at
  :math:`t - m_{k-1}`.

  The base lr is the members' (they must all share it, like the optimizer
  they share in torch).

  Args:
    schedulers: list of torch-style schedules from this module (not a
      ``sequential_lr``: torch cannot nest them).
    milestones: ``len(schedulers) - 1`` strictly increasing integers >= 1.

  Returns:
    A :class:`TorchSchedule`.

  Examples:
    >>> import optzoo.schedules as S
    >>> sched = S.sequential_lr([S.linear_lr(0.1, 0.01, 1.0, 10),
    ...                          S.cosine_annealing_lr(0.1, 90)], [10])
  """
  members, lr0 = _check_members("schedulers", schedulers,
                                allow_sequential=False)
  ms = _check_milestones("milestones", milestones, 1)
  if len(ms) != len(members) - 1:
    raise ValueError(
        f"`milestones` must have len(schedulers) - 1 = {len(members) - 1}"
        f" entries, got {len(ms)} ({ms!r}).")
  for k in range(1, len(ms)):
    if ms[k] <= ms[k - 1]:
      raise ValueError(f"`milestones` must be strictly increasing, got"
                       f" {ms!r}.")
  starts = [0] + ms

  def value_in(k, t):
    """Member k's value at global step t (t >= starts[k])."""
    s = members[k]
    local = jnp.maximum(t - starts[k], 0)
    if k == 0 or s.cumulative is None:
      return _f(s._closed(local))
    # MultiplicativeLR: the lr found at the milestone times lambda(0), then
    # times lambda(1) ... lambda(local).
    prev = value_in(k - 1, jnp.asarray(starts[k] - 1, t.dtype))
    return _f(s.restart(prev)) * _f(s.cumulative(local))

  def closed(t):
    k = _segment(t, ms)
    vals = [value_in(j, t) for j in range(len(members))]
    return jnp.select([k == j for j in range(len(members))], vals)

  def step(lr, t):
    k = _segment(t, ms)
    vals = []
    for j, s in enumerate(members):
      local = t - starts[j]
      if j == 0:
        vals.append(s.step(lr, local))
      else:
        vals.append(jnp.where(local == 0, s.restart(lr),
                              s.step(lr, jnp.maximum(local, 1))))
    return jnp.select([k == j for j in range(len(members))], vals)

  out = TorchSchedule(
      "SequentialLR", lr0, closed,
      init=lambda lr: members[0].init(lr0 + 0.0 * lr), step=step,
      restart=None, loop=any(s.loop for s in members))
  out.members, out.milestones = members, ms
  return out


def _flatten_chain(members):
  out = []
  for s in members:
    if s.torch_class == "ChainedScheduler":
      out.extend(_flatten_chain(s.members))
    else:
      out.append(s)
  return out


@registry.register(
    **_SCHED,
    summary="torch ChainedScheduler: every member steps the same lr in turn"
    " (torch's recursive forms composed).",
    paper="PyTorch, torch.optim.lr_scheduler.ChainedScheduler,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "ChainedScheduler.html",
    reference="torch.optim.lr_scheduler.ChainedScheduler",
    verified="torch.optim.lr_scheduler.ChainedScheduler 2.13, float64, 1200 steps (tests/test_torch_schedules.py)",
)
def chained_scheduler(schedulers: Sequence[TorchSchedule],
                      num_steps: Optional[int] = None) -> TorchSchedule:
  r"""``torch.optim.lr_scheduler.ChainedScheduler``.

  Each step, member 1 updates the lr, member 2 updates the result, ... (each
  with its own recursive ``get_lr``). At step 0 the lr is what the members'
  construction-time steps left (they are assumed constructed in list order,
  right before the ``ChainedScheduler``; a ``sequential_lr`` member resets
  the lr to the base lr at construction, as torch's does).

  Purely multiplicative members compose to the product of their closed
  forms (O(1)). Otherwise (``cosine_annealing_lr``, ``lambda_lr``,
  ``sequential_lr``, callable ``multiplicative_lr`` members) torch's
  recursion is run from step 1 to ``step`` in a ``lax.fori_loop``: exact,
  O(step) per call; with ``num_steps`` the first ``num_steps`` values are
  computed once at construction (one ``lax.scan``) and looked up in O(1),
  the loop only running for later steps.

  Args:
    schedulers: list of torch-style schedules from this module sharing one
      base learning rate (a nested ``chained_scheduler`` is flattened).
    num_steps: optional length of the precomputed table (integer >= 1);
      only used when the recursion is needed.

  Returns:
    A :class:`TorchSchedule`.
  """
  members, lr0 = _check_members("schedulers", schedulers,
                                allow_sequential=True)
  members = _flatten_chain(members)
  if num_steps is not None:
    validation.check_int("num_steps", num_steps, minimum=1)

  def init(lr):
    for s in members:
      lr = s.init(lr)
    return lr

  def step(lr, t):
    for s in members:
      lr = s.step(lr, t)
    return lr

  if all(s.factor is not None for s in members):
    def closed(t):
      out = jnp.asarray(lr0, _fdtype())
      for s in members:
        out = out * _f(s.factor(t))
      return out
    loop = False
  else:
    def looped(t):
      lr = init(jnp.asarray(lr0, _fdtype()))
      return jax.lax.fori_loop(jnp.ones((), t.dtype), t + 1,
                               lambda s, lr: _f(step(lr, s)), _f(lr))
    loop = True
    closed = looped
    if num_steps is not None:
      n = int(num_steps)

      def scan_body(lr, s):
        new = _f(step(lr, s))
        return new, new

      first = _f(init(jnp.asarray(lr0, _fdtype())))
      _, rest = jax.jit(lambda: jax.lax.scan(
          scan_body, first, jnp.arange(1, n, dtype=_idtype())))()
      table = jnp.concatenate([first[None], rest])

      def closed(t):
        idx = jnp.clip(t, 0, n - 1)
        return jax.lax.cond(t < n, lambda: table[idx].astype(_fdtype()),
                            lambda: looped(t))
      loop = False

  out = TorchSchedule("ChainedScheduler", lr0, closed, init=init, step=step,
                      restart=None, loop=loop)
  out.members = members
  return out


# ---------------------------------------------------------------------------
# CyclicLR momentum
# ---------------------------------------------------------------------------


@registry.register(
    **_SCHED,
    summary="The momentum (or Adam b1) schedule of torch CyclicLR"
    "(cycle_momentum=True), matching optzoo.schedules.cyclical.",
    paper="Smith, Cyclical Learning Rates for Training Neural Networks, WACV"
    " 2017, https://arxiv.org/abs/1506.01186",
    reference="torch.optim.lr_scheduler.CyclicLR(cycle_momentum=True)"
    " momentum",
    verified="torch.optim.lr_scheduler.CyclicLR 2.13 momentum driving SGD/Adam, float64, 300 steps (tests/test_torch_schedules.py)",
)
def cyclic_momentum(
    step_size_up: int,
    step_size_down: Optional[int] = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
) -> optax.Schedule:
  r"""Momentum of ``CyclicLR(cycle_momentum=True)``, cycled inversely to the lr.

  With the cycle position :math:`s` and scale :math:`\sigma` of
  :func:`optzoo.schedules.cyclical` (same ``step_size_up``,
  ``step_size_down``, ``mode``, ``gamma``):

  .. math::

    \mu_t = \mu_{\max} - (\mu_{\max} - \mu_{\text{base}})\, s\, \sigma

  Pass it as ``momentum=`` (SGD) or ``b1=`` (Adam) through
  ``optax.inject_hyperparams``, with ``cyclical(...)`` as the learning rate:
  torch sets ``momentum`` / ``betas[0]`` of the param groups to this value
  before each optimizer step.

  Args:
    step_size_up: steps in the increasing half of the lr cycle (>= 1).
    step_size_down: steps in the decreasing half; default ``step_size_up``.
    mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
    gamma: per-step amplitude decay in ``"exp_range"`` mode (> 0).
    base_momentum: the momentum at the lr peak, in [0, 1) (torch default
      0.8).
    max_momentum: the momentum at the lr trough, in [0, 1) (torch default
      0.9).

  Returns:
    An ``optax.Schedule``.
  """
  validation.check_int("step_size_up", step_size_up, minimum=1)
  if step_size_down is None:
    step_size_down = step_size_up
  validation.check_int("step_size_down", step_size_down, minimum=1)
  validation.check_choice("mode", mode, ("triangular", "triangular2", "exp_range"))
  validation.check_positive("gamma", gamma)
  validation.check_beta("base_momentum", base_momentum)
  validation.check_beta("max_momentum", max_momentum)
  total = float(step_size_up + step_size_down)
  ratio = float(step_size_up) / total
  hi, lo = float(max_momentum), float(base_momentum)

  def schedule(count):
    i = _f(_as_int(count))
    cycle = jnp.floor(1.0 + i / total)
    x = 1.0 + i / total - cycle
    sf = jnp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    if mode == "triangular":
      scale = 1.0
    elif mode == "triangular2":
      scale = 1.0 / (2.0 ** (cycle - 1.0))
    else:
      scale = jnp.asarray(gamma, i.dtype) ** i
    return hi - (hi - lo) * sf * scale

  return schedule


# ---------------------------------------------------------------------------
# ReduceLROnPlateau
# ---------------------------------------------------------------------------


class ReduceLROnPlateauState(NamedTuple):
  """State of :func:`reduce_lr_on_plateau` (torch's attributes)."""
  lr: jax.Array               # current lr (torch's group["lr"])
  best: jax.Array             # best metric so far (valid when has_best)
  has_best: jax.Array         # False until a finite metric was seen
  num_bad_epochs: jax.Array   # int32
  cooldown_left: jax.Array    # int32 (torch's cooldown_counter)


@registry.register(
    family="wrapper",
    summary="torch ReduceLROnPlateau: scale updates by lr/learning_rate,"
    " reduced by factor when the loss `value` stops improving.",
    paper="PyTorch, torch.optim.lr_scheduler.ReduceLROnPlateau,"
    " https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler."
    "ReduceLROnPlateau.html",
    reference="torch.optim.lr_scheduler.ReduceLROnPlateau",
    extra_args=("value",),
    verified="torch.optim.lr_scheduler.ReduceLROnPlateau 2.13, float64, 600 steps (tests/test_torch_schedules.py)",
)
def reduce_lr_on_plateau(
    learning_rate: float = 1.0,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
  r"""``torch.optim.lr_scheduler.ReduceLROnPlateau`` as a transformation.

  Chain it after an optimizer built with the same ``learning_rate``:
  ``optax.chain(optzoo.adamw(lr), reduce_lr_on_plateau(lr, ...))`` and pass
  the loss as ``tx.update(grads, state, params, value=loss)``. The updates
  are multiplied by ``lr_t / learning_rate`` where ``lr_t`` is torch's
  current lr (exactly equivalent for optimizers linear in the lr: SGD,
  Adam(W), ...). Order as in a torch loop (``opt.step(); sched.step(loss)``):
  the update uses the lr from *before* ``value`` is seen, then ``value``
  updates the plateau state (``optax.contrib.reduce_on_plateau`` applies the
  new scale at once instead). With ``best`` the best value so far:

  * better: ``value < best*(1-threshold)`` (min/rel), ``value < best -
    threshold`` (min/abs), ``value > best*(1+threshold)`` (max/rel),
    ``value > best + threshold`` (max/abs); the first finite value is
    always better. Better resets ``num_bad_epochs``, otherwise it counts up;
  * in cooldown the counter is held at 0 (and cooldown counts down);
  * when ``num_bad_epochs > patience``: ``lr <- max(lr*factor, min_lr)``
    unless that changes lr by ``<= eps``; then cooldown starts.

  A non-finite ``value`` counts as a bad epoch and never becomes the best
  (torch would store an infinite best and never improve again); the state
  stays finite. Everything is ``jnp``: no host sync in ``update``.

  Args:
    learning_rate: the lr the inner optimizer was built with (> 0).
    mode: ``"min"`` or ``"max"``.
    factor: the reduction factor in (0, 1).
    patience: bad epochs tolerated before a reduction (integer >= 0).
    threshold: the improvement threshold (>= 0).
    threshold_mode: ``"rel"`` or ``"abs"``.
    cooldown: epochs to wait after a reduction (integer >= 0).
    min_lr: lower bound on the lr (>= 0).
    eps: a reduction smaller than this is ignored (>= 0).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  validation.check_positive("learning_rate", learning_rate)
  validation.check_choice("mode", mode, ("min", "max"))
  validation.check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
  validation.check_unit_interval("factor", factor, low_open=True,
                                 high_open=True)
  validation.check_int("patience", patience, minimum=0)
  validation.check_int("cooldown", cooldown, minimum=0)
  validation.check_nonneg("threshold", threshold)
  validation.check_nonneg("min_lr", min_lr)
  validation.check_nonneg("eps", eps)

  def init_fn(params):
    del params
    return ReduceLROnPlateauState(
        lr=jnp.asarray(learning_rate, _fdtype()),
        best=jnp.zeros((), _fdtype()),
        has_best=jnp.zeros((), jnp.bool_),
        num_bad_epochs=jnp.zeros((), jnp.int32),
        cooldown_left=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    validation.require_extra_arg(
        value, "value", "reduce_lr_on_plateau",
        "call `tx.update(grads, state, params, value=loss)` with the loss"
        " (or validation metric) of this step.")
    scale = state.lr / learning_rate
    updates = jax.tree.map(
        lambda u: None if u is None else (scale * u).astype(u.dtype), updates,
        is_leaf=lambda x: x is None)
    cur = jnp.asarray(value).astype(_fdtype())
    finite = jnp.isfinite(cur)
    best = state.best
    if mode == "min":
      ref = best * (1.0 - threshold) if threshold_mode == "rel" else (
          best - threshold)
      better = cur < ref
    else:
      ref = best * (1.0 + threshold) if threshold_mode == "rel" else (
          best + threshold)
      better = cur > ref
    better = finite & (better | ~state.has_best)
    new_best = jnp.where(better, cur, best)
    bad = jnp.where(better, 0, optax.safe_increment(state.num_bad_epochs))
    in_cooldown = state.cooldown_left > 0
    cd = jnp.where(in_cooldown, state.cooldown_left - 1,
                   state.cooldown_left)
    bad = jnp.where(in_cooldown, 0, bad)
    reduce = bad > patience
    cand = jnp.maximum(state.lr * factor, min_lr)
    new_lr = jnp.where(reduce & (state.lr - cand > eps), cand, state.lr)
    cd = jnp.where(reduce, cooldown, cd)
    bad = jnp.where(reduce, 0, bad)
    new_state = ReduceLROnPlateauState(
        lr=new_lr.astype(state.lr.dtype), best=new_best.astype(best.dtype),
        has_best=state.has_best | better,
        num_bad_epochs=bad.astype(jnp.int32),
        cooldown_left=cd.astype(jnp.int32))
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
