"""The registry tells the truth: what is verified, what is exported, what importing costs."""
from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

import optzoo
from optzoo.apps import cli
import registry_cases

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
INFOS = optzoo.list_optimizers()
VERIFIED = [i for i in INFOS if i.verified is not None]


def _test_file(info) -> str:
  # tests/ mirrors optzoo/_src/: the oracle test may sit in a subfolder
  # (tests/research/test_koala.py).
  m = re.search(r"\((tests/(?:\w+/)*test_\w+\.py)\)\s*$", info.verified)
  assert m, (f"{info.name}: `verified` must end with the oracle test, e.g. (tests/test_x.py)"
             " or (tests/<subpackage>/test_x.py)")
  return os.path.join(ROOT, m.group(1))


def _generators_text() -> str:
  return "\n".join(open(p).read() for p in glob.glob(os.path.join(TESTS, "gen_*.py")))


@pytest.mark.parametrize("info", VERIFIED, ids=[i.name for i in VERIFIED])
def test_verified_names_an_oracle_test_that_names_the_method(info):
  path = _test_file(info)
  assert os.path.exists(path), f"{info.name}: {path} does not exist"
  text = open(path).read()
  names = [info.name] + re.findall(r"optzoo\.(\w+)", info.verified)
  assert any(re.search(rf"\b{re.escape(n)}\b", text) for n in names), (
      f"{info.name}: {os.path.basename(path)} never mentions {names}")
  if info.exactness == "reference-exact":
    # The reference implementation (its class or function name) appears in
    # the oracle test or in the script that generated its fixtures.
    oracle = re.match(r"[\w.]+", info.verified).group(0)
    short = oracle.split(".")[-1]
    assert short in text or short in _generators_text(), (
        f"{info.name}: neither {os.path.basename(path)} nor tests/gen_*.py"
        f" mention {oracle}")


def test_exactness_values():
  assert {i.exactness for i in INFOS} <= {"reference-exact", "re-derived", "property-tested"}
  # Methods verified only statistically or by properties are not "exact".
  for name in ("swats", "add_gradient_noise", "skip_nonfinite"):
    assert optzoo.get_info(name).exactness != "reference-exact", name


def test_table_marks_reference_exact_exactly_the_verified_methods():
  rows = cli.zoo_table_markdown().splitlines()[2:]
  marked = {re.match(r"\| `(\w+)`", r).group(1) for r in rows if "| reference-exact" in r}
  expected = {i.name for i in INFOS if i.exactness == "reference-exact"}
  assert marked == expected


BUILDABLE = [i for i in INFOS if i.kind != "utility"]


@pytest.mark.parametrize("info", BUILDABLE, ids=[i.name for i in BUILDABLE])
def test_every_method_builds_from_its_test_case(info):
  registry_cases.build(info)


def test_cases_name_registered_methods():
  names = {i.name for i in INFOS}
  assert set(registry_cases.EXAMPLES) <= names
  assert set(registry_cases.INVALID) <= names


def test_init_has_explicit_imports_and_one_all():
  src = open(os.path.join(ROOT, "optzoo", "__init__.py")).read()
  tree = ast.parse(src)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      assert all(a.name != "*" for a in node.names), "star import in optzoo/__init__.py"
  assert len(optzoo.__all__) == len(set(optzoo.__all__))
  for name in optzoo.__all__:
    assert hasattr(optzoo, name), name
  for info in INFOS:
    assert info.name in optzoo.__all__, info.name


def test_no_work_plan_pointers_in_the_package():
  pat = re.compile(r"issue [0-9]|methods\.md|reference-semantics|style\.md|_group_[ab]")
  hits = []
  for path in glob.glob(os.path.join(ROOT, "optzoo", "**", "*.py"), recursive=True):
    for k, line in enumerate(open(path), 1):
      if pat.search(line):
        hits.append(f"{os.path.relpath(path, ROOT)}:{k}: {line.strip()}")
  assert not hits, "\n".join(hits)


MAX_FUNCTION_LINES = 80
LONG_ON_PURPOSE = "# Long on purpose:"


def _code_lines(node) -> int:
  """A function's lines without its docstring."""
  n = node.end_lineno - node.lineno + 1
  first = node.body[0]
  if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
      and isinstance(first.value.value, str)):
    n -= first.end_lineno - first.lineno + 1
  return n


def test_no_long_function_without_a_reason():
  """No function of the package is over MAX_FUNCTION_LINES code lines unless
  it (or the function it is nested in) says why in a LONG_ON_PURPOSE comment."""
  hits = []
  for path in glob.glob(os.path.join(ROOT, "optzoo", "**", "*.py"), recursive=True):
    lines = open(path).read().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      if _code_lines(node) <= MAX_FUNCTION_LINES:
        continue
      body = lines[node.lineno - 1:node.end_lineno]
      if not any(LONG_ON_PURPOSE in line for line in body):
        hits.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}"
                    f" ({_code_lines(node)} lines)")
  assert not hits, "\n".join(hits)


_NO_BACKEND = r"""
import jax
import optzoo
from jax._src import xla_bridge
assert not xla_bridge._backends, "import optzoo initialized a JAX backend"
jax.config.update("jax_enable_x64", True)   # still allowed after the import
import jax.numpy as jnp
assert jnp.zeros(1).dtype == jnp.float64
tx = optzoo.adam(1e-3)
print("ok")
"""

_DISTRIBUTED_AFTER_IMPORT = r"""
import socket, jax
import optzoo
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=1, process_id=0)
print("ok", jax.process_count())
jax.distributed.shutdown()
"""


def _run(code: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=env, timeout=120, cwd=ROOT)


def test_import_initializes_no_backend():
  p = _run(_NO_BACKEND)
  assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


def test_jax_distributed_initialize_after_import():
  p = _run(_DISTRIBUTED_AFTER_IMPORT)
  assert p.returncode == 0 and "ok 1" in p.stdout, p.stderr[-2000:]
