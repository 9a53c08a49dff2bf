"""What the fused CPU steps share: when a kernel may run, and
:func:`update_and_apply`, the whole step in one call.

A fused optimizer (``adam.py``, ``sgd.py``) registers its ``update``
function here with its plain chain's links and a function that runs the
whole step (new params included) with the kernel, or returns None where the
arrays do not allow it.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src.cpu_kernels import enabled_mode, load

__all__ = ["update_and_apply"]

# Leaves per custom call. XLA's alias analysis of one call with n in-place
# operands costs O(n^2) compile time (1,000 leaves in one call: 168 s to
# compile; in calls of 16: 3.4 s, optax.adam 14 s, on 2 loaded cores).
MAX_LEAVES = 16
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclasses.dataclass(frozen=True)
class Fused:
  """A registered fused optimizer: its plain chain's ``links`` (None: it has
  no plain twin, e.g. 8-bit Adam, whose ``update`` is plain jnp where the
  kernel does not run) and ``apply(grads, state, params) -> (new_params,
  new_state) | None``."""
  links: Optional[tuple]
  apply: Callable[[Any, Any, Any], Optional[tuple]]


# tx.update -> Fused (a GradientTransformation is a NamedTuple and takes no
# attributes).
_FUSED: "weakref.WeakKeyDictionary[Any, Fused]" = weakref.WeakKeyDictionary()


def register(update_fn, links, apply_fn) -> None:
  _FUSED[update_fn] = Fused(None if links is None else tuple(links), apply_fn)


def plain_links(tx) -> Optional[tuple]:
  """The plain chain's links of a fused optimizer, else None."""
  fused = _FUSED.get(getattr(tx, "update", None))
  return None if fused is None else fused.links


def update_and_apply(tx: optax.GradientTransformation, grads: Any, state: Any,
                     params: Any) -> tuple[Any, Any]:
  """``(optax.apply_updates(params, u), new_state)`` for ``u, new_state =
  tx.update(grads, state, params)``, bitwise equal.

  For ``optzoo.adam`` / ``adamw`` / ``amsgrad`` and ``optzoo.sgd`` /
  ``nag`` with momentum on CPU this is one C++ call per dtype (and per 16
  leaves) that reads params, grads and the state once and writes the new
  params and state (in place when ``params`` and ``state`` are donated to
  ``jax.jit``, or are loop carries): for Adam 7 array passes, against 9 for
  the fused ``tx.update`` + ``apply_updates`` and 10 for the plain path; for
  SGD with momentum 5 against XLA's 6. For ``optzoo.adam_8bit`` /
  ``adamw_8bit`` (and ``quantize_state`` around ``optzoo.adam`` / ``adamw``)
  the 8-bit kernel also applies the update: no params-sized direction is
  written and read back. Any other ``tx``
  (``optax.inject_hyperparams(optzoo.adam)`` included), or arrays the
  kernel does not take (see :func:`optzoo.adam`), run ``tx.update`` and
  ``optax.apply_updates``.

  Raises:
    TypeError: ``tx`` is not a ``GradientTransformation``.
    ValueError: ``params`` is None.
  """
  if not callable(getattr(tx, "update", None)):
    raise TypeError(f"`tx` must be an optax.GradientTransformation, got "
                    f"{type(tx).__name__}.")
  if params is None:
    raise ValueError("`params` is required: update_and_apply returns the new "
                     "params.")
  fused = _FUSED.get(tx.update)
  if fused is not None:
    out = fused.apply(grads, state, params)
    if out is not None:
      return out
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def kernels():
  """The loaded kernels when this trace may use them, else None."""
  mode = enabled_mode()
  if mode == "off" or jax.default_backend() != "cpu":
    return None
  if mode == "auto" and jax.device_count() != 1:
    return None
  return load()


def one_device(x) -> bool:
  """False for an array known to be sharded over (or live on) several devices."""
  if isinstance(x, jax.core.Tracer):
    try:
      sharding = jax.typeof(x).sharding
      return not sharding.mesh.shape_tuple or sharding.is_fully_replicated
    except Exception:  # pylint: disable=broad-except
      return True
  if isinstance(x, jax.Array):
    return len(x.sharding.device_set) == 1
  return isinstance(x, np.ndarray)


def keeps(dtype, scalar) -> bool:
  """Does ``scalar <op> leaf`` compute in the leaf's ``dtype``?"""
  return np.dtype(jnp.result_type(scalar, dtype)) == dtype


def same_leaves(updates, *trees):
  """``(treedef, [leaves of updates, leaves of each tree...])``, or None
  unless every leaf is a float32/float64 array of one shape and dtype across
  the trees, on one device."""
  g, treedef = jax.tree.flatten(updates)
  if not g:
    return None
  try:
    others = [treedef.flatten_up_to(t) for t in trees]
  except (ValueError, TypeError):
    return None
  for leaves in zip(g, *others):
    dtype = getattr(leaves[0], "dtype", None)
    if dtype is None or np.dtype(dtype) not in DTYPES:
      return None
    for x in leaves:
      if (getattr(x, "dtype", None) != dtype or
          np.shape(x) != np.shape(leaves[0]) or not one_device(x)):
        return None
  return treedef, [g, *others]


def groups(leaves, max_elements: Optional[int] = None) -> list:
  """``[(dtype, [leaf indices])]``: one group per dtype and per MAX_LEAVES
  leaves (and, with ``max_elements``, per that many entries in all; a
  larger leaf is a group of its own)."""
  dtypes = sorted({np.dtype(g.dtype) for g in leaves}, key=str)
  out = []
  for dtype in dtypes:
    cur, cur_n = [], 0
    for i, g in enumerate(leaves):
      if np.dtype(g.dtype) != dtype:
        continue
      n = int(np.size(g))
      if cur and (len(cur) == MAX_LEAVES or (
          max_elements is not None and cur_n + n > max_elements)):
        out.append((dtype, cur))
        cur, cur_n = [], 0
      cur.append(i)
      cur_n += n
    if cur:
      out.append((dtype, cur))
  return out


def like_first(arrays: list) -> list:
  """``outputs`` for :func:`call`: one further result per leaf, of its
  first operand's shape and dtype (a direction)."""
  return [jax.ShapeDtypeStruct(np.shape(arrays[0]), arrays[0].dtype)]


def call(target: str, dtype, scalars: list, per_leaf: list, n_in: int, *,
         lead: tuple = (), outputs: Optional[Callable[[list], list]] = None,
         vmap_method: str = "broadcast_all", **attrs) -> list:
  """One custom call: ``scalars`` (cast to ``dtype``) and the ``lead``
  operands, then per leaf ``n_in`` read-only arrays and the in-place ones
  (results alias them, same shapes and dtypes). Returns the results flat:
  per leaf the in-place arrays' new values, then ``outputs(arrays)`` (shapes
  and dtypes of that leaf's further results, if given)."""
  operands = [jnp.stack([jnp.asarray(v).astype(dtype) for v in scalars]), *lead]
  results, aliases = [], {}
  for arrays in per_leaf:
    operands += arrays[:n_in]
    for x in arrays[n_in:]:
      aliases[len(operands)] = len(results)
      operands.append(x)
      results.append(jax.ShapeDtypeStruct(np.shape(x), x.dtype))
    if outputs is not None:
      results += outputs(arrays)
  return jax.ffi.ffi_call(target, results, vmap_method=vmap_method,
                          input_output_aliases=aliases)(
                              *operands, n_leaves=np.int64(len(per_leaf)),
                              **attrs)
