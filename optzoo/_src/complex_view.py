"""Complex parameters as torch treats them: ``torch.view_as_real``.

torch.optim views a complex parameter as a real tensor with a trailing axis
of size 2, so every elementwise statistic (second moments, running maxima,
clipping, square roots, divisions) is taken separately for the real and the
imaginary part. The helpers here apply a *real* elementwise function to
each part of complex leaves (:func:`per_part`), or run a whole real
transformation on the real view ``s + (2,)`` of complex leaves
(:func:`on_real_view`, for factored / cover-set statistics and per-tensor
norms), and are the identity wrapper for real leaves (so real-valued
numerics are untouched, bit for bit).

``optax`` instead uses the modulus ``|g|^2`` for complex second moments
(``optax.tree.update_moment_per_elem_norm``); see the README's "optzoo vs
optax, same name" table.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["per_part", "full_like", "real_dot", "real_view", "from_real_view",
           "on_real_view", "check_float_params"]


def per_part(fn: Callable[..., Any], *xs: Any) -> Any:
  """``fn(*xs)`` for real arrays; ``fn(*re) + 1j * fn(*im)`` if any is complex.

  ``fn`` must be elementwise. Real arguments next to a complex one are used
  as is for both parts (a real array broadcasts over the two parts, as a
  real scalar does in torch's ``view_as_real`` arithmetic).
  If ``fn`` returns a tuple, each of its elements is put together from the
  two parts.
  """
  if not any(jnp.iscomplexobj(x) for x in xs):
    return fn(*xs)
  re = fn(*[jnp.real(x) if jnp.iscomplexobj(x) else x for x in xs])
  im = fn(*[jnp.imag(x) if jnp.iscomplexobj(x) else x for x in xs])
  if isinstance(re, tuple):
    return tuple(jax.lax.complex(a, b.astype(a.dtype)) for a, b in zip(re, im))
  return jax.lax.complex(re, im.astype(re.dtype))


def full_like(p: Any, value: Any) -> jax.Array:
  """``full_like(p, value)``; for complex ``p`` both parts are ``value``.

  torch initialises e.g. Adagrad's accumulator of a complex parameter to
  ``complex(v, v)``: ``value`` for the real and for the imaginary part.
  """
  if jnp.iscomplexobj(p):
    return jnp.full_like(p, jax.lax.complex(*(2 * [jnp.asarray(value, jnp.real(p).dtype)])))
  return jnp.full_like(p, value)


def real_dot(x: Any, y: Any, dtype: Any = None) -> jax.Array:
  """``sum(x * y)`` over the real view: ``sum(Re x Re y + Im x Im y)``."""
  if jnp.iscomplexobj(x) or jnp.iscomplexobj(y):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if dtype is not None:
      rd = jnp.finfo(dtype).dtype
      return jnp.sum(jnp.real(x).astype(rd) * jnp.real(y).astype(rd)
                     + jnp.imag(x).astype(rd) * jnp.imag(y).astype(rd))
    return jnp.sum(jnp.real(jnp.conj(x) * y))
  if dtype is not None:
    x, y = jnp.asarray(x).astype(dtype), jnp.asarray(y).astype(dtype)
  return jnp.sum(x * y)


def real_view(x: Any) -> Any:
  """``torch.view_as_real`` for one leaf: complex shape ``s`` -> real ``s + (2,)``.

  The last axis holds the real and the imaginary part. Real leaves (and
  ``None``) are returned as they are.
  """
  if x is None or not jnp.iscomplexobj(x):
    return x
  x = jnp.asarray(x)
  return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


def from_real_view(x: Any, like: Any) -> Any:
  """The inverse of :func:`real_view`: back to ``like``'s complex dtype.

  ``like`` is the original leaf or its dtype. ``x`` is returned as it is
  when ``like`` is real (or ``None``).
  """
  if x is None or like is None:
    return x
  dtype = jnp.result_type(like)
  if not jnp.issubdtype(dtype, jnp.complexfloating):
    return x
  return jax.lax.complex(x[..., 0], x[..., 1]).astype(dtype)


def _tree_real_view(tree: Any) -> Any:
  return jax.tree.map(real_view, tree)


def on_real_view(inner: Any) -> Any:
  """``inner`` run on the real view of every complex leaf (torch's convention).

  ``init`` and ``update`` see :func:`real_view` of the params and updates
  (a complex leaf of shape ``s`` becomes a real leaf of shape ``s + (2,)``),
  and the updates are turned back into complex leaves. The state is
  ``inner``'s own state of the real view (no wrapper state): for a complex
  leaf its arrays are real and shaped after ``s + (2,)``. Trees without
  complex leaves go through unchanged (same numerics, bit for bit, and the
  same state). This is for transformations that are not elementwise
  (factored statistics, cover sets, per-tensor norms): they then compute
  exactly what their reference computes on ``torch.view_as_real(p)``.
  Extra arguments of ``update`` are passed on as they are.
  """
  def has_complex(tree):
    return any(jnp.iscomplexobj(x) for x in jax.tree.leaves(tree))

  def init_fn(params):
    return inner.init(_tree_real_view(params) if has_complex(params) else params)

  def update_fn(updates, state, params=None, **extra_args):
    if not (has_complex(updates) or has_complex(params)):
      return inner.update(updates, state, params, **extra_args)
    new, state = inner.update(_tree_real_view(updates), state,
                              _tree_real_view(params), **extra_args)
    treedef = jax.tree.structure(updates)
    leaves = [from_real_view(n, u) for n, u in zip(
        treedef.flatten_up_to(new), treedef.flatten_up_to(updates))]
    return treedef.unflatten(leaves), state

  if isinstance(inner, optax.GradientTransformationExtraArgs):
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return optax.GradientTransformation(
      init_fn, lambda updates, state, params=None: update_fn(updates, state, params))


def check_float_params(params: Any, method: str) -> None:
  """TypeError naming the first integer/bool leaf (optimizers need floats).

  An integer parameter would keep integer optimizer state and receive
  truncated (usually zero) updates without any error.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      continue
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
      raise TypeError(
          f"{method}: parameter {jax.tree_util.keystr(path) or '<root>'} has"
          f" dtype {jnp.dtype(dtype).name}; optimizers need floating-point"
          " (or complex) parameters. Cast it to a float dtype, or keep it out"
          " of the optimizer (optax.masked / optax.partition with"
          " optax.set_to_zero).")
