"""lookahead vs pytorch_optimizer.Lookahead fixtures.

Fixture: tests/fixtures/dynamics_lookahead.npz (tests/gen_dynamics_fixtures.py):
pytorch_optimizer 4.1.0 Lookahead around torch.optim.Adam / SGD(momentum),
float64, 400 steps, two tensors W (3, 4) and b (4,).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from helpers import TraceCounter, fixture_path, max_rel_err, run_trajectory

FIX = np.load(fixture_path("dynamics_lookahead.npz"))


def _problem():
  a, c = jnp.asarray(FIX["a"]), jnp.asarray(FIX["c"])

  def loss(p):
    x = jnp.concatenate([p["w"].ravel(), p["b"].ravel()])
    return 0.5 * x @ a @ x - c @ x + 0.1 * jnp.sum(x**4) / x.size

  return {"w": FIX["w0"], "b": FIX["b0"]}, jax.grad(loss)


INNERS = {
    "adam": lambda: optzoo.adam(1e-2),
    "adam_k7_a08": lambda: optzoo.adam(3e-2),
    "sgdm": lambda: optzoo.sgd(1e-2, momentum=0.9),
}


@pytest.mark.parametrize("name", sorted(INNERS))
def test_matches_pytorch_optimizer_lookahead(name):
  params, grad_fn = _problem()
  k, alpha = int(FIX[name + "_k"]), float(FIX[name + "_alpha"])
  tx = optzoo.lookahead(INNERS[name](), sync_period=k, slow_step_size=alpha)
  traj = run_trajectory(tx, params, grad_fn, 400)
  ref = {"w": FIX[name + "_w"], "b": FIX[name + "_b"]}
  assert ref["w"].shape[0] >= 300
  assert max_rel_err(traj, ref) <= 1e-6
  # Not the inner optimizer alone (the test can fail).
  plain = run_trajectory(INNERS[name](), params, grad_fn, 400)
  assert max_rel_err(plain, ref) > 1e-3


@pytest.mark.parametrize("name", ["adam", "sgdm"])
def test_sync1_alpha1_is_exactly_the_inner_optimizer(name):
  params, grad_fn = _problem()
  tx = optzoo.lookahead(INNERS[name](), sync_period=1, slow_step_size=1.0)
  a = run_trajectory(tx, params, grad_fn, 300)
  b = run_trajectory(INNERS[name](), params, grad_fn, 300)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_paper_iterates_and_slow_weights():
  """NumPy re-derivation of the paper's loop on a 1-D quadratic with SGD."""
  h, lr, k, alpha = 2.0, 0.1, 3, 0.5
  tx = optzoo.lookahead(optzoo.sgd(lr), sync_period=k, slow_step_size=alpha)
  x = jnp.asarray(1.0)
  state = tx.init(x)
  slow, fast = 1.0, 1.0
  for t in range(1, 13):
    u, state = tx.update(h * x, state, x)
    x = optax.apply_updates(x, u)
    fast = fast - lr * h * fast
    if t % k == 0:
      slow = slow + alpha * (fast - slow)
      fast = slow
    assert float(x) == pytest.approx(fast, rel=1e-14)
    assert float(optzoo.lookahead_slow_params(state)) == pytest.approx(
        slow, rel=1e-14)


def test_matches_optax_lookahead_fast_weights():
  params, grad_fn = _problem()
  params = jax.tree.map(jnp.asarray, params)
  ours = optzoo.lookahead(optax.adam(1e-2), 5, 0.5)
  theirs = optax.lookahead(optax.adam(1e-2), 5, 0.5)
  p1, s1 = params, ours.init(params)
  p2 = optax.LookaheadParams.init_synced(params)
  s2 = theirs.init(p2)

  @jax.jit
  def step(p1, s1, p2, s2):
    u, s1 = ours.update(grad_fn(p1), s1, p1)
    p1 = optax.apply_updates(p1, u)
    u, s2 = theirs.update(grad_fn(p2.fast), s2, p2)
    p2 = optax.apply_updates(p2, u)
    return p1, s1, p2, s2

  for _ in range(23):
    p1, s1, p2, s2 = step(p1, s1, p2, s2)
  assert max_rel_err(p1, p2.fast) < 1e-12


def test_reset_state_zeroes_inner_momentum_at_sync():
  tx = optzoo.lookahead(optax.sgd(0.1, momentum=0.9), sync_period=2,
                        reset_state=True)
  p = jnp.ones(3)
  state = tx.init(p)
  for t in range(1, 5):
    u, state = tx.update(jnp.ones(3), state, p)
    p = p + u
    trace = next(x for x in state.inner_state if hasattr(x, "trace")).trace
    if t % 2 == 0:
      np.testing.assert_array_equal(np.asarray(trace), 0.0)
    else:
      assert np.all(np.asarray(trace) != 0)


def test_needs_params():
  tx = optzoo.lookahead(optzoo.sgd(0.1))
  state = tx.init(jnp.ones(2))
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), state)


def test_forwards_extra_args_and_ignores_unknown_ones():
  seen = []

  def init_fn(params):
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, value=None, **extra):
    del params, extra
    seen.append(value)
    return jax.tree.map(lambda g: -value * g, updates), state

  inner = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  tx = optzoo.lookahead(inner, sync_period=2)
  p = jnp.ones(2)
  state = tx.init(p)
  u, state = tx.update(jnp.ones(2), state, p, value=jnp.asarray(0.5),
                       unknown=3)
  np.testing.assert_allclose(np.asarray(u), -0.5)
  assert len(seen) == 1
  # A plain inner transformation ignores extra args.
  tx2 = optzoo.lookahead(optzoo.sgd(0.1))
  s2 = tx2.init(p)
  u2, _ = tx2.update(jnp.ones(2), s2, p, value=1.0, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(u2), -0.1)


def test_inject_hyperparams_and_no_recompile():
  tx = optax.inject_hyperparams(optzoo.lookahead)(
      inner=optzoo.adam(1e-2), sync_period=3, slow_step_size=0.5)
  params = {"a": jnp.ones((2, 2), jnp.float32), "b": None,
            "c": jnp.asarray(2.0, jnp.float32)}
  state = tx.init(params)
  counter = TraceCounter(lambda g, s, p: tx.update(g, s, p))
  step = jax.jit(counter)
  grads = {"a": jnp.ones((2, 2), jnp.float32), "b": None,
           "c": jnp.asarray(1.0, jnp.float32)}
  for _ in range(7):
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  assert counter.count == 1
  assert u["a"].dtype == jnp.float32 and u["b"] is None


BAD = [
    (dict(sync_period=0), ValueError, "sync_period"),
    (dict(sync_period=-2), ValueError, "sync_period"),
    (dict(sync_period=1.5), TypeError, "sync_period"),
    (dict(slow_step_size=1.5), ValueError, "slow_step_size"),
    (dict(slow_step_size=-0.5), ValueError, "slow_step_size"),
    (dict(inner="adam"), TypeError, "inner"),
    (dict(reset_state=None), TypeError, "reset_state"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input(i):
  kw, exc, name = BAD[i]
  args = dict(inner=optzoo.sgd(0.1))
  args.update(kw)
  with pytest.raises(exc, match=name):
    optzoo.lookahead(**args)


def _full_size_kernels(tx, n=1 << 20):
  """How many params-sized arrays the compiled, donated step writes (XLA
  fusions in the entry computation whose output has ``n`` elements)."""
  import re
  p = {"w": jnp.ones(n, jnp.float32)}

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(
      p, tx.init(p), p).compile().as_text()
  entry = hlo[hlo.index("ENTRY"):]
  return len(re.findall(rf"= f32\[{n}\]\{{0\}} fusion\(", entry))


def test_lookahead_step_writes_one_array_more_than_its_inner_step():
  """The wrapper's cost is the slow-weight buffer, nothing else: the inner
  Adam update is not materialised as an extra array (a constant times the
  inner update made XLA:CPU write it out and read it back, a lookahead step
  took ~3.5x an Adam step; benchmarks/lookahead_step_time.py)."""
  with jax.enable_x64(False):  # as in float32 training (x64 fuses otherwise)
    adam = _full_size_kernels(optzoo.adam(1e-3))
    la = _full_size_kernels(optzoo.lookahead(optzoo.adam(1e-3), 5, 0.5))
  assert la <= adam + 1, (adam, la)
