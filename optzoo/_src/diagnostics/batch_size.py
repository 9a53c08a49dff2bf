"""Batch-size experiment: same model, several batch sizes, scaled learning rates."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import optional
from optzoo._src import schedules
from optzoo._src import validation
from optzoo._src.diagnostics import landscape as _landscape

__all__ = ["BatchSizeRun", "BatchSizeReport", "batch_size_experiment", "scaled_learning_rate"]


def scaled_learning_rate(learning_rate: float, base_batch_size: int, batch_size: int,
                         rule: str = "linear") -> float:
  r"""The learning rate for ``batch_size`` under a batch-size scaling rule.

  ``"linear"``: :math:`\eta B/B_0` (SGD); ``"sqrt"``: :math:`\eta\sqrt{B/B_0}`
  (Adam-type); ``"none"``: :math:`\eta`. The factor is the one of
  ``optzoo.scale_for_batch_size`` (Granziol et al.).
  """
  validation.check_positive("learning_rate", learning_rate)
  return float(learning_rate) * schedules.batch_size_factor(
      base_batch_size, batch_size, rule, ("linear", "sqrt", "none"))


@dataclasses.dataclass(frozen=True)
class BatchSizeRun:
  """One row of a :class:`BatchSizeReport` (final metrics of one batch size)."""

  batch_size: int
  learning_rate: float
  num_steps: int
  train_loss: float
  train_accuracy: float
  val_loss: float
  val_accuracy: float
  top_eigenvalue: float
  worst_case_sharpness: float
  random_sharpness: float
  params: Any = dataclasses.field(repr=False, default=None)


@dataclasses.dataclass(frozen=True)
class BatchSizeReport:
  """The output of :func:`batch_size_experiment`."""

  runs: list
  rule: str
  base_batch_size: int
  base_learning_rate: float
  num_epochs: int
  rho: float

  def table(self) -> str:
    """A plain-text table, one row per batch size."""
    head = (f"{'batch':>6} {'lr':>9} {'steps':>6} {'train_acc':>9} {'val_acc':>8}"
            f" {'train_loss':>10} {'lambda_max':>10} {'worst@rho':>10}")
    rows = [head]
    for r in self.runs:
      rows.append(
          f"{r.batch_size:>6d} {r.learning_rate:>9.4g} {r.num_steps:>6d}"
          f" {r.train_accuracy:>9.4f} {r.val_accuracy:>8.4f} {r.train_loss:>10.4g}"
          f" {r.top_eigenvalue:>10.4g} {r.worst_case_sharpness:>10.4g}")
    return "\n".join(rows)

  def __str__(self) -> str:
    return self.table()

  def plot(self, axes=None):
    """Accuracy and sharpness vs batch size (log x axis); returns the axes."""
    plt = optional.import_optional("matplotlib.pyplot", "BatchSizeReport.plot")
    if axes is None:
      _, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    bs = [r.batch_size for r in self.runs]
    axes[0].plot(bs, [r.train_accuracy for r in self.runs], "o-", label="train")
    axes[0].plot(bs, [r.val_accuracy for r in self.runs], "s-", label="validation")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    axes[1].plot(bs, [r.top_eigenvalue for r in self.runs], "o-")
    axes[1].set_ylabel(r"$\lambda_{\max}$ (train loss)")
    for ax in axes:
      ax.set_xscale("log", base=2)
      ax.set_xlabel("batch size")
    return axes


def _as_apply(model: Any) -> Callable[[Any, Any], Any]:
  if hasattr(model, "apply") and callable(model.apply):
    return model.apply
  if callable(model):
    return model
  raise TypeError(
      "batch_size_experiment: `model` must be a flax.linen Module or a callable"
      f" `apply_fn(params, x) -> logits`, got {type(model).__name__}.")


def _check_xy(data: Any, name: str):
  if not (isinstance(data, (tuple, list)) and len(data) == 2):
    raise TypeError(f"batch_size_experiment: `{name}` must be a pair (x, y).")
  x, y = np.asarray(data[0]), np.asarray(data[1])
  if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
    raise ValueError(
        f"batch_size_experiment: `{name}` must be (x, y) with x of shape"
        f" (N, ...) and integer labels y of shape (N,); got x {x.shape}, y {y.shape}.")
  if y.dtype.kind not in "iu":
    raise TypeError(
        f"batch_size_experiment: labels in `{name}` must be integers, got {y.dtype}.")
  return x, y


def _check_batch_sizes(batch_sizes: Sequence[int], n: int) -> list:
  """``batch_sizes`` as a list, checked: non-empty, ints in ``[1, n]``."""
  batch_sizes = list(batch_sizes)
  if not batch_sizes:
    raise ValueError("batch_size_experiment: `batch_sizes` is empty.")
  for b in batch_sizes:
    validation.check_int("batch_sizes", b, minimum=1)
    if b > n:
      raise ValueError(
          f"batch_size_experiment: batch size {b} is larger than the {n}"
          " training examples.")
  return batch_sizes


def _check_optimizer(optimizer: Any) -> Callable[[float], optax.GradientTransformation]:
  """``optimizer``, checked callable; ``optax.sgd`` when ``None``."""
  if optimizer is None:
    return optax.sgd
  if not callable(optimizer):
    raise TypeError(
        "batch_size_experiment: `optimizer` must be a callable"
        " `learning_rate -> GradientTransformation` (e.g. optax.sgd).")
  return optimizer


def _train(loss_fn: Callable, tx: optax.GradientTransformation, params: Any,
           x: jax.Array, y: jax.Array, batch_size: int, num_epochs: int,
           seed: int) -> Any:
  """``params`` after ``num_epochs`` epochs of ``tx`` at ``batch_size``.

  Each epoch is one jitted scan over ``N // batch_size`` batches of a
  permutation of the ``N`` examples drawn from ``[seed, epoch]`` (the same
  for every batch size); the last ``N mod batch_size`` are dropped.
  """
  n = x.shape[0]
  steps = n // batch_size

  @jax.jit
  def epoch(p, s, perm):
    idx = perm[: steps * batch_size].reshape(steps, batch_size)

    def step(carry, i):
      p, s = carry
      g = jax.grad(loss_fn)(p, (x[i], y[i]))
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(step, (p, s), idx)
    return p, s

  p, s = params, tx.init(params)
  for e in range(num_epochs):
    perm = jnp.asarray(np.random.default_rng([seed, e]).permutation(n))
    p, s = epoch(p, s, perm)
  return p


@validation.renamed(lanczos_iters="num_lanczos_iters")
def batch_size_experiment(
    model: Any,
    params: Any,
    train_data: tuple,
    val_data: Optional[tuple] = None,
    *,
    batch_sizes: Sequence[int] = (16, 64, 256),
    base_batch_size: Optional[int] = None,
    base_learning_rate: float = 0.05,
    rule: str = "linear",
    optimizer: Optional[Callable[[float], optax.GradientTransformation]] = None,
    num_epochs: int = 5,
    rho: float = 0.05,
    sharpness_examples: int = 512,
    num_lanczos_iters: int = 20,
    seed: int = 0,
    keep_params: bool = False,
) -> BatchSizeReport:
  r"""Trains the same model at several batch sizes and measures where it lands.

  For each batch size :math:`B` the model restarts from the same ``params``
  and trains for ``num_epochs`` epochs (so larger batches take fewer steps,
  as in Keskar et al.) with softmax cross-entropy and learning rate
  :math:`\eta(B)` from ``rule`` (``"linear"``: :math:`\eta_0 B/B_0` for SGD,
  ``"sqrt"``: :math:`\eta_0\sqrt{B/B_0}` for Adam-type, ``"none"``). At the
  end it reports train/validation loss and accuracy and the sharpness of the
  training loss on the first ``sharpness_examples`` training examples: top
  Hessian eigenvalue (Lanczos) and worst-case / random loss increase at
  radius ``rho`` (:func:`sharpness`).

  Args:
    model: a ``flax.linen`` Module (its ``apply`` is used) or a callable
      ``apply_fn(params, x) -> logits``. Models with mutable collections
      (BatchNorm statistics) or dropout need an ``apply_fn`` that handles
      them (e.g. evaluation mode).
    params: initial parameters (``model.init(...)`` output for linen).
    train_data: ``(x, y)`` with integer labels ``y`` of shape ``(N,)``.
    val_data: ``(x, y)`` or ``None`` (then validation metrics are ``nan``).
    batch_sizes: batch sizes to try (each ``<= N``).
    base_batch_size: :math:`B_0`, the batch size ``base_learning_rate`` is
      tuned for; default ``min(batch_sizes)``.
    base_learning_rate: :math:`\eta_0`.
    rule: ``"linear"``, ``"sqrt"`` or ``"none"``.
    optimizer: ``learning_rate -> GradientTransformation``; default
      ``optax.sgd`` (plain SGD, the setting of the linear rule).
    num_epochs: epochs per batch size.
    rho: sharpness radius.
    sharpness_examples: training examples used for the sharpness measures.
    num_lanczos_iters: Lanczos steps for :math:`\lambda_{\max}`.
    seed: seed of the data order (the same for every batch size).
    keep_params: keep the final params of each run in the report.

  Returns:
    A :class:`BatchSizeReport` (``.table()``, ``.plot()``, ``.runs``).

  References:
    Keskar et al., `On large-batch training for deep learning
    <https://arxiv.org/abs/1609.04836>`_, ICLR 2017; Granziol et al.,
    `Learning rates as a function of batch size
    <https://arxiv.org/abs/2006.09092>`_, JMLR 2022.
  """
  apply_fn = _as_apply(model)
  x_tr, y_tr = _check_xy(train_data, "train_data")
  x_va, y_va = _check_xy(val_data, "val_data") if val_data is not None else (None, None)
  n = x_tr.shape[0]
  batch_sizes = _check_batch_sizes(batch_sizes, n)
  if base_batch_size is None:
    base_batch_size = min(batch_sizes)
  validation.check_int("base_batch_size", base_batch_size, minimum=1)
  validation.check_positive("base_learning_rate", base_learning_rate)
  validation.check_choice("rule", rule, ("linear", "sqrt", "none"))
  validation.check_int("num_epochs", num_epochs, minimum=1)
  validation.check_positive("rho", rho)
  validation.check_int("sharpness_examples", sharpness_examples, minimum=1)
  validation.check_int("num_lanczos_iters", num_lanczos_iters, minimum=1)
  optimizer = _check_optimizer(optimizer)

  def loss_fn(p, batch):
    x, y = batch
    logits = apply_fn(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def metrics(p, x, y):
    logits = apply_fn(p, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  x_tr_j, y_tr_j = jnp.asarray(x_tr), jnp.asarray(y_tr)
  m = min(sharpness_examples, n)
  sharp_batch = (x_tr_j[:m], y_tr_j[:m])
  runs = []
  for b in batch_sizes:
    lr = scaled_learning_rate(base_learning_rate, base_batch_size, b, rule)
    tx = optimizer(lr)
    steps = n // b
    p = _train(loss_fn, tx, params, x_tr_j, y_tr_j, b, num_epochs, seed)
    tr_loss, tr_acc = metrics(p, x_tr_j, y_tr_j)
    if x_va is not None:
      va_loss, va_acc = metrics(p, jnp.asarray(x_va), jnp.asarray(y_va))
    else:
      va_loss = va_acc = jnp.nan
    sh = _landscape.sharpness(
        loss_fn, p, sharp_batch, rho=rho, num_iters=num_lanczos_iters,
        num_ascent_steps=5, num_random=8, key=jax.random.key(seed))
    runs.append(BatchSizeRun(
        batch_size=int(b), learning_rate=lr, num_steps=int(steps * num_epochs),
        train_loss=float(tr_loss), train_accuracy=float(tr_acc),
        val_loss=float(va_loss), val_accuracy=float(va_acc),
        top_eigenvalue=float(sh.top_eigenvalue),
        worst_case_sharpness=sh.worst_case_increase,
        random_sharpness=sh.random_increase,
        params=p if keep_params else None))
  return BatchSizeReport(runs=runs, rule=rule, base_batch_size=int(base_batch_size),
                         base_learning_rate=float(base_learning_rate),
                         num_epochs=int(num_epochs), rho=float(rho))
