"""Bad input is rejected at construction, for every registered method.

Generated cases, one pytest id per ``method x bad value``:

* every ``registry_cases.INVALID`` pair ``(kwargs_override, ExceptionType)`` must
  raise that exception at construction, with a message naming the parameter;
* generic bad values found with ``inspect.signature``: negative
  ``learning_rate`` / ``eps`` / ``weight_decay``, ``b1``/``b2`` equal to 1.0
  or -0.1, NaN for every float hyperparameter, 2.5 for every int one, a string
  for every bool one and for ``learning_rate``;
* update-time misuse: ``params=None`` for methods that need them, missing
  extra arguments (a clear ValueError/TypeError naming one of them, never a
  cryptic AttributeError), unknown extra arguments are ignored.

This file also holds the small generic harness that the other reliability
tests import (``build``, ``problem``, ``losses_for``, ``make_step``...): any
params pytree (``None`` leaves, mixed dtypes), per-example losses with
gradients bounded away from 0, NaN/Inf injection into gradients / ``value``
/ ``value_sq`` inside one compiled step. Extra arguments come from the
harness ``tests/registry_harness.py`` (``extra_args_for``).
"""
from __future__ import annotations

import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
import registry_cases

import registry_harness as _RH

# ---------------------------------------------------------------------------
# Generic harness (shared with the other reliability test files).
# ---------------------------------------------------------------------------

BATCH = 4
SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def transformation_infos():
  return optzoo.list_optimizers(kind="transformation")


def schedule_infos():
  return optzoo.list_optimizers(kind="schedule")


def ids(infos):
  return [i.name for i in infos]


def build(info, **overrides):
  """The method built from its registry example (plus overrides)."""
  return registry_cases.build(info, **overrides)


def problem(dtype=jnp.float64, seed: int = 0, shapes=None):
  """A small pytree problem with per-example losses and non-vanishing grads.

  Params ``{"w": (3, 4), "b": (4,), "s": ()}`` (or ``shapes``) in ``dtype``
  drawn from N(0, 1); the losses are those of :func:`losses_for`.

  Returns ``(params0, per_example_loss, targets)`` where
  ``per_example_loss(params, target_i)`` is a scalar and ``targets`` is a
  pytree whose leaves have a leading batch axis of size ``BATCH``.
  """
  shapes = SHAPES if shapes is None else shapes
  rng = np.random.default_rng(seed)
  params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
  return (params,) + losses_for(params, seed)


def losses_for(params, seed: int = 0):
  """Per-example losses for any params pytree (``None`` leaves allowed).

  ``loss_i(p) = sum_leaves sum(c_i * p) + 0.01 * sum(a * (p - t_i)**2)`` with
  ``|c_i|`` in [0.3, 1.5]: every gradient entry stays away from 0 (so
  low-precision formats do not underflow ``g**2``) and from huge values (so
  primitives whose output is an ascent direction, applied as is, do not blow
  up over the few steps these tests take). Computed in float64 (float32
  without x64) whatever the params' dtypes.

  Returns ``(per_example_loss, targets)``.
  """
  rng = np.random.default_rng(seed + 7919)

  def leaf_targets(p):
    s = tuple(jnp.shape(p))
    mag = rng.uniform(0.3, 1.5, size=(BATCH,) + s)
    sign = np.where(rng.uniform(size=s) < 0.5, -1.0, 1.0)  # shared by the batch
    return {"t": jnp.asarray(rng.normal(size=(BATCH,) + s)),
            "c": jnp.asarray(mag * sign),
            "a": jnp.asarray(np.broadcast_to(0.5 + rng.uniform(size=s), (BATCH,) + s))}

  targets = jax.tree.map(leaf_targets, params)

  def leaf_loss(x, tt):
    if jnp.iscomplexobj(x):  # the same loss of each part (a real function)
      return leaf_loss(jnp.real(x), tt) + leaf_loss(jnp.imag(x), tt)
    x = jnp.asarray(x, jnp.result_type(float))
    return jnp.sum(tt["c"] * x) + 0.01 * jnp.sum(tt["a"] * (x - tt["t"])**2)

  def per_example_loss(p, t):
    # ``t`` has a dict per params leaf: flatten params up to that level.
    treedef = jax.tree.structure(p)
    terms = [leaf_loss(x, tt) for x, tt in
             zip(jax.tree.leaves(p), treedef.flatten_up_to(t))]
    return sum(terms, jnp.zeros([], jnp.result_type(float)))

  return per_example_loss, targets


def loss_fn(per_example_loss, targets):
  def f(p):
    return jnp.mean(jax.vmap(lambda t: per_example_loss(p, t))(targets))
  return f


def grads_like(params, g):
  """Casts a gradient tree back to the params' dtypes (None leaves kept)."""
  return jax.tree.map(lambda gi, p: gi.astype(p.dtype), g, params)


def extra_args(info, params, per_example_loss, targets, step: int = 0) -> dict:
  """The extra arguments ``info.extra_args`` asks for, computed on ``params``.

  Delegates to the generic harness (``registry_harness.extra_args_for``, one
  recipe per extra-argument name for the whole test suite) on an adapter of
  this file's problem.
  """
  f = loss_fn(per_example_loss, targets)
  prob = _RH.Problem(
      params=params, batch=(targets, jnp.zeros((BATCH,))), loss_fn=f,
      per_example_loss=lambda p, t, _: per_example_loss(p, t),
      grad_fn=lambda p: grads_like(p, jax.grad(f)(p)))
  return _RH.extra_args_for(info, params, prob, step=step)


def _poison_first(tree, bad):
  """Adds ``bad`` (0.0, NaN, Inf) to the first entry of the first non-empty leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  for k, x in enumerate(leaves):
    if x.size:
      flat = x.reshape(-1)
      leaves[k] = flat.at[0].set(flat[0] + bad.astype(flat.dtype)).reshape(x.shape)
      break
  return jax.tree.unflatten(treedef, leaves)


def make_step(info, tx, per_example_loss, targets, *, jit: bool = True):
  """``step(params, state, i, gbad=0., vbad=0., sqbad=0.) -> (params, state, updates)``.

  One compiled function computes the gradient, the extra arguments, the
  update and the new params. ``gbad`` is added to the first gradient entry and
  ``vbad`` / ``sqbad`` to ``value`` / ``value_sq`` (0.0 = a good step; NaN/Inf = a bad one), so good and
  bad steps share one compilation and good steps are bit-identical whichever
  run they belong to.
  """
  f = loss_fn(per_example_loss, targets)

  def step(params, state, i, gbad=0.0, vbad=0.0, sqbad=0.0):
    g = _poison_first(grads_like(params, jax.grad(f)(params)), jnp.asarray(gbad))
    extra = extra_args(info, params, per_example_loss, targets, step=i)
    for name, bad in (("value", vbad), ("value_sq", sqbad)):
      if name in extra:
        extra[name] = extra[name] + jnp.asarray(bad).astype(
            jnp.asarray(extra[name]).dtype)
    u, new_state = tx.update(g, state, params, **extra)
    return optax.apply_updates(params, u), new_state, u
  return jax.jit(step) if jit else step


def gradient(per_example_loss, targets, params):
  return grads_like(params, jax.grad(loss_fn(per_example_loss, targets))(params))


def run(info, tx, params, per_example_loss, targets, steps: int, state=None,
        start: int = 0, step=None):
  """``steps`` jitted steps from ``state`` (or init); returns (params, state)."""
  state = tx.init(params) if state is None else state
  step = make_step(info, tx, per_example_loss, targets) if step is None else step
  for i in range(start, start + steps):
    params, state, _ = step(params, state, i)
  return params, state


@functools.lru_cache(maxsize=None)
def cached_setup(name: str, dtype_name: str = "float64", **overrides):
  """Cached ``(tx, step, params0)`` for a registered method, so that the
  reliability tests of one method share one compilation per dtype."""
  info = optzoo.get_info(name)
  tx = build(info, **overrides)
  params0, pel, targets = problem(jnp.dtype(dtype_name))
  return tx, make_step(info, tx, pel, targets), params0


def assert_trees_equal(a, b, what=""):
  """Bit-identical pytrees (same structure, dtype, shape and bits)."""
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  assert sa == sb, f"{what}: structure differs:\n{sa}\n{sb}"
  for path_a, la in jax.tree_util.tree_leaves_with_path(a):
    lb = _get(b, path_a)
    la_, lb_ = _raw(la), _raw(lb)
    assert la_.dtype == lb_.dtype, f"{what}{jax.tree_util.keystr(path_a)}: dtype {la_.dtype} != {lb_.dtype}"
    assert la_.shape == lb_.shape, f"{what}{jax.tree_util.keystr(path_a)}: shape"
    np.testing.assert_array_equal(
        la_, lb_, err_msg=f"{what}{jax.tree_util.keystr(path_a)}", strict=True)


def _raw(x):
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


def _get(tree, path):
  leaves = dict(jax.tree_util.tree_leaves_with_path(tree))
  return leaves[path]


def is_array_leaf(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


# ---------------------------------------------------------------------------
# Generated bad-input cases.
# ---------------------------------------------------------------------------

_TRANSFORMS = transformation_infos()
_SCHEDULES = schedule_infos()
_ALL = _TRANSFORMS + _SCHEDULES


def _annotation(param: inspect.Parameter) -> str:
  ann = param.annotation
  if ann is inspect.Parameter.empty:
    d = param.default
    if isinstance(d, bool):
      return "bool"
    if isinstance(d, int):
      return "int"
    if isinstance(d, float):
      return "float"
    return ""
  return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


_FLOATY = ("float", "ScalarOrSchedule", "ArrayLike", "Scalar")


def generic_bad_values(info):
  """``(kwargs_override, exc, label)`` derived from the factory signature."""
  try:
    sig = inspect.signature(info.factory)
  except (TypeError, ValueError):
    return []
  cases = []
  declared = {tuple(sorted(o)) + (repr(sorted(o.items())),) for o, _ in registry_cases.invalid(info.name)}
  for name, p in sig.parameters.items():
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
      continue
    ann = _annotation(p)
    if name.endswith("learning_rate") or name in ("base_lr", "max_lr"):
      cases.append(({name: -1.0}, ValueError, "negative"))
      cases.append(({name: "0.1"}, TypeError, "str"))
    if name in ("b1", "b2"):
      cases.append(({name: 1.0}, ValueError, "one"))
      cases.append(({name: -0.1}, ValueError, "negative"))
    if name in ("eps", "weight_decay"):
      cases.append(({name: -1.0}, ValueError, "negative"))
    if ann == "bool":
      cases.append(({name: "yes"}, TypeError, "str"))
    elif ann == "int" or ann.startswith("int ") or ann.startswith("int|"):
      cases.append(({name: 2.5}, TypeError, "fractional"))
    elif ann.split(" ")[0] in _FLOATY or any(ann.startswith(f) for f in _FLOATY) or (
        ann == "" and isinstance(p.default, float)):
      if isinstance(p.default, (float, int)) and not isinstance(p.default, bool):
        cases.append(({name: float("nan")}, ValueError, "nan"))
  # Drop generic cases that the method already declares.
  return [c for c in cases
          if tuple(sorted(c[0])) + (repr(sorted(c[0].items())),) not in declared]


def _stable_repr(value) -> str:
  """repr() without memory addresses (test ids must match across xdist workers)."""
  if callable(value):
    return getattr(value, "__name__", type(value).__name__)
  return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def _declared_cases():
  out = []
  for info in _ALL:
    for k, (override, exc) in enumerate(registry_cases.invalid(info.name)):
      label = ",".join(f"{a}={_stable_repr(override[a])}" for a in sorted(override))
      out.append(pytest.param(info, override, exc, id=f"{info.name}-declared-{label}"))
  return out


def _generic_cases():
  out = []
  for info in _ALL:
    for override, exc, label in generic_bad_values(info):
      (name,) = override
      out.append(pytest.param(info, override, exc, id=f"{info.name}-{name}-{label}"))
  return out


def _message_names_param(msg: str, override: dict) -> bool:
  return any(k in msg for k in override)


@pytest.mark.parametrize("info,override,exc", _declared_cases())
def test_declared_invalid_raises(info, override, exc):
  with pytest.raises(exc) as err:
    registry_cases.build(info, **override)
  assert _message_names_param(str(err.value), override), (
      f"{info.name}: error message does not name {sorted(override)}:"
      f" {err.value!s}")


@pytest.mark.parametrize("info,override,exc", _generic_cases())
def test_generic_invalid_raises(info, override, exc):
  with pytest.raises(exc) as err:
    registry_cases.build(info, **override)
  assert _message_names_param(str(err.value), override), (
      f"{info.name}: error message does not name {sorted(override)}:"
      f" {err.value!s}")


@pytest.mark.parametrize("info", _ALL, ids=ids(_ALL))
def test_example_builds_and_declares_invalid(info):
  obj = registry_cases.build(info)
  if info.kind == "transformation":
    assert hasattr(obj, "init") and hasattr(obj, "update"), info.name
  sig = inspect.signature(info.factory)
  has_hyper = any(p.default is not p.empty and _annotation(p) not in ("", "bool")
                  for p in sig.parameters.values())
  if has_hyper:
    assert registry_cases.invalid(info.name), f"{info.name}: no bad-input cases in tests/registry_cases.py INVALID"


def test_registry_is_populated():
  names = {i.name for i in _TRANSFORMS}
  for n in ("sgd", "adam", "skip_nonfinite"):
    assert n in names
  # And the generators above produce cases for them (a test that cannot fail
  # would be a defect).
  adam = optzoo.get_info("adam")
  labels = {tuple(o) for o, _, _ in generic_bad_values(adam)}
  assert ("learning_rate",) in labels and ("b1",) in labels and ("eps",) in labels


# ---------------------------------------------------------------------------
# Update-time misuse.
# ---------------------------------------------------------------------------

_NEEDS_PARAMS = [i for i in _TRANSFORMS if i.needs_params]
_WITH_EXTRA = [i for i in _TRANSFORMS if i.extra_args]


@pytest.mark.parametrize("info", _NEEDS_PARAMS, ids=ids(_NEEDS_PARAMS))
def test_missing_params_is_a_clear_error(info):
  tx = build(info)
  params, pel, targets = problem()
  state = tx.init(params)
  g = gradient(pel, targets, params)
  extra = extra_args(info, params, pel, targets)
  with pytest.raises(ValueError, match="params"):
    tx.update(g, state, None, **extra)


@pytest.mark.parametrize("info", _WITH_EXTRA, ids=ids(_WITH_EXTRA))
def test_missing_extra_args_is_a_clear_error_or_optional(info):
  tx = build(info)
  params, pel, targets = problem()
  state = tx.init(params)
  g = gradient(pel, targets, params)
  try:
    tx.update(g, state, params)
  except (ValueError, TypeError) as err:
    assert any(a in str(err) for a in info.extra_args), (
        f"{info.name}: the error does not name any of {info.extra_args}: {err}")


@pytest.mark.parametrize("info", _TRANSFORMS, ids=ids(_TRANSFORMS))
def test_unknown_extra_args_are_ignored(info):
  tx = build(info)
  if not isinstance(tx, optax.GradientTransformationExtraArgs):
    if info.extra_args:
      pytest.fail(f"{info.name} needs extra args but is not a"
                  " GradientTransformationExtraArgs")
    pytest.skip("plain GradientTransformation (takes no extra args)")
  params, pel, targets = problem()
  state = tx.init(params)
  g = gradient(pel, targets, params)
  extra = extra_args(info, params, pel, targets)
  u1, s1 = tx.update(g, state, params, **extra)
  u2, s2 = tx.update(g, state, params, **extra, some_unknown_arg=jnp.ones(3))
  assert_trees_equal(u1, u2, "updates")
