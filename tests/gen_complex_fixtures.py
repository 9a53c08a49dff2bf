"""Generates the complex-parameter golden trajectories (torch, complex128).

Run with torch installed (never in CI; the output is committed)::

    python tests/gen_complex_fixtures.py

torch.optim treats a complex parameter as ``torch.view_as_real(param)``: the
real and imaginary parts are two independent real coordinates (second
moments, maxima and square roots are taken per part). optzoo follows that
convention; tests/optax_suite/test_complex.py replays these trajectories.

Problem: a weighted complex parabola ``L(z) = sum_k a_k |z_k - t_k|^2`` with
``z`` of shape (8,), whose target has real and imaginary parts of very
different sizes (so the per-part second moment differs clearly from the
modulus |g|^2 that optax uses). torch's gradient of a real loss of a complex
parameter is ``2 a (z - t)`` = JAX's ``conj(jax.grad(L)(z))``.

Output: ``tests/fixtures/complex_parabola.npz`` with ``a``, ``t``, ``z0``,
``steps`` (1-based steps stored), and for each setting ``k``:
``s<k>_name`` (the optzoo factory), ``s<k>_kwargs`` (JSON of its keyword
arguments), ``s<k>_torch`` (the torch call) and ``s<k>_traj`` (complex128,
shape (len(steps), 8)).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

NUM_STEPS = 300
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "complex_parabola.npz")
STEPS = np.array(sorted(set(range(1, 21)) | set(range(30, NUM_STEPS + 1, 10))
                        | {NUM_STEPS}), dtype=np.int32)

# (optzoo name, optzoo kwargs, torch class name, torch kwargs)
SETTINGS = [
    ("adam", {"learning_rate": 0.1}, "Adam", {"lr": 0.1}),
    ("adam", {"learning_rate": 0.05, "b1": 0.8, "b2": 0.99, "eps": 1e-6,
              "weight_decay": 0.01},
     "Adam", {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}),
    ("adamw", {"learning_rate": 0.1, "weight_decay": 0.05},
     "AdamW", {"lr": 0.1, "weight_decay": 0.05}),
    ("amsgrad", {"learning_rate": 0.1}, "Adam", {"lr": 0.1, "amsgrad": True}),
    # (lr 0.1 oscillates chaotically around the optimum: last-bit
    # differences grow to O(1); 0.02 keeps the closed loop comparable.)
    ("nadam", {"learning_rate": 0.02}, "NAdam", {"lr": 0.02}),
    ("radam", {"learning_rate": 0.1}, "RAdam", {"lr": 0.1}),
    ("adagrad", {"learning_rate": 0.5}, "Adagrad", {"lr": 0.5}),
    ("adagrad", {"learning_rate": 0.5, "lr_decay": 0.01, "weight_decay": 0.01,
                 "initial_accumulator_value": 0.1},
     "Adagrad", {"lr": 0.5, "lr_decay": 0.01, "weight_decay": 0.01,
                 "initial_accumulator_value": 0.1}),
    ("rmsprop", {"learning_rate": 0.01}, "RMSprop", {"lr": 0.01}),
    ("rmsprop", {"learning_rate": 0.01, "centered": True, "momentum": 0.5},
     "RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("sgd", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
     "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
]


def make_problem():
  rng = np.random.default_rng(20261202)
  a = rng.uniform(0.5, 3.0, size=8)
  t = rng.normal(size=8) * 2.0 + 1j * rng.normal(size=8) * 0.05
  z0 = rng.normal(size=8) * 0.1 + 1j * rng.normal(size=8) * 3.0
  return a, t, z0


def torch_run(cls_name, kwargs, a, t, z0):
  z = torch.tensor(z0, dtype=torch.complex128, requires_grad=True)
  opt = getattr(torch.optim, cls_name)([z], foreach=False, **kwargs)
  at, tt = torch.tensor(a), torch.tensor(t)
  out = []
  for step in range(1, NUM_STEPS + 1):
    opt.zero_grad()
    loss = torch.sum(at * torch.abs(z - tt) ** 2)
    loss.backward()
    opt.step()
    if step in STEPS:
      out.append(z.detach().numpy().copy())
  return np.stack(out)


def main():
  a, t, z0 = make_problem()
  data = dict(a=a, t=t, z0=z0, steps=STEPS)
  for k, (name, kw, cls_name, tkw) in enumerate(SETTINGS):
    data[f"s{k}_name"] = np.asarray(name)
    data[f"s{k}_kwargs"] = np.asarray(json.dumps(kw))
    data[f"s{k}_torch"] = np.asarray(f"torch.optim.{cls_name}({tkw})")
    data[f"s{k}_traj"] = torch_run(cls_name, tkw, a, t, z0)
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes), torch {torch.__version__}")


if __name__ == "__main__":
  main()
