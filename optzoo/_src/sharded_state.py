"""Sharded optimizer state (ZeRO stage 1) for data-parallel training.

Rajbhandari, Rasley, Ruwase & He, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", SC 2020, https://arxiv.org/abs/1910.02054.

:func:`shard_state` wraps a transformation so that every large state buffer
lives split over the data-parallel mesh axis (each of the ``n`` devices holds
``1/n`` of Adam's moments), while parameters and gradients stay replicated.
Inside the jitted step each device updates its slice of the state from its
(local) slice of the replicated gradient and the update is all-gathered: one
all-gather per sharded update leaf and no other collective for elementwise
optimizers.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optzoo._src import registry
from optzoo._src import validation

__all__ = ["shard_state", "shard_spec"]


def shard_spec(shape, axis_size: int, axis: str) -> P:
  """The ZeRO-1 layout of one buffer of ``shape``.

  The first dimension divisible by ``axis_size`` is split over ``axis``;
  buffers with no such dimension (scalars, odd shapes, empty arrays) are
  replicated (``P()``). The layout depends on the shape only, so a state
  buffer and its parameter's update get the same one.
  """
  shape = tuple(shape)
  if int(np.prod(shape)) == 0:
    return P()
  for d, n in enumerate(shape):
    if n >= axis_size and n % axis_size == 0:
      return P(*([None] * d), axis)
  return P()


@registry.register(
    family="wrapper",
    summary="ZeRO stage 1: the inner optimizer's state is sharded over the"
    " data-parallel mesh axis; params and gradients stay replicated and only"
    " the update is all-gathered.",
    paper="Rajbhandari et al., ZeRO: Memory Optimizations Toward Training"
    " Trillion Parameter Models, SC 2020, https://arxiv.org/abs/1910.02054",
    reference="the unsharded inner optimizer (same numbers); HLO collective"
    " count",
)
def shard_state(
    inner: optax.GradientTransformation,
    mesh: Optional[Mesh] = None,
    axis: str = "data",
    update_sharding: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Shards ``inner``'s state over the mesh axis ``axis`` (ZeRO stage 1).

  Every array leaf of ``inner``'s state (moments, momentum traces, and
  8-bit codes of :func:`optzoo.quantize_state`) is constrained to
  ``NamedSharding(mesh, shard_spec(leaf.shape, mesh.shape[axis], axis))``:
  its first dimension divisible by the axis size is split over ``axis``;
  leaves without one (scalars such as the step count, odd shapes) stay
  replicated. Nothing is padded or reshaped, so ``inner`` sees its usual
  state and any optimizer works unchanged; a leaf with no divisible
  dimension simply keeps its full copy on every device.

  ``update`` constrains, leaf by leaf: the incoming state to that layout,
  ``inner``'s update to its parameter's shard layout (so each device
  computes only its slice; slicing the replicated gradient is local) and
  the result to ``update_sharding`` (default: replicated), which is where
  the one all-gather per sharded update leaf happens. For elementwise
  optimizers (Adam, SGD, RMSProp, ...) the compiled step contains no other
  collective; optimizers with per-leaf or global reductions (LAMB/LARS
  trust ratios, global-norm clipping) add one small all-reduce per
  reduction over the sharded buffers.

  With :func:`optzoo.quantize_state` / :func:`optzoo.adam_8bit` inside,
  the ``uint8`` codes ``(num_blocks, block)`` and the per-block scales are
  split the same way (same numbers as unsharded; a leaf whose blocks are
  split along the block dimension adds one small all-reduce for its absmax).

  Params already sharded over ``axis`` (FSDP) do not need this wrapper:
  their state follows their sharding anyway.

  Args:
    inner: the transformation whose state is sharded.
    mesh: the device mesh; ``None``: a 1-D mesh ``(axis,)`` over all devices
      (``jax.devices()``), built at ``init`` / ``update`` time.
    axis: the data-parallel mesh axis name.
    update_sharding: sharding of the returned updates: ``None`` (replicated
      over the mesh, like data-parallel params), or a ``PartitionSpec`` /
      ``NamedSharding`` or a pytree of them with the params' structure
      (e.g. params sharded over another, model-parallel axis).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra arguments pass to
    ``inner``).

  Examples:
    >>> import jax, jax.numpy as jnp, optzoo
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> tx = optzoo.shard_state(optzoo.adam(1e-3), mesh)
    >>> params = {"w": jnp.ones((64, 32))}
    >>> state = tx.init(params)   # mu, nu: (64/n, 32) per device

  References:
    Rajbhandari et al., ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models, SC 2020.
  """
  validation.check_transformation("inner", inner)
  if not isinstance(axis, str):
    raise TypeError(f"`axis` must be a mesh axis name (str), got {axis!r}.")
  if mesh is not None and not isinstance(mesh, Mesh):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh or None, got"
                    f" {type(mesh).__name__}.")
  if mesh is not None and axis not in mesh.axis_names:
    raise ValueError(f"`axis` {axis!r} is not an axis of the mesh"
                     f" {mesh.axis_names}.")
  if mesh is None and axis != "data":
    # (The default mesh names its one axis `axis`; any name works, but an
    # explicit other name without a mesh is most likely a mistake.)
    raise ValueError(f"`axis={axis!r}` needs an explicit `mesh` that has it;"
                     " without a mesh the default 1-D mesh's axis is 'data'.")
  inner = optax.with_extra_args_support(inner)

  def get_mesh():
    return mesh if mesh is not None else Mesh(np.asarray(jax.devices()), (axis,))

  def constrain(tree, m):
    size = m.shape[axis]

    def one(x):
      if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        return x
      return _put(x, NamedSharding(m, shard_spec(x.shape, size, axis)))
    return jax.tree.map(one, tree)

  def final_sharding(updates, m):
    if update_sharding is None:
      return jax.tree.map(lambda _: NamedSharding(m, P()), updates)
    if isinstance(update_sharding, (P, NamedSharding)):
      return jax.tree.map(lambda _: _named(update_sharding, m), updates)
    return jax.tree.map(lambda _, s: _named(s, m), updates, update_sharding)

  def init_fn(params):
    return constrain(inner.init(params), get_mesh())

  def update_fn(updates, state, params=None, **extra_args):
    m = get_mesh()
    target = final_sharding(updates, m)
    # Each device works on its slice: slicing the replicated gradient (and
    # params) to the state's layout is local, no communication.
    state, grads = constrain(state, m), constrain(updates, m)
    params = constrain(params, m) if params is not None else None
    updates, new_state = inner.update(grads, state, params, **extra_args)
    updates = constrain(updates, m)          # computed slice by slice ...
    updates = jax.tree.map(_put, updates, target)
    return updates, constrain(new_state, m)  # ... then all-gathered

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _put(x, sharding: NamedSharding):
  """``with_sharding_constraint`` on Auto meshes, ``reshard`` on Explicit
  ones (``jax.make_mesh``'s default axis type)."""
  types = getattr(sharding.mesh, "axis_types", None) or ()
  if any(t == jax.sharding.AxisType.Explicit for t in types):
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def _named(s, m):
  return s if isinstance(s, NamedSharding) else NamedSharding(m, s)
