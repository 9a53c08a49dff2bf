"""8-bit optimizer state: block-wise dynamic (tree) quantization.

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization", ICLR 2022, https://arxiv.org/abs/2110.02861.

:func:`quantize_state` wraps any transformation and stores its large floating
state buffers (Adam's ``mu`` / ``nu``, RMSProp's ``nu``, a momentum trace, ...)
as one ``uint8`` code per element plus one float32 absmax scale per block of
``block_size`` elements. ``update`` dequantizes, runs the inner update in full
precision (the returned update is computed from the full-precision new
moments, as in the paper's kernels) and quantizes the new state again.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import alias
from optzoo._src import registry
from optzoo._src import validation

__all__ = [
    "QuantizedArray",
    "quantize_state",
    "adam_8bit",
    "adamw_8bit",
    "dynamic_quantization_map",
    "quantize_blockwise",
    "dequantize_blockwise",
    "state_nbytes",
]

# State fields (NamedTuple attribute names) that hold non-negative second
# moments: stored with the unsigned map (one more bit of precision).
SECOND_MOMENT_FIELDS = ("nu", "nu_max", "sum_of_squares", "exp_avg_sq",
                        "max_exp_avg_sq", "nu_hat", "v", "v_max")


@functools.lru_cache(maxsize=None)
def dynamic_quantization_map(signed: bool = True) -> np.ndarray:
  r"""The 256 values of the 8-bit dynamic tree quantization map, sorted.

  A code is read as ``[sign] 0...0 1 f...f``: the number :math:`E` of leading
  zeros after the sign bit is a base-10 exponent, the indicator bit ``1`` ends
  it and the remaining bits are a linear fraction in (0.1, 1). With 7
  non-sign bits, exponent :math:`E = 6 - i` (:math:`i = 0, \dots, 6`) leaves
  :math:`i` fraction bits, i.e. :math:`2^i` values

  .. math::  10^{i-6}\,\bigl(0.1 + 0.9\,(k + \tfrac12) / 2^i\bigr),
             \qquad k = 0, \dots, 2^i - 1,

  (the midpoints of :math:`2^i` equal bins of [0.1, 1]), mirrored for the
  negative sign, plus 0 and 1 (the block's absmax maps exactly):
  :math:`2 \cdot 127 + 2 = 256` values. The **unsigned** map (for the
  second moment, which is >= 0) uses the sign bit as one more fraction bit:
  :math:`2^{i+1}` values per decade, no negatives: :math:`254 + 2 = 256`.

  As in the paper's code (bitsandbytes ``create_dynamic_map``) the signed map
  has +1 but not -1: a block whose absmax is attained by a negative entry
  stores it as the largest negative value, -0.99297 (relative error 0.7 %).

  Returns:
    float32 array of shape (256,), strictly increasing.
  """
  values = [0.0, 1.0]
  for i in range(7):
    n = 2 ** (i + (0 if signed else 1))
    k = np.arange(n, dtype=np.float64)
    mids = 0.1 + 0.9 * (k + 0.5) / n
    vals = (10.0 ** (i - 6)) * mids
    values.extend(vals.tolist())
    if signed:
      values.extend((-vals).tolist())
  out = np.sort(np.asarray(values, np.float64)).astype(np.float32)
  assert out.shape == (256,) and np.all(np.diff(out) > 0)
  return out


@functools.lru_cache(maxsize=None)
def _boundaries(signed: bool) -> np.ndarray:
  """Midpoints between consecutive map values (nearest rounding)."""
  m = dynamic_quantization_map(signed).astype(np.float64)
  return ((m[1:] + m[:-1]) / 2).astype(np.float32)


class QuantizedArray(NamedTuple):
  """A state buffer stored block-wise in 8 bits.

  Attributes:
    codes: ``uint8`` of shape ``(num_blocks, block)``: indices into
      :func:`dynamic_quantization_map`; the flattened buffer, zero-padded to a
      whole number of blocks (``block = min(block_size, size)``).
    absmax: float32 of shape ``(num_blocks,)``: each block's max ``|x|``.
  """

  codes: jax.Array
  absmax: jax.Array


def _layout(size: int, block_size: int) -> tuple[int, int]:
  block = max(1, min(block_size, size))
  return -(-size // block), block


def quantize_blockwise(x: jax.Array, block_size: int = 2048,
                       signed: bool = True) -> QuantizedArray:
  """Block-wise dynamic quantization of ``x`` (any shape, floating).

  The flattened ``x`` is cut into blocks of ``block_size`` contiguous entries
  (zero-padded), each block is divided by its absmax (float32) and every
  entry is rounded to the nearest value of the dynamic map (ties to the lower
  code). A block of zeros has absmax 0 and decodes to zeros.
  """
  size = int(np.prod(np.shape(x)))
  nb, block = _layout(size, block_size)
  flat = jnp.ravel(x).astype(jnp.float32)
  flat = jnp.pad(flat, (0, nb * block - size))
  blocks = flat.reshape(nb, block)
  absmax = jnp.max(jnp.abs(blocks), axis=1)
  scale = jnp.where(absmax > 0, absmax, jnp.ones_like(absmax))
  y = blocks / scale[:, None]
  codes = _nearest_code(y, signed)
  return QuantizedArray(codes=codes.astype(jnp.uint8), absmax=absmax)


def _nearest_code(y: jax.Array, signed: bool) -> jax.Array:
  """Index of the nearest map value to each ``y`` in [-1, 1] (ties: lower).

  Equal to ``searchsorted(boundaries, y)`` but without a search: the map's
  structure gives a candidate directly (decade by six compares, then the
  linear bin inside the decade), which is within one index of the answer;
  comparing ``y`` with the two boundaries around the candidate settles it.
  Two gathers from a 255-entry table per element, no loop.
  """
  s = 0 if signed else 1
  base = 128 if signed else 1            # index of the smallest positive value
  a = jnp.abs(y) if signed else jnp.maximum(y, 0)
  with jax.numpy_dtype_promotion("standard"):
    # Decade i (values in [10^(i-7), 10^(i-6))) and t = a * 10^(6-i), by
    # compares and selects (no log / pow: cheap and vectorized everywhere).
    i = jnp.zeros(y.shape, jnp.int32)
    scale = jnp.full(y.shape, 1e6, y.dtype)
    for j in range(1, 7):
      above = a >= jnp.asarray(10.0 ** (j - 7), y.dtype)
      i = i + above.astype(jnp.int32)
      scale = jnp.where(above, jnp.asarray(10.0 ** (6 - j), y.dtype), scale)
    n = jnp.left_shift(jnp.int32(1), i + s)               # values in it
    t = a * scale
    k = jnp.floor((t - 0.1) / 0.9 * n.astype(y.dtype))
    k = jnp.clip(k.astype(jnp.int32), 0, n - 1)
    cand = base + n - (1 << s) + k
    if signed:
      cand = jnp.where(y < 0, 254 - cand, cand)
    lo = jnp.clip(cand - 1, 0, 253)
    bounds = jnp.asarray(_boundaries(signed))
    out = _explicit(lo)
    b0 = bounds.at[lo].get(out_sharding=out)
    b1 = bounds.at[lo + 1].get(out_sharding=out)
    return lo + (b0 < y).astype(jnp.int32) + (b1 < y).astype(jnp.int32)


def dequantize_blockwise(q: QuantizedArray, shape: Sequence[int], dtype: Any,
                         signed: bool = True) -> jax.Array:
  """Inverse of :func:`quantize_blockwise`: ``map[code] * absmax``."""
  qmap = jnp.asarray(dynamic_quantization_map(signed))
  idx = q.codes.astype(jnp.int32)
  vals = qmap.at[idx].get(out_sharding=_explicit(idx)) * q.absmax[:, None]
  size = int(np.prod(shape))
  return vals.reshape(-1)[:size].reshape(tuple(shape)).astype(dtype)


def _explicit(x):
  """``x``'s sharding when it lives on a mesh with Explicit axes, else None."""
  try:
    sharding = jax.typeof(x).sharding
  except Exception:  # pylint: disable=broad-except
    return None
  mesh = getattr(sharding, "mesh", None)
  types = getattr(mesh, "axis_types", None) or ()
  if any(t == jax.sharding.AxisType.Explicit for t in types):
    return sharding
  return None


def _last_field(path) -> Optional[str]:
  for k in reversed(path):
    if isinstance(k, jax.tree_util.GetAttrKey):
      return k.name
  return None


def _is_q(x) -> bool:
  return isinstance(x, QuantizedArray)


@registry.register(
    family="wrapper",
    summary="Stores the inner optimizer's large state buffers block-wise"
    " quantized to 8 bits (dynamic tree quantization, one absmax per block).",
    paper="Dettmers, Lewis, Shleifer & Zettlemoyer, 8-bit Optimizers via"
    " Block-wise Quantization, ICLR 2022, https://arxiv.org/abs/2110.02861",
    reference="NumPy re-derivation of the block-wise quantizer; end to end"
    " vs float32 Adam (bitsandbytes' Adam8bit semantics)",
    verified="NumPy re-derivation of the block-wise dynamic quantizer (tests/test_quantized.py)",
)
def quantize_state(
    inner: optax.GradientTransformation,
    block_size: int = 2048,
    min_size: int = 4096,
    second_moment_fields: Sequence[str] = SECOND_MOMENT_FIELDS,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps ``inner``'s state in 8 bits (block-wise dynamic quantization).

  Every floating state leaf of ``inner`` with ``ndim >= 1`` and at least
  ``min_size`` elements (Adam's :math:`m, v`, a momentum buffer, ...) is
  stored as a :class:`QuantizedArray`: the flattened buffer in blocks of
  ``block_size`` contiguous entries, each entry the ``uint8`` index of the
  nearest value of the dynamic tree map (:func:`dynamic_quantization_map`)
  after division by the block's absmax (one float32 per block):

  .. math::  q_j = \operatorname*{arg\,min}_c |Q_c - x_j / a_b|, \qquad
             a_b = \max_{j \in b} |x_j|, \qquad \hat x_j = Q_{q_j}\, a_b.

  Leaves under a NamedTuple field named in ``second_moment_fields`` (``nu``,
  ``sum_of_squares``, ...: non-negative) use the unsigned map, every other
  quantized leaf the signed one. Scalars (step counters, injected
  hyperparameters), integer leaves and small leaves stay as they are.

  ``update`` dequantizes the state, runs ``inner.update`` in full precision
  and quantizes the new state; the returned update is the one ``inner``
  computes from the full-precision new moments (as the paper's fused
  kernels do), so the first step equals ``inner``'s exactly and later steps
  differ by the quantization of the stored moments only.

  Memory: 1 byte per element plus 4 bytes per block (0.002 B at the default
  2048), i.e. about 2 B/param for Adam instead of 8 (float32).
  ``min_size=4096`` is bitsandbytes' default (``min_8bit_size``): small
  tensors (biases, norms) keep full-precision state, where 8 bits save
  little and hurt most. Use ``min_size=1`` to quantize everything.

  Sharding: the blocks are runs of the *flattened* buffer (the paper's
  layout), so a parameter sharded over a mesh axis (FSDP) has blocks that
  cross device boundaries and the step gathers its state. For data-parallel
  training wrap it as ``optzoo.shard_state(adam_8bit(...), mesh)`` (ZeRO-1):
  the codes and scales are then split over the devices themselves.

  Not included: the paper's *stable embedding layer* (a model change, not an
  optimizer one) and percentile clipping.

  Args:
    inner: the transformation whose state is stored in 8 bits (an Adam-family
      optimizer, typically).
    block_size: entries per block (the paper: 2048).
    min_size: leaves with fewer elements keep their state unquantized.
      ``block_size`` and ``min_size`` set array shapes: under
      ``optax.inject_hyperparams`` name them in ``static_args``.
    second_moment_fields: NamedTuple field names whose leaves are
      non-negative and use the unsigned map. A leaf listed here must never
      be negative (a negative value would be stored as 0).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; extra arguments and
    ``params`` are passed to ``inner``.

  Examples:
    >>> import jax.numpy as jnp, optzoo
    >>> tx = optzoo.quantize_state(optzoo.adam(1e-3), min_size=1)
    >>> params = {"w": jnp.ones((64, 64))}
    >>> state = tx.init(params)
    >>> state[0].mu["w"].codes.dtype, state[0].mu["w"].codes.shape
    (dtype('uint8'), (2, 2048))

  References:
    Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.
  """
  validation.check_transformation("inner", inner)
  for name, v in (("block_size", block_size), ("min_size", min_size)):
    if isinstance(v, jax.core.Tracer):
      raise TypeError(
          f"`{name}` sets array shapes and must be a static Python int; under"
          f" optax.inject_hyperparams pass static_args=('block_size',"
          f" 'min_size').")
  validation.check_int("block_size", block_size, minimum=1)
  validation.check_int("min_size", min_size, minimum=0)
  if isinstance(second_moment_fields, str) or not all(
      isinstance(s, str) for s in second_moment_fields):
    raise TypeError("`second_moment_fields` must be a sequence of field names,"
                    f" got {second_moment_fields!r}.")
  block_size, min_size = int(block_size), int(min_size)
  second = frozenset(second_moment_fields)
  inner = optax.with_extra_args_support(inner)

  def plan(path, leaf):
    """None (keep as is) or the signed flag of a quantized leaf."""
    shape, dtype = np.shape(leaf), getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      return None
    size = int(np.prod(shape))
    if len(shape) == 0 or size == 0 or size < min_size:
      return None
    return _last_field(path) not in second

  def compress(state):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    out = []
    for path, leaf in leaves:
      signed = plan(path, leaf)
      out.append(leaf if signed is None
                 else quantize_blockwise(leaf, block_size, signed))
    return jax.tree.unflatten(treedef, out)

  def init_fn(params):
    return compress(inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    # The full-precision state's shapes and dtypes, abstractly (no compute).
    like = params if params is not None else updates
    template = jax.eval_shape(inner.init, like)
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(template)
    s_leaves = t_def.flatten_up_to(state)
    full = []
    for (path, t), s in zip(t_leaves, s_leaves):
      signed = plan(path, t)
      if signed is None:
        full.append(s)
      else:
        full.append(dequantize_blockwise(s, t.shape, t.dtype, signed))
    full = jax.tree.unflatten(t_def, full)
    updates, new_state = inner.update(updates, full, params, **extra_args)
    return updates, compress(new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sizes(block_size, min_size) -> dict:
  return dict(block_size=2048 if block_size is None else block_size,
              min_size=4096 if min_size is None else min_size)


@registry.register(
    family="Team Adam",
    summary="Adam with 8-bit block-wise quantized moments (Adam8bit).",
    paper="Dettmers et al., 8-bit Optimizers via Block-wise Quantization,"
    " ICLR 2022, https://arxiv.org/abs/2110.02861",
    reference="quantize_state(optzoo.adam) (bitsandbytes.optim.Adam8bit"
    " semantics); verified against float32 Adam end to end",
    verified="NumPy re-derivation of the block-wise dynamic quantizer around optzoo.adam (tests/test_quantized.py)",
)
def adam_8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    block_size: Optional[int] = None,
    min_size: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam (``torch.optim.Adam`` math) with 8-bit moments.

  ``quantize_state(optzoo.adam(learning_rate, b1, b2, eps, weight_decay),
  block_size, min_size)``: :math:`m` with the signed and :math:`v` with the
  unsigned dynamic map, one float32 absmax per ``block_size`` entries; about
  2 B/param of state instead of 8. See :func:`quantize_state`.

  ``block_size`` (``None``: 2048, the paper's) and ``min_size`` (``None``:
  4096, bitsandbytes' ``min_8bit_size``) default to ``None`` so that
  ``optax.inject_hyperparams(adam_8bit)`` keeps them static; an explicit
  int there must be named in ``static_args`` (they set array shapes).

  References:
    Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.
  """
  return quantize_state(
      alias.adam(learning_rate, b1, b2, eps, weight_decay),
      **_sizes(block_size, min_size))


@registry.register(
    family="Team Adam",
    summary="AdamW with 8-bit block-wise quantized moments (AdamW8bit).",
    paper="Dettmers et al., 8-bit Optimizers via Block-wise Quantization,"
    " ICLR 2022, https://arxiv.org/abs/2110.02861",
    reference="quantize_state(optzoo.adamw) (bitsandbytes.optim.AdamW8bit"
    " semantics); verified against float32 AdamW end to end",
    verified="NumPy re-derivation of the block-wise dynamic quantizer around optzoo.adamw (tests/test_quantized.py)",
    needs_params=True,
)
def adamw_8bit(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    block_size: Optional[int] = None,
    min_size: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW (``torch.optim.AdamW`` math) with 8-bit moments.

  ``quantize_state(optzoo.adamw(...), block_size, min_size)``; see
  :func:`adam_8bit` and :func:`quantize_state`.

  References:
    Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.
  """
  return quantize_state(
      alias.adamw(learning_rate, b1, b2, eps, weight_decay),
      **_sizes(block_size, min_size))


def state_nbytes(state: Any) -> int:
  """Total bytes of the arrays in an optimizer state (concrete or abstract,
  e.g. from ``jax.eval_shape(tx.init, params)``)."""
  return int(sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(state) if hasattr(x, "dtype")))
