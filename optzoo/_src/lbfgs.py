"""L-BFGS with torch.optim.LBFGS semantics (inner iterations, strong Wolfe).

One ``update`` call is one ``torch.optim.LBFGS.step(closure)``: up to
``max_iter`` quasi-Newton iterations, each with a fixed step or torch's
strong-Wolfe line search (``_strong_wolfe`` / ``_cubic_interpolate``), all
inside ``lax.while_loop`` (no host sync). The closure is the extra argument
``value_fn(params, i) -> scalar loss``; its gradient comes from ``jax.grad``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from optzoo._src import registry
from optzoo._src import tree as tree_lib
from optzoo._src import validation

__all__ = ["lbfgs", "LbfgsState"]

# torch's _strong_wolfe defaults (LBFGS.step passes none of them but max_ls).
_C1 = 1e-4
_C2 = 0.9
_LS_TOLERANCE_CHANGE = 1e-9
# torch's curvature threshold for accepting a (y, s) pair.
_YS_MIN = 1e-10


class LbfgsState(NamedTuple):
  """State of :func:`lbfgs` (torch's ``optimizer.state``, flattened).

  ``old_dirs`` / ``old_stps`` hold torch's lists (oldest first) in the first
  ``num_old`` rows of fixed ``(history_size, n)`` arrays.
  """

  count: chex.Array  # int32, update calls (for a learning-rate schedule)
  func_evals: chex.Array  # int32, torch state["func_evals"]
  n_iter: chex.Array  # int32, torch state["n_iter"] (all inner iterations)
  d: chex.Array  # last direction
  t: chex.Array  # last step length
  old_dirs: chex.Array  # (H, n) y vectors
  old_stps: chex.Array  # (H, n) s vectors
  ro: chex.Array  # (H,) 1 / y.s
  num_old: chex.Array  # int32, pairs in memory
  h_diag: chex.Array  # scale of the initial inverse Hessian
  prev_flat_grad: chex.Array
  prev_loss: chex.Array


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
  """torch.optim.lbfgs._cubic_interpolate (minimiser of the cubic, clipped)."""
  if bounds is not None:
    lo, hi = bounds
  else:
    lo, hi = jnp.where(x1 <= x2, x1, x2), jnp.where(x1 <= x2, x2, x1)
  d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
  d2_square = d1 ** 2 - g1 * g2
  d2 = jnp.sqrt(jnp.maximum(d2_square, 0))
  min_pos = jnp.where(
      x1 <= x2,
      x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
      x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)))
  # Python's min(max(m, lo), hi): NaN-propagating like torch's scalars.
  clipped = jnp.minimum(jnp.maximum(min_pos, lo), hi)
  clipped = jnp.where(jnp.isnan(min_pos), min_pos, clipped)
  return jnp.where(d2_square >= 0, clipped, (lo + hi) / 2.0)


def _strong_wolfe(evaluate, x, t, d, f, g, gtd, max_ls):
  """torch.optim.lbfgs._strong_wolfe as two ``lax.while_loop`` phases.

  Returns ``(f_new, g_new, t, ls_func_evals)``.
  """
  # Long on purpose: it follows torch's function branch for branch (the
  # bracketing loop, then the zoom loop), so the two read side by side; the
  # equality with torch depends on every branch being the same.
  dt = x.dtype
  d_norm = jnp.max(jnp.abs(d)) if d.size else jnp.zeros([], dt)
  f_new, g_new = evaluate(x + t * d)
  gtd_new = g_new @ d

  # Bracketing phase. The body is torch's "interpolate / next step" tail; the
  # three break tests are the loop condition.
  def conds(c):
    armijo = (c["f_new"] > f + _C1 * c["t"] * gtd) | (
        (c["ls_iter"] > 1) & (c["f_new"] >= c["f_prev"]))
    wolfe = jnp.abs(c["gtd_new"]) <= -_C2 * gtd
    positive = c["gtd_new"] >= 0
    return armijo, wolfe, positive

  def b_cond(c):
    armijo, wolfe, positive = conds(c)
    return (c["ls_iter"] < max_ls) & ~(armijo | wolfe | positive)

  def b_body(c):
    min_step = c["t"] + 0.01 * (c["t"] - c["t_prev"])
    max_step = c["t"] * 10
    t_new = _cubic_interpolate(c["t_prev"], c["f_prev"], c["gtd_prev"], c["t"],
                               c["f_new"], c["gtd_new"], bounds=(min_step, max_step))
    f_n, g_n = evaluate(x + t_new * d)
    return dict(t_prev=c["t"], f_prev=c["f_new"], g_prev=c["g_new"],
                gtd_prev=c["gtd_new"], t=t_new, f_new=f_n, g_new=g_n,
                gtd_new=g_n @ d, ls_iter=c["ls_iter"] + 1, evals=c["evals"] + 1)

  zero = jnp.zeros([], dt)
  c = dict(t_prev=zero, f_prev=f, g_prev=g, gtd_prev=gtd, t=jnp.asarray(t, dt),
           f_new=f_new, g_new=g_new, gtd_new=gtd_new, ls_iter=jnp.zeros([], jnp.int32),
           evals=jnp.ones([], jnp.int32))
  c = jax.lax.while_loop(b_cond, b_body, c)
  armijo, wolfe, positive = conds(c)
  hit_max = c["ls_iter"] >= max_ls
  single = ~hit_max & ~armijo & wolfe

  def pick(max_case, single_case, two_case):
    return jnp.where(hit_max, max_case, jnp.where(single, single_case, two_case))

  b_t = pick(jnp.stack([zero, c["t"]]), jnp.stack([c["t"], c["t"]]),
             jnp.stack([c["t_prev"], c["t"]]))
  b_f = pick(jnp.stack([f, c["f_new"]]), jnp.stack([c["f_new"], c["f_new"]]),
             jnp.stack([c["f_prev"], c["f_new"]]))
  b_g = pick(jnp.stack([g, c["g_new"]]), jnp.stack([c["g_new"], c["g_new"]]),
             jnp.stack([c["g_prev"], c["g_new"]]))
  b_gtd = pick(jnp.stack([gtd, c["gtd_new"]]), jnp.stack([c["gtd_new"], c["gtd_new"]]),
               jnp.stack([c["gtd_prev"], c["gtd_new"]]))
  low = jnp.where(b_f[0] <= b_f[1], 0, 1)

  # Zoom phase.
  def z_cond(z):
    small = jnp.abs(z["b_t"][1] - z["b_t"][0]) * d_norm < _LS_TOLERANCE_CHANGE
    return ~z["done"] & (z["ls_iter"] < max_ls) & ~small

  def z_body(z):
    b_t, b_f, b_g, b_gtd, low = z["b_t"], z["b_f"], z["b_g"], z["b_gtd"], z["low"]
    high = 1 - low
    t = _cubic_interpolate(b_t[0], b_f[0], b_gtd[0], b_t[1], b_f[1], b_gtd[1])
    bmax, bmin = jnp.max(b_t), jnp.min(b_t)
    eps = 0.1 * (bmax - bmin)
    near = jnp.minimum(bmax - t, t - bmin) < eps
    at_edge = z["insuf"] | (t >= bmax) | (t <= bmin)
    moved = jnp.where(jnp.abs(t - bmax) < jnp.abs(t - bmin), bmax - eps, bmin + eps)
    t = jnp.where(near & at_edge, moved, t)
    insuf = near & ~at_edge
    f_n, g_n = evaluate(x + t * d)
    gtd_n = g_n @ d
    fail = (f_n > f + _C1 * t * gtd) | (f_n >= b_f[low])
    wolfe = jnp.abs(gtd_n) <= -_C2 * gtd
    swap = ~fail & ~wolfe & (gtd_n * (b_t[high] - b_t[low]) >= 0)
    # Armijo failed: the new point replaces the high end.
    fb_t, fb_f = b_t.at[high].set(t), b_f.at[high].set(f_n)
    fb_g, fb_gtd = b_g.at[high].set(g_n), b_gtd.at[high].set(gtd_n)
    f_low = jnp.where(fb_f[0] <= fb_f[1], 0, 1)
    # Otherwise: maybe the old low becomes high, then the new point is low.
    sb_t = jnp.where(swap, b_t.at[high].set(b_t[low]), b_t).at[low].set(t)
    sb_f = jnp.where(swap, b_f.at[high].set(b_f[low]), b_f).at[low].set(f_n)
    sb_g = jnp.where(swap, b_g.at[high].set(b_g[low]), b_g).at[low].set(g_n)
    sb_gtd = jnp.where(swap, b_gtd.at[high].set(b_gtd[low]), b_gtd).at[low].set(gtd_n)
    return dict(
        b_t=jnp.where(fail, fb_t, sb_t), b_f=jnp.where(fail, fb_f, sb_f),
        b_g=jnp.where(fail, fb_g, sb_g), b_gtd=jnp.where(fail, fb_gtd, sb_gtd),
        low=jnp.where(fail, f_low, low), done=~fail & wolfe, insuf=insuf,
        ls_iter=z["ls_iter"] + 1, evals=z["evals"] + 1)

  z = dict(b_t=b_t, b_f=b_f, b_g=b_g, b_gtd=b_gtd, low=low, done=single,
           insuf=jnp.zeros([], bool), ls_iter=c["ls_iter"], evals=c["evals"])
  z = jax.lax.while_loop(z_cond, z_body, z)
  low = z["low"]
  return z["b_f"][low], z["b_g"][low], z["b_t"][low], z["evals"]


def _two_loop(g, old_dirs, old_stps, ro, num_old, h_diag):
  """torch's collapsed two-loop recursion over the first ``num_old`` pairs."""
  size = old_dirs.shape[0]

  def back(k, carry):
    q, al = carry
    i = num_old - 1 - k
    a_i = (old_stps[i] @ q) * ro[i]
    return q - a_i * old_dirs[i], al.at[i].set(a_i)

  q, al = jax.lax.fori_loop(0, num_old, back, (-g, jnp.zeros([size], g.dtype)))
  r = q * h_diag

  def fwd(i, r):
    be_i = (old_dirs[i] @ r) * ro[i]
    return r + (al[i] - be_i) * old_stps[i]

  return jax.lax.fori_loop(0, num_old, fwd, r)


def _direction(c, size):
  """torch's search direction of one iteration: ``-g`` on the first one;
  afterwards the curvature pair ``(y, s)`` enters the memory (if ``y.s >
  1e-10``, dropping the oldest when full) and the two-loop recursion gives
  ``-H g``. Returns ``(d, old_dirs, old_stps, ro, num_old, h_diag)``."""
  dt = c["g"].dtype

  def first(_):
    return (-c["g"], c["old_dirs"], c["old_stps"], c["ro"],
            jnp.zeros([], jnp.int32), jnp.ones([], dt))

  def quasi_newton(_):
    y = c["g"] - c["prev_g"]
    s = c["d"] * c["t"]
    ys = y @ s
    accept = ys > _YS_MIN
    full = c["num_old"] == size
    pos = jnp.where(full, size - 1, c["num_old"])

    def push(mem, v):
      shifted = jnp.where(full, jnp.roll(mem, -1, axis=0), mem)
      return jnp.where(accept, shifted.at[pos].set(v), mem)

    dirs, stps = push(c["old_dirs"], y), push(c["old_stps"], s)
    ro = push(c["ro"], 1.0 / ys)
    num_old = jnp.where(accept, jnp.minimum(c["num_old"] + 1, size), c["num_old"])
    h_diag = jnp.where(accept, ys / (y @ y), c["h_diag"])
    d = _two_loop(c["g"], dirs, stps, ro, num_old, h_diag)
    return d, dirs, stps, ro, num_old, h_diag

  return jax.lax.cond(c["n_glob"] == 1, first, quasi_newton, None)


@registry.register(
    family="Team SGD",
    summary="L-BFGS as torch.optim.LBFGS: max_iter inner iterations per update, strong-Wolfe option.",
    paper="Liu & Nocedal, Math. Programming 1989; Nocedal & Wright 2006 (Alg. 3.5/3.6)",
    reference="torch.optim.LBFGS",
    verified="torch.optim.LBFGS 2.13, float64, 58-420 inner iterations per setting (tests/test_lbfgs.py)",
    extra_args=("value_fn",),
    needs_params=True,
)
def lbfgs(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    max_iter: int = 20,
    max_eval: Optional[int] = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""L-BFGS, exactly ``torch.optim.LBFGS``: one ``update`` = one ``step(closure)``.

  Each update runs up to ``max_iter`` iterations of

  .. math::

    d_k = -H_k g_k \ (\text{two-loop recursion, } H_0 = \tfrac{y^\top s}{y^\top y} I),
    \qquad x_{k+1} = x_k + t_k d_k,

  with :math:`t_k` = ``learning_rate`` (the very first iteration ever:
  :math:`\min(1, 1/\lVert g\rVert_1)\,\eta`), or torch's strong-Wolfe line
  search started there (``line_search_fn="strong_wolfe"``; :math:`c_1 =
  10^{-4}`, :math:`c_2 = 0.9`, its bracket tolerance is torch's fixed 1e-9).
  A pair :math:`(y, s)` enters the memory only if :math:`y^\top s > 10^{-10}`.
  It stops early, as torch, when ``max_eval`` evaluations are used, when
  :math:`\max|g| \le` ``tolerance_grad``, when :math:`g^\top d >`
  ``-tolerance_change``, :math:`\max|t d| \le` ``tolerance_change`` or the loss
  changes by less than ``tolerance_change``. The memory, the last direction
  and step persist across updates (torch's state), so consecutive updates
  continue one L-BFGS run.

  Usage (the ``optax.lbfgs`` pattern, but the closure is a function)::

    value_fn = lambda params, i: loss(params, batch)
    grads = jax.grad(loss)(params, batch)
    updates, state = tx.update(grads, state, params, value_fn=value_fn)

  ``update`` needs the extra argument ``value_fn(params, i)``, called with
  ``i = 0`` at every evaluation (the same batch, as torch's closure); the
  incoming ``updates`` must be the gradient at ``params``. The optional extra
  argument ``value`` (the loss at ``params``) saves one evaluation; without
  it, ``value_fn(params, 0)`` is called. The returned update is
  :math:`x_{\text{final}} - x_0`. All arithmetic is on the flattened
  parameters (``jax.flatten_util.ravel_pytree``, at least float32), so like
  torch this does not keep a sharded layout.

  ``optax.inject_hyperparams`` can inject ``learning_rate``,
  ``tolerance_grad`` and ``tolerance_change``; pass
  ``static_args=("max_iter", "max_eval", "history_size")`` (the memory size
  is a shape).

  Args:
    learning_rate: torch's ``lr`` (default 1) or a schedule of the update count.
    max_iter: inner iterations per update (torch default 20), >= 1.
    max_eval: function evaluations per update (default ``max_iter * 5 // 4``).
    tolerance_grad: stop when :math:`\max|g|` is at most this (default 1e-7).
    tolerance_change: function-value / step tolerance (default 1e-9).
    history_size: memory size (default 100), >= 1.
    line_search_fn: ``None`` or ``"strong_wolfe"``.

  References:
    Liu & Nocedal, `On the limited memory BFGS method for large scale
    optimization <https://doi.org/10.1007/BF01589116>`_, 1989; Nocedal &
    Wright, Numerical Optimization, 2nd ed., 2006.
  """
  validation.check_lr(learning_rate)
  validation.check_int("max_iter", max_iter, minimum=1)
  if max_eval is None:
    max_eval = int(max_iter) * 5 // 4
  validation.check_int("max_eval", max_eval, minimum=1)
  validation.check_nonneg("tolerance_grad", tolerance_grad)
  validation.check_nonneg("tolerance_change", tolerance_change)
  validation.check_int("history_size", history_size, minimum=1)
  if line_search_fn is not None:
    validation.check_choice("line_search_fn", line_search_fn, ("strong_wolfe",))
  if isinstance(history_size, jax.core.Tracer):
    raise TypeError("`history_size` must be static: use optax.inject_hyperparams("
                    "..., static_args=('max_iter', 'max_eval', 'history_size')).")
  size = int(history_size)

  def _flat(tree):
    flat, unravel = ravel_pytree(tree)
    cd = jnp.promote_types(flat.dtype, jnp.float32)
    return flat.astype(cd), unravel

  def init_fn(params):
    x, _ = _flat(params)
    n, dt = x.shape[0], x.dtype
    z = jnp.zeros([], dt)
    i0 = jnp.zeros([], jnp.int32)
    return LbfgsState(count=i0, func_evals=i0, n_iter=i0, d=jnp.zeros([n], dt), t=z,
                      old_dirs=jnp.zeros([size, n], dt), old_stps=jnp.zeros([size, n], dt),
                      ro=jnp.zeros([size], dt), num_old=i0, h_diag=jnp.ones([], dt),
                      prev_flat_grad=jnp.zeros([n], dt), prev_loss=z)

  def update_fn(updates, state, params=None, *, value_fn: Optional[Callable] = None,
                value: Any = None, **extra):
    # Long on purpose: one while_loop whose body is torch.optim.LBFGS.step's
    # loop body statement for statement (stop tests in torch's order), so
    # the two read side by side.
    del extra
    validation.require_params(params, "lbfgs")
    validation.require_extra_arg(
        value_fn, "value_fn", "lbfgs",
        "pass `value_fn=lambda params, i: loss(params)` (torch's closure).")
    x0, unravel = _flat(params)
    dt = x0.dtype
    g0 = _flat(updates)[0].astype(dt)
    f0 = value_fn(params, 0) if value is None else value
    f0 = jnp.asarray(f0, dt)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, dt)

    def evaluate(x):
      f, g = jax.value_and_grad(lambda p: value_fn(p, 0))(unravel(x))
      return jnp.asarray(f, dt), _flat(g)[0]

    def absmax(v):
      return jnp.max(jnp.abs(v)) if v.size else jnp.zeros([], dt)

    def body(c):
      c = dict(c)
      c["n_loc"] = c["n_loc"] + 1
      c["n_glob"] = c["n_glob"] + 1
      (c["d"], c["old_dirs"], c["old_stps"], c["ro"], c["num_old"],
       c["h_diag"]) = _direction(c, size)
      c["prev_g"] = c["g"]
      c["prev_loss"] = c["loss"]
      first = c["n_glob"] == 1
      c["t"] = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(c["g"]))) * lr, lr)
      gtd = c["g"] @ c["d"]

      def stop_now(c):
        return dict(c, stop=jnp.ones([], bool))

      def move(c):
        c = dict(c)
        if line_search_fn == "strong_wolfe":
          loss, g, t, evals = _strong_wolfe(evaluate, c["x"], c["t"], c["d"], c["loss"],
                                            c["g"], gtd, max_eval - c["cur_evals"])
          c["x"] = c["x"] + t * c["d"]
          c["t"], c["loss"], c["g"] = t, loss, g
          opt_cond = absmax(g) <= tolerance_grad
        else:
          c["x"] = c["x"] + c["t"] * c["d"]
          not_last = c["n_loc"] != max_iter
          c["loss"], c["g"] = jax.lax.cond(
              not_last, lambda x: evaluate(x), lambda x: (c["loss"], c["g"]), c["x"])
          evals = not_last.astype(jnp.int32)
          opt_cond = not_last & (absmax(c["g"]) <= tolerance_grad)
        c["cur_evals"] = c["cur_evals"] + evals
        c["func_evals"] = c["func_evals"] + evals
        c["stop"] = ((c["n_loc"] == max_iter) | (c["cur_evals"] >= max_eval) | opt_cond
                     | (absmax(c["d"] * c["t"]) <= tolerance_change)
                     | (jnp.abs(c["loss"] - c["prev_loss"]) < tolerance_change))
        return c

      return jax.lax.cond(gtd > -tolerance_change, stop_now, move, c)

    def cond(c):
      return ~c["stop"] & (c["n_loc"] < max_iter)

    one = jnp.ones([], jnp.int32)
    carry = dict(
        x=x0, loss=f0, g=g0, d=state.d, t=state.t, old_dirs=state.old_dirs,
        old_stps=state.old_stps, ro=state.ro, num_old=state.num_old,
        h_diag=state.h_diag, prev_g=state.prev_flat_grad, prev_loss=state.prev_loss,
        n_loc=jnp.zeros([], jnp.int32), n_glob=state.n_iter, cur_evals=one,
        func_evals=state.func_evals + one, stop=absmax(g0) <= tolerance_grad)
    c = jax.lax.while_loop(cond, body, carry)
    new_params = unravel(c["x"])
    new_updates = jax.tree.map(lambda a, p: (a - p).astype(p.dtype), new_params, params)
    new_updates = jax.tree.map(lambda u, g: u.astype(g.dtype), new_updates, updates)
    new_state = LbfgsState(
        count=optax.safe_increment(state.count), func_evals=c["func_evals"],
        n_iter=c["n_glob"], d=c["d"], t=jnp.asarray(c["t"], dt), old_dirs=c["old_dirs"],
        old_stps=c["old_stps"], ro=c["ro"], num_old=c["num_old"], h_diag=c["h_diag"],
        prev_flat_grad=c["prev_g"], prev_loss=c["prev_loss"])
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
