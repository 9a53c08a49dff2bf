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

__all__ = ["MethodInfo", "register", "registry", "list_optimizers", "get_info",
           "FAMILIES", "EXACTNESS"]


FAMILIES = ("Team SGD", "Team Adam", "primitive", "wrapper", "schedule",
            "research", "tool")


# How a method's numbers were checked, read off ``MethodInfo.verified``.
EXACTNESS = ("reference-exact", "re-derived", "property-tested")
_DERIVED_PREFIXES = ("numpy", "closed form", "definition", "statistical")


@dataclasses.dataclass(frozen=True)
class MethodInfo:
  """What the registry knows about one public method.

  Attributes:
    name: public name (``optzoo.<name>``).
    family: one of ``FAMILIES``.
    summary: one line.
    paper: the paper it implements (authors, venue, year, link).
    reference: the implementation or definition its numbers follow (e.g.
      ``"torch.optim.Adam"``).
    factory: the public callable.
    kind: ``"transformation"`` (returns a GradientTransformation),
      ``"schedule"`` or ``"utility"``.
    verified: what the tests compare it with, and where, e.g.
      ``"torch.optim.Adam, float64, 300 steps (tests/test_alias_oracles.py)"``
      or ``"NumPy re-derivation of Algorithm 1 (tests/test_swats.py)"``;
      ``None`` when only its properties are tested (jit, dtypes, sharding,
      bad input, convergence).
    extra_args: names of extra arguments ``update`` needs.
    needs_params: whether ``update`` needs ``params``.
  """

  name: str
  family: str
  summary: str
  paper: str
  reference: str
  factory: Callable[..., Any]
  kind: str = "transformation"
  verified: Optional[str] = None
  extra_args: tuple = ()
  needs_params: bool = False

  @property
  def exactness(self) -> str:
    """``"reference-exact"``: equal to another implementation in float64;
    ``"re-derived"``: equal to a NumPy re-derivation or closed form written
    from the paper; ``"property-tested"``: no numeric oracle."""
    if self.verified is None:
      return "property-tested"
    if self.verified.lower().startswith(_DERIVED_PREFIXES):
      return "re-derived"
    return "reference-exact"


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    *,
    family: str,
    summary: str,
    paper: str,
    reference: str,
    verified: Optional[str] = None,
    kind: str = "transformation",
    extra_args: tuple = (),
    needs_params: bool = False,
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
        verified=verified,
        extra_args=tuple(extra_args),
        needs_params=needs_params,
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
