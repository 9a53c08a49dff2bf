"""Lookahead step time: optzoo vs optax vs pytorch_optimizer, in one run.

    python -m benchmarks.lookahead_step_time --sizes 10M,50M --leaves 500

A step is a full training-loop optimizer step on float32 params in
``--leaves`` equal 1-D leaves: for JAX, ``apply_updates(params,
tx.update(grads, state, params))`` jitted with params and state donated; for
torch, ``optimizer.step()`` with gradients preset (``torch.no_grad``).
Compared, interleaved round by round in the same process:

* ``optzoo.lookahead(optzoo.adam(1e-3), 5, 0.5)`` and its inner
  ``optzoo.adam(1e-3)`` alone (the cost of the wrapper itself);
* ``optax.lookahead(optax.adam(1e-3), 5, 0.5)`` (on ``LookaheadParams``);
* ``pytorch_optimizer.Lookahead(torch.optim.Adam(..., foreach=...), k=5,
  alpha=0.5)`` with torch's default CPU Adam and with ``fused=True`` (the
  fastest torch inner step), if torch and pytorch_optimizer are installed.

Each sample averages 5 consecutive steps (one full sync period), so every
sample contains exactly one synchronisation. Prints a table (median ms per
step and ratios to pytorch_optimizer's Lookahead) and, with ``--json``,
writes the samples.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import optax

import optzoo
from benchmarks import _common as C

LR, K, ALPHA = 1e-3, 5, 0.5


def _parse_size(s: str) -> int:
  s = s.strip().upper()
  mult = {"K": 10**3, "M": 10**6}.get(s[-1], 1)
  return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def _jax_steppers(n: int, leaves: int) -> dict:
  params, grads = C.make_params(n, leaves)
  out = {}
  for name, tx in [("optzoo.adam", optzoo.adam(LR)),
                   ("optzoo.lookahead(adam)",
                    optzoo.lookahead(optzoo.adam(LR), K, ALPHA))]:
    out[name] = C.Stepper(C.optimizer_step(tx), params, tx.init(params), grads)
  ox = optax.lookahead(optax.adam(LR), K, ALPHA)
  lp = optax.LookaheadParams.init_synced(C.copy_tree(params))
  # optax.lookahead takes the plain gradients and LookaheadParams.
  out["optax.lookahead(adam)"] = C.Stepper(C.optimizer_step(ox), lp, ox.init(lp),
                                           grads)
  return out


class _TorchStepper:
  def __init__(self, make_opt, n, leaves):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_step_time  # pylint: disable=g-import-not-at-top
    self._torch = torch
    self.params = torch_step_time.make(n, leaves)
    self.opt = make_opt(self.params)
    self.calls = K

  def run(self, calls: int) -> float:
    with self._torch.no_grad():
      t0 = time.perf_counter()
      for _ in range(calls):
        self.opt.step()
      return (time.perf_counter() - t0) / calls

  def calibrate(self):
    self.run(K)


def _torch_steppers(n: int, leaves: int) -> dict:
  try:
    import pytorch_optimizer  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  la = lambda inner: (lambda ps: pytorch_optimizer.Lookahead(inner(ps), k=K,
                                                             alpha=ALPHA))
  return {
      "pytorch_optimizer.Lookahead(Adam)": _TorchStepper(
          la(lambda ps: torch.optim.Adam(ps, LR)), n, leaves),
      "pytorch_optimizer.Lookahead(Adam fused)": _TorchStepper(
          la(lambda ps: torch.optim.Adam(ps, LR, fused=True)), n, leaves),
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="10M,50M")
  ap.add_argument("--leaves", default="500")
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  info = C.machine_info()
  print(json.dumps(info))
  results = []
  for n in [_parse_size(s) for s in args.sizes.split(",")]:
    for leaves in [int(x) for x in args.leaves.split(",")]:
      steppers = {**_jax_steppers(n, leaves), **_torch_steppers(n, leaves)}
      for s in steppers.values():
        s.calibrate()
        s.calls = K  # one sync per sample
      samples = C.timed_samples(steppers, args.repeats)
      ref = next((k for k in steppers if k.startswith("pytorch_optimizer")
                  and "fused" not in k), None)
      print(f"\n{n:,} params, {leaves} leaves (median ms/step over"
            f" {args.repeats} rounds of {K} steps)")
      print(f"{'':<42}{'ms':>9}{'/ pytorch_optimizer':>21}")
      for k, v in samples.items():
        ratio = C.paired_ratio(samples, k, ref) if ref else float("nan")
        print(f"{k:<42}{1e3 * statistics.median(v):>9.2f}{ratio:>21.3f}")
        results.append({"method": k, "params": n, "leaves": leaves,
                        "median_s": statistics.median(v), "samples": v,
                        "ratio_to_pytorch_optimizer": ratio})
      del steppers
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
