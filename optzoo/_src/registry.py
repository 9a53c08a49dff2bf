"""The method registry: family, paper and reference implementation per method.

Every public factory is recorded here by the :func:`register` decorator (the
factory is returned behind a thin wrapper with the same signature, see
:func:`register`). The CLI (``optzoo list``/``table``) and
the registry-wide tests read it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optzoo._src import complex_view
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
      or ``"NumPy re-derivation of Algorithm 1 (tests/test_alias_swats.py)"``;
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
  """Decorator that records a public factory in the registry.

  The recorded (and returned) factory is ``fn`` behind a thin wrapper with
  the same signature (:func:`_public_factory`): complex hyperparameter arrays
  with a zero imaginary part (what ``optax.inject_hyperparams`` makes of
  floats when the params are complex) are passed on as their real part, and
  for Team SGD / Team Adam methods, primitives and wrappers ``init`` rejects integer
  and bool params with a TypeError naming the leaf.
  """
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

  def deco(fn):
    fn = _public_factory(fn, name or fn.__name__,
                         check_params=kind == "transformation" and family in (
                             "Team SGD", "Team Adam", "primitive", "wrapper"))
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


def _real_hyperparameter(name: str, value: Any) -> Any:
  """A complex array hyperparameter -> its real part (it must have no imag)."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and (
      jnp.iscomplexobj(value)):
    if not isinstance(value, jax.core.Tracer) and np.any(np.imag(value) != 0):
      raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    return jnp.real(value)
  return value


def _public_factory(fn: Callable[..., Any], name: str, *,
                    check_params: bool) -> Callable[..., Any]:
  """``fn`` with real-valued hyperparameters and (optionally) float params."""
  sig = inspect.signature(fn)

  @functools.wraps(fn)
  def factory(*args, **kwargs):
    if any(jnp.iscomplexobj(v) for v in (*args, *kwargs.values())
           if isinstance(v, (jax.Array, np.ndarray, np.generic))):
      bound = sig.bind(*args, **kwargs)
      for k, v in bound.arguments.items():
        bound.arguments[k] = _real_hyperparameter(k, v)
      args, kwargs = bound.args, bound.kwargs
    out = fn(*args, **kwargs)
    if check_params and isinstance(out, tuple) and hasattr(out, "_replace") and (
        hasattr(out, "init")):
      inner_init = out.init

      def init(params):
        complex_view.check_float_params(params, f"optzoo.{name}")
        return inner_init(params)

      out = out._replace(init=init)
    return out

  return factory


def _register_all() -> None:
  """Imports every public name: ``optzoo`` loads them lazily, on first use."""
  import optzoo  # pylint: disable=g-import-not-at-top
  optzoo._import_all()  # pylint: disable=protected-access


def registry() -> dict[str, MethodInfo]:
  """All registered methods, by name."""
  _register_all()
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
