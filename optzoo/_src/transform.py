"""Composable primitives: the building blocks every optzoo alias is a chain of.

Conventions (shared by every primitive here):

* Each factory returns an ``optax.GradientTransformation`` whose state is a
  ``NamedTuple`` of arrays; step counters are ``int32`` and saturate
  (``optax.safe_increment``) instead of overflowing.
* Updates keep the dtype of the incoming updates (bf16 stays bf16); moments are
  stored in the params' dtype unless a ``*_dtype`` argument says otherwise.
  Scalar quantities that depend on the step (bias corrections, schedules) are
  computed in float32, or float64 when x64 is enabled, and only then cast.
* ``None`` leaves pass through untouched (``jax.tree.map`` skips them).
* Complex params are treated as torch does (``torch.view_as_real``): the
  real and imaginary parts are independent real coordinates, so second
  moments, maxima, clipping and square roots are taken per part
  (:func:`optzoo._src.complex_view.per_part`). optax uses ``|g|^2`` instead.
* Numerics follow PyTorch (``torch.optim``) exactly where a PyTorch reference
  exists: eps placement, the first momentum step, AMSGrad's max over the raw
  second moment, NAdam's momentum schedule, RAdam's threshold. Where optax
  differs, the docstring says so.

The composition identities worth knowing (tested in tests/test_composition.py)::

  rmsprop(lr, decay, eps, momentum=m)
      == chain(scale_by_rms(decay, eps), trace(m), scale_by_learning_rate(lr))

  scale_by_adam(b1=0.0, b2, eps)   gives   g_t / (sqrt(v_t / (1 - b2**t)) + eps)

where ``v_t`` is exactly ``scale_by_rms(decay=b2)``'s moving average: with
``b1 = 0`` Adam is RMSProp-type scaling with a bias-corrected second moment.
``chain(scale_by_rms, trace)`` ("RMSProp with momentum") differs from Adam in
two ways: the momentum is applied *after* the preconditioning (Adam averages
raw gradients, then divides by the root of the second moment), and neither
moment is bias-corrected.
"""

from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src.complex_view import from_real_view, full_like, per_part

__all__ = [
    "AddGradientNoiseState",
    "add_gradient_noise",
    "add_decayed_weights",
    "add_l2",
    "negate",
    "rectify",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_bounds",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "trace",
]

# ---------------------------------------------------------------------------
# Small numeric helpers
# ---------------------------------------------------------------------------


_float_dtype = tree.float_dtype


def _count_float(count: chex.Array) -> chex.Array:
  """The 1-based step ``t`` (after increment) as a high-precision float."""
  return jnp.asarray(count, _float_dtype())


def _bias_correction(decay: Any, t: chex.Array) -> chex.Array:
  """``1 - decay**t`` in high precision (as optax does)."""
  return 1.0 - jnp.asarray(decay, _float_dtype()) ** t


def _zeros(params: Any, dtype: Any = None) -> Any:
  return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype), params)


def _zero_count() -> chex.Array:
  return jnp.zeros([], jnp.int32)


# ---------------------------------------------------------------------------
# Momentum
# ---------------------------------------------------------------------------


class TraceState(NamedTuple):
  """State of :func:`trace`."""

  count: chex.Array  # int32 updates seen (only read when dampening may be > 0)
  trace: optax.Updates


@registry.register(
    family="primitive",
    summary="Heavy-ball / Nesterov momentum with dampening (torch.optim.SGD's buffer).",
    paper="Polyak 1964; Nesterov 1983; Sutskever et al., ICML 2013",
    reference="torch.optim.SGD momentum buffer",
    verified="torch.optim.SGD(momentum), as the momentum link of optzoo.sgd (tests/test_composition.py)",
)
def trace(
    decay: float = 0.9,
    nesterov: bool = False,
    accumulator_dtype: Optional[Any] = None,
    *,
    dampening: float = 0.0,
) -> optax.GradientTransformation:
  r"""Momentum as PyTorch's SGD defines it (heavy ball or Nesterov, dampening).

  .. math::

    b_1 = g_1, \qquad b_t = \mu\, b_{t-1} + (1 - d)\, g_t, \qquad
    u_t = \begin{cases} g_t + \mu\, b_t & \text{Nesterov} \\
                        b_t & \text{otherwise.} \end{cases}

  The first buffer is the raw gradient (no ``1 - d`` factor), exactly as
  ``torch.optim.SGD``; with ``dampening = 0`` this is ``optax.trace``.

  Args:
    decay: momentum coefficient :math:`\mu` in [0, 1).
    nesterov: use Nesterov's look-ahead form (requires ``dampening == 0``,
      as torch does).
    accumulator_dtype: dtype of the buffer (default: the params' dtype).
    dampening: :math:`d` in [0, 1] (keyword-only: the positional order is
      ``optax.trace``'s).

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Sutskever et al., `On the importance of initialization and momentum in
    deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_, 2013.
  """
  validation.check_beta("decay", decay)
  validation.check_unit_interval("dampening", dampening)
  validation.check_bool("nesterov", nesterov)
  if nesterov and not isinstance(dampening, jax.core.Tracer) and dampening != 0:
    raise ValueError("`nesterov=True` requires `dampening=0` (as torch.optim.SGD).")

  # With a literal dampening of 0 the zero-initialised buffer already gives
  # b_1 = g_1 exactly, so the select (one more pass per element) is not
  # needed. The scalar counter is always kept, so the state has the same
  # structure whether dampening is a literal or an injected array.
  static_zero = tree.is_literal_zero(dampening)

  def init_fn(params):
    return TraceState(count=_zero_count(), trace=_zeros(params, accumulator_dtype))

  def update_fn(updates, state, params=None):
    del params
    if not static_zero:
      first = state.count == 0
      # torch applies dampening only to a momentum buffer (momentum != 0).
      if isinstance(decay, (int, float)):
        damp = 0.0 if decay == 0 else dampening
      else:
        damp = jnp.where(jnp.asarray(decay) == 0, jnp.zeros_like(dampening),
                         dampening)

    def leaf(g, b):
      if static_zero:
        new_b = (decay * b + g).astype(b.dtype)
      else:
        new_b = jnp.where(first, g.astype(b.dtype),
                          decay * b + (1.0 - damp) * g).astype(b.dtype)
      out = g + decay * new_b if nesterov else new_b
      return out.astype(g.dtype), new_b

    new_updates, new_trace = tree.tree_unzip(
        jax.tree.map(leaf, updates, state.trace), updates, 2)
    return new_updates, TraceState(optax.safe_increment(state.count), new_trace)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# RMSProp
# ---------------------------------------------------------------------------


class ScaleByRmsState(NamedTuple):
  """State of :func:`scale_by_rms`."""

  nu: optax.Updates  # EMA of g^2
  mu: Optional[optax.Updates]  # EMA of g (centered only; None otherwise: no memory)


class ScaleByRmsWithCountState(NamedTuple):
  """State of :func:`scale_by_rms` with ``bias_correction=True``."""

  count: chex.Array
  nu: optax.Updates
  mu: Optional[optax.Updates]


@registry.register(
    family="primitive",
    summary="Divide by the root of an EMA of squared gradients (RMSProp; centered option).",
    paper="Tieleman & Hinton, Lecture 6.5, 2012; Graves 2013 (centered)",
    reference="torch.optim.RMSprop",
    verified="torch.optim.RMSprop, as the scaling link of optzoo.rmsprop (tests/test_composition.py)",
)
def scale_by_rms(
    decay: float = 0.99,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    *,
    centered: bool = False,
) -> optax.GradientTransformation:
  r"""RMSProp scaling, as ``torch.optim.RMSprop`` computes it.

  .. math::

    v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
    \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \;(\text{centered}),

    u_t = \frac{g_t}{\sqrt{v_t - \bar g_t^2} + \epsilon}\;(\text{centered})
    \quad\text{or}\quad \frac{g_t}{\sqrt{v_t} + \epsilon}.

  No bias correction; ``eps`` is *outside* the square root (torch). optax's
  ``scale_by_rms`` puts it inside by default: pass ``eps_in_sqrt=True`` for
  that form, :math:`g / \sqrt{v + \epsilon}`.

  Args:
    decay: :math:`\alpha` (torch's ``alpha``), in [0, 1).
    eps: added to the denominator, >= 0.
    initial_scale: initial value of :math:`v` (torch: 0).
    eps_in_sqrt: put ``eps`` inside the square root (optax's default form).
    bias_correction: divide :math:`v_t` (and :math:`\bar g_t`) by
      :math:`1 - \alpha^t`, as ``optax.scale_by_rms(bias_correction=True)``
      (torch has no such option); the state then also counts steps. With
      ``initial_scale = 0`` this is ``scale_by_adam(b1=0)``'s scaling.
    centered: subtract the squared mean gradient (Graves' centered RMSProp;
      keyword-only: the positional order is ``optax.scale_by_rms``'s).

  Returns:
    An ``optax.GradientTransformation``.
  """
  validation.check_beta("decay", decay)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("initial_scale", initial_scale)
  validation.check_bool("centered", centered)
  validation.check_bool("eps_in_sqrt", eps_in_sqrt)
  validation.check_bool("bias_correction", bias_correction)

  def init_fn(params):
    nu = jax.tree.map(lambda p: full_like(p, initial_scale), params)
    mu = _zeros(params) if centered else None
    if bias_correction:
      return ScaleByRmsWithCountState(count=_zero_count(), nu=nu, mu=mu)
    return ScaleByRmsState(nu=nu, mu=mu)

  def update_fn(updates, state, params=None):
    del params
    nu = jax.tree.map(
        lambda g, v: per_part(lambda g, v: decay * v + (1 - decay) * g * g, g, v
                              ).astype(v.dtype), updates, state.nu)
    if centered:
      # torch: grad_avg.lerp_(grad, 1 - alpha); the lerp form matters in the
      # cancellation-prone v - mean^2.
      mu = jax.tree.map(lambda g, m: (m + (1 - decay) * (g - m)).astype(m.dtype),
                        updates, state.mu)
    else:
      mu = state.mu
    if bias_correction:
      count = optax.safe_increment(state.count)
      inv_bc = 1.0 / _bias_correction(decay, _count_float(count))
      nu_hat = jax.tree.map(lambda v: v * inv_bc, nu)
      mu_hat = None if mu is None else jax.tree.map(lambda m: m * inv_bc, mu)
    else:
      nu_hat, mu_hat = nu, mu
    if centered:
      second = jax.tree.map(
          lambda v, m: per_part(lambda v, m: v - m * m, v, m), nu_hat, mu_hat)
    else:
      second = nu_hat
    if eps_in_sqrt:
      f = lambda g, s: g / jnp.sqrt(s + eps)
    else:
      f = lambda g, s: g / (jnp.sqrt(s) + eps)
    new = jax.tree.map(lambda g, s: per_part(f, g, s).astype(g.dtype), updates, second)
    if bias_correction:
      return new, ScaleByRmsWithCountState(count=count, nu=nu, mu=mu)
    return new, ScaleByRmsState(nu=nu, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Adagrad
# ---------------------------------------------------------------------------


class ScaleByAdagradState(NamedTuple):
  """State of :func:`scale_by_adagrad`."""

  count: chex.Array
  sum_of_squares: optax.Updates


@registry.register(
    family="primitive",
    summary="Divide by the root of the running sum of squared gradients, with lr decay.",
    paper="Duchi, Hazan & Singer, JMLR 2011",
    reference="torch.optim.Adagrad",
    verified="torch.optim.Adagrad, as the scaling link of optzoo.adagrad (tests/test_composition.py)",
)
def scale_by_adagrad(
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    lr_decay: float = 0.0,
    *,
    eps_in_sqrt: bool = False,
) -> optax.GradientTransformation:
  r"""Adagrad scaling, as ``torch.optim.Adagrad`` computes it.

  .. math::

    s_t = s_{t-1} + g_t^2, \qquad
    u_t = \frac{1}{1 + (t-1)\,\delta}\;\frac{g_t}{\sqrt{s_t} + \epsilon}

  with :math:`\delta` = ``lr_decay`` and :math:`s_0` =
  ``initial_accumulator_value``. ``eps`` is outside the square root (torch);
  ``optax.adagrad`` puts it inside and starts at 0.1 (``eps_in_sqrt=True``,
  ``initial_accumulator_value=0.1``, ``eps=1e-7`` reproduce its scaling).

  Args:
    initial_accumulator_value: :math:`s_0 \ge 0`.
    eps: >= 0.
    lr_decay: :math:`\delta \ge 0`, torch's per-step learning-rate decay.
    eps_in_sqrt: use :math:`g/\sqrt{s + \epsilon}` (optax's form).
  """
  validation.check_nonneg("initial_accumulator_value", initial_accumulator_value)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("lr_decay", lr_decay)
  validation.check_bool("eps_in_sqrt", eps_in_sqrt)

  def init_fn(params):
    s = jax.tree.map(lambda p: full_like(p, initial_accumulator_value), params)
    return ScaleByAdagradState(count=_zero_count(), sum_of_squares=s)

  def update_fn(updates, state, params=None):
    del params
    s = jax.tree.map(
        lambda g, a: per_part(lambda g, a: a + g * g, g, a).astype(a.dtype),
        updates, state.sum_of_squares)
    decay = 1.0 / (1.0 + _count_float(state.count) * lr_decay)
    if eps_in_sqrt:
      f = lambda g, a: (decay * (g / jnp.sqrt(a + eps))).astype(g.dtype)
    else:
      f = lambda g, a: (decay * (g / (jnp.sqrt(a) + eps))).astype(g.dtype)
    new = jax.tree.map(lambda g, a: per_part(f, g, a), updates, s)
    return new, ScaleByAdagradState(optax.safe_increment(state.count), s)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Adam / AMSGrad
# ---------------------------------------------------------------------------


class ScaleByAdamState(NamedTuple):
  """State of :func:`scale_by_adam`."""

  count: chex.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: Optional[optax.Updates]  # AMSGrad running max of the raw nu (None when unused)


def _moments(updates, mu, nu, b1, b2):
  """torch's Adam moments: a lerp for the first, ``tree.tree_moment`` for the second."""
  mu = jax.tree.map(lambda g, m: (m + (1 - b1) * (g - m)).astype(m.dtype), updates, mu)
  nu = jax.tree.map(
      lambda g, v: per_part(lambda g, v: b2 * v + (1 - b2) * g * g, g, v
                            ).astype(v.dtype), updates, nu)
  return mu, nu


def adam_step_scalars(b1: Any, b2: Any, count: chex.Array):
  """The new count and Adam's ``1 / (1 - b1^t)``, ``1 / sqrt(1 - b2^t)``.

  torch divides, ``(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)``; the scalar
  reciprocals are taken once, so each element costs one division (equal up
  to rounding; optax's form costs three). Shared with the fused CPU kernel
  (``optzoo/_src/cpu_kernels``), which must see the very same scalars.
  """
  count = optax.safe_increment(count)
  t = _count_float(count)
  bc1 = _bias_correction(b1, t)
  sqrt_bc2 = jnp.sqrt(_bias_correction(b2, t))
  return count, 1.0 / bc1, 1.0 / sqrt_bc2


def adam_direction(updates, mu, second, inv_bc1, inv_sqrt_bc2, eps, eps_root):
  """Adam's update ``(m * inv_bc1) / (sqrt(v + eps_root) * inv_sqrt_bc2 + eps)``, in
  the dtype of ``updates`` (``second`` is ``nu``, or AMSGrad's max)."""
  return jax.tree.map(
      lambda g, m, v: per_part(
          lambda m, v: (m * inv_bc1) / (jnp.sqrt(v + eps_root) * inv_sqrt_bc2
                                        + eps), m, v).astype(g.dtype),
      updates, mu, second)


def _maximum(a, b):
  """Elementwise max (per real / imaginary part for complex leaves)."""
  return per_part(jnp.maximum, a, b)


@registry.register(
    family="primitive",
    summary="Adam's bias-corrected moment scaling; AMSGrad as torch defines it.",
    paper="Kingma & Ba, ICLR 2015; Reddi, Kale & Kumar, ICLR 2018 (AMSGrad)",
    reference="torch.optim.Adam",
    verified="torch.optim.Adam, as the scaling link of optzoo.adam (tests/test_composition.py)",
)
def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Optional[Any] = None,
    *,
    amsgrad: bool = False,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adam's preconditioning, with AMSGrad exactly as ``torch.optim.Adam``.

  .. math::

    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
    \hat v_t = \max(\hat v_{t-1}, v_t)\ (\text{AMSGrad, raw } v),

    u_t = \frac{m_t / (1-\beta_1^t)}
               {\sqrt{(\hat v_t \text{ or } v_t) + \epsilon_{root}}
                /\sqrt{1-\beta_2^t} + \epsilon}.

  ``eps`` is added after the bias correction (the usual :math:`\epsilon` on
  :math:`\sqrt{\hat v}`). AMSGrad takes the max over the *raw* second moment
  and divides by the current bias correction, as torch does; ``optax.amsgrad``
  takes the max over the bias-corrected moment and differs (optax #1389).

  With ``b1 = 0`` this is RMSProp-type scaling with a bias-corrected second
  moment, :math:`g_t / (\sqrt{v_t/(1-\beta_2^t)} + \epsilon)`.

  Args:
    b1: first-moment decay in [0, 1).
    b2: second-moment decay in [0, 1).
    eps: >= 0, outside the square root.
    eps_root: >= 0, inside the square root (for meta-gradients; torch: 0).
    amsgrad: keep the running max of the raw second moment.
    mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16`` to halve its
      memory); default: the params' dtype.
    nu_dtype: dtype of the second moment(s).

  References:
    Kingma & Ba, `Adam <https://arxiv.org/abs/1412.6980>`_, 2015.
    Reddi et al., `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, 2018.
  """
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("eps_root", eps_root)
  validation.check_bool("amsgrad", amsgrad)

  def init_fn(params):
    nu = _zeros(params, nu_dtype)
    return ScaleByAdamState(
        count=_zero_count(), mu=_zeros(params, mu_dtype), nu=nu,
        nu_max=_zeros(params, nu_dtype) if amsgrad else None)

  def update_fn(updates, state, params=None):
    del params
    mu, nu = _moments(updates, state.mu, state.nu, b1, b2)
    count, inv_bc1, inv_sqrt_bc2 = adam_step_scalars(b1, b2, state.count)
    if amsgrad:
      nu_max = jax.tree.map(_maximum, state.nu_max, nu)
      second = nu_max
    else:
      nu_max = state.nu_max
      second = nu
    new = adam_direction(updates, mu, second, inv_bc1, inv_sqrt_bc2, eps,
                         eps_root)
    return new, ScaleByAdamState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# NAdam (Dozat, with torch's momentum-decay schedule)
# ---------------------------------------------------------------------------


class ScaleByNadamState(NamedTuple):
  """State of :func:`scale_by_nadam`."""

  count: chex.Array
  mu_product: chex.Array  # prod_{i<=t} mu_i, high precision
  mu: optax.Updates
  nu: optax.Updates


@registry.register(
    family="primitive",
    summary="NAdam scaling with Dozat's momentum-decay schedule (torch.optim.NAdam).",
    paper="Dozat, ICLR Workshop 2016",
    reference="torch.optim.NAdam",
    verified="torch.optim.NAdam, as the scaling link of optzoo.nadam (tests/test_alias_oracles.py)",
)
def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
) -> optax.GradientTransformation:
  r"""NAdam's preconditioning with the momentum schedule of ``torch.optim.NAdam``.

  .. math::

    \mu_t = \beta_1\left(1 - \tfrac12\, 0.96^{t\psi}\right), \qquad
    \Pi_t = \prod_{i \le t} \mu_i,

    u_t = \frac{1-\mu_t}{1-\Pi_t}\,\frac{g_t}{d_t}
        + \frac{\mu_{t+1}}{1-\Pi_t\,\mu_{t+1}}\,\frac{m_t}{d_t},
    \qquad d_t = \sqrt{v_t/(1-\beta_2^t)} + \epsilon.

  :math:`\psi` is ``momentum_decay``. With the default :math:`\psi = 0.004`
  the effective momentum starts at :math:`0.45` and rises towards
  :math:`\beta_1` over :math:`O(10^4)` steps. ``optax.nadam`` is the simplified
  form without this schedule and differs.

  References:
    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
  """
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("momentum_decay", momentum_decay)

  def init_fn(params):
    return ScaleByNadamState(
        count=_zero_count(), mu_product=jnp.ones([], _float_dtype()),
        mu=_zeros(params), nu=_zeros(params))

  def update_fn(updates, state, params=None):
    del params
    mu, nu = _moments(updates, state.mu, state.nu, b1, b2)
    count = optax.safe_increment(state.count)
    t = _count_float(count)
    mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
    mu_product = state.mu_product * mu_t
    sqrt_bc2 = jnp.sqrt(_bias_correction(b2, t))
    c_g = (1.0 - mu_t) / (1.0 - mu_product)
    c_m = mu_next / (1.0 - mu_product * mu_next)

    inv_sqrt_bc2 = 1.0 / sqrt_bc2

    def leaf(g, m, v):
      # torch: addcdiv(g, denom, c_g) then addcdiv(m, denom, c_m); one shared
      # division per element here (equal up to rounding).
      def f(g, m, v):
        denom = jnp.sqrt(v) * inv_sqrt_bc2 + eps
        return (c_g * g + c_m * m) / denom
      return per_part(f, g, m, v).astype(g.dtype)

    new = jax.tree.map(leaf, updates, mu, nu)
    return new, ScaleByNadamState(count, mu_product.astype(state.mu_product.dtype),
                                  mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# RAdam's variance rectification
# ---------------------------------------------------------------------------


@registry.register(
    family="primitive",
    summary="Adam moments with RAdam's variance rectification and momentum fallback.",
    paper="Liu et al., ICLR 2020",
    reference="torch.optim.RAdam (fallback='sgdm'); pytorch_optimizer.RAdam (fallback='skip')",
    verified="torch.optim.RAdam, as the rectification link of optzoo.radam (tests/test_alias_oracles.py)",
)
def rectify(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    threshold: float = 5.0,
    fallback: str = "sgdm",
    strict: bool = True,
) -> optax.GradientTransformation:
  r"""RAdam: Adam moments with the variance rectification term.

  .. math::

    \rho_\infty = \frac{2}{1-\beta_2} - 1, \qquad
    \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t},

    r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
                     {(\rho_\infty-4)(\rho_\infty-2)\rho_t}},

    u_t = \begin{cases}
      r_t\,\frac{m_t}{1-\beta_1^t}\,\frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon}
        & \rho_t > \text{threshold} \\
      \frac{m_t}{1-\beta_1^t} & \text{otherwise (fallback='sgdm')} \\
      0 & \text{otherwise (fallback='skip')}
    \end{cases}

  ``eps`` is on the raw :math:`\sqrt{v_t}` as in ``torch.optim.RAdam``
  (``optax.radam`` puts it on :math:`\sqrt{\hat v_t}`, a ~1e-8 difference).
  ``strict=True`` uses :math:`\rho_t > 5` (torch); ``strict=False`` uses
  :math:`\rho_t \ge 5` (the official repo and optax). The paper writes
  :math:`\rho_t > 4`: pass ``threshold=4.0``. ``fallback='skip'`` reproduces
  the official repo's default (``degenerated_to_sgd=False``).

  References:
    Liu et al., `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_, ICLR 2020.
  """
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("threshold", threshold)
  validation.check_choice("fallback", fallback, ("sgdm", "skip"))
  validation.check_bool("strict", strict)

  def init_fn(params):
    return ScaleByAdamState(count=_zero_count(), mu=_zeros(params), nu=_zeros(params),
                            nu_max=None)

  def update_fn(updates, state, params=None):
    del params
    mu, nu = _moments(updates, state.mu, state.nu, b1, b2)
    count = optax.safe_increment(state.count)
    t = _count_float(count)
    bc1 = _bias_correction(b1, t)
    bc2 = _bias_correction(b2, t)
    b2f = jnp.asarray(b2, _float_dtype())
    rho_inf = 2.0 / (1.0 - b2f) - 1.0
    rho_t = rho_inf - 2.0 * t * b2f**t / bc2
    tractable = rho_t > threshold if strict else rho_t >= threshold
    safe_rho = jnp.where(tractable, rho_t, rho_inf)
    r = jnp.sqrt((safe_rho - 4.0) * (safe_rho - 2.0) * rho_inf
                 / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe_rho))
    fb = 1.0 if fallback == "sgdm" else 0.0
    # Scalar coefficients first: one division per element, as in torch's
    # ``(m / bc1) * lr * (sqrt(bc2) / (sqrt(v) + eps)) * r`` up to rounding.
    adapted_coef = r * jnp.sqrt(bc2) / bc1
    fallback_coef = fb / bc1

    def leaf(g, m, v):
      adapted = per_part(lambda m, v: m * adapted_coef / (jnp.sqrt(v) + eps), m, v)
      return jnp.where(tractable, adapted, m * fallback_coef).astype(g.dtype)

    new = jax.tree.map(leaf, updates, mu, nu)
    return new, ScaleByAdamState(count=count, mu=mu, nu=nu, nu_max=state.nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


scale_by_radam = rectify


# ---------------------------------------------------------------------------
# AdaBound's dynamic bounds
# ---------------------------------------------------------------------------


@registry.register(
    family="primitive",
    summary="AdaBound/AMSBound: Adam step size clipped into bounds converging to final_lr.",
    paper="Luo, Xiong, Liu & Sun, ICLR 2019",
    reference="adabound.AdaBound 0.0.5",
    verified="adabound.AdaBound 0.0.5, as the clipping link of optzoo.adabound (tests/test_alias_oracles.py)",
)
def scale_by_bounds(
    final_lr: float = 0.1,
    base_lr: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    gamma: float = 1e-3,
    eps: float = 1e-8,
    *,
    amsbound: bool = False,
) -> optax.GradientTransformation:
  r"""AdaBound's clipped Adam step, *per unit learning rate*.

  The official code computes :math:`\mathrm{clip}(\eta_t \sqrt{1-\beta_2^t}
  /((1-\beta_1^t)(\sqrt{v_t}+\epsilon)),\, \ell_t, u_t)\, m_t` with bounds
  :math:`\ell_t = f_t (1 - 1/(\gamma t + 1))`, :math:`u_t = f_t(1 + 1/(\gamma
  t))` and :math:`f_t = \text{final\_lr}\cdot\eta_t/\text{base\_lr}`. Because
  both bounds scale with :math:`\eta_t`, the clip factors as
  :math:`\eta_t \cdot \mathrm{clip}(a_t, \ell_t/\eta_t, u_t/\eta_t)`, so this
  primitive returns the clip of :math:`a_t` and leaves :math:`\eta_t` to
  :func:`scale_by_learning_rate` -- which keeps the learning rate injectable
  and schedulable while reproducing ``adabound.AdaBound`` (whose bounds also
  follow the scheduled lr, "a feature" per its author).

  AMSBound (``amsbound=True``) uses the running max of the raw :math:`v_t`.
  There is no :math:`1/\sqrt t` factor (the paper has one; the code does not).

  Args:
    final_lr: the SGD learning rate the bounds converge to.
    base_lr: the initial learning rate (``final_lr / base_lr`` scales the
      bounds); :func:`optzoo.adabound` passes its learning rate at step 0.
    b1, b2, eps: Adam's; eps is on the raw :math:`\sqrt{v}`.
    gamma: convergence speed of the bounds.
    amsbound: AMSBound variant.

  References:
    Luo et al., `Adaptive Gradient Methods with Dynamic Bound of Learning
    Rate <https://openreview.net/forum?id=Bkg3g2R9FX>`_, ICLR 2019.
  """
  validation.check_nonneg("final_lr", final_lr)
  validation.check_positive("base_lr", base_lr)
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("gamma", gamma)
  validation.check_nonneg("eps", eps)
  validation.check_bool("amsbound", amsbound)

  def init_fn(params):
    return ScaleByAdamState(
        count=_zero_count(), mu=_zeros(params), nu=_zeros(params),
        nu_max=_zeros(params) if amsbound else None)

  def update_fn(updates, state, params=None):
    del params
    mu, nu = _moments(updates, state.mu, state.nu, b1, b2)
    count = optax.safe_increment(state.count)
    t = _count_float(count)
    step = jnp.sqrt(_bias_correction(b2, t)) / _bias_correction(b1, t)
    ratio = final_lr / base_lr
    lower = ratio * (1.0 - 1.0 / (gamma * t + 1.0))
    upper = ratio * (1.0 + 1.0 / (gamma * t))
    if amsbound:
      nu_max = jax.tree.map(_maximum, state.nu_max, nu)
      second = nu_max
    else:
      nu_max = state.nu_max
      second = nu
    new = jax.tree.map(
        lambda g, m, v: per_part(
            lambda m, v: jnp.clip(step / (jnp.sqrt(v) + eps), lower, upper) * m,
            m, v).astype(g.dtype),
        updates, mu, second)
    return new, ScaleByAdamState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Weight decay and learning rate
# ---------------------------------------------------------------------------


@registry.register(
    family="primitive",
    summary="Negate the gradient (torch's maximize=True: ascend the objective).",
    paper="-",
    reference="torch.optim.* maximize=True",
    verified="torch.optim maximize=True 2.13, float64, 300 steps (tests/test_classic.py)",
)
def negate() -> optax.GradientTransformation:
  r"""Negate the updates: :math:`g \leftarrow -g`.

  Put it first in a chain to maximize instead of minimize; this is what
  torch's ``maximize=True`` does (before the coupled weight decay is added).
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(jnp.negative, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def maximize_links(maximize: bool) -> list:
  """torch's ``maximize=True`` as chain links: ``[negate()]``, first in the
  chain (before any coupled L2), or ``[]``."""
  validation.check_bool("maximize", maximize)
  return [negate()] if maximize else []


def l2_links(weight_decay: Any) -> list:
  """torch's coupled ``weight_decay`` as chain links: ``[add_l2(weight_decay)]``.

  The link always stays (a literal 0 makes it a stateless no-op that reads no
  params), so the state has the same structure as with an injected (array)
  weight decay.
  """
  validation.check_nonneg("weight_decay", weight_decay)
  return [add_l2(weight_decay)]


@registry.register(
    family="primitive",
    summary="Coupled L2: add weight_decay * params to the gradient (torch weight_decay).",
    paper="Hanson & Pratt 1988; Loshchilov & Hutter, ICLR 2019 (for the contrast)",
    reference="torch.optim.* weight_decay (coupled)",
    verified="torch.optim.Adam(weight_decay), as the L2 link of optzoo.adam (tests/test_composition.py)",
    needs_params=True,
)
def add_l2(weight_decay: float = 0.0) -> optax.GradientTransformation:
  r"""Coupled L2 regularisation: :math:`g \leftarrow g + \lambda\,\theta`.

  Place it *first* in a chain, before any preconditioning: this is what
  ``weight_decay`` means in ``torch.optim.SGD/Adam/RMSprop/Adagrad/NAdam/
  RAdam``. For decoupled decay (AdamW) use :func:`add_decayed_weights` after
  the preconditioner.
  """
  validation.check_nonneg("weight_decay", weight_decay)
  return _add_scaled_params(weight_decay, "add_l2 (coupled weight decay)")


def _add_scaled_params(weight_decay: Any, who: str) -> optax.GradientTransformation:
  """``u + weight_decay * params``: coupled (first in a chain) or decoupled (later)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  # A literal 0 is a no-op that reads no params (the link, and its empty
  # state, stay: the state structure is the same as with an injected value).
  static_zero = tree.is_literal_zero(weight_decay)

  def update_fn(updates, state, params=None):
    if static_zero:
      return updates, state
    validation.require_params(params, who)
    new = jax.tree.map(lambda u, p: (u + weight_decay * p).astype(u.dtype),
                       updates, params)
    return new, state

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="primitive",
    summary="Decoupled weight decay: add weight_decay * params to the update (AdamW/SGDW).",
    paper="Loshchilov & Hutter, ICLR 2019",
    reference="torch.optim.AdamW; optax.add_decayed_weights",
    verified="torch.optim.AdamW, as the decay link of optzoo.adamw (tests/test_composition.py)",
    needs_params=True,
)
def add_decayed_weights(
    weight_decay: float = 0.0,
    mask: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Decoupled weight decay: :math:`u \leftarrow u + \lambda\,\theta`.

  Place it after the preconditioner and before
  :func:`scale_by_learning_rate`, so the step is
  :math:`\theta \leftarrow \theta - \eta(u + \lambda\theta)`, i.e. torch's
  :math:`\theta(1-\eta\lambda) - \eta u` (AdamW). The paper scales the decay by
  the schedule multiplier only; with ``lr = alpha * eta_t`` the paper's
  :math:`\lambda` equals this :math:`\lambda\cdot\alpha` (Loshchilov & Hutter, ICLR 2019).

  Args:
    weight_decay: :math:`\lambda \ge 0`.
    mask: optional pytree of bools (or a callable of params) selecting the
      leaves to decay, as ``optax.add_decayed_weights``.
  """
  validation.check_nonneg("weight_decay", weight_decay)
  tx = _add_scaled_params(weight_decay, "add_decayed_weights (decoupled weight decay)")
  if mask is not None:
    return optax.masked(tx, mask)
  return tx


@registry.register(
    family="primitive",
    summary="Multiply by -learning_rate (a float or an optax schedule).",
    paper="-",
    reference="optax.scale_by_learning_rate",
    verified="torch.optim.SGD, as the last link of optzoo.sgd (tests/test_composition.py)",
)
def scale_by_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
    *,
    flip_sign: bool = True,
) -> optax.GradientTransformation:
  r"""Scale by :math:`-\eta_t` (the last link of every alias).

  A schedule is called with the 0-based step count (the value used by the
  first update is ``schedule(0)``).
  """
  validation.check_lr(learning_rate)
  validation.check_bool("flip_sign", flip_sign)
  m = -1.0 if flip_sign else 1.0
  if callable(learning_rate):
    def fn(count):
      return m * learning_rate(count)
    inner = optax.scale_by_schedule(fn)
  else:
    inner = optax.scale(m * learning_rate)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None):
    new, state = inner.update(updates, state, params)
    return jax.tree.map(lambda n, u: n.astype(u.dtype), new, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Gradient noise
# ---------------------------------------------------------------------------


class AddGradientNoiseState(NamedTuple):
  """State of :func:`add_gradient_noise`.

  Attributes:
    count: number of updates so far (int32; :math:`t` of the current update).
    key: the PRNG key used for the next update.
  """

  count: jax.Array
  key: jax.Array


def _normal(key: jax.Array, g: jax.Array) -> jax.Array:
  """Standard normal noise like ``g``; complex: N(0, 1) per real/imaginary part."""
  if jnp.iscomplexobj(g):
    rd = jnp.finfo(g.dtype).dtype
    return from_real_view(jax.random.normal(key, g.shape + (2,), rd), g)
  return jax.random.normal(key, g.shape, g.dtype)


@registry.register(
    family="primitive",
    summary="Add annealed Gaussian noise N(0, eta/(1+t)^gamma) to the"
    " gradients; key kept in state.",
    paper="Neelakantan et al., Adding Gradient Noise Improves Learning for"
    " Very Deep Networks, 2015, https://arxiv.org/abs/1511.06807",
    reference="statistical test of the variance schedule (same law as"
    " optax.add_noise)",
    extra_args=("key",),
)
@validation.renamed(seed="key")
def add_gradient_noise(
    eta: float = 0.01,
    gamma: float = 0.55,
    key: jax.Array | int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds annealed Gaussian noise to the updates (gradients).

  .. math::

    \tilde g_t = g_t + \mathcal N(0, \sigma_t^2), \qquad
    \sigma_t^2 = \frac{\eta}{(1 + t)^{\gamma}}

  with :math:`t = 0` for the first update (the same law as
  ``optax.add_noise``). The paper uses :math:`\gamma = 0.55` and
  :math:`\eta \in \{0.01, 0.3, 1.0\}` and adds the noise after gradient
  clipping, before the optimizer: put this first in an ``optax.chain``.

  The PRNG key lives in the state (the factory's ``key``, or one seeded by
  an int ``key``) and is split at every update; an extra argument ``key=``
  (a PRNG key) overrides it for that update (the state key then stays
  unchanged). Unknown extra arguments are
  ignored. Noise is drawn in each leaf's dtype (bf16 stays bf16). A complex
  leaf gets :math:`\mathcal N(0, \sigma_t^2)` noise in the real and in the
  imaginary part (its real view, as torch treats complex parameters;
  ``optax.add_noise`` draws complex normals, of variance
  :math:`\sigma_t^2/2` per part).

  Args:
    eta: :math:`\eta` >= 0, the variance at :math:`t = 0`.
    gamma: :math:`\gamma` >= 0, the annealing exponent.
    key: the state's initial PRNG key, or an integer seed.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Neelakantan et al., `Adding Gradient Noise Improves Learning for Very Deep
    Networks <https://arxiv.org/abs/1511.06807>`_, 2015.
  """
  validation.check_nonneg("eta", eta)
  validation.check_nonneg("gamma", gamma)
  validation.check_key("key", key)
  init_key = key

  def init_fn(params):
    del params
    return AddGradientNoiseState(count=jnp.zeros([], jnp.int32),
                                 key=tree.as_key(init_key))

  def update_fn(updates, state, params=None, *, key=None, **extra_args):
    del params, extra_args
    if key is None:
      next_key, use_key = jax.random.split(state.key)
    else:
      next_key, use_key = state.key, key
    t = state.count.astype(tree.float_dtype())
    std = jnp.sqrt(eta / (1.0 + t) ** gamma)
    leaves, treedef = jax.tree.flatten(updates)
    leaves = [jnp.asarray(g) for g in leaves]
    keys = jax.random.split(use_key, max(len(leaves), 1))
    noisy = [(g + std.astype(g.dtype) * _normal(k, g)) for g, k in zip(leaves, keys)]
    return treedef.unflatten(noisy), AddGradientNoiseState(
        count=optax.safe_increment(state.count), key=next_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
