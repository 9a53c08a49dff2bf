"""Small pytree and dtype helpers shared by the transformations.

Everything that ``optax.tree_utils`` already offers is used from there; this
module holds only what it does not.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_literal_zero", "as_key", "float_dtype", "compute_dtype",
           "widest_float_dtype", "tree_moment", "tree_unzip", "tree_all_finite", "find_state",
           "find_states",            "tree_get_path", "tree_set_path"]


def is_literal_zero(x: Any) -> bool:
  """True for a Python/NumPy scalar zero; a schedule or an array never is.

  Factories use it to drop links that would be no-ops (e.g. an L2 term with
  weight decay 0). An injected hyperparameter is an array, so the link stays
  and the state structure is the same at init and under ``jit``.
  """
  return (isinstance(x, (int, float, np.integer, np.floating))
          and not isinstance(x, (bool, np.bool_)) and x == 0)


def float_dtype() -> Any:
  """JAX's default float: float64 under ``jax_enable_x64``, else float32.

  The dtype of step-dependent scalars (counts as floats, bias corrections,
  schedule values), so that they are exact in float64 runs.
  """
  return jnp.result_type(float)


def compute_dtype(x: Any) -> Any:
  """At least float32: the dtype optimizer statistics are computed in."""
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def widest_float_dtype(tree: Any) -> Any:
  """The widest floating dtype among ``tree``'s leaves, at least float32.

  For scalar state shared by all leaves (a covariance, a loss estimate):
  float64 when any leaf is float64, float32 for f32/bf16/f16 trees. A
  complex leaf counts as its real dtype (complex128 -> float64).
  """
  dt = jnp.float32
  for leaf in jax.tree.leaves(tree):
    ldt = jnp.result_type(leaf)
    if jnp.issubdtype(ldt, jnp.complexfloating):
      ldt = jnp.finfo(ldt).dtype
    if jnp.issubdtype(ldt, jnp.floating):
      dt = jnp.promote_types(dt, ldt)
  return dt


def as_key(key: Any) -> Any:
  """A PRNG key from a key or an integer seed (``jax.random.PRNGKey(seed)``).

  Factories take ``key: jax.Array | int``; an int (or integer scalar array,
  e.g. an injected hyperparameter) is a seed, anything else is used as the
  key as is.
  """
  if isinstance(key, (int, np.integer)) or (
      hasattr(key, "dtype") and jnp.ndim(key) == 0
      and jnp.issubdtype(key.dtype, jnp.integer)):
    return jax.random.PRNGKey(key)
  return key


def tree_moment(updates: Any, moments: Any, decay: Any, order: int) -> Any:
  """The EMA ``decay * m + (1 - decay) * g**order`` (order 1 or 2), in ``m``'s dtype.

  The one moment update of the Adam-type methods (``g**2`` is ``g * g``
  evaluated as ``((1 - decay) * g) * g``, as torch and the papers' codes do).
  ``optax.tree_utils.tree_update_moment`` is the same for ``order=1`` but
  rounds the second moment differently (``(1 - decay) * (g * g)``).
  torch's Adam first moment is a lerp, ``m + (1 - decay) * (g - m)``: that one
  stays in ``scale_by_adam``.
  """
  if order == 1:
    f = lambda g, m: (decay * m + (1 - decay) * g).astype(m.dtype)
  elif order == 2:
    f = lambda g, m: (decay * m + (1 - decay) * g * g).astype(m.dtype)
  else:
    raise ValueError(f"`order` must be 1 or 2, got {order!r}.")
  return jax.tree.map(f, updates, moments)


def tree_unzip(tree_of_tuples: Any, like: Any, n: int, *,
               is_leaf: Optional[Callable[[Any], bool]] = None) -> tuple:
  """Splits ``jax.tree.map(f, like, ...)`` with n-tuple outputs into n trees.

  Each returned tree has ``like``'s structure (``None`` leaves and empty
  trees included); use it when one per-leaf function computes several
  results at once (an update and a new buffer, say).
  """
  treedef = jax.tree.structure(like, is_leaf=is_leaf)
  rows = treedef.flatten_up_to(tree_of_tuples)
  return tuple(treedef.unflatten([r[i] for r in rows]) for i in range(n))


def tree_all_finite(tree: Any) -> jax.Array:
  """A device boolean: all entries of all (inexact) leaves are finite.

  ``None`` leaves, empty arrays and integer leaves count as finite. Never
  syncs to the host, so it can be used inside ``jit``.

  Args:
    tree: any pytree of arrays / scalars.

  Returns:
    a scalar ``bool`` array.
  """
  flags = [
      jnp.all(jnp.isfinite(x))
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  if not flags:
    return jnp.array(True)
  return jnp.all(jnp.stack(flags))


_RAISE = object()


def tree_get_path(tree: Any, path: tuple, default: Any = _RAISE) -> Any:
  """``tree[path[0]][path[1]]...`` in a nested mapping (params dicts).

  A missing key returns ``default`` when one is given, else raises
  ``KeyError``.
  """
  node = tree
  for k in path:
    if not (hasattr(node, "keys") and k in node):
      if default is _RAISE:
        raise KeyError(f"{'/'.join(map(str, path))!r}: no key {k!r}")
      return default
    node = node[k]
  return node


def tree_set_path(tree: Any, path: tuple, value: Any) -> Any:
  """A copy of a nested mapping with ``tree[path...] = value``.

  Only the mappings along ``path`` are copied (as their own type, e.g. a
  ``FrozenDict`` stays one); everything else is shared.
  """
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = tree_set_path(tree[path[0]], path[1:], value)
  return type(tree)(out) if not isinstance(tree, dict) else out


def find_states(state: Any, match: Any) -> list:
  """All sub-states of an optimizer state that ``match``, in tree order.

  ``match`` is a type (``isinstance``) or a predicate. The search walks every
  pytree node (``optax.chain`` tuples, ``multi_transform`` / ``inject_hyperparams``
  dicts and NamedTuples, custom nodes) and does not look inside a match.
  """
  pred = (lambda x: isinstance(x, match)) if isinstance(match, type) else match
  leaves = jax.tree.leaves(state, is_leaf=lambda x: bool(pred(x)))
  return [x for x in leaves if pred(x)]


def find_state(state: Any, match: Any) -> Any:
  """The first sub-state that ``match`` (see :func:`find_states`), or None."""
  found = find_states(state, match)
  return found[0] if found else None
