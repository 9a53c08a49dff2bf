"""torch.optim.swa_utils (AveragedModel, SWALR, update_bn) vs torch 2.13.

Fixtures: tests/fixtures/torch_swa.npz, written by tests/gen_swa_fixtures.py.
The averaging is checked open loop: torch's own parameter / buffer
trajectory is fed to optzoo.averaged_model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import nn as zn
from helpers import fixture_path

FIX = np.load(fixture_path("torch_swa.npz"))
SWA_START = 40
PARAMS = ("0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias",
          "6.weight", "6.bias")
BUFFERS = ("1.running_mean", "1.running_var", "4.running_mean",
           "4.running_var")


def _traj(names):
  return {k: jnp.asarray(FIX[f"traj/{k}"]) for k in names}


def _run(avg, start=0):
  """Feeds torch's trajectory from step ``start`` on; one jitted scan."""
  params, buffers = _traj(PARAMS), _traj(BUFFERS)
  p0 = {k: v[0] for k, v in params.items()}
  b0 = {k: v[0] for k, v in buffers.items()}

  def body(state, xs):
    p, b = xs
    return avg.update(state, p, b), None

  sl = lambda t: jax.tree.map(lambda v: v[start:], t)
  state, _ = jax.jit(lambda: jax.lax.scan(
      body, avg.init(p0, b0), (sl(params), sl(buffers))))()
  return state


def _max_rel(got, ref_prefix, names):
  return max(float(np.max(np.abs(np.asarray(got[k]) - FIX[f"{ref_prefix}/{k}"])
                          / np.maximum(np.abs(FIX[f"{ref_prefix}/{k}"]),
                                       1e-12)))
             for k in names)


def test_swa_average_matches_torch():
  state = _run(optzoo.averaged_model("swa"), start=SWA_START)
  assert int(state.n_averaged) == 60 - SWA_START
  assert _max_rel(state.params, "swa", PARAMS) <= 1e-9
  # use_buffers=False: the buffers are the model's latest, copied.
  assert _max_rel(state.batch_stats, "swa", BUFFERS) <= 1e-12
  # Negative control: an EMA is not the SWA mean.
  ema = _run(optzoo.averaged_model("ema", 0.9), start=SWA_START)
  assert _max_rel(ema.params, "swa", PARAMS) > 1e-3


def test_ema_with_buffers_matches_torch():
  state = _run(optzoo.averaged_model("ema", 0.9, use_buffers=True))
  assert _max_rel(state.params, "ema", PARAMS) <= 1e-9
  assert _max_rel(state.batch_stats, "ema", BUFFERS) <= 1e-9
  # Negative control: without use_buffers the buffers are not averaged.
  plain = _run(optzoo.averaged_model("ema", 0.9))
  assert _max_rel(plain.batch_stats, "ema", BUFFERS) > 1e-3


def test_averaged_model_agrees_with_param_ema():
  """Same numbers as optzoo.param_ema (the in-chain version)."""
  params = _traj(PARAMS)
  avg = optzoo.averaged_model("ema", 0.9)
  tx = optzoo.param_ema(0.9)
  p_prev = {k: v[0] for k, v in params.items()}
  st, ts = avg.init(p_prev), tx.init(p_prev)
  for i in range(1, 6):
    p = {k: v[i] for k, v in params.items()}
    st = avg.update(st, p)
    _, ts = tx.update(jax.tree.map(jnp.subtract, p, p_prev), ts, p_prev)
    p_prev = p
  for k in PARAMS:
    np.testing.assert_allclose(np.asarray(st.params[k]),
                               np.asarray(optzoo.ema_params(ts)[k]),
                               rtol=1e-12)


def test_averaged_model_bad_input():
  with pytest.raises(ValueError, match="mode"):
    optzoo.averaged_model("mean")
  with pytest.raises(ValueError, match="decay"):
    optzoo.averaged_model("ema", 1.5)
  with pytest.raises(TypeError, match="use_buffers"):
    optzoo.averaged_model(use_buffers="yes")


@pytest.mark.parametrize("name,kw", [
    ("cos10", dict(anneal_epochs=10)),
    ("linear5", dict(anneal_epochs=5, anneal_strategy="linear")),
    ("cos0", dict(anneal_epochs=0)),
    ("linear30", dict(anneal_epochs=30, anneal_strategy="linear")),
])
def test_swalr_matches_torch(name, kw):
  ref = FIX[f"swalr/{name}"]
  cos = optzoo.schedules.cosine_annealing_lr(0.1, 300)
  sched = optax.join_schedules(
      [cos, optzoo.schedules.swalr(float(cos(100)), 0.01, **kw)], [100])
  got = np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(len(ref))))
  np.testing.assert_allclose(got, ref, rtol=1e-9)
  # Negative control: the other annealing strategy.
  other = "linear" if kw.get("anneal_strategy", "cos") == "cos" else "cos"
  if kw["anneal_epochs"] > 1:
    bad = optax.join_schedules([cos, optzoo.schedules.swalr(
        float(cos(100)), 0.01, kw["anneal_epochs"], other)], [100])
    assert np.max(np.abs(np.asarray(jax.vmap(bad)(jnp.arange(len(ref))))
                         - ref) / ref) > 1e-3


def test_training_lr_trace_matches_torch():
  cos = optzoo.schedules.cosine_annealing_lr(0.05, SWA_START)
  sched = optax.join_schedules(
      [cos, optzoo.schedules.swalr(float(cos(SWA_START)), 0.02)], [SWA_START])
  np.testing.assert_allclose(np.asarray(jax.vmap(sched)(jnp.arange(60))),
                             FIX["lr"], rtol=1e-9)


def _flax_from_torch(prefix):
  g = lambda k: jnp.asarray(FIX[f"{prefix}/{k}"])
  params = {
      "Dense_0": {"kernel": g("0.weight").T},
      "BatchNorm_0": {"scale": g("1.weight"), "bias": g("1.bias")},
      "Dense_1": {"kernel": g("3.weight").T},
      "BatchNorm_1": {"scale": g("4.weight"), "bias": g("4.bias")},
      "Dense_2": {"kernel": g("6.weight").T, "bias": g("6.bias")},
  }
  stats = {"BatchNorm_0": {"mean": g("1.running_mean"),
                           "var": g("1.running_var")},
           "BatchNorm_1": {"mean": g("4.running_mean"),
                           "var": g("4.running_var")}}
  return params, stats


def test_update_bn_matches_torch():
  model = zn.MLP(hidden=(8, 6), num_classes=3, norm="batch")
  params, stats = _flax_from_torch("swa")
  x = FIX["data/x"]
  batches = [x[j:j + 20] for j in range(0, 200, 20)]
  new = optzoo.update_bn(model, params, stats, batches, unbiased=True)
  for layer, tl in (("BatchNorm_0", "1"), ("BatchNorm_1", "4")):
    np.testing.assert_allclose(np.asarray(new[layer]["mean"]),
                               FIX[f"swa_bn/{tl}.running_mean"], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(new[layer]["var"]),
                               FIX[f"swa_bn/{tl}.running_var"], rtol=1e-9)
  # Flax's own (biased) convention differs by m/(m-1) = 20/19: a negative
  # control, and tuples (x, y) are accepted like torch's loader.
  biased = optzoo.update_bn(model, params, stats, [(b, None) for b in batches])
  np.testing.assert_allclose(np.asarray(biased["BatchNorm_1"]["var"]) * 20 / 19,
                             FIX["swa_bn/4.running_var"], rtol=1e-9)
  assert not np.allclose(np.asarray(biased["BatchNorm_1"]["var"]),
                         FIX["swa_bn/4.running_var"], rtol=1e-3)
  # The averaged stats are used in eval mode: same logits as torch's model
  # would give (no NaN, shape kept).
  logits = model.apply({"params": params, "batch_stats": new}, x[:4])
  assert logits.shape == (4, 3) and np.all(np.isfinite(np.asarray(logits)))


def test_update_bn_without_batchnorm_is_identity():
  model = zn.MLP(hidden=(4,), num_classes=2, norm="none")
  params = model.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))["params"]
  assert optzoo.update_bn(model, params, {}, [jnp.ones((2, 3))]) == {}
