"""Compile time of an Adam step with many parameter leaves.

    python -m benchmarks.compile_time                    # 1000 and 3000 leaves
    python -m benchmarks.compile_time --leaves 300,1000  # quicker

The parameters mimic a deep Flax model: ``leaves / 3`` blocks, each with a
kernel (64, 64), a bias (64,) and a scale (64,) (so a handful of distinct
shapes). For each variant it prints trace+lower time, XLA compile time and
the median step time (params and state donated). Each measurement runs in a
fresh interpreter (``--in-process`` to disable):

* ``optax.adam``;
* ``optzoo.adam`` (on CPU: one fused C++ call per dtype and 16 leaves, which
  writes the moments and, for small leaves, the direction);
* ``optax.adamw`` and ``optzoo.adamw`` (weight decay 1e-2): the ratio is
  ``optzoo.adamw`` / ``optax.adamw``;
* ``optzoo.adam (plain)``: traced with ``OPTZOO_CPU_KERNELS=0``;
* ``update_and_apply(optzoo.adam)``: the whole step in one C++ call;
* ``optzoo.group_leaves(optzoo.adam)``: same-shape leaves stacked;
* ``optax.flatten(optax.adam)``: one raveled vector (breaks sharding);
* ``no-op step``: a step with Adam's signature (params, state, grads; params
  and state donated) that returns params and state unchanged. What it costs
  is what jax and XLA spend on the signature alone, a floor for every
  optimizer (it grows faster than the leaf count, see benchmarks/RESULTS.md).

The target: group_leaves compile time <= 0.5 x optax's at 3000
leaves with no worse step time. See benchmarks/RESULTS.md for what XLA:CPU
actually does with each variant.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optzoo  # noqa: E402
from benchmarks import _common as C  # noqa: E402

VARIANTS = {
    "optax.adam": lambda: optax.adam(1e-3),
    "optzoo.adam": lambda: optzoo.adam(1e-3),
    "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=1e-2),
    "optzoo.adamw": lambda: optzoo.adamw(1e-3, weight_decay=1e-2),
    "optzoo.adam (plain)": lambda: optzoo.adam(1e-3),
    "update_and_apply(optzoo.adam)": lambda: optzoo.adam(1e-3),
    "group_leaves(optzoo.adam)": lambda: optzoo.group_leaves(optzoo.adam(1e-3)),
    "optax.flatten(optax.adam)": lambda: optax.flatten(optax.adam(1e-3)),
    "no-op step": lambda: optax.adam(1e-3),  # its state's structure only
}


def model_params(n_leaves: int, width: int = 64):
  shapes = [(width, width), (width,), (width,)]
  key = jax.random.key(0)
  params = {f"l{i:05d}": jax.random.normal(jax.random.fold_in(key, i),
                                           shapes[i % 3], jnp.float32)
            for i in range(n_leaves)}
  grads = jax.tree.map(lambda x: 1e-2 * x, params)
  return params, grads


# Variants traced with the fused CPU kernel switched off, and variants whose
# step is optzoo.update_and_apply (one custom call writing the new params).
_KERNEL_OFF = {"optzoo.adam (plain)"}
_UPDATE_AND_APPLY = {"update_and_apply(optzoo.adam)"}
_NO_OP = {"no-op step"}


def _step(name, tx):
  if name in _UPDATE_AND_APPLY:
    return lambda p, s, g: optzoo.update_and_apply(tx, g, s, p)
  if name in _NO_OP:
    return lambda p, s, g: (p, s)
  return C.optimizer_step(tx)


def measure(tx, params, grads, repeats=5, name=""):
  state = tx.init(C.copy_tree(params))
  step = _step(name, tx)
  p, s = C.copy_tree(params), C.copy_tree(state)
  old = os.environ.get("OPTZOO_CPU_KERNELS")
  if name in _KERNEL_OFF:
    os.environ["OPTZOO_CPU_KERNELS"] = "0"
  t0 = time.perf_counter()
  try:
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(p, s, grads)
  finally:
    if old is None:
      os.environ.pop("OPTZOO_CPU_KERNELS", None)
    else:
      os.environ["OPTZOO_CPU_KERNELS"] = old
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  for _ in range(2):
    p, s = compiled(p, s, grads)
  jax.block_until_ready(p)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    p, s = compiled(p, s, grads)
    jax.block_until_ready((p, s))
    times.append(time.perf_counter() - t)
  return t1 - t0, t2 - t1, statistics.median(times)


def _measure_isolated(name, n, repeats):
  """Runs one measurement in a fresh interpreter, so that no variant inherits
  caches, memory pressure or warm-up from another."""
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.compile_time", "--one", name,
       "--leaves", str(n), "--repeats", str(repeats)],
      check=True, capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--leaves", default="1000,3000")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--in-process", action="store_true",
                  help="measure all variants in this process (faster)")
  ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.one:
    params, grads = model_params(int(args.leaves))
    print(json.dumps(measure(VARIANTS[args.one](), params, grads,
                             args.repeats, args.one)))
    return
  print("  ".join(f"{k}={v}" for k, v in C.machine_info().items()))
  head = (f"{'variant':<28}{'leaves':>7}{'trace+lower s':>15}{'compile s':>11}"
          f"{'total s':>9}{'step ms':>9}{'total/optax':>13}")
  print(head)
  print("-" * len(head))
  for n in [int(x) for x in args.leaves.split(",")]:
    params, grads = model_params(n) if args.in_process else (None, None)
    bases = {}  # optax.adam / optax.adamw: what the ratios divide by
    for name in args.variants.split(","):
      if args.in_process:
        lower_s, compile_s, step_s = measure(VARIANTS[name](), params, grads,
                                             args.repeats, name)
      else:
        lower_s, compile_s, step_s = _measure_isolated(name, n, args.repeats)
      total = lower_s + compile_s
      if name.startswith("optax."):
        bases[name] = total
      base = bases.get("optax.adamw" if "adamw" in name else "optax.adam")
      ratio = f"{total / base:.2f}" if base else "-"
      print(f"{name:<28}{n:>7}{lower_s:>15.2f}{compile_s:>11.2f}{total:>9.2f}"
            f"{1e3 * step_s:>9.2f}{ratio:>13}", flush=True)


if __name__ == "__main__":
  main()
