"""Flax helpers: small models with a ``norm=`` switch, train/eval steps, ``fit``.

Linen (the classic API)::

    import optax, optzoo
    from optzoo import nn as zn

    data = zn.load_dataset("digits")
    model = zn.CNN(norm="batch")                    # none|batch|layer|group|instance|weight
    tx = optax.chain(optzoo.scale_by_adam(), optzoo.scale_by_learning_rate(1e-3))
    state = zn.create_train_state(model, tx, data.x_train[:1], seed=0)
    for x, y in zn.batches(data.x_train, data.y_train, 64, seed=0):
      state, metrics = zn.train_step(state, x, y)   # BatchNorm stats handled
    print(zn.eval_step(state, data.x_test, data.y_test))  # running averages

:class:`TrainState` extends ``flax.training.train_state.TrainState`` with
``batch_stats`` (BatchNorm moving averages, used at evaluation) and an
``rng`` key; its ``apply_gradients`` forwards *extra arguments* (``value``,
``value_sq``, ``grad_fn``, ...) to ``GradientTransformationExtraArgs``
optimizers, so loss-aware methods such as KOALA or Entropy-SGD plug in with
no glue.

NNX: :class:`NNXMLP`, :func:`nnx_optimizer` (``nnx.Optimizer(model, tx,
wrt=nnx.Param)``), :func:`nnx_train_step` and :func:`nnx_eval`.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

from optzoo.apps.data import Dataset
from optzoo.apps.data import DatasetError
from optzoo.apps.data import batches
from optzoo.apps.data import load_dataset
from optzoo.apps.data import load_digits
from optzoo.apps.data import load_fashion_mnist

__all__ = [
    "NORMS",
    "MLP",
    "CNN",
    "make_model",
    "TrainState",
    "create_train_state",
    "cross_entropy",
    "squared_error",
    "train_step",
    "eval_step",
    "fit",
    "NNXMLP",
    "nnx_optimizer",
    "nnx_train_step",
    "nnx_eval",
    "Dataset",
    "DatasetError",
    "batches",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
]

NORMS = ("none", "batch", "layer", "group", "instance", "weight")
_NORM_ALIASES = {
    None: "none", "": "none", "none": "none", "batch": "batch", "bn": "batch",
    "batchnorm": "batch", "layer": "layer", "ln": "layer", "layernorm": "layer",
    "group": "group", "gn": "group", "groupnorm": "group", "instance": "instance",
    "in": "instance", "instancenorm": "instance", "weight": "weight",
    "wn": "weight", "weightnorm": "weight"}


def _canon_norm(norm: Optional[str]) -> str:
  key = norm.lower().replace("_", "").replace("-", "") if isinstance(norm, str) else norm
  if key not in _NORM_ALIASES:
    raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}.")
  return _NORM_ALIASES[key]


def _norm_layer(norm: str, features: int, num_groups: int, bn_momentum: float,
                train: bool) -> Optional[Callable]:
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=bn_momentum,
                        epsilon=1e-5)
  if norm == "layer":
    return nn.LayerNorm()
  if norm == "group":
    return nn.GroupNorm(num_groups=int(np.gcd(num_groups, features)))
  if norm == "instance":
    return nn.InstanceNorm()
  return None


def _dense(features: int, norm: str):
  layer = nn.Dense(features, use_bias=norm in ("none", "weight"))
  return nn.WeightNorm(layer) if norm == "weight" else layer


def _conv(features: int, strides: int, norm: str):
  layer = nn.Conv(features, (3, 3), strides=strides, padding="SAME",
                  use_bias=norm in ("none", "weight"))
  return nn.WeightNorm(layer) if norm == "weight" else layer


class MLP(nn.Module):
  """Multi-layer perceptron ``Dense -> norm -> relu`` (x len(hidden)) ``-> Dense``.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: output logits.
    norm: ``"none"``, ``"batch"`` (BatchNorm: batch statistics in training,
      moving averages in evaluation), ``"layer"``, ``"group"`` or ``"weight"``
      (every Dense reparameterized as ``g * v / ||v||``, Salimans & Kingma
      2016). ``"instance"`` needs spatial dimensions: use :class:`CNN`.
    num_groups: groups of GroupNorm (reduced to a divisor of the width).
    bn_momentum: decay of BatchNorm's moving averages (Flax default 0.99;
      0.9 here because the demos train for a few hundred steps only).
  """

  hidden: Sequence[int] = (128, 128)
  num_classes: int = 10
  norm: str = "none"
  num_groups: int = 4
  bn_momentum: float = 0.9

  def __post_init__(self):
    norm = _canon_norm(self.norm)
    if norm == "instance":
      raise ValueError("`norm='instance'` normalizes each channel over the"
                       " spatial positions of one example; an MLP has none."
                       " Use optzoo.nn.CNN(norm='instance').")
    object.__setattr__(self, "norm", norm)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for f in self.hidden:
      x = _dense(f, self.norm)(x)
      layer = _norm_layer(self.norm, f, self.num_groups, self.bn_momentum, train)
      if layer is not None:
        x = layer(x)
      x = nn.relu(x)
    return _dense(self.num_classes, "weight" if self.norm == "weight" else "none")(x)


class CNN(nn.Module):
  """Small CNN: ``[Conv3x3 -> norm -> relu]`` per entry of ``channels`` (the
  second and later with stride 2), flatten, Dense.

  For 8x8 digits the default has ~10k parameters. ``norm`` as in :class:`MLP`,
  plus ``"instance"`` (InstanceNorm: each channel over its own H x W).
  """

  channels: Sequence[int] = (16, 32)
  num_classes: int = 10
  norm: str = "none"
  num_groups: int = 4
  bn_momentum: float = 0.9

  def __post_init__(self):
    object.__setattr__(self, "norm", _canon_norm(self.norm))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    for i, c in enumerate(self.channels):
      x = _conv(c, 1 if i == 0 else 2, self.norm)(x)
      layer = _norm_layer(self.norm, c, self.num_groups, self.bn_momentum, train)
      if layer is not None:
        x = layer(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    return _dense(self.num_classes, "weight" if self.norm == "weight" else "none")(x)


def make_model(arch: str = "mlp", norm: str = "none", num_classes: int = 10,
               **kwargs: Any) -> nn.Module:
  """``MLP`` or ``CNN`` by name (``arch="mlp"|"cnn"``)."""
  arch_l = str(arch).lower()
  if arch_l == "mlp":
    return MLP(num_classes=num_classes, norm=norm, **kwargs)
  if arch_l == "cnn":
    return CNN(num_classes=num_classes, norm=norm, **kwargs)
  raise ValueError(f"`arch` must be 'mlp' or 'cnn', got {arch!r}.")


# ---------------------------------------------------------------------------
# Linen training
# ---------------------------------------------------------------------------


class TrainState(train_state.TrainState):
  """``flax`` TrainState + BatchNorm ``batch_stats`` + an ``rng`` key.

  ``apply_gradients(grads=..., extra_args={...})`` forwards the extra
  arguments to optimizers that accept them
  (``optax.GradientTransformationExtraArgs``, e.g. every ``optax.chain``).
  """

  batch_stats: Any = None
  rng: Any = None

  def apply_gradients(self, *, grads, extra_args: Optional[dict] = None,
                      **kwargs):
    extra = dict(extra_args or {})
    if extra and isinstance(self.tx, optax.GradientTransformationExtraArgs):
      updates, opt_state = self.tx.update(grads, self.opt_state, self.params,
                                          **extra)
    else:
      updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state,
                        **kwargs)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       sample_x: Any, seed: int = 0) -> TrainState:
  """Initializes ``model`` on ``sample_x`` (one batch) and the optimizer state."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.asarray(sample_x), train=False)
  state = TrainState.create(
      apply_fn=model.apply, params=variables["params"], tx=tx,
      batch_stats=variables.get("batch_stats"), rng=rng)
  # an int32 array (not the Python int 0), so step 1 and step 2 share a trace
  return state.replace(step=jnp.zeros([], jnp.int32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example MSE between softmax probabilities and one-hot labels."""
  probs = jax.nn.softmax(logits)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
  return jnp.sum((probs - onehot) ** 2, axis=-1)


def _apply(state: TrainState, params, x, train: bool, batch_stats=None):
  """Logits and the new batch_stats (unchanged when there is no BatchNorm)."""
  if state.batch_stats is None:
    return state.apply_fn({"params": params}, x, train=train), None
  bs = state.batch_stats if batch_stats is None else batch_stats
  if train:
    logits, upd = state.apply_fn({"params": params, "batch_stats": bs}, x,
                                 train=True, mutable=["batch_stats"])
    return logits, upd["batch_stats"]
  return state.apply_fn({"params": params, "batch_stats": bs}, x,
                        train=False), bs


EXTRA_ARGS = ("value", "value_sq", "batch_size", "grad_fn", "value_fn", "key")


@functools.partial(jax.jit, static_argnames=("loss_fn", "extra_args"))
def train_step(state: TrainState, x: jax.Array, y: jax.Array, *,
               loss_fn: Callable = cross_entropy,
               extra_args: tuple = EXTRA_ARGS) -> tuple[TrainState, dict]:
  """One jitted training step; returns ``(state, {"loss", "accuracy"})``.

  BatchNorm runs on batch statistics and its moving averages are updated in
  ``state.batch_stats``. The optimizer receives, when it accepts extra args,
  those named in ``extra_args``: ``value`` (mean loss),
  ``value_sq`` (mean squared per-example loss), ``batch_size``,
  ``grad_fn(params, i)`` / ``value_fn(params, i)`` (gradient / loss on this
  batch, BatchNorm statistics frozen) and ``key``.
  """

  def objective(params):
    logits, new_bs = _apply(state, params, x, True)
    per_ex = loss_fn(logits, y)
    return jnp.mean(per_ex), (per_ex, logits, new_bs)

  (loss, (per_ex, logits, new_bs)), grads = jax.value_and_grad(
      objective, has_aux=True)(state.params)

  def value_fn(params, i=0):
    del i
    return jnp.mean(loss_fn(_apply(state, params, x, True)[0], y))

  extra = {
      "value": loss,
      "value_sq": jnp.mean(per_ex ** 2),
      "batch_size": x.shape[0],
      "grad_fn": lambda params, i=0: jax.grad(value_fn)(params, i),
      "value_fn": value_fn,
      "key": None if state.rng is None else jax.random.fold_in(state.rng, state.step),
  }
  extra = {k: v for k, v in extra.items() if k in extra_args and v is not None}
  state = state.apply_gradients(grads=grads, extra_args=extra,
                                batch_stats=new_bs)
  acc = jnp.mean(jnp.argmax(logits, -1) == y)
  return state, {"loss": loss, "accuracy": acc}


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def eval_step(state: TrainState, x: jax.Array, y: jax.Array, *,
              loss_fn: Callable = cross_entropy) -> dict:
  """Loss and accuracy in evaluation mode (BatchNorm uses moving averages)."""
  logits, _ = _apply(state, state.params, x, False)
  return {"loss": jnp.mean(loss_fn(logits, y)),
          "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _per_example(state, x, y, *, loss_fn=cross_entropy):
  logits, _ = _apply(state, state.params, x, False)
  return loss_fn(logits, y), jnp.argmax(logits, -1) == y


def fit(model: nn.Module, tx: optax.GradientTransformation, data: Dataset, *,
        epochs: int = 5, batch_size: int = 64, seed: int = 0,
        loss_fn: Callable = cross_entropy, extra_args: tuple = EXTRA_ARGS,
        on_step: Optional[Callable[[int, float], None]] = None,
        state: Optional[TrainState] = None) -> dict:
  """Trains ``model`` with ``tx``; the data order depends only on ``seed``.

  Returns a dict with ``state``, ``train_loss`` (per step), ``epoch_train_loss``
  / ``test_loss`` / ``test_accuracy`` / ``train_accuracy`` (per epoch,
  evaluation mode), ``wall_time`` and ``steps_per_sec`` (excluding the first,
  compiling step).
  """
  if state is None:
    state = create_train_state(model, tx, data.x_train[:batch_size], seed)
  steps_per_epoch = len(data.x_train) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"`batch_size` {batch_size} is larger than the training"
                     f" set ({len(data.x_train)} examples).")
  hist = {"train_loss": [], "epoch_train_loss": [], "train_accuracy": [],
          "test_loss": [], "test_accuracy": []}
  # one evaluation call (one compile) over train + test together
  n_tr = len(data.x_train)
  x_all = jnp.asarray(np.concatenate([data.x_train, data.x_test]))
  y_all = jnp.asarray(np.concatenate([data.y_train, data.y_test]))
  t0 = time.perf_counter()
  t_first = None
  step = 0
  for epoch in range(epochs):
    losses = []
    for x, y in batches(data.x_train, data.y_train, batch_size, seed=seed,
                        epoch=epoch):
      state, m = train_step(state, x, y, loss_fn=loss_fn, extra_args=extra_args)
      losses.append(m["loss"])
      step += 1
      if t_first is None:
        jax.block_until_ready(m["loss"])
        t_first = time.perf_counter()
      if on_step is not None:
        on_step(step, m["loss"])
    hist["train_loss"].extend(float(v) for v in jax.device_get(losses))
    per_ex, correct = jax.device_get(_per_example(state, x_all, y_all,
                                                  loss_fn=loss_fn))
    per_ex, correct = per_ex.astype(np.float64), correct.astype(np.float64)
    hist["epoch_train_loss"].append(float(per_ex[:n_tr].mean()))
    hist["train_accuracy"].append(float(correct[:n_tr].mean()))
    hist["test_loss"].append(float(per_ex[n_tr:].mean()))
    hist["test_accuracy"].append(float(correct[n_tr:].mean()))
  jax.block_until_ready(state.params)
  t1 = time.perf_counter()
  hist["state"] = state
  hist["steps"] = step
  hist["wall_time"] = t1 - t0
  hist["steps_per_sec"] = (step - 1) / max(t1 - t_first, 1e-9) if step > 1 else 0.0
  return hist


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


class NNXMLP(nnx.Module):
  """The :class:`MLP` in Flax NNX; ``norm`` in none|batch|layer|group.

  BatchNorm statistics are ``nnx.BatchStat`` variables, so an
  ``nnx.Optimizer(..., wrt=nnx.Param)`` never touches them; call
  ``model.eval()`` (or use :func:`nnx_eval`) to evaluate with the moving
  averages.
  """

  def __init__(self, in_features: int, hidden: Sequence[int] = (128, 128),
               num_classes: int = 10, norm: str = "none", *,
               num_groups: int = 4, bn_momentum: float = 0.9,
               rngs: nnx.Rngs):
    norm = _canon_norm(norm)
    if norm not in ("none", "batch", "layer", "group"):
      raise ValueError("NNXMLP supports `norm` in ('none', 'batch', 'layer',"
                       f" 'group'), got {norm!r}; use the linen MLP/CNN.")
    self.norm = norm
    dims = [in_features, *hidden]
    self.layers = nnx.List([
        nnx.Linear(a, b, use_bias=norm == "none", rngs=rngs)
        for a, b in zip(dims[:-1], dims[1:])])
    norms = []
    for f in hidden:
      if norm == "batch":
        norms.append(nnx.BatchNorm(f, momentum=bn_momentum, rngs=rngs))
      elif norm == "layer":
        norms.append(nnx.LayerNorm(f, rngs=rngs))
      elif norm == "group":
        norms.append(nnx.GroupNorm(f, num_groups=int(np.gcd(num_groups, f)),
                                   rngs=rngs))
    self.norms = nnx.List(norms)
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if self.norms:
        x = self.norms[i](x)
      x = nnx.relu(x)
    return self.head(x)


def nnx_optimizer(model: nnx.Module, tx: optax.GradientTransformation
                  ) -> nnx.Optimizer:
  """``nnx.Optimizer(model, tx, wrt=nnx.Param)``: only parameters are trained."""
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def nnx_train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array,
                   y: jax.Array) -> jax.Array:
  """One NNX training step (in place); returns the mean cross-entropy."""

  def loss_fn(m):
    return jnp.mean(cross_entropy(m(x), y))

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def nnx_eval(model: nnx.Module, x: jax.Array, y: jax.Array) -> dict:
  """Loss and accuracy in evaluation mode (BatchNorm: moving averages)."""
  model.eval()
  try:
    logits = _nnx_logits(model, x)
  finally:
    model.train()
  return {"loss": float(jnp.mean(cross_entropy(logits, y))),
          "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == y))}


@nnx.jit
def _nnx_logits(model, x):
  return model(x)
