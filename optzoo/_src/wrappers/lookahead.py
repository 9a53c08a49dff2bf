"""Lookahead as a drop-in wrapper on ordinary params."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = ["lookahead", "LookaheadState", "lookahead_slow_params"]


class LookaheadState(NamedTuple):
  """State of :func:`lookahead`.

  Attributes:
    count: number of inner (fast) steps taken so far, int32.
    slow: the slow weights :math:`\\phi` (same tree and dtypes as params).
    inner_state: the state of the wrapped transformation.
  """

  count: jax.Array
  slow: optax.Params
  inner_state: optax.OptState


@registry.register(
    family="wrapper",
    summary="Lookahead: k fast steps forward, one step back toward the slow"
    " weights; drop-in on ordinary params.",
    paper="Zhang, Lucas, Hinton & Ba, Lookahead Optimizer: k steps forward,"
    " 1 step back, NeurIPS 2019, https://arxiv.org/abs/1907.08610",
    reference="pytorch_optimizer.Lookahead (= paper phase; equals"
    " optax.lookahead)",
    verified="pytorch_optimizer.Lookahead 4.1.0, float64 (tests/wrappers/test_lookahead.py)",
    needs_params=True,
)
def lookahead(
    inner: optax.GradientTransformation,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
    reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Lookahead (Zhang et al., 2019) on ordinary parameters.

  Fast weights :math:`\theta` are the parameters you train; slow weights
  :math:`\phi` live in the state (initialised to the initial params). Every
  ``update`` is one fast step of the inner optimizer :math:`A`; after fast
  steps :math:`k, 2k, \dots` the synchronisation

  .. math::

    \phi \leftarrow \phi + \alpha\,(\theta - \phi), \qquad \theta \leftarrow
    \phi

  is folded into the returned update, so ``optax.apply_updates(params,
  updates)`` yields exactly the paper's iterates (and equals the slow weights
  right after a sync). Evaluate with :func:`lookahead_slow_params` (the slow
  weights) or with the params (the fast weights), as you prefer.

  At a sync the returned update is :math:`u - (1-\alpha)(u + \theta -
  \phi)` (:math:`= \alpha u - (1-\alpha)(\theta - \phi)`) with :math:`u`
  the inner update, so ``sync_period=1, slow_step_size=1`` reproduces the
  inner optimizer bit for bit.

  Unlike ``optax.lookahead`` no special ``LookaheadParams`` structure is
  needed: this works with ``flax`` ``TrainState``, ``nnx.Optimizer`` and
  plain pytrees. The numbers equal ``pytorch_optimizer.Lookahead`` (and
  ``optax.lookahead``: slow weights = :math:`\theta_0`, sync after steps
  :math:`k, 2k, \dots`); ``torch_optimizer.Lookahead`` differs by a one-step
  phase offset (it initialises the slow weights after the first step).

  The inner state (momentum, Adam moments) is kept across syncs (the paper's
  and ``pytorch_optimizer``'s default ``pullback_momentum='none'``); with
  ``reset_state=True`` it is re-initialised at every sync, as
  ``optax.lookahead(reset_state=True)``.

  Extra arguments passed to ``update`` are forwarded to ``inner`` (unknown
  ones are ignored when ``inner`` does not take extra args).

  Args:
    inner: the fast optimizer (any ``optax.GradientTransformation``).
    sync_period: :math:`k` >= 1, fast steps between synchronisations.
    slow_step_size: :math:`\alpha` in [0, 1] (paper default 0.5; the official
      code uses 0.8).
    reset_state: re-initialise the inner state at each sync.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax, optzoo
    >>> tx = optzoo.lookahead(optzoo.adam(1e-2), sync_period=5)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)

  References:
    Zhang, Lucas, Hinton & Ba, `Lookahead Optimizer: k steps forward, 1 step
    back <https://arxiv.org/abs/1907.08610>`_, NeurIPS 2019.
  """
  validation.check_transformation("inner", inner)
  validation.check_int("sync_period", sync_period, minimum=1)
  validation.check_unit_interval("slow_step_size", slow_step_size)
  validation.check_bool("reset_state", reset_state)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return LookaheadState(
        count=jnp.zeros([], jnp.int32),
        slow=jax.tree.map(jnp.asarray, params),
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    validation.require_params(params, "lookahead")
    inner_updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    count = optax.safe_increment(state.count)
    sync = (count % sync_period) == 0
    alpha = slow_step_size

    def leaf_update(u, p, s):
      if isinstance(alpha, (int, float)) and alpha == 1:
        return u  # the sync is the identity on the fast weights
      # Sync: new params = s + alpha*(p + u - s) = p + u - (1-alpha)(u + p - s).
      # Written without a constant times `u`: XLA folds such a constant into
      # the inner update's own expression and then computes that expression
      # (e.g. Adam's division and square root, reading both moments) a
      # second time, which made a lookahead step ~3.5x slower than its inner
      # step on CPU (benchmarks/lookahead_step_time.py).
      u_p = u.astype(p.dtype)
      synced = (u_p - (1.0 - alpha) * (u_p + (p - s))).astype(u.dtype)
      return jnp.where(sync, synced, u)

    new_updates = jax.tree.map(leaf_update, inner_updates, params, state.slow)

    def leaf_slow(u, p, s):
      return jnp.where(sync, (p + u).astype(s.dtype), s)

    new_slow = jax.tree.map(leaf_slow, new_updates, params, state.slow)
    if reset_state:
      fresh = inner.init(optax.apply_updates(params, new_updates))
      inner_state = optax.tree_utils.tree_where(sync, fresh, inner_state)
    return new_updates, LookaheadState(count=count, slow=new_slow,
                                       inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lookahead_slow_params(state: Any) -> Any:
  """Returns the slow weights of the (first) :class:`LookaheadState` in
  ``state`` (searching through ``optax.chain`` / ``inject_hyperparams``
  states), for evaluation with the slow weights as in the paper."""
  found = tree.find_state(state, LookaheadState)
  if found is None:
    raise ValueError("no lookahead state found in `state`: pass the state of"
                     " an optimizer built with optzoo.lookahead(...).")
  return found.slow
