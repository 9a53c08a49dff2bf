"""LARS and LAMB against pytorch_optimizer 4.1 (fixtures from
tests/gen_large_scale_fixtures.py), negative controls, the trust-ratio
primitives and the bias/norm mask helper."""
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


_err = C.reference_error


# ---------------------------------------------------------------------------
# Against the references.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", _cases("lars"))
def test_lars_matches_pytorch_optimizer(k):
  s = C.settings("lars")[1][k]
  e = _err(_build("lars", k), "lars", k)
  assert e <= C.RTOL, f"lars({s['kwargs']}) vs {s['ref']}: max rel err {e:.3g}"


@pytest.mark.parametrize("k", _cases("lamb"))
def test_lamb_matches_pytorch_optimizer(k):
  s = C.settings("lamb")[1][k]
  e = _err(_build("lamb", k), "lamb", k)
  loop = "open" if s["full"] is not None else "closed"
  assert e <= C.RTOL, (f"lamb({s['kwargs']}) vs {s['ref']} ({loop} loop): max rel"
                       f" err {e:.3g}")


def test_fixtures_cover_300_steps_and_every_flag():
  _, _, _, n = C.problem()
  assert n >= 300
  seen = {m: set() for m in ("lars", "lamb")}
  for m in seen:
    steps, sets = C.settings(m)
    assert steps[-1] == n and len(sets) >= 4
    for s in sets:
      seen[m] |= set(s["kwargs"])
  assert seen["lars"] >= {"learning_rate", "momentum", "weight_decay",
                          "trust_coefficient", "nesterov", "dampening"}
  assert seen["lamb"] >= {"learning_rate", "b1", "b2", "eps", "weight_decay",
                          "weight_decouple", "fixed_decay", "grad_averaging",
                          "max_grad_norm", "pre_norm", "adam", "adam_debias",
                          "max_weight_norm"}


# ---------------------------------------------------------------------------
# Negative controls: a known-different variant must fail the comparison.
# ---------------------------------------------------------------------------


def test_lars_negative_controls():
  # optax.lars: all leaves adapted, ||g + wd w|| denominator, lr before momentum.
  assert C.error(optax.lars(0.05, weight_decay=1e-2, trust_coefficient=0.3,
                            nesterov=True), "lars", 2) > 1e-3
  # every leaf adapted and decayed (the vectors too).
  every = lambda p: jax.tree.map(lambda _: True, p)  # noqa: E731
  assert C.error(_build("lars", 2, trust_ratio_mask=every,
                        weight_decay_mask=every), "lars", 2) > 1e-3


def test_lamb_negative_controls():
  assert C.error(optax.lamb(1e-2, weight_decay=1e-2), "lamb", 1) > 1e-3
  # The reference divides the step by 1 - b1**t unless adam_debias.
  assert C.error(_build("lamb", 1, adam_debias=True), "lamb", 1) > 1e-3
  assert C.open_loop_error(_build("lamb", 0, max_weight_norm=None, b2=0.99),
                           "lamb", 0) > 1e-4


# ---------------------------------------------------------------------------
# Masks and primitives.
# ---------------------------------------------------------------------------


def test_exclude_bias_and_norm():
  params = {
      "Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
      "scan": {"bias": jnp.ones((4, 3)), "w": jnp.ones((4, 3, 3))},
      "LayerNorm_0": {"scale": jnp.ones(3)},
      "ln_f": {"g": jnp.ones((2, 3))},
      "bn0": {"mean": jnp.ones((2, 2))},
      "emb": jnp.ones((5, 2)),
      "s": jnp.ones(()),
      "none": None,
  }
  m = optzoo.exclude_bias_and_norm(params)
  assert m == {"Dense_0": {"kernel": True, "bias": False},
               "scan": {"bias": False, "w": True},
               "LayerNorm_0": {"scale": False}, "ln_f": {"g": False},
               "bn0": {"mean": False}, "emb": True, "s": False, "none": None}
  # Usable with optax.masked.
  tx = optax.masked(optax.scale(0.0), optzoo.exclude_bias_and_norm)
  p = {k: params[k] for k in ("Dense_0", "emb", "s")}
  u, _ = tx.update(p, tx.init(p), p)
  assert float(jnp.sum(u["Dense_0"]["kernel"])) == 0.0
  assert float(jnp.sum(u["Dense_0"]["bias"])) == 3.0


def test_lars_with_the_mask_helper_equals_the_reference_rule():
  # On the fixture tree (leaves b, s, t, w, z) the helper excludes exactly the
  # leaves with at most one dimension: the reference's own rule.
  mask = optzoo.exclude_bias_and_norm
  e = C.error(_build("lars", 2, trust_ratio_mask=mask, weight_decay_mask=mask),
              "lars", 2)
  assert e <= C.RTOL


def test_lars_trust_ratio_primitive():
  tc, wd = 0.1, 0.01
  p = {"w": jnp.arange(6.0).reshape(2, 3) - 2.0, "z": jnp.zeros((2, 2)),
       "g0": jnp.ones((2, 2)), "b": jnp.ones(3)}
  g = {"w": jnp.ones((2, 3)) * 0.5, "z": jnp.ones((2, 2)), "g0": jnp.zeros((2, 2)),
       "b": jnp.ones(3)}
  tx = optzoo.scale_by_lars_trust_ratio(tc, wd)
  u, _ = tx.update(g, tx.init(p), p)
  pn, gn = np.linalg.norm(p["w"]), np.linalg.norm(g["w"])
  np.testing.assert_allclose(u["w"], tc * pn / (gn + wd * pn) * (g["w"] + wd * p["w"]),
                             rtol=1e-14)
  np.testing.assert_allclose(u["z"], g["z"], rtol=1e-14)         # ||w|| = 0: ratio 1
  ratio = tc / wd                                                 # ||g|| = 0
  np.testing.assert_allclose(u["g0"], ratio * wd * p["g0"], rtol=1e-14)
  np.testing.assert_allclose(u["b"], g["b"], rtol=1e-14)         # vectors untouched
  # eps enters the denominator (not a silent no-op).
  tx = optzoo.scale_by_lars_trust_ratio(tc, wd, eps=1.0)
  u2, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u2["w"], tc * pn / (gn + wd * pn + 1.0)
                             * (g["w"] + wd * p["w"]), rtol=1e-14)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(g, tx.init(p))


def test_lamb_trust_ratio_primitive_and_masks():
  p = {"w": jnp.full((2, 3), 5.0), "z": jnp.zeros((2,)), "b": jnp.ones(3)}
  u = {"w": jnp.ones((2, 3)), "z": jnp.ones((2,)), "b": jnp.full((3,), 2.0)}
  tx = optzoo.scale_by_lamb_trust_ratio(eps=1e-6, max_weight_norm=10.0,
                                        mask={"w": True, "z": True, "b": False})
  out, _ = tx.update(u, tx.init(p), p)
  wn = min(np.linalg.norm(p["w"]), 10.0)
  np.testing.assert_allclose(out["w"], u["w"] * wn / (np.linalg.norm(u["w"]) + 1e-6),
                             rtol=1e-14)
  np.testing.assert_allclose(out["z"], u["z"])     # ||w|| = 0: ratio 1
  np.testing.assert_allclose(out["b"], u["b"])     # masked out
  # lamb's masks: an excluded leaf gets the un-adapted (adam=True) update.
  params = {"w": jnp.full((2, 3), 3.0), "b": jnp.full((3,), 2.0)}
  grads = {"w": jnp.ones((2, 3)), "b": jnp.full((3,), 0.1)}
  mask = optzoo.exclude_bias_and_norm
  a = optzoo.lamb(0.1, weight_decay=0.1, trust_ratio_mask=mask, weight_decay_mask=mask)
  b = optzoo.lamb(0.1, adam=True)
  ua, _ = a.update(grads, a.init(params), params)
  ub, _ = b.update(grads, b.init(params), params)
  np.testing.assert_allclose(ua["b"], ub["b"], rtol=1e-14)
  assert not np.allclose(ua["w"], ub["w"])


def test_lars_momentum_first_step_is_dampened():
  # pytorch_optimizer.LARS: b_1 = (1 - d) u_1 (torch.optim.SGD: b_1 = u_1).
  p = {"b": jnp.ones(3)}
  g = {"b": jnp.full((3,), 2.0)}
  tx = optzoo.lars(1.0, momentum=0.9, dampening=0.25)
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u["b"], -0.75 * 2.0 * np.ones(3), rtol=1e-15)


@pytest.mark.parametrize("factory", [optzoo.lars, optzoo.lamb])
def test_bf16_params_keep_dtype(factory):
  p = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
  g = jax.tree.map(lambda x: 0.1 * x, p)
  tx = factory(0.1, weight_decay=0.01)
  u, s = jax.jit(tx.update)(g, tx.init(p), p)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
  assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(u))
