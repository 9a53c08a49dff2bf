"""Generates tests/fixtures/torch_port_recipe.npz for the porting notebook.

    PYTHONPATH=. /work/main/.venv/bin/python tests/gen_port_recipe_fixtures.py

The PyTorch recipe shown in colabs/11_port_a_pytorch_recipe.ipynb, run in
torch 2.13 (float32, the notebook's precision) on the first 512 training
digits of optzoo.apps.data.load_digits(): an MLP 64 -> 32 (tanh) -> 10,
AdamW with two param groups (weight decay on the weights only),
LinearLR -> CosineAnnealingLR via SequentialLR, grad-norm clipping, 120 steps
of batch 64. Stored: the initial weights, the loss of every step, and the
optimizer / scheduler state_dicts and weights after 60 steps.
"""
import json
import os

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler as L

from optzoo.apps.data import load_digits

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                   "torch_port_recipe.npz")
STEPS, RESUME, BATCH, N = 120, 60, 64, 512


def main():
  data = load_digits()
  x = torch.tensor(data.x_train[:N].reshape(N, -1), dtype=torch.float32)
  y = torch.tensor(data.y_train[:N], dtype=torch.long)
  torch.manual_seed(0)
  model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
  out = {f"init/{k}": v.numpy().copy() for k, v in model.state_dict().items()}
  decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
  no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=3e-3)
  sched = L.SequentialLR(opt, [L.LinearLR(opt, 0.1, 1.0, 20),
                               L.CosineAnnealingLR(opt, STEPS - 20)], [20])
  losses = []
  for i in range(STEPS):
    if i == RESUME:
      sd = opt.state_dict()
      for idx, st in sd["state"].items():
        for k, v in st.items():
          out[f"resume/state/{idx}/{k}"] = v.numpy().copy()
      out["resume/param_groups"] = np.asarray(json.dumps(sd["param_groups"]))
      out["resume/last_epoch"] = np.asarray(sched.state_dict()["last_epoch"])
      for k, v in model.state_dict().items():
        out[f"resume/{k}"] = v.numpy().copy()
    j = (i * BATCH) % N
    loss = nn.functional.cross_entropy(model(x[j:j + BATCH]), y[j:j + BATCH])
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())
  out["losses"] = np.asarray(losses)
  out["torch_version"] = np.asarray(torch.__version__)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
  main()
