"""The fused CPU Adam step vs the plain path, optax and torch, in one run.

    python -m benchmarks.fused_cpu                       # 10M and 50M in 20 leaves
    python -m benchmarks.fused_cpu --sizes 10M --repeats 9 --json out.json

Every variant is a donated, jitted float32 step (see benchmarks/_common.py)
run in turn in every round (order alternating), so machine drift hits all
alike; ``ms`` is the median round, ``min`` the fastest round:

* ``zoo fused``: ``optzoo.adam`` (the C++ kernel computes the update, then
  ``optax.apply_updates``);
* ``zoo fused+apply``: ``optzoo.update_and_apply(optzoo.adam(...), ...)``,
  one custom call that also writes the new parameters;
* ``zoo plain``: ``optzoo.adam`` traced with ``OPTZOO_CPU_KERNELS=0``;
* ``optax``: ``optax.adam``;
* ``torch fused`` / ``torch foreach``: ``torch.optim.Adam(fused=True)`` /
  ``(foreach=True)``, ``optimizer.step()`` with gradients preset (when torch
  is importable);
* ``roofline``: the bytes an Adam step must move (read params, grads, m, v;
  write params, m, v: 28 bytes/param) at the bandwidth of a large
  ``np.copyto`` measured in the same run (2 bytes moved per byte copied;
  one thread), and ``roofline kernel``: a donated XLA elementwise kernel
  moving those same bytes (benchmarks/_common.py; all threads), whose time
  is the achievable floor on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optzoo
from benchmarks import _common as C

LR = 1e-3


def _parse_size(s):
  s = s.strip().upper()
  mult = {"K": 10**3, "M": 10**6}.get(s[-1], 1)
  return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


class _Plain(C.Stepper):
  """A Stepper traced and compiled with the kernel switched off."""

  def __init__(self, *args):
    old = os.environ.get("OPTZOO_CPU_KERNELS")
    os.environ["OPTZOO_CPU_KERNELS"] = "0"
    try:
      super().__init__(*args)
    finally:
      if old is None:
        del os.environ["OPTZOO_CPU_KERNELS"]
      else:
        os.environ["OPTZOO_CPU_KERNELS"] = old


class _Torch:
  """torch.optim.Adam with the Stepper interface (run / calibrate)."""

  def __init__(self, n_params, n_leaves, **kw):
    import torch  # pylint: disable=g-import-not-at-top
    sizes = [n_params // n_leaves] * n_leaves
    sizes[-1] += n_params - sum(sizes)
    g = torch.Generator().manual_seed(0)
    self.params = []
    for n in sizes:
      p = torch.nn.Parameter(torch.randn(n, generator=g))
      p.grad = 1e-2 * torch.randn(n, generator=g)
      self.params.append(p)
    self.opt = torch.optim.Adam(self.params, LR, **kw)
    self.calls = 1
    self.compile_s = 0.0

  def run(self, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
      self.opt.step()
    return (time.perf_counter() - t0) / calls

  def calibrate(self, target_s=0.03):
    self.run(2)
    self.calls = int(max(1, min(200, target_s / max(self.run(1), 1e-6))))


class _Copy:
  """np.copyto of 2 x 256 MB, for the bandwidth behind the roofline."""

  def __init__(self, nbytes=256 << 20):
    self.a = np.ones(nbytes // 4, np.float32)
    self.b = np.zeros_like(self.a)
    self.bytes_moved = 2 * self.a.nbytes
    self.calls = 1
    self.compile_s = 0.0

  def run(self, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
      np.copyto(self.b, self.a)
    return (time.perf_counter() - t0) / calls

  def calibrate(self, target_s=0.03):
    self.run(2)
    self.calls = int(max(1, min(200, target_s / max(self.run(1), 1e-6))))


def _fused_apply_step(tx):
  def step(params, state, grads):
    return optzoo.update_and_apply(tx, grads, state, params)
  return step


def run_config(n_params, n_leaves, repeats, with_torch):
  params, grads = C.make_params(n_params, n_leaves)
  zoo, ox = optzoo.adam(LR), optax.adam(LR)
  st = zoo.init(params)
  steppers = {
      "zoo fused": C.Stepper(C.optimizer_step(zoo), params, st, grads),
      "zoo fused+apply": C.Stepper(_fused_apply_step(zoo), params, st, grads),
      "zoo plain": _Plain(C.optimizer_step(zoo), params, st, grads),
      "optax": C.Stepper(C.optimizer_step(ox), params, ox.init(params), grads),
      "memcpy": _Copy(),
      # The same 28 bytes/param through a donated XLA elementwise kernel
      # (multi-threaded, unlike np.copyto): benchmarks/_common.py.
      "roofline kernel": C.Stepper(C.make_roofline(), params, ox.init(params),
                                   grads),
  }
  hlo = steppers["zoo fused"].compiled.as_text()
  assert "optzoo_adam" in hlo, "the fused kernel was not used"
  if with_torch:
    steppers["torch fused"] = _Torch(n_params, n_leaves, fused=True)
    steppers["torch foreach"] = _Torch(n_params, n_leaves, foreach=True)
  samples = C.timed_samples(steppers, repeats)
  bandwidth = steppers["memcpy"].bytes_moved / min(samples["memcpy"])
  moved = 28 * n_params
  row = {"params": n_params, "leaves": n_leaves,
         "bandwidth_GBs": bandwidth / 1e9, "roofline_ms": 1e3 * moved / bandwidth,
         "roofline_kernel_GBs": moved / min(samples["roofline kernel"]) / 1e9,
         "ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()
                if k != "memcpy"},
         "min_ms": {k: 1e3 * min(v) for k, v in samples.items() if k != "memcpy"},
         "ratios": {}}
  base = ["zoo plain", "optax"] + (["torch fused", "torch foreach"]
                                   if with_torch else [])
  for a in ("zoo fused", "zoo fused+apply"):
    for b in base:
      row["ratios"][f"{a} / {b}"] = C.paired_ratio(samples, a, b)
  del steppers
  return row


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="10M,50M")
  ap.add_argument("--leaves", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                  help="torch.set_num_threads; on a loaded machine OpenMP's "
                  "spinning threads make 2+ threads far slower than 1")
  ap.add_argument("--json")
  args = ap.parse_args()
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(args.torch_threads)
    except ImportError:
      with_torch = False
  info = C.machine_info()
  info["loadavg_before"] = os.getloadavg()
  info["torch_threads"] = args.torch_threads if with_torch else None
  rows = []
  for s in args.sizes.split(","):
    row = run_config(_parse_size(s), args.leaves, args.repeats, with_torch)
    rows.append(row)
    print(f"\n{row['params']:,} params in {row['leaves']} leaves; memcpy "
          f"{row['bandwidth_GBs']:.1f} GB/s, roofline {row['roofline_ms']:.2f} ms; "
          f"XLA roofline kernel {row['roofline_kernel_GBs']:.1f} GB/s")
    for k, v in row["ms"].items():
      print(f"  {k:<18}{v:>9.2f} ms   (min {row['min_ms'][k]:.2f}, "
            f"roofline/this {row['roofline_ms'] / v:.2f})")
    for k, v in row["ratios"].items():
      print(f"  {k:<34}{v:>6.2f}")
  info["loadavg_after"] = os.getloadavg()
  print("\nload average before/after:", info["loadavg_before"],
        info["loadavg_after"], " torch threads:", info["torch_threads"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
