"""Golden fixtures for PowerSGD and local SGD from torch.distributed (2 ranks).

Run with a torch venv (never in CI; the outputs are committed)::

    python tests/gen_communication_fixtures.py

Two ranks are spawned with ``torch.multiprocessing`` on a gloo process group
on localhost, CPU, float64.

* ``powersgd_<cfg>.npz`` (cfg in ``ef1_ws1, ef1_ws0, ef0_ws1, ef0_ws0``:
  ``use_error_feedback`` / ``warm_start``): a tiny model under
  ``DistributedDataParallel`` with ``powerSGD_hook`` (rank 2,
  ``start_powerSGD_iter=2``, ``min_compression_rate=1``). Each rank has its
  own data. Stored per step: ``g<r>_<name>`` the rank's local gradient
  (recorded in a wrapper around the hook, before it runs), ``out_<name>``
  the gradient DDP hands back (the hook's result, the same on both ranks),
  and ``q_<name>`` the Q matrix each compressed step starts from, before its
  orthogonalisation (recorded from the hook's ``_orthogonalize`` calls;
  torch draws it from its own generator, the test injects it).
  Parameters: ``w1 (8, 5)``, ``b1 (8,)``, ``w2 (3, 8)``, ``b2 (3,)``,
  ``w3 (4, 2, 3)`` (viewed (4, 6)), ``w4 (2, 3)`` (not worth compressing at
  rank 2).
* ``local_sgd.npz``: ``PeriodicModelAverager(period=4, warmup_steps=3)``
  after every ``SGD(lr=0.05, momentum=0.9)`` step, with all-reduced
  (averaged) gradients for the first ``warmup_steps`` steps, as DDP's
  ``post_localSGD_hook`` does. Stored: ``g<r>_<name>`` the local gradients,
  ``p<r>_<name>`` the params after each step, ``p0init_<name>``.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
PSGD_STEPS = 104
LSGD_STEPS = 40
NAMES = ("w1", "b1", "w2", "b2", "w3", "w4")
BATCH = 6


class Tiny(torch.nn.Module):

  def __init__(self):
    super().__init__()
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.nn.Parameter(torch.randn(*s, generator=g) * 0.5)
    self.w1, self.b1 = r(8, 5), r(8)
    self.w2, self.b2 = r(3, 8), r(3)
    self.w3, self.w4 = r(4, 2, 3), r(2, 3)

  def forward(self, x, u, v, y):
    h = torch.tanh(x @ self.w1.T + self.b1)
    z = h @ self.w2.T + self.b2
    t = torch.tanh(u @ self.w3.reshape(4, 6).T)
    return (((z - y) ** 2).sum(1).mean() + 0.1 * (t ** 2).sum(1).mean()
            + 0.1 * ((v @ self.w4) ** 2).sum(1).mean())


def batch(rank, step):
  g = torch.Generator().manual_seed(1000 * rank + step)
  return (torch.randn(BATCH, 5, generator=g), torch.randn(BATCH, 6, generator=g),
          torch.randn(BATCH, 2, generator=g), torch.randn(BATCH, 3, generator=g))


def _powersgd_worker(rank, port, ef, ws, path):
  from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psh
  os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
  torch.set_default_dtype(torch.float64)
  dist.init_process_group("gloo", rank=rank, world_size=2)
  model = Tiny()
  names = {id(p): n for n, p in model.named_parameters()}
  ddp = torch.nn.parallel.DistributedDataParallel(model)
  state = psh.PowerSGDState(process_group=None, matrix_approximation_rank=2,
                            start_powerSGD_iter=2, min_compression_rate=1,
                            use_error_feedback=ef, warm_start=ws, random_seed=0)
  rec = {"local": None, "orth": []}
  orig = psh._orthogonalize

  def spy(matrices, epsilon=0):
    rec["orth"].append(matrices.detach().clone())
    return orig(matrices, epsilon)

  psh._orthogonalize = spy

  def hook(st, bucket):
    rec["local"] = {names[id(p)]: g.detach().clone().reshape(p.shape)
                    for p, g in zip(bucket.parameters(), bucket.gradients())}
    return psh.powerSGD_hook(st, bucket)

  ddp.register_comm_hook(state, hook)
  opt = torch.optim.SGD(model.parameters(), lr=0.05)
  out = {}
  for step in range(PSGD_STEPS):
    rec["orth"].clear()
    opt.zero_grad()
    ddp(*batch(rank, step)).backward()
    for n, p in model.named_parameters():
      out.setdefault(f"g{rank}_{n}", []).append(rec["local"][n].numpy())
      out.setdefault(f"out_{n}", []).append(p.grad.detach().numpy().copy())
    # The first orthogonalisations of a compressed step are the Qs (one
    # (1, m, r) batch per compressed matrix, m distinct here).
    qs = {q.shape[1]: q[0].numpy() for q in rec["orth"][:3]} if rec["orth"] else {}
    for n, m in (("w1", 5), ("w2", 8), ("w3", 6)):
      out.setdefault(f"q_{n}", []).append(qs.get(m, np.zeros((m, 2))))
    opt.step()
  if rank == 0:
    np.savez(path, **{k: np.stack(v) for k, v in out.items() if not k.startswith("g1")},
             **_gather_rank1(out))
  else:
    _send_rank1(out)
  dist.barrier()
  dist.destroy_process_group()


def _send_rank1(out):
  for k in sorted(k for k in out if k.startswith("g1")):
    dist.send(torch.as_tensor(np.stack(out[k])), dst=0)


def _gather_rank1(out):
  got = {}
  for k in sorted(k.replace("g0", "g1") for k in out if k.startswith("g0")):
    buf = torch.empty(np.stack(out[k.replace("g1", "g0")]).shape)
    dist.recv(buf, src=1)
    got[k] = buf.numpy()
  return got


def _local_sgd_worker(rank, port, path):
  from torch.distributed.algorithms.model_averaging import averagers
  os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
  torch.set_default_dtype(torch.float64)
  dist.init_process_group("gloo", rank=rank, world_size=2)
  model = Tiny()
  out = {f"p0init_{n}": p.detach().numpy().copy() for n, p in model.named_parameters()}
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
  avg = averagers.PeriodicModelAverager(period=4, warmup_steps=3)
  rec = {}
  for step in range(LSGD_STEPS):
    opt.zero_grad()
    model(*batch(rank, step)).backward()
    for n, p in model.named_parameters():
      rec.setdefault(f"g{rank}_{n}", []).append(p.grad.detach().numpy().copy())
      if step < 3:  # post_localSGD_hook: all-reduce during the warm-up
        dist.all_reduce(p.grad)
        p.grad /= 2
    opt.step()
    avg.average_parameters(model.parameters())
    for n, p in model.named_parameters():
      rec.setdefault(f"p{rank}_{n}", []).append(p.detach().numpy().copy())
  keys = sorted(rec)
  mine = {k: np.stack(rec[k]) for k in keys}
  other = {}
  for k in sorted(k for k in keys):
    kk = k[0] + str(1 - rank) + k[2:]
    t = torch.as_tensor(mine[k])
    buf = torch.empty_like(t)
    if rank == 0:
      dist.recv(buf, src=1)
    else:
      dist.send(t, dst=0)
    other[kk] = buf.numpy()
  if rank == 0:
    np.savez(path, **out, **mine, **other)
  dist.barrier()
  dist.destroy_process_group()


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main():
  os.makedirs(OUT, exist_ok=True)
  for ef in (1, 0):
    for ws in (1, 0):
      path = os.path.join(OUT, f"powersgd_ef{ef}_ws{ws}.npz")
      mp.spawn(_powersgd_worker, args=(_port(), bool(ef), bool(ws), path), nprocs=2)
      print("wrote", path)
  path = os.path.join(OUT, "local_sgd.npz")
  mp.spawn(_local_sgd_worker, args=(_port(), path), nprocs=2)
  print("wrote", path)


if __name__ == "__main__":
  main()
