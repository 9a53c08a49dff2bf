"""Small pytree and dtype helpers shared by the transformations.

Everything that ``optax.tree_utils`` already offers is used from there; this
module holds only what it does not.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_literal_zero", "compute_dtype", "tree_unzip", "tree_all_finite",
           "find_state"]


def is_literal_zero(x: Any) -> bool:
  """True for a Python/NumPy scalar zero; a schedule or an array never is.

  Factories use it to drop links that would be no-ops (e.g. an L2 term with
  weight decay 0). An injected hyperparameter is an array, so the link stays
  and the state structure is the same at init and under ``jit``.
  """
  return (isinstance(x, (int, float, np.integer, np.floating))
          and not isinstance(x, (bool, np.bool_)) and x == 0)


def compute_dtype(x: Any) -> Any:
  """At least float32: the dtype optimizer statistics are computed in."""
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


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


def find_state(state: Any, cls: type) -> Any:
  """The first sub-state of type ``cls`` in a (nested) optimizer state, or None.

  Searches tuples (``optax.chain``), lists and dicts (``optax.multi_transform``,
  ``inject_hyperparams``) depth first.
  """
  if isinstance(state, cls):
    return state
  if isinstance(state, (tuple, list)):
    for s in state:
      r = find_state(s, cls)
      if r is not None:
        return r
  elif isinstance(state, dict):
    for s in state.values():
      r = find_state(s, cls)
      if r is not None:
        return r
  return None
