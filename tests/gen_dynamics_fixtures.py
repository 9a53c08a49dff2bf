"""Generates the golden fixtures of the training-dynamics area.

Run with the torch oracle venv (never in CI; the tests only read the .npz):

    /work/tvenv/bin/python tests/gen_dynamics_fixtures.py

Writes into tests/fixtures/:
  dynamics_schedules.npz  lr traces of torch.optim.lr_scheduler.CyclicLR
                          (cycle_momentum=False), CosineAnnealingWarmRestarts,
                          OneCycleLR (lr and momentum) and LinearLR.
  dynamics_lookahead.npz  pytorch_optimizer.Lookahead around torch Adam and
                          torch SGD(momentum) on a small non-quadratic problem.
  dynamics_ema.npz        torch.optim.swa_utils.AveragedModel with
                          get_ema_multi_avg_fn / SWA averaging.

Everything runs in float64 with foreach=False. Step i of a trace is the value
used by the (i+1)-th optimizer step (torch: read `param_groups[0]['lr']`
before `opt.step()`, then call `sched.step()`).
"""
import os

import numpy as np
import torch
from torch.optim import lr_scheduler as lrs
from torch.optim import swa_utils
import pytorch_optimizer

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")


def _dummy_opt(lr=0.1, momentum=0.0):
  p = torch.nn.Parameter(torch.zeros(1))
  return torch.optim.SGD([p], lr=lr, momentum=momentum, foreach=False)


def _trace(make_sched, steps, lr=0.1, momentum=0.0, with_momentum=False):
  opt = _dummy_opt(lr, momentum)
  sched = make_sched(opt)
  lrs_, moms = [], []
  for _ in range(steps):
    lrs_.append(opt.param_groups[0]["lr"])
    moms.append(opt.param_groups[0].get("momentum", np.nan))
    opt.step()
    sched.step()
  if with_momentum:
    return np.asarray(lrs_, np.float64), np.asarray(moms, np.float64)
  return np.asarray(lrs_, np.float64)


def schedules():
  out = {}
  steps = 260
  # CyclicLR, lr only.
  out["cyclic_triangular"] = _trace(lambda o: lrs.CyclicLR(
      o, base_lr=0.01, max_lr=0.1, step_size_up=7, cycle_momentum=False), steps)
  out["cyclic_triangular2"] = _trace(lambda o: lrs.CyclicLR(
      o, base_lr=0.001, max_lr=0.05, step_size_up=5, step_size_down=8,
      mode="triangular2", cycle_momentum=False), steps)
  out["cyclic_exp_range"] = _trace(lambda o: lrs.CyclicLR(
      o, base_lr=0.002, max_lr=0.2, step_size_up=6, step_size_down=3,
      mode="exp_range", gamma=0.99, cycle_momentum=False), steps)
  # SGDR.
  out["sgdr_t10"] = _trace(lambda o: lrs.CosineAnnealingWarmRestarts(
      o, T_0=10), steps, lr=0.1)
  out["sgdr_t3_mult2"] = _trace(lambda o: lrs.CosineAnnealingWarmRestarts(
      o, T_0=3, T_mult=2, eta_min=0.001), steps, lr=0.05)
  out["sgdr_t7_mult3"] = _trace(lambda o: lrs.CosineAnnealingWarmRestarts(
      o, T_0=7, T_mult=3, eta_min=0.0), steps, lr=1.0)
  # OneCycleLR (lr + momentum), total_steps values only (it raises after).
  cases = {
      "onecycle_cos": dict(max_lr=0.1, total_steps=250),
      "onecycle_linear": dict(max_lr=0.3, total_steps=233, pct_start=0.25,
                              anneal_strategy="linear", div_factor=10.0,
                              final_div_factor=100.0),
      "onecycle_3phase": dict(max_lr=0.2, total_steps=241, pct_start=0.35,
                              three_phase=True, base_momentum=0.8,
                              max_momentum=0.9),
      "onecycle_3phase_linear": dict(max_lr=1.0, total_steps=210,
                                     anneal_strategy="linear",
                                     three_phase=True),
  }
  for name, kw in cases.items():
    lr_, mom = _trace(lambda o, kw=kw: lrs.OneCycleLR(o, **kw),
                      kw["total_steps"], momentum=0.9, with_momentum=True)
    out[name] = lr_
    out[name + "_momentum"] = mom
  # LinearLR.
  out["linear_default"] = _trace(lambda o: lrs.LinearLR(o), steps, lr=0.1)
  out["linear_w50"] = _trace(lambda o: lrs.LinearLR(
      o, start_factor=0.1, end_factor=1.0, total_iters=50), steps, lr=0.3)
  out["linear_down"] = _trace(lambda o: lrs.LinearLR(
      o, start_factor=1.0, end_factor=0.25, total_iters=40), steps, lr=0.2)
  return out


def problem(seed=3):
  """Two tensors W (3, 4) and b (4,); a coupled non-quadratic loss."""
  rng = np.random.default_rng(seed)
  n = 16
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * np.geomspace(1.0, 30.0, n)) @ q.T
  c = rng.normal(size=n)
  w0 = rng.normal(size=(3, 4))
  b0 = rng.normal(size=(4,))
  return a, c, w0, b0


def torch_loss(w, b, a, c):
  x = torch.cat([w.reshape(-1), b.reshape(-1)])
  return 0.5 * x @ a @ x - c @ x + 0.1 * torch.sum(x ** 4) / x.numel()


def lookahead():
  a, c, w0, b0 = problem()
  out = {"a": a, "c": c, "w0": w0, "b0": b0}
  ta, tc = torch.tensor(a), torch.tensor(c)
  steps = 400
  cases = {
      "adam": (lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=False), 5, 0.5),
      "adam_k7_a08": (lambda ps: torch.optim.Adam(ps, lr=3e-2, foreach=False),
                      7, 0.8),
      "sgdm": (lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9,
                                          foreach=False), 5, 0.5),
  }
  for name, (make, k, alpha) in cases.items():
    w = torch.nn.Parameter(torch.tensor(w0))
    b = torch.nn.Parameter(torch.tensor(b0))
    opt = pytorch_optimizer.Lookahead(make([w, b]), k=k, alpha=alpha)
    tw, tb = [], []
    for _ in range(steps):
      opt.zero_grad()
      torch_loss(w, b, ta, tc).backward()
      opt.step()
      tw.append(w.detach().numpy().copy())
      tb.append(b.detach().numpy().copy())
    out[name + "_w"] = np.stack(tw)
    out[name + "_b"] = np.stack(tb)
    out[name + "_k"] = np.asarray(k)
    out[name + "_alpha"] = np.asarray(alpha)
  return out


def ema():
  rng = np.random.default_rng(5)
  steps = 60
  seq = rng.normal(size=(steps, 5))
  out = {"seq": seq}
  for name, fn in (("ema09", swa_utils.get_ema_multi_avg_fn(0.9)),
                   ("swa", swa_utils.get_swa_multi_avg_fn())):
    model = torch.nn.Linear(5, 1, bias=False)
    with torch.no_grad():
      model.weight.copy_(torch.tensor(seq[0:1] * 0.0 + 7.0))
    avg = swa_utils.AveragedModel(model, multi_avg_fn=fn)
    trace = []
    for t in range(steps):
      with torch.no_grad():
        model.weight.copy_(torch.tensor(seq[t:t + 1]))
      avg.update_parameters(model)
      trace.append(avg.module.weight.detach().numpy()[0].copy())
    out[name] = np.stack(trace)
  return out


def main():
  os.makedirs(OUT, exist_ok=True)
  np.savez(os.path.join(OUT, "dynamics_schedules.npz"), **schedules())
  np.savez(os.path.join(OUT, "dynamics_lookahead.npz"), **lookahead())
  np.savez(os.path.join(OUT, "dynamics_ema.npz"), **ema())
  print("wrote", OUT)


if __name__ == "__main__":
  main()
