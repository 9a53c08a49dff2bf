"""Communication-efficient data parallelism: compressed all-reduces, local SGD.

All transformations here communicate over a named mesh axis (``axis_name``,
``"data"`` by default) and are meant to run inside ``jax.shard_map`` over that
axis, on each replica's local gradient. Outside ``shard_map`` the axis is not
bound and they degrade to the one-replica case (no communication), so they
also run under plain ``jit``.

Per-replica state leaves carry a leading replica axis of size 1;
:func:`replica_specs` gives the ``PartitionSpec`` tree for a state so that it
can cross the ``shard_map`` boundary, e.g.::

    specs = optzoo.replica_specs(jax.eval_shape(tx.init, params), "data")
    init = jax.shard_map(tx.init, mesh=mesh, in_specs=P(), out_specs=specs)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from optzoo._src.communication.compression import CompressionState
from optzoo._src.communication.compression import ef_signsgd
from optzoo._src.communication.compression import MajorityVoteState
from optzoo._src.communication.compression import qsgd
from optzoo._src.communication.compression import randomk_compression
from optzoo._src.communication.compression import signsgd_majority_vote
from optzoo._src.communication.compression import topk_compression
from optzoo._src.communication.local_sgd import local_sgd
from optzoo._src.communication.local_sgd import LocalSGDState
from optzoo._src.communication.powersgd import powersgd
from optzoo._src.communication.powersgd import PowerSGDState

__all__ = [
    "communication_stats",
    "CompressionState",
    "ef_signsgd",
    "local_sgd",
    "LocalSGDState",
    "MajorityVoteState",
    "powersgd",
    "PowerSGDState",
    "qsgd",
    "randomk_compression",
    "replica_specs",
    "replicate_state",
    "signsgd_majority_vote",
    "topk_compression",
]


def _is_comm_state(x: Any) -> bool:
  return isinstance(x, tuple) and hasattr(type(x), "_per_replica")


def replica_specs(state: Any, axis_name: Any = "data") -> Any:
  """``PartitionSpec`` tree for an optimizer state inside ``shard_map``.

  Per-replica leaves of the communication transforms' states (error
  feedback, local momenta, local SGD's inner state) get
  ``PartitionSpec(axis_name)`` (their leading replica axis is split over the
  axis), every other leaf ``PartitionSpec()`` (replicated). Works on a state
  or its ``jax.eval_shape``.
  """
  def rec(node):
    if _is_comm_state(node):
      fields = []
      for name, value in zip(node._fields, node):
        if name in node._per_replica:
          fields.append(jax.tree.map(lambda _: PartitionSpec(axis_name), value))
        else:
          fields.append(jax.tree.map(rec, value, is_leaf=_is_comm_state))
      return type(node)(*fields)
    return PartitionSpec()
  return jax.tree.map(rec, state, is_leaf=_is_comm_state)


def communication_stats(state: Any) -> dict:
  """Bytes one replica sent at the last step, summed over the state.

  Returns ``{"comm_bytes", "dense_bytes", "ratio"}`` (``ratio`` =
  dense / sent, ``inf`` when nothing was sent) from every communication
  transform found in ``state`` (host values: call it outside ``jit``).
  """
  nodes = [x for x in jax.tree.leaves(state, is_leaf=_is_comm_state)
           if _is_comm_state(x)]
  sent = sum(int(jnp.max(jnp.asarray(x.comm_bytes))) for x in nodes)
  dense = sum(int(jnp.max(jnp.asarray(x.dense_bytes))) for x in nodes)
  return {"comm_bytes": sent, "dense_bytes": dense,
          "ratio": (dense / sent) if sent else float("inf")}


def replicate_state(state: Any, num_replicas: int) -> Any:
  """Tiles the per-replica leaves of a state from 1 to ``num_replicas`` rows.

  ``tx.init`` gives per-replica leaves a leading axis of size 1; before the
  state enters ``shard_map`` with :func:`replica_specs`, give every replica
  its row (all start equal)::

      state = optzoo.replicate_state(tx.init(params), mesh.shape["data"])
      state = jax.device_put(state, jax.tree.map(
          lambda s: NamedSharding(mesh, s), optzoo.replica_specs(state)))
  """
  specs = replica_specs(state, "_")
  return jax.tree.map(
      lambda x, s: (jnp.concatenate([x] * num_replicas)
                    if x is not None and s is not None and len(s) else x),
      state, specs, is_leaf=lambda x: x is None)
