"""Generates the golden trajectories of the Team SGD / Team Adam aliases.

Run with the torch venv (never in CI; the outputs are committed)::

    /work/tvenv/bin/python tests/gen_torch_fixtures.py

Requires torch 2.13, pytorch_optimizer 4.1, adabound 0.0.5 (the ``oracles``
extra of pyproject.toml). Everything runs in float64 with ``foreach=False``.

Outputs (``tests/fixtures/``):

* ``aliases_problems.npz``: the two test problems.

  - ``quad_a`` (6x6 SPD, eigenvalues 1..50), ``quad_b``, ``quad_x0``:
    f(x) = 1/2 x^T A x - b^T x.
  - ``tree_a`` (17x17 SPD, eigenvalues 1..20), ``tree_c``, ``tree_b0`` (4,),
    ``tree_s0`` (), ``tree_w0`` (3, 4): with x = concat(ravel(b), ravel(s),
    ravel(w)) (keys in sorted order),
    f(x) = 1/2 x^T A x - c^T x + 0.1 * sum(x^4) / 17.

* ``aliases_<alias>.npz``, one per alias, with, for each setting ``k``:

  - ``s<k>_kwargs``: JSON of the *optzoo* keyword arguments (learning_rate
    may be ``{"schedule": "exponential", "init": a, "rate": r}``, meaning
    ``lr(count) = a * r**count``);
  - ``s<k>_torch``: a human-readable description of the torch call;
  - ``s<k>_quad``: the quadratic trajectory, shape (len(steps), 6);
  - ``s<k>_tree_b``, ``s<k>_tree_s``, ``s<k>_tree_w``: the pytree trajectory;
  - ``steps``: which steps are stored (entry i is the params after step
    ``steps[i]``, steps counted from 1). All steps up to 20 are stored, then
    every 5th, and the last one (NUM_STEPS).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

import adabound
import pytorch_optimizer

torch.set_default_dtype(torch.float64)

NUM_STEPS = 300
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
STEPS = np.array(sorted(set(range(1, 21)) | set(range(25, NUM_STEPS + 1, 5))
                        | {NUM_STEPS}), dtype=np.int32)


# ---------------------------------------------------------------------------
# Problems (pure NumPy so that the JAX test rebuilds the exact same loss).
# ---------------------------------------------------------------------------


def _spd(n, rng, cond):
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eig = np.geomspace(1.0, cond, n)
  return (q * eig) @ q.T


def make_problems():
  rng = np.random.default_rng(20260521)
  quad_a = _spd(6, rng, 50.0)
  quad_b = rng.normal(size=6)
  quad_x0 = rng.normal(size=6) * 2.0
  tree_a = _spd(17, rng, 20.0)
  tree_c = rng.normal(size=17)
  tree_b0 = rng.normal(size=4)
  tree_s0 = np.asarray(rng.normal())
  tree_w0 = rng.normal(size=(3, 4))
  return dict(quad_a=quad_a, quad_b=quad_b, quad_x0=quad_x0, tree_a=tree_a,
              tree_c=tree_c, tree_b0=tree_b0, tree_s0=tree_s0, tree_w0=tree_w0)


# ---------------------------------------------------------------------------
# Settings: optzoo kwargs, and the torch optimizer that is the reference.
# ---------------------------------------------------------------------------


def exp_sched(init, rate):
  return {"schedule": "exponential", "init": init, "rate": rate}


def lr_at(lr, t):
  """Learning rate used by update number t (t = 0 for the first update)."""
  if isinstance(lr, dict):
    return lr["init"] * lr["rate"] ** t
  return lr


SETTINGS = {
    "sgd": [
        dict(learning_rate=0.03),
        dict(learning_rate=0.01, momentum=0.9),
        dict(learning_rate=0.01, momentum=0.9, nesterov=True),
        dict(learning_rate=0.01, momentum=0.8, dampening=0.3,
             weight_decay=0.05),
        dict(learning_rate=0.01, momentum=0.9, nesterov=True,
             weight_decay=0.1),
        dict(learning_rate=exp_sched(0.015, 0.995), momentum=0.9),
    ],
    "nag": [
        dict(learning_rate=0.01),
        dict(learning_rate=0.01, momentum=0.7, weight_decay=0.05),
    ],
    "sgdw": [
        dict(learning_rate=0.01, momentum=0.9, weight_decay=0.1),
        dict(learning_rate=0.01, momentum=0.9, nesterov=True,
             weight_decay=0.05),
        dict(learning_rate=0.02, momentum=0.0, weight_decay=0.2),
        dict(learning_rate=exp_sched(0.01, 0.995), momentum=0.9,
             weight_decay=0.1),
    ],
    "adagrad": [
        dict(learning_rate=0.5),
        dict(learning_rate=0.5, lr_decay=0.01, weight_decay=0.05),
        dict(learning_rate=0.5, initial_accumulator_value=0.1, eps=1e-3),
    ],
    "rmsprop": [
        dict(learning_rate=0.01),
        dict(learning_rate=0.003, momentum=0.9, eps=1e-3),
        dict(learning_rate=0.005, centered=True),
        dict(learning_rate=0.002, momentum=0.8, centered=True,
             weight_decay=0.05, eps=1e-4),
        dict(learning_rate=exp_sched(0.005, 0.99), decay=0.9, momentum=0.9,
             eps=1e-3),
    ],
    "adam": [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, b1=0.8, b2=0.99, weight_decay=0.05),
        dict(learning_rate=0.05, b2=0.99, amsgrad=True),
        dict(learning_rate=0.05, eps=1e-3),
        dict(learning_rate=exp_sched(0.08, 0.99)),
    ],
    "amsgrad": [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-6,
             weight_decay=0.02),
    ],
    "adamw": [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, b2=0.99, weight_decay=0.1, amsgrad=True),
        dict(learning_rate=0.05, b1=0.5, b2=0.99, weight_decay=0.2),
        dict(learning_rate=exp_sched(0.08, 0.99), weight_decay=0.1),
    ],
    "nadam": [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, momentum_decay=0.01, weight_decay=0.05),
        dict(learning_rate=0.02, b1=0.8, b2=0.99, eps=1e-3),
    ],
    "radam": [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, b2=0.99, weight_decay=0.05),
        dict(learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-3),
    ],
    "adabound": [
        dict(learning_rate=0.01),
        dict(learning_rate=0.01, b2=0.99, amsbound=True),
        dict(learning_rate=0.01, final_lr=0.02, gamma=0.05),
        dict(learning_rate=0.01, b2=0.99, final_lr=0.05, gamma=0.02,
             amsbound=True, weight_decay=0.05),
        dict(learning_rate=exp_sched(0.01, 0.995), final_lr=0.05, gamma=0.02),
    ],
}


def _betas(kw, b1=0.9, b2=0.999):
  return (kw.get("b1", b1), kw.get("b2", b2))


def make_torch_opt(alias, kw, params):
  """Returns (optimizer, description). ``lr`` is the lr of update 0."""
  lr = lr_at(kw["learning_rate"], 0)
  g = lambda k, d: kw.get(k, d)  # noqa: E731
  o = torch.optim
  if alias == "sgd":
    args = dict(lr=lr, momentum=g("momentum", 0.0),
                dampening=g("dampening", 0.0), nesterov=g("nesterov", False),
                weight_decay=g("weight_decay", 0.0), foreach=False)
    return o.SGD(params, **args), f"torch.optim.SGD({args})"
  if alias == "nag":
    args = dict(lr=lr, momentum=g("momentum", 0.9),
                dampening=g("dampening", 0.0), nesterov=True,
                weight_decay=g("weight_decay", 0.0), foreach=False)
    return o.SGD(params, **args), f"torch.optim.SGD({args})"
  if alias == "sgdw":
    args = dict(lr=lr, momentum=g("momentum", 0.9),
                weight_decay=kw["weight_decay"], weight_decouple=True,
                nesterov=g("nesterov", False), foreach=False)
    return (pytorch_optimizer.SGDW(params, **args),
            f"pytorch_optimizer.SGDW({args})")
  if alias == "adagrad":
    args = dict(lr=lr, lr_decay=g("lr_decay", 0.0),
                weight_decay=g("weight_decay", 0.0),
                initial_accumulator_value=g("initial_accumulator_value", 0.0),
                eps=g("eps", 1e-10), foreach=False)
    return o.Adagrad(params, **args), f"torch.optim.Adagrad({args})"
  if alias == "rmsprop":
    args = dict(lr=lr, alpha=g("decay", 0.99), eps=g("eps", 1e-8),
                weight_decay=g("weight_decay", 0.0),
                momentum=g("momentum", 0.0), centered=g("centered", False),
                foreach=False)
    return o.RMSprop(params, **args), f"torch.optim.RMSprop({args})"
  if alias in ("adam", "amsgrad"):
    args = dict(lr=lr, betas=_betas(kw), eps=g("eps", 1e-8),
                weight_decay=g("weight_decay", 0.0),
                amsgrad=True if alias == "amsgrad" else g("amsgrad", False),
                foreach=False)
    return o.Adam(params, **args), f"torch.optim.Adam({args})"
  if alias == "adamw":
    args = dict(lr=lr, betas=_betas(kw), eps=g("eps", 1e-8),
                weight_decay=g("weight_decay", 1e-2),
                amsgrad=g("amsgrad", False), foreach=False)
    return o.AdamW(params, **args), f"torch.optim.AdamW({args})"
  if alias == "nadam":
    args = dict(lr=lr, betas=_betas(kw), eps=g("eps", 1e-8),
                weight_decay=g("weight_decay", 0.0),
                momentum_decay=g("momentum_decay", 4e-3), foreach=False)
    return o.NAdam(params, **args), f"torch.optim.NAdam({args})"
  if alias == "radam":
    args = dict(lr=lr, betas=_betas(kw), eps=g("eps", 1e-8),
                weight_decay=g("weight_decay", 0.0), foreach=False)
    return o.RAdam(params, **args), f"torch.optim.RAdam({args})"
  if alias == "adabound":
    args = dict(lr=lr, betas=_betas(kw), final_lr=g("final_lr", 0.1),
                gamma=g("gamma", 1e-3), eps=g("eps", 1e-8),
                weight_decay=g("weight_decay", 0.0),
                amsbound=g("amsbound", False))
    return adabound.AdaBound(params, **args), f"adabound.AdaBound({args})"
  raise KeyError(alias)


# ---------------------------------------------------------------------------
# Drivers.
# ---------------------------------------------------------------------------


def quad_loss(prob):
  a = torch.tensor(prob["quad_a"])
  b = torch.tensor(prob["quad_b"])
  return lambda ps: 0.5 * ps[0] @ a @ ps[0] - b @ ps[0]


def tree_loss(prob):
  a = torch.tensor(prob["tree_a"])
  c = torch.tensor(prob["tree_c"])

  def loss(ps):
    x = torch.cat([p.reshape(-1) for p in ps])  # order b, s, w (sorted keys)
    return 0.5 * x @ a @ x - c @ x + 0.1 * torch.sum(x**4) / x.numel()

  return loss


def run(alias, kw, loss_fn, x0s, stats, perturb=0.0):
  params = [torch.tensor(np.array(x, dtype=np.float64) * (1.0 + perturb),
                         requires_grad=True)
            for x in x0s]
  opt, desc = make_torch_opt(alias, kw, params)
  out = [[] for _ in params]
  losses = []
  for t in range(NUM_STEPS):
    for group in opt.param_groups:
      group["lr"] = lr_at(kw["learning_rate"], t)
    opt.zero_grad()
    loss = loss_fn(params)
    loss.backward()
    losses.append(loss.item())
    if alias == "adabound":
      stats["clipped"] += _adabound_clipped(opt, params)
    opt.step()
    if t + 1 in STEPS:
      for o_, p in zip(out, params):
        o_.append(p.detach().numpy().copy())
  traj = [np.stack(o_) for o_ in out]
  assert all(np.all(np.isfinite(x)) for x in traj), (alias, kw)
  return traj, desc, np.array(losses)


def _ams_effect(alias, kw, prob, trajs):
  """For AMSGrad/AMSBound settings: how much the running max changes things."""
  key = "amsbound" if alias == "adabound" else "amsgrad"
  if not (alias == "amsgrad" or kw.get(key)):
    return None
  alias2 = "adam" if alias == "amsgrad" else alias
  kw2 = dict(kw, **{key: False})
  (q,), _, _ = run(alias2, kw2, quad_loss(prob), [prob["quad_x0"]],
                   {"clipped": 0})
  t, _, _ = run(alias2, kw2, tree_loss(prob),
                [prob["tree_b0"], prob["tree_s0"], prob["tree_w0"]],
                {"clipped": 0})
  eff = max(_rel(a, b) for a, b in zip((q, *t), trajs))
  assert eff > 1e-3, ("the max of v is never active", alias, kw)
  return eff


def _rel(a, e):
  return float(np.max(np.abs(a - e) / np.maximum(np.abs(e), 1e-3)))


def _adabound_clipped(opt, params):
  """Counts the coordinates whose step size the bounds clip in the next step.

  Replays the computation of adabound.AdaBound.step (without changing its
  state) so the generator can show that the bounds are active.
  """
  group = opt.param_groups[0]
  base_lr = opt.base_lrs[0]
  b1, b2 = group["betas"]
  n = 0
  with torch.no_grad():
    for p in params:
      st = opt.state[p]
      step = st.get("step", 0) + 1
      grad = p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
      v = st["exp_avg_sq"] * b2 + (1 - b2) * grad * grad if st else (1 - b2) * grad * grad
      if group["amsbound"] and st:
        v = torch.maximum(st["max_exp_avg_sq"], v)
      denom = v.sqrt() + group["eps"]
      ss = group["lr"] * np.sqrt(1 - b2**step) / (1 - b1**step) / denom
      final = group["final_lr"] * group["lr"] / base_lr
      lo = final * (1 - 1 / (group["gamma"] * step + 1))
      hi = final * (1 + 1 / (group["gamma"] * step))
      n += int(((ss < lo) | (ss > hi)).sum())
  return n


def main():
  os.makedirs(OUT, exist_ok=True)
  prob = make_problems()
  np.savez(os.path.join(OUT, "aliases_problems.npz"), **prob,
           num_steps=np.int32(NUM_STEPS))
  xstar = np.linalg.solve(prob["quad_a"], prob["quad_b"])
  d0 = np.linalg.norm(prob["quad_x0"] - xstar)
  only = set(sys.argv[1:])
  for alias, settings in SETTINGS.items():
    if only and alias not in only:
      continue
    arrays = {"steps": STEPS}
    for k, kw in enumerate(settings):
      stats = {"clipped": 0}
      (q,), desc, ql = run(alias, kw, quad_loss(prob), [prob["quad_x0"]],
                           stats)
      (tb, ts, tw), _, tl = run(
          alias, kw, tree_loss(prob),
          [prob["tree_b0"], prob["tree_s0"], prob["tree_w0"]], stats)
      # Sensitivity: a 1e-12 relative perturbation of x0 must stay small,
      # otherwise float64 round-off differences between two correct
      # implementations could grow past the 1e-6 test tolerance.
      (qp,), _, _ = run(alias, kw, quad_loss(prob), [prob["quad_x0"]],
                        {"clipped": 0}, perturb=1e-12)
      tp, _, _ = run(alias, kw, tree_loss(prob),
                     [prob["tree_b0"], prob["tree_s0"], prob["tree_w0"]],
                     {"clipped": 0}, perturb=1e-12)
      amp = max(_rel(qp, q), *(_rel(a, b) for a, b in zip(tp, (tb, ts, tw))))
      amp /= 1e-12
      assert amp < 1e4, ("chaotic setting, round-off would grow", alias, kw)
      ams = _ams_effect(alias, kw, prob, (q, tb, ts, tw))
      arrays[f"s{k}_kwargs"] = np.array(json.dumps(kw, sort_keys=True))
      arrays[f"s{k}_torch"] = np.array(desc)
      arrays[f"s{k}_quad"] = q
      arrays[f"s{k}_tree_b"] = tb
      arrays[f"s{k}_tree_s"] = ts
      arrays[f"s{k}_tree_w"] = tw
      d10 = np.linalg.norm(q[9] - xstar)
      d300 = np.linalg.norm(q[-1] - xstar)
      print(f"{alias:9s} s{k} amp={amp:8.1e} quad |x-x*|: 0:{d0:.3f} 10:{d10:.3f} "
            f"300:{d300:.2e}  tree loss {tl[0]:.3f}->{tl[-1]:.4f}"
            + (f"  ams-effect={ams:.2g}" if ams is not None else "")
            + (f"  clipped={stats['clipped']}" if alias == "adabound" else "")
            + f"  {json.dumps(kw)}")
    np.savez(os.path.join(OUT, f"aliases_{alias}.npz"), **arrays)


if __name__ == "__main__":
  main()
