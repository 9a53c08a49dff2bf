"""The shared vocabulary: renamed parameters keep their old spelling one release.

Every old spelling must emit a ``DeprecationWarning`` naming the new one and
give exactly the result of the new spelling; passing both is a TypeError.
"""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optzoo
from optzoo._src import validation


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert jax.tree.structure(a) == jax.tree.structure(b)


def _first_update(tx, extra=None):
  params = {"w": jnp.asarray([1.0, -2.0, 0.5]), "k": jnp.ones((2, 3))}
  state = tx.init(params)
  updates, state = tx.update(params, state, params, **(extra or {}))
  return updates, state


_GRAD_FN = {"grad_fn": lambda p, i: p}
_LOSS = lambda p, b: jnp.sum((p["w"] - b) ** 2)


def _sched(s):
  return np.asarray([s(i) for i in (0, 3, 7, 20)])


# (old kwargs, new kwargs, run(factory_kwargs) -> comparable result, factory)
CASES = {
    "cyclical": (dict(base_lr=0.01, max_lr=0.1), dict(base_learning_rate=0.01, max_learning_rate=0.1),
                 lambda kw: _sched(optzoo.cyclical(step_size_up=4, **kw))),
    "one_cycle": (dict(max_lr=0.1), dict(max_learning_rate=0.1),
                  lambda kw: _sched(optzoo.one_cycle(total_steps=50, **kw))),
    "sgdr": (dict(eta_min=0.01), dict(min_learning_rate=0.01),
             lambda kw: _sched(optzoo.sgdr(0.1, 5, **kw))),
    "add_gradient_noise": (dict(seed=3), dict(key=3),
                           lambda kw: _first_update(optzoo.add_gradient_noise(0.1, **kw))),
    "gradient_noise": (dict(seed=3), dict(key=3),
                       lambda kw: _first_update(optzoo.gradient_noise(optzoo.sgd(0.1), 0.1, **kw))),
    "entropy_sgd": (dict(inner_steps=2, inner_lr=0.05, seed=1),
                    dict(num_inner_steps=2, inner_learning_rate=0.05, key=1),
                    lambda kw: _first_update(optzoo.entropy_sgd(0.1, noise=1e-2, **kw), _GRAD_FN)),
    "sphere_sgd": (dict(elr=0.1, per_filter=True), dict(learning_rate=0.1, granularity="filter"),
                   lambda kw: _first_update(optzoo.sphere_sgd(**kw))),
    "local_energy": (dict(n_samples=8), dict(num_samples=8),
                     lambda kw: optzoo.local_energy(_LOSS, {"w": jnp.ones(3)}, jnp.zeros(3),
                                                    (0.1, 0.5), **kw)),
    "gradinit": (dict(iters=1, lr=0.05), dict(num_iters=1, learning_rate=0.05),
                 lambda kw: optzoo.gradinit(_LOSS, {"w": jnp.ones(3)}, [jnp.zeros((2, 3))] * 3,
                                            **kw).scales),
    "lr_range_test": (dict(min_lr=1e-3, max_lr=1.0), dict(min_learning_rate=1e-3, max_learning_rate=1.0),
                      lambda kw: optzoo.lr_range_test(_LOSS, {"w": jnp.ones(3)}, [jnp.zeros(3)],
                                                      num_steps=4, **kw).raw_losses),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_spelling_warns_and_gives_the_same_result(name):
  old, new, run = CASES[name]
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    want = run(new)   # the new spelling never warns
  for old_name, new_name in zip(old, new):
    with pytest.warns(DeprecationWarning, match=f"`{old_name}`.*`{new_name}`"):
      got = run(old)
  _same(got, want)
  sig = inspect.signature(getattr(optzoo, name))
  assert not set(old) & set(sig.parameters), "old names are not in the signature"
  assert set(new) <= set(sig.parameters)


def test_both_spellings_is_a_type_error():
  with pytest.raises(TypeError, match="both `inner_steps`.*`num_inner_steps`"):
    optzoo.entropy_sgd(0.1, inner_steps=2, num_inner_steps=3)


def test_renamed_helper_converts_and_documents():
  @validation.renamed(flag=("mode", lambda b: "on" if b else "off"), n="num")
  def f(num: int = 1, mode: str = "off"):
    """Doc."""
    return num, mode

  assert f(num=2, mode="on") == (2, "on")
  with pytest.warns(DeprecationWarning, match="`flag` is deprecated.*use `mode`"):
    assert f(flag=True) == (1, "on")
  with pytest.warns(DeprecationWarning, match="`n` is deprecated.*use `num`"):
    assert f(n=5) == (5, "off")
  assert list(inspect.signature(f).parameters) == ["num", "mode"]
  assert "``n`` -> ``num``" in f.__doc__ and f.__name__ == "f"


def test_key_accepts_a_key_or_an_int_seed():
  a = _first_update(optzoo.add_gradient_noise(0.1, key=jax.random.PRNGKey(4)))
  b = _first_update(optzoo.add_gradient_noise(0.1, key=4))
  _same(a, b)
  with pytest.raises(TypeError, match="key"):
    optzoo.add_gradient_noise(0.1, key=1.5)


def test_sgdw_takes_sgds_positional_order():
  names = lambda f: list(inspect.signature(f).parameters)
  assert names(optzoo.sgdw) == names(optzoo.sgd)
