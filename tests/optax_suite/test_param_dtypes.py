"""Integer / bool parameters are a clear TypeError at ``init``.

With int32 params an optimizer would keep int32 state and return truncated
(usually zero) updates, silently. Every Team SGD / Team Adam method,
primitive and wrapper of the registry raises a TypeError naming the leaf's
path and dtype instead. (Not an optax test: optax accepts integer params.)
"""
from __future__ import annotations

import jax.numpy as jnp
import pytest

import optzoo
import registry_cases
from test_registry_validation import ids

_CHECKED = [i for i in optzoo.list_optimizers(kind="transformation")
            if i.family in ("Team SGD", "Team Adam", "primitive", "wrapper")]


@pytest.mark.parametrize("info", _CHECKED, ids=ids(_CHECKED))
def test_integer_and_bool_params_raise_at_init(info):
  tx = registry_cases.build(info)
  for dtype in (jnp.int32, jnp.bool_):
    params = {"w": jnp.ones(3, jnp.float32), "layer": {"steps": jnp.ones(2, dtype)}}
    with pytest.raises(TypeError, match=r"\['layer'\]\['steps'\].*" + jnp.dtype(dtype).name):
      tx.init(params)


def test_float_and_complex_params_still_fine():
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float64, jnp.complex64):
    optzoo.adam().init({"w": jnp.ones(3, dtype)})
