"""Golden trajectories of LARS, LAMB, Adafactor and SM3 (large-scale methods).

Run with the venv that has torch (never in CI; the outputs are committed)::

    python tests/gen_large_scale_fixtures.py

Requires torch 2.13 and pytorch_optimizer 4.1. Everything runs in float64.

Outputs (``tests/fixtures/``):

* ``large_scale_problem.npz``: the test problem. Params ``b`` (5,), ``s`` (),
  ``t`` (2, 3, 4), ``w`` (4, 6), ``z`` (3, 3) (starts at zero: the zero-norm
  branches of the trust ratios and the RMS floors). With
  ``x = concat(ravel(leaf) for leaf in sorted keys)`` (63 numbers),
  ``f(x) = 1/2 x^T A x - c^T x + 0.1 * sum(x^4) / 63``, gradient
  ``A x - c + 0.4 x^3 / 63`` (``A``: 63x63 SPD, eigenvalues 1..20).
* ``large_scale_<method>.npz`` for method in lars, lamb, adafactor, sm3; per
  setting ``k``: ``s<k>_kwargs`` (JSON of the *optzoo* keyword arguments; a
  ``learning_rate`` of ``{"schedule": "exponential", "init": a, "rate": r}``
  means ``lr(count) = a * r**count``), ``s<k>_ref`` (the reference call),
  ``s<k>_<leaf>`` (trajectory of each leaf at ``steps``), and ``steps``
  (entry i is the params after step ``steps[i]``, counted from 1: every step
  up to 20, then every 5th, and the last, 300).
  Settings listed in ``OPEN_LOOP`` (a closed loop amplifies last-bit
  differences there: LAMB's normalised steps never settle, SM3's min/max
  covers switch) also store ``s<k>_full_<leaf>``, the params before step 1 and after every step
  (301 entries), for an open-loop comparison; ``open_loop`` lists them.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytorch_optimizer
import torch

torch.set_default_dtype(torch.float64)

NUM_STEPS = 300
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
STEPS = np.array(sorted(set(range(1, 21)) | set(range(25, NUM_STEPS + 1, 5))
                        | {NUM_STEPS}), dtype=np.int32)
SHAPES = {"b": (5,), "s": (), "t": (2, 3, 4), "w": (4, 6), "z": (3, 3)}


def make_problem():
  rng = np.random.default_rng(20261202)
  n = sum(int(np.prod(s)) for s in SHAPES.values())
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * np.geomspace(1.0, 20.0, n)) @ q.T
  a = 0.5 * (a + a.T)
  c = rng.normal(size=n)
  p0 = {}
  for k in sorted(SHAPES):
    p0[k] = (np.zeros(SHAPES[k]) if k == "z"
             else np.asarray(rng.normal(size=SHAPES[k])))
  return a, c, p0


def exp_sched(init, rate):
  return {"schedule": "exponential", "init": init, "rate": rate}


def lr_at(lr, t):
  if isinstance(lr, dict):
    return lr["init"] * lr["rate"] ** t
  return lr


PO = pytorch_optimizer

# (optzoo kwargs, reference constructor from (params, lr), description extras)
SETTINGS = {
    "lars": [
        (dict(), lambda p, lr: PO.LARS(p, foreach=False)),
        (dict(learning_rate=0.05, trust_coefficient=0.5),
         lambda p, lr: PO.LARS(p, lr=lr, trust_coefficient=0.5, foreach=False)),
        (dict(learning_rate=0.05, trust_coefficient=0.3, weight_decay=1e-2, nesterov=True),
         lambda p, lr: PO.LARS(p, lr=lr, trust_coefficient=0.3, weight_decay=1e-2,
                               nesterov=True, foreach=False)),
        (dict(learning_rate=0.08, momentum=0.8, dampening=0.3, weight_decay=1e-3,
              trust_coefficient=0.2),
         lambda p, lr: PO.LARS(p, lr=lr, momentum=0.8, dampening=0.3, weight_decay=1e-3,
                               trust_coefficient=0.2)),  # foreach path
        (dict(learning_rate=0.08, momentum=0.0, weight_decay=1e-1, trust_coefficient=0.5),
         lambda p, lr: PO.LARS(p, lr=lr, momentum=0.0, weight_decay=1e-1,
                               trust_coefficient=0.5, foreach=False)),
        (dict(learning_rate=exp_sched(0.1, 0.99), trust_coefficient=0.2, weight_decay=1e-2,
              nesterov=True, dampening=0.1),
         lambda p, lr: PO.LARS(p, lr=lr, trust_coefficient=0.2, weight_decay=1e-2,
                               nesterov=True, dampening=0.1, foreach=False)),
    ],
    "lamb": [
        (dict(learning_rate=1e-2), lambda p, lr: PO.Lamb(p, lr=lr, foreach=False)),
        (dict(learning_rate=1e-2, weight_decay=1e-2),
         lambda p, lr: PO.Lamb(p, lr=lr, weight_decay=1e-2, foreach=False)),
        (dict(learning_rate=1e-2, weight_decay=1e-2, weight_decouple=False,
              grad_averaging=False),
         lambda p, lr: PO.Lamb(p, lr=lr, weight_decay=1e-2, weight_decouple=False,
                               grad_averaging=False, foreach=False)),
        (dict(learning_rate=2e-2, weight_decay=1e-1, fixed_decay=True, pre_norm=True,
              max_grad_norm=1.0),
         lambda p, lr: PO.Lamb(p, lr=lr, weight_decay=1e-1, fixed_decay=True,
                               pre_norm=True, max_grad_norm=1.0, foreach=False)),
        (dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-8, adam=True, adam_debias=True),
         lambda p, lr: PO.Lamb(p, lr=lr, betas=(0.8, 0.99), eps=1e-8, adam=True,
                               adam_debias=True, foreach=False)),
        (dict(learning_rate=1e-2, pre_norm=True, max_grad_norm=0.0, weight_decay=1e-2),
         lambda p, lr: PO.Lamb(p, lr=lr, pre_norm=True, max_grad_norm=0.0,
                               weight_decay=1e-2)),  # foreach path
        (dict(learning_rate=exp_sched(2e-2, 0.99), weight_decay=5e-2, max_weight_norm=1.5),
         "lamb_clamp"),
    ],
    "adafactor": [
        (dict(), lambda p, lr: torch.optim.Adafactor(p, foreach=False)),
        (dict(learning_rate=0.05, weight_decay=0.1, decay_rate=-0.5, clip_threshold=1.5),
         lambda p, lr: torch.optim.Adafactor(p, lr=lr, weight_decay=0.1, beta2_decay=-0.5,
                                             d=1.5, foreach=False)),
        (dict(learning_rate=0.3, eps=1e-3, eps_scale=1e-2),
         lambda p, lr: torch.optim.Adafactor(p, lr=lr, eps=(1e-3, 1e-2), foreach=False)),
        (dict(learning_rate=exp_sched(0.2, 0.99), weight_decay=0.05),
         lambda p, lr: torch.optim.Adafactor(p, lr=lr, weight_decay=0.05, foreach=True)),
        (dict(variant="paper"),
         lambda p, lr: PO.AdaFactor(p, momentum_dtype=torch.float64, foreach=False)),
        (dict(variant="paper", learning_rate=0.05, relative_step=False,
              scale_parameter=False, b1=0.0),
         lambda p, lr: PO.AdaFactor(p, lr=lr, betas=(None, 0.999), relative_step=False,
                                    scale_parameter=False, momentum_dtype=torch.float64,
                                    foreach=False)),
        (dict(variant="paper", warmup_init=True, weight_decay=0.1, clip_threshold=0.5,
              decay_rate=-0.6, b1=0.8, b2=0.99),
         lambda p, lr: PO.AdaFactor(p, warmup_init=True, weight_decay=0.1,
                                    clip_threshold=0.5, decay_rate=-0.6, betas=(0.8, 0.99),
                                    momentum_dtype=torch.float64, foreach=False)),
        (dict(variant="paper", weight_decouple=False, weight_decay=0.05,
              relative_step=False, learning_rate=0.02, eps=1e-10, eps_scale=1e-2),
         lambda p, lr: PO.AdaFactor(p, lr=lr, weight_decouple=False, weight_decay=0.05,
                                    relative_step=False, eps1=1e-10, eps2=1e-2,
                                    momentum_dtype=torch.float64, foreach=False)),
        (dict(variant="paper", fixed_decay=True, weight_decay=1e-3,
              learning_rate=exp_sched(0.03, 0.99), relative_step=False),
         lambda p, lr: PO.AdaFactor(p, lr=lr, fixed_decay=True, weight_decay=1e-3,
                                    relative_step=False, momentum_dtype=torch.float64)),
    ],
    "sm3": [
        (dict(), lambda p, lr: PO.SM3(p, foreach=False)),
        (dict(learning_rate=0.05, momentum=0.9),
         lambda p, lr: PO.SM3(p, lr=lr, momentum=0.9, foreach=False)),
        (dict(learning_rate=0.05, momentum=0.5, b2=0.9, eps=1e-8),
         lambda p, lr: PO.SM3(p, lr=lr, momentum=0.5, beta=0.9, eps=1e-8, foreach=False)),
        (dict(learning_rate=exp_sched(0.05, 0.995), b2=0.5),
         lambda p, lr: PO.SM3(p, lr=lr, beta=0.5, foreach=True)),
    ],
}


OPEN_LOOP = {"lamb": (0, 3, 6), "sm3": (2,)}


def _lamb_clamp(params, lr):
  opt = PO.Lamb(params, lr=lr, weight_decay=5e-2, foreach=False)
  opt.clamp = 1.5   # the reference's weight-norm clip is a class attribute
  return opt


def run(make, kwargs, a, c, p0):
  keys = sorted(p0)
  params = [torch.tensor(p0[k], dtype=torch.float64, requires_grad=True) for k in keys]
  lr = kwargs.get("learning_rate", None)
  lr0 = lr_at(lr, 0) if lr is not None else None
  opt = _lamb_clamp(params, lr0) if make == "lamb_clamp" else make(params, lr0)
  at = torch.tensor(a)
  ct = torch.tensor(c)
  n = a.shape[0]
  traj = {k: [] for k in keys}
  full = {k: [p0[k].copy()] for k in keys}
  for step in range(1, NUM_STEPS + 1):
    if isinstance(lr, dict):
      for g in opt.param_groups:
        g["lr"] = lr_at(lr, step - 1)
    with torch.no_grad():
      x = torch.cat([p.reshape(-1) for p in params])
      grad = at @ x - ct + 0.4 * x ** 3 / n
      off = 0
      for p in params:
        m = p.numel()
        p.grad = grad[off:off + m].reshape(p.shape).clone()
        off += m
    opt.step()
    for k, p in zip(keys, params):
      full[k].append(p.detach().numpy().copy())
    if step in STEPS:
      for k, p in zip(keys, params):
        traj[k].append(p.detach().numpy().copy())
  desc = f"{type(opt).__module__}.{type(opt).__name__}({opt.defaults})"
  return ({k: np.asarray(v) for k, v in traj.items()},
          {k: np.asarray(v) for k, v in full.items()}, desc)


def main():
  os.makedirs(OUT, exist_ok=True)
  a, c, p0 = make_problem()
  np.savez_compressed(os.path.join(OUT, "large_scale_problem.npz"), a=a, c=c,
                      num_steps=NUM_STEPS, **{f"p0_{k}": v for k, v in p0.items()})
  for method, settings in SETTINGS.items():
    out = {"steps": STEPS, "open_loop": np.asarray(OPEN_LOOP.get(method, ()), np.int32)}
    for k, (kw, make) in enumerate(settings):
      traj, full, desc = run(make, kw, a, c, p0)
      if k in OPEN_LOOP.get(method, ()):
        for leaf, v in full.items():
          out[f"s{k}_full_{leaf}"] = v
      out[f"s{k}_kwargs"] = json.dumps(kw)
      out[f"s{k}_ref"] = desc
      for leaf, v in traj.items():
        out[f"s{k}_{leaf}"] = v
      moved = max(float(np.max(np.abs(v[-1] - p0[leaf]))) for leaf, v in traj.items())
      print(f"{method} s{k}: moved {moved:.3g}; {desc[:110]}")
    path = os.path.join(OUT, f"large_scale_{method}.npz")
    np.savez_compressed(path, **out)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
  main()
