"""8-bit Adam (optzoo.adam_8bit) step time vs optax.adam, in the same run.

    python -m benchmarks.quantized_step                    # 10M params, 20 leaves
    python -m benchmarks.quantized_step --sizes 10M --leaves 1,20 --repeats 31
    python -m benchmarks.quantized_step --against main     # + that revision's adam_8bit

Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.
Every leaf is quantized (``min_size=1``, block 2048). For each configuration
it prints the median step time (update + apply_updates, params and state
donated, float32) of adam_8bit and optax.adam over interleaved rounds
(benchmarks/_common.py: both run in every round, the order alternating), the
median of the per-round ratios, fastest over fastest, the CPU-time ratio
(``time.process_time`` summed over the rounds: less sensitive than wall time
to other jobs on a shared machine), state bytes per parameter of both, and
the 1-minute load average before and after (``os.getloadavg``). The row
``update_and_apply(adam_8bit)`` is the same optimizer stepped with
``optzoo.update_and_apply`` (the kernel applies the update in place). With
``--against REV`` the adam_8bit of a git revision (its
optzoo/_src/quantized.py, loaded beside the current package) runs in the
same rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import optax

import optzoo
from benchmarks import _common as C

LR = 1e-3
# The whole step in the 8-bit kernel (params applied in place).
WHOLE = "update_and_apply(adam_8bit)"


def _whole_step(tx):
  return lambda params, state, grads: optzoo.update_and_apply(
      tx, grads, state, params)


def _revision_adam_8bit(rev: str):
  """``adam_8bit`` from ``rev``'s optzoo/_src/quantized.py (it imports the
  current optzoo for alias/registry/validation)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = subprocess.run(["git", "show", f"{rev}:optzoo/_src/quantized.py"],
                       cwd=root, check=True, capture_output=True, text=True).stdout
  src = src.replace("@registry.register(", "@(lambda **kw: (lambda f: f))(")
  path = os.path.join(tempfile.mkdtemp(), f"quantized_{rev.replace('/', '_')}.py")
  with open(path, "w") as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.adam_8bit


class _CpuStepper(C.Stepper):
  """A Stepper that also sums the process CPU time of its runs."""

  cpu_s = 0.0
  steps = 0

  def run(self, calls: int) -> float:
    t0 = time.process_time()
    dt = super().run(calls)
    self.cpu_s += time.process_time() - t0
    self.steps += calls
    return dt


def bench(n_params: int, n_leaves: int, repeats: int, against=None) -> dict:
  params, grads = C.make_params(n_params, n_leaves)
  txs = {"adam_8bit": optzoo.adam_8bit(LR, min_size=1), "optax.adam": optax.adam(LR)}
  txs[WHOLE] = txs["adam_8bit"]
  if against is not None:
    txs["adam_8bit@rev"] = against(LR, min_size=1)
  steppers, nbytes = {}, {}
  for name, tx in txs.items():
    p = C.copy_tree(params)
    state = tx.init(p)
    nbytes[name] = C.tree_bytes(state) / n_params
    fn = (_whole_step(tx) if name == WHOLE else C.optimizer_step(tx))
    steppers[name] = _CpuStepper(fn, p, state, grads)
  for s in steppers.values():
    s.calibrate()
    s.cpu_s, s.steps = 0.0, 0
  load0 = os.getloadavg()[0]
  samples = C.timed_samples(steppers, repeats)
  load1 = os.getloadavg()[0]
  cpu = {k: s.cpu_s / s.steps for k, s in steppers.items()}
  row = {
      "params": n_params, "leaves": n_leaves, "repeats": repeats,
      "load_before": load0, "load_after": load1,
      "median_ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
      "cpu_ms": {k: 1e3 * v for k, v in cpu.items()},
      "state_bytes_per_param": nbytes,
      "ratio_median": C.paired_ratio(samples, "adam_8bit", "optax.adam"),
      "ratio_min": C.min_ratio(samples, "adam_8bit", "optax.adam"),
      "ratio_cpu": cpu["adam_8bit"] / cpu["optax.adam"],
      "whole_ratio_median": C.paired_ratio(samples, WHOLE, "optax.adam"),
      "whole_ratio_cpu": cpu[WHOLE] / cpu["optax.adam"],
      "compile_s": {k: s.compile_s for k, s in steppers.items()},
  }
  if against is not None:
    row["rev_ratio_median"] = C.paired_ratio(samples, "adam_8bit@rev", "optax.adam")
    row["rev_ratio_cpu"] = cpu["adam_8bit@rev"] / cpu["optax.adam"]
  for s in steppers.values():
    s.params = s.state = s.grads = s.compiled = None
  return row


def _parse_size(s: str) -> int:
  s = s.strip().upper()
  mult = {"K": 10**3, "M": 10**6}.get(s[-1], 1)
  return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def format_row(r: dict) -> str:
  m, c, b = r["median_ms"], r["cpu_ms"], r["state_bytes_per_param"]
  out = (f"{r['params'] // 10**6}M/{r['leaves']} leaves: adam_8bit {m['adam_8bit']:.2f} ms,"
         f" optax.adam {m['optax.adam']:.2f} ms; ratio median {r['ratio_median']:.2f},"
         f" min {r['ratio_min']:.2f}, cpu {r['ratio_cpu']:.2f}"
         f" (cpu ms {c['adam_8bit']:.2f} / {c['optax.adam']:.2f});"
         f" state {b['adam_8bit']:.3f} vs {b['optax.adam']:.3f} B/param"
         f" ({b['adam_8bit'] / b['optax.adam']:.3f}x); {WHOLE} {m[WHOLE]:.2f} ms,"
         f" ratio median {r['whole_ratio_median']:.2f}, cpu {r['whole_ratio_cpu']:.2f};"
         f" load {r['load_before']:.1f} -> {r['load_after']:.1f}")
  if "rev_ratio_median" in r:
    out += (f"; revision: {m['adam_8bit@rev']:.2f} ms, ratio median"
            f" {r['rev_ratio_median']:.2f}, cpu {r['rev_ratio_cpu']:.2f}")
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="10M")
  ap.add_argument("--leaves", default="20")
  ap.add_argument("--repeats", type=int, default=21)
  ap.add_argument("--against", default=None,
                  help="also time this git revision's adam_8bit (e.g. main)")
  ap.add_argument("--json", default=None)
  args = ap.parse_args(argv)
  against = _revision_adam_8bit(args.against) if args.against else None
  info = C.machine_info()
  print("  ".join(f"{k}={v}" for k, v in info.items()), flush=True)
  rows = []
  for size in (_parse_size(s) for s in args.sizes.split(",")):
    for leaves in (int(x) for x in args.leaves.split(",")):
      rows.append(bench(size, leaves, args.repeats, against))
      print(format_row(rows[-1]), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "against": args.against, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
