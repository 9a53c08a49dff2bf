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
        example=dict(example or {}),
        extra_args=tuple(extra_args),
        needs_params=needs_params,
        invalid=tuple(invalid),
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
