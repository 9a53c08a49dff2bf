"""The fused CPU step of ``optzoo.adam`` / ``optzoo.adamw`` / ``optzoo.amsgrad``.

:func:`fused_adam` wraps the plain chain (``[add_l2] -> scale_by_adam ->
[add_decayed_weights] -> scale_by_learning_rate``): same ``init``, same state
tree, and an ``update`` that, when the arrays allow (see :func:`_plan`), runs
the whole chain as one C++ custom call per dtype (``kernels.cc``) instead of
XLA's fusions, and otherwise calls the plain chain. Results are bitwise equal
(tests/test_cpu_kernels.py): the scalars are computed here by the same jnp
expressions as in the plain path and cast to the leaves' dtype exactly where
the plain path's type promotion casts them; when promotion would widen an
elementwise operation instead (an float64 bias correction next to float32
leaves under ``jax_enable_x64``, say), the plain path is taken.

:func:`update_and_apply` also applies the update (``p + u``) inside the same
call, writing the new parameters directly.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import tree
from optzoo._src import transform
from optzoo._src.cpu_kernels import enabled_mode, load

__all__ = ["fused_adam", "update_and_apply"]

_NO_DECAY, _COUPLED, _DECOUPLED = 0, 1, 2
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What the chain computes, and where its links' states sit in the tuple."""
  learning_rate: Any
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  weight_decay: Any
  decay: int  # _NO_DECAY / _COUPLED / _DECOUPLED
  amsgrad: bool
  adam_index: int
  lr_index: int


# tx.update -> _Spec, for update_and_apply (a GradientTransformation is a
# NamedTuple and takes no attributes).
_SPECS: "weakref.WeakKeyDictionary[Any, _Spec]" = weakref.WeakKeyDictionary()


def fused_adam(plain: optax.GradientTransformation, *, learning_rate, b1, b2,
               eps, eps_root=0.0, weight_decay=0.0, decoupled: bool = False,
               amsgrad: bool = False, adam_index: int,
               lr_index: int) -> optax.GradientTransformation:
  """``plain`` with a fused CPU ``update`` (state and results unchanged)."""
  if tree.is_literal_zero(weight_decay):
    decay = _NO_DECAY
  else:
    decay = _DECOUPLED if decoupled else _COUPLED
  spec = _Spec(learning_rate, b1, b2, eps, eps_root, weight_decay, decay,
               amsgrad, adam_index, lr_index)

  def update_fn(updates, state, params=None):
    out = _fused_step(spec, updates, state, params, apply=False)
    return plain.update(updates, state, params) if out is None else out

  tx = optax.GradientTransformation(plain.init, update_fn)
  _SPECS[update_fn] = spec
  return tx


def update_and_apply(tx: optax.GradientTransformation, grads: Any, state: Any,
                     params: Any) -> tuple[Any, Any]:
  """``(optax.apply_updates(params, u), new_state)`` for ``u, new_state =
  tx.update(grads, state, params)``, bitwise.

  For ``optzoo.adam`` / ``adamw`` / ``amsgrad`` on CPU this is one custom
  call that writes the new parameters directly (no update tree: one pass
  over memory less); donate ``params`` and ``state`` to ``jax.jit`` so it
  writes them in place. Any other ``tx``, or arrays the kernel does not take,
  run ``tx.update`` and ``optax.apply_updates``.
  """
  spec = _SPECS.get(tx.update)
  if spec is not None:
    out = _fused_step(spec, grads, state, params, apply=True)
    if out is not None:
      return out
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


# ---------------------------------------------------------------------------
# When the kernel applies
# ---------------------------------------------------------------------------


def _backend_ok() -> bool:
  mode = enabled_mode()
  if mode == "off" or jax.default_backend() != "cpu":
    return False
  if mode == "auto" and jax.device_count() != 1:
    return False
  return load()


def _one_device(x) -> bool:
  """False for an array known to live on (or be sharded over) several devices."""
  if isinstance(x, jax.core.Tracer):
    try:
      sharding = jax.typeof(x).sharding
      return not sharding.mesh.shape_tuple or sharding.is_fully_replicated
    except Exception:  # pylint: disable=broad-except
      return True
  if isinstance(x, jax.Array):
    return len(x.sharding.device_set) == 1
  return isinstance(x, np.ndarray)


def _keeps(dtype, scalar) -> bool:
  """Does ``scalar <op> leaf`` compute in the leaf's ``dtype``?"""
  return np.dtype(jnp.result_type(scalar, dtype)) == dtype


# ---------------------------------------------------------------------------
# The fused step
# ---------------------------------------------------------------------------


def _scalars(spec: _Spec, adam_state, lr_state):
  """The chain's scalars, as the plain path computes them.

  Returns ``(count, lr_state, [(slot value, needs_promotion_check)])`` in
  the kernel's slot order (kernels.cc, ``enum Slot``).
  """
  b1, b2 = spec.b1, spec.b2
  count, inv_bc1, inv_sqrt_bc2 = transform.adam_step_scalars(b1, b2,
                                                             adam_state.count)
  if callable(spec.learning_rate):
    # scale_by_schedule: jnp.array(-lr(count), dtype=g.dtype) * g
    neg_lr = (-1.0 * spec.learning_rate(lr_state.count), False)
    lr_state = lr_state._replace(count=optax.safe_increment(lr_state.count))
  else:
    neg_lr = (-1.0 * spec.learning_rate, True)  # optax.scale: step * g
  wd = spec.weight_decay if spec.decay != _NO_DECAY else 0.0
  values = [(wd, True), (1 - b1, True), (b2, True), (1 - b2, True),
            (inv_bc1, True), (spec.eps_root, True), (inv_sqrt_bc2, True),
            (spec.eps, True), neg_lr]
  return count, lr_state, values


def _fused_step(spec: _Spec, updates, state, params, apply: bool):
  """``(out, new_state)`` from the kernel, or None where it does not apply."""
  if not _backend_ok():
    return None
  adam_state, lr_state = state[spec.adam_index], state[spec.lr_index]
  g_leaves, treedef = jax.tree.flatten(updates)
  needs_p = apply or spec.decay != _NO_DECAY
  try:
    trees = [adam_state.mu, adam_state.nu]
    if spec.amsgrad:
      trees.append(adam_state.nu_max)
    if needs_p:
      trees.append(params)
    others = [treedef.flatten_up_to(t) for t in trees]
  except (ValueError, TypeError):
    return None
  if not g_leaves:
    return None
  for leaves in zip(g_leaves, *others):
    dtype = getattr(leaves[0], "dtype", None)
    if (dtype is None or np.dtype(dtype) not in _DTYPES or
        any(getattr(x, "dtype", None) != dtype or
            np.shape(x) != np.shape(leaves[0]) or not _one_device(x)
            for x in leaves)):
      return None
  count, lr_state, values = _scalars(spec, adam_state, lr_state)
  dtypes = sorted({np.dtype(g.dtype) for g in g_leaves}, key=str)
  if not all(_keeps(d, v) for d in dtypes for v, check in values if check):
    return None

  mu_l, nu_l = others[0], others[1]
  vmax_l = others[2] if spec.amsgrad else None
  p_l = others[-1] if needs_p else None
  out = [None] * len(g_leaves)
  new_mu, new_nu = list(mu_l), list(nu_l)
  new_vmax = list(vmax_l) if spec.amsgrad else None
  for dtype in dtypes:
    idx = [i for i, g in enumerate(g_leaves) if np.dtype(g.dtype) == dtype]
    scalars = jnp.stack([jnp.asarray(v).astype(dtype) for v, _ in values])
    operands, results, aliases = [scalars], [], {}
    for i in idx:
      base = len(operands)
      operands.append(g_leaves[i])
      if needs_p:
        if apply:
          aliases[len(operands)] = len(results)
        operands.append(p_l[i])
      results.append(jax.ShapeDtypeStruct(np.shape(g_leaves[i]), dtype))
      state_leaves = [mu_l[i], nu_l[i]] + ([vmax_l[i]] if spec.amsgrad else [])
      for x in state_leaves:
        aliases[len(operands)] = len(results)
        operands.append(x)
        results.append(jax.ShapeDtypeStruct(np.shape(x), dtype))
      del base
    res = jax.ffi.ffi_call("optzoo_adam", results, vmap_method="broadcast_all",
                           input_output_aliases=aliases)(
        *operands, n_leaves=np.int64(len(idx)), decay=np.int64(spec.decay),
        amsgrad=bool(spec.amsgrad), apply=bool(apply))
    per = 3 + spec.amsgrad
    for j, i in enumerate(idx):
      out[i] = res[per * j]
      new_mu[i] = res[per * j + 1]
      new_nu[i] = res[per * j + 2]
      if spec.amsgrad:
        new_vmax[i] = res[per * j + 3]

  unflat = treedef.unflatten
  adam_state = adam_state._replace(
      count=count, mu=unflat(new_mu), nu=unflat(new_nu),
      nu_max=unflat(new_vmax) if spec.amsgrad else adam_state.nu_max)
  new_state = list(state)
  new_state[spec.adam_index] = adam_state
  new_state[spec.lr_index] = lr_state
  return unflat(out), type(state)(new_state)
