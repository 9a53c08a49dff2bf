"""PyTorch optimizer step times on this CPU, for benchmarks/step_time.py.

Optional; needs torch (and pytorch_optimizer for Lookahead), e.g.

    /work/tvenv/bin/python benchmarks/torch_step_time.py --sizes 1M,10M,50M

writes ``benchmarks/torch_step_time.json`` (``{"times": {"method|params|
leaves": seconds}}``), which ``python -m benchmarks.step_time`` merges as the
``zoo/torch`` column. float32, torch's default implementation for CPU
tensors, ``optimizer.step()`` only (gradients preset), median of repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def _parse_size(s):
  s = s.strip().upper()
  mult = {"K": 10**3, "M": 10**6}.get(s[-1], 1)
  return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def make(n_params, n_leaves):
  sizes = [n_params // n_leaves] * n_leaves
  sizes[-1] += n_params - sum(sizes)
  g = torch.Generator().manual_seed(0)
  params = []
  for n in sizes:
    p = torch.nn.Parameter(torch.randn(n, generator=g))
    p.grad = 1e-2 * torch.randn(n, generator=g)
    params.append(p)
  return params


def optimizers(lr=1e-3):
  opts = {
      "adam": lambda ps: torch.optim.Adam(ps, lr),
      "adamw": lambda ps: torch.optim.AdamW(ps, lr, weight_decay=1e-2),
      "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr, momentum=0.9),
      "nesterov": lambda ps: torch.optim.SGD(ps, lr, momentum=0.9,
                                             nesterov=True),
      "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr, alpha=0.99, eps=1e-8),
      "adagrad": lambda ps: torch.optim.Adagrad(ps, lr),
      "radam": lambda ps: torch.optim.RAdam(ps, lr),
      "sgd": lambda ps: torch.optim.SGD(ps, lr),
      "amsgrad": lambda ps: torch.optim.Adam(ps, lr, amsgrad=True),
      "nadam": lambda ps: torch.optim.NAdam(ps, lr),
  }
  try:
    import pytorch_optimizer  # pylint: disable=g-import-not-at-top
    opts["lookahead"] = lambda ps: pytorch_optimizer.Lookahead(
        torch.optim.Adam(ps, lr), k=5, alpha=0.5)
  except ImportError:
    pass
  return opts


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="1M,10M,50M")
  ap.add_argument("--leaves", default="1,500")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                "torch_step_time.json"))
  args = ap.parse_args()
  torch.set_num_threads(args.threads)
  times = {}
  for n in [_parse_size(s) for s in args.sizes.split(",")]:
    for leaves in [int(x) for x in args.leaves.split(",")]:
      for name, make_opt in optimizers().items():
        params = make(n, leaves)
        opt = make_opt(params)
        with torch.no_grad():
          for _ in range(2):
            opt.step()
          samples = []
          for _ in range(args.repeats):
            t0 = time.perf_counter()
            opt.step()
            samples.append(time.perf_counter() - t0)
        times[f"{name}|{n}|{leaves}"] = statistics.median(samples)
        print(f"{name:<14}{n:>10}{leaves:>6}"
              f"{1e3 * times[f'{name}|{n}|{leaves}']:>10.2f} ms", flush=True)
        del opt, params
  with open(args.out, "w") as f:
    json.dump({"torch": torch.__version__, "threads": args.threads,
               "cpu": platform.processor(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "times": times}, f, indent=1)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
