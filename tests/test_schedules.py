"""Schedules against torch.optim.lr_scheduler fixtures and closed forms.

Fixtures: tests/fixtures/dynamics_schedules.npz, written by
tests/gen_dynamics_fixtures.py (torch 2.13, float64). Step i of a trace is the
lr used by the (i+1)-th optimizer step.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import schedules as S
from helpers import TraceCounter, fixture_path
import registry_cases

FIX = np.load(fixture_path("dynamics_schedules.npz"))

CASES = {
    "cyclic_triangular": lambda: S.cyclical(0.01, 0.1, 7),
    "cyclic_triangular2": lambda: S.cyclical(0.001, 0.05, 5, 8,
                                             mode="triangular2"),
    "cyclic_exp_range": lambda: S.cyclical(0.002, 0.2, 6, 3, mode="exp_range",
                                           gamma=0.99),
    "sgdr_t10": lambda: S.sgdr(0.1, 10),
    "sgdr_t3_mult2": lambda: S.sgdr(0.05, 3, 2, 0.001),
    "sgdr_t7_mult3": lambda: S.sgdr(1.0, 7, 3),
    "onecycle_cos": lambda: S.one_cycle(0.1, 250),
    "onecycle_cos_momentum": lambda: S.one_cycle_momentum(250),
    "onecycle_linear": lambda: S.one_cycle(
        0.3, 233, pct_start=0.25, anneal_strategy="linear", div_factor=10.0,
        final_div_factor=100.0),
    "onecycle_linear_momentum": lambda: S.one_cycle_momentum(
        233, pct_start=0.25, anneal_strategy="linear"),
    "onecycle_3phase": lambda: S.one_cycle(0.2, 241, pct_start=0.35,
                                           three_phase=True),
    "onecycle_3phase_momentum": lambda: S.one_cycle_momentum(
        241, pct_start=0.35, three_phase=True, base_momentum=0.8,
        max_momentum=0.9),
    "onecycle_3phase_linear": lambda: S.one_cycle(
        1.0, 210, anneal_strategy="linear", three_phase=True),
    "onecycle_3phase_linear_momentum": lambda: S.one_cycle_momentum(
        210, anneal_strategy="linear", three_phase=True),
    "linear_default": lambda: S.linear_warmup(0.1, 5),
    "linear_w50": lambda: S.linear_warmup(0.3, 50, start_factor=0.1),
    "linear_down": lambda: S.linear_warmup(0.2, 40, start_factor=1.0,
                                           end_factor=0.25),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_scheduler(name):
  ref = FIX[name]
  assert len(ref) >= 200
  sched = CASES[name]()
  steps = jnp.arange(len(ref), dtype=jnp.int32)
  got = np.asarray(jax.jit(jax.vmap(sched))(steps))
  assert got.dtype == np.float64
  rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)
  assert rel.max() <= 1e-9, (name, rel.max(), int(rel.argmax()))
  # Python-int steps give the same values.
  for i in (0, 1, len(ref) // 2, len(ref) - 1):
    assert abs(float(sched(i)) - ref[i]) <= 1e-9 * abs(ref[i])


def test_public_module_and_top_level():
  assert optzoo.schedules.cyclical is optzoo.cyclical
  for name in S.__all__:
    assert getattr(optzoo, name) is getattr(S, name)
    info = optzoo.get_info(name)
    assert info.family == "schedule" and info.kind == "schedule"
    sched = registry_cases.build(info)
    v = jax.jit(sched)(jnp.asarray(3, jnp.int32))
    assert v.shape == () and np.isfinite(float(v))


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_holds_final_value_past_total_steps(three_phase, strategy):
  total = 50
  lr = S.one_cycle(0.1, total, anneal_strategy=strategy,
                   three_phase=three_phase)
  mom = S.one_cycle_momentum(total, anneal_strategy=strategy,
                             three_phase=three_phase)
  f = jax.jit(lambda i: (lr(i), mom(i)))
  last_lr, last_mom = f(jnp.int32(total - 1))
  np.testing.assert_allclose(float(last_lr), 0.1 / 25 / 1e4, rtol=1e-9)
  np.testing.assert_allclose(float(last_mom), 0.95, rtol=1e-9)
  for i in (total, total + 1, 10 * total, 2**31 - 1):
    a, b = f(jnp.int32(i))
    assert float(a) == float(last_lr) and float(b) == float(last_mom)


def test_cyclical_and_sgdr_never_fail_for_large_steps():
  for sched in (S.cyclical(0.01, 0.1, 7), S.sgdr(0.1, 3, 2),
                S.sgdr(0.1, 10), S.cyclical(0.01, 0.1, 7, mode="exp_range",
                                            gamma=0.999)):
    v = jax.jit(sched)(jnp.int32(2**31 - 1))
    assert np.isfinite(float(v))


def _sgdr_iterative(base_lr, t_0, t_mult, eta_min, steps):
  """torch's CosineAnnealingWarmRestarts.step() loop, re-derived."""
  out, t_cur, t_i = [], 0, t_0
  for _ in range(steps):
    out.append(eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur /
                                                             t_i)) / 2)
    t_cur += 1
    if t_cur >= t_i:
      t_cur -= t_i
      t_i *= t_mult
  return np.asarray(out)


@pytest.mark.parametrize("t_0,t_mult", [(1, 2), (3, 2), (2, 3), (5, 1), (1, 5)])
def test_sgdr_unbounded_restarts_exact_at_boundaries(t_0, t_mult):
  n = 4000
  ref = _sgdr_iterative(0.1, t_0, t_mult, 0.0, n)
  got = np.asarray(jax.jit(jax.vmap(S.sgdr(0.1, t_0, t_mult)))(jnp.arange(n)))
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)
  # Every restart returns exactly to the peak.
  assert np.sum(np.isclose(got, 0.1, rtol=0, atol=1e-15)) == np.sum(
      ref == 0.1)


def test_sgdr_learning_rate_schedule_moves_the_peaks():
  peak = optax.exponential_decay(1.0, 10, 0.5)
  sched = S.sgdr(peak, 10)
  for i in (0, 10, 20, 35):
    t_cur = i % 10
    want = float(peak(i)) * (1 + math.cos(math.pi * t_cur / 10)) / 2
    assert abs(float(sched(i)) - want) < 1e-12


def test_linear_warmup_hands_over_to_a_schedule():
  after = optax.cosine_decay_schedule(0.2, 100)
  sched = S.linear_warmup(after, 10, start_factor=0.0)
  vals = np.asarray(jax.vmap(sched)(jnp.arange(130)))
  np.testing.assert_allclose(vals[:10], 0.2 * np.arange(10) / 10, rtol=1e-12)
  np.testing.assert_allclose(vals[10:], np.asarray(
      jax.vmap(after)(jnp.arange(120))), rtol=1e-12)


def test_exponential_and_radam_warmup_closed_forms():
  t = np.arange(5000)
  exp = np.asarray(jax.vmap(S.exponential_warmup(0.01, 200.0))(t))
  np.testing.assert_allclose(exp, 0.01 * (1 - np.exp(-(t + 1) / 200.0)),
                             rtol=1e-12)
  lin = np.asarray(jax.vmap(S.radam_warmup(0.01))(t))
  np.testing.assert_allclose(lin, 0.01 * np.minimum(1.0, (t + 1) * 0.001 / 2),
                             rtol=1e-12)
  assert lin[1998] < 0.01 and lin[1999] == 0.01  # 2 / (1 - b2) = 2000 steps
  ex2 = np.asarray(jax.vmap(S.radam_warmup(0.01, b2=0.99,
                                           kind="exponential"))(t))
  np.testing.assert_allclose(ex2, 0.01 * (1 - np.exp(-0.01 * (t + 1))),
                             rtol=1e-12)
  # Multiplies a schedule evaluated at the same step.
  decay = optax.exponential_decay(0.01, 100, 0.5)
  got = np.asarray(jax.vmap(S.radam_warmup(decay, b2=0.9))(t[:100]))
  want = np.minimum(1.0, (t[:100] + 1) * 0.05) * np.asarray(
      jax.vmap(decay)(t[:100]))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_scale_for_batch_size_rules():
  assert float(S.scale_for_batch_size(0.1, 128, 512)(0)) == pytest.approx(0.4)
  assert float(S.scale_for_batch_size(1e-3, 128, 512, rule="sqrt")(7)
               ) == pytest.approx(2e-3)
  assert float(S.scale_for_batch_size(1e-3, 256, 64, rule="adam")(0)
               ) == pytest.approx(5e-4)
  sched = S.scale_for_batch_size(optax.linear_schedule(0.1, 0.0, 10), 32, 64,
                                 rule="sgd")
  assert float(sched(5)) == pytest.approx(0.1)


def test_byol_tau_schedule():
  sched = S.byol_tau_schedule(100, 0.996)
  vals = np.asarray(jax.vmap(sched)(jnp.arange(200)))
  k = np.minimum(np.arange(200), 100)
  np.testing.assert_allclose(
      vals, 1 - 0.004 * (np.cos(np.pi * k / 100) + 1) / 2, rtol=1e-12)
  assert vals[0] == pytest.approx(0.996) and vals[-1] == 1.0


def test_one_cycle_drives_sgd_momentum_through_inject_hyperparams():
  total = 60
  lr, mom = S.one_cycle(0.5, total), S.one_cycle_momentum(total)
  tx = optax.inject_hyperparams(optzoo.sgd)(learning_rate=lr, momentum=mom)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  seen_lr, seen_mom = [], []
  for _ in range(total + 5):
    _, state = step({"w": jnp.ones(3)}, state, params)
    # The state holds the values used by the update just made.
    seen_lr.append(float(state.hyperparams["learning_rate"]))
    seen_mom.append(float(state.hyperparams["momentum"]))
  assert counter.count == 1
  # Update t (0-based) used schedule(t).
  np.testing.assert_allclose(seen_lr[:total], np.asarray(
      jax.vmap(lr)(jnp.arange(total))), rtol=1e-12)
  np.testing.assert_allclose(seen_mom[:total], np.asarray(
      jax.vmap(mom)(jnp.arange(total))), rtol=1e-12)


def test_schedules_under_scale_by_schedule_no_recompile():
  sched = S.cyclical(0.01, 0.1, 4, mode="triangular2")
  tx = optax.chain(optzoo.scale_by_adam(), optax.scale_by_schedule(sched))
  params = jnp.ones(2)
  state = tx.init(params)
  counter = TraceCounter(lambda s: tx.update(jnp.ones(2), s, params))
  step = jax.jit(counter)
  for _ in range(10):
    _, state = step(state)
  assert counter.count == 1


BAD = [
    (lambda: S.cyclical(0.01, 0.1, 0), ValueError, "step_size_up"),
    (lambda: S.cyclical(0.01, 0.1, -3), ValueError, "step_size_up"),
    (lambda: S.cyclical(0.01, 0.1, 4, step_size_down=0), ValueError,
     "step_size_down"),
    (lambda: S.cyclical(0.01, 0.1, 4, mode="sine"), ValueError, "mode"),
    (lambda: S.cyclical(-0.01, 0.1, 4), ValueError, "base_lr"),
    (lambda: S.sgdr(0.1, 0), ValueError, "t_0"),
    (lambda: S.sgdr(0.1, 10, t_mult=0), ValueError, "t_mult"),
    (lambda: S.sgdr(0.1, 10, t_mult=1.5), TypeError, "t_mult"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.0), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, pct_start=1.0), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, pct_start=-0.2), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.005), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.6, three_phase=True),
     ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 0), ValueError, "total_steps"),
    (lambda: S.one_cycle(0.1, 100, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    (lambda: S.one_cycle(0.1, 100, div_factor=0), ValueError, "div_factor"),
    (lambda: S.one_cycle_momentum(100, base_momentum=1.2), ValueError,
     "base_momentum"),
    (lambda: S.linear_warmup(0.1, 0), ValueError, "warmup_steps"),
    (lambda: S.linear_warmup(0.1, 10, start_factor=-1), ValueError,
     "start_factor"),
    (lambda: S.exponential_warmup(0.1, 0.0), ValueError, "time_constant"),
    (lambda: S.radam_warmup(0.1, b2=1.0), ValueError, "b2"),
    (lambda: S.scale_for_batch_size(0.1, 0, 10), ValueError,
     "base_batch_size"),
    (lambda: S.scale_for_batch_size(0.1, 10, 10, rule="log"), ValueError,
     "rule"),
    (lambda: S.byol_tau_schedule(0), ValueError, "total_steps"),
    (lambda: S.cyclical("0.1", 0.1, 4), TypeError, "base_lr"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_naming_the_parameter(i):
  make, exc, name = BAD[i]
  with pytest.raises(exc, match=name):
    make()


@pytest.mark.parametrize("name", sorted(S.__all__))
def test_registry_invalid_entries_raise(name):
  info = optzoo.get_info(name)
  assert registry_cases.invalid(info.name)
  for override, exc in registry_cases.invalid(info.name):
    with pytest.raises(exc):
      registry_cases.build(info, **override)
