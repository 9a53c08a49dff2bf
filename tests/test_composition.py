"""Composition identities between optzoo's aliases, its primitives and optax.

Identities that hold by construction (an alias *is* that chain) are checked
bit for bit; identities between different code paths (optzoo vs optax, a
special case of one method vs another) to 1e-10 relative over 100 float64
steps on the pytree problem of ``helpers.pytree_problem``.

The Adam / RMSProp relationship, stated precisely:

* ``scale_by_rms(decay=b2, eps)`` returns ``g_t / (sqrt(v_t) + eps)`` with
  ``v_t = b2 v_{t-1} + (1 - b2) g_t^2``, ``v_0 = 0`` and no bias correction.
* ``scale_by_adam(b1=0, b2, eps)`` returns ``g_t / (sqrt(v_t / (1 - b2^t)) + eps)``
  with the *same* ``v_t``: RMSProp scaling with a bias-corrected second moment.
  For ``eps = 0`` this is ``sqrt(1 - b2^t) * scale_by_rms(b2, eps=0)``, i.e.
  ``chain(scale_by_rms(b2, 0), scale_by_schedule(sqrt(1 - b2^(count+1))))``.
  For ``eps > 0`` no fixed-eps RMS matches (the eps would have to be
  ``eps * sqrt(1 - b2^t)``); ``test_adam_b1_zero_eps_formula`` checks the
  formula against the RMS moving average directly.
* With ``b1 > 0``, ``chain(scale_by_rms, trace)`` ("RMSProp with momentum")
  is *not* Adam: it averages already-normalised gradients and has no bias
  correction; Adam normalises the averaged raw gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
import helpers

STEPS = 100
# Small enough that 100 steps stay in the transient (no oscillation about the
# optimum, where adaptive methods amplify round-off chaotically).
LR = 1e-3


@pytest.fixture(scope="module")
def problem():
  params0, grad_fn, _ = helpers.pytree_problem(seed=3)
  return jax.tree.map(jnp.asarray, params0), grad_fn


def _scan(tx, params, grad_fn, steps=STEPS):
  state = tx.init(params)

  def body(carry, _):
    p, s = carry
    u, s = tx.update(grad_fn(p), s, p)
    return (optax.apply_updates(p, u), s), u

  return jax.lax.scan(body, (params, state), None, length=steps)[1]


def descend(tx):
  """A primitive (no learning rate) made into a descent method."""
  return optax.chain(tx, optax.scale(-LR))


def updates_of(problem, *txs):
  """The stacked per-step updates of each tx (all in one jit)."""
  params, grad_fn = problem
  return jax.jit(lambda p: tuple(_scan(tx, p, grad_fn) for tx in txs))(params)


def assert_identical(problem, tx_a, tx_b):
  ua, ub = updates_of(problem, tx_a, tx_b)
  for a, b in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def assert_close(problem, tx_a, tx_b, rtol=1e-10):
  ua, ub = updates_of(problem, tx_a, tx_b)
  err = helpers.max_rel_err(ua, ub, floor=1e-8)
  assert err <= rtol, err


def assert_differ(problem, tx_a, tx_b, at_least=1e-4):
  ua, ub = updates_of(problem, tx_a, tx_b)
  err = helpers.max_rel_err(ua, ub, floor=1e-8)
  assert err >= at_least, err


# ---------------------------------------------------------------------------
# Aliases are chains of primitives (bitwise).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_rmsprop_momentum_is_rms_then_trace(problem, centered, weight_decay):
  lr, decay, eps, m = LR, 0.95, 1e-4, 0.8
  chain = [optzoo.scale_by_rms(decay, eps, centered=centered),
           optzoo.trace(m), optzoo.scale_by_learning_rate(lr)]
  if weight_decay:
    chain.insert(0, optzoo.add_l2(weight_decay))
  assert_identical(
      problem,
      optzoo.rmsprop(lr, decay=decay, eps=eps, weight_decay=weight_decay,
                     momentum=m, centered=centered),
      optax.chain(*chain))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_is_adam_then_decoupled_decay(problem, amsgrad):
  lr, b1, b2, eps, wd = LR, 0.8, 0.99, 1e-6, 0.1
  assert_identical(
      problem,
      optzoo.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd,
                   amsgrad=amsgrad),
      optax.chain(optzoo.scale_by_adam(b1, b2, eps, amsgrad=amsgrad),
                  optzoo.add_decayed_weights(wd),
                  optzoo.scale_by_learning_rate(lr)))


def test_adam_l2_is_add_l2_then_adam(problem):
  lr, wd = LR, 0.05
  assert_identical(
      problem, optzoo.adam(lr, weight_decay=wd, amsgrad=True),
      optax.chain(optzoo.add_l2(wd), optzoo.scale_by_adam(amsgrad=True),
                  optzoo.scale_by_learning_rate(lr)))


def test_sgd_is_l2_trace_lr(problem):
  lr, m, d, wd = LR, 0.8, 0.3, 0.05
  assert_identical(
      problem, optzoo.sgd(lr, momentum=m, dampening=d, weight_decay=wd),
      optax.chain(optzoo.add_l2(wd), optzoo.trace(m, d),
                  optzoo.scale_by_learning_rate(lr)))


def test_sgdw_is_trace_decay_lr(problem):
  lr, m, wd = LR, 0.9, 0.1
  assert_identical(
      problem, optzoo.sgdw(lr, momentum=m, weight_decay=wd, nesterov=True),
      optax.chain(optzoo.trace(m, nesterov=True),
                  optzoo.add_decayed_weights(wd),
                  optzoo.scale_by_learning_rate(lr)))


def test_amsgrad_alias_is_adam_amsgrad(problem):
  kw = dict(b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.01)
  assert_identical(problem, optzoo.amsgrad(LR, **kw),
                   optzoo.adam(LR, amsgrad=True, **kw))


def test_nag_is_sgd_nesterov(problem):
  assert_identical(problem, optzoo.nag(LR, momentum=0.7, weight_decay=0.01),
                   optzoo.sgd(LR, momentum=0.7, nesterov=True,
                              weight_decay=0.01))


# ---------------------------------------------------------------------------
# Adam with b1 = 0 vs RMS scaling.
# ---------------------------------------------------------------------------


def test_adam_b1_zero_is_bias_corrected_rms(problem):
  b2 = 0.99
  bc = optax.scale_by_schedule(
      lambda count: jnp.sqrt(1.0 - jnp.asarray(b2, jnp.float64) ** (count + 1)))
  assert_close(problem,
               descend(optzoo.scale_by_adam(b1=0.0, b2=b2, eps=0.0)),
               descend(optax.chain(optzoo.scale_by_rms(decay=b2, eps=0.0), bc)),
               rtol=1e-13)
  # And the bias correction is not negligible: plain RMS differs.
  assert_differ(problem, descend(optzoo.scale_by_adam(b1=0.0, b2=b2, eps=0.0)),
                descend(optzoo.scale_by_rms(decay=b2, eps=0.0)))


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_adam_b1_zero_eps_formula(problem, eps):
  """Adam(b1=0) = g / (sqrt(v / (1 - b2^t)) + eps), v = scale_by_rms's EMA."""
  b2 = 0.9
  params, grad_fn = problem
  adam = optzoo.scale_by_adam(b1=0.0, b2=b2, eps=eps)
  rms = optzoo.scale_by_rms(decay=b2, eps=eps)
  g = grad_fn(params)
  sa, sr = adam.init(params), rms.init(params)
  for t in range(1, 8):
    g = jax.tree.map(lambda x: x * (1.0 + 0.3 * np.sin(t)), g)
    ua, sa = adam.update(g, sa, params)
    _, sr = rms.update(g, sr, params)
    expected = jax.tree.map(
        lambda gi, v: np.asarray(gi) / (np.sqrt(np.asarray(v) / (1 - b2**t))
                                        + eps), g, sr.nu)
    assert helpers.max_rel_err(ua, expected) <= 1e-13


def test_rms_then_trace_is_not_adam(problem):
  """RMSProp-with-momentum normalises before averaging; Adam after."""
  b1, b2 = 0.9, 0.999
  assert_differ(
      problem,
      descend(optax.chain(optzoo.scale_by_rms(b2, 0.0), optzoo.trace(b1))),
      descend(optzoo.scale_by_adam(b1, b2, 0.0)))


# ---------------------------------------------------------------------------
# Equalities with optax (documented in the docstrings).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("momentum,nesterov",
                         [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_equals_optax_sgd(problem, momentum, nesterov):
  assert_close(problem, optzoo.sgd(LR, momentum=momentum, nesterov=nesterov),
               optax.sgd(LR, momentum or None, nesterov=nesterov))


@pytest.mark.parametrize("nesterov", [False, True])
def test_trace_equals_optax_trace_without_dampening(problem, nesterov):
  assert_close(problem, descend(optzoo.trace(0.9, nesterov=nesterov)),
               descend(optax.trace(0.9, nesterov=nesterov)))


def test_trace_dampening_first_step_is_undampened(problem):
  """torch's buffer starts at g_1, so it differs from a zero-init EMA."""
  d = 0.3
  assert_differ(problem, descend(optzoo.trace(0.9, dampening=d)),
                descend(optax.chain(optax.scale(1 - d), optax.trace(0.9))))


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_equals_optax_eps_outside(problem, centered, momentum):
  assert_close(
      problem,
      optzoo.rmsprop(LR, decay=0.9, eps=1e-3, momentum=momentum,
                     centered=centered),
      optax.rmsprop(LR, decay=0.9, eps=1e-3, eps_in_sqrt=False,
                    centered=centered, momentum=momentum or None))
  # optax's default (eps inside the sqrt) is a different method.
  assert_differ(
      problem,
      optzoo.rmsprop(LR, decay=0.9, eps=1e-3, momentum=momentum,
                     centered=centered),
      optax.rmsprop(LR, decay=0.9, eps=1e-3, eps_in_sqrt=True,
                    centered=centered, momentum=momentum or None))


def test_scale_by_rms_eps_in_sqrt_equals_optax(problem):
  assert_close(problem,
               descend(optzoo.scale_by_rms(0.9, 1e-3, eps_in_sqrt=True)),
               descend(optax.scale_by_rms(0.9, 1e-3, eps_in_sqrt=True)))


def test_adam_equals_optax_adam(problem):
  assert_close(problem, optzoo.adam(LR, b1=0.8, b2=0.99, eps=1e-6),
               optax.adam(LR, b1=0.8, b2=0.99, eps=1e-6))


def test_adamw_equals_optax_adamw(problem):
  assert_close(problem, optzoo.adamw(LR, b1=0.8, b2=0.99, weight_decay=0.1),
               optax.adamw(LR, b1=0.8, b2=0.99, weight_decay=0.1))


def test_add_l2_first_equals_optax_add_decayed_weights_first(problem):
  assert_close(
      problem,
      descend(optax.chain(optzoo.add_l2(0.05), optzoo.scale_by_adam())),
      descend(optax.chain(optax.add_decayed_weights(0.05),
                          optax.scale_by_adam())))


def test_adagrad_eps_in_sqrt_equals_optax_adagrad(problem):
  """optax.adagrad = torch's Adagrad with eps inside the sqrt."""
  assert_close(
      problem,
      optax.chain(optzoo.scale_by_adagrad(0.1, 1e-3, eps_in_sqrt=True),
                  optzoo.scale_by_learning_rate(0.1)),
      optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-3))


def test_nadam_constant_momentum_limit_equals_optax_nadam(problem):
  """With a huge momentum_decay, mu_t == b1 for all t: optax's simplified NAdam.

  torch's NAdam with mu_t = b1 constant:
  lr (1-b1)/(1-b1^t) g/d + lr b1/(1-b1^(t+1)) m/d, which is optax.nadam.
  """
  assert_close(problem, optzoo.nadam(LR, momentum_decay=1e3),
               optax.nadam(LR))
  assert_differ(problem, optzoo.nadam(LR), optax.nadam(LR))


def test_radam_never_rectified_is_bias_corrected_momentum(problem):
  """If rho_t never exceeds the threshold, RAdam is lr * m_t / (1 - b1^t)."""
  assert_close(problem, optzoo.radam(LR, threshold=1e6),
               optax.chain(optax.ema(0.9, debias=True),
                           optax.scale(-LR)))


def test_adabound_without_active_bounds_is_adam(problem):
  """gamma -> 0 opens the bounds; with eps = 0 AdaBound is then Adam."""
  assert_close(problem, optzoo.adabound(LR, gamma=1e-12, eps=0.0),
               optzoo.adam(LR, eps=0.0))
  assert_differ(problem, optzoo.adabound(LR, gamma=0.1, final_lr=0.01),
                optzoo.adam(LR))
