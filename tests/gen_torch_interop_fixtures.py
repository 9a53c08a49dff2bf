"""Generates tests/fixtures/torch_interop.npz from torch 2.13 (never in CI).

    PYTHONPATH=. /work/main/.venv/bin/python tests/gen_torch_interop_fixtures.py

A small tanh MLP (Linear(4, 8) -> tanh -> Linear(8, 2), MSE, full batch) is
trained 200 steps in torch for each case; after 100 steps the optimizer and
scheduler ``state_dict()`` are stored (per-parameter tensors as arrays, the
param_groups as JSON), with the params at 0, 100 and 200 steps. The test
converts the state_dicts and continues the run in optzoo for 100 steps.
"""
import json
import os

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler as L

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                   "torch_interop.npz")
NAMES = ("0.weight", "0.bias", "2.weight", "2.bias")

CASES = {
    "adamw_onecycle": (
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05,
                                     foreach=False),
        lambda o: L.OneCycleLR(o, max_lr=0.02, total_steps=200)),
    "sgd_nesterov_multistep": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                   weight_decay=1e-3, foreach=False),
        lambda o: L.MultiStepLR(o, [50, 150], 0.3)),
    "adam_amsgrad_cosine": (
        lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True, foreach=False),
        lambda o: L.CosineAnnealingLR(o, 200)),
}


def main():
  rng = np.random.default_rng(0)
  x = torch.tensor(rng.normal(size=(64, 4)))
  y = torch.tensor(rng.normal(size=(64, 2)))
  out = {"data/x": x.numpy(), "data/y": y.numpy()}
  for name, (make_opt, make_sched) in CASES.items():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    if name == "adamw_onecycle":
      for k, v in net.state_dict().items():
        out[f"init/{k}"] = v.numpy().copy()
    opt = make_opt(net.parameters())
    sched = make_sched(opt)
    for i in range(200):
      if i == 100:
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
          for k, v in st.items():
            if v is not None:
              out[f"{name}/state/{idx}/{k}"] = v.numpy().copy()
        out[f"{name}/param_groups"] = np.asarray(json.dumps(
            sd["param_groups"], default=float))
        out[f"{name}/sched_last_epoch"] = np.asarray(
            sched.state_dict()["last_epoch"])
        for k, v in net.state_dict().items():
          out[f"{name}/p100/{k}"] = v.numpy().copy()
      opt.zero_grad()
      nn.functional.mse_loss(net(x), y).backward()
      opt.step()
      sched.step()
    for k, v in net.state_dict().items():
      out[f"{name}/p200/{k}"] = v.numpy().copy()
  out["torch_version"] = np.asarray(torch.__version__)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
  main()
