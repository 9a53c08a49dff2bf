"""The method registry: family, paper and reference implementation per method.

Every public factory is recorded here by the :func:`register` decorator (the
factory itself is returned unchanged). The CLI (``optzoo list``/``table``) and
the registry-wide tests read it.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional

from optzoo._src import validation

__all__ = ["MethodInfo", "register", "registry", "list_optimizers", "get_info"]


FAMILIES = ("Team SGD", "Team Adam", "primitive", "wrapper", "schedule",
            "research", "tool")


@dataclasses.dataclass(frozen=True)
class MethodInfo:
  """What the registry knows about one public method.

  Attributes:
    name: public name (``optzoo.<name>``).
    family: one of ``FAMILIES``.
    summary: one line.
    paper: the paper it implements (authors, venue, year, link).
    reference: the reference implementation its numbers reproduce, or how it
      is verified (e.g. ``"torch.optim.Adam"``, ``"NumPy re-derivation"``).
    factory: the public callable.
    kind: ``"transformation"`` (returns a GradientTransformation),
      ``"schedule"`` or ``"utility"``.
    example: keyword arguments that build a sensible instance (used by the
      registry-wide tests and the CLI). For wrappers, an ``inner`` given as a
      string names another registered method, built with its own example.
    extra_args: names of extra arguments ``update`` needs.
    needs_params: whether ``update`` needs ``params``.
    invalid: ``(kwargs_override, exception_type)`` pairs that must raise at
      construction (used by the generated bad-input tests).
  """

  name: str
  family: str
  summary: str
  paper: str
  reference: str
  factory: Callable[..., Any]
  kind: str = "transformation"
  example: dict = dataclasses.field(default_factory=dict)
  extra_args: tuple = ()
  needs_params: bool = False
  invalid: tuple = ()

  def build(self, **overrides: Any) -> Any:
    """Builds the method from ``example`` (updated with ``overrides``).

    String values of ``inner`` / ``inners`` keys name other registered
    methods and are built from their own examples.
    """
    kwargs = dict(self.example)
    kwargs.update(overrides)
    for key in ("inner", "base_optimizer"):
      if isinstance(kwargs.get(key), str):
        kwargs[key] = _REGISTRY[kwargs[key]].build()
    return self.factory(**kwargs)


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    *,
    family: str,
    summary: str,
    paper: str,
    reference: str,
    kind: str = "transformation",
    example: Optional[dict] = None,
    extra_args: tuple = (),
    needs_params: bool = False,
    invalid: tuple = (),
    name: Optional[str] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorator that records a public factory in the registry, unchanged."""
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

  def deco(fn):
    info = MethodInfo(
        name=name or fn.__name__,
        family=family,
        summary=summary,
        paper=paper,
        reference=reference,
        factory=fn,
        kind=kind,
        example=dict(example or {}),
        extra_args=tuple(extra_args),
        needs_params=needs_params,
        invalid=tuple(invalid),
    )
    _REGISTRY[info.name] = info
    return fn

  return deco


def registry() -> dict[str, MethodInfo]:
  """All registered methods, by name (import ``optzoo`` first)."""
  return dict(_REGISTRY)


def list_optimizers(family: Optional[str] = None, kind: Optional[str] = None
                    ) -> list[MethodInfo]:
  """All registered methods, sorted by family then name.

  Args:
    family: keep only this family ("Team SGD", "Team Adam", "primitive",
      "wrapper", "schedule", "research", "tool").
    kind: keep only this kind ("transformation", "schedule", "utility").
  """
  infos = registry().values()
  if family is not None:
    validation.check_choice("family", family, FAMILIES)
    infos = [i for i in infos if i.family == family]
  if kind is not None:
    infos = [i for i in infos if i.kind == kind]
  order = {f: k for k, f in enumerate(FAMILIES)}
  return sorted(infos, key=lambda i: (order[i.family], i.name))


def get_info(name: str) -> MethodInfo:
  """The registry entry of one method; ``KeyError`` lists close names."""
  reg = registry()
  if name not in reg:
    close = difflib.get_close_matches(name, list(reg), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown method {name!r}.{hint} See optzoo.list_optimizers().")
  return reg[name]
