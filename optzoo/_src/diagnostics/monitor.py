"""A gradient/update-norm monitor: records norms in its state, changes nothing."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = [
    "MonitorNormsState",
    "monitor_norms",
    "NormHistory",
    "norm_history",
    "find_monitor_states",
]


class MonitorNormsState(NamedTuple):
  """State of :func:`monitor_norms` (arrays only).

  Attributes:
    count: int32, number of updates seen.
    norm: global L2 norm of the last incoming updates (``0`` before any).
    leaf_norms: pytree shaped like the updates: per-leaf L2 norms.
    params_norm: global norm of ``params`` at the last update (``nan`` when
      ``update`` was called without params).
    value: the last ``value`` extra argument (the loss), ``nan`` if absent.
    norms: ``(history,)`` ring buffer of ``norm``; the update with count
      ``c`` (1-based) is in slot ``(c - 1) % history``.
    values: ``(history,)`` ring buffer of ``value``.
  """

  count: jax.Array
  norm: jax.Array
  leaf_norms: Any
  params_norm: jax.Array
  value: jax.Array
  norms: jax.Array
  values: jax.Array


def _sq(x, dtype):
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    return jnp.sum(jnp.abs(x).astype(dtype) ** 2)
  return jnp.sum(jnp.square(x.astype(dtype)))


@registry.register(
    family="tool",
    kind="transformation",
    summary="Records the global/per-leaf norms of what passes through it (and"
    " the loss `value`) in its state; the updates are returned unchanged.",
    paper="Hung-yi Lee, ML lecture 'training stuck != small gradient'; Goodfellow"
    " et al., Deep Learning, sec. 8.2.1 (gradient norm while the loss plateaus).",
    reference="optax.global_norm (identity on the updates, bit-exact)",
    verified="optax.global_norm (tests/diagnostics/test_diagnostics.py)",
)
def monitor_norms(history: int = 0) -> optax.GradientTransformationExtraArgs:
  r"""Records the norm of the incoming updates; returns them unchanged.

  Placed first in a chain it records the gradient norm
  :math:`\|g_t\|_2`; placed last, the norm of the final update
  :math:`\|\Delta\theta_t\|_2`. It also records the per-leaf norms, the
  parameter norm (when ``params`` is passed) and the loss when the caller
  passes the extra argument ``value=loss``, so "the loss is stuck but the
  gradient is not small" can be read off or plotted (:func:`norm_history`).

  .. math::
    \text{norm}_t = \Big(\sum_\ell \|u_{t,\ell}\|_2^2\Big)^{1/2},\qquad
    u_t \mapsto u_t \ \text{(identity)}.

  The updates are returned as the very same arrays (bit-identical); the
  norms are computed in at least float32 (the promoted float dtype of the
  params), never synchronize with the host, and the state has a fixed
  shape and dtype, so a jitted step compiles once.

  Args:
    history: length of the ring buffers ``norms``/``values`` kept in the state
      (0 keeps only the last values). Static: changing it changes shapes.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; unknown extra arguments are
    ignored.

  Examples:
    >>> import optax, jax.numpy as jnp, optzoo.diagnostics as dg
    >>> tx = optax.chain(dg.monitor_norms(history=100), optax.sgd(0.1))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full(3, 2.0)}, state, params)
    >>> float(state[0].norm) == float(jnp.sqrt(12.0))
    True
  """
  validation.check_int("history", history, minimum=0)
  history = int(history)

  def init_fn(params):
    dtype = tree.widest_float_dtype(params)
    zero = jnp.zeros([], dtype)
    nan = jnp.full([], jnp.nan, dtype)
    return MonitorNormsState(
        count=jnp.zeros([], jnp.int32),
        norm=zero,
        leaf_norms=jax.tree.map(lambda _: zero, params),
        params_norm=nan,
        value=nan,
        norms=jnp.zeros((history,), dtype),
        values=jnp.full((history,), jnp.nan, dtype),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    dtype = state.norm.dtype
    leaf_sq = jax.tree.map(lambda u: _sq(u, dtype), updates)
    leaf_norms = jax.tree.map(jnp.sqrt, leaf_sq)
    total = sum(jax.tree.leaves(leaf_sq), jnp.zeros([], dtype))
    norm = jnp.sqrt(total)
    if params is None:
      params_norm = jnp.full([], jnp.nan, dtype)
    else:
      params_norm = jnp.sqrt(sum((_sq(p, dtype) for p in jax.tree.leaves(params)),
                                 jnp.zeros([], dtype)))
    val = (jnp.full([], jnp.nan, dtype) if value is None
           else jnp.asarray(value).astype(dtype).reshape(()))
    norms, values = state.norms, state.values
    if history:
      slot = jnp.mod(state.count, history)
      norms = norms.at[slot].set(norm)
      values = values.at[slot].set(val)
    new_state = MonitorNormsState(
        count=optax.safe_increment(state.count),
        norm=norm,
        leaf_norms=leaf_norms,
        params_norm=params_norm,
        value=val,
        norms=norms,
        values=values,
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_monitor_states(opt_state: Any) -> list:
  """All :class:`MonitorNormsState` inside a (nested) optimizer state, in order."""
  return tree.find_states(opt_state, MonitorNormsState)


class NormHistory(NamedTuple):
  """Chronological monitor records (NumPy), for plotting.

  Attributes:
    steps: 1-based update counts of the kept records.
    norms: the recorded norms.
    values: the recorded losses (``nan`` where no ``value`` was passed).
  """

  steps: np.ndarray
  norms: np.ndarray
  values: np.ndarray


def norm_history(opt_state: Any, index: int = 0) -> NormHistory:
  """Reads the ring buffer of a monitor in chronological order (host side).

  Args:
    opt_state: a :class:`MonitorNormsState`, or any optimizer state containing
      one or more (e.g. the state of ``optax.chain(monitor_norms(...), ...)``).
    index: which monitor, in the order :func:`find_monitor_states` lists them.

  Returns:
    A :class:`NormHistory` with the last ``min(count, history)`` records.
  """
  states = find_monitor_states(opt_state)
  if not states:
    raise ValueError(
        "norm_history: no monitor_norms state found in `opt_state`; add"
        " `optzoo.diagnostics.monitor_norms(history=...)` to your chain.")
  if not 0 <= index < len(states):
    raise ValueError(
        f"norm_history: `index`={index} but the state holds {len(states)} monitor(s).")
  st = states[index]
  count = int(st.count)
  hist = int(st.norms.shape[0])
  if hist == 0:
    raise ValueError(
        "norm_history: this monitor keeps no history; build it with"
        " `monitor_norms(history=N)` with N > 0.")
  kept = min(count, hist)
  steps = np.arange(count - kept + 1, count + 1)
  slots = (steps - 1) % hist
  return NormHistory(steps=steps, norms=np.asarray(st.norms)[slots],
                     values=np.asarray(st.values)[slots])
