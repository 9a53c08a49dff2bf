"""The method registry: family, paper and reference implementation per method."""
from __future__ import annotations

from typing import Optional

from optzoo._src import base

__all__ = ["list_optimizers", "get_info"]


def list_optimizers(family: Optional[str] = None, kind: Optional[str] = None
                    ) -> list[base.MethodInfo]:
  """All registered methods, sorted by family then name.

  Args:
    family: keep only this family ("Team SGD", "Team Adam", "primitive",
      "wrapper", "schedule", "research", "tool").
    kind: keep only this kind ("transformation", "schedule", "utility").
  """
  infos = base.registry().values()
  if family is not None:
    base.check_choice("family", family, base.FAMILIES)
    infos = [i for i in infos if i.family == family]
  if kind is not None:
    infos = [i for i in infos if i.kind == kind]
  order = {f: k for k, f in enumerate(base.FAMILIES)}
  return sorted(infos, key=lambda i: (order[i.family], i.name))


def get_info(name: str) -> base.MethodInfo:
  """The registry entry of one method; ``KeyError`` lists close names."""
  reg = base.registry()
  if name not in reg:
    import difflib
    close = difflib.get_close_matches(name, list(reg), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown method {name!r}.{hint} See optzoo.list_optimizers().")
  return reg[name]
