"""The benchmark and example scripts are not run in CI (they time things);
this checks that every optzoo name they import still exists, so a moved
module fails here rather than on the day someone runs a benchmark."""
from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for d in ("benchmarks", "examples") for p in (ROOT / d).glob("*.py"))


def _optzoo_imports(path: pathlib.Path):
  """(module, name or None) for every ``import optzoo...`` / ``from optzoo... import``,
  at module level or inside functions."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "optzoo":
          yield a.name, None
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.split(".")[0] == "optzoo":
        for a in node.names:
          yield node.module, a.name


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_imports_resolve(path):
  for module, name in _optzoo_imports(path):
    mod = importlib.import_module(module)
    if name is not None and not hasattr(mod, name):
      importlib.import_module(f"{module}.{name}")  # a submodule
