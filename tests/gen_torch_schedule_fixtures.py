"""Generates tests/fixtures/torch_schedules.npz from torch 2.13 (never in CI).

    PYTHONPATH=. /work/main/.venv/bin/python tests/gen_torch_schedule_fixtures.py

Contents (float64, foreach=False):

* ``lr/<case>``: ``param_groups[0]['lr']`` before each of ``N`` optimizer
  steps for every ``torch.optim.lr_scheduler`` class (several configurations
  each, incl. restarts / milestones / SequentialLR / ChainedScheduler), i.e.
  entry ``i`` = the lr after ``i`` calls of ``scheduler.step()``;
* ``plateau/<case>/{metric,lr}``: ReduceLROnPlateau fed a synthetic metric
  sequence (``lr[i]`` is the lr used by step ``i``, before
  ``sched.step(metric[i])``);
* ``mom/<case>/{lr,mom,params}``: CyclicLR / OneCycleLR with
  ``cycle_momentum=True`` driving SGD momentum / Adam beta1 on a quadratic,
  the params after every step.

The test file builds the same cases with optzoo (tests/test_torch_schedules.py
keeps the case names in sync with this file).
"""
import math
import os

import numpy as np
import torch
from torch.optim import lr_scheduler as L

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "torch_schedules.npz")
N = 1200


def _opt(lr):
  return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr,
                         foreach=False)


def _mult_fn(t):
  return 0.99 if t % 100 < 50 else 1.005


LR_CASES = {
    # LambdaLR
    "lambda_inv": (0.1, lambda o: L.LambdaLR(o, lambda t: 1.0 / (1 + 0.01 * t))),
    "lambda_warm_exp": (0.2, lambda o: L.LambdaLR(
        o, lambda t: min(1.0, (t + 1) / 50.0) * 0.999 ** t)),
    # MultiplicativeLR
    "mult_const": (0.05, lambda o: L.MultiplicativeLR(o, lambda t: 0.998)),
    "mult_fn": (0.1, lambda o: L.MultiplicativeLR(o, _mult_fn)),
    # StepLR
    "step_30": (0.1, lambda o: L.StepLR(o, 30, 0.5)),
    "step_100": (1.0, lambda o: L.StepLR(o, 100)),
    "step_7": (0.3, lambda o: L.StepLR(o, 7, 0.9)),
    # MultiStepLR
    "multistep_dup": (0.1, lambda o: L.MultiStepLR(o, [100, 300, 301, 800],
                                                   0.5)),
    "multistep_zero_dup": (0.1, lambda o: L.MultiStepLR(o, [0, 500, 500, 900],
                                                        0.3)),
    "multistep_empty": (0.2, lambda o: L.MultiStepLR(o, [])),
    # ConstantLR
    "constant_default": (0.1, lambda o: L.ConstantLR(o)),
    "constant_400": (0.2, lambda o: L.ConstantLR(o, 0.5, 400)),
    "constant_one": (0.05, lambda o: L.ConstantLR(o, 1.0, 10)),
    # LinearLR
    "linear_default": (0.1, lambda o: L.LinearLR(o)),
    "linear_warm500": (0.3, lambda o: L.LinearLR(o, 0.01, 1.0, 500)),
    "linear_down700": (0.2, lambda o: L.LinearLR(o, 1.0, 0.1, 700)),
    "linear_to_zero": (0.1, lambda o: L.LinearLR(o, 0.5, 0.0, 300)),
    # ExponentialLR
    "exp_999": (0.1, lambda o: L.ExponentialLR(o, 0.999)),
    "exp_99": (1.0, lambda o: L.ExponentialLR(o, 0.99)),
    # PolynomialLR
    "poly_linear": (0.1, lambda o: L.PolynomialLR(o, 500, 1.0)),
    "poly_square": (0.2, lambda o: L.PolynomialLR(o, 900, 2.0)),
    "poly_sqrt": (0.1, lambda o: L.PolynomialLR(o, 1000, 0.5)),
    # CosineAnnealingLR (past T_max it climbs back: 'restarts')
    "cos_1000": (0.1, lambda o: L.CosineAnnealingLR(o, 1000)),
    "cos_200_eta": (0.1, lambda o: L.CosineAnnealingLR(o, 200, 0.001)),
    "cos_7_eta": (0.5, lambda o: L.CosineAnnealingLR(o, 7, 0.05)),
    # SequentialLR
    "seq_lin_cos": (0.1, lambda o: L.SequentialLR(
        o, [L.LinearLR(o, 0.01, 1.0, 100), L.CosineAnnealingLR(o, 1100)],
        [100])),
    "seq_const_exp_step": (0.1, lambda o: L.SequentialLR(
        o, [L.ConstantLR(o, 0.25, 50), L.ExponentialLR(o, 0.995),
            L.StepLR(o, 100, 0.5)], [200, 600])),
    "seq_cos_mult_cos": (0.1, lambda o: L.SequentialLR(
        o, [L.CosineAnnealingLR(o, 300, 0.01),
            L.MultiplicativeLR(o, lambda t: 0.997),
            L.CosineAnnealingLR(o, 200)], [250, 700])),
    "seq_lambda_poly": (0.1, lambda o: L.SequentialLR(
        o, [L.LambdaLR(o, lambda t: (t + 1) / 100.0),
            L.PolynomialLR(o, 800, 1.5)], [100])),
    # ChainedScheduler (members constructed in list order)
    "chain_const_exp": (0.1, lambda o: L.ChainedScheduler(
        [L.ConstantLR(o, 0.5, 100), L.ExponentialLR(o, 0.998)])),
    "chain_exp_cos": (0.1, lambda o: L.ChainedScheduler(
        [L.ExponentialLR(o, 0.999), L.CosineAnnealingLR(o, 200)])),
    "chain_lin_cos": (0.1, lambda o: L.ChainedScheduler(
        [L.LinearLR(o, 0.1, 1.0, 100), L.CosineAnnealingLR(o, 300)])),
    "chain_cos_eta_step": (0.1, lambda o: L.ChainedScheduler(
        [L.CosineAnnealingLR(o, 250, 0.01), L.StepLR(o, 100, 0.7)])),
    "chain_step_lambda": (0.1, lambda o: L.ChainedScheduler(
        [L.StepLR(o, 50, 0.5), L.LambdaLR(o, lambda t: 0.99 ** t)])),
    "chain_lambda_step": (0.1, lambda o: L.ChainedScheduler(
        [L.LambdaLR(o, lambda t: 0.999 ** t), L.StepLR(o, 50, 0.5)])),
    "chain_mult_poly": (0.1, lambda o: L.ChainedScheduler(
        [L.MultiplicativeLR(o, _mult_fn), L.PolynomialLR(o, 1000, 2.0)])),
    "chain_seq_exp": (0.1, lambda o: L.ChainedScheduler(
        [L.SequentialLR(o, [L.LinearLR(o, 0.05, 1.0, 80),
                            L.CosineAnnealingLR(o, 400)], [80]),
         L.ExponentialLR(o, 0.9995)])),
}


def lr_traces():
  out = {}
  for name, (lr, make) in LR_CASES.items():
    opt = _opt(lr)
    sched = make(opt)
    vals = []
    for _ in range(N):
      vals.append(opt.param_groups[0]["lr"])
      opt.step()
      sched.step()
    out[f"lr/{name}"] = np.asarray(vals, np.float64)
  return out


PLATEAU_CASES = {
    "min_rel": dict(mode="min", factor=0.1, patience=5),
    "min_abs_cooldown": dict(mode="min", threshold=0.01, threshold_mode="abs",
                             patience=3, cooldown=4, min_lr=1e-3, factor=0.5),
    "max_rel": dict(mode="max", factor=0.5, patience=2, cooldown=2,
                    threshold=1e-3),
    "max_abs_eps": dict(mode="max", threshold=0.005, threshold_mode="abs",
                        patience=0, factor=0.7, eps=1e-3),
    "min_rel_minlr": dict(mode="min", factor=0.3, patience=1, min_lr=2e-3,
                          threshold=0.0),
}


def _metric(seed, n=600):
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  base = 1.0 / (1.0 + 0.02 * t) + 0.2 * (np.floor(t / 150) % 2)
  return base + 0.01 * rng.standard_normal(n)


def plateau_traces():
  out = {}
  for k, (name, kw) in enumerate(PLATEAU_CASES.items()):
    metric = _metric(k)
    if kw["mode"] == "max":
      metric = -metric
    opt = _opt(0.1)
    sched = L.ReduceLROnPlateau(opt, **kw)
    lrs_ = []
    for m in metric:
      lrs_.append(opt.param_groups[0]["lr"])
      opt.step()
      sched.step(float(m))
    out[f"plateau/{name}/metric"] = metric
    out[f"plateau/{name}/lr"] = np.asarray(lrs_)
  return out


def quadratic(n=6, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * np.geomspace(1.0, 30.0, n)) @ q.T
  return a, rng.normal(size=n), rng.normal(size=n)


MOM_STEPS = 300
MOM_CASES = {
    "cyclic_sgd_tri2": (
        lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9, foreach=False),
        lambda o: L.CyclicLR(o, 0.01, 0.1, step_size_up=20, step_size_down=30,
                             mode="triangular2", base_momentum=0.8,
                             max_momentum=0.95)),
    "cyclic_adam_exp": (
        lambda p: torch.optim.Adam([p], lr=0.01, foreach=False),
        lambda o: L.CyclicLR(o, 0.001, 0.05, step_size_up=25,
                             mode="exp_range", gamma=0.995)),
    "onecycle_adamw": (
        lambda p: torch.optim.AdamW([p], lr=0.01, weight_decay=0.05,
                                    foreach=False),
        lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=MOM_STEPS)),
    "onecycle_sgd_nesterov_3phase": (
        lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9, nesterov=True,
                                  foreach=False),
        lambda o: L.OneCycleLR(o, max_lr=0.03, total_steps=MOM_STEPS,
                               three_phase=True, anneal_strategy="linear")),
}


def _mom(opt):
  g = opt.param_groups[0]
  return g["betas"][0] if "betas" in g else g["momentum"]


def momentum_runs():
  out = {}
  a, b, x0 = quadratic()
  at, bt = torch.tensor(a), torch.tensor(b)
  for name, (make_opt, make_sched) in MOM_CASES.items():
    p = torch.nn.Parameter(torch.tensor(x0))
    opt = make_opt(p)
    sched = make_sched(opt)
    lrs_, moms, params = [], [], []
    for _ in range(MOM_STEPS):
      lrs_.append(opt.param_groups[0]["lr"])
      moms.append(_mom(opt))
      opt.zero_grad()
      loss = 0.5 * p @ at @ p - bt @ p
      loss.backward()
      opt.step()
      sched.step()
      params.append(p.detach().numpy().copy())
    out[f"mom/{name}/lr"] = np.asarray(lrs_)
    out[f"mom/{name}/mom"] = np.asarray(moms)
    out[f"mom/{name}/params"] = np.asarray(params)
  out["mom/quadratic/a"], out["mom/quadratic/b"], out["mom/quadratic/x0"] = (
      a, b, x0)
  return out


def main():
  out = {}
  out.update(lr_traces())
  out.update(plateau_traces())
  out.update(momentum_runs())
  out["torch_version"] = np.asarray(torch.__version__)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
  main()
