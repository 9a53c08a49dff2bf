"""torch.optim.lr_scheduler as optax schedules, against torch 2.13 fixtures.

Fixtures: tests/fixtures/torch_schedules.npz, written by
tests/gen_torch_schedule_fixtures.py (the case names below match it). Entry i
of an lr trace is the lr used by the (i+1)-th optimizer step = torch's lr
after i calls of ``scheduler.step()``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import schedules as S
from helpers import fixture_path

FIX = np.load(fixture_path("torch_schedules.npz"))
TOL = 1e-6


def _mult_fn(t):
  return jnp.where(t % 100 < 50, 0.99, 1.005)


CASES = {
    "lambda_inv": lambda: S.lambda_lr(0.1, lambda t: 1.0 / (1 + 0.01 * t)),
    "lambda_warm_exp": lambda: S.lambda_lr(
        0.2, lambda t: jnp.minimum(1.0, (t + 1) / 50.0) * 0.999 ** t),
    "mult_const": lambda: S.multiplicative_lr(0.05, 0.998),
    "mult_fn": lambda: S.multiplicative_lr(0.1, _mult_fn),
    "step_30": lambda: S.step_lr(0.1, 30, 0.5),
    "step_100": lambda: S.step_lr(1.0, 100),
    "step_7": lambda: S.step_lr(0.3, 7, 0.9),
    "multistep_dup": lambda: S.multi_step_lr(0.1, [100, 300, 301, 800], 0.5),
    "multistep_zero_dup": lambda: S.multi_step_lr(0.1, [0, 500, 500, 900],
                                                  0.3),
    "multistep_empty": lambda: S.multi_step_lr(0.2, []),
    "constant_default": lambda: S.constant_lr(0.1),
    "constant_400": lambda: S.constant_lr(0.2, 0.5, 400),
    "constant_one": lambda: S.constant_lr(0.05, 1.0, 10),
    "linear_default": lambda: S.linear_lr(0.1),
    "linear_warm500": lambda: S.linear_lr(0.3, 0.01, 1.0, 500),
    "linear_down700": lambda: S.linear_lr(0.2, 1.0, 0.1, 700),
    "linear_to_zero": lambda: S.linear_lr(0.1, 0.5, 0.0, 300),
    "exp_999": lambda: S.exponential_lr(0.1, 0.999),
    "exp_99": lambda: S.exponential_lr(1.0, 0.99),
    "poly_linear": lambda: S.polynomial_lr(0.1, 500, 1.0),
    "poly_square": lambda: S.polynomial_lr(0.2, 900, 2.0),
    "poly_sqrt": lambda: S.polynomial_lr(0.1, 1000, 0.5),
    "cos_1000": lambda: S.cosine_annealing_lr(0.1, 1000),
    "cos_200_eta": lambda: S.cosine_annealing_lr(0.1, 200, 0.001),
    "cos_7_eta": lambda: S.cosine_annealing_lr(0.5, 7, 0.05),
    "seq_lin_cos": lambda: S.sequential_lr(
        [S.linear_lr(0.1, 0.01, 1.0, 100), S.cosine_annealing_lr(0.1, 1100)],
        [100]),
    "seq_const_exp_step": lambda: S.sequential_lr(
        [S.constant_lr(0.1, 0.25, 50), S.exponential_lr(0.1, 0.995),
         S.step_lr(0.1, 100, 0.5)], [200, 600]),
    "seq_cos_mult_cos": lambda: S.sequential_lr(
        [S.cosine_annealing_lr(0.1, 300, 0.01), S.multiplicative_lr(0.1, 0.997),
         S.cosine_annealing_lr(0.1, 200)], [250, 700]),
    "seq_lambda_poly": lambda: S.sequential_lr(
        [S.lambda_lr(0.1, lambda t: (t + 1) / 100.0),
         S.polynomial_lr(0.1, 800, 1.5)], [100]),
    "chain_const_exp": lambda: S.chained_scheduler(
        [S.constant_lr(0.1, 0.5, 100), S.exponential_lr(0.1, 0.998)]),
    "chain_exp_cos": lambda: S.chained_scheduler(
        [S.exponential_lr(0.1, 0.999), S.cosine_annealing_lr(0.1, 200)]),
    "chain_lin_cos": lambda: S.chained_scheduler(
        [S.linear_lr(0.1, 0.1, 1.0, 100), S.cosine_annealing_lr(0.1, 300)]),
    "chain_cos_eta_step": lambda: S.chained_scheduler(
        [S.cosine_annealing_lr(0.1, 250, 0.01), S.step_lr(0.1, 100, 0.7)]),
    "chain_step_lambda": lambda: S.chained_scheduler(
        [S.step_lr(0.1, 50, 0.5), S.lambda_lr(0.1, lambda t: 0.99 ** t)]),
    "chain_lambda_step": lambda: S.chained_scheduler(
        [S.lambda_lr(0.1, lambda t: 0.999 ** t), S.step_lr(0.1, 50, 0.5)]),
    "chain_mult_poly": lambda: S.chained_scheduler(
        [S.multiplicative_lr(0.1, _mult_fn), S.polynomial_lr(0.1, 1000, 2.0)]),
    "chain_seq_exp": lambda: S.chained_scheduler(
        [S.sequential_lr([S.linear_lr(0.1, 0.05, 1.0, 80),
                          S.cosine_annealing_lr(0.1, 400)], [80]),
         S.exponential_lr(0.1, 0.9995)]),
}

# A known-different variant per family: it must NOT match torch.
NEGATIVE = {
    "lambda_inv": lambda: S.lambda_lr(0.1, lambda t: 1.0 / (1 + 0.01 * (t + 1))),
    "mult_fn": lambda: S.multiplicative_lr(
        0.1, lambda t: jnp.where(t % 100 <= 50, 0.99, 1.005)),
    "step_30": lambda: S.step_lr(0.1, 31, 0.5),
    "multistep_dup": lambda: S.multi_step_lr(0.1, [100, 300, 800], 0.5),
    "constant_400": lambda: S.constant_lr(0.2, 0.5, 401),
    # Starting the warm-up from 0 (optax's usual recipe) instead of s * lr.
    "linear_warm500": lambda: optax.linear_schedule(0.0, 0.3, 500),
    "exp_999": lambda: optax.exponential_decay(0.1, 1, 0.999, 1),
    "poly_square": lambda: S.polynomial_lr(0.2, 901, 2.0),  # off by one
    # optax's cosine decay holds alpha past decay_steps; torch climbs back.
    "cos_200_eta": lambda: optax.cosine_decay_schedule(0.1, 200, 0.01),
    # optax.join_schedules restarts the cosine from its own step 0 too, but
    # from the lr at the end of the warm-up only if built so; here the
    # cosine runs on the global step (a common porting mistake).
    "seq_lin_cos": lambda: (lambda lin, cos: lambda t: jnp.where(
        t < 100, lin(t), cos(t)))(S.linear_lr(0.1, 0.01, 1.0, 100),
                                  S.cosine_annealing_lr(0.1, 1100)),
    # The product of the closed forms misses torch's recursive restart of
    # CosineAnnealingLR inside ChainedScheduler (and eta_min's affine form).
    "chain_exp_cos": lambda: (lambda a, b: lambda t: a(t) * b(t) / 0.1)(
        S.exponential_lr(0.1, 0.999), S.cosine_annealing_lr(0.1, 200)),
    "chain_cos_eta_step": lambda: (lambda a, b: lambda t: a(t) * b(t) / 0.1)(
        S.cosine_annealing_lr(0.1, 250, 0.01), S.step_lr(0.1, 100, 0.7)),
    "chain_step_lambda": lambda: (lambda a, b: lambda t: a(t) * b(t) / 0.1)(
        S.step_lr(0.1, 50, 0.5), S.lambda_lr(0.1, lambda t: 0.99 ** t)),
}


def _rel(got, ref):
  """Relative error; where torch's value is an exact zero up to rounding
  (|ref| < 1e-15 x peak, e.g. LinearLR to end_factor=0 built recursively
  leaves 6e-18) the difference is divided by 1e-9 x peak instead."""
  scale = np.maximum(np.abs(ref), 1e-9 * np.max(np.abs(ref)))
  return np.abs(got - ref) / scale


@pytest.fixture(scope="module")
def all_values():
  """Every case evaluated at steps 0..N-1 in ONE jitted, vmapped call."""
  n = len(FIX["lr/step_30"])
  steps = jnp.arange(n, dtype=jnp.int32)
  scheds = {k: f() for k, f in CASES.items()}
  negs = {k: f() for k, f in NEGATIVE.items()}
  f = jax.jit(lambda s: ({k: jax.vmap(v)(s) for k, v in scheds.items()},
                         {k: jax.vmap(v)(s) for k, v in negs.items()}))
  got, neg = f(steps)
  return jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, neg)


def test_every_fixture_case_is_covered():
  names = {k.split("/")[1] for k in FIX.files if k.startswith("lr/")}
  assert names == set(CASES)
  assert str(FIX["torch_version"]).startswith("2.13")


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name, all_values):
  ref = FIX[f"lr/{name}"]
  assert len(ref) >= 1000
  got = all_values[0][name]
  assert got.dtype == np.float64
  rel = _rel(got, ref)
  assert rel.max() <= TOL, (name, rel.max(), int(rel.argmax()))


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_negative_control_fails(name, all_values):
  ref = FIX[f"lr/{name}"]
  assert _rel(all_values[1][name], ref).max() > 1e-3


def test_families_have_negative_controls():
  fam = lambda n: n.split("_")[0]
  assert {fam(n) for n in CASES} == {fam(n) for n in NEGATIVE}


def test_python_int_steps_and_float32():
  """Python ints give the same values; float32 (x64 off) stays close."""
  for name in ("cos_200_eta", "seq_cos_mult_cos", "chain_lin_cos",
               "multistep_zero_dup"):
    ref = FIX[f"lr/{name}"]
    sched = CASES[name]()
    for i in (0, 1, 201, 251, 700, 1199):
      assert abs(float(sched(i)) - ref[i]) <= TOL * abs(ref[i]) + 1e-15
  with jax.enable_x64(False):
    for name in ("cos_200_eta", "seq_lin_cos", "step_7", "chain_lin_cos"):
      sched = CASES[name]()
      got = jax.jit(jax.vmap(sched))(jnp.arange(1200, dtype=jnp.int32))
      assert got.dtype == jnp.float32
      ref = FIX[f"lr/{name}"]
      np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-4,
                                 atol=1e-7 * ref.max())


def test_chained_precomputed_table_equals_the_recursion():
  """num_steps: O(1) lookups for the first steps, the loop after them."""
  members = lambda: [S.linear_lr(0.1, 0.1, 1.0, 100),
                     S.cosine_annealing_lr(0.1, 300)]
  ref = FIX["lr/chain_lin_cos"]
  tab = S.chained_scheduler(members(), num_steps=700)
  assert not tab.loop and S.chained_scheduler(members()).loop
  got = np.asarray(jax.jit(jax.vmap(tab))(jnp.arange(len(ref))))
  assert _rel(got, ref).max() <= TOL
  assert abs(float(jax.jit(tab)(jnp.int32(1000))) - ref[1000]) <= TOL * ref[1000]


def test_large_steps_stay_finite():
  for name in ("cos_7_eta", "step_7", "seq_const_exp_step", "poly_sqrt",
               "chain_const_exp"):
    v = jax.jit(CASES[name]())(jnp.int32(2**31 - 1))
    assert np.isfinite(float(v))


def test_inject_hyperparams_drives_the_lr():
  sched = S.sequential_lr([S.linear_lr(0.1, 0.1, 1.0, 5),
                           S.cosine_annealing_lr(0.1, 20)], [5])
  tx = optax.inject_hyperparams(optzoo.sgd)(learning_rate=sched)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)

  @jax.jit
  def step(state):
    u, state = tx.update({"w": jnp.ones(3)}, state, params)
    return u, state

  for i in range(8):
    u, state = step(state)
    np.testing.assert_allclose(np.asarray(u["w"]), -float(sched(i)),
                               rtol=1e-12)


def test_public_names():
  for name in ("lambda_lr", "multiplicative_lr", "step_lr", "multi_step_lr",
               "constant_lr", "linear_lr", "exponential_lr", "polynomial_lr",
               "cosine_annealing_lr", "sequential_lr", "chained_scheduler",
               "cyclic_momentum", "reduce_lr_on_plateau"):
    assert getattr(S, name) is getattr(optzoo, name)
    assert optzoo.get_info(name).reference.startswith("torch.optim")


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

BAD = [
    (lambda: S.step_lr(0.1, 0), ValueError, "step_size"),
    (lambda: S.step_lr(0.1, step_sz=3), TypeError, "step_sz"),
    (lambda: S.multi_step_lr(0.1, [10, 5]), ValueError, "non-decreasing"),
    (lambda: S.multi_step_lr(0.1, [1.5]), TypeError, "milestones[0]"),
    (lambda: S.multi_step_lr(0.1, 10), TypeError, "milestones"),
    (lambda: S.multi_step_lr(0.1, [-1]), ValueError, "milestones[0]"),
    (lambda: S.linear_lr(0.1, start_factor=0.0), ValueError, "start_factor"),
    (lambda: S.constant_lr(0.1, factor=0.0), ValueError, "factor"),
    (lambda: S.cosine_annealing_lr(0.1, T_max=10), TypeError, "T_max"),
    (lambda: S.cosine_annealing_lr(0.1, 0), ValueError, "t_max"),
    (lambda: S.cosine_annealing_lr(lambda t: 0.1, 10), TypeError,
     "learning_rate"),
    (lambda: S.lambda_lr(0.1, 0.5), TypeError, "lr_lambda"),
    (lambda: S.sequential_lr([S.step_lr(0.1, 5)], [3]), ValueError,
     "len(schedulers) - 1"),
    (lambda: S.sequential_lr([S.step_lr(0.1, 5), S.step_lr(0.1, 5),
                              S.step_lr(0.1, 5)], [10, 10]), ValueError,
     "strictly increasing"),
    (lambda: S.sequential_lr([S.step_lr(0.1, 5), optax.constant_schedule(0.1)],
                             [3]), TypeError, "schedulers[1]"),
    (lambda: S.sequential_lr([S.step_lr(0.1, 5), S.step_lr(0.2, 5)], [3]),
     ValueError, "base learning rate"),
    (lambda: S.sequential_lr(
        [S.sequential_lr([S.step_lr(0.1, 5), S.step_lr(0.1, 5)], [3]),
         S.step_lr(0.1, 5)], [3]), ValueError, "SequentialLR"),
    (lambda: S.chained_scheduler([]), ValueError, "at least one"),
    (lambda: S.reduce_lr_on_plateau(0.1, mode="median"), ValueError, "mode"),
    (lambda: S.reduce_lr_on_plateau(0.1, factor=1.0), ValueError, "factor"),
    (lambda: S.reduce_lr_on_plateau(0.1, patience=-1), ValueError, "patience"),
    (lambda: S.reduce_lr_on_plateau(0.1, threshold_mode="pct"), ValueError,
     "threshold_mode"),
    (lambda: S.cyclic_momentum(10, base_momentum=1.0), ValueError,
     "base_momentum"),
]


@pytest.mark.parametrize("make,exc,word", BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_a_clear_error(make, exc, word):
  with pytest.raises(exc) as err:
    make()
  assert word in str(err.value), str(err.value)


# ---------------------------------------------------------------------------
# ReduceLROnPlateau
# ---------------------------------------------------------------------------

PLATEAU = {
    "min_rel": dict(mode="min", factor=0.1, patience=5),
    "min_abs_cooldown": dict(mode="min", threshold=0.01, threshold_mode="abs",
                             patience=3, cooldown=4, min_lr=1e-3, factor=0.5),
    "max_rel": dict(mode="max", factor=0.5, patience=2, cooldown=2,
                    threshold=1e-3),
    "max_abs_eps": dict(mode="max", threshold=0.005, threshold_mode="abs",
                        patience=0, factor=0.7, eps=1e-3),
    "min_rel_minlr": dict(mode="min", factor=0.3, patience=1, min_lr=2e-3,
                          threshold=0.0),
}


def _plateau_run(kw, metric, dtype=jnp.float64):
  tx = S.reduce_lr_on_plateau(0.1, **kw)
  params = {"w": jnp.ones(2, dtype), "n": None}
  grads = {"w": jnp.full(2, -0.1, dtype), "n": None}

  def body(state, m):
    u, state = tx.update(grads, state, params, value=m)
    return state, (u["w"][0], state.lr)

  _, (u, lr) = jax.jit(lambda ms: jax.lax.scan(body, tx.init(params), ms))(
      jnp.asarray(metric))
  return np.asarray(u), np.asarray(lr)


@pytest.mark.parametrize("name", sorted(PLATEAU))
def test_reduce_lr_on_plateau_matches_torch(name):
  metric = FIX[f"plateau/{name}/metric"]
  ref = FIX[f"plateau/{name}/lr"]
  assert len(np.unique(ref)) >= 3, "the case must exercise reductions"
  u, lr_after = _plateau_run(PLATEAU[name], metric)
  # The update of step i uses the lr from before metric[i] (torch order).
  np.testing.assert_allclose(u / -0.1 * 0.1, ref, rtol=1e-12)
  np.testing.assert_allclose(lr_after[:-1], ref[1:], rtol=1e-12)


def test_reduce_lr_on_plateau_negative_control():
  """optax.contrib's plateau rule (new scale at once, `==` patience) differs."""
  name = "min_rel"
  metric, ref = FIX[f"plateau/{name}/metric"], FIX[f"plateau/{name}/lr"]
  tx = optax.contrib.reduce_on_plateau(factor=0.1, patience=5, rtol=1e-4,
                                       atol=0.0)
  params = {"w": jnp.ones(1)}

  def body(state, m):
    u, state = tx.update({"w": jnp.ones(1)}, state, params, value=m)
    return state, 0.1 * u["w"][0]

  got = np.asarray(jax.jit(lambda ms: jax.lax.scan(
      body, tx.init(params), ms)[1])(jnp.asarray(metric)))
  assert np.max(np.abs(got - ref) / ref) > 1e-3
  # And a different patience breaks ours.
  _, lr = _plateau_run(dict(PLATEAU[name], patience=4), metric)
  assert np.max(np.abs(lr[:-1] - ref[1:]) / ref[1:]) > 1e-3


def test_reduce_lr_on_plateau_under_inject_hyperparams():
  name = "min_abs_cooldown"
  metric, ref = FIX[f"plateau/{name}/metric"], FIX[f"plateau/{name}/lr"]
  kw = dict(PLATEAU[name])
  tx = optax.inject_hyperparams(
      S.reduce_lr_on_plateau,
      static_args=("mode", "threshold_mode"))(0.1, **kw)
  params = {"w": jnp.ones(1)}

  def body(state, m):
    u, state = tx.update({"w": jnp.ones(1)}, state, params, value=m)
    return state, -0.1 * u["w"][0]

  got = np.asarray(jax.jit(lambda ms: jax.lax.scan(
      body, tx.init(params), ms)[1])(jnp.asarray(metric)))
  np.testing.assert_allclose(-got, ref, rtol=1e-12)


def test_reduce_lr_on_plateau_float32_and_nonfinite():
  metric = FIX["plateau/min_rel/metric"].copy()
  metric[[3, 50]] = np.nan
  metric[100] = np.inf
  u, lr = _plateau_run(PLATEAU["min_rel"], metric.astype(np.float32),
                       jnp.float32)
  assert u.dtype == np.float32 and np.all(np.isfinite(lr))


# ---------------------------------------------------------------------------
# cycle_momentum: CyclicLR / OneCycleLR driving SGD momentum / Adam b1
# ---------------------------------------------------------------------------

MOM_STEPS = 300
MOM = {
    "cyclic_sgd_tri2": (
        lambda lr, mom: optzoo.sgd(lr, momentum=mom),
        S.cyclical(0.01, 0.1, 20, 30, mode="triangular2"),
        S.cyclic_momentum(20, 30, mode="triangular2", base_momentum=0.8,
                          max_momentum=0.95)),
    "cyclic_adam_exp": (
        lambda lr, mom: optzoo.adam(lr, b1=mom),
        S.cyclical(0.001, 0.05, 25, mode="exp_range", gamma=0.995),
        S.cyclic_momentum(25, mode="exp_range", gamma=0.995)),
    "onecycle_adamw": (
        lambda lr, mom: optzoo.adamw(lr, b1=mom, weight_decay=0.05),
        S.one_cycle(0.05, MOM_STEPS), S.one_cycle_momentum(MOM_STEPS)),
    "onecycle_sgd_nesterov_3phase": (
        lambda lr, mom: optzoo.sgd(lr, momentum=mom, nesterov=True),
        S.one_cycle(0.03, MOM_STEPS, three_phase=True,
                    anneal_strategy="linear"),
        S.one_cycle_momentum(MOM_STEPS, three_phase=True,
                             anneal_strategy="linear")),
}


@pytest.mark.parametrize("name", sorted(MOM))
def test_cycle_momentum_end_to_end(name):
  make, lr_s, mom_s = MOM[name]
  steps = jnp.arange(MOM_STEPS)
  np.testing.assert_allclose(np.asarray(jax.vmap(lr_s)(steps)),
                             FIX[f"mom/{name}/lr"], rtol=1e-9)
  np.testing.assert_allclose(np.asarray(jax.vmap(mom_s)(steps)),
                             FIX[f"mom/{name}/mom"], rtol=1e-9)
  a = jnp.asarray(FIX["mom/quadratic/a"])
  b = jnp.asarray(FIX["mom/quadratic/b"])
  x0 = jnp.asarray(FIX["mom/quadratic/x0"])
  ref = FIX[f"mom/{name}/params"]

  def run(tx):
    def body(carry, _):
      x, st = carry
      u, st = tx.update(a @ x - b, st, x)
      x = optax.apply_updates(x, u)
      return (x, st), x
    return np.asarray(jax.jit(lambda: jax.lax.scan(
        body, (x0, tx.init(x0)), None, length=MOM_STEPS)[1])())

  got = run(optax.inject_hyperparams(make)(lr_s, mom_s))
  err = np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-3))
  assert err <= TOL, err
  # Negative control: the momentum held at its start value.
  held = run(optax.inject_hyperparams(make)(lr_s, float(mom_s(0))))
  assert np.max(np.abs(held - ref) / np.maximum(np.abs(ref), 1e-3)) > 1e-3
