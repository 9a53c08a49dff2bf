"""8-bit optimizer state (optzoo.quantize_state, adam_8bit, adamw_8bit).

Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.

* The dynamic tree map re-derived independently, bit pattern by bit pattern,
  from the paper's code layout ``[sign] 0..0 1 f..f``.
* The block-wise quantizer re-derived in NumPy (brute-force nearest value):
  same codes, per-element round-trip error <= half the local gap of the map
  times the block's absmax, exact for values on the map.
* End to end: an MLP on sklearn digits with adam_8bit ends within a stated
  tolerance of float32 Adam; a too-coarse variant (4-bit linear codes) is
  measurably worse at the state level (negative control).
* State bytes <= 0.3x Adam's; jit compiles once; inject_hyperparams, chain.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import nn as zn
from helpers import TraceCounter


# ---------------------------------------------------------------------------
# (a) The map and the quantizer, re-derived in NumPy.
# ---------------------------------------------------------------------------


def _adam(state):
  """Adam's state in a chain's state tuple (the coupled-L2 link comes first)."""
  return next(s for s in state if hasattr(s, "mu"))


def _decode_code(code: int, signed: bool) -> float:
  """Value of one 8-bit code: sign bit (signed map only), E leading zeros =
  decimal exponent, an indicator 1, then a linear fraction in (0.1, 1)."""
  bits = [(code >> (7 - k)) & 1 for k in range(8)]
  sign = 1.0
  if signed:
    sign = -1.0 if bits[0] else 1.0
    bits = bits[1:]
  if 1 not in bits:                      # all zeros: 0 (its negative twin: +1)
    return 1.0 if sign < 0 else 0.0
  e = bits.index(1)
  frac_bits = bits[e + 1:]
  if not signed and e == len(bits) - 1:  # 00000001: the spare code is +1
    return 1.0
  n = 2 ** len(frac_bits)
  f = int("".join(map(str, frac_bits)) or "0", 2)
  decade = len(bits) - 1 - e             # 6 - E  (signed) / 7 - E (unsigned)
  if not signed:
    decade -= 1
  return sign * 10.0 ** (decade - 6) * (0.1 + 0.9 * (f + 0.5) / n)


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_matches_bitwise_derivation(signed):
  ref = np.sort([_decode_code(c, signed) for c in range(256)])
  got = optzoo.dynamic_quantization_map(signed)
  assert got.dtype == np.float32 and got.shape == (256,)
  assert len(np.unique(ref)) == 256
  np.testing.assert_allclose(got, ref.astype(np.float32), rtol=0, atol=0)
  assert got[-1] == 1.0 and 0.0 in got
  if signed:
    assert got[0] == np.float32(-(0.1 + 0.9 * 63.5 / 64))  # no -1 (paper code)
    assert np.sum(got < 0) == 127 and np.sum(got > 0) == 128
  else:
    assert got[0] == 0.0 and got[1] == np.float32(1e-6 * (0.1 + 0.9 * 0.25))


def _np_quantize(x, block_size, signed):
  """Brute-force NumPy block-wise quantizer: (codes, absmax)."""
  qmap = np.asarray([_decode_code(c, signed) for c in range(256)])
  qmap = np.sort(qmap).astype(np.float32)
  flat = np.asarray(x, np.float32).reshape(-1)
  n = flat.size
  block = min(block_size, n)
  nb = -(-n // block)
  blocks = np.zeros(nb * block, np.float32)
  blocks[:n] = flat
  blocks = blocks.reshape(nb, block)
  absmax = np.abs(blocks).max(axis=1)
  y = blocks / np.where(absmax > 0, absmax, 1)[:, None]
  dist = np.abs(y[..., None].astype(np.float64) - qmap.astype(np.float64))
  return np.argmin(dist, axis=-1).astype(np.uint8), absmax, y, qmap


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape,block_size", [((37, 61), 256), ((5000,), 2048),
                                              ((3,), 2048)])
def test_quantizer_matches_numpy_and_error_bounds(signed, shape, block_size):
  rng = np.random.default_rng(0)
  # Heavy-tailed values over many decades, like optimizer moments.
  x = rng.standard_t(2, size=shape) * 10.0 ** rng.uniform(-8, 0, size=shape)
  if not signed:
    x = x ** 2
  x = x.astype(np.float32)
  q = jax.jit(optzoo.quantize_blockwise, static_argnums=(1, 2))(
      jnp.asarray(x), block_size, signed)
  codes, absmax, y, qmap = _np_quantize(x, block_size, signed)
  np.testing.assert_array_equal(np.asarray(q.absmax), absmax)
  got = np.asarray(q.codes)
  assert got.shape == shape and got.dtype == np.uint8     # the buffer's shape
  # The oracle's padded (blocks, block) layout, flattened, is x's order.
  n = x.size
  got = np.pad(got.reshape(-1), (0, codes.size - n)).reshape(codes.shape)
  got.reshape(-1)[n:] = codes.reshape(-1)[n:]             # padding: not stored
  # Same codes except at exact float32 ties between two map values.
  diff = got != codes
  if diff.any():
    yy = y[diff]
    d1 = np.abs(yy - qmap[got[diff]])
    d2 = np.abs(yy - qmap[codes[diff]])
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-12)
  assert diff.mean() < 1e-3
  # Round trip: |x - x^| <= absmax * (half the gap around y), per element.
  xhat = np.asarray(optzoo.dequantize_blockwise(q, shape, jnp.float32, signed,
                                                block_size))
  err = np.abs(xhat.reshape(-1) - x.reshape(-1))
  yflat = y.reshape(-1)[:n]
  k = np.clip(np.searchsorted(qmap, yflat), 1, 255)
  lo, hi = qmap[k - 1], qmap[k]
  half_gap = np.where(yflat < qmap[0], qmap[0] - yflat, (hi - lo) / 2)
  scale = np.repeat(absmax, y.shape[1])[:n]
  assert np.all(err <= scale * half_gap * (1 + 1e-5) + 1e-30)
  # The global per-block bound: the largest half gap of the map (0.7 %).
  per_block = np.max(np.abs(np.pad(err, (0, y.size - n)).reshape(y.shape)), axis=1)
  assert np.all(per_block <= absmax * (np.max(np.diff(qmap)) / 2) * (1 + 1e-5))


def _mids(signed):
  qmap = optzoo.dynamic_quantization_map(signed)
  return ((qmap[1:].astype(np.float64) + qmap[:-1]) / 2).astype(np.float32)


def _ulp_neighbours(v, k):
  """float32 values within k ulps of each of v (v >= 0), by bit pattern."""
  bits = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
  out = (bits[:, None] + np.arange(-k, k + 1)[None]).ravel()
  return out[(out >= 0) & (out < 0x7F800000)].astype(np.int32).view(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_decode_is_the_table_bit_for_bit(signed):
  """The arithmetic decoder gives the float32 map value of every code,
  bit-identical (jitted, as the optimizer runs it)."""
  from optzoo._src import quantized as Q
  codes = jnp.arange(256, dtype=jnp.uint8)
  got = np.asarray(jax.jit(Q._decode_codes, static_argnums=1)(codes, signed))
  want = optzoo.dynamic_quantization_map(signed)
  np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("signed", [True, False])
def test_encode_equals_a_search_everywhere(signed):
  """The arithmetic (table- and search-free) encoder equals np.searchsorted
  over the float32 midpoints (nearest value, ties to the lower code) on a
  dense grid: every map value and every midpoint with its 64 float32
  neighbours on each side (so every tie and both sides of it), both signs,
  +0 and -0, the extremes, values just outside [-1, 1] (clamped), and 200k
  log-uniform values over all decades. (tests/check_quantizer_exhaustive.py
  checks every float32 in [-1, 1].)"""
  from optzoo._src import quantized as Q
  qmap = optzoo.dynamic_quantization_map(signed)
  mids = _mids(signed)
  rng = np.random.default_rng(4)
  mags = (10.0 ** rng.uniform(-9, 0, 200_000)).astype(np.float32)
  pos = np.concatenate([_ulp_neighbours(np.abs(mids), 64),
                        _ulp_neighbours(np.abs(qmap), 2), mags,
                        np.float32([0.0, 1.0, 1e-38, 1e-45, 2.75e-7])])
  ys = np.concatenate([pos, -pos, np.float32([-0.0, -1.0])])
  ys = ys[np.abs(ys) <= np.nextafter(np.float32(1), np.float32(2))]
  got = np.asarray(jax.jit(Q._encode_unit, static_argnums=1)(jnp.asarray(ys), signed))
  want = np.minimum(np.searchsorted(mids, ys if signed else np.maximum(ys, 0),
                                    side="left"), 255)
  np.testing.assert_array_equal(got, want)
  assert ys.size > 60_000
  # Through the public quantizer (absmax 1: y = x exactly).
  x = np.concatenate([np.float32([1.0]), np.clip(ys, -1, 1)])
  q = jax.jit(optzoo.quantize_blockwise, static_argnums=(1, 2))(
      jnp.asarray(x), x.size, signed)
  want = np.searchsorted(mids, x if signed else np.maximum(x, 0), side="left")
  np.testing.assert_array_equal(np.asarray(q.codes).reshape(-1), want)
  # NaN (a diverged moment) gets the code of 0.
  nan = np.asarray(Q._encode_unit(jnp.float32(jnp.nan), signed))
  assert qmap[nan] == 0


@pytest.mark.parametrize("signed", [True, False])
def test_codec_has_no_gather_sort_or_while(signed):
  """Encode and decode are elementwise arithmetic: no table gathers, no
  search, no loop in the compiled quantize/dequantize round trip."""
  def round_trip(x):
    q = optzoo.quantize_blockwise(x, 256, signed)
    return optzoo.dequantize_blockwise(q, x.shape, x.dtype, signed, 256)
  hlo = jax.jit(round_trip).lower(jnp.ones((40, 30), jnp.float32)).compile().as_text()
  for op in (" gather(", " sort(", " while(", " scatter("):
    assert op not in hlo, op


@pytest.mark.parametrize("signed", [True, False])
def test_values_on_the_map_round_trip_exactly(signed):
  qmap = optzoo.dynamic_quantization_map(signed)
  rng = np.random.default_rng(1)
  codes = rng.integers(0, 256, size=(4, 512))
  codes[:, 0] = 255                          # each block contains +1 * scale
  scales = 2.0 ** np.array([-20, -3, 0, 7])  # powers of two: exact division
  x = (qmap[codes] * scales[:, None]).astype(np.float32)
  q = optzoo.quantize_blockwise(jnp.asarray(x), 512, signed)
  np.testing.assert_array_equal(np.asarray(q.codes), codes)
  back = optzoo.dequantize_blockwise(q, x.shape, jnp.float32, signed, 512)
  np.testing.assert_array_equal(np.asarray(back), x)
  # Zeros (a whole block and single entries) are exact too.
  z = optzoo.quantize_blockwise(jnp.zeros(10), 4, signed)
  assert np.all(np.asarray(optzoo.dequantize_blockwise(z, (10,), jnp.float32,
                                                       signed, 4)) == 0)


# ---------------------------------------------------------------------------
# The wrapper.
# ---------------------------------------------------------------------------


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(2)
  return {"w": jnp.asarray(rng.normal(size=(40, 30)), dtype),
          "b": jnp.asarray(rng.normal(size=(30,)), dtype),
          "s": jnp.asarray(1.5, dtype), "n": None}


def test_state_layout_and_first_step_equals_adam():
  params = _params()
  tx = optzoo.adam_8bit(1e-2, block_size=256, min_size=100)
  state = tx.init(params)
  adam_state = _adam(state)
  mu, nu = adam_state.mu, adam_state.nu
  assert isinstance(mu["w"], optzoo.QuantizedArray)
  assert mu["w"].codes.shape == (40, 30) and mu["w"].absmax.shape == (5,)
  assert mu["w"].codes.dtype == jnp.uint8 and mu["w"].absmax.dtype == jnp.float32
  assert not isinstance(mu["b"], optzoo.QuantizedArray)   # 30 < min_size
  assert mu["n"] is None and adam_state.count.dtype == jnp.int32
  g = jax.tree.map(lambda p: 0.1 * p, params)
  u, s1 = jax.jit(tx.update)(g, state, params)
  ref = optzoo.adam(1e-2)
  u_ref, _ = jax.jit(ref.update)(g, ref.init(params), params)
  for k in ("w", "b", "s"):
    np.testing.assert_array_equal(np.asarray(u[k]), np.asarray(u_ref[k]))
    assert u[k].dtype == params[k].dtype
  # The stored moments decode to Adam's within the map's resolution.
  _, sr = jax.jit(ref.update)(g, ref.init(params), params)
  m = optzoo.dequantize_blockwise(_adam(s1).mu["w"], (40, 30), jnp.float32, True, 256)
  v = optzoo.dequantize_blockwise(_adam(s1).nu["w"], (40, 30), jnp.float32, False, 256)
  mr, vr = np.asarray(_adam(sr).mu["w"]), np.asarray(_adam(sr).nu["w"])
  assert np.max(np.abs(m - mr)) <= 0.00704 * np.max(np.abs(mr))
  assert np.max(np.abs(v - vr)) <= 0.0036 * np.max(np.abs(vr))
  # Negative control: the unsigned map for the (signed) first moment clamps
  # its negative entries to 0, far outside the bound.
  bad = optzoo.quantize_state(optzoo.adam(1e-2), block_size=256, min_size=100,
                              second_moment_fields=("mu", "nu"))
  _, sb = jax.jit(bad.update)(g, bad.init(params), params)
  mb = optzoo.dequantize_blockwise(_adam(sb).mu["w"], (40, 30), jnp.float32, False, 256)
  assert np.max(np.abs(mb - mr)) > 0.5 * np.max(np.abs(mr))


def test_state_bytes_at_most_0p3_of_adam():
  """eval_shape only: a 2M-parameter model, default block size / min_size."""
  params = {"w1": jax.ShapeDtypeStruct((1024, 1024), jnp.float32),
            "w2": jax.ShapeDtypeStruct((1024, 1000), jnp.float32),
            "b1": jax.ShapeDtypeStruct((1024,), jnp.float32),
            "b2": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  n = sum(int(np.prod(p.shape)) for p in params.values())
  b8 = optzoo.state_nbytes(jax.eval_shape(optzoo.adam_8bit().init, params))
  b32 = optzoo.state_nbytes(jax.eval_shape(optzoo.adam().init, params))
  assert b32 == 8 * n + 4
  assert b8 / b32 <= 0.3, b8 / b32
  # 2 codes per matrix entry + 2 float32 scales per block; biases stay f32.
  big = 1024 * 1024 + 1024 * 1000
  blocks = 1024 * 1024 // 2048 + -(-1024 * 1000 // 2048)
  assert b8 == 2 * big + 2 * 4 * blocks + 8 * (1024 + 1000) + 4
  assert b8 / n < 2.03


def test_compiles_once_in_chain_and_keeps_dtypes():
  params = _params(jnp.bfloat16)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optzoo.quantize_state(optzoo.adam(1e-2), block_size=64,
                                         min_size=1))
  state = tx.init(params)
  counter = TraceCounter(lambda p, s, g: tx.update(g, s, p))
  step = jax.jit(counter)
  for i in range(3):
    g = jax.tree.map(lambda p: (p * (i + 1)).astype(p.dtype), params)
    u, state = step(params, state, g)
  assert counter.count == 1
  for k in ("w", "b", "s"):
    assert u[k].dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(u[k], np.float32)))


def test_inject_hyperparams():
  params = _params()
  g = jax.tree.map(lambda p: 0.3 * p, params)
  tx_i = optax.inject_hyperparams(optzoo.adam_8bit)(learning_rate=1e-2, b1=0.8)
  tx_p = optzoo.adam_8bit(learning_rate=1e-2, b1=0.8)
  s_i, s_p = tx_i.init(params), tx_p.init(params)
  step_i, step_p = jax.jit(tx_i.update), jax.jit(tx_p.update)
  for _ in range(3):
    u_i, s_i = step_i(g, s_i, params)
    u_p, s_p = step_p(g, s_p, params)
  for k in ("w", "b", "s"):
    np.testing.assert_allclose(np.asarray(u_i[k]), np.asarray(u_p[k]), rtol=1e-6)
  s_i.hyperparams["learning_rate"] = jnp.asarray(0.0)
  u0, _ = step_i(g, s_i, params)
  assert all(np.all(np.asarray(u0[k]) == 0) for k in ("w", "b", "s"))
  # block_size shapes arrays: injecting it is refused with a clear message.
  bad = optax.inject_hyperparams(optzoo.adam_8bit)(learning_rate=1e-2, block_size=64)
  with pytest.raises(TypeError, match="static_args"):
    jax.jit(bad.update)(g, bad.init(params), params)
  ok = optax.inject_hyperparams(optzoo.adam_8bit, static_args=("block_size",))(
      learning_rate=1e-2, block_size=64)
  jax.jit(ok.update)(g, ok.init(params), params)


def test_bad_arguments():
  with pytest.raises(TypeError, match="inner"):
    optzoo.quantize_state("adam")
  with pytest.raises(ValueError, match="block_size"):
    optzoo.quantize_state(optzoo.adam(), block_size=0)
  with pytest.raises(TypeError, match="second_moment_fields"):
    optzoo.quantize_state(optzoo.adam(), second_moment_fields="nu")


# ---------------------------------------------------------------------------
# Complex parameters: torch's view_as_real (real and imaginary parts as
# independent reals).
# ---------------------------------------------------------------------------


def _to_real(z):
  return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1)


@pytest.mark.parametrize("signed", [True, False])
def test_complex_buffer_is_quantized_as_its_real_view(signed):
  rng = np.random.default_rng(5)
  z = rng.standard_t(2, size=(33, 40)) + 1j * rng.standard_t(2, size=(33, 40))
  if not signed:
    z = np.abs(z.real) ** 2 + 1j * np.abs(z.imag) ** 2
  z = jnp.asarray(z, jnp.complex64)
  qz = optzoo.quantize_blockwise(z, 256, signed)
  qr = optzoo.quantize_blockwise(_to_real(z), 256, signed)
  assert qz.codes.shape == (33, 40, 2) and qz.absmax.shape == (11,)
  np.testing.assert_array_equal(np.asarray(qz.codes), np.asarray(qr.codes))
  np.testing.assert_array_equal(np.asarray(qz.absmax), np.asarray(qr.absmax))
  back = optzoo.dequantize_blockwise(qz, (33, 40), jnp.complex64, signed, 256)
  back_r = optzoo.dequantize_blockwise(qr, (33, 40, 2), jnp.float32, signed, 256)
  assert back.dtype == jnp.complex64
  np.testing.assert_array_equal(np.asarray(_to_real(back)), np.asarray(back_r))


@pytest.mark.parametrize("name", ["adam_8bit", "adamw_8bit"])
def test_complex_leaf_gives_exactly_the_update_of_its_real_view(name):
  """30 steps along one trajectory: at every step the complex leaf (with its
  own 8-bit state) and its real view (5, 7, 2) get the same parameters and
  gradients; the updates are bit-identical (and so are the states)."""
  tx = getattr(optzoo, name)(0.1, block_size=8, min_size=1)
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=(5, 7)) + 3j * rng.normal(size=(5, 7)), jnp.complex64)
  t = _to_real(jnp.asarray(rng.normal(size=(5, 7)) + 0.1j * rng.normal(size=(5, 7)),
                           jnp.complex64))
  as_complex = lambda x: jax.lax.complex(x[..., 0], x[..., 1])

  def body(carry, _):
    x, s_r, s_c = carry
    g = 2 * (x - t)
    u_r, s_r = tx.update(g, s_r, x)
    u_c, s_c = tx.update(as_complex(g), s_c, as_complex(x))
    return (x + u_r, s_r, s_c), (u_r, _to_real(u_c))

  x0 = _to_real(z0)
  (_, s_r, s_c), (u_r, u_c) = jax.jit(lambda x: jax.lax.scan(
      body, (x, tx.init(x), tx.init(z0)), None, length=30))(x0)
  assert u_c.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(u_c)))
  np.testing.assert_array_equal(np.asarray(u_c), np.asarray(u_r))
  assert np.max(np.abs(np.asarray(u_r))) > 0
  mu = _adam(s_c).mu
  assert isinstance(mu, optzoo.QuantizedArray) and mu.codes.shape == (5, 7, 2)
  for a, b in zip(jax.tree.leaves(s_c), jax.tree.leaves(s_r)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name,kwargs", [
    ("adam_8bit", dict(learning_rate=1e-1)),
    ("adamw_8bit", dict(learning_rate=1e-1, weight_decay=1e-4))])
def test_complex_convergence_with_every_leaf_quantized(name, kwargs):
  """optax's alias test problems (parabola, Rosenbrock; float32 and
  complex64; 10000 steps) with min_size=1, so that every moment is 8-bit
  (tests/optax_suite/test_alias.py runs them with the default min_size)."""
  from optax_suite import test_alias as ta
  opt = getattr(optzoo, name)(**kwargs, min_size=1)
  setups = {f"{tn}_{dn}": (lambda t=target, d=dtype: t(d))
            for tn, target in (("parabola", ta._setup_parabola),
                               ("rosenbrock", ta._setup_rosenbrock))
            for dn, dtype in (("float32", jnp.float32), ("complex64", jnp.complex64))}
  init, final, objective = ta._combined(setups)

  def step(params, state):
    g = jax.tree.map(jnp.conj, jax.grad(objective)(params))
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state

  state = opt.init(init)
  assert isinstance(_adam(state).mu["rosenbrock_complex64"], optzoo.QuantizedArray)
  params, _ = jax.jit(lambda p, s: jax.lax.fori_loop(
      0, 10000, lambda _, c: step(*c), (p, s)))(init, state)
  for k in final:
    np.testing.assert_allclose(np.asarray(params[k]), np.asarray(final[k]),
                               rtol=3e-2, atol=3e-2, err_msg=k)


# ---------------------------------------------------------------------------
# (b) End to end on digits.
# ---------------------------------------------------------------------------

_DIGITS = {}


def _digits_run(tx, steps=300, batch=64, seed=0):
  if "data" not in _DIGITS:
    d = zn.load_digits()
    _DIGITS["data"] = (d.x_train.reshape(len(d.x_train), -1),
                       d.y_train, d.x_test.reshape(len(d.x_test), -1), d.y_test)
  xtr, ytr, xte, yte = (jnp.asarray(a) for a in _DIGITS["data"])
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"w1": jax.random.normal(k1, (64, 128), jnp.float32) / 8.0,
            "b1": jnp.zeros(128, jnp.float32),
            "w2": jax.random.normal(k2, (128, 10), jnp.float32) / np.sqrt(128),
            "b2": jnp.zeros(10, jnp.float32)}

  def loss(p, x, y):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  rng = np.random.default_rng(seed)
  idx = jnp.asarray(rng.integers(0, xtr.shape[0], size=(steps, batch)))

  @jax.jit
  def train(params):
    def body(carry, ix):
      p, s = carry
      g = jax.grad(loss)(p, xtr[ix], ytr[ix])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), idx)
    logits = jnp.tanh(xte @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return loss(p, xtr, ytr), jnp.mean(jnp.argmax(logits, -1) == yte), p
  tl, acc, p = train(params)
  return float(tl), float(acc), p


def test_digits_mlp_8bit_adam_matches_float32_adam():
  """300 steps of batch 64, lr 3e-3, one scan. Measured (x64 on, f32 params):
  float32 Adam full-train loss 0.0800 / test acc 0.9666; adam_8bit (block
  2048, every matrix quantized) 0.0774 / 0.9666. Tolerance: train loss
  within 25 % + 0.005, test accuracy within 1.5 points."""
  loss32, acc32, _ = _digits_run(optzoo.adam(3e-3))
  loss8, acc8, _ = _digits_run(optzoo.adam_8bit(3e-3, min_size=1))
  assert acc32 > 0.95
  assert abs(acc8 - acc32) <= 0.015, (acc8, acc32)
  assert abs(loss8 - loss32) <= 0.25 * loss32 + 0.005, (loss8, loss32)
