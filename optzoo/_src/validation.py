"""Hyperparameter validation shared by every public factory.

Every factory validates its hyperparameters *at construction* with the helpers
below, so that a bad value raises a clear ``ValueError`` / ``TypeError`` naming
the parameter instead of producing NaNs inside ``jit``.

Validation is skipped for traced values (``optax.inject_hyperparams`` calls the
factory again inside ``jit`` with tracers) and for schedules (callables), whose
values are only known at update time.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence

import jax
import numpy as np

__all__ = [
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
