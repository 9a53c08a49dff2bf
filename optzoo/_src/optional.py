"""Optional dependencies: the demo apps' packages, imported on first use.

``pip install optzoo`` brings only what the optimizers need (jax, optax, chex,
flax, numpy). The apps (``optzoo race``, ``lr-find``), the bundled datasets and
the ``plot()`` methods also need scikit-learn, matplotlib and rich, installed
by ``pip install "optzoo[apps]"``. A missing one raises
:class:`MissingExtraError`, a one-line ``ImportError`` that says so.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "import_optional"]

# module -> the PyPI package that provides it
_PACKAGES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "rich": "rich"}


class MissingExtraError(ImportError):
  """An optional package of the ``apps`` extra is not installed."""


def import_optional(module: str, purpose: str) -> ModuleType:
  """``importlib.import_module(module)``, or a :class:`MissingExtraError`.

  Args:
    module: a dotted module name, e.g. ``"matplotlib.pyplot"``.
    purpose: what needs it, for the message (e.g. ``"LRRangeTestResult.plot"``).
  """
  try:
    return importlib.import_module(module)
  except ImportError:
    top = module.split(".")[0]
    package = _PACKAGES.get(top, top)
    raise MissingExtraError(
        f"{purpose} needs {package}, which is not installed:"
        " pip install 'optzoo[apps]'") from None
