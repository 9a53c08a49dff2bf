"""The core package needs only the optimizers' dependencies; the apps' extras fail clearly."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = ("scikit-learn", "matplotlib", "rich")


def _pyproject():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def test_core_dependencies_exclude_the_apps():
  deps = " ".join(_pyproject()["project"]["dependencies"])
  for name in APPS:  # (rich still arrives as a dependency of flax)
    assert name not in deps, name
  extras = _pyproject()["project"]["optional-dependencies"]
  for name in APPS:
    assert any(name in d for d in extras["apps"]), name
  assert any("optzoo[apps]" in d for d in extras["test"])


def test_typed_package():
  assert os.path.exists(os.path.join(ROOT, "optzoo", "py.typed"))
  assert "py.typed" in str(_pyproject()["tool"]["setuptools"]["package-data"])


# Runs with scikit-learn and matplotlib made unimportable (rich cannot be: flax
# itself depends on it).
_WITHOUT_APPS = r"""
import sys
for m in ("sklearn", "matplotlib"):
  sys.modules[m] = None          # import fails as if not installed
import jax.numpy as jnp
import optzoo
from optzoo import nn as zn
tx = optzoo.adam(1e-3)
params = {"w": jnp.ones(3)}
u, _ = tx.update(params, tx.init(params))
try:
  zn.load_digits()
except ImportError as e:
  print("DATA:", e)
from optzoo.apps import cli
sys.exit(cli.main(["race", "--epochs", "1", "--limit", "64", "--quiet"]))
"""


def test_without_the_apps_extra():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", _WITHOUT_APPS], capture_output=True, text=True,
                     env=env, timeout=120, cwd=ROOT)
  assert "DATA: optzoo.nn.load_digits needs scikit-learn, which is not installed:" \
         " pip install 'optzoo[apps]'" in p.stdout, p.stdout + p.stderr[-2000:]
  assert p.returncode == 1, p.stderr
  err = p.stderr.strip().splitlines()
  assert len(err) == 1 and "needs scikit-learn" in err[0] and "optzoo[apps]" in err[0], p.stderr


# optzoo/__init__.py runs its explicit imports on first use (PEP 562).
_LAZY = r"""
import sys
import optzoo
heavy = [m for m in ("jax", "optax", "flax", "chex") if m in sys.modules]
assert not heavy, f"import optzoo imported {heavy}"
assert "adam" in dir(optzoo) and "adam" in optzoo.__all__
from optzoo import adam, research
assert optzoo.adam is adam and callable(adam)
assert research.__name__ == "optzoo.research" and optzoo.research is research
try:
  optzoo.no_such_name
except AttributeError as e:
  assert "no_such_name" in str(e)
else:
  raise AssertionError("no AttributeError")
print("ok")
"""


def test_import_optzoo_is_lazy():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", _LAZY], capture_output=True, text=True, env=env,
                     timeout=120, cwd=ROOT)
  assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


def test_lazy_imports_are_explicit_and_match_all():
  import ast
  import optzoo
  names = []
  for node in optzoo._public_imports(ast):  # pylint: disable=protected-access
    assert isinstance(node, ast.ImportFrom) and node.level == 0, ast.dump(node)
    assert all(a.name != "*" for a in node.names), "star import in optzoo/__init__.py"
    names += [a.asname or a.name for a in node.names]
  assert len(names) == len(set(names)), "a name imported twice in optzoo/__init__.py"
  assert set(names) == set(optzoo.__all__)
  for name in optzoo.__all__:
    assert getattr(optzoo, name) is not None, name
  assert set(optzoo.__all__) <= set(dir(optzoo))
