"""Memory-light second moments: Adafactor (factored) and SM3 (cover sets).

* :func:`scale_by_factored_rms` / :func:`adafactor`: for a leaf with at least
  two dimensions, the second moment of shape ``(..., n, m)`` is kept as a row
  statistic ``(..., n)`` and a column statistic ``(..., m)`` (a (4096, 4096)
  matrix needs 8,192 numbers instead of 16.8 million); smaller leaves keep a
  full (unfactored) second moment. ``adafactor()`` is ``torch.optim.Adafactor``
  by default, ``adafactor(variant="paper")`` is ``pytorch_optimizer.AdaFactor``
  (the paper's algorithm with relative step sizes and momentum).
* :func:`scale_by_sm3` / :func:`sm3`: one accumulator per dimension of each
  leaf (rows, columns, ...), exactly ``pytorch_optimizer.SM3``.

Complex parameters: the references reject them (``torch.optim.Adafactor``,
``pytorch_optimizer.AdaFactor`` and ``SM3`` raise). Here a complex leaf of
shape ``s`` is handled as torch handles complex parameters everywhere else,
as its real view ``torch.view_as_real(p)`` of shape ``s + (2,)``: the methods
compute exactly what the references compute when given that real tensor
(the part axis is the last one, so it is one of the two factored axes of
Adafactor and has its own SM3 accumulator of size 2; the statistics of a
complex leaf are real arrays shaped after the real view).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import complex_view
from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src import transform

__all__ = [
    "adafactor",
    "scale_by_factored_rms",
    "scale_by_sm3",
    "sm3",
]


def _zero_count():
  return jnp.zeros([], jnp.int32)


def _lerp(a, b, w):
  """``a + w (b - a)`` (torch's ``lerp_``)."""
  return a + w * (b - a)


def _rms(x):
  x = x.astype(tree.compute_dtype(x))
  return jnp.sqrt(jnp.mean(x * x)) if x.size else jnp.zeros([], x.dtype)


# ---------------------------------------------------------------------------
# Adafactor
# ---------------------------------------------------------------------------


class ScaleByFactoredRmsState(NamedTuple):
  """State of :func:`scale_by_factored_rms`.

  For a factored leaf (``ndim >= 2``) ``v_row`` has shape ``shape[:-1]`` and
  ``v_col`` ``shape[:-2] + shape[-1:]`` while ``v`` is ``None``; for an
  unfactored leaf ``v`` has the leaf's shape and the others are ``None``.
  """

  count: chex.Array
  v_row: optax.Updates
  v_col: optax.Updates
  v: optax.Updates


def _factored(p) -> bool:
  return np.ndim(p) >= 2


@registry.register(
    family="primitive",
    summary="Adafactor's factored second moment: g / sqrt(row x col / mean(row)).",
    paper="Shazeer & Stern, ICML 2018, arXiv:1804.04235",
    reference="torch.optim.Adafactor (eps_mode='clamp'); pytorch_optimizer.AdaFactor ('add')",
    verified=('torch.optim.Adafactor 2.13 through optzoo.adafactor, float64, 300'
              ' steps (tests/test_factorized.py)'),
)
def scale_by_factored_rms(
    decay_rate: float = -0.8,
    b2: Optional[float] = None,
    eps: Optional[float] = None,
    eps_mode: str = "clamp",
) -> optax.GradientTransformation:
  r"""Divide by the root of Adafactor's (factored) second-moment estimate.

  With :math:`1-\hat\beta_{2,t} = \max(1-\beta_2,\ t^{c})` (:math:`c` =
  ``decay_rate`` <= 0; ``b2=None``: :math:`t^c`, no cap, torch), for a leaf
  :math:`G` of shape ``(..., n, m)``:

  .. math::

    R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-1}(S_t),
    \quad C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-2}(S_t),

    \hat V_t = \frac{R_t C_t^\top}{\mathrm{mean}(R_t)}, \qquad
    u_t = G_t / \sqrt{\hat V_t},

  and an unfactored EMA of :math:`S_t` for leaves with fewer than two
  dimensions. ``eps_mode="clamp"`` (``torch.optim.Adafactor``):
  :math:`S = G^2`, the divisor :math:`\mathrm{mean}(R)` is clamped at
  :math:`\epsilon` and :math:`\hat V` at :math:`\epsilon^2`; ``eps=None``
  means the machine epsilon of the leaf's dtype (torch). ``eps_mode="add"``
  (the paper, ``pytorch_optimizer.AdaFactor``): :math:`S = G^2 + \epsilon`,
  no clamping (``eps=None`` means 1e-30 there).

  A complex leaf of shape ``s`` is its real view of shape ``s + (2,)``
  (``torch.view_as_real``; see the module docstring): a complex vector is
  factored as an ``(n, 2)`` matrix, a complex ``(n, m)`` matrix keeps
  statistics of shapes ``(n, m)`` and ``(n, 2)``.

  Args:
    decay_rate: :math:`c \le 0` (torch ``beta2_decay``, default -0.8).
    b2: cap :math:`\beta_2` in [0, 1) of the second-moment decay, or
      ``None`` for none (torch).
    eps: :math:`\epsilon \ge 0` or ``None`` (see above).
    eps_mode: ``"clamp"`` or ``"add"``.

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost <https://arxiv.org/abs/1804.04235>`_, ICML 2018.
  """
  arr = validation.check_number("decay_rate", decay_rate)
  if arr is not None and np.any(arr > 0):
    raise ValueError(f"`decay_rate` must be <= 0, got {decay_rate!r}.")
  if b2 is not None:
    validation.check_beta("b2", b2)
  if eps is not None:
    validation.check_nonneg("eps", eps)
  validation.check_choice("eps_mode", eps_mode, ("clamp", "add"))

  def init_fn(params):
    def row(p):
      return jnp.zeros(p.shape[:-1], p.dtype) if _factored(p) else None

    def col(p):
      return jnp.zeros(p.shape[:-2] + p.shape[-1:], p.dtype) if _factored(p) else None

    def full(p):
      return None if _factored(p) else jnp.zeros_like(p)

    return ScaleByFactoredRmsState(
        count=_zero_count(), v_row=jax.tree.map(row, params),
        v_col=jax.tree.map(col, params), v=jax.tree.map(full, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    t = jnp.asarray(count, tree.float_dtype())
    w = t ** jnp.asarray(decay_rate, tree.float_dtype())
    if b2 is not None:
      w = jnp.maximum(1.0 - b2, w)

    def leaf(g, r, c, v):
      if g.size == 0:   # nothing to average (and no NaN means in the state)
        return g, r, c, v
      cd = tree.compute_dtype(g)
      g32 = g.astype(cd)
      if eps is None:
        e = float(jnp.finfo(g.dtype).eps) if eps_mode == "clamp" else 1e-30
      else:
        e = eps
      sq = g32 * g32
      if eps_mode == "add":
        sq = sq + e
      wc = w.astype(cd)
      if _factored(g):
        nr = _lerp(r.astype(cd), jnp.mean(sq, axis=-1), wc)
        nc = _lerp(c.astype(cd), jnp.mean(sq, axis=-2), wc)
        rmean = jnp.mean(nr, axis=-1, keepdims=True)
        if eps_mode == "clamp":
          vhat = (nr[..., :, None] * nc[..., None, :]) / jnp.maximum(rmean, e)[..., None]
          u = jax.lax.rsqrt(jnp.maximum(vhat, e * e)) * g32
        else:
          u = (jax.lax.rsqrt(nr / rmean)[..., :, None]
               * jax.lax.rsqrt(nc)[..., None, :]) * g32
        return u.astype(g.dtype), nr.astype(r.dtype), nc.astype(c.dtype), None
      nv = _lerp(v.astype(cd), sq, wc)
      vv = jnp.maximum(nv, e * e) if eps_mode == "clamp" else nv
      return (jax.lax.rsqrt(vv) * g32).astype(g.dtype), None, None, nv.astype(v.dtype)

    treedef = jax.tree.structure(updates)
    rows = [leaf(*a) for a in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(state.v_row),
        treedef.flatten_up_to(state.v_col), treedef.flatten_up_to(state.v))]
    u, r, c, v = (treedef.unflatten([x[i] for x in rows]) for i in range(4))
    return u, ScaleByFactoredRmsState(count=count, v_row=r, v_col=c, v=v)

  return complex_view.on_real_view(optax.GradientTransformation(init_fn, update_fn))


class AdafactorStepState(NamedTuple):
  """State of Adafactor's last link: the step and the optional momentum."""

  count: chex.Array
  mu: Optional[optax.Updates]


def _adafactor_step(learning_rate, variant, eps_scale, clip_threshold,
                    relative_step, warmup_init, scale_parameter, b1,
                    weight_decay, weight_decouple, fixed_decay, mu_dtype):
  """RMS clip, relative step size, parameter scale, momentum, decay, sign."""
  use_mu = not tree.is_literal_zero(b1)
  decoupled = weight_decouple and not tree.is_literal_zero(weight_decay)

  def init_fn(params):
    mu = (jax.tree.map(lambda p: jnp.zeros_like(p, mu_dtype), params)
          if use_mu else None)
    return AdafactorStepState(count=_zero_count(), mu=mu)

  def update_fn(updates, state, params=None):
    validation.require_params(params, "adafactor")
    fd = tree.float_dtype()
    count = optax.safe_increment(state.count)
    t = jnp.asarray(count, fd)
    lr = (jnp.asarray(learning_rate(state.count), fd) if callable(learning_rate)
          else jnp.asarray(learning_rate, fd))
    if variant == "torch":
      rho = jnp.minimum(lr, 1.0 / jnp.sqrt(t))
    elif relative_step:
      cap = 1e-6 * t if warmup_init else 1e-2
      rho = jnp.minimum(cap, 1.0 / jnp.sqrt(t))
    else:
      rho = lr

    def scaled(u, p):
      cd = tree.compute_dtype(u)
      u32 = u.astype(cd)
      if variant == "torch" or scale_parameter:
        alpha = jnp.maximum(eps_scale, _rms(p)) * rho
      else:
        alpha = rho
      denom = jnp.maximum(1.0, _rms(u32) / clip_threshold)
      return u32 / denom * alpha.astype(cd), alpha

    treedef = jax.tree.structure(updates)
    us, ps = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
    steps, alphas = [], []
    for u, p in zip(us, ps):
      if u is None:
        steps.append(None)
        alphas.append(None)
      else:
        s, a = scaled(u, p)
        steps.append(s)
        alphas.append(a)
    mu = state.mu
    if use_mu:
      ms = treedef.flatten_up_to(state.mu)
      new_ms = [None if m is None else _lerp(m.astype(s.dtype), s, 1.0 - b1).astype(m.dtype)
                for m, s in zip(ms, steps)]
      steps = [None if m is None else m.astype(s.dtype) for m, s in zip(new_ms, steps)]
      mu = treedef.unflatten(new_ms)
    out = []
    for u, p, s, a in zip(us, ps, steps, alphas):
      if u is None:
        out.append(None)
        continue
      new = s
      if decoupled:
        if variant == "torch":
          k = lr
        else:
          k = jnp.ones([], fd) if fixed_decay else a
        new = new + (weight_decay * k).astype(s.dtype) * p.astype(s.dtype)
      out.append((-new).astype(u.dtype))
    return treedef.unflatten(out), AdafactorStepState(count=count, mu=mu)

  return complex_view.on_real_view(optax.GradientTransformation(init_fn, update_fn))


_PAPER_ONLY = ("weight_decouple", "fixed_decay", "relative_step",
               "scale_parameter", "warmup_init")


@registry.register(
    family="Team Adam",
    summary="Adafactor: factored second moments (row/column statistics), relative step sizes.",
    paper="Shazeer & Stern, ICML 2018, arXiv:1804.04235",
    reference="torch.optim.Adafactor (default); pytorch_optimizer.AdaFactor (variant='paper')",
    verified=('torch.optim.Adafactor 2.13 (default) and pytorch_optimizer.AdaFactor'
              " 4.1.0 (variant='paper'), float64, 300 steps"
              ' (tests/test_factorized.py)'),
    needs_params=True,
)
def adafactor(
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
    decay_rate: float = -0.8,
    eps: Optional[float] = None,
    eps_scale: float = 1e-3,
    clip_threshold: float = 1.0,
    weight_decay: float = 0.0,
    b1: Optional[float] = None,
    b2: Optional[float] = None,
    variant: str = "torch",
    weight_decouple: Optional[bool] = None,
    fixed_decay: Optional[bool] = None,
    relative_step: Optional[bool] = None,
    scale_parameter: Optional[bool] = None,
    warmup_init: Optional[bool] = None,
    *,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adafactor: ``torch.optim.Adafactor`` by default, the paper's form as a variant.

  ``variant="torch"`` (default) is exactly ``torch.optim.Adafactor`` (2.13)
  with its defaults (``lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1,
  weight_decay=0``):

  .. math::

    \hat V_t = \text{factored EMA of } G_t^2 \text{ with }
      1-\hat\beta_{2,t} = t^{c}\ (\text{see } \texttt{scale\_by\_factored\_rms}),
    \quad U_t = G_t/\sqrt{\max(\hat V_t, \epsilon_1^2)},

    \rho_t = \min(\gamma_t, 1/\sqrt t), \quad
    \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t,

    \theta_t = \theta_{t-1}(1 - \gamma_t\lambda)
      - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t,

  :math:`\epsilon_1` = ``eps`` (``None``: machine epsilon of the param dtype),
  :math:`\epsilon_2` = ``eps_scale``, :math:`d` = ``clip_threshold``. The
  row-mean divisor of the factored estimate is clamped at :math:`\epsilon_1`.

  ``variant="paper"`` is exactly ``pytorch_optimizer.AdaFactor`` (4.1), the
  paper's Algorithms 4/5 with momentum (its section 5 / tensor2tensor) and
  BigVision's second-moment cap, with that class's defaults: :math:`S = G^2 +
  \epsilon_1` (``eps`` default 1e-30) inside the row/column means, no clamp;
  :math:`1-\hat\beta_{2,t} = \max(1-\beta_2, t^c)` with ``b2 = 0.999``;
  relative step :math:`\rho_t = \min(10^{-2}, 1/\sqrt t)` (``relative_step``,
  default True; ``warmup_init``: :math:`\min(10^{-6}t, 1/\sqrt t)`; else
  :math:`\rho_t = \gamma_t`, default 1e-3); ``scale_parameter`` (default
  True) multiplies by :math:`\max(\epsilon_2, \mathrm{RMS}(\theta))`; the
  clipped, scaled update :math:`\hat U_t` goes through the momentum
  :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat U_t` (``b1`` = 0.9; 0
  disables it); ``weight_decouple`` (default True) decays
  :math:`\theta(1 - \lambda\alpha_t)` (``fixed_decay``: :math:`1-\lambda`),
  else :math:`\lambda\theta` is added to the gradient first.

  With ``relative_step=True`` (the paper variant's default) ``learning_rate``
  is not used, as in the reference. ``b1`` is accepted by both variants
  (torch: default 0, no momentum). The paper-variant-only flags
  (``weight_decouple``, ``fixed_decay``, ``relative_step``,
  ``scale_parameter``, ``warmup_init``) raise with ``variant="torch"``.

  Chain: ``[coupled decay] -> scale_by_factored_rms -> clip, step size,
  momentum, decay``. Memory: a (4096, 4096) leaf's second moment is 8,192
  numbers (plus the full-size momentum only when ``b1 > 0``).

  Differences from ``optax.adafactor``: optax factors only dimensions of size
  >= 128 (``min_dim_size_to_factor``), has its own step-dependent decay
  (``decay_rate = 0.8``, ``decay_offset``) with 1e-30 added to :math:`G^2`
  (no clamping, no cap), uses the learning rate as given
  (no :math:`\min(\gamma, 1/\sqrt t)` relative step), has no momentum by
  default, and its ``weight_decay_rate`` is added after the learning-rate
  scaling (not multiplied by the learning rate, unlike torch's
  :math:`\gamma\lambda`).

  Left out from ``pytorch_optimizer.AdaFactor``: ``ams_bound``, ``cautious``,
  ``maximize``, and the bf16 default of its ``momentum_dtype`` (here
  ``mu_dtype``, default the params' dtype; pass ``jnp.bfloat16`` for the
  reference's default).

  Complex parameters (which both references reject) are handled as their
  real view ``torch.view_as_real(p)``, shape ``s + (2,)``: the factored
  second moment, the RMS of the parameters and of the update are those of
  the real tensor, exactly the reference run on that tensor. The state of a
  complex leaf (statistics and momentum) is real and shaped after the real
  view, so a complex ``(n, m)`` matrix keeps row statistics of shape
  ``(n, m)``: factor such leaves yourself (e.g. keep real and imaginary
  parts as separate real leaves) when the memory matters.

  Args:
    learning_rate: :math:`\gamma` (float >= 0 or schedule); default 1e-2
      (torch) / 1e-3 (paper).
    decay_rate: :math:`c \le 0` (-0.8).
    eps: :math:`\epsilon_1 \ge 0` (see above).
    eps_scale: :math:`\epsilon_2 \ge 0` (1e-3).
    clip_threshold: :math:`d` (torch requires >= 1; paper > 0), default 1.
    weight_decay: :math:`\lambda \ge 0`.
    b1: momentum of the update in [0, 1) (torch 0, paper 0.9).
    b2: second-moment decay cap in [0, 1) (torch: ``None``, no cap; paper
      0.999).
    variant: ``"torch"`` or ``"paper"``.
    weight_decouple, fixed_decay, relative_step, scale_parameter, warmup_init:
      paper-variant flags (defaults True, False, True, True, False).
    mu_dtype: dtype of the momentum.

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost <https://arxiv.org/abs/1804.04235>`_, ICML 2018.
  """
  validation.check_choice("variant", variant, ("torch", "paper"))
  paper = variant == "paper"
  if not paper:
    for name in _PAPER_ONLY:
      if locals()[name] is not None:
        raise ValueError(f"`{name}` is an option of variant='paper' only"
                         " (torch.optim.Adafactor has no such flag).")
  if learning_rate is None:
    learning_rate = 1e-3 if paper else 1e-2
  if b1 is None:
    b1 = 0.9 if paper else 0.0
  if b2 is None and paper:
    b2 = 0.999
  if eps is None and paper:
    eps = 1e-30
  weight_decouple = True if weight_decouple is None else weight_decouple
  fixed_decay = False if fixed_decay is None else fixed_decay
  relative_step = True if relative_step is None else relative_step
  scale_parameter = True if scale_parameter is None else scale_parameter
  warmup_init = False if warmup_init is None else warmup_init
  for name, v in (("weight_decouple", weight_decouple), ("fixed_decay", fixed_decay),
                  ("relative_step", relative_step),
                  ("scale_parameter", scale_parameter), ("warmup_init", warmup_init)):
    validation.check_bool(name, v)
  validation.check_lr(learning_rate)
  validation.check_nonneg("eps_scale", eps_scale)
  validation.check_positive("clip_threshold", clip_threshold)
  arr = validation.check_number("clip_threshold", clip_threshold)
  if not paper and arr is not None and np.any(arr < 1):
    raise ValueError(f"`clip_threshold` must be >= 1 (torch's d), got {clip_threshold!r}.")
  validation.check_nonneg("weight_decay", weight_decay)
  validation.check_beta("b1", b1)
  links = []
  if paper and not weight_decouple and not tree.is_literal_zero(weight_decay):
    links.append(transform.add_l2(weight_decay))
  links.append(scale_by_factored_rms(decay_rate, b2, eps,
                                     "add" if paper else "clamp"))
  links.append(_adafactor_step(
      learning_rate, variant, eps_scale, clip_threshold, relative_step,
      warmup_init, scale_parameter, b1, weight_decay,
      weight_decouple if paper else True, fixed_decay, mu_dtype))
  return optax.chain(*links)


# ---------------------------------------------------------------------------
# SM3
# ---------------------------------------------------------------------------


class ScaleBySm3State(NamedTuple):
  """State of :func:`scale_by_sm3`: per leaf, a tuple of one vector per dim.

  A leaf of shape ``(n_0, ..., n_{k-1})`` has accumulators of shapes
  ``(n_0,), ..., (n_{k-1},)``; a 0-d leaf has one 0-d accumulator.
  """

  accumulators: Any


def _expand(acc, i, rank):
  shape = [1] * rank
  shape[i] = acc.shape[0]
  return acc.reshape(shape)


@registry.register(
    family="primitive",
    summary="SM3 cover-set second moments: one accumulator per tensor dimension.",
    paper="Anil, Gupta, Koren & Singer, NeurIPS 2019, arXiv:1901.11150",
    reference="pytorch_optimizer.SM3 (without momentum)",
    verified=('pytorch_optimizer.SM3 4.1.0 through optzoo.sm3, float64, 300 steps'
              ' (tests/test_factorized.py)'),
)
def scale_by_sm3(b2: float = 0.0, eps: float = 1e-30) -> optax.GradientTransformation:
  r"""SM3-II preconditioning, exactly ``pytorch_optimizer.SM3``.

  For a leaf of rank :math:`k` with accumulators :math:`a^{(i)}` (one entry
  per index of dimension :math:`i`):

  .. math::

    \nu = \beta_2\,\min_i a^{(i)}_{[j_i]} + (1-\beta_2)\, g^2
      \ (\beta_2 = 0: \ \nu = \min_i a^{(i)} + g^2),

    a^{(i)} \leftarrow \max\big(a^{(i)}, \max_{\neg i} \nu\big)
      \ (\beta_2 = 0: \ a^{(i)} \leftarrow \max_{\neg i}\nu), \qquad
    u = g / \sqrt{\nu + \epsilon}.

  ``b2`` is the reference's ``beta`` in [0, 1) (0: SM3's sum form; > 0: an
  exponential moving average). The reference also accepts 1, which freezes
  the accumulators at 0 (steps of :math:`g/\sqrt{\epsilon}`); it is
  rejected here.

  A complex leaf of shape ``s`` (the reference rejects complex parameters)
  is handled as its real view ``torch.view_as_real(p)`` of shape ``s + (2,)``:
  its accumulators are real, one per axis of the real view (the last of size
  2).

  Args:
    b2: :math:`\beta_2` in [0, 1).
    eps: :math:`\epsilon \ge 0` inside the square root (1e-30).

  References:
    Anil et al., `Memory-Efficient Adaptive Optimization
    <https://arxiv.org/abs/1901.11150>`_, NeurIPS 2019.
  """
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)
  literal_zero = tree.is_literal_zero(b2)

  def init_fn(params):
    def accs(p):
      if np.ndim(p) == 0:
        return (jnp.zeros([], p.dtype),)
      return tuple(jnp.zeros((n,), p.dtype) for n in p.shape)

    return ScaleBySm3State(accumulators=jax.tree.map(accs, params))

  def update_fn(updates, state, params=None):
    del params

    def leaf(g, accs):
      rank = g.ndim
      cd = tree.compute_dtype(g)
      g32 = g.astype(cd)
      if rank == 0:
        nu_hat = accs[0].astype(cd)
      else:
        nu_hat = _expand(accs[0].astype(cd), 0, rank)
        for i in range(1, rank):
          nu_hat = jnp.minimum(nu_hat, _expand(accs[i].astype(cd), i, rank))
      if literal_zero:
        nu = nu_hat + g32 * g32
      else:
        # The reference skips the multiplication when beta == 0.
        nu = (jnp.where(jnp.asarray(b2) > 0, b2 * nu_hat, nu_hat)
              + (1.0 - b2) * g32 * g32)
      if rank == 0:
        new_accs = (nu.astype(accs[0].dtype),)
      else:
        new_accs = []
        for i in range(rank):
          others = tuple(d for d in range(rank) if d != i)
          # nu >= 0, so an initial 0 changes nothing but allows empty leaves.
          m = jnp.max(nu, axis=others, initial=0.0) if others else nu
          if not literal_zero:
            m = jnp.where(jnp.asarray(b2) > 0, jnp.maximum(accs[i].astype(cd), m), m)
          new_accs.append(m.astype(accs[i].dtype))
        new_accs = tuple(new_accs)
      u = jax.lax.rsqrt(nu + eps) * g32
      return u.astype(g.dtype), new_accs

    treedef = jax.tree.structure(updates)
    gs = treedef.flatten_up_to(updates)
    accs = treedef.flatten_up_to(state.accumulators)
    outs, new = [], []
    for g, a in zip(gs, accs):
      if g is None:
        outs.append(None)
        new.append(a)
      else:
        u, na = leaf(g, a)
        outs.append(u)
        new.append(na)
    return treedef.unflatten(outs), ScaleBySm3State(treedef.unflatten(new))

  return complex_view.on_real_view(optax.GradientTransformation(init_fn, update_fn))


class Sm3MomentumState(NamedTuple):
  """State of SM3's momentum (a zero-initialised EMA of the update)."""

  mu: optax.Updates


def _ema(momentum: Any) -> optax.GradientTransformation:
  """``m = lerp(m, u, 1 - momentum)`` from zero, no debiasing (the reference)."""

  def init_fn(params):
    return Sm3MomentumState(mu=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda u, m: _lerp(m, u.astype(m.dtype), 1.0 - momentum).astype(m.dtype),
                      updates, state.mu)
    return (jax.tree.map(lambda m, u: m.astype(u.dtype), mu, updates),
            Sm3MomentumState(mu=mu))

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team Adam",
    summary="SM3: Adagrad-type steps with one accumulator per tensor dimension.",
    paper="Anil, Gupta, Koren & Singer, NeurIPS 2019, arXiv:1901.11150",
    reference="pytorch_optimizer.SM3 4.1",
    verified=('pytorch_optimizer.SM3 4.1.0, float64, 300 steps, 4 settings'
              ' (tests/test_factorized.py)'),
)
def sm3(
    learning_rate: optax.ScalarOrSchedule = 1e-1,
    momentum: Optional[float] = None,
    b2: float = 0.0,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
  r"""SM3, exactly ``pytorch_optimizer.SM3`` (dense gradients).

  .. math::

    u_t = \text{scale\_by\_sm3}(g_t), \qquad
    m_t = \mu\, m_{t-1} + (1-\mu)\, u_t \ (m_0 = 0;\ \mu = 0: m_t = u_t), \qquad
    \theta_t = \theta_{t-1} - \eta_t m_t.

  Chain: ``scale_by_sm3(b2, eps) -> [momentum EMA] -> scale_by_learning_rate``.
  Memory: one vector per dimension (a (4096, 4096) leaf: 8,192 numbers),
  plus a full-size buffer when ``momentum`` is a number (``None``, the
  default, is the reference's ``momentum=0``: no buffer; a number, 0.0 or an
  injected array included, keeps one, so ``sm3(...)`` and
  ``inject_hyperparams(sm3)(...)`` have the same state structure).

  Differences from ``optax.sm3``: optax defaults to momentum ``b1 = 0.9``
  and ``b2 = 1.0``, ``eps = 1e-8`` outside the square root, and its momentum
  is not the same EMA.

  Complex parameters (the reference rejects them) are handled as their real
  view, see :func:`scale_by_sm3`.

  Left out: sparse gradients and ``maximize``.

  Args:
    learning_rate: :math:`\eta` (float >= 0 or schedule; default 0.1).
    momentum: :math:`\mu` in [0, 1), or ``None`` (default) for no momentum.
    b2: the reference's ``beta`` in [0, 1) (default 0: accumulate sums).
    eps: >= 0 inside the square root (default 1e-30).

  References:
    Anil et al., `Memory-Efficient Adaptive Optimization
    <https://arxiv.org/abs/1901.11150>`_, NeurIPS 2019.
  """
  validation.check_lr(learning_rate)
  if momentum is not None:
    validation.check_beta("momentum", momentum)
  links = [scale_by_sm3(b2, eps)]
  if momentum is not None:
    links.append(_ema(momentum))
  links.append(transform.scale_by_learning_rate(learning_rate))
  return optax.chain(*links)
