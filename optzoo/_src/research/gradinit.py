"""GradInit: learn one scale per parameter tensor before training (Zhu et al., NeurIPS 2021).

Zhu et al., "GradInit: Learning to Initialize Neural Networks for Stable and
Efficient Training", NeurIPS 2021; official code ``zhuchen03/gradinit``
(``gradinit_utils.py``, ``gradinit_optimizers.py``).
"""

from __future__ import annotations

import collections.abc
import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = ["GradInitResult", "gradinit", "gradinit_objective"]


class GradInitResult(NamedTuple):
  """What :func:`gradinit` returns.

  Attributes:
    params: the rescaled parameters :math:`m_i W_i^0`.
    scales: the learned multipliers :math:`m_i` (a pytree of scalars).
    history: dict of NumPy arrays, one entry per iteration: ``loss`` (loss on
      :math:`S` at the current scales), ``gnorm`` (the constrained gradient
      norm), ``constraint`` (True where the constraint step was taken),
      ``objective`` (:math:`L(\\tilde S;\\theta')/\\eta`, NaN on constraint
      steps).
  """

  params: Any
  scales: Any
  history: dict


class _Adam(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def _concat(a, b):
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def _step_direction(g, target, normalize_grad):
  if target == "adam":
    return jax.tree.map(jnp.sign, g)
  if normalize_grad:
    n = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g)))
    return jax.tree.map(lambda x: x / n, g)
  return g


def _gnorm(g, target):
  if target == "adam":
    return sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(g))
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g)))


@registry.register(
    family="research",
    summary="GradInit one-step objective L(S~; theta - eta A[g(S; theta)]) (for checking an initialization).",
    paper="Zhu et al., GradInit, NeurIPS 2021",
    reference="definition",
    verified="definition (tests/research/test_gradinit.py)",
    kind="utility",
)
def gradinit_objective(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                       next_batch: Any, target: str = "sgd", eta: float = 0.1,
                       normalize_grad: bool = True) -> jax.Array:
  r"""The loss after one step of the target optimizer: :math:`L(\tilde S; \theta - \eta A[g(S;\theta)])`.

  ``A[g]`` is :math:`g/\lVert g\rVert_2` (SGD, ``normalize_grad``), :math:`g`
  (SGD) or :math:`\mathrm{sign}(g)` (Adam's first step). Not divided by η.
  """
  validation.check_choice("target", target, ("sgd", "adam"))
  validation.check_positive("eta", eta)
  g = jax.grad(loss_fn)(params, batch)
  a = _step_direction(g, target, normalize_grad)
  stepped = jax.tree.map(lambda p, d: p - eta * d, params, a)
  return loss_fn(stepped, next_batch)


@registry.register(
    family="research",
    summary="GradInit: Adam on one scalar per tensor so one SGD/Adam step lowers the loss most, under a gradient-norm bound.",
    paper="Zhu et al., GradInit: Learning to Initialize Neural Networks for Stable and Efficient Training, NeurIPS 2021",
    reference="NumPy re-derivation of zhuchen03/gradinit (gradinit_utils.py + RescaleAdam) on a linear model (tests)",
    verified="NumPy re-derivation of zhuchen03/gradinit on a linear model (tests/research/test_gradinit.py)",
    kind="utility",
)
@validation.renamed(iters="num_iters", lr="learning_rate")
def gradinit(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batches: Iterable[Any],
    *,
    target: str = "sgd",
    eta: float = 0.1,
    gamma: float = 1.0,
    num_iters: int = 390,
    learning_rate: float = 1e-2,
    m_min: float = 0.01,
    bias_m_min: float = 0.0,
    clip: float = 1.0,
    normalize_grad: bool = True,
    second_order: bool = False,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> GradInitResult:
  r"""GradInit: rescale each parameter tensor so that one optimizer step works well.

  Learns one positive scalar :math:`m_i` per leaf, :math:`\theta_m = \{m_i W_i^0\}`.
  Each iteration draws three batches :math:`S_a, S_b, S_c` from ``batches``
  (each one half of the paper's minibatch), :math:`S = S_a\cup S_b`, and with
  :math:`g = \nabla_\theta L(S;\theta_m)`:

  .. math::

    \text{if } \lVert g\rVert > \gamma:&\quad \text{step on } m \text{ decreasing } \lVert g\rVert
      \quad(\ell_2 \text{ for SGD}, \ell_1 \text{ for Adam})\\
    \text{else}:&\quad \text{step on } m \text{ decreasing }
      L\big(S_a\cup S_c;\ \theta_m - \eta\,A[g]\big)/\eta

  with :math:`A[g] = g/\lVert g\rVert_2` (``target="sgd"``, ``normalize_grad``),
  :math:`g` (SGD without normalization) or :math:`\mathrm{sign}(g)` (``"adam"``).
  The step on :math:`m` is the official ``RescaleAdam``: each scalar gradient
  :math:`\partial/\partial m_i = \langle \nabla_{\theta_i}, W_i^0\rangle` is clipped
  to ``[-clip, clip]``, then an Adam step with bias correction (separate
  moments and counters for constraint and objective steps, as in the newer
  official optimizer file), then :math:`m_i \leftarrow \max(m_i, m_{min})`
  (``bias_m_min`` for leaves whose path contains ``bias``).

  As in the official code (``take_opt_step`` uses ``grad.detach()``), the
  objective treats the step direction :math:`A[g]` as a constant; only the
  constraint step differentiates through :math:`g` (second order). The paper
  is summarized as making "a simple approximation to keep computing costs
  low", consistent with this [recall: paper text not re-read].
  ``second_order=True`` differentiates the objective through :math:`A[g]`
  as well (the literal reading of the objective).

  The whole iteration is one jitted function (compiled once); the loop over
  iterations runs in Python and pulls batches from the iterator.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (mean loss). For BatchNorm
      models run with batch statistics and discard the updated statistics,
      as the official code does.
    params: initial parameters :math:`W^0` (any pytree; zero tensors keep
      :math:`m_i = 1`, their gradient is 0).
    batches: iterable of batches (pytrees with a leading batch axis); each
      iteration consumes three. A re-iterable (list) is restarted when
      exhausted.
    target: optimizer the initialization is tuned for: ``"sgd"`` or ``"adam"``.
    eta: the target optimizer's first-step size η (paper: 0.1 for SGD).
    gamma: gradient-norm bound γ (``inf`` disables the constraint).
    num_iters: number of iterations (paper: 390, one CIFAR epoch at B = 128).
    learning_rate: learning rate τ of the scale optimizer (the paper tunes it per
      architecture, 1e-3 to 1e-1).
    m_min: lower bound of weight scales; ``bias_m_min`` for biases.
    clip: per-scalar gradient clipping (0 disables).
    normalize_grad: use :math:`g/\lVert g\rVert` for SGD (launch scripts: on).
    second_order: differentiate the objective through :math:`A[g]`.
    b1, b2, eps: Adam constants of the scale optimizer.

  Returns:
    :class:`GradInitResult` ``(params, scales, history)``.

  References:
    Zhu et al., `GradInit: Learning to Initialize Neural Networks for Stable
    and Efficient Training <https://arxiv.org/abs/2102.08098>`_, NeurIPS 2021;
    code `zhuchen03/gradinit <https://github.com/zhuchen03/gradinit>`_.
  """
  if not callable(loss_fn):
    raise TypeError("`loss_fn` must be a callable loss_fn(params, batch) -> scalar.")
  validation.check_choice("target", target, ("sgd", "adam"))
  validation.check_positive("eta", eta)
  if not (isinstance(gamma, float) and gamma == float("inf")):
    validation.check_nonneg("gamma", gamma)
  validation.check_int("num_iters", num_iters, minimum=1)
  validation.check_positive("learning_rate", learning_rate)
  validation.check_nonneg("m_min", m_min)
  validation.check_nonneg("bias_m_min", bias_m_min)
  validation.check_nonneg("clip", clip)
  validation.check_bool("normalize_grad", normalize_grad)
  validation.check_bool("second_order", second_order)
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_nonneg("eps", eps)

  w0 = jax.tree.map(jnp.asarray, params)
  floors = _scale_floors(w0, m_min, bias_m_min)
  scales = jax.tree.map(lambda x: jnp.ones([], tree.float_dtype()), w0)
  adam_step = functools.partial(_rescale_adam_step, floors=floors,
                                learning_rate=learning_rate, b1=b1, b2=b2,
                                eps=eps)
  iteration = _gradinit_iteration(loss_fn, w0, adam_step, target=target,
                                  eta=eta, gamma=gamma, clip=clip,
                                  normalize_grad=normalize_grad,
                                  second_order=second_order)
  draw = _batch_drawer(batches)
  st_obj, st_con = _init_adam(scales), _init_adam(scales)
  m = scales
  hist = {"loss": [], "gnorm": [], "constraint": [], "objective": []}
  for _ in range(num_iters):
    s_a, s_b, s_c = draw(), draw(), draw()
    m, st_obj, st_con, (loss, gn, con, obj) = iteration(m, st_obj, st_con, s_a, s_b, s_c)
    hist["loss"].append(loss)
    hist["gnorm"].append(gn)
    hist["constraint"].append(con)
    hist["objective"].append(obj)
  history = {k: np.asarray(jnp.stack(v)) for k, v in hist.items()}
  return GradInitResult(params=_rescaled(m, w0), scales=m, history=history)


def _scale_floors(w0, m_min, bias_m_min):
  """The lower bound of every scale: ``bias_m_min`` for leaves named bias."""
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(w0)
  floors = [bias_m_min if "bias" in jax.tree_util.keystr(p).lower() else m_min
            for p, _ in leaves_with_path]
  return jax.tree.unflatten(treedef, [jnp.asarray(f, tree.float_dtype())
                                      for f in floors])


def _rescaled(m, w0):
  """The parameters :math:`m_i W_i^0`."""
  return jax.tree.map(lambda mi, w: (mi * w).astype(w.dtype), m, w0)


def _init_adam(scales):
  z = optax.tree_utils.tree_zeros_like(scales)
  return _Adam(jnp.zeros([], jnp.int32), z, z)


def _rescale_adam_step(m, grad, st, *, floors, learning_rate, b1, b2, eps):
  """One step of the official ``RescaleAdam`` on the scales, clamped at the floors."""
  count = st.count + 1
  mu = tree.tree_moment(grad, st.mu, b1, 1)
  nu = tree.tree_moment(grad, st.nu, b2, 2)
  c = count.astype(tree.float_dtype())
  bc1, bc2 = 1 - b1 ** c, 1 - b2 ** c
  new_m = jax.tree.map(
      lambda mi, a, v, fl: jnp.maximum(
          mi - learning_rate / bc1 * a / (jnp.sqrt(v / bc2) + eps), fl),
      m, mu, nu, floors)
  return new_m, _Adam(count, mu, nu)


def _gradinit_iteration(loss_fn, w0, adam_step, *, target, eta, gamma, clip,
                        normalize_grad, second_order):
  """The jitted GradInit iteration ``(m, st_obj, st_con, S_a, S_b, S_c)``.

  Takes the constraint step (lower the gradient norm) when the norm on
  :math:`S = S_a \cup S_b` exceeds ``gamma``, else the objective step (lower
  the loss on :math:`\tilde S = S_a \cup S_c` after one target step); each
  branch keeps its own Adam state, as in the official code.
  """

  def grad_at(m, batch):
    return jax.grad(loss_fn)(_rescaled(m, w0), batch)

  def constraint_value(m, s):
    return _gnorm(grad_at(m, s), target)

  def objective_value(m, s, s_new):
    theta = _rescaled(m, w0)
    a = _step_direction(jax.grad(loss_fn)(theta, s), target, normalize_grad)
    if not second_order:
      a = jax.lax.stop_gradient(a)
    stepped = jax.tree.map(lambda p, d: (p - eta * d).astype(p.dtype), theta, a)
    return loss_fn(stepped, s_new) / eta

  @jax.jit
  def iteration(m, st_obj, st_con, s_a, s_b, s_c):
    s = _concat(s_a, s_b)
    s_new = _concat(s_a, s_c)
    g = grad_at(m, s)
    gn = _gnorm(g, target)
    loss = loss_fn(_rescaled(m, w0), s)
    is_con = gn > gamma

    def con_branch(_):
      grad = jax.grad(constraint_value)(m, s)
      return grad, jnp.asarray(jnp.nan, loss.dtype)

    def obj_branch(_):
      val, grad = jax.value_and_grad(objective_value)(m, s, s_new)
      return grad, val.astype(loss.dtype)

    grad, obj = jax.lax.cond(is_con, con_branch, obj_branch, None)
    if clip > 0:
      grad = jax.tree.map(lambda x: jnp.clip(x, -clip, clip), grad)
    m_con, st_con2 = adam_step(m, grad, st_con)
    m_obj, st_obj2 = adam_step(m, grad, st_obj)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(is_con, x, y), a, b)
    new_m = pick(m_con, m_obj)
    st_con = pick(st_con2, st_con)
    st_obj = pick(st_obj, st_obj2)
    return new_m, st_obj, st_con, (loss, gn, is_con, obj)

  return iteration


def _batch_drawer(batches):
  """``draw()`` -> the next batch; a re-iterable is restarted when it runs out."""
  reiterable = not isinstance(batches, collections.abc.Iterator)
  it = iter(batches)

  def draw():
    nonlocal it
    try:
      return next(it)
    except StopIteration:
      if not reiterable:
        raise ValueError(
            "gradinit: `batches` ran out (each iteration consumes three batches);"
            " pass a longer iterator or a re-iterable such as a list.") from None
      it = iter(batches)
      return next(it)

  return draw
