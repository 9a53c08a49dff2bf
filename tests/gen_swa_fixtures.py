"""Generates tests/fixtures/torch_swa.npz from torch 2.13 (never in CI).

    PYTHONPATH=. /work/main/.venv/bin/python tests/gen_swa_fixtures.py

A small BatchNorm MLP (the torch twin of optzoo.nn.MLP(hidden=(8, 6),
num_classes=3, norm="batch"): Linear(no bias) -> BatchNorm1d -> ReLU, x2, ->
Linear) trained 60 steps by SGD(momentum) with CosineAnnealingLR then SWALR
from step 40. Stored (float64):

* ``traj/<name>``: every parameter and BN buffer after each optimizer step;
* ``swa/<name>``: AveragedModel (SWA, use_buffers=False) updated from step
  40 on, then ``update_bn`` over the data (``swa_bn/<name>``);
* ``ema/<name>``: AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(0.9),
  use_buffers=True) updated every step;
* ``data/x``: the inputs (batches of 20), ``lr``: the lr of every step;
* ``swalr/<case>``: lr traces of CosineAnnealingLR -> SWALR configurations.
"""
import os

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler as L
from torch.optim import swa_utils as U

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                   "torch_swa.npz")
STEPS, SWA_START, BATCH = 60, 40, 20


def model():
  torch.manual_seed(0)
  return nn.Sequential(nn.Linear(5, 8, bias=False), nn.BatchNorm1d(8),
                       nn.ReLU(), nn.Linear(8, 6, bias=False),
                       nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def tensors(m):
  out = {k: v.detach().numpy().copy() for k, v in m.named_parameters()}
  for k, v in m.named_buffers():
    if "num_batches" not in k:
      out[k] = v.detach().numpy().copy()
  return out


def main():
  out = {}
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  y = rng.integers(0, 3, size=200)
  net = model()
  for k, v in tensors(net).items():
    out[f"init/{k}"] = v
  opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9,
                        foreach=False)
  sched = L.CosineAnnealingLR(opt, T_max=SWA_START)
  swa_sched = U.SWALR(opt, swa_lr=0.02, anneal_epochs=10)
  swa = U.AveragedModel(net)
  ema = U.AveragedModel(net, multi_avg_fn=U.get_ema_multi_avg_fn(0.9),
                        use_buffers=True)
  traj, lrs_ = {}, []
  for i in range(STEPS):
    j = (i * BATCH) % 200
    xb, yb = torch.tensor(x[j:j + BATCH]), torch.tensor(y[j:j + BATCH])
    lrs_.append(opt.param_groups[0]["lr"])
    opt.zero_grad()
    nn.functional.cross_entropy(net(xb), yb).backward()
    opt.step()
    ema.update_parameters(net)
    if i >= SWA_START:
      swa.update_parameters(net)
      swa_sched.step()
    else:
      sched.step()
    for k, v in tensors(net).items():
      traj.setdefault(k, []).append(v)
  for k, v in traj.items():
    out[f"traj/{k}"] = np.stack(v)
  for k, v in tensors(swa.module).items():
    out[f"swa/{k}"] = v
  for k, v in tensors(ema.module).items():
    out[f"ema/{k}"] = v
  loader = [torch.tensor(x[j:j + BATCH]) for j in range(0, 200, BATCH)]
  U.update_bn(loader, swa)
  for k, v in tensors(swa.module).items():
    out[f"swa_bn/{k}"] = v
  out["data/x"], out["lr"] = x, np.asarray(lrs_)
  # SWALR after CosineAnnealingLR, several configurations.
  for name, kw in {"cos10": dict(anneal_epochs=10),
                   "linear5": dict(anneal_epochs=5, anneal_strategy="linear"),
                   "cos0": dict(anneal_epochs=0),
                   "linear30": dict(anneal_epochs=30,
                                    anneal_strategy="linear")}.items():
    o = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    s1 = L.CosineAnnealingLR(o, T_max=300)
    s2 = None
    vals = []
    for i in range(1000):
      vals.append(o.param_groups[0]["lr"])
      o.step()
      if i >= 100:
        # Built when it takes over: with anneal_epochs=0 a SWALR built at
        # the start would set swa_lr at once and CosineAnnealingLR's
        # recursion would then scale that.
        s2 = s2 or U.SWALR(o, swa_lr=0.01, **kw)
        s2.step()
      else:
        s1.step()
    out[f"swalr/{name}"] = np.asarray(vals)
  out["torch_version"] = np.asarray(torch.__version__)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
  main()
