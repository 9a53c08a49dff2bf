"""The learning-rate range test ("LR finder", Smith 2017)."""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import optional
from optzoo._src import registry
from optzoo._src import validation

__all__ = ["lr_range_test", "LRRangeTestResult"]


@dataclasses.dataclass(frozen=True)
class LRRangeTestResult:
  """Result of :func:`lr_range_test`.

  Attributes:
    lrs: learning rates used, one per step actually run (NumPy float64).
    losses: smoothed (bias-corrected EMA) training losses at those steps.
    raw_losses: the raw minibatch losses.
    suggestion: the suggested learning rate (see ``method``).
    min_loss_lr: the learning rate at the minimum of the smoothed loss.
    diverged: whether the sweep stopped early because the loss diverged.
    method: the suggestion rule used.
  """

  lrs: np.ndarray
  losses: np.ndarray
  raw_losses: np.ndarray
  suggestion: float
  min_loss_lr: float
  diverged: bool
  method: str

  def plot(self, ax: Any = None, skip_start: int = 0, skip_end: int = 0,
           show_suggestion: bool = True) -> Any:
    """Plots the smoothed loss against the learning rate (log x axis).

    Args:
      ax: a matplotlib ``Axes`` (a new figure is made when ``None``).
      skip_start: points to hide at the start.
      skip_end: points to hide at the end.
      show_suggestion: mark the suggested learning rate.

    Returns:
      The matplotlib ``Axes``.
    """
    plt = optional.import_optional("matplotlib.pyplot", "LRRangeTestResult.plot")
    if ax is None:
      _, ax = plt.subplots(figsize=(6, 4))
    end = len(self.lrs) - skip_end if skip_end else len(self.lrs)
    sl = slice(skip_start, end)
    ax.plot(self.lrs[sl], self.raw_losses[sl], color="0.8", lw=1,
            label="raw loss")
    ax.plot(self.lrs[sl], self.losses[sl], color="C0", lw=2,
            label="smoothed loss")
    if show_suggestion and math.isfinite(self.suggestion):
      ax.axvline(self.suggestion, color="C3", ls="--",
                 label=f"suggestion {self.suggestion:.2e} ({self.method})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = self.losses[sl][np.isfinite(self.losses[sl])]
    if finite.size:
      lo, first = float(finite.min()), float(finite[0])
      span = max(first - lo, 1e-12 * max(abs(lo), 1.0))
      ax.set_ylim(lo - 0.05 * span, first + 0.25 * span)
    ax.set_title("LR range test")
    ax.legend(loc="best", fontsize=8)
    return ax


def _injectable(optimizer: Any, init_lr: float) -> optax.GradientTransformation:
  """Builds an inject_hyperparams optimizer whose lr can be set at run time."""
  if optimizer is None:
    from optzoo._src import alias  # pylint: disable=g-import-not-at-top
    optimizer = alias.sgd
  if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
    return optimizer  # checked after init (needs an InjectHyperparamsState)
  if not callable(optimizer):
    raise TypeError(
        "`optimizer` must be an optimizer factory taking `learning_rate` (e.g."
        " optzoo.adam or functools.partial(optzoo.sgd, momentum=0.9)) or an"
        f" optax.inject_hyperparams(...) transformation; got {optimizer!r}.")
  try:
    sig = inspect.signature(optimizer)
    if "learning_rate" not in sig.parameters:
      raise TypeError(
          "`optimizer` must accept a `learning_rate` argument (e.g. optzoo.adam"
          " or functools.partial(optzoo.sgd, momentum=0.9)).")
  except (TypeError, ValueError) as e:
    if "learning_rate" in str(e):
      raise
  return optax.inject_hyperparams(optimizer)(learning_rate=init_lr)


def _find_hyperparams(state: Any) -> Optional[dict]:
  if hasattr(state, "hyperparams") and isinstance(state.hyperparams, dict):
    if "learning_rate" in state.hyperparams:
      return state.hyperparams
  if isinstance(state, (tuple, list)):
    for s in state:
      h = _find_hyperparams(s)
      if h is not None:
        return h
  return None


def _set_lr(state: Any, lr: jax.Array) -> Any:
  if hasattr(state, "hyperparams") and isinstance(state.hyperparams, dict) and (
      "learning_rate" in state.hyperparams):
    hp = dict(state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, jnp.asarray(
        hp["learning_rate"]).dtype)
    return state._replace(hyperparams=hp)
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    return type(state)(*[_set_lr(s, lr) for s in state])
  if isinstance(state, (tuple, list)):
    return type(state)(_set_lr(s, lr) for s in state)
  return state


@registry.register(
    family="tool",
    kind="utility",
    summary="LR range test: exponential lr sweep with divergence stop,"
    " smoothing, suggestion and plot().",
    paper="Smith, Cyclical Learning Rates for Training Neural Networks, WACV"
    " 2017, https://arxiv.org/abs/1506.01186",
    reference="fastai / torch-lr-finder recipe (exponential sweep, EMA"
    " smoothing, divergence stop)",
)
def lr_range_test(
    loss_fn: Callable[[Any, Any], Any],
    params: Any,
    batches: Iterable[Any],
    optimizer: Union[Callable[..., optax.GradientTransformation],
                     optax.GradientTransformation, None] = None,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    *,
    smoothing: float = 0.98,
    diverge_threshold: float = 4.0,
    method: str = "steepest",
    skip_start: int = 10,
    has_aux: bool = False,
) -> LRRangeTestResult:
  r"""Runs the LR range test of Smith (2017) with any optax/optzoo optimizer.

  Trains from ``params`` for up to ``num_steps`` steps while the learning
  rate grows exponentially,

  .. math::

    \eta_i = \eta_{\min}\,(\eta_{\max}/\eta_{\min})^{i/(N-1)},

  records the minibatch loss (taken before each step), smooths it with a
  bias-corrected EMA (:math:`\bar\ell_i = \text{avg}_i/(1-\beta^{i+1})`,
  :math:`\beta` = ``smoothing``) and stops when the smoothed loss exceeds
  ``diverge_threshold`` times its best value or becomes non-finite. The
  optimizer is wrapped with ``optax.inject_hyperparams`` and the step is
  jitted once: the learning rate is a run-time input (one compile, as long
  as every batch has the same shapes). ``params`` is not modified.

  Suggestion rules (``method``):

  * ``"steepest"`` (default, torch-lr-finder): the lr where the smoothed loss
    falls fastest against :math:`\log\eta`, searched between ``skip_start``
    and the minimum of the smoothed loss;
  * ``"minimum"`` (fastai v1): a tenth of the lr at the minimum of the
    smoothed loss.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with
      ``has_aux=True``); e.g. a closure over a Flax ``model.apply``.
    params: initial parameters (any pytree).
    batches: an iterable of batches passed to ``loss_fn``; it is cycled when
      it has fewer than ``num_steps`` elements.
    optimizer: an optimizer factory with a ``learning_rate`` argument (e.g.
      ``optzoo.adam``, ``functools.partial(optzoo.sgd, momentum=0.9)``,
      ``optax.adamw``), or an ``optax.inject_hyperparams(...)(...)``
      transformation. Default: ``optzoo.sgd``.
    min_lr: first learning rate (> 0).
    max_lr: last learning rate (> ``min_lr``).
    num_steps: number of sweep steps (>= 2).
    smoothing: EMA coefficient :math:`\beta` in [0, 1).
    diverge_threshold: stop when smoothed loss > threshold x best (> 1).
    method: ``"steepest"`` or ``"minimum"``.
    skip_start: points ignored at the start by ``"steepest"``.
    has_aux: ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    An :class:`LRRangeTestResult` with ``lrs``, ``losses`` (smoothed),
    ``raw_losses``, ``suggestion``, ``min_loss_lr``, ``diverged`` and
    ``plot()``.

  Examples:
    >>> import jax.numpy as jnp, optzoo
    >>> res = optzoo.lr_range_test(lambda p, b: jnp.sum((p - b) ** 2),
    ...                            jnp.zeros(3), [jnp.ones(3)],
    ...                            optimizer=optzoo.sgd, min_lr=1e-4,
    ...                            max_lr=10.0, num_steps=50)
    >>> ax = res.plot()  # doctest: +SKIP

  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, WACV 2017.
  """
  if not callable(loss_fn):
    raise TypeError("`loss_fn` must be callable as loss_fn(params, batch).")
  validation.check_positive("min_lr", min_lr)
  validation.check_positive("max_lr", max_lr)
  if not max_lr > min_lr:
    raise ValueError(f"`max_lr` must be > `min_lr`, got max_lr={max_lr!r},"
                     f" min_lr={min_lr!r}.")
  validation.check_int("num_steps", num_steps, minimum=2)
  validation.check_beta("smoothing", smoothing)
  validation.check_number("diverge_threshold", diverge_threshold)
  if not diverge_threshold > 1:
    raise ValueError(f"`diverge_threshold` must be > 1, got"
                     f" {diverge_threshold!r}.")
  validation.check_choice("method", method, ("steepest", "minimum"))
  validation.check_int("skip_start", skip_start, minimum=0)
  validation.check_bool("has_aux", has_aux)
  if batches is None:
    raise TypeError("`batches` must be an iterable of batches.")

  tx = _injectable(optimizer, min_lr)
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  if _find_hyperparams(state) is None:
    raise TypeError(
        "`optimizer` must be a factory taking `learning_rate` (e.g. optzoo.adam)"
        " or an optax.inject_hyperparams(factory)(learning_rate=...)"
        " transformation, so that the learning rate can change without"
        " recompiling; got a transformation without an injected"
        " `learning_rate`.")

  vg = jax.value_and_grad(loss_fn, has_aux=has_aux)

  @jax.jit
  def step(p, s, batch, lr):
    s = _set_lr(s, lr)
    out, g = vg(p, batch)
    loss = out[0] if has_aux else out
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  lrs_all = min_lr * (max_lr / min_lr) ** (np.arange(num_steps) / (num_steps - 1))
  cache, it = [], iter(batches)
  exhausted = False
  lrs, raw, smooth = [], [], []
  avg, best = 0.0, math.inf
  diverged = False
  for i in range(num_steps):
    if not exhausted:
      try:
        batch = next(it)
        cache.append(batch)
      except StopIteration:
        exhausted = True
        if not cache:
          raise ValueError("`batches` is empty.") from None
    if exhausted:
      batch = cache[i % len(cache)]
    lr = float(lrs_all[i])
    params, state, loss = step(params, state, batch, jnp.asarray(lr))
    loss = float(loss)  # host sync is fine here: this is a driver loop
    lrs.append(lr)
    raw.append(loss)
    if not math.isfinite(loss):
      smooth.append(math.nan)
      diverged = True
      break
    avg = smoothing * avg + (1.0 - smoothing) * loss
    sm = avg / (1.0 - smoothing ** (i + 1))
    smooth.append(sm)
    best = min(best, sm)
    if i > 0 and sm > diverge_threshold * best:
      diverged = True
      break

  lrs_a = np.asarray(lrs, np.float64)
  sm_a = np.asarray(smooth, np.float64)
  raw_a = np.asarray(raw, np.float64)
  finite = np.isfinite(sm_a)
  if not finite.any():
    suggestion, min_lr_at = math.nan, math.nan
  else:
    i_min = int(np.nanargmin(np.where(finite, sm_a, np.inf)))
    min_lr_at = float(lrs_a[i_min])
    if method == "minimum":
      suggestion = min_lr_at / 10.0
    else:
      lo = min(skip_start, max(i_min - 1, 0))
      seg = sm_a[lo:i_min + 1]
      if seg.size >= 2:
        slope = np.gradient(seg, np.log(lrs_a[lo:i_min + 1]))
        suggestion = float(lrs_a[lo + int(np.argmin(slope))])
      else:
        suggestion = min_lr_at / 10.0
  return LRRangeTestResult(
      lrs=lrs_a, losses=sm_a, raw_losses=raw_a, suggestion=suggestion,
      min_loss_lr=min_lr_at, diverged=diverged, method=method)
