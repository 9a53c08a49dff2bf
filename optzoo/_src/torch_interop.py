"""Resume a torch run in JAX (and back): optimizer / scheduler state_dicts.

:func:`from_torch_optimizer_state` fills an optzoo (or optax) optimizer state
(``tx.init(params)``, used as a template) from a torch optimizer
``state_dict()``; :func:`to_torch_optimizer_state` does the reverse;
:func:`from_torch_scheduler_state` turns a scheduler ``state_dict()`` into the
step count of the matching optzoo schedule (or a
``ReduceLROnPlateauState``).

Covered: ``torch.optim.SGD`` (plain, momentum, dampening, Nesterov),
``Adam`` / ``AdamW`` (incl. ``amsgrad``). The template is searched for the
states that carry these moments, by field names, so optzoo's and optax's own
``ScaleByAdamState`` / ``TraceState`` are both found, also nested in
``optax.chain``, ``inject_hyperparams`` (whose ``count`` is set to the step
and whose hyperparameters take the torch group's values) and
``multi_transform`` (param groups); schedule step counters
(``ScaleByScheduleState``) are set to the step too.

torch is optional: the state_dict may hold NumPy arrays / Python numbers
instead of tensors (tensors are converted when torch is importable).

Parameter order: torch numbers its parameters ``0..n-1`` in the order of the
param groups. ``param_order`` lists, in that order, the ``/``-joined key path
of each Flax leaf (``"Dense_0/kernel"``), optionally as ``(path, perm)`` where
``perm`` permutes the torch tensor's axes into the Flax layout (``"T"``
reverses them: ``nn.Linear.weight (out, in)`` -> ``kernel (in, out)``; a
``Conv2d`` weight needs ``(2, 3, 1, 0)``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from optzoo._src.param_groups import path_str
from optzoo._src.torch_schedules import ReduceLROnPlateauState

__all__ = [
    "from_torch_optimizer_state",
    "to_torch_optimizer_state",
    "from_torch_scheduler_state",
]

_ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
_SGD_KEYS = {"momentum_buffer"}


def _np(x):
  """A tensor / array / number as a NumPy array (None stays None)."""
  if x is None:
    return None
  if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
    return x.detach().cpu().numpy()
  return np.asarray(x)


def _parse_order(param_order):
  if isinstance(param_order, (str, bytes)) or not isinstance(
      param_order, (list, tuple)):
    raise TypeError("`param_order` must be a list of key paths ('a/b') or"
                    f" (path, perm) pairs, got {param_order!r}.")
  out = []
  for k, e in enumerate(param_order):
    if isinstance(e, str):
      out.append((e, None))
    elif isinstance(e, (tuple, list)) and len(e) == 2 and isinstance(
        e[0], str):
      perm = e[1]
      if perm != "T" and not (isinstance(perm, (tuple, list)) and all(
          isinstance(a, int) for a in perm)):
        raise TypeError(f"`param_order[{k}]`: perm must be 'T' or a tuple of"
                        f" axes, got {perm!r}.")
      out.append((e[0], perm))
    else:
      raise TypeError(f"`param_order[{k}]` must be a path string or a"
                      f" (path, perm) pair, got {e!r}.")
  paths = [p for p, _ in out]
  dup = sorted({p for p in paths if paths.count(p) > 1})
  if dup:
    raise ValueError(f"`param_order` lists {dup!r} more than once.")
  return out


def _perm_axes(perm, ndim):
  if perm is None:
    return None
  if perm == "T":
    return tuple(range(ndim - 1, -1, -1))
  if sorted(perm) != list(range(ndim)):
    raise ValueError(f"perm {perm!r} is not a permutation of {ndim} axes.")
  return tuple(perm)


def _leaf_table(params, order):
  leaves = {path_str(p): x for p, x in
            jax.tree_util.tree_leaves_with_path(params)}
  names = [p for p, _ in order]
  unknown = [p for p in names if p not in leaves]
  if unknown:
    raise ValueError(
        f"`param_order` names {unknown!r}, not in params; its paths are"
        f" {sorted(leaves)!r}.")
  missing = [p for p in leaves if p not in names]
  if missing:
    raise ValueError(f"`param_order` misses the params {missing!r}.")
  return leaves


def _kind(state_dict):
  if not isinstance(state_dict, Mapping) or "state" not in state_dict or (
      "param_groups" not in state_dict):
    raise TypeError("expected a torch optimizer state_dict() (a dict with"
                    " 'state' and 'param_groups').")
  groups = state_dict["param_groups"]
  g0 = groups[0] if groups else {}
  keys = set()
  for s in state_dict["state"].values():
    keys |= set(s)
  if "betas" in g0 and keys <= _ADAM_KEYS:
    return "adam"
  if "momentum" in g0 and "nesterov" in g0 and keys <= _SGD_KEYS:
    return "sgd"
  raise ValueError(
      "unsupported torch optimizer state_dict: per-parameter keys"
      f" {sorted(keys)!r}, param_group keys {sorted(g0)!r}; supported are"
      " SGD (momentum_buffer) and Adam/AdamW (exp_avg, exp_avg_sq,"
      " max_exp_avg_sq).")


def _index_groups(state_dict):
  idx2group = {}
  for gi, g in enumerate(state_dict["param_groups"]):
    for i in g["params"]:
      idx2group[i] = gi
  return idx2group


def _is_adam_state(node):
  return hasattr(node, "_fields") and {"mu", "nu", "count"} <= set(
      node._fields)


def _is_trace_state(node):
  return hasattr(node, "_fields") and "trace" in node._fields


def _is_inject_state(node):
  return hasattr(node, "_fields") and {"hyperparams", "inner_state",
                                       "count"} <= set(node._fields)


def _walk(node, fn):
  """Rebuilds ``node`` (an optimizer state) with ``fn`` applied to the
  moment-carrying states; other leaves are kept."""
  out = fn(node)
  if out is not None:
    return out
  if hasattr(node, "_fields"):
    return node._replace(**{f: _walk(getattr(node, f), fn)
                            for f in node._fields})
  if isinstance(node, tuple):
    return tuple(_walk(x, fn) for x in node)
  if isinstance(node, list):
    return [_walk(x, fn) for x in node]
  if isinstance(node, dict):
    return {k: _walk(v, fn) for k, v in node.items()}
  return node


def _fill(tree, per_path, key, what):
  def leaf(p, x):
    name = path_str(p)
    v = per_path[name].get(key)
    if v is None:
      raise ValueError(f"the torch state of {name!r} has no {key!r} ({what});"
                       " was the torch optimizer stepped?")
    if v.shape != np.shape(x):
      raise ValueError(f"{name!r}: torch {key} has shape {v.shape} (after"
                       f" the layout permutation), the params leaf"
                       f" {np.shape(x)}; fix `param_order`.")
    return jnp.asarray(v, dtype=jnp.asarray(x).dtype)
  return jax.tree_util.tree_map_with_path(leaf, tree)


_HYPER = {"lr": "learning_rate", "eps": "eps", "weight_decay": "weight_decay",
          "momentum": "momentum", "dampening": "dampening"}


def from_torch_optimizer_state(
    state_dict: Mapping[str, Any],
    state: Any,
    params: Any,
    param_order: Sequence[Union[str, tuple]],
    *,
    step: Optional[int] = None,
) -> Any:
  """A torch optimizer ``state_dict()`` as an optzoo optimizer state.

  Args:
    state_dict: ``opt.state_dict()`` of ``torch.optim.SGD`` / ``Adam`` /
      ``AdamW`` (tensors or NumPy arrays).
    state: the template, ``tx.init(params)`` of the matching optzoo
      optimizer (e.g. ``optzoo.adamw(..., amsgrad=...)``, possibly wrapped in
      ``optax.inject_hyperparams`` / ``optzoo.param_groups``).
    params: the Flax params tree (shapes and dtypes).
    param_order: the Flax path of torch parameter ``0, 1, ...`` (see the
      module docstring).
    step: the number of optimizer steps taken (the count of an
      ``inject_hyperparams`` schedule, e.g. from
      :func:`from_torch_scheduler_state`); default: Adam's ``step``.

  Returns:
    ``state`` with the moments, counts and hyperparameters from torch.

  Raises:
    ValueError / TypeError naming the problem: another optimizer's
    state_dict, AMSGrad / momentum mismatch, a shape or count mismatch.
  """
  kind = _kind(state_dict)
  order = _parse_order(param_order)
  _leaf_table(params, order)
  idx2group = _index_groups(state_dict)
  if len(idx2group) != len(order):
    raise ValueError(
        f"the torch state_dict has {len(idx2group)} parameters, `param_order`"
        f" lists {len(order)}.")
  groups = state_dict["param_groups"]
  per_path = _per_path_state(state_dict, order, idx2group)
  if kind == "adam":
    adam_step = _adam_step(per_path)
    amsgrad = {bool(g.get("amsgrad", False)) for g in groups}
  else:
    adam_step = amsgrad = None
  count_step = step if step is not None else adam_step
  found = {"adam": 0, "trace": 0}

  def fill(node):
    if _is_inject_state(node):
      return _inject_from_torch(node, groups[0], count_step, fill)
    if hasattr(node, "_fields") and tuple(node._fields) == ("count",):
      # A schedule's step counter (optax.scale_by_schedule).
      return _schedule_count_from_torch(node, count_step)
    if _is_adam_state(node):
      if kind != "adam":
        raise ValueError("the torch state_dict is from SGD (momentum_buffer)"
                         " but the optzoo state is Adam-like (mu, nu).")
      found["adam"] += 1
      return _adam_from_torch(node, per_path, adam_step, amsgrad)
    if _is_trace_state(node):
      if kind != "sgd":
        raise ValueError("the torch state_dict is from Adam/AdamW (exp_avg)"
                         " but the optzoo state is SGD's momentum trace.")
      found["trace"] += 1
      return _trace_from_torch(node, per_path, groups, count_step)
    return None

  out = _walk(state, fill)
  _check_found(kind, found, groups)
  return out


def _per_path_state(state_dict, order, idx2group):
  """``{path: {key: array}}``: each torch parameter's state as NumPy arrays,
  permuted into the Flax layout."""
  per_path = {}
  for i, (path, perm) in enumerate(order):
    if i not in idx2group:
      raise ValueError(f"torch parameter index {i} is in no param_group.")
    raw = state_dict["state"].get(i, state_dict["state"].get(str(i), {}))
    entry = {}
    for k, v in raw.items():
      v = _np(v)
      if v is not None and v.ndim and perm is not None:
        v = np.transpose(v, _perm_axes(perm, v.ndim))
      entry[k] = v
    per_path[path] = entry
  return per_path


def _adam_step(per_path):
  """The one ``step`` of all torch Adam parameters (0 before any step)."""
  steps = {int(np.asarray(e["step"]).reshape(())) for e in per_path.values()
           if e.get("step") is not None}
  if len(steps) > 1:
    raise ValueError(f"the torch parameters have different step counts"
                     f" {sorted(steps)!r}; optzoo keeps one count.")
  return steps.pop() if steps else 0


def _require_step(count_step, what):
  """Raises unless ``step`` is known: ``what`` in the template needs it."""
  if count_step is None:
    raise ValueError(
        f"the template has {what}: pass `step=` (e.g."
        " from_torch_scheduler_state(sched.state_dict())); torch SGD"
        " does not store a step count.")


def _inject_from_torch(node, g0, count_step, fill):
  """An ``inject_hyperparams`` state: its counts set to ``count_step``, its
  hyperparameters (those not scheduled) from the torch param group ``g0``,
  its inner state rebuilt with ``fill``."""
  _require_step(count_step, "inject_hyperparams")
  hyper = dict(node.hyperparams)
  scheduled = getattr(node, "hyperparams_states", {})
  for tk, ok in _HYPER.items():
    if ok in hyper and tk in g0 and ok not in scheduled:
      hyper[ok] = jnp.asarray(g0[tk], jnp.asarray(hyper[ok]).dtype)
  if "betas" in g0:
    for ok, v in zip(("b1", "b2"), g0["betas"]):
      if ok in hyper and ok not in scheduled:
        hyper[ok] = jnp.asarray(v, jnp.asarray(hyper[ok]).dtype)
  new = node._replace(
      count=jnp.asarray(count_step, jnp.asarray(node.count).dtype),
      hyperparams=hyper, inner_state=_walk(node.inner_state, fill))
  if hasattr(node, "hyperparams_states"):
    new = new._replace(hyperparams_states=jax.tree.map(
        lambda c: jnp.asarray(count_step, jnp.asarray(c).dtype),
        node.hyperparams_states))
  return new


def _schedule_count_from_torch(node, count_step):
  """A schedule's step counter set to ``count_step``."""
  _require_step(count_step, "a learning-rate schedule")
  return node._replace(
      count=jnp.asarray(count_step, jnp.asarray(node.count).dtype))


def _adam_from_torch(node, per_path, adam_step, amsgrad):
  """An Adam-like state (``mu``, ``nu``, ``count``, optional ``nu_max``) from
  torch's ``exp_avg``, ``exp_avg_sq``, ``step``, ``max_exp_avg_sq``;
  ``amsgrad`` is the set of the torch groups' flags."""
  has_max = getattr(node, "nu_max", None) is not None
  if True in amsgrad and not has_max:
    raise ValueError("the torch optimizer has amsgrad=True but the"
                     " optzoo state has no nu_max: build it with"
                     " amsgrad=True.")
  if has_max and False in amsgrad:
    raise ValueError("the optzoo state has amsgrad's nu_max but the torch"
                     " optimizer has amsgrad=False.")
  rep = dict(count=jnp.asarray(adam_step, jnp.asarray(node.count).dtype),
             mu=_fill(node.mu, per_path, "exp_avg", "Adam"),
             nu=_fill(node.nu, per_path, "exp_avg_sq", "Adam"))
  if has_max:
    rep["nu_max"] = _fill(node.nu_max, per_path, "max_exp_avg_sq",
                          "AMSGrad")
  return node._replace(**rep)


def _trace_from_torch(node, per_path, groups, count_step):
  """An SGD momentum trace from torch's ``momentum_buffer`` (kept as is when
  torch has not stepped yet), with its ``count`` if it has one."""
  first = [p for p, e in per_path.items()
           if e.get("momentum_buffer") is None]
  momenta = {float(g["momentum"]) for g in groups}
  if 0.0 in momenta:
    raise ValueError("the torch SGD has momentum=0 (no buffers) but the"
                     " optzoo state has a momentum trace.")
  started = not first
  if first and len(first) != len(per_path):
    raise ValueError(f"torch has momentum buffers for some params but not"
                     f" for {first!r}.")
  if started:
    trace = _fill(node.trace, per_path, "momentum_buffer", "SGD")
  else:
    trace = node.trace
  rep = dict(trace=trace)
  if "count" in node._fields and node.count is not None:
    n = (count_step if count_step is not None else 1) if started else 0
    rep["count"] = jnp.asarray(n, jnp.asarray(node.count).dtype)
  return node._replace(**rep)


def _check_found(kind, found, groups):
  """The template must hold the moments the torch optimizer has."""
  if kind == "adam" and not found["adam"]:
    raise ValueError("the torch state_dict is from Adam/AdamW but the optzoo"
                     " state has no Adam moments (mu, nu): is it another"
                     " optimizer's state?")
  if kind == "sgd" and not found["trace"]:
    momenta = {float(g["momentum"]) for g in groups}
    if momenta != {0.0}:
      raise ValueError(f"the torch SGD has momentum {sorted(momenta)!r} but"
                       " the optzoo state has no momentum trace: build"
                       " optzoo.sgd(momentum=...).")


def to_torch_optimizer_state(
    state: Any,
    params: Any,
    param_order: Sequence[Union[str, tuple]],
    like: Mapping[str, Any],
    *,
    as_torch: Optional[bool] = None,
) -> dict:
  """An optzoo optimizer state as a torch ``state_dict()`` (the reverse).

  Args:
    state: the optzoo state (Adam-like or SGD momentum, as above).
    params: the Flax params tree.
    param_order: as for :func:`from_torch_optimizer_state`.
    like: a ``state_dict()`` of the target torch optimizer (its
      ``param_groups`` are kept; torch's ``load_state_dict`` takes the
      hyperparameters from them).
    as_torch: return torch tensors (default: when torch is importable).

  Returns:
    A dict for ``opt.load_state_dict``.
  """
  kind = _kind(like)
  order = _parse_order(param_order)
  _leaf_table(params, order)
  idx2group = _index_groups(like)
  if len(idx2group) != len(order):
    raise ValueError(f"`like` has {len(idx2group)} parameters, `param_order`"
                     f" lists {len(order)}.")
  found = {}

  def grab(node):
    if _is_adam_state(node) and kind == "adam":
      found["count"] = int(np.asarray(node.count))
      for key, tree in (("exp_avg", node.mu), ("exp_avg_sq", node.nu),
                        ("max_exp_avg_sq", getattr(node, "nu_max", None))):
        if tree is None:
          continue
        for p, x in jax.tree_util.tree_leaves_with_path(tree):
          found.setdefault(path_str(p), {})[key] = np.asarray(x)
      return node
    if _is_trace_state(node) and kind == "sgd":
      for p, x in jax.tree_util.tree_leaves_with_path(node.trace):
        found.setdefault(path_str(p), {})["momentum_buffer"] = np.asarray(x)
      if "count" in node._fields and node.count is not None:
        found["count"] = int(np.asarray(node.count))
      return node
    return None

  _walk(state, grab)
  if not any(isinstance(v, dict) for v in found.values()):
    raise ValueError(f"the optzoo state holds no {kind} moments matching the"
                     " `like` state_dict.")
  if as_torch is None:
    try:
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top
      as_torch = True
    except ImportError:
      as_torch = False
  conv = (lambda a: __import__("torch").as_tensor(np.ascontiguousarray(a))
          ) if as_torch else (lambda a: a)
  out_state = {}
  for i, (path, perm) in enumerate(order):
    entry = found.get(path, {})
    d = {}
    for k, v in entry.items():
      if perm is not None and v.ndim:
        axes = _perm_axes(perm, v.ndim)
        v = np.transpose(v, np.argsort(axes))
      d[k] = conv(v)
    if kind == "adam":
      d["step"] = conv(np.asarray(float(found.get("count", 0))))
    elif "momentum_buffer" not in d:
      d["momentum_buffer"] = None
    out_state[i] = d
  return {"state": out_state,
          "param_groups": [dict(g) for g in like["param_groups"]]}


def from_torch_scheduler_state(state_dict: Mapping[str, Any]
                               ) -> Union[int, ReduceLROnPlateauState]:
  """A torch scheduler ``state_dict()`` as optzoo's schedule state.

  Returns:
    For every ``LRScheduler`` (incl. ``SequentialLR``, ``OneCycleLR``,
    ``CyclicLR``...): the step count to resume the matching optzoo schedule
    at (torch's ``last_epoch``; for ``ChainedScheduler`` its first member's).
    For ``ReduceLROnPlateau``: a :class:`ReduceLROnPlateauState` (float64
    when x64 is on).
  """
  if not isinstance(state_dict, Mapping):
    raise TypeError("expected a torch scheduler state_dict() (a dict), got"
                    f" {type(state_dict).__name__}.")
  if {"best", "num_bad_epochs", "cooldown_counter"} <= set(state_dict):
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    best = float(state_dict["best"])
    lr = state_dict.get("_last_lr", [None])[0]
    if lr is None:
      raise ValueError("ReduceLROnPlateau state_dict without _last_lr.")
    if len(state_dict.get("_last_lr", [])) > 1:
      raise ValueError("ReduceLROnPlateau with several param groups: optzoo"
                       " keeps one lr.")
    return ReduceLROnPlateauState(
        lr=jnp.asarray(float(_np(lr)), dt),
        best=jnp.asarray(best if np.isfinite(best) else 0.0, dt),
        has_best=jnp.asarray(bool(np.isfinite(best))),
        num_bad_epochs=jnp.asarray(int(state_dict["num_bad_epochs"]),
                                   jnp.int32),
        cooldown_left=jnp.asarray(int(state_dict["cooldown_counter"]),
                                  jnp.int32))
  if "last_epoch" in state_dict:
    return int(state_dict["last_epoch"])
  if "_schedulers" in state_dict and state_dict["_schedulers"]:
    return from_torch_scheduler_state(state_dict["_schedulers"][0])
  raise ValueError("not a torch scheduler state_dict (no last_epoch):"
                   f" keys {sorted(state_dict)!r}.")
