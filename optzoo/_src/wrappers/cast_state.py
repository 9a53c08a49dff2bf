"""Low-precision optimizer state: store any transformation's state in bf16."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import validation

__all__ = ["cast_state", "CastStateState"]


class CastStateState(NamedTuple):
  """State of :func:`cast_state`: the inner state, floating arrays cast."""

  inner_state: optax.OptState


def _is_castable(x: Any) -> bool:
  return (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
          and np.ndim(x) > 0)


@registry.register(
    family="wrapper",
    summary="Store an optimizer's floating state in low precision (bf16),"
    " compute in full precision.",
    paper="Mixed-precision optimizer state, e.g. Dettmers et al., 8-bit"
    " Optimizers via Block-wise Quantization, ICLR 2022 (here: plain casting)",
    reference="the inner transformation (identical when dtype equals the"
    " state's dtype)",
)
def cast_state(
    inner: optax.GradientTransformation,
    dtype: Any = jnp.bfloat16,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps ``inner``'s floating-point state in ``dtype`` between steps.

  Every floating state array with at least one dimension (moments, slow
  weights, accumulators) is stored as ``dtype``; scalars (counters, running
  products, learning-rate estimates) keep their precision. At each update the
  stored arrays are cast back to the dtype ``inner`` creates them in, the
  step is computed there, and the new state is cast down again:

  .. math::

    s_{t} = \mathrm{cast}_{\texttt{dtype}}\big(A_{\text{state}}(g_t,
    \mathrm{cast}_{\text{orig}}(s_{t-1}))\big).

  Updates keep the gradients' dtype. With ``dtype=jnp.bfloat16`` Adam's
  state shrinks from 8 to 4 bytes per f32 parameter (and the step moves 25%
  fewer bytes); expect results to drift from the full-precision run at the
  level of bf16 rounding (~3 significant digits) of the moments. Prefer a
  method's own option where it has one (``optzoo.adam(mu_dtype=...)`` keeps
  only the first moment in low precision, which is usually safer for the
  second moment's small values).

  Args:
    inner: the transformation whose state to compress.
    dtype: a floating dtype (``jnp.bfloat16``, ``jnp.float16``, ``"bfloat16"``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optzoo
    >>> tx = optzoo.cast_state(optzoo.adam(1e-3), jnp.bfloat16)
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> state.inner_state[0].mu["w"].dtype
    dtype(bfloat16)
  """
  validation.check_transformation("inner", inner)
  try:
    dtype = jnp.dtype(dtype)
  except TypeError as e:
    raise TypeError(f"`dtype` must be a floating dtype, got {dtype!r}.") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`dtype` must be a floating dtype, got {dtype}.")
  inner = optax.with_extra_args_support(inner)

  def down(state):
    return jax.tree.map(
        lambda x: x.astype(dtype) if _is_castable(x) else x, state)

  def init_fn(params):
    return CastStateState(inner_state=down(inner.init(params)))

  def update_fn(updates, state, params=None, **extra_args):
    # The dtypes inner works in: those of a fresh state (static, no compute).
    ref = jax.eval_shape(inner.init, params if params is not None else updates)
    full = jax.tree.map(
        lambda x, r: x.astype(r.dtype) if _is_castable(x) else x,
        state.inner_state, ref)
    new_updates, new_state = inner.update(updates, full, params, **extra_args)
    return new_updates, CastStateState(inner_state=down(new_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
