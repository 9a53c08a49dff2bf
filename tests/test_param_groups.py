"""torch-style parameter groups -> optax.multi_transform (optzoo.param_groups).

Oracle: the same optimizer run leaf by leaf with the group's
hyperparameters (optzoo.adamw / adam are torch-exact, see
test_alias_oracles.py), so a grouped run must equal the per-leaf runs bit for
bit.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


def _params():
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(rng.normal(size=s))
  return {"backbone": {"Dense_0": {"kernel": r(3, 4), "bias": r(4)},
                       "LayerNorm_0": {"scale": r(4), "bias": r(4)}},
          "head": {"kernel": r(4, 2), "bias": r(2)}, "skip": None}


def _grads(params, i):
  return jax.tree.map(lambda x: jnp.sin(x * (i + 1.0)) + 0.1 * x, params)


def _run(tx, params, steps=5):
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    u, state = tx.update(_grads(params, i), state, params)
    return optax.apply_updates(params, u), state

  for i in range(steps):
    params, state = step(params, state, i)
  return params


def _leafwise(params, hyper_of, factory, steps=5):
  """Each leaf optimized alone with ``factory(**hyper_of(path, leaf))``."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  out = []
  for path, leaf in flat:
    tx = factory(**hyper_of(optzoo.path_str(path), leaf))
    state, x = tx.init(leaf), leaf
    for i in range(steps):
      u, state = tx.update(jnp.sin(x * (i + 1.0)) + 0.1 * x, state, x)
      x = optax.apply_updates(x, u)
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-13)


def test_no_decay_recipe_equals_per_leaf_runs():
  params = _params()
  tx = optzoo.param_groups(optzoo.adamw, optzoo.no_decay_groups(0.3),
                           defaults=dict(learning_rate=0.05))
  got = _run(tx, params)
  ref = _leafwise(params, lambda p, x: dict(
      learning_rate=0.05,
      weight_decay=0.0 if x.ndim <= 1 else 0.3), optzoo.adamw)
  _assert_equal(got, ref)
  # Negative control: decay everywhere.
  bad = _run(optzoo.adamw(0.05, weight_decay=0.3), params)
  assert not np.allclose(np.asarray(bad["head"]["bias"]),
                         np.asarray(got["head"]["bias"]), rtol=1e-6)


def test_backbone_lr_and_no_decay_combined_with_torch_names():
  params = _params()
  groups = [
      {"params": "backbone/**/bias", "lr": 0.01, "weight_decay": 0.0},
      {"params": ["backbone/**"], "lr": 0.01},
      {"params": "**/bias", "weight_decay": 0.0, "betas": (0.8, 0.99)},
      {"params": "**"},
  ]
  tx = optzoo.param_groups(optzoo.adamw, groups,
                           defaults=dict(learning_rate=0.1, weight_decay=0.2))

  def hyper(path, x):
    h = dict(learning_rate=0.1, weight_decay=0.2)
    if path.startswith("backbone/"):
      h["learning_rate"] = 0.01
      if path.endswith("bias"):
        h["weight_decay"] = 0.0
    elif path.endswith("bias"):
      h.update(weight_decay=0.0, b1=0.8, b2=0.99)
    return h

  _assert_equal(_run(tx, params), _leafwise(params, hyper, optzoo.adamw))


def test_scaled_lr_recipe_with_schedule_and_regex():
  params = _params()
  sched = lambda t: 0.1 * (1.0 - jnp.asarray(t, jnp.float64) / 10.0)
  tx = optzoo.param_groups(
      optzoo.adam, optzoo.scaled_lr_groups(r"^backbone/", sched, 0.1),
      syntax="regex")
  got = _run(tx, params)
  ref = _leafwise(params, lambda p, x: dict(
      learning_rate=(lambda t: 0.1 * sched(t)) if p.startswith("backbone")
      else sched), optzoo.adam)
  _assert_equal(got, ref)


def test_label_predicate_and_param_mask():
  params = _params()
  labels = optzoo.param_labels([
      {"name": "matrices", "params": lambda p, x: x.ndim == 2},
      {"name": "vectors", "params": "**"}])(params)
  assert labels["head"]["kernel"] == "matrices"
  assert labels["backbone"]["LayerNorm_0"]["scale"] == "vectors"
  assert labels["skip"] is None
  mask = optzoo.param_mask("**/kernel")
  tx = optax.masked(optax.scale(0.0), mask)
  u, _ = tx.update(params, tx.init(params))
  assert float(jnp.abs(u["head"]["kernel"]).sum()) == 0.0
  assert float(jnp.abs(u["head"]["bias"]).sum()) > 0.0


def test_inject_hyperparams_factory():
  params = _params()
  tx = optzoo.param_groups(optax.inject_hyperparams(optzoo.sgd),
                           optzoo.no_decay_groups(0.1),
                           defaults=dict(learning_rate=0.1, momentum=0.9))
  _run(tx, params, 2)


@pytest.mark.parametrize("groups,exc,word", [
    ([{"params": "backbone/**"}], ValueError, "'head/bias'"),
    ([{"params": "encoder/**"}, {"params": "**"}], ValueError, "group_0"),
    ([{"params": "**"}, {"params": "**/bias"}], ValueError, "group_1"),
])
def test_unmatched_is_a_clear_error_at_init(groups, exc, word):
  tx = optzoo.param_groups(optzoo.sgd, groups)
  with pytest.raises(exc) as err:
    tx.init(_params())
  assert word in str(err.value), str(err.value)


@pytest.mark.parametrize("make,exc,word", [
    (lambda: optzoo.param_groups(optzoo.sgd, []), ValueError, "at least one"),
    (lambda: optzoo.param_groups(optzoo.sgd, [{"lr": 0.1}]), TypeError,
     "'params'"),
    (lambda: optzoo.param_groups(optzoo.sgd, [{"params": "("}],
                                 syntax="regex"), ValueError, "pattern"),
    (lambda: optzoo.param_groups(optzoo.sgd, [{"params": "**",
                                               "lerning_rate": 0.1}]),
     TypeError, "groups[0]"),
    (lambda: optzoo.param_groups(optzoo.sgd, [{"params": 3}]), TypeError,
     "groups[0]['params']"),
    (lambda: optzoo.param_groups(optzoo.sgd, [{"params": "**"}],
                                 syntax="fnmatch"), ValueError, "syntax"),
    (lambda: optzoo.param_mask("**/nothing")(_params()), ValueError,
     "matches no parameter"),
])
def test_bad_input(make, exc, word):
  with pytest.raises(exc) as err:
    make()
  assert word in str(err.value), str(err.value)
