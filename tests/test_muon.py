"""optzoo.muon vs torch.optim.Muon (+ AdamW for the non-2-D leaf), torch 2.13.

Fixture ``tests/fixtures/torch_optim_muon.npz`` (tests/gen_torch_optim_fixtures.py):
300 closed-loop steps of a 5-3-6 tanh net (W1 5x3 exercises the transposed
branch, W2 3x6 the plain one, the bias b1 goes to AdamW). torch runs
Newton-Schulz in bfloat16; the float64 settings were generated with torch's
own Muon code and only its ``Tensor.bfloat16`` cast replaced by a copy, and are
compared with ``ns_dtype=float64`` at 1e-6. The bf16 setting (torch's real
default) is compared loosely: bf16 matmuls are not bit-reproducible across
libraries.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo._src import muon as muon_lib
from test_classic import load, problems, rel_err

KEYS = ("w1", "b1", "w2")


def loss(params):
  p = problems()
  x, y = jnp.asarray(p["muon_x"]), jnp.asarray(p["muon_y"])
  pred = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
  return 0.5 * jnp.mean(jnp.sum((pred - y) ** 2, axis=1))


def params0():
  p = problems()
  return {k: jnp.asarray(p[f"muon_{k}"]) for k in KEYS}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(tx, num_steps):
  def body(carry, _):
    params, state = carry
    u, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, u)
    return (params, state), params

  params = params0()
  _, traj = jax.lax.scan(body, (params, tx.init(params)), None, length=num_steps)
  return traj


def build(kwargs, **over):
  kw = {k: v for k, v in kwargs.items() if not k.startswith("_")}
  if "ns_coefficients" in kw:
    kw["ns_coefficients"] = tuple(kw["ns_coefficients"])
  kw.update(over)
  return optzoo.muon(**kw, fallback=optzoo.adamw(**kwargs["_fallback"]))


def error(tx, setting, steps, upto=None):
  traj = _run(tx, int(steps[-1]))
  idx = np.asarray(steps) - 1
  n = len(idx) if upto is None else upto
  return max(rel_err(np.asarray(traj[k])[idx][:n], setting["arrays"][k][:n])
             for k in KEYS)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_matches_torch_float64(k):
  steps, settings = load("muon")
  assert steps[-1] >= 300
  err = error(build(settings[k]["kwargs"]), settings[k], steps)
  assert err <= 1e-6, (settings[k]["torch"], err)


def _open_loop_error(tx, setting, num=20):
  """Max relative error of each step's update, fed torch's own iterates."""
  tp = [params0()] + [{k: jnp.asarray(setting["arrays"][k][i]) for k in KEYS}
                      for i in range(num)]
  state = tx.init(tp[0])
  step = jax.jit(lambda p, st: tx.update(jax.grad(loss)(p), st, p))
  errs = []
  for t in range(num):
    u, state = step(tp[t], state)
    for k in ("w1", "w2"):
      ref = tp[t + 1][k] - tp[t][k]
      errs.append(float(jnp.linalg.norm(u[k] - ref) / jnp.linalg.norm(ref)))
  return max(errs)


def test_bf16_newton_schulz_matches_torch_open_loop():
  """torch's default bf16 iteration, step by step (steps 1..20 are stored).

  Closed loop, a bf16 rounding flip (a 4e-3 jump from a 1e-16 input change)
  eventually separates the trajectories, so each step is compared from
  torch's own iterate and momentum history instead.
  """
  steps, settings = load("muon")
  s = settings[3]
  assert list(steps[:20]) == list(range(1, 21))
  assert _open_loop_error(build(s["kwargs"]), s) <= 1e-10
  # Negative control: a float32 iteration is a different (more precise) step.
  assert _open_loop_error(build(s["kwargs"], ns_dtype=jnp.float32), s) > 1e-3


def test_negative_control_no_adjust_and_optax_muon():
  steps, settings = load("muon")
  s = settings[0]
  # A plain heavy-ball buffer (b = mu b + g) instead of torch's EMA buffer.
  kw = {k: v for k, v in s["kwargs"].items() if not k.startswith("_")}
  heavy = optax.partition({
      "muon": optax.chain(optax.trace(0.95, nesterov=True),
                          muon_lib.orthogonalize(ns_dtype=jnp.float64),
                          optzoo.add_decayed_weights(0.1),
                          optzoo.scale_by_learning_rate(1e-3)),
      "fallback": optzoo.adamw()}, muon_lib._label)
  assert error(heavy, s, steps) > 1e-3
  del kw


def test_newton_schulz_orthogonalizes():
  g = jax.random.normal(jax.random.PRNGKey(0), (6, 4), jnp.float64)
  o = muon_lib.newton_schulz(g, (3.0, -3.2, 1.2), 30, 1e-7, jnp.float64)
  sv = np.linalg.svd(np.asarray(o), compute_uv=False)
  assert np.all(sv > 0.5) and np.all(sv < 1.5)
  u, _, vt = np.linalg.svd(np.asarray(g), full_matrices=False)
  exact = muon_lib.newton_schulz(g, (1.5, -0.5, 0.0), 60, 1e-7, jnp.float64)
  np.testing.assert_allclose(exact, u @ vt, atol=1e-8)


def test_routing_dtypes_jit_once_and_none():
  from helpers import TraceCounter
  tx = optzoo.muon(0.02, ns_dtype=jnp.float32)
  params = {"w": jnp.ones((4, 3), jnp.bfloat16) + jnp.eye(4, 3, dtype=jnp.bfloat16),
            "b": jnp.ones((3,), jnp.float32), "conv": jnp.ones((2, 2, 3), jnp.float32),
            "n": None}
  counter = TraceCounter(lambda p, s: tx.update(jax.tree.map(lambda x: 0.1 * x + 0.3, p),
                                               s, p))
  step = jax.jit(counter)
  state = tx.init(params)
  for _ in range(3):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  assert params["w"].dtype == jnp.bfloat16 and params["b"].dtype == jnp.float32
  assert params["n"] is None
  # The fallback (AdamW) got the 1-D and 3-D leaves; muon's buffer only the 2-D.
  bufs = jax.tree.leaves(optax.tree_utils.tree_get(state, "momentum_buffer"))
  assert [b.shape for b in bufs] == [(4, 3)]


def test_primitives_reject_non_2d():
  tx = muon_lib.scale_by_muon()
  p = {"b": jnp.ones(3)}
  with pytest.raises(ValueError, match="2-D"):
    tx.update(p, tx.init(p), p)


@pytest.mark.parametrize("kwargs,param", [
    ({"ns_steps": 100}, "ns_steps"), ({"adjust_lr_fn": "x"}, "adjust_lr_fn"),
    ({"momentum": -1.0}, "momentum"), ({"ns_coefficients": (1.0,)}, "ns_coefficients"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"fallback": 3}, "fallback"),
    ({"eps": -1.0}, "eps"),
])
def test_bad_input(kwargs, param):
  with pytest.raises((ValueError, TypeError), match=param):
    optzoo.muon(**kwargs)
