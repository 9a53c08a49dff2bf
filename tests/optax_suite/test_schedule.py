"""optax 0.2.8 ``optax/schedules/_schedule_test.py``, on optzoo's schedules.

Adapted where optzoo has the same kind of schedule: polynomial(power=1) ->
``optzoo.linear_warmup``; the one-cycle tests -> ``optzoo.one_cycle``
(torch's OneCycleLR: a documented difference, xfail); SGDR's limits ->
``optzoo.sgdr``; giant step counts; ``ScheduleAsLearningRateTest`` on
optzoo's aliases (which, as in optax, must be *annotated* as accepting an
``optax.ScalarOrSchedule``: here that is asserted, not skipped). Left out:
optax's other schedule families (optzoo has no piecewise/exponential/cosine
decay of its own: use optax's).
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
import registry_cases
from optax_suite import test_alias
from optax_suite._common import assert_trees_all_close, differs


def test_linear():
  """optax: polynomial_schedule(10, 20, power=1, transition_steps=10)."""
  schedule_fn = jax.jit(optzoo.linear_warmup(20.0, warmup_steps=10, start_factor=0.5))
  generated_vals = [schedule_fn(count) for count in range(15)]
  expected_vals = np.array(list(range(10, 20)) + [20] * 5, dtype=np.float32)
  np.testing.assert_allclose(expected_vals, np.array(generated_vals), atol=1e-3)


@pytest.mark.parametrize("start_factor", [0.5, 1.0 / 3.0, 0.1, 0.0])
@pytest.mark.parametrize("learning_rate", [0.5, 1.0, 3e-4])
def test_linear_warmup_ends_exactly_in_float32(learning_rate, start_factor):
  """As optax's linear_schedule: the end of the warm-up is exact under jit."""
  with jax.enable_x64(False):
    fn = jax.jit(optzoo.linear_warmup(learning_rate, warmup_steps=7,
                                      start_factor=start_factor))
    for t in (7, 8, 100):
      assert fn(t).dtype == jnp.float32
      assert float(fn(t)) == float(np.float32(learning_rate)), (t, float(fn(t)))


def test_immutable_count():
  schedule_fn = jax.jit(optzoo.linear_warmup(2.0, warmup_steps=4, start_factor=0.5))
  count = jnp.asarray(1)
  before = np.asarray(count).copy()
  schedule_fn(count)
  np.testing.assert_array_equal(np.asarray(count), before)


def test_with_giant_int_steps():
  """Every optzoo schedule is finite at 2**31 - 1 and beyond int32 sizes."""
  for info in optzoo.list_optimizers(kind="schedule"):
    fn = jax.jit(registry_cases.build(info))
    for step in (2**31 - 1, int(1e10)):
      out = np.asarray(fn(step))
      assert np.all(np.isfinite(out)), (info.name, step)


@pytest.mark.parametrize("lr0,t_mult", [(1.6, 1), (1.6, 2)])
def test_sgdr_limits(lr0, t_mult):
  """optax SGDRTest.test_limits: the peak at every restart."""
  schedule_fn = jax.jit(optzoo.sgdr(lr0, t_0=500, t_mult=t_mult))
  starts = [0, 500, 500 + 500 * t_mult]
  for s in starts:
    np.testing.assert_allclose(lr0, schedule_fn(s))


@differs("optzoo.one_cycle is torch's OneCycleLR: the phases end at steps "
         "pct_start*total-1 and total-1, optax's at pct_start*total and total")
def test_onecycle_linear():
  schedule_fn = jax.jit(optzoo.one_cycle(
      1000.0, total_steps=10, pct_start=0.3, anneal_strategy="linear",
      div_factor=10.0, final_div_factor=100.0))
  generated_vals = [schedule_fn(step) for step in range(12)]
  # optax's linear one-cycle with pct_final=0.7 (three phases).
  expected_vals = [100.0, 400.0, 700.0, 1000.0, 775.0, 550.0, 325.0, 100.0,
                   67.0, 34.0, 1.0, 1.0]
  np.testing.assert_allclose(generated_vals, expected_vals, atol=1e-3)


@differs("optzoo.one_cycle is torch's OneCycleLR: the phases end at steps "
         "pct_start*total-1 and total-1, optax's at pct_start*total and total")
def test_onecycle_cosine():
  schedule_fn = jax.jit(optzoo.one_cycle(
      1000.0, total_steps=5, pct_start=0.4, div_factor=10.0, final_div_factor=100.0))
  generated_vals = [schedule_fn(step) for step in range(7)]
  expected_vals = [100.0, 550.0, 1000.0, 750.25, 250.75, 1.0, 1.0]
  np.testing.assert_allclose(generated_vals, expected_vals, atol=1e-3)


def test_nonpositive_transition_steps():
  with pytest.raises(ValueError):
    optzoo.one_cycle(5.0, total_steps=0)
  with pytest.raises(ValueError):
    optzoo.linear_warmup(5.0, warmup_steps=0)


def test_schedule_annotations_are_not_strings():
  """``inspect.signature`` gives real annotations (no postponed evaluation)."""
  for info in optzoo.list_optimizers(kind="schedule"):
    for name, p in inspect.signature(info.factory).parameters.items():
      assert not isinstance(p.annotation, str), (info.name, name, p.annotation)


@test_alias._CASES
def test_schedule_as_learning_rate(opt_name, opt_kwargs):
  """optax ScheduleAsLearningRateTest.test_optimization."""
  opt_setup = getattr(optzoo, opt_name)
  # eval_str: modules with ``from __future__ import annotations`` keep string
  # annotations; Optional: adafactor's None picks its variant's default.
  lr_arg = inspect.signature(opt_setup, eval_str=True).parameters.get(
      "learning_rate", None)
  assert lr_arg is not None and lr_arg.annotation in (
      optax.ScalarOrSchedule, optax.Schedule,
      Optional[optax.ScalarOrSchedule]), lr_arg

  opt_with_schedule = opt_setup(**dict(opt_kwargs,
                                       learning_rate=optax.constant_schedule(1e-3)))
  opt_with_lr = opt_setup(**dict(opt_kwargs, learning_rate=1e-3))
  initial_params, _, objective = test_alias._setup_parabola(jnp.float32)

  @functools.partial(jax.jit, static_argnums=(0,))
  def step(opt, params, state):
    updates = jax.grad(objective)(params)
    updates = jax.tree.map(lambda x: x.conj(), updates)
    updates, state = opt.update(updates, state, params)
    return optax.apply_updates(params, updates), state

  p_s, p_l = initial_params, initial_params
  s_s, s_l = opt_with_schedule.init(p_s), opt_with_lr.init(p_l)
  for _ in range(10):
    p_s, s_s = step(opt_with_schedule, p_s, s_s)
    p_l, s_l = step(opt_with_lr, p_l, s_l)
  assert_trees_all_close(p_s, p_l)
