"""Determinism: the same seed gives bit-identical results.

* ``optzoo race`` run twice in fresh processes with the same ``--seed`` writes
  identical ``results.json`` numbers (config, losses, accuracies, curves;
  the wall-clock ``timings`` section is excluded), and a different seed gives
  different numbers (so the comparison can fail).
* Every registered method that uses randomness (a ``key`` extra argument or
  a PRNG key in its state) gives bit-identical trajectories from two fresh
  builds with the same seed, and different ones with another seed where the
  factory takes ``seed``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import registry_cases
from test_registry_validation import (assert_trees_equal, build, ids,
                                      make_step, problem, transformation_infos)

_TRANSFORMS = transformation_infos()

RACE = ["race", "--optimizers", "sgdm,adam", "--epochs", "1", "--limit", "128",
        "--batch-size", "64", "--quiet"]


def _race(out_dir, seed):
  code = "import sys; from optzoo.apps.cli import main; sys.exit(main(sys.argv[1:]))"
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["MPLBACKEND"] = "Agg"
  proc = subprocess.run(
      [sys.executable, "-c", code] + RACE + ["--seed", str(seed), "--out", str(out_dir)],
      capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, f"optzoo race failed:\n{proc.stdout}\n{proc.stderr}"
  with open(os.path.join(out_dir, "results.json")) as f:
    data = json.load(f)
  assert "results" in data and data["results"], data
  data.pop("timings", None)
  return data


@pytest.mark.slow
def test_race_same_seed_bit_identical(tmp_path):
  a = _race(tmp_path / "a", seed=3)
  b = _race(tmp_path / "b", seed=3)
  # JSON floats are written with repr(): equal text means equal bits.
  assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
  c = _race(tmp_path / "c", seed=4)
  assert json.dumps(a["results"], sort_keys=True) != json.dumps(c["results"], sort_keys=True)


def _random_infos():
  out = []
  for info in _TRANSFORMS:
    params, _, _ = problem()
    state = build(info).init(params)
    has_key = any(l.dtype == jnp.uint32 or jnp.issubdtype(l.dtype, jax.dtypes.prng_key)
                  for l in jax.tree.leaves(state))
    if has_key or "key" in info.extra_args:
      out.append(info)
  return out


_RANDOM = _random_infos()


# Overrides that switch a method's randomness on for the different-seed check.
_NOISY = {"entropy_sgd": {"noise": 1e-3}}


def _trajectory(info, steps=4, **overrides):
  tx = build(info, **overrides)
  params, pel, targets = problem()
  step = make_step(info, tx, pel, targets)
  state = tx.init(params)
  traj = []
  for i in range(steps):
    params, state, _ = step(params, state, i)
    traj.append(params)
  return traj, state


def test_random_methods_found():
  names = {i.name for i in _RANDOM}
  assert {"add_gradient_noise", "gradient_noise"} <= names, names


@pytest.mark.parametrize("info", _RANDOM, ids=ids(_RANDOM))
def test_random_methods_are_reproducible(info):
  noisy = _NOISY.get(info.name, {})
  if "seed" in inspect.signature(info.factory).parameters:
    # Without the `key` extra arg the factory's seed drives the randomness.
    info = dataclasses.replace(
        info, extra_args=tuple(a for a in info.extra_args if a != "key"))
    seed = int(registry_cases.example(info.name).get("seed", 0))
    a, sa = _trajectory(info, seed=seed, **noisy)
    b, sb = _trajectory(info, seed=seed, **noisy)
    c, _ = _trajectory(info, seed=seed + 1, **noisy)
    with pytest.raises(AssertionError):
      assert_trees_equal(a, c)
  else:
    a, sa = _trajectory(info, **noisy)
    b, sb = _trajectory(info, **noisy)
  assert_trees_equal(a, b, f"{info.name}: two fresh runs, same seed")
  assert_trees_equal(sa, sb, f"{info.name}: final states")
