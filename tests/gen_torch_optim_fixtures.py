"""Generates the torch.optim golden trajectories for the remaining torch classes.

Run with a venv that has torch 2.13 (never in CI; the outputs are committed)::

    PYTHONPATH=. .venv/bin/python tests/gen_torch_optim_fixtures.py

Everything runs in float64 with ``foreach=False`` (torch's single-tensor code
path). Outputs (``tests/fixtures/``):

* ``torch_optim_problems.npz``: the problems (pure NumPy data, rebuilt in JAX).

  - tree problem: ``tree_a`` (17x17 SPD), ``tree_c``, ``tree_b0`` (4,),
    ``tree_s0`` (), ``tree_w0`` (3, 4); with x = concat(b, s, ravel(w)),
    f(x) = 1/2 x^T A x - c^T x + 0.1 sum(x^4) / 17.
  - ``lbfgs_noise`` (K, 17): the LBFGS outer step k minimises f with
    ``c + lbfgs_noise[k]`` (a new "batch" every step).
  - Rosenbrock: ``rosen_x0`` (6,), f(x) = sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2.
  - Muon net: ``muon_x`` (8, 5), ``muon_y`` (8, 6), ``muon_w1`` (5, 3),
    ``muon_b1`` (3,), ``muon_w2`` (3, 6);
    f = 1/2 mean_i |tanh(x_i W1 + b1) W2 - y_i|^2.

* ``torch_optim_<name>.npz`` for name in adamax, adadelta, rprop, asgd, lbfgs,
  muon and flags (``maximize`` / ``decoupled_weight_decay`` of the existing
  aliases; the alias is ``_alias`` in the kwargs), with, for each setting ``k``: ``s<k>_kwargs`` (JSON of the *optzoo*
  keyword arguments), ``s<k>_torch`` (the torch call), trajectories
  ``s<k>_<leaf>`` of shape (len(steps), *leaf shape) and, for asgd,
  ``s<k>_ax_<leaf>`` (torch's averaged parameters). ``steps`` lists which
  steps are stored (1-based). For lbfgs every outer step is stored, plus
  ``s<k>_n_iter`` and ``s<k>_func_evals`` (torch's counters after each step).
"""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
NUM_STEPS = 300
STEPS = np.array(sorted(set(range(1, 21)) | set(range(30, NUM_STEPS + 1, 10))),
                 dtype=np.int32)
LBFGS_OUTER = 20


def _spd(n, rng, cond):
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (q * np.geomspace(1.0, cond, n)) @ q.T


def make_problems():
  rng = np.random.default_rng(20261202)
  out = dict(
      tree_a=_spd(17, rng, 20.0), tree_c=rng.normal(size=17),
      tree_b0=rng.normal(size=4), tree_s0=np.asarray(rng.normal()),
      tree_w0=rng.normal(size=(3, 4)),
      lbfgs_noise=0.3 * rng.normal(size=(LBFGS_OUTER, 17)),
      rosen_x0=rng.normal(size=6) * 0.5 - 0.5,
      muon_x=rng.normal(size=(8, 5)), muon_y=rng.normal(size=(8, 6)),
      muon_w1=rng.normal(size=(5, 3)) / np.sqrt(5), muon_b1=0.1 * rng.normal(size=3),
      muon_w2=rng.normal(size=(3, 6)) / np.sqrt(3),
  )
  return out


P = make_problems()
TREE_KEYS = ("b", "s", "w")


def tree_params():
  return {k: torch.tensor(P[f"tree_{k}0"], requires_grad=True) for k in TREE_KEYS}


def tree_loss(params, c=None):
  x = torch.cat([params[k].reshape(-1) for k in TREE_KEYS])
  a = torch.tensor(P["tree_a"])
  c = torch.tensor(P["tree_c"] if c is None else c)
  return 0.5 * x @ a @ x - c @ x + 0.1 * torch.sum(x ** 4) / x.numel()


def rosen_loss(params):
  x = params["x"]
  return torch.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def muon_loss(params):
  x, y = torch.tensor(P["muon_x"]), torch.tensor(P["muon_y"])
  pred = torch.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
  return 0.5 * torch.mean(torch.sum((pred - y) ** 2, dim=1))


def _snap(params):
  return {k: v.detach().numpy().copy() for k, v in params.items()}


def run_first_order(make_opt, maximize=False, steps=NUM_STEPS, extra=None):
  params = tree_params()
  opt = make_opt(list(params.values()))
  traj, ax = [], []
  for t in range(1, steps + 1):
    opt.zero_grad()
    loss = tree_loss(params)
    (-loss if maximize else loss).backward()
    opt.step()
    if t in STEPS:
      traj.append(_snap(params))
      if extra == "ax":
        ax.append({k: opt.state[p]["ax"].numpy().copy() for k, p in params.items()})
  out = {k: np.stack([s[k] for s in traj]) for k in TREE_KEYS}
  if extra == "ax":
    out.update({f"ax_{k}": np.stack([s[k] for s in ax]) for k in TREE_KEYS})
  return out


def save(name, settings, extra=None):
  arrays = {"steps": STEPS}
  arrays.update(extra or {})
  for k, (kwargs, desc, traj) in enumerate(settings):
    arrays[f"s{k}_kwargs"] = np.asarray(json.dumps(kwargs))
    arrays[f"s{k}_torch"] = np.asarray(desc)
    for key, v in traj.items():
      arrays[f"s{k}_{key}"] = v
  path = os.path.join(OUT, f"torch_optim_{name}.npz")
  np.savez_compressed(path, **arrays)
  print(name, len(settings), "settings", os.path.getsize(path), "bytes")


def first_order(name, cls, rows, extra=None):
  """rows: (optzoo kwargs, torch kwargs)."""
  settings = []
  for kw, tkw in rows:
    maximize = bool(tkw.get("maximize", False))
    traj = run_first_order(lambda ps, tkw=tkw: cls(ps, foreach=False, **tkw),
                           maximize=maximize, extra=extra)
    settings.append((kw, f"torch.optim.{cls.__name__}({tkw})", traj))
  save(name, settings)


def gen_classic():
  first_order("adamax", torch.optim.Adamax, [
      ({}, {}),
      ({"learning_rate": 0.05, "b1": 0.8, "b2": 0.99, "eps": 1e-3},
       {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-3}),
      ({"learning_rate": 0.02, "b1": 0.3, "weight_decay": 0.1, "maximize": True},
       {"lr": 0.02, "betas": (0.3, 0.999), "weight_decay": 0.1, "maximize": True}),
  ])
  first_order("adadelta", torch.optim.Adadelta, [
      ({}, {}),
      ({"learning_rate": 0.2, "rho": 0.95, "eps": 1e-4},
       {"lr": 0.2, "rho": 0.95, "eps": 1e-4}),
      ({"learning_rate": 2.0, "rho": 0.7, "weight_decay": 0.05, "maximize": True},
       {"lr": 2.0, "rho": 0.7, "weight_decay": 0.05, "maximize": True}),
  ])
  first_order("rprop", torch.optim.Rprop, [
      ({}, {}),
      ({"learning_rate": 0.1, "eta_minus": 0.3, "eta_plus": 1.5,
        "min_step_size": 1e-3, "max_step_size": 0.2},
       {"lr": 0.1, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2)}),
      ({"learning_rate": 0.003, "eta_minus": 0.6, "eta_plus": 1.1, "maximize": True},
       {"lr": 0.003, "etas": (0.6, 1.1), "maximize": True}),
  ])
  first_order("asgd", torch.optim.ASGD, [
      ({}, {}),
      ({"learning_rate": 0.03, "lambd": 1e-2, "alpha": 0.6, "t0": 50.0},
       {"lr": 0.03, "lambd": 1e-2, "alpha": 0.6, "t0": 50.0}),
      ({"learning_rate": 0.02, "lambd": 0.1, "alpha": 1.0, "t0": 0.0,
        "weight_decay": 0.05, "maximize": True},
       {"lr": 0.02, "lambd": 0.1, "alpha": 1.0, "t0": 0.0, "weight_decay": 0.05,
        "maximize": True}),
  ], extra="ax")


# ---------------------------------------------------------------------------
# LBFGS
# ---------------------------------------------------------------------------


def run_lbfgs(problem, tkw, outer):
  if problem == "rosen":
    params = {"x": torch.tensor(P["rosen_x0"], requires_grad=True)}
  else:
    params = tree_params()
  opt = torch.optim.LBFGS(list(params.values()), **tkw)
  traj, n_iter, evals = [], [], []
  for k in range(outer):
    def closure():
      opt.zero_grad()
      if problem == "rosen":
        loss = rosen_loss(params)
      else:
        loss = tree_loss(params, P["tree_c"] + P["lbfgs_noise"][k])
      loss.backward()
      return loss
    opt.step(closure)
    traj.append(_snap(params))
    st = opt.state[next(iter(params.values()))]
    n_iter.append(st.get("n_iter", 0))
    evals.append(st.get("func_evals", 0))
  out = {k: np.stack([s[k] for s in traj]) for k in params}
  out["n_iter"] = np.asarray(n_iter, np.int32)
  out["func_evals"] = np.asarray(evals, np.int32)
  return out


def gen_lbfgs():
  rows = [
      # (problem, optzoo kwargs, torch kwargs, outer steps)
      ("tree", {"learning_rate": 0.2}, {"lr": 0.2}, LBFGS_OUTER),
      ("tree", {"learning_rate": 0.2, "max_iter": 25, "max_eval": 22,
                "tolerance_change": 1e-12},
       {"lr": 0.2, "max_iter": 25, "max_eval": 22, "tolerance_change": 1e-12},
       10),
      ("tree", {"line_search_fn": "strong_wolfe"},
       {"line_search_fn": "strong_wolfe"}, LBFGS_OUTER),
      ("rosen", {"line_search_fn": "strong_wolfe", "history_size": 5,
                 "max_iter": 30, "tolerance_grad": 1e-10, "tolerance_change": 1e-14},
       {"line_search_fn": "strong_wolfe", "history_size": 5, "max_iter": 30,
        "tolerance_grad": 1e-10, "tolerance_change": 1e-14}, 12),
      ("rosen", {"line_search_fn": "strong_wolfe", "max_iter": 8, "max_eval": 10,
                 "learning_rate": 0.7},
       {"line_search_fn": "strong_wolfe", "max_iter": 8, "max_eval": 10, "lr": 0.7},
       12),
      ("tree", {"learning_rate": 0.2, "tolerance_grad": 1e-2, "tolerance_change": 1e-6},
       {"lr": 0.2, "tolerance_grad": 1e-2, "tolerance_change": 1e-6}, LBFGS_OUTER),
  ]
  settings = []
  for problem, kw, tkw, outer in rows:
    traj = run_lbfgs(problem, tkw, outer)
    kw = dict(kw, _problem=problem, _outer=outer)
    print("  lbfgs", problem, tkw, "total inner iterations", traj["n_iter"][-1],
          "evals", traj["func_evals"][-1])
    settings.append((kw, f"torch.optim.LBFGS({tkw})", traj))
  save("lbfgs", settings)


# ---------------------------------------------------------------------------
# Muon (+ AdamW for the non-2-D leaves, as torch's docs recommend)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def newton_schulz_in_float64():
  """torch's Muon runs Newton-Schulz in bf16; run it at the input precision.

  Replaces ``Tensor.bfloat16`` by a copy at the input dtype for the duration
  of the step; everything else is torch's own code.
  """
  orig = torch.Tensor.bfloat16
  torch.Tensor.bfloat16 = lambda self, *a, **k: self.clone()
  try:
    yield
  finally:
    torch.Tensor.bfloat16 = orig


def run_muon(mkw, akw, f64, steps=NUM_STEPS):
  params = {k: torch.tensor(P[f"muon_{k}"], requires_grad=True)
            for k in ("w1", "b1", "w2")}
  opt_m = torch.optim.Muon([params["w1"], params["w2"]], **mkw)
  opt_a = torch.optim.AdamW([params["b1"]], foreach=False, **akw)
  traj = []
  for t in range(1, steps + 1):
    opt_m.zero_grad()
    opt_a.zero_grad()
    muon_loss(params).backward()
    with newton_schulz_in_float64() if f64 else contextlib.nullcontext():
      opt_m.step()
    opt_a.step()
    if t in STEPS:
      traj.append(_snap(params))
  return {k: np.stack([s[k] for s in traj]) for k in params}


def gen_muon():
  rows = [
      # (optzoo muon kwargs, fallback adamw kwargs, torch Muon kw, torch AdamW kw, f64)
      ({"ns_dtype": "float64"}, {}, {}, {}, True),
      ({"learning_rate": 0.006, "momentum": 0.9, "nesterov": False,
        "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw", "ns_dtype": "float64"},
       {"learning_rate": 3e-3, "weight_decay": 0.01},
       {"lr": 0.006, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
        "adjust_lr_fn": "match_rms_adamw"}, {"lr": 3e-3, "weight_decay": 0.01}, True),
      ({"learning_rate": 0.01, "ns_coefficients": [2.0, -1.5, 0.5], "ns_steps": 8,
        "eps": 1e-4, "weight_decay": 0.05, "adjust_lr_fn": "original",
        "ns_dtype": "float64"},
       {"learning_rate": 1e-3, "b1": 0.8},
       {"lr": 0.01, "ns_coefficients": (2.0, -1.5, 0.5), "ns_steps": 8, "eps": 1e-4,
        "weight_decay": 0.05, "adjust_lr_fn": "original"},
       {"lr": 1e-3, "betas": (0.8, 0.999)}, True),
      # torch's own bf16 Newton-Schulz (compared loosely, and only early steps).
      ({"learning_rate": 0.02}, {}, {"lr": 0.02}, {}, False),
  ]
  settings = []
  for kw, fkw, mkw, akw, f64 in rows:
    traj = run_muon(mkw, akw, f64)
    settings.append((dict(kw, _fallback=fkw),
                     f"torch.optim.Muon({mkw}) + AdamW({akw}), NS in "
                     + ("float64" if f64 else "bf16 (torch default)"), traj))
  save("muon", settings)


# ---------------------------------------------------------------------------
# Flags of the existing torch-family aliases: maximize, decoupled_weight_decay
# ---------------------------------------------------------------------------


def gen_flags():
  """``torch_optim_flags.npz``: settings name the optzoo alias in ``_alias``."""
  t = torch.optim
  rows = [
      ("sgd", {"learning_rate": 0.02, "momentum": 0.9, "weight_decay": 0.01,
               "maximize": True},
       t.SGD, {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.01, "maximize": True}),
      ("sgd", {"learning_rate": 0.02, "momentum": 0.8, "nesterov": True,
               "maximize": True},
       t.SGD, {"lr": 0.02, "momentum": 0.8, "nesterov": True, "maximize": True}),
      ("adam", {"learning_rate": 0.01, "weight_decay": 0.05, "maximize": True},
       t.Adam, {"lr": 0.01, "weight_decay": 0.05, "maximize": True}),
      ("amsgrad", {"learning_rate": 0.01, "maximize": True},
       t.Adam, {"lr": 0.01, "amsgrad": True, "maximize": True}),
      ("adamw", {"learning_rate": 0.01, "weight_decay": 0.1, "maximize": True},
       t.AdamW, {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
      ("nadam", {"learning_rate": 0.01, "weight_decay": 0.05, "maximize": True},
       t.NAdam, {"lr": 0.01, "weight_decay": 0.05, "maximize": True}),
      ("nadam", {"learning_rate": 0.01, "weight_decay": 0.1,
                 "decoupled_weight_decay": True},
       t.NAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
      ("radam", {"learning_rate": 0.01, "weight_decay": 0.05, "maximize": True},
       t.RAdam, {"lr": 0.01, "weight_decay": 0.05, "maximize": True}),
      ("radam", {"learning_rate": 0.01, "weight_decay": 0.1,
                 "decoupled_weight_decay": True, "maximize": True},
       t.RAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True,
                 "maximize": True}),
      ("adagrad", {"learning_rate": 0.05, "weight_decay": 0.01, "maximize": True},
       t.Adagrad, {"lr": 0.05, "weight_decay": 0.01, "maximize": True}),
      ("rmsprop", {"learning_rate": 0.005, "momentum": 0.5, "centered": True,
                   "maximize": True},
       t.RMSprop, {"lr": 0.005, "momentum": 0.5, "centered": True, "maximize": True}),
  ]
  settings = []
  for alias, kw, cls, tkw in rows:
    maximize = bool(tkw.get("maximize", False))
    traj = run_first_order(lambda ps, cls=cls, tkw=tkw: cls(ps, foreach=False, **tkw),
                           maximize=maximize)
    settings.append((dict(kw, _alias=alias), f"torch.optim.{cls.__name__}({tkw})", traj))
  save("flags", settings)


if __name__ == "__main__":
  assert torch.__version__.startswith("2.13"), torch.__version__
  os.makedirs(OUT, exist_ok=True)
  np.savez_compressed(os.path.join(OUT, "torch_optim_problems.npz"), **P)
  gen_classic()
  gen_lbfgs()
  gen_muon()
  gen_flags()
