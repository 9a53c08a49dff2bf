"""``torch.optim.swa_utils`` for JAX / Flax: AveragedModel, SWALR, update_bn.

* :func:`averaged_model`: ``AveragedModel`` as a pure ``(init, update)`` pair
  over a params tree and (``use_buffers=True``) the Flax ``batch_stats``:
  SWA's running mean (torch's default ``get_swa_avg_fn``) or an EMA
  (``get_ema_multi_avg_fn(decay)``). Inside an optimizer chain use
  :func:`optzoo.param_ema` instead (same params numerics, no batch_stats).
* :func:`swalr`: the ``SWALR`` schedule (cos / linear annealing to
  ``swa_lr`` over ``anneal_epochs``).
* :func:`update_bn`: ``update_bn`` for Flax BatchNorm: one pass over the data
  in training mode, the statistics being the plain average over batches of
  each batch's statistics (torch's ``momentum=None`` cumulative average).

The fixtures are written by ``tests/gen_swa_fixtures.py`` (torch 2.13).
"""

import math
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import validation

__all__ = [
    "AveragedModelState",
    "AveragedModel",
    "averaged_model",
    "swalr",
    "update_bn",
]


class AveragedModelState(NamedTuple):
  """State of :func:`averaged_model`.

  Attributes:
    n_averaged: snapshots averaged so far (int32, torch's ``n_averaged``).
    params: the averaged parameters.
    batch_stats: the averaged (``use_buffers=True``) or last copied
      (``use_buffers=False``) batch statistics; ``None`` if none were given.
  """
  n_averaged: jax.Array
  params: Any
  batch_stats: Any


class AveragedModel(NamedTuple):
  """``init(params, batch_stats=None)`` and ``update(state, params,
  batch_stats=None)``, both pure and jittable."""
  init: Callable[..., AveragedModelState]
  update: Callable[..., AveragedModelState]


def _copy(tree):
  return jax.tree.map(jnp.asarray, tree)


def averaged_model(mode: str = "swa", decay: float = 0.999,
                   use_buffers: bool = False) -> AveragedModel:
  r"""``torch.optim.swa_utils.AveragedModel`` as pure functions.

  ``update`` is ``AveragedModel.update_parameters(model)``: the first call
  copies the parameters; afterwards, with :math:`n` = ``n_averaged``,

  .. math::

    \text{swa: } \bar\theta \leftarrow \bar\theta +
    \frac{\theta - \bar\theta}{n + 1}, \qquad
    \text{ema: } \bar\theta \leftarrow \bar\theta + (1 - \tau)(\theta -
    \bar\theta)

  (``get_swa_avg_fn`` / ``get_ema_multi_avg_fn(decay)``'s lerp). With
  ``use_buffers=True`` the ``batch_stats`` are averaged the same way (torch
  averages ``model.buffers()``), otherwise they are copied from the model
  each call (then run :func:`update_bn` on the averaged params, as torch
  recommends).

  Args:
    mode: ``"swa"`` (equal weights) or ``"ema"``.
    decay: the EMA decay :math:`\tau` in [0, 1] (``mode="ema"``).
    use_buffers: average the ``batch_stats`` too.

  Returns:
    An :class:`AveragedModel` ``(init, update)``.

  References:
    Izmailov et al., `Averaging Weights Leads to Wider Optima and Better
    Generalization <https://arxiv.org/abs/1803.05407>`_, UAI 2018.
  """
  validation.check_choice("mode", mode, ("swa", "ema"))
  validation.check_unit_interval("decay", decay)
  validation.check_bool("use_buffers", use_buffers)

  def init(params, batch_stats=None):
    return AveragedModelState(jnp.zeros((), jnp.int32), _copy(params),
                              _copy(batch_stats))

  def average(avg, cur, n):
    if mode == "ema":
      w = 1.0 - decay
    else:
      w = 1.0 / (n.astype(jnp.result_type(float)) + 1.0)

    def leaf(a, x):
      x = jnp.asarray(x).astype(a.dtype)
      if not jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.where(n == 0, x, x)  # integer buffers: copied
      new = a + (w * (x - a)).astype(a.dtype)
      return jnp.where(n == 0, x, new).astype(a.dtype)

    return jax.tree.map(leaf, avg, cur)

  def update(state, params, batch_stats=None):
    n = state.n_averaged
    new_params = average(state.params, params, n)
    if batch_stats is None:
      new_bs = state.batch_stats
    elif use_buffers:
      new_bs = average(state.batch_stats, batch_stats, n)
    else:
      new_bs = _copy(batch_stats)
    return AveragedModelState(optax.safe_increment(n), new_params, new_bs)

  return AveragedModel(init, update)


@registry.register(
    family="schedule",
    kind="schedule",
    summary="torch SWALR: anneal from the current lr to swa_lr (cos/linear)"
    " over anneal_epochs, then hold.",
    paper="Izmailov et al., Averaging Weights Leads to Wider Optima and"
    " Better Generalization, UAI 2018, https://arxiv.org/abs/1803.05407",
    reference="torch.optim.swa_utils.SWALR",
    verified="torch.optim.swa_utils.SWALR 2.13, float64, 1000 steps (tests/test_swa.py)",
)
def swalr(learning_rate: float, swa_lr: float, anneal_epochs: int = 10,
          anneal_strategy: str = "cos") -> optax.Schedule:
  r"""``torch.optim.swa_utils.SWALR``.

  Step :math:`k` = the lr after :math:`k` calls of ``SWALR.step()``;
  ``learning_rate`` is the lr in the optimizer when ``SWALR`` takes over:

  .. math::

    \eta_k = \alpha_k\,\eta_{\text{swa}} + (1 - \alpha_k)\,\eta_0, \quad
    \alpha_k = a\bigl(\min(1, k / E)\bigr), \quad
    a(x) = \begin{cases}(1 - \cos \pi x)/2 & \text{cos}\\ x & \text{linear}
    \end{cases}

  (torch's recursion reconstructs :math:`\eta_0` from the current lr each
  step, so this closed form is what it computes). ``anneal_epochs = 0``
  switches to ``swa_lr`` after the first step (torch does so already when the ``SWALR``
  is constructed: build it when it takes over, or the other scheduler's
  recursive form will scale ``swa_lr``). To follow another schedule, join them:
  ``optax.join_schedules([sched, swalr(float(sched(s)), ...)], [s])``.

  Args:
    learning_rate: :math:`\eta_0`, the lr the annealing starts from (>= 0).
    swa_lr: the final lr (>= 0).
    anneal_epochs: :math:`E`, integer >= 0 (torch default 10).
    anneal_strategy: ``"cos"`` (default) or ``"linear"``.

  Returns:
    An ``optax.Schedule``.
  """
  validation.check_nonneg("learning_rate", learning_rate)
  validation.check_nonneg("swa_lr", swa_lr)
  validation.check_int("anneal_epochs", anneal_epochs, minimum=0)
  validation.check_choice("anneal_strategy", anneal_strategy,
                          ("cos", "linear"))
  lr0, lo, e = float(learning_rate), float(swa_lr), int(anneal_epochs)

  def schedule(count):
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    k = jnp.asarray(count).astype(dt)
    t = jnp.clip(k / max(e, 1), 0.0, 1.0)
    a = (1.0 - jnp.cos(math.pi * t)) / 2.0 if anneal_strategy == "cos" else t
    return lo * a + lr0 * (1.0 - a)

  return schedule


def _bn_momenta(model, variables, x, apply_kwargs):
  """{scope path: momentum} of every flax BatchNorm called by the model."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  found = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, nn.BatchNorm) and context.method_name == "__call__":
      x = args[0]
      feats = 1
      axes = (mod.axis,) if isinstance(mod.axis, int) else tuple(mod.axis)
      for a in axes:
        feats *= x.shape[a]
      found[tuple(mod.scope.path)] = (float(mod.momentum),
                                      x.size // max(feats, 1))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["batch_stats"],
                                            **apply_kwargs), variables, x)
  return found


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def update_bn(model, params, batch_stats, batches: Iterable[Any], *,
              apply_kwargs: Optional[dict] = None,
              unbiased: bool = False) -> Any:
  r"""``torch.optim.swa_utils.update_bn`` for Flax ``BatchNorm`` statistics.

  Runs ``model`` in training mode over ``batches`` (arrays, or tuples /
  lists whose first element is the input, as torch's loader) and returns new
  ``batch_stats`` where every BatchNorm's ``mean`` / ``var`` is the plain
  average over the batches of that batch's statistics: torch's
  ``momentum=None`` cumulative moving average
  :math:`s_n = s_{n-1} + (\hat s_n - s_{n-1})/n`, started from the reset
  statistics. The activations of later layers are those of training mode
  (batch statistics), as in torch. Use it after :func:`averaged_model` with
  the averaged params.

  Flax keeps the *biased* batch variance in ``var``; ``unbiased=True``
  averages the unbiased one (:math:`\times m/(m-1)`, :math:`m` = elements
  reduced per feature), which is what torch's ``running_var`` holds.

  Args:
    model: a ``flax.linen`` Module (e.g. ``optzoo.nn.MLP(norm="batch")``).
    params: its parameters (e.g. the SWA average).
    batch_stats: its current ``batch_stats`` (structure and dtypes; values
      ignored). Returned unchanged if the model has no BatchNorm.
    batches: an iterable of input batches.
    apply_kwargs: keyword arguments putting the model in training mode
      (default ``{"train": True}``, the optzoo.nn convention).
    unbiased: average the unbiased batch variance (torch's running_var).

  Returns:
    The new ``batch_stats``.
  """
  validation.check_bool("unbiased", unbiased)
  kw = {"train": True} if apply_kwargs is None else dict(apply_kwargs)
  if batch_stats is None or not jax.tree.leaves(batch_stats):
    return batch_stats
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  momenta = None
  step = None
  acc, n = None, 0
  for batch in batches:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    x = jnp.asarray(x)
    if momenta is None:
      momenta = _bn_momenta(model, {"params": params, "batch_stats": zeros},
                            x, kw)
      if not momenta:
        return batch_stats
      for path, (m, _) in momenta.items():
        if m >= 1.0:
          raise ValueError(f"BatchNorm {'/'.join(path)} has momentum={m}:"
                           " its statistics never update.")

      @jax.jit
      def step(acc, n, x):
        _, upd = model.apply({"params": params, "batch_stats": zeros}, x,
                             mutable=["batch_stats"], **kw)
        new = upd["batch_stats"]
        out = acc
        for path, (m, cnt) in momenta.items():
          stats = _get(new, path)
          batch_mean = stats["mean"] / (1.0 - m)
          batch_var = stats["var"] / (1.0 - m)
          if unbiased:
            batch_var = batch_var * (cnt / max(cnt - 1, 1))
          node = _get(out, path)
          node["mean"] = node["mean"] + (batch_mean - node["mean"]) / n
          node["var"] = node["var"] + (batch_var - node["var"]) / n
        return out

      acc = zeros
    n += 1
    acc = step(_mutable(acc), jnp.asarray(n, acc_dtype(acc)), x)
  if acc is None:
    return batch_stats
  return jax.tree.map(lambda a, b: a.astype(jnp.asarray(b).dtype), acc,
                      batch_stats)


def acc_dtype(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.result_type(*leaves) if leaves else jnp.float32


def _mutable(tree):
  """Plain nested dicts (so the step can assign into them)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _mutable(v) for k, v in tree.items()}
  return tree
