"""The fused CPU step of ``optzoo.sgd`` / ``optzoo.nag`` with momentum.

:func:`fused_sgd` is ``optax.chain(*links)`` (``add_l2 -> trace ->
scale_by_learning_rate``): same ``init``, state and ``update``. What it adds
is :func:`optzoo.update_and_apply` in one C++ call (``kernels.cc``,
``sgd_range``): XLA:CPU computes the new momentum buffer and the new
parameters in two loops (read g, b, write b; read p, b, write p: 6 array
passes), the kernel in one (read g, p, b; write p, b: 5). ``tx.update``
alone keeps the plain path: its output ``u = b`` is the buffer itself, so
there is nothing to fuse there.

Bitwise equal to the plain path on the same input arrays, as the Adam kernel
(``adam.py``): the scalars are the plain path's (``-1.0 * learning_rate``,
the momentum, the L2 coefficient), cast to the leaves' dtype where the plain
path's promotion keeps them in it (else the plain path runs), and every
multiply-add is contracted exactly where XLA contracts it.

Only ``dampening`` a literal 0 (torch's default; otherwise the first step
needs a select) and a buffer of the parameters' dtype take the kernel.
"""

from __future__ import annotations

import numpy as np
import optax

from optzoo._src import tree
from optzoo._src.cpu_kernels import step

__all__ = ["fused_sgd"]


def fused_sgd(links: list, *, learning_rate, momentum, nesterov: bool,
              weight_decay, trace_index: int
              ) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*links)``, whose whole step :func:`optzoo.update_and_apply`
  runs in one fused CPU call where the arrays allow.

  ``links`` is ``[add_l2(weight_decay), trace(momentum, nesterov),
  scale_by_learning_rate(learning_rate)]`` with the trace at
  ``trace_index`` (a dampening of literal 0).
  """
  plain = optax.chain(*links)
  decay = not tree.is_literal_zero(weight_decay)
  lr_index = len(links) - 1

  def apply_fn(grads, state, params):
    kernels = step.kernels()
    if kernels is None:
      return None
    trace_state = state[trace_index]
    found = step.same_leaves(grads, trace_state.trace, params)
    if found is None:
      return None
    treedef, (g_l, b_l, p_l) = found
    lr_state = state[lr_index]
    if callable(learning_rate):  # optax.scale_by_schedule casts explicitly
      neg_lr, check_lr = -1.0 * learning_rate(lr_state.count), False
    else:
      neg_lr, check_lr = -1.0 * learning_rate, True
    wd = weight_decay if decay else 0.0
    checked = [momentum] + ([wd] if decay else []) + ([neg_lr] if check_lr else [])
    new_p, new_b = list(p_l), list(b_l)
    for dtype, idx in step.groups(g_l):
      if not all(step.keeps(dtype, v) for v in checked):
        return None
      res = step.call("optzoo_sgd", dtype, [wd, momentum, neg_lr],
                      [[g_l[i], p_l[i], b_l[i]] for i in idx], n_in=1,
                      decay=bool(decay), nesterov=bool(nesterov),
                      fma=bool(kernels.fma))
      for k, i in enumerate(idx):
        new_p[i], new_b[i] = res[2 * k], res[2 * k + 1]
    new_state = list(state)
    new_state[trace_index] = trace_state._replace(
        count=optax.safe_increment(trace_state.count),
        trace=treedef.unflatten(new_b))
    if callable(learning_rate):
      new_state[lr_index] = lr_state._replace(
          count=optax.safe_increment(lr_state.count))
    return treedef.unflatten(new_p), type(state)(new_state)

  step.register(plain.update, links, apply_fn)
  return plain
