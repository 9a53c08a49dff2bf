"""CPU optimizer steps vs the plain path, optax and torch, in one run.

    python -m benchmarks.fused_cpu                       # adam, 10M and 50M in 20 leaves
    python -m benchmarks.fused_cpu --methods adam,adamw,sgd_momentum,rmsprop
    python -m benchmarks.fused_cpu --sizes 10M --repeats 9 --json out.json

Every variant is a donated, jitted float32 step (see benchmarks/_common.py)
run in turn in every round (order alternating), so machine drift hits all
alike; ``ms`` is the median round, ``min`` the fastest round. Per method:

* ``zoo``: ``optzoo.<method>``'s ``tx.update`` + ``optax.apply_updates``
  (for Adam/AdamW the C++ kernel updates the moments);
* ``zoo+apply``: ``optzoo.update_and_apply(tx, ...)``, one custom call that
  also writes the new parameters (Adam, AdamW, SGD-momentum; RMSProp has no
  kernel and runs ``tx.update`` + ``apply_updates``);
* ``zoo plain``: ``optzoo.<method>`` traced with ``OPTZOO_CPU_KERNELS=0``;
* ``optax``: optax's equivalent;
* ``torch fused`` / ``torch foreach``: ``torch.optim.*(fused=True)`` /
  ``(foreach=True)``, ``optimizer.step()`` with gradients preset (when torch
  is importable; RMSprop has no fused kernel);
* ``roofline``: the bytes a step must move (read params, grads and state;
  write params and state) at the bandwidth of a large ``np.copyto``
  measured in the same run (2 bytes moved per byte copied; one thread), and
  ``roofline kernel``: a donated XLA elementwise kernel moving the same
  bytes (benchmarks/_common.py; all threads), whose time is the achievable
  floor on this machine.
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
  """A torch.optim optimizer with the Stepper interface (run / calibrate)."""

  def __init__(self, n_params, n_leaves, cls_name, kwargs, **impl):
    import torch  # pylint: disable=g-import-not-at-top
    sizes = [n_params // n_leaves] * n_leaves
    sizes[-1] += n_params - sum(sizes)
    g = torch.Generator().manual_seed(0)
    self.params = []
    for n in sizes:
      p = torch.nn.Parameter(torch.randn(n, generator=g))
      p.grad = 1e-2 * torch.randn(n, generator=g)
      self.params.append(p)
    self.opt = getattr(torch.optim, cls_name)(self.params, **kwargs, **impl)
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


# name: (optzoo factory, optax factory, torch class, torch kwargs, state
# arrays per param, has a fused torch kernel). Hyperparameters are each
# method's torch defaults except the learning rate.
METHODS = {
    "adam": (lambda: optzoo.adam(LR), lambda: optax.adam(LR),
             "Adam", {"lr": LR}, 2, True),
    "adamw": (lambda: optzoo.adamw(LR),
              lambda: optax.adamw(LR, weight_decay=1e-2),
              "AdamW", {"lr": LR}, 2, True),
    "sgd_momentum": (lambda: optzoo.sgd(LR, momentum=0.9),
                     lambda: optax.sgd(LR, momentum=0.9),
                     "SGD", {"lr": LR, "momentum": 0.9}, 1, True),
    "rmsprop": (lambda: optzoo.rmsprop(LR),
                lambda: optax.rmsprop(LR, decay=0.99, eps=1e-8,
                                      eps_in_sqrt=False),
                "RMSprop", {"lr": LR}, 1, False),
}


def run_config(method, n_params, n_leaves, repeats, with_torch):
  make_zoo, make_optax, torch_cls, torch_kw, n_state, has_fused = METHODS[method]
  params, grads = C.make_params(n_params, n_leaves)
  zoo, ox = make_zoo(), make_optax()
  st = zoo.init(params)
  steppers = {
      "zoo": C.Stepper(C.optimizer_step(zoo), params, st, grads),
      "zoo+apply": C.Stepper(_fused_apply_step(zoo), params, st, grads),
      "zoo plain": _Plain(C.optimizer_step(zoo), params, st, grads),
      "optax": C.Stepper(C.optimizer_step(ox), params, ox.init(params), grads),
      "memcpy": _Copy(),
      # The same bytes through a donated XLA elementwise kernel
      # (multi-threaded, unlike np.copyto): benchmarks/_common.py.
      "roofline kernel": C.Stepper(C.make_roofline(), params, zoo.init(params),
                                   grads),
  }
  hlo = steppers["zoo+apply"].compiled.as_text()
  kernel = {"adam": "optzoo_adam", "adamw": "optzoo_adam",
            "sgd_momentum": "optzoo_sgd"}.get(method)
  assert kernel is None or kernel in hlo, "the fused kernel was not used"
  torch_names = []
  if with_torch:
    impls = ([("torch fused", {"fused": True})] if has_fused else []) + [
        ("torch foreach", {"foreach": True})]
    for name, impl in impls:
      steppers[name] = _Torch(n_params, n_leaves, torch_cls, torch_kw, **impl)
      torch_names.append(name)
  samples = C.timed_samples(steppers, repeats)
  bandwidth = steppers["memcpy"].bytes_moved / min(samples["memcpy"])
  moved = 4 * (3 + 2 * n_state) * n_params  # read p, g, state; write p, state
  row = {"method": method, "params": n_params, "leaves": n_leaves,
         "bytes_per_param": moved / n_params,
         "bandwidth_GBs": bandwidth / 1e9, "roofline_ms": 1e3 * moved / bandwidth,
         "roofline_kernel_GBs": moved / min(samples["roofline kernel"]) / 1e9,
         "ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()
                if k != "memcpy"},
         "min_ms": {k: 1e3 * min(v) for k, v in samples.items() if k != "memcpy"},
         "ratios": {}, "min_ratios": {}}
  for a in ("zoo", "zoo+apply"):
    for b in ["zoo plain", "optax"] + torch_names:
      row["ratios"][f"{a} / {b}"] = C.paired_ratio(samples, a, b)
      row["min_ratios"][f"{a} / {b}"] = C.min_ratio(samples, a, b)
  del steppers
  return row


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--methods", default="adam",
                  help="comma list of " + ",".join(METHODS))
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
  configs = [(m, z) for m in args.methods.split(",") for z in args.sizes.split(",")]
  for method, size in configs:
    row = run_config(method, _parse_size(size), args.leaves, args.repeats,
                      with_torch)
    rows.append(row)
    print(f"\n{method}: {row['params']:,} params in {row['leaves']} leaves; memcpy "
          f"{row['bandwidth_GBs']:.1f} GB/s, roofline {row['roofline_ms']:.2f} ms; "
          f"XLA roofline kernel {row['roofline_kernel_GBs']:.1f} GB/s")
    for k, v in row["ms"].items():
      print(f"  {k:<18}{v:>9.2f} ms   (min {row['min_ms'][k]:.2f}, "
            f"roofline/this {row['roofline_ms'] / v:.2f})")
    for k, v in row["ratios"].items():
      print(f"  {k:<34}{v:>6.2f}   (fastest rounds {row['min_ratios'][k]:.2f})")
  info["loadavg_after"] = os.getloadavg()
  print("\nload average before/after:", info["loadavg_before"],
        info["loadavg_after"], " torch threads:", info["torch_threads"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
