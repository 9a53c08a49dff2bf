"""PowerSGD (Vogels et al., 2019) with torch ``powerSGD_hook`` semantics."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src.communication import _collectives as C
from optzoo._src.communication.compression import (_as_key, _check_key,
                                                   _dense_bytes, _i32)

__all__ = ["PowerSGDState", "powersgd"]


class PowerSGDState(NamedTuple):
  """State of :func:`powersgd`.

  Attributes:
    count: number of updates so far (int32); compression starts when it
      reaches ``start_iter``.
    error: per-replica error feedback, like the params with a leading replica
      axis of size 1 (``optax.MaskedNode()`` when ``use_error_feedback=False``).
    q: per leaf, the ``(m, r)`` matrix the next compressed step starts from
      (the warm start; random at init); ``optax.MaskedNode()`` for
      uncompressed leaves.
      The same on every replica.
    key: PRNG key for fresh ``Q`` (init, and every step without warm start).
    comm_bytes: bytes one replica sent at the last update (int32).
    dense_bytes: bytes a dense all-reduce of the gradient sends (int32).
  """

  count: jax.Array
  error: Any
  q: Any
  key: jax.Array
  comm_bytes: jax.Array
  dense_bytes: jax.Array
  _per_replica = ("error",)


def _plan(shape: tuple, rank: int, min_rate: float):
  """``(compress, n, m, r)`` as torch's ``_should_compress`` on ``view(n, -1)``."""
  if len(shape) == 0:
    return False, 1, 1, 0
  n = int(shape[0])
  m = int(np.prod(shape[1:])) if len(shape) > 1 else 1
  r = min(n, m, rank)
  compress = (n + m) * r * min_rate < n * m
  return compress, n, m, r


def orthogonalize(mats: jax.Array, epsilon: Any = 0.0) -> jax.Array:
  """Gram-Schmidt on the columns of a batch ``(b, n, r)``, as torch's hook.

  ``col /= ||col|| (+ epsilon)`` then the later columns lose their component
  along it. With ``epsilon = 0`` an all-zero column stays 0 (torch would
  divide 0 by 0).
  """
  r = mats.shape[-1]
  cols = [mats[..., j] for j in range(r)]
  for j in range(r):
    c = cols[j]
    norm = jnp.sqrt(jnp.sum(c * c, axis=-1, keepdims=True))
    if isinstance(epsilon, (int, float)) and epsilon == 0:
      c = jnp.where(norm > 0, c / jnp.where(norm > 0, norm, 1), 0)
    else:
      c = c / (norm + epsilon)
    cols[j] = c
    for k in range(j + 1, r):
      cols[k] = cols[k] - jnp.sum(c * cols[k], axis=-1, keepdims=True) * c
  return jnp.stack(cols, axis=-1)


@registry.register(
    family="tool",
    summary="PowerSGD low-rank gradient all-reduce (torch powerSGD_hook"
    " semantics): error feedback, warm start, uncompressed warm-up.",
    paper="Vogels, Karimireddy & Jaggi, PowerSGD: Practical Low-Rank Gradient"
    " Compression for Distributed Optimization, NeurIPS 2019,"
    " https://arxiv.org/abs/1905.13727",
    reference="torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook"
    " (2-rank gloo fixtures)",
    verified="torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook 2.13, 2-rank gloo, float64, 104 steps (tests/communication/test_communication.py)",
)
def powersgd(
    rank: int = 1,
    start_iter: int = 1000,
    min_compression_rate: float = 2.0,
    use_error_feedback: bool = True,
    warm_start: bool = True,
    orthogonalization_epsilon: float = 0.0,
    batch_tensors_with_same_shape: bool = False,
    key: Any = 0,
    axis_name: Any = "data",
) -> optax.GradientTransformationExtraArgs:
  r"""PowerSGD rank-:math:`r` gradient compression, as the all-reduce.

  Give it each replica's local gradient inside ``jax.shard_map`` over
  ``axis_name``; it returns the aggregated estimate (the same on all
  replicas). The algorithm is that of ``torch``'s ``powerSGD_hook`` on one
  bucket holding all leaves, with the same defaults:

  * for the first ``start_iter`` steps: plain mean all-reduce (no error
    feedback, no compression);
  * then, with :math:`M_i = g_i + e_i` (error feedback), each leaf viewed as
    the matrix ``(shape[0], -1)`` is compressed when
    :math:`(n + m)\,r'\cdot\text{min\_compression\_rate} < nm`,
    :math:`r' = \min(n, m, r)`; other leaves (scalars, and with the default
    rate all 1-D leaves) are mean all-reduced uncompressed, all of them in one
    concatenated ``pmean``;
  * for the compressed ones: :math:`Q \leftarrow \mathrm{orth}(Q)`,
    :math:`P = M_i Q`, :math:`P \leftarrow \mathrm{orth}(\sum_i P)`,
    :math:`Q = \frac1n \sum_i M_i^\top P`, :math:`\hat M = P Q^\top`
    (the :math:`P` and :math:`Q` of all leaves each travel in one ``psum``);
  * :math:`e_i \leftarrow M_i - \hat M` on every leaf (uncompressed leaves
    included, as in torch: there it is the replica's deviation from the
    mean);
  * warm start keeps :math:`Q` for the next step; without it a fresh
    Gaussian :math:`Q` is drawn every step (``key`` folded with the step).

  ``orth`` is Gram-Schmidt (torch uses it for :math:`r \le 2` and a QR for
  :math:`r > 2`, which differs only by column signs that cancel in
  :math:`PQ^\top`). The initial :math:`Q` is Gaussian from ``key``
  (torch draws it from its own generator: to reproduce a torch run, write
  torch's initial Q into ``state.q``). ``batch_tensors_with_same_shape``
  stacks same-shaped matrices into one batched matmul, as torch's flag; the
  numbers do not change. The state reports ``comm_bytes`` per step: the
  uncompressed leaves plus :math:`(n + m)\,r'` per compressed leaf.

  Args:
    rank: :math:`r` >= 1, the approximation rank.
    start_iter: steps of uncompressed all-reduce before compressing
      (torch's ``start_powerSGD_iter``; > 1 when error feedback or warm start
      is on, as torch requires).
    min_compression_rate: compress a leaf only if it saves more than this
      factor.
    use_error_feedback: keep the per-replica residual.
    warm_start: reuse the last :math:`Q` (else a fresh random one per step).
    orthogonalization_epsilon: added to the column norms in Gram-Schmidt.
    batch_tensors_with_same_shape: batch same-shaped leaves.
    key: int seed or PRNG key for the random :math:`Q`.
    axis_name: the mesh axis reduced over (unbound: one replica).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Vogels, Karimireddy & Jaggi, `PowerSGD: Practical Low-Rank Gradient
    Compression for Distributed Optimization <https://arxiv.org/abs/1905.13727>`_,
    NeurIPS 2019.
  """
  _check_args(rank, start_iter, min_compression_rate, use_error_feedback,
              warm_start, orthogonalization_epsilon,
              batch_tensors_with_same_shape, key)
  key0 = _as_key(key)
  rate = float(min_compression_rate)

  def plans_of(leaves):
    return [_plan(tuple(jnp.shape(x)), int(rank), rate) for x in leaves]

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    plans = plans_of(leaves)
    dts = [tree.compute_dtype(x) for x in leaves]
    err = [jnp.zeros((1,) + jnp.shape(x), dt) if use_error_feedback
           else optax.MaskedNode() for x, dt in zip(leaves, dts)]
    return PowerSGDState(
        count=jnp.zeros([], jnp.int32), error=treedef.unflatten(err),
        q=treedef.unflatten(_fresh_q(jax.random.fold_in(key0, 0), plans, dts)),
        key=key0, comm_bytes=jnp.zeros([], jnp.int32),
        dense_bytes=_i32(_dense_bytes(params)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    n = C.axis_size(axis_name)
    leaves, treedef = jax.tree.flatten(updates)
    leaves = [jnp.asarray(g) for g in leaves]
    plans = plans_of(leaves)
    dts = [tree.compute_dtype(g) for g in leaves]
    errs = treedef.flatten_up_to(state.error)
    qs = treedef.flatten_up_to(state.q)

    def dense_branch(ops):
      gs, es, qq = ops
      return _dense_mean(gs, dts, axis_name, n), es, qq

    def compressed_branch(ops):
      return _compressed_step(
          *ops, plans, dts, use_error_feedback=use_error_feedback,
          batch_same_shape=batch_tensors_with_same_shape,
          epsilon=orthogonalization_epsilon, axis_name=axis_name, n=n)

    ops = (leaves, list(errs), list(qs))
    if start_iter > 0:
      outs, new_e, new_q = C.cond(state.count < start_iter, dense_branch,
                                  compressed_branch, ops, axis_name, n)
    else:
      outs, new_e, new_q = compressed_branch(ops)
    if not warm_start:
      nxt = _fresh_q(jax.random.fold_in(state.key, state.count + 1), plans, dts)
      new_q = jax.tree.map(lambda a, b: jnp.where(state.count < start_iter, a, b),
                           list(qs), nxt)
    outs = [o.astype(g.dtype) for o, g in zip(outs, leaves)]
    sent = jnp.where(state.count < start_iter, _i32(_dense_bytes(leaves)),
                     _i32(_compressed_bytes(leaves, plans, dts)))
    return treedef.unflatten(outs), PowerSGDState(
        count=optax.safe_increment(state.count), error=treedef.unflatten(new_e),
        q=treedef.unflatten(new_q), key=state.key, comm_bytes=sent,
        dense_bytes=state.dense_bytes)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_args(rank, start_iter, min_compression_rate, use_error_feedback,
                warm_start, orthogonalization_epsilon,
                batch_tensors_with_same_shape, key):
  """Raises on an invalid :func:`powersgd` argument."""
  validation.check_int("rank", rank, minimum=1)
  validation.check_int("start_iter", start_iter, minimum=0)
  validation.check_nonneg("min_compression_rate", min_compression_rate)
  validation.check_bool("use_error_feedback", use_error_feedback)
  validation.check_bool("warm_start", warm_start)
  validation.check_nonneg("orthogonalization_epsilon", orthogonalization_epsilon)
  validation.check_bool("batch_tensors_with_same_shape", batch_tensors_with_same_shape)
  _check_key(key)
  if (use_error_feedback or warm_start) and start_iter <= 1:
    raise ValueError(
        "`start_iter` must be > 1 when `use_error_feedback` or `warm_start`"
        f" is on (as torch's powerSGD_hook), got {start_iter!r}.")


def _fresh_q(key, plans, dtypes):
  """A Gaussian ``(m, r)`` ``Q`` per compressed leaf (``key`` folded with the
  leaf's index); ``optax.MaskedNode()`` for the uncompressed ones."""
  return [jax.random.normal(jax.random.fold_in(key, i), (pl[2], pl[3]), dt)
          if pl[0] else optax.MaskedNode()
          for i, (pl, dt) in enumerate(zip(plans, dtypes))]


def _compressed_bytes(leaves, plans, dtypes) -> int:
  """Bytes one replica sends in a compressed step: ``(n + m) r'`` per
  compressed leaf, the size of the others, at the widest compute itemsize."""
  csize = max([d.itemsize for d in dtypes] or [4])
  comp_elems = sum((pl[1] + pl[2]) * pl[3] if pl[0] else int(np.size(g))
                   for pl, g in zip(plans, leaves))
  return comp_elems * csize


def _dense_mean(gs, dtypes, axis_name, n):
  """The warm-up path: each leaf mean all-reduced in its compute dtype."""
  return [C.pmean(g.astype(dt), axis_name, n) for g, dt in zip(gs, dtypes)]


def _mean_uncompressed(ms, plans, dtypes, axis_name, n):
  """``{i: mean over replicas of ms[i]}`` for the uncompressed leaves ``i``,
  all of them in one concatenated ``psum``."""
  world = 1 if n is None else n
  unc = [i for i, pl in enumerate(plans) if not pl[0]]
  if not unc:
    return {}
  flat = jnp.concatenate([ms[i].reshape(-1).astype(jnp.result_type(*[dtypes[j] for j in unc]))
                          for i in unc])
  flat = C.psum(flat, axis_name, n) / world
  parts, _ = _split(flat, [ms[i] for i in unc], 0)
  return {i: x.astype(dtypes[i]) for i, x in zip(unc, parts)}


def _leaf_groups(plans, dtypes, batch_same_shape):
  """The compressed leaves' indices in groups that share one batched matmul:
  same ``(n, m, r')`` and dtype when ``batch_same_shape``, else one each."""
  groups: dict = {}
  for i, pl in enumerate(plans):
    if pl[0]:
      gkey = (pl[1:], dtypes[i]) if batch_same_shape else i
      groups.setdefault(gkey, []).append(i)
  return list(groups.values())


def _power_step(mats, qmats, epsilon, axis_name, n):
  """One power step on batches ``M (b, n, m)`` from orthogonal ``Q (b, m, r)``.

  ``P = orth(sum_i M_i Q)`` and ``Q = mean_i M_i^T P``; the ``P`` (then the
  ``Q``) of all batches travel in one ``psum``. Returns ``(ps, qs)``.
  """
  world = 1 if n is None else n
  ps = [jnp.einsum("bnm,bmr->bnr", mt, q) for mt, q in zip(mats, qmats)]
  pdt = jnp.result_type(*[p.dtype for p in ps])
  flat = C.psum(jnp.concatenate([p.reshape(-1).astype(pdt) for p in ps]),
                axis_name, n)
  ps, _ = _split(flat, ps, 0)
  ps = [orthogonalize(p, epsilon) for p in ps]
  qn = [jnp.einsum("bnm,bnr->bmr", mt, p) for mt, p in zip(mats, ps)]
  flat = C.psum(jnp.concatenate([q.reshape(-1).astype(pdt) for q in qn]),
                axis_name, n) / world
  qn, _ = _split(flat, qn, 0)
  return ps, qn


def _low_rank_mean(ms, qq, plans, dtypes, batch_same_shape, epsilon,
                   axis_name, n):
  """``({i: P Q^T}, new qq)`` for the compressed leaves ``i`` of ``ms``,
  starting from the ``Q`` in ``qq`` (which keeps the new ``Q``)."""
  groups = _leaf_groups(plans, dtypes, batch_same_shape)
  mats = [jnp.stack([ms[i].reshape(plans[i][1], plans[i][2]) for i in grp])
          for grp in groups]
  qmats = [orthogonalize(jnp.stack([qq[i] for i in grp]), epsilon)
           for grp in groups]
  ps, qn = _power_step(mats, qmats, epsilon, axis_name, n)
  out, qq = {}, list(qq)
  for grp, p, q in zip(groups, ps, qn):
    approx = jnp.einsum("bnr,bmr->bnm", p, q)
    for b, i in enumerate(grp):
      out[i] = approx[b].reshape(ms[i].shape).astype(dtypes[i])
      qq[i] = q[b].astype(qq[i].dtype)
  return out, qq


def _compressed_step(gs, es, qq, plans, dtypes, *, use_error_feedback,
                     batch_same_shape, epsilon, axis_name, n):
  """A compressed step: ``(outs, errors, qs)``.

  ``M = g + e`` (error feedback), the uncompressed leaves mean all-reduced,
  the others as ``P Q^T``; the new error is ``M - out`` on every leaf.
  """
  ms = [g.astype(dt) for g, dt in zip(gs, dtypes)]
  if use_error_feedback:
    ms = [m + e[0] for m, e in zip(ms, es)]
  outs = list(ms)
  for i, o in _mean_uncompressed(ms, plans, dtypes, axis_name, n).items():
    outs[i] = o
  if any(pl[0] for pl in plans):
    approx, qq = _low_rank_mean(ms, qq, plans, dtypes, batch_same_shape,
                                epsilon, axis_name, n)
    for i, o in approx.items():
      outs[i] = o
  if use_error_feedback:
    es = [(m - o)[None] for m, o in zip(ms, outs)]
  return outs, es, qq


def _split(flat, like, off):
  out = []
  for x in like:
    out.append(flat[off:off + x.size].reshape(x.shape))
    off += x.size
  return out, off
