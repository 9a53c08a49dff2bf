"""Gradient compression for data parallelism, with per-replica error feedback.

Each transformation here *is* the gradient all-reduce: put it first in an
``optax.chain`` inside ``jax.shard_map`` over the data axis and give it the
replica's **local** gradient (do not ``pmean`` the gradients yourself). What
crosses devices is the compressed payload (values + indices, int8 levels,
packed sign bits), gathered over ``axis_name`` and decoded on every replica;
the output is the same aggregated gradient estimate on all replicas.

Outside ``shard_map`` (``axis_name`` not bound) each behaves as the one-replica
case: the compressor and its error feedback run, nothing is communicated.

A complex leaf is compressed as its real view (``torch.view_as_real``: the
real and imaginary parts are separate real entries, so a complex leaf of
``n`` entries is ``2n`` real entries to sparsify, quantize or sign); its
error-feedback / momentum memory is real, shaped after the real view.

Every state reports ``comm_bytes`` (bytes one replica sends this step) and
``dense_bytes`` (what a dense all-reduce of the same gradient would send); see
``optzoo.communication_stats``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import complex_view
from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src.communication import _collectives as C

__all__ = [
    "CompressionState", "MajorityVoteState", "topk_compression",
    "randomk_compression", "qsgd", "ef_signsgd", "signsgd_majority_vote",
]


class CompressionState(NamedTuple):
  """State of the error-feedback compressors.

  Attributes:
    count: number of updates so far (int32).
    error: per-replica error-feedback memory, like the params with a leading
      replica axis of size 1 (``PartitionSpec(axis_name)`` in ``shard_map``);
      ``optax.MaskedNode()`` leaves when error feedback is off.
    key: PRNG key (random-k and QSGD; unused otherwise).
    comm_bytes: bytes one replica sent at the last update (int32).
    dense_bytes: bytes a dense all-reduce of the gradient sends (int32).
  """

  count: jax.Array
  error: Any
  key: jax.Array
  comm_bytes: jax.Array
  dense_bytes: jax.Array
  _per_replica = ("error",)


class MajorityVoteState(NamedTuple):
  """State of :func:`signsgd_majority_vote`.

  Attributes:
    count: number of updates so far (int32).
    momentum: per-replica momentum (leading replica axis of size 1).
    comm_bytes: bytes one replica sent at the last update (int32).
    dense_bytes: bytes a dense all-reduce of the gradient sends (int32).
  """

  count: jax.Array
  momentum: Any
  comm_bytes: jax.Array
  dense_bytes: jax.Array
  _per_replica = ("momentum",)


def _as_key(key: Any) -> jax.Array:
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.PRNGKey(int(key))
  return jnp.asarray(key)


def _check_key(key: Any) -> None:
  if isinstance(key, (bool, np.bool_)) or not (
      isinstance(key, (int, np.integer, jax.Array, np.ndarray))):
    raise TypeError(f"`key` must be an int seed or a PRNG key, got {key!r}.")


def _dense_bytes(params: Any) -> int:
  return int(sum(int(np.size(x)) * jnp.asarray(x).dtype.itemsize
                 for x in jax.tree.leaves(params)))


def _i32(x: int) -> jax.Array:
  return jnp.asarray(min(int(x), 2**31 - 1), jnp.int32)


def _flat(g: Any) -> jax.Array:
  """A leaf as a flat vector of reals in its compute dtype (complex: real view)."""
  g = jnp.asarray(g)
  return jnp.reshape(complex_view.real_view(g.astype(tree.compute_dtype(g))), (-1,))


def _unflat(x: jax.Array, g: Any) -> jax.Array:
  """The inverse of :func:`_flat`, in ``g``'s shape and dtype."""
  g = jnp.asarray(g)
  shape = g.shape + ((2,) if jnp.iscomplexobj(g) else ())
  return complex_view.from_real_view(jnp.reshape(x, shape), g).astype(g.dtype)


def _error_init(params: Any, on: bool) -> Any:
  """Per-replica memory like ``params`` (leading axis 1); ``MaskedNode`` if off.

  A complex leaf's memory is its real view (real, shape ``s + (2,)``).
  """
  def one(p):
    if not on:
      return optax.MaskedNode()
    p = jnp.asarray(p)
    shape = p.shape + ((2,) if jnp.iscomplexobj(p) else ())
    return jnp.zeros((1,) + shape, jnp.finfo(tree.compute_dtype(p)).dtype)
  return jax.tree.map(one, params)


def _ef_transform(leaf_fn, *, error_feedback: bool, key: Any, axis_name: Any):
  """The shared skeleton: p = g + e, compress/communicate p, e = p - local."""
  key = _as_key(key)

  def init_fn(params):
    return CompressionState(
        count=jnp.zeros([], jnp.int32), error=_error_init(params, error_feedback),
        key=key, comm_bytes=jnp.zeros([], jnp.int32),
        dense_bytes=_i32(_dense_bytes(params)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    n = C.axis_size(axis_name)
    world = 1 if n is None else n
    leaves, treedef = jax.tree.flatten(updates)
    errs = treedef.flatten_up_to(state.error)
    step_key = jax.random.fold_in(state.key, state.count)
    outs, new_errs, sent = [], [], 0
    for i, (g, e) in enumerate(zip(leaves, errs)):
      g = jnp.asarray(g)
      p = _flat(g)
      if error_feedback:
        p = p + jnp.reshape(e[0], (-1,))
      if p.size == 0:
        outs.append(g)
        new_errs.append(e)
        continue
      agg, local, nbytes = leaf_fn(p, jax.random.fold_in(step_key, i), n, world)
      sent += nbytes
      outs.append(_unflat(agg, g))
      new_errs.append(jnp.reshape(p - local, e.shape) if error_feedback else e)
    return treedef.unflatten(outs), CompressionState(
        count=optax.safe_increment(state.count),
        error=treedef.unflatten(new_errs), key=state.key,
        comm_bytes=_i32(sent), dense_bytes=state.dense_bytes)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _num_kept(size: int, ratio: float) -> int:
  return max(1, min(size, int(math.ceil(ratio * size))))


_PAPER_TOPK = ("Stich, Cordonnier & Jaggi, Sparsified SGD with Memory,"
               " NeurIPS 2018, https://arxiv.org/abs/1809.07599; Lin et al.,"
               " Deep Gradient Compression, ICLR 2018,"
               " https://arxiv.org/abs/1712.01887")


@registry.register(
    family="tool",
    summary="Top-k sparsified all-reduce with error feedback (values+indices"
    " all-gathered over the data axis).",
    paper=_PAPER_TOPK,
    reference="NumPy re-derivation (2 and 8 replicas)",
    verified="NumPy re-derivation, 8 replicas (tests/communication/test_communication.py)",
)
def topk_compression(
    ratio: float = 0.01,
    error_feedback: bool = True,
    axis_name: Any = "data",
) -> optax.GradientTransformationExtraArgs:
  r"""Top-k sparsification with error feedback, as the gradient all-reduce.

  On replica :math:`i`, per leaf (flattened, :math:`d` entries,
  :math:`k = \lceil \text{ratio}\cdot d \rceil`):

  .. math::

    p_i = g_i + e_i, \quad s_i = \mathrm{top}_k(p_i), \quad e_i \leftarrow p_i - s_i,
    \qquad \hat g = \frac{1}{n}\sum_{i=1}^n s_i

  where :math:`\mathrm{top}_k` keeps the :math:`k` entries of largest
  magnitude. Each replica sends :math:`k` values and :math:`k` int32 indices
  (all-gather over ``axis_name``), every replica scatter-adds them. This is
  the memory-SGD compressor of Stich et al. (2018) and the sparsification of
  DGC (Lin et al., 2018) without DGC's momentum correction, local clipping and
  warm-up schedule (compose those with other transformations).

  Args:
    ratio: fraction of entries kept per leaf, in (0, 1].
    error_feedback: keep the residual :math:`e_i` (per replica) and add it
      back next step; without it the dropped mass is lost.
    axis_name: the mesh axis the gradients are reduced over. Unbound (outside
      ``shard_map``): one replica.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state reports
    ``comm_bytes`` and ``dense_bytes``.

  References:
    Stich, Cordonnier & Jaggi, `Sparsified SGD with Memory
    <https://arxiv.org/abs/1809.07599>`_, NeurIPS 2018.
    Lin et al., `Deep Gradient Compression <https://arxiv.org/abs/1712.01887>`_,
    ICLR 2018.
  """
  validation.check_unit_interval("ratio", ratio, low_open=True)
  validation.check_bool("error_feedback", error_feedback)

  def leaf_fn(p, key, n, world):
    del key
    d = p.size
    k = _num_kept(d, float(ratio))
    _, idx = jax.lax.top_k(jnp.abs(p), k)
    vals = p[idx]
    local = jnp.zeros_like(p).at[idx].set(vals)
    all_idx = C.all_gather(idx, axis_name, n).reshape(-1)
    all_vals = C.all_gather(vals, axis_name, n).reshape(-1)
    agg = jnp.zeros(p.shape, p.dtype).at[all_idx].add(all_vals) / world
    return agg, local, k * (p.dtype.itemsize + 4)

  return _ef_transform(leaf_fn, error_feedback=error_feedback, key=0,
                       axis_name=axis_name)


@registry.register(
    family="tool",
    summary="Random-k sparsified all-reduce (indices from a shared key) with"
    " error feedback.",
    paper="Stich, Cordonnier & Jaggi, Sparsified SGD with Memory, NeurIPS"
    " 2018, https://arxiv.org/abs/1809.07599",
    reference="NumPy re-derivation (same indices, 2 and 8 replicas)",
    verified="NumPy re-derivation, 8 replicas (tests/communication/test_communication.py)",
)
def randomk_compression(
    ratio: float = 0.01,
    error_feedback: bool = True,
    key: Any = 0,
    axis_name: Any = "data",
) -> optax.GradientTransformationExtraArgs:
  r"""Random-k sparsification with error feedback, as the gradient all-reduce.

  Every replica keeps the same :math:`k = \lceil\text{ratio}\cdot d\rceil`
  random coordinates of :math:`p_i = g_i + e_i` (the positions of the
  :math:`k` largest of :math:`d` uniforms drawn from ``fold_in(key, step)``:
  a uniformly random :math:`k`-subset, and no index is sent), the :math:`k`
  values are averaged with one ``pmean`` of size :math:`k`, and
  :math:`e_i \leftarrow p_i - \mathrm{rand}_k(p_i)`. Without error feedback
  the kept values are scaled by :math:`d/k` (the unbiased estimator).

  Args:
    ratio: fraction of entries kept per leaf, in (0, 1].
    error_feedback: keep the per-replica residual.
    key: int seed or PRNG key; the same on all replicas.
    axis_name: the mesh axis reduced over (unbound: one replica).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Stich, Cordonnier & Jaggi, `Sparsified SGD with Memory
    <https://arxiv.org/abs/1809.07599>`_, NeurIPS 2018.
  """
  validation.check_unit_interval("ratio", ratio, low_open=True)
  validation.check_bool("error_feedback", error_feedback)
  _check_key(key)

  def leaf_fn(p, k_leaf, n, world):
    del world
    d = p.size
    k = _num_kept(d, float(ratio))
    # A uniformly random k-subset: the k largest of d iid uniforms.
    # (jax.random.choice(replace=False) draws the same distribution by a full
    # permutation: a sort of d keys, ~30x slower on CPU, 5.7 s for a 2048^2
    # leaf.)
    idx = jax.lax.top_k(jax.random.uniform(k_leaf, (d,), jnp.float32), k)[1]
    vals = p[idx]
    scale = 1.0 if error_feedback else d / k
    local = jnp.zeros_like(p).at[idx].set(vals * scale)
    agg = jnp.zeros(p.shape, p.dtype).at[idx].set(
        C.pmean(vals, axis_name, n) * scale)
    return agg, local, k * p.dtype.itemsize

  return _ef_transform(leaf_fn, error_feedback=error_feedback, key=key,
                       axis_name=axis_name)


@registry.register(
    family="tool",
    summary="QSGD stochastic quantization (int8 levels + a norm per leaf)"
    " as the all-reduce.",
    paper="Alistarh et al., QSGD: Communication-Efficient SGD via Gradient"
    " Quantization and Encoding, NeurIPS 2017, https://arxiv.org/abs/1610.02132",
    reference="NumPy re-derivation (same uniforms); unbiasedness test",
    verified="NumPy re-derivation, 8 replicas (tests/communication/test_communication.py)",
)
def qsgd(
    num_levels: int = 16,
    error_feedback: bool = False,
    key: Any = 0,
    axis_name: Any = "data",
) -> optax.GradientTransformationExtraArgs:
  r"""QSGD stochastic quantization, as the gradient all-reduce.

  Per leaf :math:`v` (on each replica, :math:`s` = ``num_levels``):

  .. math::

    Q_s(v)_j = \lVert v\rVert_2\,\mathrm{sign}(v_j)\,\frac{\xi_j}{s}, \quad
    \xi_j = \ell_j + \mathrm{Bernoulli}\!\left(\frac{s|v_j|}{\lVert v\rVert_2}
    - \ell_j\right),\ \ell_j = \left\lfloor\frac{s|v_j|}{\lVert v\rVert_2}
    \right\rfloor

  an unbiased estimate (Alistarh et al., 2017, Sec. 3.1, one bucket per leaf).
  Each replica sends its norm and the signed levels as int8 (so
  :math:`s \le 127`; the paper's Elias coding of the levels is not done),
  every replica decodes and averages. The uniforms are drawn from ``key``
  folded with the step, the replica index and the leaf. With
  ``error_feedback=True`` the quantization residual is kept per replica
  (off by default: QSGD is unbiased as published).

  Args:
    num_levels: :math:`s`, the number of quantization levels, in [1, 127].
    error_feedback: keep the per-replica quantization residual.
    key: int seed or PRNG key.
    axis_name: the mesh axis reduced over (unbound: one replica).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Alistarh et al., `QSGD: Communication-Efficient SGD via Gradient
    Quantization and Encoding <https://arxiv.org/abs/1610.02132>`_, NeurIPS 2017.
  """
  validation.check_int("num_levels", num_levels, minimum=1)
  if num_levels > 127:
    raise ValueError(f"`num_levels` must be <= 127 (int8 levels), got {num_levels!r}.")
  validation.check_bool("error_feedback", error_feedback)
  _check_key(key)
  s = int(num_levels)

  def leaf_fn(p, k_leaf, n, world):
    del world
    k_rep = jax.random.fold_in(k_leaf, C.replica_index(axis_name, n))
    u = jax.random.uniform(k_rep, p.shape, p.dtype)
    norm = jnp.sqrt(jnp.sum(p * p))
    safe = jnp.where(norm > 0, norm, 1)
    level = jnp.abs(p) / safe * s
    low = jnp.floor(level)
    xi = low + (u < level - low).astype(p.dtype)
    q = (jnp.sign(p) * xi).astype(jnp.int8)
    local = norm * q.astype(p.dtype) / s
    all_q = C.all_gather(q, axis_name, n).astype(p.dtype)
    all_norm = C.all_gather(norm, axis_name, n)
    agg = C.replica_mean(all_norm[:, None] * all_q) / s
    return agg, local, p.size + p.dtype.itemsize

  return _ef_transform(leaf_fn, error_feedback=error_feedback, key=key,
                       axis_name=axis_name)


@registry.register(
    family="tool",
    summary="EF-SignSGD: scaled sign compression (2 bits/entry + a scale)"
    " with error feedback.",
    paper="Karimireddy et al., Error Feedback Fixes SignSGD and other Gradient"
    " Compression Schemes, ICML 2019, https://arxiv.org/abs/1901.09847",
    reference="NumPy re-derivation (Algorithm 1)",
    verified="NumPy re-derivation, 8 replicas (tests/communication/test_communication.py)",
)
def ef_signsgd(
    layerwise: bool = False,
    axis_name: Any = "data",
) -> optax.GradientTransformationExtraArgs:
  r"""EF-SignSGD (Karimireddy et al., 2019, Algorithm 1), as the all-reduce.

  On replica :math:`i`:

  .. math::

    p_i = g_i + e_i,\quad \Delta_i = \frac{\lVert p_i\rVert_1}{d}\,
    \mathrm{sign}(p_i),\quad e_i \leftarrow p_i - \Delta_i,\qquad
    \hat g = \frac1n\sum_i \Delta_i

  with :math:`d` the total number of entries (``layerwise=True``: one scale
  per leaf). Each replica sends the signs (2 bits per entry, so that
  :math:`\mathrm{sign}(0) = 0`) and its scale. The paper applies the step
  size before compressing (:math:`p = \gamma g + e`); here the compressor acts
  on the gradient, which is the same algorithm for a constant step size
  (the memory is scaled by :math:`1/\gamma`). Chain an optimizer after it,
  e.g. ``optax.chain(ef_signsgd(), optzoo.sgd(lr))``.

  Args:
    layerwise: one scale per leaf instead of one for the whole gradient.
    axis_name: the mesh axis reduced over (unbound: one replica).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Karimireddy et al., `Error Feedback Fixes SignSGD and other Gradient
    Compression Schemes <https://arxiv.org/abs/1901.09847>`_, ICML 2019.
  """
  validation.check_bool("layerwise", layerwise)

  def init_fn(params):
    return CompressionState(
        count=jnp.zeros([], jnp.int32), error=_error_init(params, True),
        key=jax.random.PRNGKey(0), comm_bytes=jnp.zeros([], jnp.int32),
        dense_bytes=_i32(_dense_bytes(params)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    n = C.axis_size(axis_name)
    leaves, treedef = jax.tree.flatten(updates)
    errs = treedef.flatten_up_to(state.error)
    ps = [_flat(g) + e[0].reshape(-1) for g, e in zip(leaves, errs)]
    if not layerwise:
      total = sum(p.size for p in ps)
      l1 = sum((jnp.sum(jnp.abs(p)) for p in ps), jnp.zeros([], ps[0].dtype)
               ) if ps else 0.0
      scales = [l1 / max(total, 1)] * len(ps)
    else:
      scales = [jnp.sum(jnp.abs(p)) / max(p.size, 1) for p in ps]
    outs, new_errs, sent = [], [], 0
    for g, e, p, sc in zip(leaves, errs, ps, scales):
      g = jnp.asarray(g)
      if p.size == 0:
        outs.append(g)
        new_errs.append(e)
        continue
      sc = sc.astype(p.dtype)
      delta = sc * jnp.sign(p)
      packed = C.pack_signs(p)
      signs = C.unpack_signs(C.all_gather(packed, axis_name, n), p.size, p.dtype)
      all_sc = C.all_gather(sc, axis_name, n)
      agg = C.replica_mean(all_sc[:, None] * signs)
      sent += C.packed_sign_bytes(p.size) + (p.dtype.itemsize if layerwise else 0)
      outs.append(_unflat(agg, g))
      new_errs.append((p - delta).reshape(e.shape))
    if not layerwise and ps:
      sent += ps[0].dtype.itemsize
    return treedef.unflatten(outs), CompressionState(
        count=optax.safe_increment(state.count),
        error=treedef.unflatten(new_errs), key=state.key,
        comm_bytes=_i32(sent), dense_bytes=state.dense_bytes)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register(
    family="tool",
    summary="signSGD / Signum with majority vote: sign(sum_i sign(m_i)) over"
    " the data axis.",
    paper="Bernstein et al., signSGD with Majority Vote is Communication"
    " Efficient and Fault Tolerant, ICLR 2019, https://arxiv.org/abs/1810.05291",
    reference="NumPy re-derivation",
    verified="NumPy re-derivation, 8 replicas (tests/communication/test_communication.py)",
)
def signsgd_majority_vote(
    momentum: float = 0.0,
    axis_name: Any = "data",
) -> optax.GradientTransformationExtraArgs:
  r"""signSGD with majority vote (Bernstein et al., 2018/2019).

  Replica :math:`i` keeps :math:`m_i \leftarrow \beta m_i + (1-\beta) g_i`
  (Signum; ``momentum = 0`` gives :math:`m_i = g_i`, signSGD), sends
  :math:`\mathrm{sign}(m_i)` (2 bits per entry) and every replica outputs the
  vote :math:`\mathrm{sign}(\sum_i \mathrm{sign}(m_i))` (ties give 0). The
  output is a direction of entries in {-1, 0, 1}: chain a learning rate after
  it (``optax.chain(signsgd_majority_vote(0.9), optzoo.sgd(lr))``).

  Args:
    momentum: :math:`\beta` in [0, 1), the per-replica momentum.
    axis_name: the mesh axis voted over (unbound: one replica).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Bernstein, Zhao, Azizzadenesheli & Anandkumar, `signSGD with Majority Vote
    is Communication Efficient and Fault Tolerant
    <https://arxiv.org/abs/1810.05291>`_, ICLR 2019.
  """
  validation.check_beta("momentum", momentum)

  def init_fn(params):
    return MajorityVoteState(
        count=jnp.zeros([], jnp.int32), momentum=_error_init(params, True),
        comm_bytes=jnp.zeros([], jnp.int32),
        dense_bytes=_i32(_dense_bytes(params)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    n = C.axis_size(axis_name)
    leaves, treedef = jax.tree.flatten(updates)
    moms = treedef.flatten_up_to(state.momentum)
    outs, new_m, sent = [], [], 0
    for g, m in zip(leaves, moms):
      g = jnp.asarray(g)
      mm = m[0].reshape(-1)
      b = jnp.asarray(momentum, mm.dtype)
      mm = b * mm + (1 - b) * _flat(g).astype(mm.dtype)
      new_m.append(mm.reshape(m.shape))
      if mm.size == 0:
        outs.append(g)
        continue
      votes = C.unpack_signs(C.all_gather(C.pack_signs(mm), axis_name, n),
                             mm.size, jnp.int32)
      outs.append(_unflat(jnp.sign(jnp.sum(votes, axis=0)).astype(mm.dtype), g))
      sent += C.packed_sign_bytes(mm.size)
    return treedef.unflatten(outs), MajorityVoteState(
        count=optax.safe_increment(state.count),
        momentum=treedef.unflatten(new_m), comm_bytes=_i32(sent),
        dense_bytes=state.dense_bytes)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
