"""The fused CPU step of 8-bit Adam (``optzoo.adam_8bit`` / ``adamw_8bit``,
``quantize_state`` around ``optzoo.adam`` / ``adamw``).

:func:`quantized_adam_leaves` runs, for every parameter whose two moments
are block-wise quantized (optzoo/_src/quantized.py), C++ calls (one per
leaf, or per group of small leaves; ``kernels.cc``, ``q8_range``): decode the moments, Adam's moment update, each block's new absmax, the new codes (in place) and Adam's
direction (``scale_by_adam``'s output). The plain path evaluates the inner
step four times and encodes arithmetically (~55 vector operations per 8
elements); the kernel reads the gradient and the codes once. Its AVX2 loop
decodes and encodes with table gathers (the encoder: one lookup in a bucket
table); on CPUs with AVX-512 VBMI it decodes 64 codes at a time with byte
permutes and encodes with a per-decade affine map (``_decades``), keeping the
bucket table for the few entries that land within 2^-10 of a midpoint. Every
loop gives the same codes for every float32 (tests/cpu_kernels/
check_q8_encoder_exhaustive.py).

Bitwise equal to quantize_state's plain path on the same input arrays
(tests/cpu_kernels/test_cpu_kernels.py), as the Adam kernel (``adam.py``): the scalars
are the plain path's own (``transform.adam_step_scalars``), cast to float32
where its promotion keeps them there (else the plain path runs), multiply-adds
are contracted where XLA contracts them, and the links after
``scale_by_adam`` (decoupled decay, ``-lr``) stay in jnp, so XLA fuses them
into ``optax.apply_updates`` exactly as on the plain path. Only float32, real
leaves on one device, without AMSGrad.
"""

from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from optzoo._src import transform
from optzoo._src.cpu_kernels import adam as fused_adam_mod
from optzoo._src.cpu_kernels import step

__all__ = ["adam_spec", "kernel_tables", "quantized_adam_leaves"]

_F32 = np.dtype(np.float32)
# Leaves share a call up to this many entries in all (a 4 MB direction).
_GROUP_ELEMENTS = 1 << 20
# The kernel's loop (kernels.cc, Q8Loop): 0 the fastest this CPU has
# (AVX-512 with VBMI, else AVX2); tests also run 1 (AVX2) and 2 (scalar),
# which give the same bits.
_LOOP = 0


# The encoder's buckets (kernels.cc, kQ8Lo / kQ8Shift / kQ8Buckets): bit
# patterns of positive float32 from 2^-24 on, 2^16 patterns per bucket, the
# last bucket everything from 2.0 up.
_LO, _SHIFT = 0x33800000, 16
_BUCKETS = ((0x40000000 - _LO) >> _SHIFT) + 1
_NONE = 0xFFFF


def _buckets(mids: np.ndarray) -> np.ndarray:
  """Per bucket ``(base << 16) | low``: ``base`` the number of midpoints below
  it, ``low`` the low 16 bits of the one midpoint in it (``_NONE``: none),
  so that #midpoints < y is ``base + (low < y's low 16 bits)``."""
  bits = np.asarray(mids, np.float32).view(np.uint32).astype(np.int64)
  assert np.all(bits >= _LO) and np.all(np.diff(bits) > 0)
  lo = _LO + (np.arange(_BUCKETS, dtype=np.int64) << _SHIFT)
  base = np.searchsorted(bits, lo, side="left")
  which = np.minimum((bits - _LO) >> _SHIFT, _BUCKETS - 1)
  counts = np.bincount(which, minlength=_BUCKETS)
  # At most one midpoint per bucket; none in the first (everything below
  # 2^-24 reads it) or the last (everything from 2.0 up).
  assert counts.max() <= 1 and counts[0] == 0 and counts[-1] == 0
  low = np.full(_BUCKETS, _NONE, np.int64)
  low[which] = bits & _NONE
  return ((base << 16) | low).astype(np.uint32)


# The arithmetic encoder's tables (kernels.cc, Q8Decades): per binade of
# |y| (float32 exponent 96 + k, k = 0..31) the decades below it and the one
# decade edge inside it; per decade D (0: below every value, 1..7: decade
# D - 1, 8: above the last value) an affine map t = |y| S + O under which the
# count of midpoints below |y| is floor(t) + 1 up to a cap: the decade's
# interior midpoints sit near the integers base .. base + n - 2 (base: the
# midpoints below the decade), and t > base - 1 above its lower edge. The
# kernel falls back to the bucket table where t is within 2^-10 of an
# integer (the affine map's float32 error is below 1e-4 there).
_EXP0 = 96
_NEAR = 2.0 ** -10


def _decades(mids: np.ndarray, per_decade) -> np.ndarray:
  """128 words: edge f32[32], below i32[32], S f32[16], O f32[16], cap
  i32[16], 16 unused, for the positive midpoints ``mids`` of a map whose
  decade i (i = 0..6) holds ``per_decade(i)`` values: its bins are the equal
  parts of 10^(i-6) [0.1, 1] (quantized.dynamic_quantization_map)."""
  mids = np.asarray(mids, np.float32)
  sizes = [per_decade(i) for i in range(7)]
  starts = np.concatenate([[0], np.cumsum(sizes)])   # first value's index
  edges = mids[starts]                                # decade edges E_0..E_7
  assert len(mids) == starts[-1] + 1
  lo = np.ldexp(np.float64(1), np.arange(32) + _EXP0 - 127)
  inside = (edges[None, :] >= lo[:, None]) & (edges[None, :] < 2 * lo[:, None])
  assert inside.sum(axis=1).max() <= 1   # decades are > 2x apart
  edge = np.full(32, np.inf, np.float32)
  rows, cols = np.nonzero(inside)
  edge[rows] = edges[cols]
  below = (edges[None, :] < lo[:, None]).sum(axis=1).astype(np.int32)
  # Outside the decades, and in a decade of one value: t = count - 1/2.
  scale = np.zeros(16, np.float32)
  count = np.full(16, len(mids), np.int64)
  count[0] = 0
  count[1:8] = starts[:7] + 1
  offset = (count - 0.5).astype(np.float32)
  cap = count.astype(np.int32)
  for i, n in enumerate(sizes):
    if n == 1:
      continue
    base = starts[i] + 1
    scale[i + 1] = n / (0.9 * 10.0 ** (i - 6))
    offset[i + 1] = base - (n / 9.0) - 1.0
    cap[i + 1] = base + n - 1
    interior = mids[base:base + n - 1].astype(np.float64)
    t = interior * np.float64(scale[i + 1]) + np.float64(offset[i + 1])
    assert np.abs(t - np.arange(base, base + n - 1)).max() < _NEAR / 8
    for e in (edges[i], edges[i + 1]):   # the decade's edges, in its t
      assert np.float64(e) * scale[i + 1] + offset[i + 1] > base - 1
  words = [edge.view(np.uint32), below.view(np.uint32), scale.view(np.uint32),
           offset.view(np.uint32), cap.view(np.uint32), np.zeros(16, np.uint32)]
  return np.concatenate(words).astype(np.uint32)


def _planes(values) -> np.ndarray:
  """256 words: the 256 float32 ``values`` as 4 byte planes (kernels.cc,
  Q8Planes: plane b holds byte b of each little-endian value)."""
  as_bytes = np.asarray(values, "<f4").view(np.uint8).reshape(256, 4)
  return np.ascontiguousarray(as_bytes.T).view(np.uint32).reshape(-1)


def kernel_tables(map_s, map_u, mids_s, mids_u) -> np.ndarray:
  """The kernel's ``tables`` operand (kernels.cc, ``Q8Tables``): the signed
  and unsigned maps' float32 values, the buckets of the signed map's
  positive midpoints and of the unsigned map's midpoints, the same
  midpoints' decade tables (signed: 2^i values in decade i, unsigned:
  2^(i+1)), then both maps as byte planes."""
  maps = np.concatenate([np.asarray(map_s, np.float32),
                         np.asarray(map_u, np.float32)]).view(np.uint32)
  return np.concatenate([maps, _buckets(mids_s), _buckets(mids_u),
                         _decades(mids_s, lambda i: 2 ** i),
                         _decades(mids_u, lambda i: 2 ** (i + 1)),
                         _planes(map_s), _planes(map_u)]).astype(np.uint32)


def adam_spec(tx) -> Optional[Any]:
  """The spec of a fused ``optzoo.adam`` / ``adamw`` (adam.py), else None."""
  spec = fused_adam_mod._SPECS.get(getattr(tx, "update", None))  # pylint: disable=protected-access
  if spec is None or spec.amsgrad:
    return None
  return spec


def _eligible(g, p, mu, nu, coupled: bool, nb: int) -> bool:
  arrays = [g, mu.codes, mu.absmax, nu.codes, nu.absmax] + ([p] if coupled else [])
  if any(not hasattr(x, "dtype") or not step.one_device(x) for x in arrays):
    return False
  if np.dtype(g.dtype) != _F32 or (coupled and (
      np.dtype(p.dtype) != _F32 or np.shape(p) != np.shape(g))):
    return False
  return (np.shape(mu.codes) == np.shape(g) == np.shape(nu.codes)
          and np.dtype(mu.codes.dtype) == np.uint8 == np.dtype(nu.codes.dtype)
          and np.shape(mu.absmax) == (nb,) == np.shape(nu.absmax)
          and np.dtype(mu.absmax.dtype) == _F32 == np.dtype(nu.absmax.dtype))


def quantized_adam_leaves(spec, g_l: list, p_l: Optional[list], mu_l: list,
                          nu_l: list, count, block_size: int,
                          tables: np.ndarray, layout, lr_state=None,
                          apply: bool = False) -> dict:
  """``{leaf index: (direction, (mu codes, mu absmax), (nu codes, nu
  absmax))}`` for the leaves the kernel takes; ``{}`` where it does not run.
  With ``apply`` (the whole step, :func:`optzoo.update_and_apply`) the
  first entry is the new parameter instead: the links after
  ``scale_by_adam`` (decoupled decay, ``-lr``; ``lr_state`` is the last
  link's state) and ``optax.apply_updates`` run in the kernel too.

  ``mu_l`` / ``nu_l``: per parameter leaf its ``QuantizedArray`` (or None
  when that moment is not quantized; mu uses the signed map and nu the
  unsigned one, as quantize_state's plan for Adam); ``count``: Adam's old step count;
  ``layout(size)``: (blocks, block) of quantized.py.
  """
  kernels = step.kernels()
  if kernels is None:
    return {}
  coupled = spec.decay == fused_adam_mod._COUPLED  # pylint: disable=protected-access
  needs_p = apply or coupled
  if needs_p and p_l is None:
    return {}
  _, inv_bc1, inv_sqrt_bc2 = transform.adam_step_scalars(spec.b1, spec.b2, count)
  if apply:
    values = [v for v, _ in fused_adam_mod._scalars(  # pylint: disable=protected-access
        spec, count, inv_bc1, inv_sqrt_bc2, lr_state, apply=True)]
  else:
    wd = spec.weight_decay if coupled else 0.0
    values = [wd, 1 - spec.b1, spec.b2, 1 - spec.b2, inv_bc1, spec.eps_root,
              inv_sqrt_bc2, spec.eps, 0.0]
  if not all(step.keeps(_F32, v) for v in values):
    return {}
  idx = []
  for i, (g, mu, nu) in enumerate(zip(g_l, mu_l, nu_l)):
    if mu is None or nu is None:
      continue
    nb, _ = layout(int(np.prod(np.shape(g))))
    if _eligible(g, None if p_l is None else p_l[i], mu, nu, needs_p, nb):
      idx.append(i)
  tab = jnp.asarray(tables)
  read_p = coupled and not apply
  # Calls in turn, each taking the previous call's last result as an
  # (unread) operand, so that XLA can apply each direction and reuse its
  # buffer before the next call writes: independent calls let XLA keep every
  # direction alive at once, one params-sized temporary, freshly mapped
  # (page faults) on every step. Small leaves share a call (up to
  # _GROUP_ELEMENTS entries and step.MAX_LEAVES leaves: less per-call
  # overhead). (A single leaf of more than ~8M float32 entries still needs a
  # temporary above glibc's 32 MB mmap threshold: page faults on every step,
  # about 2x slower there; the whole step has no direction.)
  out, after = {}, tab
  for _, chunk in step.groups([g_l[k] for k in idx], _GROUP_ELEMENTS):
    chunk = [idx[k] for k in chunk]
    per_leaf = [[g_l[i]] + ([p_l[i]] if needs_p else [])
                + [mu_l[i].codes, mu_l[i].absmax, nu_l[i].codes, nu_l[i].absmax]
                for i in chunk]
    res = step.call("optzoo_adam8", _F32, values, per_leaf, 1 + read_p,
                    lead=(tab, after), outputs=None if apply else step.like_first,
                    vmap_method="sequential", block_size=np.int64(block_size),
                    decay=np.int64(spec.decay if apply or coupled else 0),
                    apply=bool(apply), fma=bool(kernels.fma),
                    loop=np.int64(_LOOP))
    for k, i in enumerate(chunk):
      if apply:
        p, cm, am, cv, av = res[5 * k:5 * k + 5]
      else:
        cm, am, cv, av, p = res[5 * k:5 * k + 5]
      out[i] = (p, (cm, am), (cv, av))
    after = res[-1]
  return out
