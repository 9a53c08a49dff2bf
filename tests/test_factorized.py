"""Adafactor (torch.optim.Adafactor 2.13; pytorch_optimizer.AdaFactor 4.1 as
variant="paper") and SM3 (pytorch_optimizer.SM3 4.1) against fixtures from
tests/gen_large_scale_fixtures.py, negative controls and the memory claims."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import large_scale_common as C
import optzoo


def _cases(method):
  return list(range(len(C.settings(method)[1])))


def _build(method, k, **over):
  kw = C.optzoo_kwargs(C.settings(method)[1][k]["kwargs"])
  kw.update(over)
  return getattr(optzoo, method)(**kw)


def _paper_cases():
  return [k for k in _cases("adafactor")
          if C.settings("adafactor")[1][k]["kwargs"].get("variant") == "paper"]


@pytest.mark.parametrize("k", _cases("adafactor"))
def test_adafactor_matches_reference(k):
  s = C.settings("adafactor")[1][k]
  e = C.error(_build("adafactor", k), "adafactor", k)
  assert e <= C.RTOL, f"adafactor({s['kwargs']}) vs {s['ref']}: max rel err {e:.3g}"


@pytest.mark.parametrize("k", _cases("sm3"))
def test_sm3_matches_reference(k):
  s = C.settings("sm3")[1][k]
  e = C.reference_error(_build("sm3", k), "sm3", k)
  assert e <= C.RTOL, f"sm3({s['kwargs']}) vs {s['ref']}: max rel err {e:.3g}"


def test_fixtures_cover_both_variants_and_every_flag():
  _, sets = C.settings("adafactor")
  torch_kw = set().union(*[s["kwargs"] for s in sets if "variant" not in s["kwargs"]])
  paper_kw = set().union(*[s["kwargs"] for s in sets if "variant" in s["kwargs"]])
  assert sets[0]["kwargs"] == {} and "torch.optim" in sets[0]["ref"]
  assert torch_kw >= {"learning_rate", "weight_decay", "decay_rate", "clip_threshold",
                      "eps", "eps_scale"}
  assert paper_kw >= {"learning_rate", "relative_step", "scale_parameter", "b1", "b2",
                      "warmup_init", "weight_decay", "clip_threshold", "decay_rate",
                      "weight_decouple", "fixed_decay", "eps", "eps_scale"}
  assert len(_paper_cases()) >= 4
  _, sets = C.settings("sm3")
  assert set().union(*[s["kwargs"] for s in sets]) >= {"learning_rate", "momentum",
                                                       "b2", "eps"}


# ---------------------------------------------------------------------------
# Negative controls.
# ---------------------------------------------------------------------------


def test_adafactor_negative_controls():
  assert C.error(optax.adafactor(1e-2), "adafactor", 0) > 1e-3
  # torch defaults vs the paper variant, both ways.
  assert C.error(optzoo.adafactor(variant="paper"), "adafactor", 0) > 1e-3
  assert C.error(optzoo.adafactor(), "adafactor", _paper_cases()[0]) > 1e-3
  # The paper variant's b2 cap matters.
  k = _paper_cases()[0]
  assert C.error(_build("adafactor", k, b2=0.9), "adafactor", k) > 1e-4


def test_sm3_negative_controls():
  # optax.sm3 fails on 0-d leaves (optax 0.2.8: IndexError), so the scalar
  # leaf goes through optzoo's and every other leaf through optax's.
  scalar = lambda p: jax.tree.map(lambda x: x.ndim == 0, p)  # noqa: E731
  others = lambda p: jax.tree.map(lambda x: x.ndim > 0, p)  # noqa: E731
  def mixed(**kw):
    return optax.chain(optax.masked(optax.sm3(0.1, **kw), others),
                       optax.masked(optzoo.sm3(0.1), scalar))

  assert C.error(mixed(), "sm3", 0) > 1e-3       # optax's default momentum 0.9
  # Without momentum only eps differs (1e-8 outside the root vs 1e-30 inside).
  assert C.error(mixed(momentum=0.0), "sm3", 0) > 10 * C.RTOL
  assert C.reference_error(_build("sm3", 2, b2=0.0), "sm3", 2) > 1e-3


def test_sm3_injected_zero_b2_equals_literal():
  # beta == 0 skips the multiplication in the reference: b2 injected as an
  # array 0 must give the literal-0 numbers, not b2 * nu_hat.
  tx = optax.inject_hyperparams(optzoo.sm3)(learning_rate=0.1, b2=0.0)
  assert C.error(tx, "sm3", 0) <= C.RTOL


# ---------------------------------------------------------------------------
# Memory and structure.
# ---------------------------------------------------------------------------


def _state_numbers(tx, shapes):
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
  state = jax.eval_shape(tx.init, params)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_factored_memory_4096_square():
  shapes = {"w": (4096, 4096)}
  # Second-moment statistics plus int32 step counters (where a link has one).
  assert _state_numbers(optzoo.scale_by_factored_rms(), shapes) == 8192 + 1
  assert _state_numbers(optzoo.adafactor(), shapes) == 8192 + 2
  assert _state_numbers(optzoo.scale_by_sm3(), shapes) == 8192
  assert _state_numbers(optzoo.sm3(), shapes) == 8192
  # A 3-D leaf: rows (2, 8), cols (2, 16) / one vector per dimension.
  shapes = {"t": (2, 8, 16), "b": (16,)}
  assert _state_numbers(optzoo.scale_by_factored_rms(), shapes) == 16 + 32 + 16 + 1
  assert _state_numbers(optzoo.scale_by_sm3(), shapes) == 2 + 8 + 16 + 16


def test_factored_state_is_under_5_percent_of_adam_on_a_transformer_tree():
  shapes = {}
  for i in range(4):
    shapes[f"layer_{i}/kernel"] = (1024, 4096)
    shapes[f"layer_{i}/bias"] = (4096,)

  def nbytes(tx):
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    return sum(x.dtype.itemsize * int(np.prod(x.shape))
               for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))

  adam = nbytes(optzoo.adam())
  for tx in (optzoo.adafactor(), optzoo.sm3()):
    assert nbytes(tx) <= 0.05 * adam


def test_factored_rms_shapes_and_formula():
  g = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
  tx = optzoo.scale_by_factored_rms()
  s = tx.init({"w": g})
  assert s.v_row["w"].shape == (3,) and s.v_col["w"].shape == (4,) and s.v["w"] is None
  u, s = tx.update({"w": g}, s, None)
  # First step: weight t**c = 1, so R = mean_-1 g^2 and C = mean_-2 g^2.
  r, c = np.mean(g ** 2, -1), np.mean(g ** 2, -2)
  v = np.outer(r, c) / r.mean()
  np.testing.assert_allclose(u["w"], g / np.sqrt(v), rtol=1e-13)


def test_adafactor_torch_eps_follows_param_dtype():
  # torch: eps1=None means finfo(param.dtype).eps; bf16 stays bf16.
  p = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16),
       "s": jnp.ones((), jnp.bfloat16)}
  g = jax.tree.map(lambda x: 1e-3 * x, p)
  for tx in (optzoo.adafactor(), optzoo.adafactor(variant="paper"), optzoo.sm3(momentum=0.9)):
    u, _ = jax.jit(tx.update)(g, tx.init(p), p)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(u))


def test_adafactor_paper_only_flags_rejected_for_torch_variant():
  for flag in ("relative_step", "scale_parameter", "warmup_init", "weight_decouple",
               "fixed_decay"):
    with pytest.raises(ValueError, match=flag):
      optzoo.adafactor(**{flag: True})
  with pytest.raises(ValueError, match="clip_threshold"):
    optzoo.adafactor(clip_threshold=0.5)
  optzoo.adafactor(variant="paper", clip_threshold=0.5)


def test_mu_dtype():
  p = {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.ones(3, jnp.float32)}
  g = jax.tree.map(lambda x: 0.1 * x, p)
  for tx in (optzoo.adafactor(variant="paper", mu_dtype=jnp.bfloat16),
             optzoo.lamb(mu_dtype=jnp.bfloat16)):
    s = tx.init(p)
    u, s2 = tx.update(g, s, p)
    bf = [x for x in jax.tree.leaves(s2) if x.dtype == jnp.bfloat16]
    assert len(bf) == 2          # one first moment per leaf
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u))
