"""The race engine behind ``optzoo race``: one model, several optimizers.

Every optimizer starts from the same initial weights and sees the same
minibatches in the same order (both fixed by ``seed``), so differences come
from the optimizers alone and the same seed gives the same numbers.

Optimizer specs (``--optimizers``) are registry names with two additions::

    adam                 # optzoo.adam with its race learning rate
    adam@3e-3            # ... with learning rate 3e-3
    sgdm                 # preset: optzoo.sgd(momentum=0.9)
    lookahead:adam       # a wrapper around an inner optimizer
    lookahead:sgdm@0.1   # the learning rate goes to the innermost optimizer
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from optzoo._src import optional

__all__ = [
    "RaceError",
    "RaceResult",
    "DEFAULT_OPTIMIZERS",
    "PRESETS",
    "parse_spec",
    "check_names",
    "build_optimizer",
    "check_out_dir",
    "run_race",
    "plot_race",
    "write_results",
    "results_markdown",
    "TIMING_NOTE",
    "run_lr_find",
    "plot_lr_find",
]

DEFAULT_OPTIMIZERS = ("sgdm", "nag", "adam", "adamw", "radam", "lookahead:adam",
                      "swats")

# name -> (registry name, fixed kwargs, race learning rate)
PRESETS: dict[str, tuple[str, dict, float]] = {
    "sgd": ("sgd", {}, 0.1),
    "sgdm": ("sgd", {"momentum": 0.9}, 0.05),
    "nag": ("nag", {"momentum": 0.9}, 0.05),
    "sgdw": ("sgdw", {"momentum": 0.9, "weight_decay": 1e-4}, 0.05),
    "adagrad": ("adagrad", {}, 0.05),
    "rmsprop": ("rmsprop", {}, 1e-3),
    "adam": ("adam", {}, 3e-3),
    "amsgrad": ("amsgrad", {}, 3e-3),
    "adamw": ("adamw", {"weight_decay": 1e-2}, 3e-3),
    "nadam": ("nadam", {}, 3e-3),
    "radam": ("radam", {}, 3e-3),
    "adabound": ("adabound", {}, 3e-3),
    "swats": ("swats", {}, 3e-3),
}
_FAMILY_LR = {"Team SGD": 0.05, "Team Adam": 1e-3}
_INNER_KEYS = ("inner", "base_optimizer", "optimizer", "inner_optimizer")


class RaceError(Exception):
  """A user error (bad optimizer name, dataset, output folder): one line."""


@dataclasses.dataclass
class RaceResult:
  name: str
  train_loss_curve: list  # per step (minibatch loss)
  test_accuracy_curve: list  # per epoch
  train_loss: float  # final, whole training set, evaluation mode
  train_accuracy: float
  test_loss: float
  test_accuracy: float
  steps: int
  wall_time: float  # everything for this optimizer: init, compile, train, eval
  steps_per_sec: float  # training steps per second once compiled
  compile_time: float = 0.0  # compiling the epoch scan and the evaluation


# What the columns of the race table mean (printed under it, and in results.md).
TIMING_NOTE = (
    "train loss / test acc: the whole training / test set in evaluation mode"
    " after the last epoch. compile: seconds to compile one jitted epoch (a"
    " lax.scan over the epoch's minibatches) and the evaluation, once per"
    " optimizer. steps/s: training steps per second once compiled, from the"
    " second epoch on when there are several (a compiled program's first run"
    " pays one-time costs), evaluation excluded. wall time: everything for"
    " that optimizer (init, compile, training, evaluation after each epoch).")


def parse_spec(spec: str) -> tuple[list[str], Optional[float]]:
  """``"lookahead:adam@1e-3"`` -> ``(["lookahead", "adam"], 1e-3)``."""
  s = spec.strip()
  lr = None
  if "@" in s:
    s, lr_s = s.rsplit("@", 1)
    try:
      lr = float(lr_s)
    except ValueError:
      raise RaceError(f"bad learning rate {lr_s!r} in optimizer spec {spec!r}"
                      " (write e.g. adam@1e-3).") from None
    if not (math.isfinite(lr) and lr > 0):
      raise RaceError(f"learning rate in {spec!r} must be > 0.")
  parts = [p.strip().lower() for p in s.split(":")]
  if not all(parts):
    raise RaceError(f"bad optimizer spec {spec!r} (write e.g. adam or"
                    " lookahead:adam).")
  return parts, lr


def _info(name: str):
  import optzoo  # pylint: disable=g-import-not-at-top
  try:
    return optzoo.get_info(name)
  except KeyError as e:
    msg = e.args[0] if e.args else str(e)
    raise RaceError(f"{msg} Presets: {', '.join(PRESETS)}.") from None


def check_names(spec: str, names: Sequence[str]) -> None:
  """:class:`RaceError` for a name in ``spec`` that is neither a preset nor in
  ``names``, with the message of ``optzoo.get_info`` (no JAX needed)."""
  import difflib  # pylint: disable=g-import-not-at-top
  parts, _ = parse_spec(spec)
  for part in parts:
    name = PRESETS.get(part, (part,))[0]
    if name not in names:
      close = difflib.get_close_matches(name, list(names), n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise RaceError(f"unknown method {name!r}.{hint} See"
                      f" optzoo.list_optimizers(). Presets: {', '.join(PRESETS)}.")


def _accepts(fn: Callable, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _load_data(dataset: str, seed: int):
  """The dataset, with a one-line RaceError for a bad name or missing files."""
  from optzoo.apps import data as zdata  # pylint: disable=g-import-not-at-top
  try:
    return zdata.load_dataset(dataset, seed=seed)
  except zdata.DatasetError as e:
    raise RaceError(str(e)) from None


def _make_net(model: str, norm: str, data, batch_size: int):
  """The Flax model for ``data``, after checking the batch fits the train set."""
  from optzoo import nn as zn  # pylint: disable=g-import-not-at-top
  if batch_size > len(data.x_train):
    raise RaceError(f"--batch-size {batch_size} is larger than the training set"
                    f" ({len(data.x_train)} examples).")
  try:
    return zn.make_model(model, norm=norm, num_classes=data.num_classes)
  except ValueError as e:
    raise RaceError(str(e)) from None


def _build_base(name: str, lr: Optional[float]):
  reg_name, kwargs, default_lr = PRESETS.get(name, (name, {}, None))
  info = _info(reg_name)
  if info.kind != "transformation" or info.family in ("primitive", "wrapper"):
    raise RaceError(f"{name!r} is a {info.family} {info.kind}, not an optimizer"
                    " to race (try adam, sgdm, lookahead:adam).")
  from optzoo import nn as zn  # pylint: disable=g-import-not-at-top
  # extra args that optzoo.nn.train_step can supply
  missing = [a for a in info.extra_args if a not in zn.EXTRA_ARGS]
  if missing:
    raise RaceError(f"{name!r} needs the extra argument(s) {', '.join(missing)},"
                    " which the race cannot supply; use it in your own loop.")
  if default_lr is None:
    default_lr = _FAMILY_LR.get(info.family, 1e-3)
  kw = dict(kwargs)
  if _accepts(info.factory, "learning_rate"):
    kw["learning_rate"] = lr if lr is not None else default_lr
  try:
    return info.factory(**kw), kw.get("learning_rate")
  except (TypeError, ValueError) as e:
    raise RaceError(f"cannot build {name!r}: {e}") from None


def _wrap(name: str, inner):
  info = _info(name)
  key = next((k for k in _INNER_KEYS if _accepts(info.factory, k)), None)
  if key is None:
    raise RaceError(f"{name!r} is not a wrapper: it cannot take an inner"
                    f" optimizer (write {name} alone).")
  try:
    return info.factory(**{key: inner})
  except (TypeError, ValueError) as e:
    raise RaceError(f"cannot build {name!r}: {e}") from None


def build_optimizer(spec: str, lr: Optional[float] = None):
  """Builds the optimizer of one spec; returns ``(tx, learning_rate)``.

  ``lr`` (e.g. from ``--lr``) is used when the spec has no ``@lr``.
  """
  parts, spec_lr = parse_spec(spec)
  tx, used_lr = _build_base(parts[-1], spec_lr if spec_lr is not None else lr)
  for w in reversed(parts[:-1]):
    tx = _wrap(w, tx)
  return tx, used_lr


def check_out_dir(out: str) -> str:
  """Creates ``out`` and checks it is writable; :class:`RaceError` if not."""
  try:
    os.makedirs(out, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out, prefix=".optzoo-write-test"):
      pass
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise RaceError(f"cannot write to --out {out!r}: {reason}.") from None
  return out


def run_race(
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS,
    *,
    dataset: str = "digits",
    model: str = "mlp",
    norm: str = "none",
    epochs: Optional[int] = None,
    batch_size: int = 64,
    seed: int = 0,
    lr: Optional[float] = None,
    limit: Optional[int] = None,
    progress: Any = None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[list[RaceResult], dict]:
  """Trains the same model with each optimizer; returns results and config.

  Args:
    optimizers: optimizer specs (see the module docstring).
    dataset: ``"digits"`` or ``"fashion-mnist"``.
    model: ``"mlp"`` or ``"cnn"``; ``norm`` as in :class:`optzoo.nn.MLP`.
    epochs: default 10 on digits, 2 on Fashion-MNIST.
    batch_size, seed: minibatch size; seed of the split, init and order.
    lr: learning rate for every optimizer without ``@lr`` in its spec.
    limit: keep only the first ``limit`` training examples (quick runs).
    progress: a ``rich.progress.Progress`` to show per-step bars, or None.
  """
  if not optimizers:
    raise RaceError("no optimizers given.")
  if batch_size < 1:
    raise RaceError(f"--batch-size must be >= 1, got {batch_size}.")
  if epochs is not None and epochs < 1:
    raise RaceError(f"--epochs must be >= 1, got {epochs}.")
  txs = {}
  lrs = {}
  for spec in optimizers:  # fail fast, before any training
    if spec in txs:
      raise RaceError(f"optimizer {spec!r} given twice.")
    txs[spec], lrs[spec] = build_optimizer(spec, lr)
  data = _load_data(dataset, seed)
  if limit is not None:
    data = data.subset(n_train=limit)
  if epochs is None:
    epochs = 2 if data.name == "fashion-mnist" else 10
  net = _make_net(model, norm, data, batch_size)
  steps_per_epoch = len(data.x_train) // batch_size
  log(f"{data!r}; model {model} (norm={net.norm}); {epochs} epochs x"
      f" {steps_per_epoch} steps of batch {batch_size}; seed {seed}")
  # JAX's start-up and the model's first (op-by-op) init happen once, here,
  # so that the first optimizer's wall time is not charged with them.
  t_w = time.perf_counter()
  _warm_up(net, data, batch_size, seed)
  log(f"JAX start-up and model init: {time.perf_counter() - t_w:.1f}s (in no"
      " optimizer's wall time)")
  results = []
  for spec, tx in txs.items():
    task = None
    if progress is not None:
      task = progress.add_task(spec, total=epochs * steps_per_epoch,
                               loss="compiling")

    def on_epoch(epoch, loss, task=task):
      del epoch
      if task is not None:
        progress.update(task, advance=steps_per_epoch, loss=f"loss {loss:.4f}")

    hist = _fit_scanned(net, tx, data, epochs=epochs, batch_size=batch_size,
                        seed=seed, on_epoch=on_epoch)
    results.append(RaceResult(
        name=spec,
        train_loss_curve=hist["train_loss"],
        test_accuracy_curve=hist["test_accuracy"],
        train_loss=hist["epoch_train_loss"][-1],
        train_accuracy=hist["train_accuracy"][-1],
        test_loss=hist["test_loss"][-1],
        test_accuracy=hist["test_accuracy"][-1],
        steps=hist["steps"],
        wall_time=hist["wall_time"],
        steps_per_sec=hist["steps_per_sec"],
        compile_time=hist["compile_time"]))
  config = {"dataset": data.name, "model": model, "norm": net.norm,
            "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "optimizers": list(txs), "learning_rates": lrs,
            "n_train": int(len(data.x_train)), "n_test": int(len(data.x_test))}
  return results, config


def _warm_up(net, data, batch_size: int, seed: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from optzoo import nn as zn  # pylint: disable=g-import-not-at-top
  state = zn.create_train_state(net, optax.identity(), data.x_train[:batch_size],
                                seed)
  jax.block_until_ready(state.params)


def _fit_scanned(net, tx, data, *, epochs: int, batch_size: int, seed: int,
                 on_epoch: Callable[[int, float], None] = lambda e, l: None
                 ) -> dict:
  """``optzoo.nn.fit``'s training, one compiled ``lax.scan`` per epoch.

  The same initial state, minibatches (``optzoo.apps.data.batches``' order)
  and ``optzoo.nn.train_step`` as ``fit``; the epoch's steps run in one jitted
  call, compiled ahead of time so that its cost is reported apart
  (``compile_time``) from the steady-state ``steps_per_sec``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from optzoo import nn as zn  # pylint: disable=g-import-not-at-top
  from optzoo.apps import data as zdata  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  n_tr = len(data.x_train)
  steps_per_epoch = n_tr // batch_size
  state = zn.create_train_state(net, tx, data.x_train[:batch_size], seed)
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  # one evaluation call over train + test together
  x_all = jnp.asarray(np.concatenate([data.x_train, data.x_test]))
  y_all = jnp.asarray(np.concatenate([data.y_train, data.y_test]))

  def order(epoch):
    return zdata.batch_order(n_tr, batch_size, seed=seed, epoch=epoch).reshape(
        steps_per_epoch, batch_size).astype(np.int32)

  def epoch_fn(state, x, y, idx):
    def body(state, i):
      state, m = zn.train_step(state, x[i], y[i])
      return state, m["loss"]
    return jax.lax.scan(body, state, idx)

  def eval_fn(state, x, y):
    return zn._per_example(state, x, y)  # pylint: disable=protected-access

  t_c = time.perf_counter()
  train = jax.jit(epoch_fn).lower(state, x_train, y_train, order(0)).compile()
  evaluate = jax.jit(eval_fn).lower(state, x_all, y_all).compile()
  compile_time = time.perf_counter() - t_c
  hist = {"train_loss": [], "epoch_train_loss": [], "train_accuracy": [],
          "test_loss": [], "test_accuracy": [], "epoch_train_time": []}
  for epoch in range(epochs):
    idx = jnp.asarray(order(epoch))
    t_s = time.perf_counter()
    state, losses = train(state, x_train, y_train, idx)
    losses = jax.block_until_ready(losses)
    hist["epoch_train_time"].append(time.perf_counter() - t_s)
    hist["train_loss"].extend(float(v) for v in np.asarray(losses))
    per_ex, correct = jax.device_get(evaluate(state, x_all, y_all))
    per_ex, correct = per_ex.astype(np.float64), correct.astype(np.float64)
    hist["epoch_train_loss"].append(float(per_ex[:n_tr].mean()))
    hist["train_accuracy"].append(float(correct[:n_tr].mean()))
    hist["test_loss"].append(float(per_ex[n_tr:].mean()))
    hist["test_accuracy"].append(float(correct[n_tr:].mean()))
    on_epoch(epoch, hist["train_loss"][-1])
  jax.block_until_ready(state.params)
  hist["state"] = state
  hist["steps"] = epochs * steps_per_epoch
  hist["wall_time"] = time.perf_counter() - t0
  hist["compile_time"] = compile_time
  # Steady state: the first run of a compiled program pays one-time costs
  # (allocations, thread start-up), so it is left out when there are more.
  times = hist["epoch_train_time"]
  times = times[1:] if len(times) > 1 else times
  hist["steps_per_sec"] = len(times) * steps_per_epoch / max(sum(times), 1e-9)
  return hist


def results_markdown(results: Sequence[RaceResult], config: dict) -> str:
  """The race table as markdown, with :data:`TIMING_NOTE` under it."""
  rows = [f"optzoo race on {config['dataset']} ({config['model']}, norm="
          f"{config['norm']}, {config['epochs']} epochs, batch"
          f" {config['batch_size']}, seed {config['seed']})", "",
          "| optimizer | lr | train loss | test acc | compile | steps/s |"
          " wall time |", "|---|---|---:|---:|---:|---:|---:|"]
  for r in results:
    lr = config["learning_rates"].get(r.name)
    rows.append(f"| `{r.name}` | {'-' if lr is None else f'{lr:g}'} |"
                f" {r.train_loss:.4f} | {100 * r.test_accuracy:.2f}% |"
                f" {r.compile_time:.1f}s | {r.steps_per_sec:.0f} |"
                f" {r.wall_time:.1f}s |")
  return "\n".join(rows + ["", TIMING_NOTE, ""])


def write_results(results: Sequence[RaceResult], config: dict, path: str) -> None:
  """JSON with the config, per-optimizer numbers and (separately) timings."""
  payload = {
      "config": config,
      "results": {r.name: {
          "train_loss": r.train_loss, "train_accuracy": r.train_accuracy,
          "test_loss": r.test_loss, "test_accuracy": r.test_accuracy,
          "steps": r.steps, "train_loss_curve": r.train_loss_curve,
          "test_accuracy_curve": r.test_accuracy_curve} for r in results},
      "timings": {r.name: {"wall_time": r.wall_time,
                           "compile_time": r.compile_time,
                           "steps_per_sec": r.steps_per_sec} for r in results},
      "timings_note": TIMING_NOTE,
  }
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
  if k <= 1 or len(y) < k:
    return y
  c = np.cumsum(np.insert(y, 0, 0.0))
  out = (c[k:] - c[:-k]) / k
  return np.concatenate([y[:k - 1].cumsum() / np.arange(1, k), out])


def plot_race(results: Sequence[RaceResult], config: dict, path: str) -> None:
  """PNG: training loss per step (log scale, smoothed) and test accuracy."""
  Figure = optional.import_optional("matplotlib.figure", "the race plot").Figure  # pylint: disable=invalid-name

  fig = Figure(figsize=(10, 4), dpi=90)
  ax1, ax2 = fig.subplots(1, 2)
  steps_per_epoch = max(1, results[0].steps // max(1, config["epochs"]))
  k = max(1, steps_per_epoch // 4)
  for r in results:
    y = np.asarray(r.train_loss_curve)
    line, = ax1.plot(np.arange(1, len(y) + 1), _smooth(y, k), lw=1.4,
                     label=r.name)
    ax1.plot(np.arange(1, len(y) + 1), y, lw=0.5, alpha=0.25,
             color=line.get_color())
    ep = np.arange(1, len(r.test_accuracy_curve) + 1) * steps_per_epoch
    ax2.plot(ep, np.asarray(r.test_accuracy_curve) * 100, marker="o", ms=3,
             lw=1.4, color=line.get_color(), label=r.name)
  ax1.set_yscale("log")
  ax1.set_xlabel("step")
  ax1.set_ylabel("training loss (minibatch)")
  ax1.set_title(f"{config['dataset']}: training loss")
  ax2.set_xlabel("step")
  ax2.set_ylabel("test accuracy (%)")
  ax2.set_title("test accuracy (end of each epoch)")
  lo = min(min(r.test_accuracy_curve) for r in results) * 100
  ax2.set_ylim(max(0.0, min(lo, 80.0)) - 1, 100.5)
  ax2.legend(fontsize=8, loc="lower right")
  ax1.grid(alpha=0.3, which="both")
  ax2.grid(alpha=0.3)
  fig.suptitle(f"optzoo race — {config['model']} (norm={config['norm']}),"
               f" batch {config['batch_size']}, seed {config['seed']}",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path)


# ---------------------------------------------------------------------------
# optzoo lr-find
# ---------------------------------------------------------------------------


def _lr_factory(spec: str) -> Callable[[Any], Any]:
  """``lr -> GradientTransformation`` for one spec (for ``lr_range_test``)."""
  build_optimizer(spec, 1e-3)  # validate once, with a clear message
  return lambda learning_rate: _build_with_lr(spec, learning_rate)


def _build_with_lr(spec: str, learning_rate: Any):
  parts, _ = parse_spec(spec)
  reg_name, kwargs, _ = PRESETS.get(parts[-1], (parts[-1], {}, None))
  tx = _info(reg_name).factory(**kwargs, learning_rate=learning_rate)
  for w in reversed(parts[:-1]):
    tx = _wrap(w, tx)
  return tx


def run_lr_find(spec: str = "sgdm", *, dataset: str = "digits",
                model: str = "mlp", norm: str = "none", batch_size: int = 64,
                seed: int = 0, min_lr: float = 1e-5, max_lr: float = 10.0,
                num_steps: int = 100):
  """Runs ``optzoo.lr_range_test`` for one optimizer on a dataset."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optzoo  # pylint: disable=g-import-not-at-top
  from optzoo import nn as zn  # pylint: disable=g-import-not-at-top
  from optzoo.apps import data as zdata  # pylint: disable=g-import-not-at-top

  if not hasattr(optzoo, "lr_range_test"):
    raise RaceError("optzoo.lr_range_test is not available in this version.")
  if not (0 < min_lr < max_lr):
    raise RaceError(f"need 0 < --min-lr < --max-lr, got {min_lr:g}, {max_lr:g}.")
  if num_steps < 2:
    raise RaceError(f"--steps must be >= 2, got {num_steps}.")
  factory = _lr_factory(spec)
  data = _load_data(dataset, seed)
  net = _make_net(model, norm, data, batch_size)
  if net.norm == "batch":
    raise RaceError("lr-find runs the model in evaluation mode; use a --norm"
                    " other than batch.")
  variables = net.init(jax.random.PRNGKey(seed),
                       jnp.asarray(data.x_train[:batch_size]), train=False)
  params = variables["params"]

  def loss_fn(p, batch):
    x, y = batch
    return jnp.mean(zn.cross_entropy(net.apply({"params": p}, x), y))

  def gen():
    epoch = 0
    while True:
      yield from zdata.batches(data.x_train, data.y_train, batch_size,
                               seed=seed, epoch=epoch)
      epoch += 1

  return optzoo.lr_range_test(loss_fn, params, gen(), optimizer=factory,
                              min_learning_rate=min_lr,
                              max_learning_rate=max_lr, num_steps=num_steps)


def plot_lr_find(res: Any, path: str, title: str = "LR range test") -> None:
  """PNG: loss against learning rate (log x), the suggestion marked."""
  Figure = optional.import_optional("matplotlib.figure", "the race plot").Figure  # pylint: disable=invalid-name

  fig = Figure(figsize=(6, 4), dpi=90)
  ax = fig.subplots()
  res.plot(ax=ax)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path)
