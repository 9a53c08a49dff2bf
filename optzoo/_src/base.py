"""Shared building blocks: hyperparameter validation, extra-arg checks, the registry.

Every public factory in optzoo validates its hyperparameters *at construction*
with the helpers below, so that a bad value raises a clear ``ValueError`` /
``TypeError`` naming the parameter instead of producing NaNs inside ``jit``.

Validation is skipped for traced values (``optax.inject_hyperparams`` calls the
factory again inside ``jit`` with tracers) and for schedules (callables), whose
values are only known at update time.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MethodInfo",
    "register",
    "registry",
    "check_number",
    "check_nonneg",
    "check_positive",
    "check_beta",
    "check_unit_interval",
    "check_int",
    "check_choice",
    "check_bool",
    "check_lr",
    "check_transformation",
    "require_params",
    "require_extra_arg",
]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def check_number(name: str, value: Any) -> Optional[np.ndarray]:
  """Checks that ``value`` is a real number (or traced); returns it as ndarray."""
  if isinstance(value, (bool, np.bool_)) or isinstance(value, str) or value is None:
    raise TypeError(
        f"`{name}` must be a real number, got {value!r} of type"
        f" {type(value).__name__}."
    )
  if isinstance(value, jax.core.Tracer):
    return None
  if not isinstance(value, (numbers.Real, np.ndarray, jax.Array, np.generic)):
    raise TypeError(
        f"`{name}` must be a real number, got {value!r} of type"
        f" {type(value).__name__}."
    )
  arr = np.asarray(value)
  if arr.dtype.kind not in "fiu":
    raise TypeError(f"`{name}` must be a real number, got dtype {arr.dtype}.")
  if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
    raise ValueError(f"`{name}` must be finite, got {value!r}.")
  return arr


def check_nonneg(name: str, value: Any) -> None:
  """``value >= 0``."""
  arr = check_number(name, value)
  if arr is not None and np.any(arr < 0):
    raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def check_positive(name: str, value: Any) -> None:
  """``value > 0``."""
  arr = check_number(name, value)
  if arr is not None and np.any(arr <= 0):
    raise ValueError(f"`{name}` must be > 0, got {value!r}.")


def check_beta(name: str, value: Any) -> None:
  """``0 <= value < 1`` (decay rates, momentum coefficients)."""
  arr = check_number(name, value)
  if arr is not None and (np.any(arr < 0) or np.any(arr >= 1)):
    raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


def check_unit_interval(
    name: str, value: Any, *, low_open: bool = False, high_open: bool = False
) -> None:
  """``value`` in [0, 1] with optionally open ends."""
  arr = check_number(name, value)
  if arr is None:
    return
  lo_bad = np.any(arr <= 0) if low_open else np.any(arr < 0)
  hi_bad = np.any(arr >= 1) if high_open else np.any(arr > 1)
  if lo_bad or hi_bad:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    raise ValueError(f"`{name}` must be in {lo}0, 1{hi}, got {value!r}.")


def check_int(name: str, value: Any, *, minimum: Optional[int] = None) -> None:
  """An integer (not bool), optionally ``>= minimum``.

  Integer-valued 0-d arrays are accepted (``optax.inject_hyperparams`` turns
  ints into arrays); tracers are not checked.
  """
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (jax.Array, np.ndarray)) and value.ndim == 0 and (
      value.dtype.kind in "iu"
  ):
    value = int(value)
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (numbers.Integral, np.integer)
  ):
    raise TypeError(
        f"`{name}` must be an integer, got {value!r} of type"
        f" {type(value).__name__}."
    )
  if minimum is not None and value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(
        f"`{name}` must be one of {tuple(choices)!r}, got {value!r}."
    )


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def check_lr(value: Any, name: str = "learning_rate") -> None:
  """A learning rate: a number >= 0 or an ``optax.Schedule`` (callable)."""
  if callable(value):
    return
  check_nonneg(name, value)


def check_transformation(name: str, value: Any) -> None:
  if not (hasattr(value, "init") and hasattr(value, "update")):
    raise TypeError(
        f"`{name}` must be an optax.GradientTransformation, got"
        f" {type(value).__name__}."
    )


def require_params(params: Any, method: str) -> None:
  """Raises a clear error when a method that needs ``params`` did not get them."""
  if params is None:
    raise ValueError(
        f"{method} needs the current parameters: call"
        f" `tx.update(grads, state, params)`."
    )


def require_extra_arg(value: Any, arg: str, method: str, how: str) -> None:
  """Raises a clear error naming a missing extra argument and how to pass it."""
  if value is None:
    raise ValueError(
        f"{method} needs the extra argument `{arg}` at update time: {how}"
    )


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

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


def is_literal_zero(x: Any) -> bool:
  """True for a Python/NumPy scalar zero; a schedule or an array never is.

  Factories use it to drop links that would be no-ops (e.g. an L2 term with
  weight decay 0). An injected hyperparameter is an array, so the link stays
  and the state structure is the same at init and under ``jit``.
  """
  return (isinstance(x, (int, float, np.integer, np.floating))
          and not isinstance(x, (bool, np.bool_)) and x == 0)


def compute_dtype(x: Any) -> Any:
  """At least float32: the dtype optimizer statistics are computed in."""
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def tree_unzip(tree_of_tuples: Any, like: Any, n: int, *,
               is_leaf: Optional[Callable[[Any], bool]] = None) -> tuple:
  """Splits ``jax.tree.map(f, like, ...)`` with n-tuple outputs into n trees.

  Each returned tree has ``like``'s structure (``None`` leaves and empty
  trees included); use it when one per-leaf function computes several
  results at once (an update and a new buffer, say).
  """
  treedef = jax.tree.structure(like, is_leaf=is_leaf)
  rows = treedef.flatten_up_to(tree_of_tuples)
  return tuple(treedef.unflatten([r[i] for r in rows]) for i in range(n))


def tree_zeros_like(tree: Any, dtype: Any = None) -> Any:
  """``zeros_like`` over a pytree, ``None`` leaves kept as ``None``."""
  return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)
