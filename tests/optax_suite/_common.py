"""Small shared pieces of the adapted optax tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README_TABLE = "README.md, 'optzoo vs optax, same name'"


def differs(reason: str):
  """``xfail(strict=True)`` for a documented optzoo-vs-optax difference."""
  return pytest.mark.xfail(strict=True, reason=f"{reason} (see {README_TABLE})")


def abs_sq(x):
  """|x|^2 for real and complex arrays (optax.numerics.abs_sq)."""
  return (x.conj() * x).real


def assert_trees_all_close(actual, desired, rtol=1e-6, atol=0.0, err_msg=""):
  """Same structure, and allclose leaf by leaf (like chex / optax test_utils)."""
  sa, sd = jax.tree.structure(actual), jax.tree.structure(desired)
  assert sa == sd, f"{err_msg}: tree structure differs:\n{sa}\n{sd}"
  for (path, a), d in zip(jax.tree_util.tree_leaves_with_path(actual),
                          jax.tree.leaves(desired)):
    a_, d_ = np.asarray(a), np.asarray(d)
    if a_.dtype == jnp.bfloat16 or d_.dtype == jnp.bfloat16:
      a_, d_ = a_.astype(np.float32), d_.astype(np.float32)
    np.testing.assert_allclose(a_, d_, rtol=rtol, atol=atol,
                               err_msg=f"{err_msg}{jax.tree_util.keystr(path)}")
