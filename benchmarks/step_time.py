"""Optimizer step time vs optax, vs a measured roofline, vs PyTorch.

    python -m benchmarks.step_time                 # 1M/10M/50M x 1/500 leaves
    python -m benchmarks.step_time --quick         # 1M and 10M, fewer repeats
    python -m benchmarks.step_time --sizes 10M --leaves 1 --methods adam,sgd_momentum
    python -m benchmarks.step_time --markdown benchmarks/step_time.md --json out.json
    python -m benchmarks.step_time --tree transformer --leaves 4 \\
        --methods adam,lars,lamb,adafactor,sm3    # + state bytes/param table

For every method and configuration it prints:

* ``zoo ms`` / ``optax ms``: median step time (update + apply, params and
  state donated, float32); ``zoo/optax`` (target <= 1.05): the median of
  the per-round ratios (optzoo, optax and the roofline run in turn in every
  round, the order alternating), and ``min`` optzoo's fastest round over
  optax's fastest round;
* ``roof``: roofline ratio = (bytes the step must move / bandwidth of a
  donated elementwise kernel moving the same bytes, measured in the same
  run) / zoo step time, i.e. the fraction of the measured memory bandwidth
  the step achieves (target >= 0.8 for elementwise methods at >= 10M);
  ``GB/s`` is the roofline kernel's bandwidth;
* ``B/param``: optzoo state bytes per parameter;
* ``compile s`` for optzoo and optax;
* ``zoo/torch`` when ``benchmarks/torch_step_time.json`` exists (written by
  ``/work/tvenv/bin/python benchmarks/torch_step_time.py``, same sizes).

Bytes the step must move = 2 x params (read, write) + grads (read) + 2 x state
(read, write); the roofline kernel moves exactly these bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import optax

import optzoo
from benchmarks import _common as C

LR = 1e-3


def _methods():
  """name -> (optzoo factory, optax factory or None, optax kind)."""
  return {
      "adam": (lambda: optzoo.adam(LR), lambda: optax.adam(LR)),
      "adamw": (lambda: optzoo.adamw(LR, weight_decay=1e-2),
                lambda: optax.adamw(LR, weight_decay=1e-2)),
      "sgd": (lambda: optzoo.sgd(LR), lambda: optax.sgd(LR)),
      "sgd_momentum": (lambda: optzoo.sgd(LR, momentum=0.9),
                       lambda: optax.sgd(LR, momentum=0.9)),
      "nesterov": (lambda: optzoo.nag(LR, momentum=0.9),
                   lambda: optax.sgd(LR, momentum=0.9, nesterov=True)),
      # optax's default puts eps inside the square root (g * rsqrt(v + eps));
      # the equivalent of torch's RMSprop (optzoo's default) is eps outside.
      "rmsprop": (lambda: optzoo.rmsprop(LR),
                  lambda: optax.rmsprop(LR, decay=0.99, eps=1e-8,
                                        eps_in_sqrt=False)),
      "adagrad": (lambda: optzoo.adagrad(LR), lambda: optax.adagrad(LR)),
      "radam": (lambda: optzoo.radam(LR), lambda: optax.radam(LR)),
      # Same cost class, different math: optax.amsgrad keeps the max of the
      # *bias-corrected* v and optax.nadam uses Dozat's constant-momentum
      # form, while optzoo follows torch (max of raw v; NAdam's momentum
      # schedule with its running product).
      "amsgrad": (lambda: optzoo.amsgrad(LR), lambda: optax.amsgrad(LR)),
      "nadam": (lambda: optzoo.nadam(LR), lambda: optax.nadam(LR)),
      "lookahead": (lambda: optzoo.lookahead(optzoo.adam(LR), 5, 0.5),
                    "lookahead"),
      # optzoo-only variants, compared with optax's adam:
      "adam+group_leaves": (lambda: optzoo.group_leaves(optzoo.adam(LR)),
                            lambda: optax.adam(LR)),
      "adam(mu bf16)": (lambda: optzoo.adam(LR, mu_dtype=jnp.bfloat16),
                        lambda: optax.adam(LR, mu_dtype=jnp.bfloat16)),
      # Large-batch and memory-light methods. Same cost class, different
      # math (see each optzoo docstring): optax.lars adapts every leaf and
      # uses ||g + wd w||; optax.lamb bias-corrects both moments; optax's
      # adafactor factors only dims >= 128 and has no 1/sqrt(t) cap; optax.sm3
      # puts eps outside the root. Compare them on --tree transformer.
      "lars": (lambda: optzoo.lars(LR, weight_decay=1e-4),
               lambda: optax.lars(LR, weight_decay=1e-4)),
      "lamb": (lambda: optzoo.lamb(LR, weight_decay=1e-2),
               lambda: optax.lamb(LR, weight_decay=1e-2)),
      "adafactor": (lambda: optzoo.adafactor(LR), lambda: optax.adafactor(LR)),
      "sm3": (lambda: optzoo.sm3(LR), lambda: optax.sm3(LR, momentum=0.0)),
      # 8-bit moments (every leaf quantized, block 2048), vs float32 optax
      # adam: the state is ~4x smaller, the step does more arithmetic
      # (block absmax, encode and decode; benchmarks/quantized_step.py).
      "adam_8bit": (lambda: optzoo.adam_8bit(LR, min_size=1),
                    lambda: optax.adam(LR)),
  }

# Methods whose state is not params-sized: on --tree transformer their state
# bytes per parameter must stay <= this fraction of Adam's.
FACTORED = ("adafactor", "sm3")
FACTORED_MAX_FRACTION_OF_ADAM = 0.05


ELEMENTWISE = {"adam", "adamw", "sgd", "sgd_momentum", "nesterov", "rmsprop",
               "adagrad", "radam", "amsgrad", "nadam", "lookahead",
               "adam+group_leaves", "adam(mu bf16)"}


def _parse_size(s: str) -> int:
  s = s.strip().upper()
  mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(s[-1], 1)
  return int(float(s[:-1] if s[-1] in "KMG" else s) * mult)


def _label(n: int) -> str:
  return f"{n // 10**6}M" if n % 10**6 == 0 else str(n)


def bench_one(name, zoo_factory, optax_factory, n_params, n_leaves, repeats,
              tree="flat"):
  if tree == "transformer":
    params, grads = C.make_transformer_params(n_leaves)
    n_params = sum(x.size for x in jax.tree.leaves(params))
  else:
    params, grads = C.make_params(n_params, n_leaves)
  steppers = {}
  zoo = zoo_factory()
  p = C.copy_tree(params)
  zoo_state = zoo.init(p)
  state_bytes = C.tree_bytes(zoo_state)
  steppers["zoo"] = C.Stepper(C.optimizer_step(zoo), p, zoo_state, grads)
  if optax_factory == "lookahead":
    ox = optax.lookahead(optax.adam(LR), 5, 0.5)
    lp = optax.LookaheadParams.init_synced(C.copy_tree(params))
    steppers["optax"] = C.Stepper(C.optimizer_step(ox), lp, ox.init(lp), grads)
  elif optax_factory is not None:
    ox = optax_factory()
    p = C.copy_tree(params)
    steppers["optax"] = C.Stepper(C.optimizer_step(ox), p, ox.init(p), grads)
  # Roofline: the same pytree of bytes as the optzoo step.
  p = C.copy_tree(params)
  steppers["roof"] = C.Stepper(C.make_roofline(), p,
                               C.copy_tree(zoo.init(p)), grads)
  del params
  samples = C.timed_samples(steppers, repeats)
  times = {k: statistics.median(v) for k, v in samples.items()}
  pbytes = 4 * n_params
  moved = 2 * pbytes + pbytes + 2 * state_bytes
  row = {
      "method": name, "params": n_params, "leaves": n_leaves,
      "zoo_s": times["zoo"], "roof_s": times["roof"],
      "optax_s": times.get("optax"),
      "bytes_moved": moved, "bandwidth_GBs": moved / times["roof"] / 1e9,
      "roof_ratio": times["roof"] / times["zoo"],
      "state_bytes_per_param": state_bytes / n_params,
      "zoo_compile_s": steppers["zoo"].compile_s,
      "optax_compile_s": (steppers["optax"].compile_s
                          if "optax" in steppers else None),
      "optax_state_bytes_per_param": (
          C.tree_bytes(steppers["optax"].state) / n_params
          if "optax" in steppers else None),
      "tree": tree,
  }
  # Two estimates: the median of per-round ratios (robust to machine drift),
  # and fastest round over fastest round (interference only adds time).
  row["zoo_over_optax"] = (C.paired_ratio(samples, "zoo", "optax")
                           if "optax" in times else None)
  row["zoo_over_optax_min"] = (C.min_ratio(samples, "zoo", "optax")
                               if "optax" in times else None)
  for s in steppers.values():  # free the buffers before the next config
    s.params = s.state = s.grads = s.compiled = None
  return row


def _fmt(x, f):
  return "-" if x is None else format(x, f)


def _torch_ratio(row, torch_times):
  """optzoo's step time over torch's for the same configuration, or None."""
  key = f"{row['method']}|{row['params']}|{row['leaves']}"
  if not torch_times or key not in torch_times:
    return None
  return row["zoo_s"] / torch_times[key]


def format_table(rows, torch_times=None):
  head = (f"{'method':<18}{'params':>7}{'leaves':>7}{'zoo ms':>9}"
          f"{'optax ms':>9}{'zoo/optax':>10}{'min':>7}{'roof':>6}{'GB/s':>6}"
          f"{'B/param':>8}{'compile zoo/optax s':>21}{'zoo/torch':>10}")
  lines = [head, "-" * len(head)]
  for r in rows:
    tt = _torch_ratio(r, torch_times)
    comp = (f"{r['zoo_compile_s']:.2f}/"
            f"{_fmt(r['optax_compile_s'], '.2f')}")
    lines.append(
        f"{r['method']:<18}{_label(r['params']):>7}{r['leaves']:>7}"
        f"{1e3 * r['zoo_s']:>9.2f}{_fmt(r['optax_s'] and 1e3 * r['optax_s'], '9.2f'):>9}"
        f"{_fmt(r['zoo_over_optax'], '.3f'):>10}"
        f"{_fmt(r.get('zoo_over_optax_min'), '.3f'):>7}{r['roof_ratio']:>6.2f}"
        f"{r['bandwidth_GBs']:>6.1f}{r['state_bytes_per_param']:>8.1f}"
        f"{comp:>21}{_fmt(tt, '.2f'):>10}")
  return "\n".join(lines)


def format_markdown(rows, torch_times=None):
  out = ["| method | params | leaves | zoo ms | optax ms | zoo/optax |"
         " zoo/optax (min) | roofline ratio | GB/s | state B/param |"
         " compile zoo s | compile optax s | zoo/torch |", "|" + "---|" * 13]
  for r in rows:
    tt = _torch_ratio(r, torch_times)
    out.append(
        f"| {r['method']} | {_label(r['params'])} | {r['leaves']} |"
        f" {1e3 * r['zoo_s']:.2f} | {_fmt(r['optax_s'] and 1e3 * r['optax_s'], '.2f')} |"
        f" {_fmt(r['zoo_over_optax'], '.3f')} |"
        f" {_fmt(r.get('zoo_over_optax_min'), '.3f')} | {r['roof_ratio']:.2f} |"
        f" {r['bandwidth_GBs']:.1f} | {r['state_bytes_per_param']:.1f} |"
        f" {r['zoo_compile_s']:.2f} | {_fmt(r['optax_compile_s'], '.2f')} |"
        f" {_fmt(tt, '.2f')} |")
  return "\n".join(out)


def state_memory_rows(n_matrices=4):
  """State bytes per parameter (jax.eval_shape, no allocation) on the
  transformer-like tree, optzoo and optax, for Adam and the four
  large-scale methods; ``fraction_of_adam`` is optzoo's over optzoo Adam's."""
  params, _ = C.make_transformer_params(n_matrices)
  methods = _methods()
  adam = C.state_bytes_per_param(methods["adam"][0](), params)
  rows = []
  for name in ("adam", "lars", "lamb", "adafactor", "sm3"):
    zf, of = methods[name]
    zoo = C.state_bytes_per_param(zf(), params)
    rows.append({"method": name, "zoo_B_per_param": zoo,
                 "optax_B_per_param": C.state_bytes_per_param(of(), params),
                 "fraction_of_adam": zoo / adam})
  return rows


def format_state_memory(leaves):
  lines = []
  for n in leaves:
    lines.append(f"state bytes/param, {n} x (1024, 4096) matrices + biases:")
    lines.append(f"{'method':<12}{'optzoo':>9}{'optax':>9}{'x adam':>9}")
    for r in state_memory_rows(n):
      ok = ("" if r["method"] not in FACTORED else
            ("  ok" if r["fraction_of_adam"] <= FACTORED_MAX_FRACTION_OF_ADAM
             else "  TOO BIG"))
      lines.append(f"{r['method']:<12}{r['zoo_B_per_param']:>9.4f}"
                   f"{r['optax_B_per_param']:>9.4f}{r['fraction_of_adam']:>9.4f}{ok}")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="1M,10M,50M")
  ap.add_argument("--leaves", default="1,500")
  ap.add_argument("--methods", default=",".join(_methods()))
  ap.add_argument("--repeats", type=int, default=21)
  ap.add_argument("--quick", action="store_true",
                  help="sizes 1M,10M and 5 repeats")
  ap.add_argument("--tree", choices=("flat", "transformer"), default="flat",
                  help="flat: --leaves 1-D leaves of --sizes parameters in all;"
                  " transformer: --leaves (1024, 4096) matrices with biases"
                  " (--sizes is ignored), for the factored methods")
  ap.add_argument("--json", default=None, help="write the rows here")
  ap.add_argument("--markdown", default=None, help="write a markdown table")
  ap.add_argument("--torch-json",
                  default=os.path.join(os.path.dirname(__file__),
                                       "torch_step_time.json"))
  args = ap.parse_args(argv)
  if args.quick:
    args.sizes, args.repeats = "1M,10M", 5
  sizes = [_parse_size(s) for s in args.sizes.split(",")]
  if args.tree == "transformer":
    sizes = sizes[:1]
  leaves = [int(x) for x in args.leaves.split(",")]
  methods = _methods()
  names = [m.strip() for m in args.methods.split(",")]
  for n in names:
    if n not in methods:
      sys.exit(f"unknown method {n!r}; choose from {sorted(methods)}")
  torch_times = None
  # The torch times are CPU times: compare only when this run is on the CPU.
  if (args.torch_json and os.path.exists(args.torch_json)
      and jax.default_backend() == "cpu"):
    with open(args.torch_json) as f:
      torch_times = json.load(f).get("times")
  info = C.machine_info()
  print("  ".join(f"{k}={v}" for k, v in info.items()), flush=True)
  rows = []
  for n_params in sizes:
    for n_leaves in leaves:
      for name in names:
        zf, of = methods[name]
        row = bench_one(name, zf, of, n_params, n_leaves, args.repeats,
                        tree=args.tree)
        rows.append(row)
        print(format_table([row], torch_times).splitlines()[-1], flush=True)
  print()
  print(format_table(rows, torch_times))
  elem = [r for r in rows if r["method"] in ELEMENTWISE and r["params"] >= 10**7]
  cmp = [r for r in rows if r["zoo_over_optax"] is not None]
  if cmp:
    worst = max(cmp, key=lambda r: r["zoo_over_optax"])
    print(f"\nworst zoo/optax: {worst['zoo_over_optax']:.3f} ({worst['method']},"
          f" {_label(worst['params'])}, {worst['leaves']} leaves)")
  if elem:
    worst = min(elem, key=lambda r: r["roof_ratio"])
    print(f"worst roofline ratio at >=10M: {worst['roof_ratio']:.2f}"
          f" ({worst['method']}, {_label(worst['params'])},"
          f" {worst['leaves']} leaves)")
  if args.tree == "transformer":
    print()
    print(format_state_memory(leaves))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "rows": rows}, f, indent=1)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(format_markdown(rows, torch_times) + "\n")


if __name__ == "__main__":
  main()
