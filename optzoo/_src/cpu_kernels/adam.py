"""The fused CPU step of ``optzoo.adam`` / ``optzoo.adamw`` / ``optzoo.amsgrad``.

:func:`fused_adam` builds the plain chain (``[add_l2] -> scale_by_adam ->
[add_decayed_weights] -> scale_by_learning_rate``) and keeps its ``init``
and state tree; its ``update``, where the arrays allow (:func:`_fused_step`),
updates the moments with one C++ custom call per dtype (``kernels.cc``, in
place, reading each gradient once). For a large leaf it leaves the update
direction to the plain jnp code, which XLA fuses into its consumer
(``optax.apply_updates``); a small leaf (up to ``_DIRECTION_MAX_ELEMENTS``
entries) gets scale_by_adam's direction from the call too, so that XLA's
fusion of it is only the links after scale_by_adam (decoupled decay, -lr)
and the apply: several times faster to compile than the direction's sqrt
and division, once per leaf.
:func:`optzoo.update_and_apply` (``step.py``) runs the whole step, new parameters included, in
the one custom call: the bytes an Adam step must move and no more.

Results are bitwise equal to the plain path compiled by XLA on the same
input arrays (tests/cpu_kernels/test_cpu_kernels.py): the scalars (``1 - b1``, the bias
corrections, ``-lr``) are computed here by the plain path's own jnp
expressions and cast to the leaves' dtype exactly where the plain path's
type promotion casts them, and the kernel rounds each element as XLA:CPU
does (kernels.cc). Where promotion would instead widen an elementwise
operation (a float64 array hyperparameter, or under ``jax_enable_x64`` the
float64 bias correction, next to float32 leaves), that call takes the plain
path.

The one exception, precisely: "the same input arrays" means that the
gradients, parameters and state reach the step as materialised arrays (jit
arguments, scan carries or ``xs``, outputs of an op XLA does not fuse into
the update). When the gradient's last elementwise operations, or a state
freshly initialised to zeros, sit in the same jitted function, XLA may fuse
them into the plain update and round differently (contract the gradient's
final multiply with Adam's ``g - m`` into one FMA, fold ``0 + x``); the plain
path then differs by about an ulp from the very same plain path compiled on
materialised inputs, and the kernel, whose inputs are always materialised,
gives the latter.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import tree
from optzoo._src import transform
from optzoo._src.cpu_kernels import step

__all__ = ["fused_adam"]

_NO_DECAY, _COUPLED, _DECOUPLED = 0, 1, 2

# Leaves up to this many entries get scale_by_adam's direction from the
# kernel (a fresh result, 256 KiB at most in float32: reused from the heap
# step after step); larger ones only the moments, their direction fused by
# XLA into its consumer (a larger fresh buffer would be page-faulted in on
# every step, and for leaves out of cache the fused direction moves fewer
# bytes). An Adam step on 3,000 leaves of 64-4,096 entries compiles in
# 0.39-0.51x optax.adam's time, against 0.71-0.76x with the moments alone
# (AMD EPYC, 2 cores; benchmarks/RESULTS.md).
_DIRECTION_MAX_ELEMENTS = 1 << 16


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What the chain computes; ``links[adam_index]`` is scale_by_adam."""
  links: tuple
  learning_rate: Any
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  weight_decay: Any
  decay: int  # _NO_DECAY / _COUPLED / _DECOUPLED
  amsgrad: bool
  adam_index: int


# tx.update -> _Spec (a GradientTransformation is a NamedTuple and takes no
# attributes).
_SPECS: "weakref.WeakKeyDictionary[Any, _Spec]" = weakref.WeakKeyDictionary()


def fused_adam(links: list, *, learning_rate, b1, b2, eps, eps_root=0.0,
               weight_decay=0.0, decoupled: bool = False,
               amsgrad: bool = False,
               adam_index: int) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*links)`` with a fused CPU ``update`` (same state, same bits).

  Like the chain, ``update`` takes and ignores extra keyword arguments.

  ``links`` is ``[add_l2, scale_by_adam, scale_by_learning_rate]`` (coupled)
  or ``[scale_by_adam, add_decayed_weights, scale_by_learning_rate]``
  (decoupled) built from the other arguments.
  """
  plain = optax.chain(*links)
  if tree.is_literal_zero(weight_decay):
    decay = _NO_DECAY
  else:
    decay = _DECOUPLED if decoupled else _COUPLED
  spec = _Spec(tuple(links), learning_rate, b1, b2, eps, eps_root,
               weight_decay, decay, amsgrad, adam_index)

  def update_fn(updates, state, params=None, **extra_args):
    out = _fused_step(spec, updates, state, params, apply=False)
    if out is None:
      return plain.update(updates, state, params, **extra_args)
    return out

  _SPECS[update_fn] = spec
  step.register(update_fn, links,
                lambda g, state, params: _fused_step(spec, g, state, params,
                                                     apply=True))
  return optax.GradientTransformationExtraArgs(plain.init, update_fn)


def _leaves(spec: _Spec, updates, adam_state, params, needs_p: bool):
  """Flat leaves ``(g, mu, nu, nu_max | None, p | None, treedef)``, or None
  unless every leaf is a float32/float64 array of one shape and dtype across
  the trees, on one device."""
  trees = [adam_state.mu, adam_state.nu]
  trees += [adam_state.nu_max] if spec.amsgrad else []
  trees += [params] if needs_p else []
  found = step.same_leaves(updates, *trees)
  if found is None:
    return None
  treedef, (g, mu, nu, *rest) = found
  vmax = rest[0] if spec.amsgrad else None
  p = rest[-1] if needs_p else None
  return g, mu, nu, vmax, p, treedef


# ---------------------------------------------------------------------------
# The fused step
# ---------------------------------------------------------------------------


def _scalars(spec: _Spec, count, inv_bc1, inv_sqrt_bc2, lr_state, apply: bool,
             direction: bool = False):
  """The kernel's scalars (kernels.cc, ``enum Slot``) as the plain path
  computes them: ``[(value, cast by promotion?)]``; with neither ``apply``
  nor ``direction`` those the moments need. A value the plain path
  casts explicitly (a schedule's value: ``jnp.array(lr, dtype=g.dtype)`` in
  ``optax.scale_by_schedule``) needs no promotion check."""
  wd = spec.weight_decay if spec.decay != _NO_DECAY else 0.0
  b1, b2 = spec.b1, spec.b2
  values = [(wd, True), (1 - b1, True), (b2, True), (1 - b2, True)]
  if not (apply or direction):  # the moments only; the rest is the plain path's
    return values + [(0.0, False)] * 5
  bias = [(inv_bc1, True), (spec.eps_root, True), (inv_sqrt_bc2, True),
          (spec.eps, True)]
  if not apply:  # scale_by_adam's direction; -lr is the plain path's
    return values + bias + [(0.0, False)]
  if callable(spec.learning_rate):
    neg_lr = (-1.0 * spec.learning_rate(lr_state.count), False)
  else:
    neg_lr = (-1.0 * spec.learning_rate, True)  # optax.scale: step * g
  return values + bias + [neg_lr]


def _fused_step(spec: _Spec, updates, state, params, apply: bool):
  """``(new params if apply else u, new_state)`` with the kernel, or None
  where it does not apply."""
  kernels = step.kernels()
  if kernels is None:
    return None
  needs_p = apply or spec.decay == _COUPLED
  decoupled = spec.decay == _DECOUPLED
  leaves = None
  if decoupled and not apply:  # p for the decay in the calls' directions
    leaves = _leaves(spec, updates, state[spec.adam_index], params, True)
  if leaves is None:
    leaves = _leaves(spec, updates, state[spec.adam_index], params, needs_p)
  if leaves is None:
    return None
  g_l, mu_l, nu_l, vmax_l, p_l, treedef = leaves
  adam_state = state[spec.adam_index]
  lr_index = len(spec.links) - 1
  count, inv_bc1, inv_sqrt_bc2 = transform.adam_step_scalars(
      spec.b1, spec.b2, adam_state.count)
  values = _scalars(spec, count, inv_bc1, inv_sqrt_bc2, state[lr_index], apply)
  dtypes = sorted({np.dtype(g.dtype) for g in g_l}, key=str)
  keeps = lambda values: all(step.keeps(d, v) for d in dtypes
                             for v, check in values if check)
  if not keeps(values):
    return None
  # Small leaves get their direction (with the decoupled decay) from the
  # call where its scalars keep the leaves' dtype (under x64 a float64 bias
  # correction does not) and, for the decay, the params match the grads.
  small = []
  if not apply:
    with_direction = _scalars(spec, count, inv_bc1, inv_sqrt_bc2,
                              state[lr_index], apply=False, direction=True)
    if keeps(with_direction) and (p_l is not None or not decoupled):
      values = with_direction
      small = [int(np.size(g)) <= _DIRECTION_MAX_ELEMENTS for g in g_l]

  new_p = list(p_l) if apply else None
  new_mu, new_nu = list(mu_l), list(nu_l)
  new_vmax = list(vmax_l) if spec.amsgrad else None
  targets = [new_p] if apply else []
  targets += [new_mu, new_nu] + ([new_vmax] if spec.amsgrad else [])
  direction = _calls(spec, values, g_l, p_l, targets, small, apply,
                     kernels.fma)

  unflat = treedef.unflatten
  mu, nu = unflat(new_mu), unflat(new_nu)
  nu_max = unflat(new_vmax) if spec.amsgrad else adam_state.nu_max
  new_state = list(state)
  new_state[spec.adam_index] = adam_state._replace(count=count, mu=mu, nu=nu,
                                                   nu_max=nu_max)
  if apply:
    lr_state = state[lr_index]
    if callable(spec.learning_rate):  # optax.scale_by_schedule's count
      lr_state = lr_state._replace(count=optax.safe_increment(lr_state.count))
    new_state[lr_index] = lr_state
    return unflat(new_p), type(state)(new_state)
  second = new_vmax if spec.amsgrad else new_nu
  u = _direction_and_links(spec, state, new_state, params, direction,
                           (g_l, p_l, new_mu, second), inv_bc1, inv_sqrt_bc2,
                           decay_done=decoupled and any(small), unflat=unflat)
  return u, type(state)(new_state)


def _calls(spec: _Spec, values, g_l, p_l, targets, small, apply: bool,
           fma: bool) -> list:
  """Runs the custom calls: each leaf's new arrays into ``targets`` (lists
  indexed by leaf, updated in place); returns per leaf scale_by_adam's
  direction where a call wrote it (``small[i]``: with the decoupled decay),
  else None."""
  decoupled = spec.decay == _DECOUPLED
  direction = [None] * len(g_l)
  # The calls that write directions run in turn, each taking the previous
  # one's last direction as an (unread) operand, so that XLA applies each
  # call's directions and reuses their buffers before the next call writes;
  # independent calls let XLA keep every direction alive at once, one
  # params-sized temporary mapped afresh (page faults) on every step (10M
  # params in 500 leaves: 1.6-1.9x optax.adam, against 0.80-0.99x chained).
  after = jnp.zeros((), np.float32)
  for with_direction in (True, False):
    sel = [i for i in range(len(g_l)) if bool(small and small[i]) == with_direction]
    # p read only: coupled L2, or the decoupled decay of a direction
    read_p = not apply and (spec.decay == _COUPLED or (
        decoupled and with_direction))
    for dtype, ks in step.groups([g_l[i] for i in sel]):
      idx = [sel[k] for k in ks]
      per_leaf = [[g_l[i]] + ([p_l[i]] if read_p else []) + [t[i] for t in targets]
                  for i in idx]
      out = step.call("optzoo_adam", dtype, [v for v, _ in values], per_leaf,
                      n_in=1 + read_p, lead=(after,),
                      outputs=step.like_first if with_direction else None,
                      decay=np.int64(spec.decay), amsgrad=bool(spec.amsgrad),
                      apply=bool(apply), direction=with_direction,
                      fma=bool(fma))
      res = iter(out)
      for i in idx:
        for t in targets:
          t[i] = next(res)
        if with_direction:
          direction[i] = next(res)
      if with_direction:
        after = out[-1]
  return direction


def _direction_and_links(spec: _Spec, state, new_state: list, params,
                         direction: list, leaves, inv_bc1, inv_sqrt_bc2, *,
                         decay_done: bool, unflat):
  """tx.update's ``u``: scale_by_adam's direction where no call wrote it,
  then the links after scale_by_adam by the plain code (their new states
  into ``new_state``). ``leaves``: per leaf g, p, new mu, new nu (or
  AMSGrad's max); ``decay_done``: the calls' directions have the decoupled
  decay."""
  g_l, p_l, mu_l, second_l = leaves
  u_l = [d if d is not None else transform.adam_direction(
      g, m, v, inv_bc1, inv_sqrt_bc2, spec.eps, spec.eps_root)
         for g, m, v, d in zip(g_l, mu_l, second_l, direction)]
  first = spec.adam_index + 1
  if decay_done:
    # links[first] is the decay (stateless): it runs here on the other
    # leaves only.
    rest = [i for i, d in enumerate(direction) if d is None]
    if rest:
      decayed, _ = spec.links[first].update(
          [u_l[i] for i in rest], state[first], [p_l[i] for i in rest])
      for i, x in zip(rest, decayed):
        u_l[i] = x
    first += 1
  u = unflat(u_l)
  for j in range(first, len(spec.links)):
    u, new_state[j] = spec.links[j].update(u, state[j], params)
  return u
