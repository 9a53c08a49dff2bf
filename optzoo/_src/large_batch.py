"""Large-batch training: layer-wise trust ratios (LARS, LAMB) and a mask helper.

Both methods rescale each parameter tensor's step by a *trust ratio*
:math:`\\|\\theta\\| / \\|\\text{update}\\|`, so that every layer moves by a
comparable relative amount however large the batch (and the learning rate).

* :func:`lars` reproduces ``pytorch_optimizer.LARS`` (4.1) exactly and is
  ``chain(scale_by_lars_trust_ratio, <LARS momentum>, scale_by_learning_rate)``.
* :func:`lamb` reproduces ``pytorch_optimizer.Lamb`` (4.1) exactly.
* :func:`exclude_bias_and_norm` builds the usual "no adaptation / no weight
  decay on biases and normalisation scales" mask, usable as the
  ``trust_ratio_mask`` / ``weight_decay_mask`` arguments or with
  ``optax.masked``.

Masks (``trust_ratio_mask``, ``weight_decay_mask``) are a pytree of Python
bools with the params' structure, or a callable ``params -> such a pytree``;
``True`` marks the leaves that are adapted (decayed). Under
``optax.inject_hyperparams`` a callable would be taken for a schedule: pass
the pytree (``exclude_bias_and_norm(params)``) or name the mask in
``static_args``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Optional, Union

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
    "exclude_bias_and_norm",
    "lamb",
    "lars",
    "scale_by_lamb_trust_ratio",
    "scale_by_lars_trust_ratio",
]

MaskOrFn = Optional[Union[Any, Callable[[Any], Any]]]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _norm(x: chex.Array) -> chex.Array:
  """The Frobenius norm of a leaf, computed in at least float32.

  A complex leaf has the norm of its real view (``torch.linalg.norm``).
  """
  x = x.astype(tree.compute_dtype(x))
  if jnp.iscomplexobj(x):
    return jnp.sqrt(complex_view.real_dot(x, x))
  return jnp.sqrt(jnp.sum(x * x))


def _leaf_flags(mask: MaskOrFn, params: Any, updates: Any,
                default: Callable[[Any], bool]) -> list:
  """One Python bool per leaf of ``updates``: the mask, or ``default(leaf)``."""
  treedef = jax.tree.structure(updates)
  leaves = treedef.flatten_up_to(updates)
  if mask is None:
    return [bool(default(u)) for u in leaves]
  m = mask(params) if callable(mask) else mask
  flags = treedef.flatten_up_to(m)
  for f in flags:
    if not isinstance(f, (bool, np.bool_)):
      raise TypeError(
          "a trust-ratio / weight-decay mask must be a pytree of Python bools"
          f" with the params' structure, got a leaf {f!r}.")
  return [bool(f) for f in flags]


def _check_mask(name: str, mask: Any) -> None:
  if mask is None or callable(mask):
    return
  for f in jax.tree.leaves(mask):
    if not isinstance(f, (bool, np.bool_)):
      raise TypeError(f"`{name}` must be a pytree of bools or a callable of the"
                      f" params, got a leaf {f!r}.")


_NORM_KEY = re.compile(r"norm|^(ln|bn|gn)(_|\d|$)", re.IGNORECASE)
_EXCLUDED_LEAF_NAMES = frozenset({"bias", "b", "beta", "gamma", "scale", "offset"})


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


@registry.register(
    family="tool",
    summary="Mask: True for weight matrices, False for biases, norm scales, vectors, scalars.",
    paper="You, Gitman & Ginsburg, arXiv:1708.03888, 2017 (no adaptation of biases, BN)",
    reference="definition (ndim and key-name rules; on leaves without such names it is"
              " pytorch_optimizer.LARS's ndim > 1 rule)",
    verified=("definition; on the fixture tree it equals pytorch_optimizer.LARS's"
              ' ndim > 1 rule (tests/test_large_batch.py)'),
    kind="utility",
)
def exclude_bias_and_norm(params: Any) -> Any:
  """A bool pytree: ``True`` for weight matrices/kernels, ``False`` otherwise.

  A leaf is *excluded* (``False``) when

  * it has at most one dimension (biases, norm scales, scalars), or
  * its own key is one of ``bias``, ``b``, ``beta``, ``gamma``, ``scale``,
    ``offset`` (catches stacked biases of scanned layers, shape
    ``(num_layers, d)``), or
  * a key on its path names a normalisation layer: it contains ``norm``
    (``LayerNorm_0``, ``batch_norm``, ``RMSNorm``) or is ``ln*``/``bn*``/
    ``gn*`` (``ln_1``, ``bn0``).

  Use it as ``trust_ratio_mask`` / ``weight_decay_mask`` of :func:`lars` and
  :func:`lamb`, or with ``optax.masked`` / ``optax.add_decayed_weights(mask=)``
  (a callable of the params is accepted there too:
  ``mask=optzoo.exclude_bias_and_norm``). ``None`` leaves stay ``None``.
  """

  def flag(path, x):
    names = [_key_name(k) for k in path]
    if np.ndim(x) <= 1:
      return False
    if names and names[-1].lower() in _EXCLUDED_LEAF_NAMES:
      return False
    if any(_NORM_KEY.search(n) for n in names[:-1]):
      return False
    return True

  return jax.tree_util.tree_map_with_path(flag, params)


def _lr_at(learning_rate: Any, count: chex.Array) -> chex.Array:
  if callable(learning_rate):
    return jnp.asarray(learning_rate(count), tree.float_dtype())
  return jnp.asarray(learning_rate, tree.float_dtype())


# ---------------------------------------------------------------------------
# LARS
# ---------------------------------------------------------------------------


def _ndim_gt_1(x: Any) -> bool:
  return np.ndim(x) > 1


@registry.register(
    family="primitive",
    summary="LARS layer-wise trust ratio tc*||w||/(||g|| + wd*||w|| + eps), with its L2 term.",
    paper="You, Gitman & Ginsburg, arXiv:1708.03888, 2017",
    reference="pytorch_optimizer.LARS (trust-ratio part)",
    verified=('pytorch_optimizer.LARS 4.1.0 through optzoo.lars, float64, 300 steps'
              ' (tests/test_large_batch.py)'),
    needs_params=True,
)
def scale_by_lars_trust_ratio(
    trust_coefficient: float = 1e-3,
    weight_decay: float = 0.0,
    eps: float = 0.0,
    *,
    trust_ratio_mask: MaskOrFn = None,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""LARS' local learning rate, applied to the (L2-decayed) gradient.

  Per leaf (tensor) :math:`w` with gradient :math:`g`:

  .. math::

    \rho = \begin{cases}
      \dfrac{\eta_{tc}\,\|w\|}{\|g\| + \lambda\|w\| + \epsilon}
        & \|w\| > 0 \text{ and } \|g\| + \lambda\|w\| + \epsilon > 0 \\
      1 & \text{otherwise,}\end{cases}
    \qquad u = \rho\,(g + \lambda w).

  The denominator uses :math:`\|g\| + \lambda\|w\|` (the paper's Eq. 6 and
  ``pytorch_optimizer.LARS``), not :math:`\|g + \lambda w\|` as
  ``optax.scale_by_trust_ratio`` after ``add_decayed_weights`` does.
  A complex leaf's norms are those of its real view (``torch.linalg.norm``
  of a complex tensor); the default masks look at the complex shape.

  Args:
    trust_coefficient: :math:`\eta_{tc} \ge 0` (paper's :math:`\eta`; 1e-3).
    weight_decay: :math:`\lambda \ge 0`, added to the gradient of the decayed
      leaves *and* to the denominator of the adapted ones.
    eps: :math:`\epsilon \ge 0` in the denominator (reference: none, 0).
    trust_ratio_mask: leaves to adapt (pytree of bools or callable of the
      params). Default: leaves with more than one dimension, as the reference
      (scalars and vectors get no adaptation).
    weight_decay_mask: leaves to decay; same default.
  """
  validation.check_nonneg("trust_coefficient", trust_coefficient)
  validation.check_nonneg("weight_decay", weight_decay)
  validation.check_nonneg("eps", eps)
  _check_mask("trust_ratio_mask", trust_ratio_mask)
  _check_mask("weight_decay_mask", weight_decay_mask)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    validation.require_params(params, "scale_by_lars_trust_ratio")
    treedef = jax.tree.structure(updates)
    gs = treedef.flatten_up_to(updates)
    ps = treedef.flatten_up_to(params)
    adapt = _leaf_flags(trust_ratio_mask, params, updates, _ndim_gt_1)
    decay = _leaf_flags(weight_decay_mask, params, updates, _ndim_gt_1)
    if tree.is_literal_zero(weight_decay):   # saves a pass over the params
      decay = [False] * len(decay)
    out = []
    for g, p, a, d in zip(gs, ps, adapt, decay):
      if g is None:
        out.append(None)
        continue
      cd = tree.compute_dtype(g)
      g32 = g.astype(cd)
      p32 = p.astype(cd)
      new = g32 + weight_decay * p32 if d else g32
      if a:
        pn, gn = _norm(p32), _norm(g32)
        denom = gn + weight_decay * pn + eps if d else gn + eps
        ratio = jnp.where(pn > 0, jnp.where(
            denom > 0, trust_coefficient * pn / jnp.where(denom > 0, denom, 1.0),
            1.0), 1.0)
        new = new * ratio
      out.append(new.astype(g.dtype))
    return treedef.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)


class LarsMomentumState(NamedTuple):
  """State of LARS' momentum buffer."""

  trace: optax.Updates


def _lars_momentum(momentum: Any, dampening: Any, nesterov: bool
                   ) -> optax.GradientTransformation:
  r"""``b = mu b + (1 - d) u`` from a zero buffer, every step (first included).

  Unlike ``torch.optim.SGD`` (and :func:`optzoo.trace`), the first buffer is
  ``(1 - d) u``, not ``u``: this is ``pytorch_optimizer.LARS``. Nesterov:
  ``u + mu b``.
  """

  def init_fn(params):
    return LarsMomentumState(trace=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params

    def leaf(u, b):
      new_b = (momentum * b + (1.0 - dampening) * u).astype(b.dtype)
      out = u + momentum * new_b if nesterov else new_b
      return out.astype(u.dtype), new_b

    new_u, new_b = tree.tree_unzip(jax.tree.map(leaf, updates, state.trace),
                                   updates, 2)
    return new_u, LarsMomentumState(trace=new_b)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team SGD",
    summary="LARS: SGD with momentum and a layer-wise trust ratio (large-batch training).",
    paper="You, Gitman & Ginsburg, arXiv:1708.03888, 2017",
    reference="pytorch_optimizer.LARS 4.1",
    verified=('pytorch_optimizer.LARS 4.1.0, float64, 300 steps, 6 settings'
              ' (tests/test_large_batch.py)'),
    needs_params=True,
)
def lars(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    *,
    trust_ratio_mask: MaskOrFn = None,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""LARS (layer-wise adaptive rate scaling), exactly ``pytorch_optimizer.LARS``.

  Per leaf :math:`w` (adapted and decayed when it has more than one dimension,
  by default):

  .. math::

    \rho_t = \frac{\eta_{tc}\|w_{t-1}\|}{\|g_t\| + \lambda\|w_{t-1}\| + \epsilon},
    \qquad u_t = \rho_t\,(g_t + \lambda w_{t-1}),

    b_t = \mu\, b_{t-1} + (1 - d)\, u_t \;(b_0 = 0), \qquad
    w_t = w_{t-1} - \gamma_t \cdot (u_t + \mu b_t \text{ if Nesterov else } b_t),

  with :math:`\rho = 1` where :math:`\|w\| = 0` or the denominator is 0.
  Scalars and vectors (biases, norm scales) get plain momentum SGD without
  decay or adaptation, as the reference; pass ``trust_ratio_mask`` /
  ``weight_decay_mask`` (e.g. :func:`exclude_bias_and_norm`, or
  ``lambda p: jax.tree.map(lambda _: True, p)`` for every leaf) to change
  that. Unlike ``torch.optim.SGD`` the first momentum buffer is dampened,
  :math:`b_1 = (1-d)u_1`. The paper (Algorithm 1) folds :math:`\gamma_t` into
  the buffer, :math:`v_t = \mu v_{t-1} + \gamma_t \rho_t (g_t + \beta w)`;
  with a constant learning rate both agree.

  Complex parameters are handled as the reference handles them: the norms
  are those of the real view (``torch.linalg.norm`` of the complex tensor),
  everything else is linear, and the ``ndim > 1`` rule looks at the complex
  shape (a complex vector is not adapted).

  Chain: ``scale_by_lars_trust_ratio -> momentum -> scale_by_learning_rate``.

  Differences from ``optax.lars``: optax (i) decays and adapts *every* leaf
  by default (its masks default to all ``True``), (ii) uses
  :math:`\|g + \lambda w\|` as the denominator instead of
  :math:`\|g\| + \lambda\|w\|`, (iii) multiplies by the learning rate
  *before* the momentum (the paper's form; different under a schedule).

  Args:
    learning_rate: :math:`\gamma`, a float >= 0 or a schedule (default 1e-3).
    momentum: :math:`\mu` in [0, 1) (default 0.9); 0 means no buffer.
    weight_decay: :math:`\lambda \ge 0` (paper's :math:`\beta`).
    trust_coefficient: :math:`\eta_{tc} \ge 0` (default 1e-3).
    eps: :math:`\epsilon \ge 0` in the trust-ratio denominator (the reference
      has none: default 0).
    nesterov: Nesterov momentum (needs ``momentum > 0``).
    dampening: :math:`d` in [0, 1].
    trust_ratio_mask: leaves to adapt (pytree of bools or callable).
    weight_decay_mask: leaves to decay (pytree of bools or callable).

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.
  """
  validation.check_lr(learning_rate)
  validation.check_beta("momentum", momentum)
  validation.check_unit_interval("dampening", dampening)
  validation.check_bool("nesterov", nesterov)
  if nesterov and tree.is_literal_zero(momentum):
    raise ValueError("`nesterov=True` requires `momentum > 0`.")
  links = [scale_by_lars_trust_ratio(
      trust_coefficient, weight_decay, eps, trust_ratio_mask=trust_ratio_mask,
      weight_decay_mask=weight_decay_mask)]
  if not tree.is_literal_zero(momentum):
    links.append(_lars_momentum(momentum, dampening, nesterov))
  links.append(transform.scale_by_learning_rate(learning_rate))
  return optax.chain(*links)


# ---------------------------------------------------------------------------
# LAMB
# ---------------------------------------------------------------------------


def _lamb_ratio(weight_norm, update_norm, eps, max_weight_norm):
  """``min(||w||, c) / (||u|| + eps)``, 1 where either norm is 0."""
  wn = weight_norm if max_weight_norm is None else jnp.minimum(
      weight_norm, max_weight_norm)
  ok = (wn != 0) & (update_norm != 0)
  return jnp.where(ok, wn / jnp.where(ok, update_norm + eps, 1.0), 1.0)


def _all_true(x: Any) -> bool:
  del x
  return True


@registry.register(
    family="primitive",
    summary="LAMB layer-wise trust ratio min(||w||, c)/(||u|| + eps).",
    paper="You et al., ICLR 2020, arXiv:1904.00962",
    reference="pytorch_optimizer.Lamb (trust-ratio part)",
    verified=('pytorch_optimizer.Lamb 4.1.0 through optzoo.lamb, float64, 300 steps'
              ' (tests/test_large_batch.py)'),
    needs_params=True,
)
def scale_by_lamb_trust_ratio(
    eps: float = 1e-6,
    max_weight_norm: Optional[float] = 10.0,
    *,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Scale each leaf's update by LAMB's trust ratio.

  .. math::

    u \leftarrow u\cdot\frac{\min(\|w\|, c)}{\|u\| + \epsilon}
    \quad(1 \text{ where } \|w\| = 0 \text{ or } \|u\| = 0).

  The clip :math:`c` (``max_weight_norm``, 10 in ``pytorch_optimizer.Lamb``;
  ``None`` disables it) is the paper's :math:`\phi(z) = \min(z, \gamma_u)`.
  ``optax.scale_by_trust_ratio`` has no clip and no ``eps`` in the
  denominator. A complex leaf's norms are those of its real view.

  Args:
    eps: >= 0, added to :math:`\|u\|`.
    max_weight_norm: :math:`c > 0` or ``None``.
    mask: leaves to adapt (pytree of bools or callable); default all.
  """
  validation.check_nonneg("eps", eps)
  if max_weight_norm is not None:
    validation.check_positive("max_weight_norm", max_weight_norm)
  _check_mask("mask", mask)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    validation.require_params(params, "scale_by_lamb_trust_ratio")
    treedef = jax.tree.structure(updates)
    us, ps = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
    flags = _leaf_flags(mask, params, updates, _all_true)
    out = []
    for u, p, a in zip(us, ps, flags):
      if u is None or not a:
        out.append(u)
        continue
      r = _lamb_ratio(_norm(p), _norm(u), eps, max_weight_norm)
      out.append((u.astype(tree.compute_dtype(u)) * r).astype(u.dtype))
    return treedef.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)


def _lamb_pre_norm(max_grad_norm: Any, eps: Any) -> optax.GradientTransformation:
  r"""``g * min(1, c / (||g||_global + eps))`` (pytorch_optimizer's pre_norm)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves = [u for u in jax.tree.leaves(updates)]
    if not leaves:
      return updates, state
    # The real dtype (complex leaves count as their real view).
    cd = jnp.result_type(*[jnp.finfo(tree.compute_dtype(u)).dtype for u in leaves])
    sq = sum(complex_view.real_dot(u, u, cd) if jnp.iscomplexobj(u)
             else jnp.sum(jnp.square(u.astype(cd))) for u in leaves)
    factor = jnp.minimum(max_grad_norm / (jnp.sqrt(sq) + eps), 1.0)
    factor = jnp.where(jnp.asarray(max_grad_norm) == 0, 1.0, factor)
    return jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


class LambMomentsState(NamedTuple):
  """State of LAMB's moment link."""

  mu: optax.Updates
  nu: optax.Updates


def _lamb_moments(b1: Any, b2: Any, eps: Any, grad_averaging: bool,
                  mu_dtype: Any) -> optax.GradientTransformation:
  r"""``m = b1 m + (1-b1 or 1) g``, ``v = b2 v + (1-b2) g^2``, ``u = m/(sqrt(v)+eps)``."""

  def init_fn(params):
    return LambMomentsState(mu=jax.tree.map(lambda p: jnp.zeros_like(p, mu_dtype), params),
                            nu=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    b3 = 1.0 - b1 if grad_averaging else 1.0

    def real_leaf(g, m, v):
      m = (b1 * m + b3 * g).astype(m.dtype)
      v = (b2 * v + (1.0 - b2) * g * g).astype(v.dtype)
      return (m / (jnp.sqrt(v) + eps)).astype(g.dtype), m, v

    def leaf(g, m, v):
      # Complex leaves: per real / imaginary part (the reference's view_as_real).
      return complex_view.per_part(real_leaf, g, m, v)

    u, mu, nu = tree.tree_unzip(jax.tree.map(leaf, updates, state.mu, state.nu),
                                updates, 3)
    return u, LambMomentsState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


class LambStepState(NamedTuple):
  """State of LAMB's last link (the step counter)."""

  count: chex.Array


def _lamb_step(learning_rate, b1, weight_decay, weight_decouple, fixed_decay,
               adam, adam_debias, eps, max_weight_norm, trust_ratio_mask,
               weight_decay_mask) -> optax.GradientTransformation:
  """Trust ratio (on the decoupled-decayed weights), -step size, decoupled decay."""
  decoupled = weight_decouple and not tree.is_literal_zero(weight_decay)

  def init_fn(params):
    del params
    return LambStepState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    validation.require_params(params, "lamb")
    lr = _lr_at(learning_rate, state.count)
    count = optax.safe_increment(state.count)
    fd = tree.float_dtype()
    t = jnp.asarray(count, fd)
    step_size = lr if adam_debias else lr / (1.0 - jnp.asarray(b1, fd) ** t)
    treedef = jax.tree.structure(updates)
    us, ps = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
    adapt = _leaf_flags(trust_ratio_mask, params, updates, _all_true)
    decay = _leaf_flags(weight_decay_mask, params, updates, _all_true)
    decay_factor = weight_decay * (1.0 if fixed_decay else lr)
    out = []
    for u, p, a, d in zip(us, ps, adapt, decay):
      if u is None:
        out.append(None)
        continue
      cd = tree.compute_dtype(u)
      u32, p32 = u.astype(cd), p.astype(cd)
      dec = decoupled and d
      # The reference decays the weights first and takes the norm after.
      wn = _norm(p32) * jnp.abs(1.0 - decay_factor) if dec else _norm(p32)
      scale = step_size
      if a and not adam:
        scale = scale * _lamb_ratio(wn, _norm(u32), eps, max_weight_norm)
      new = u32 * scale
      if dec:
        new = new + decay_factor * p32
      out.append((-new).astype(u.dtype))
    return treedef.unflatten(out), LambStepState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


@registry.register(
    family="Team Adam",
    summary="LAMB: Adam-type moments with a layer-wise trust ratio (large-batch training).",
    paper="You et al., ICLR 2020, arXiv:1904.00962",
    reference="pytorch_optimizer.Lamb 4.1",
    verified=('pytorch_optimizer.Lamb 4.1.0, float64, 300 steps, 7 settings, 3 of'
              ' them open loop (tests/test_large_batch.py)'),
    needs_params=True,
)
def lamb(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    weight_decouple: bool = True,
    fixed_decay: bool = False,
    grad_averaging: bool = True,
    max_grad_norm: float = 1.0,
    pre_norm: bool = False,
    adam: bool = False,
    adam_debias: bool = False,
    max_weight_norm: Optional[float] = 10.0,
    *,
    trust_ratio_mask: MaskOrFn = None,
    weight_decay_mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""LAMB, exactly ``pytorch_optimizer.Lamb`` (4.1; its defaults).

  .. math::

    \tilde g_t = g_t \cdot \min\!\Big(1, \frac{c_g}{\|g_t\|_{global} + \epsilon}\Big)
      \;(\text{pre\_norm}),

    m_t = \beta_1 m_{t-1} + \beta_3 \tilde g_t, \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde g_t^2, \quad
    u_t = \frac{m_t}{\sqrt{v_t} + \epsilon}\;(+\lambda w_{t-1}
      \text{ if not weight\_decouple}),

    \bar w = w_{t-1}(1 - \lambda\eta_t)\;(\text{weight\_decouple}), \quad
    r_t = \frac{\min(\|\bar w\|, 10)}{\|u_t\| + \epsilon}, \quad
    w_t = \bar w - \frac{\eta_t}{1-\beta_1^t}\, r_t\, u_t,

  with :math:`\beta_3 = 1-\beta_1` (``grad_averaging``) or 1, and
  :math:`r_t = 1` where a norm is 0 (or ``adam=True``). Note the reference's
  quirks, reproduced: the second moment is never bias-corrected while the
  step is divided by :math:`1-\beta_1^t` unless ``adam_debias=True``; the
  trust ratio's weight norm is taken *after* the decoupled decay; the
  coupled decay (``weight_decouple=False``) is added to the Adam update, not
  the gradient (the paper's :math:`r + \lambda x`).

  Complex parameters are handled as the reference handles them
  (``torch.view_as_real``): the second moment and its square root are taken
  per real / imaginary part, the norms (trust ratio, ``pre_norm``) are those
  of the real view.

  Chain: ``[pre_norm] -> moments -> [coupled decay] -> trust ratio, step
  size and decoupled decay``. The trust ratio alone is
  :func:`scale_by_lamb_trust_ratio`.

  Differences from ``optax.lamb``: optax bias-corrects both moments, puts
  ``eps`` as in Adam (default 1e-6 too), has no weight-norm clip, applies
  the decay to the update (coupled into the ratio), and has no pre-norm.

  Args:
    learning_rate: :math:`\eta`, float >= 0 or schedule (default 1e-3).
    b1, b2: moment decays in [0, 1) (0.9, 0.999).
    eps: >= 0, in the Adam denominator, the ratio and pre-norm (1e-6).
    weight_decay: :math:`\lambda \ge 0`.
    weight_decouple: decoupled (AdamW-type) decay, default True.
    fixed_decay: decoupled decay not scaled by the learning rate.
    grad_averaging: :math:`\beta_3 = 1 - \beta_1` (else 1).
    max_grad_norm: :math:`c_g \ge 0` of ``pre_norm`` (0 disables it).
    pre_norm: scale gradients by the global-norm factor above first.
    adam: trust ratio 1 everywhere (Adam-type update with LAMB's moments).
    adam_debias: do not divide the step by :math:`1-\beta_1^t`.
    max_weight_norm: clip of the weight norm in the ratio (reference 10;
      ``None``: no clip).
    trust_ratio_mask: leaves to adapt (pytree of bools or callable); default
      all, as the reference; :func:`exclude_bias_and_norm` is the usual choice.
    weight_decay_mask: leaves to decay; default all.
    mu_dtype: dtype of the first moment.

  Left out: the reference's ``rectify`` / ``degenerated_to_sgd`` /
  ``n_sma_threshold`` (RAdam rectification), ``adanorm`` / ``adanorm_r`` and
  ``maximize`` (negate the gradients instead). Its ``pre_norm`` global norm is
  computed in float32 whatever the dtype; here it is computed in the
  gradients' (at least float32) dtype.

  References:
    You et al., `Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes <https://arxiv.org/abs/1904.00962>`_, ICLR 2020.
  """
  validation.check_lr(learning_rate)
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)
  validation.check_nonneg("weight_decay", weight_decay)
  validation.check_nonneg("max_grad_norm", max_grad_norm)
  if max_weight_norm is not None:
    validation.check_positive("max_weight_norm", max_weight_norm)
  for name, v in (("weight_decouple", weight_decouple), ("fixed_decay", fixed_decay),
                  ("grad_averaging", grad_averaging), ("pre_norm", pre_norm),
                  ("adam", adam), ("adam_debias", adam_debias)):
    validation.check_bool(name, v)
  _check_mask("trust_ratio_mask", trust_ratio_mask)
  _check_mask("weight_decay_mask", weight_decay_mask)
  links = []
  if pre_norm:
    links.append(_lamb_pre_norm(max_grad_norm, eps))
  links.append(_lamb_moments(b1, b2, eps, grad_averaging, mu_dtype))
  if not weight_decouple and not tree.is_literal_zero(weight_decay):
    links.append(optax.masked(transform.add_decayed_weights(weight_decay),
                              weight_decay_mask)
                 if weight_decay_mask is not None
                 else transform.add_decayed_weights(weight_decay))
  links.append(_lamb_step(learning_rate, b1, weight_decay, weight_decouple,
                          fixed_decay, adam, adam_debias, eps, max_weight_norm,
                          trust_ratio_mask, weight_decay_mask))
  return optax.chain(*links)
