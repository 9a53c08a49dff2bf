"""torch-style parameter groups as ``optax.multi_transform``.

torch::

    torch.optim.AdamW([
        {"params": decay, "weight_decay": 0.05},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": backbone, "lr": 1e-4},
    ], lr=1e-3)

optzoo::

    optzoo.param_groups(optzoo.adamw, [
        {"params": "backbone/**", "learning_rate": 1e-4},
        {"params": ["**/bias", "**/scale"], "weight_decay": 0.0},
        {"params": "**", "weight_decay": 0.05},
    ], defaults=dict(learning_rate=1e-3))

A group selects leaves by the ``/``-joined key path of the params tree
(``"Dense_0/kernel"``): a glob pattern (``*`` within one path segment, ``**``
across segments, matched against the whole path), a regular expression
(``syntax="regex"``, ``re.search`` like torch's ``"bias" in name``), a list of
either, or a predicate ``(path, leaf) -> bool``. The first group that
matches a leaf takes it; a leaf matched by no group and a group that gets no
leaf are errors naming them.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np
import optax

__all__ = [
    "param_groups",
    "param_labels",
    "param_mask",
    "no_decay_groups",
    "scaled_lr_groups",
    "path_str",
]

Selector = Union[str, Sequence[str], Callable[[str, Any], bool]]


def path_str(path) -> str:
  """The ``/``-joined key path of a leaf (``"Dense_0/kernel"``)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def _glob_to_regex(pattern: str) -> str:
  out, i = [], 0
  while i < len(pattern):
    c = pattern[i]
    if pattern.startswith("**/", i):
      out.append("(?:.*/)?")
      i += 3
    elif pattern.startswith("**", i):
      out.append(".*")
      i += 2
    elif c == "*":
      out.append("[^/]*")
      i += 1
    elif c == "?":
      out.append("[^/]")
      i += 1
    else:
      out.append(re.escape(c))
      i += 1
  return "".join(out) + r"\Z"


def _matcher(selector: Selector, syntax: str, where: str):
  """``(path, leaf) -> bool`` for a selector; errors name ``where``."""
  if callable(selector):
    return selector
  pats = [selector] if isinstance(selector, str) else selector
  if not isinstance(pats, (list, tuple)) or not pats or not all(
      isinstance(p, str) for p in pats):
    raise TypeError(
        f"{where} must be a pattern string, a non-empty list of them or a"
        f" predicate (path, leaf) -> bool, got {selector!r}.")
  regs = []
  for p in pats:
    try:
      regs.append(re.compile(p if syntax == "regex" else _glob_to_regex(p)))
    except re.error as e:
      raise ValueError(f"{where}: bad {syntax} pattern {p!r}: {e}") from e
  if syntax == "regex":
    return lambda path, leaf: any(r.search(path) for r in regs)
  return lambda path, leaf: any(r.match(path) for r in regs)


def _leaves(params):
  return jax.tree_util.tree_leaves_with_path(params)


def param_labels(groups: Sequence[Mapping[str, Any]], syntax: str = "glob"
                 ) -> Callable[[Any], Any]:
  """``params -> tree of group names`` (first matching group wins).

  Args:
    groups: dicts with a ``"params"`` selector and an optional ``"name"``
      (default ``"group_<k>"``).
    syntax: ``"glob"`` or ``"regex"``.

  Returns:
    A function usable as ``optax.multi_transform``'s ``param_labels``; it
    raises a ValueError naming the leaf matched by no group, or the group
    that matched no leaf.
  """
  if syntax not in ("glob", "regex"):
    raise ValueError(f"`syntax` must be 'glob' or 'regex', got {syntax!r}.")
  if isinstance(groups, Mapping) or not isinstance(groups, (list, tuple)):
    raise TypeError("`groups` must be a list of dicts (torch's param_groups),"
                    f" got {type(groups).__name__}.")
  if not groups:
    raise ValueError("`groups` must contain at least one group.")
  names, matchers = [], []
  for k, g in enumerate(groups):
    if not isinstance(g, Mapping) or "params" not in g:
      raise TypeError(f"`groups[{k}]` must be a dict with a 'params' entry,"
                      f" got {g!r}.")
    name = str(g.get("name", f"group_{k}"))
    if name in names:
      raise ValueError(f"`groups[{k}]`: duplicate group name {name!r}.")
    names.append(name)
    matchers.append(_matcher(g["params"], syntax,
                             f"`groups[{k}]['params']` ({name})"))

  def labels(params):
    used = [0] * len(groups)

    def label(path, leaf):
      s = path_str(path)
      for j, m in enumerate(matchers):
        if m(s, leaf):
          used[j] += 1
          return names[j]
      raise ValueError(
          f"parameter {s!r} (shape {np.shape(leaf)}) is matched by no group;"
          " add a catch-all group {'params': '**'} last.")

    out = jax.tree_util.tree_map_with_path(label, params)
    empty = [f"{names[j]} ({groups[j]['params']!r})"
             for j in range(len(groups)) if not used[j]]
    if empty and _leaves(params):
      raise ValueError(
          f"parameter group(s) {', '.join(empty)} match no parameter (or"
          " only parameters taken by an earlier group); paths are like"
          f" {path_str(_leaves(params)[0][0])!r}.")
    return out

  labels.names = tuple(names)
  return labels


def param_groups(
    factory: Callable[..., optax.GradientTransformation],
    groups: Sequence[Mapping[str, Any]],
    defaults: Optional[Mapping[str, Any]] = None,
    *,
    syntax: str = "glob",
) -> optax.GradientTransformation:
  """Builds ``optax.multi_transform`` from torch-style parameter groups.

  Group ``k`` gets ``factory(**{**defaults, **overrides_k})`` where the
  overrides are its entries other than ``"params"`` and ``"name"`` (optzoo
  names: ``learning_rate``, ``weight_decay``, ``b1``, ... ; torch's ``lr`` /
  ``betas`` are translated). The first matching group takes a leaf.

  Args:
    factory: an optimizer factory, e.g. ``optzoo.adamw`` (or
      ``optax.inject_hyperparams(optzoo.adamw)``).
    groups: list of dicts with a ``"params"`` selector (see the module
      docstring) and hyperparameter overrides.
    defaults: the hyperparameters shared by all groups (torch's optimizer
      keyword arguments).
    syntax: ``"glob"`` (default) or ``"regex"``.

  Returns:
    An ``optax.GradientTransformation``. Errors about unmatched leaves or
    groups are raised at ``init``.
  """
  if not callable(factory):
    raise TypeError(f"`factory` must be an optimizer factory such as"
                    f" optzoo.adamw, got {factory!r}.")
  labels = param_labels(groups, syntax)
  defaults = dict(defaults or {})
  txs = {}
  for k, g in enumerate(groups):
    kw = dict(defaults)
    for key, v in g.items():
      if key in ("params", "name"):
        continue
      if key == "lr":
        key = "learning_rate"
      if key == "betas":
        kw["b1"], kw["b2"] = v
        continue
      kw[key] = v
    try:
      txs[labels.names[k]] = factory(**kw)
    except TypeError as e:
      raise TypeError(f"`groups[{k}]` ({labels.names[k]}): {e}") from e
  return optax.multi_transform(txs, labels)


def param_mask(selector: Selector, syntax: str = "glob"
               ) -> Callable[[Any], Any]:
  """``params -> bool tree`` for ``optax.masked`` / ``mask=`` arguments.

  Raises a ValueError at use if the selector matches no leaf.
  """
  if syntax not in ("glob", "regex"):
    raise ValueError(f"`syntax` must be 'glob' or 'regex', got {syntax!r}.")
  m = _matcher(selector, syntax, "`selector`")

  def mask(params):
    out = jax.tree_util.tree_map_with_path(
        lambda p, x: bool(m(path_str(p), x)), params)
    if _leaves(params) and not any(jax.tree.leaves(out)):
      raise ValueError(f"`selector` {selector!r} matches no parameter; paths"
                       f" are like {path_str(_leaves(params)[0][0])!r}.")
    return out

  return mask


def _is_bias_or_norm(path: str, leaf) -> bool:
  last = path.rsplit("/", 1)[-1]
  return np.ndim(leaf) <= 1 or last in ("bias", "scale")


def _everything(path: str, leaf) -> bool:
  del path, leaf
  return True


def no_decay_groups(weight_decay: float,
                    no_decay: Selector = _is_bias_or_norm) -> list:
  """The "no weight decay on biases and norm parameters" recipe.

  Default rule (the usual torch one, ``p.ndim <= 1 or name.endswith('bias')``):
  every leaf with at most one dimension or named ``bias`` / ``scale``
  (Flax's norm layers) gets ``weight_decay = 0``; the rest get
  ``weight_decay``.

  Args:
    weight_decay: the decay of the other leaves.
    no_decay: the selector of the undecayed leaves (pattern(s) in the
      ``syntax`` given to :func:`param_groups`, or a predicate).

  Returns:
    Groups for :func:`param_groups` (the last one is a catch-all).
  """
  return [{"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
          {"name": "decay", "params": _everything,
           "weight_decay": weight_decay}]


def scaled_lr_groups(selector: Selector, learning_rate, factor: float = 0.1
                     ) -> list:
  """The "backbone lr x 0.1" recipe: leaves matched by ``selector`` get
  ``factor * learning_rate`` (a float or a schedule), the rest
  ``learning_rate``.

  Returns:
    Groups for :func:`param_groups` (the last one is a catch-all).
  """
  if callable(learning_rate):
    scaled = lambda t: factor * learning_rate(t)
  else:
    scaled = factor * learning_rate
  return [{"name": "scaled", "params": selector, "learning_rate": scaled},
          {"name": "rest", "params": _everything,
           "learning_rate": learning_rate}]
