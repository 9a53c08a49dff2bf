"""Skip steps with non-finite inputs, on device.

``skip_nonfinite`` is a stricter sibling of :func:`optax.apply_if_finite`: it
also looks at the loss-like extra arguments (``value``, ``value_sq``) that
loss-adaptive methods such as KOALA consume, it can skip forever
(``max_consecutive=None``), and it keeps its counters saturating int32 arrays.
Everything runs inside ``jit``: the decision is a ``lax.cond`` on a device
boolean, no value ever goes to the host.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = ["SkipNonfiniteState", "skip_nonfinite"]


class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite`.

  Attributes:
    inner_state: the state of the wrapped transformation; never touched on a
      skipped step.
    notfinite_count: int32, number of *consecutive* steps with a non-finite
      input so far (reset to 0 by a finite step).
    total_skipped: int32, number of steps whose update was skipped since
      ``init`` (never reset; saturates at ``2**31 - 1``).
    last_finite: bool, whether the inputs of the last step were all finite.
  """

  inner_state: Any
  notfinite_count: jax.Array
  total_skipped: jax.Array
  last_finite: jax.Array


@registry.register(
    family="wrapper",
    summary=(
        "Skip optimizer steps whose gradients (or `value` / `value_sq` loss)"
        " are NaN/Inf, counting the skips in the state, all on device."
    ),
    paper=(
        "Mixed-precision training practice (Micikevicius et al., ICLR 2018,"
        " https://arxiv.org/abs/1710.03740): skip steps with overflowing"
        " gradients."
    ),
    reference=(
        "optax.apply_if_finite (same skipping rule on gradients); tested"
        " against an uninterrupted run without the bad steps."
    ),
)
def skip_nonfinite(
    inner: optax.GradientTransformation,
    max_consecutive: Optional[int] = None,
    check_extra_args: Sequence[str] = ("value", "value_sq"),
) -> optax.GradientTransformationExtraArgs:
  r"""Skips steps with non-finite gradients or losses, leaving ``inner`` intact.

  At every step the wrapper computes one device boolean

  .. math::

    \text{ok}_t = \operatorname{all}(\operatorname{isfinite}(g_t)) \wedge
      \operatorname{all}(\operatorname{isfinite}(a_t))

  over the gradients :math:`g_t` and the extra arguments :math:`a_t` named in
  ``check_extra_args`` that were passed (by default the loss ``value`` and
  ``value_sq`` used by loss-adaptive methods such as KOALA). If
  :math:`\text{ok}_t` the inner transformation runs as usual; otherwise the
  returned update is zero (same dtypes and structure as the gradients) and the
  inner state is returned unchanged, bit for bit, so a later finite step
  continues exactly as if the bad step had never happened. Skips are counted
  in the state (``notfinite_count`` consecutive, ``total_skipped`` overall,
  both saturating int32).

  With ``max_consecutive=k``, more than ``k`` *consecutive* bad steps are no
  longer hidden: the inner update runs on the bad inputs (as
  :func:`optax.apply_if_finite` does), so a run that is broken for good fails
  loudly instead of silently stalling. ``None`` (default) skips forever; read
  ``state.total_skipped`` to monitor.

  Differences from :func:`optax.apply_if_finite`: checks ``value`` /
  ``value_sq`` too, accepts ``max_consecutive=None``, names its counter
  ``total_skipped``.

  Args:
    inner: the transformation to protect (any ``GradientTransformation``;
      extra arguments are forwarded to it).
    max_consecutive: ``None`` (never give up) or an int ``>= 0``: the number
      of consecutive bad steps that are skipped before the inner update is
      applied anyway.
    check_extra_args: names of extra arguments whose values must be finite
      too (missing ones are ignored). A tuple of strings.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, optax, optzoo
    >>> tx = optzoo.skip_nonfinite(optax.sgd(0.1))
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state)
    >>> updates["w"], int(state.total_skipped)
    (Array([0., 0.], dtype=float32), 1)

  References:
    Micikevicius et al., `Mixed Precision Training
    <https://arxiv.org/abs/1710.03740>`_, ICLR 2018.

  .. seealso:: :func:`optax.apply_if_finite`, :func:`optzoo.tree_all_finite`.
  """
  validation.check_transformation("inner", inner)
  if max_consecutive is not None:
    validation.check_int("max_consecutive", max_consecutive, minimum=0)
  if isinstance(check_extra_args, str) or not all(
      isinstance(a, str) for a in check_extra_args):
    raise TypeError(
        "`check_extra_args` must be a tuple of extra-argument names (str),"
        f" got {check_extra_args!r}.")
  check_extra_args = tuple(check_extra_args)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SkipNonfiniteState(
        inner_state=inner.init(params),
        notfinite_count=jnp.zeros([], jnp.int32),
        total_skipped=jnp.zeros([], jnp.int32),
        last_finite=jnp.array(True, jnp.bool_),
    )

  def update_fn(updates, state, params=None, **extra_args):
    checked = [updates] + [
        extra_args[k] for k in check_extra_args
        if extra_args.get(k) is not None
    ]
    finite = tree.tree_all_finite(checked)
    notfinite_count = jnp.where(
        finite, jnp.zeros([], jnp.int32),
        optax.safe_increment(state.notfinite_count))
    if max_consecutive is None:
      apply = finite
    else:
      apply = jnp.logical_or(finite, notfinite_count > max_consecutive)

    def do_update(_):
      return inner.update(updates, state.inner_state, params, **extra_args)

    def skip_update(_):
      # Zeros shaped like what the inner update returns (tracing only; this
      # keeps both branches type-compatible even for inners that change
      # structure or dtype).
      out_shape, _ = jax.eval_shape(do_update, None)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
      return zeros, state.inner_state

    new_updates, new_inner_state = lax.cond(
        apply, do_update, skip_update, operand=None)
    total_skipped = jnp.where(
        apply, state.total_skipped, optax.safe_increment(state.total_skipped))
    return new_updates, SkipNonfiniteState(
        inner_state=new_inner_state,
        notfinite_count=notfinite_count,
        total_skipped=total_skipped,
        last_finite=finite,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
