"""Generates the complex-parameter golden trajectories (torch, complex128).

Run with torch installed (never in CI; the output is committed)::

    python tests/gen_complex_fixtures.py

torch.optim treats a complex parameter as ``torch.view_as_real(param)``: the
real and imaginary parts are two independent real coordinates (second
moments, maxima and square roots are taken per part). optzoo follows that
convention; tests/optax_suite/test_complex.py replays these trajectories.

References run on the complex parameter itself (torch.optim classes, and
pytorch_optimizer's LARS and Lamb, which take complex parameters through
``view_as_real`` / complex norms), except for the ones that reject complex
parameters (``torch.optim.Adafactor``, ``pytorch_optimizer.AdaFactor`` and
``pytorch_optimizer.SM3``): those run on the explicit real view
``torch.view_as_real(z)`` as a real parameter of shape ``z.shape + (2,)``
(same loss, same gradient per part), which is what optzoo's complex support
for them means.

Problem: a weighted complex parabola ``L(z) = sum_k a_k |z_k - t_k|^2`` with
``z`` of shape (8,), whose target has real and imaginary parts of very
different sizes (so the per-part second moment differs clearly from the
modulus |g|^2 that optax uses). torch's gradient of a real loss of a complex
parameter is ``2 a (z - t)`` = JAX's ``conj(jax.grad(L)(z))``.

Output: ``tests/fixtures/complex_parabola.npz`` with ``a``, ``t``, ``z0``,
``steps`` (1-based steps stored), and for each setting ``k``:
``s<k>_name`` (the optzoo factory), ``s<k>_kwargs`` (JSON of its keyword
arguments), ``s<k>_torch`` (the torch call), ``s<k>_shape`` (the shape the
problem's 8 entries are reshaped to, row-major: (8,) or (2, 4)) and
``s<k>_traj`` (complex128, shape (len(steps),) + shape).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytorch_optimizer as PO
import torch

torch.set_default_dtype(torch.float64)

NUM_STEPS = 300
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "complex_parabola.npz")
STEPS = np.array(sorted(set(range(1, 21)) | set(range(30, NUM_STEPS + 1, 10))
                        | {NUM_STEPS}), dtype=np.int32)

# (optzoo name, optzoo kwargs, torch class name, torch kwargs[, options]);
# options: "lib" ("torch": torch.optim, default; "po": pytorch_optimizer),
# "shape" (default (8,)), "real_view" (run the reference on
# torch.view_as_real(z), for the references that reject complex params).
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
    ("adamax", {"learning_rate": 0.1}, "Adamax", {"lr": 0.1}),
    ("adamax", {"learning_rate": 0.05, "b1": 0.8, "b2": 0.99, "eps": 1e-6,
                "weight_decay": 0.01},
     "Adamax", {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}),
    ("adadelta", {"learning_rate": 1.0}, "Adadelta", {"lr": 1.0}),
    ("adadelta", {"learning_rate": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.01},
     "Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.01}),
    ("rprop", {"learning_rate": 0.01}, "Rprop", {"lr": 0.01}),
    ("asgd", {"learning_rate": 0.05, "lambd": 1e-3, "t0": 50.0},
     "ASGD", {"lr": 0.05, "lambd": 1e-3, "t0": 50.0}),
    ("lars", {"learning_rate": 0.2, "trust_coefficient": 0.05, "weight_decay": 0.01},
     "LARS", {"lr": 0.2, "trust_coefficient": 0.05, "weight_decay": 0.01},
     {"lib": "po", "shape": (2, 4)}),
    ("lars", {"learning_rate": 0.2, "momentum": 0.5, "dampening": 0.1,
              "nesterov": True, "trust_coefficient": 0.1},
     "LARS", {"lr": 0.2, "momentum": 0.5, "dampening": 0.1, "nesterov": True,
              "trust_coefficient": 0.1},
     {"lib": "po", "shape": (2, 4)}),
    ("lamb", {"learning_rate": 0.05}, "Lamb", {"lr": 0.05},
     {"lib": "po", "shape": (2, 4)}),
    ("lamb", {"learning_rate": 0.005, "weight_decay": 0.01, "weight_decouple": False,
              "b2": 0.99},
     "Lamb", {"lr": 0.005, "weight_decay": 0.01, "weight_decouple": False,
              "betas": (0.9, 0.99)},
     {"lib": "po"}),
    ("adafactor", {"learning_rate": 0.05}, "Adafactor", {"lr": 0.05},
     {"shape": (2, 4), "real_view": True}),
    ("adafactor", {"learning_rate": 0.005, "weight_decay": 0.01},
     "Adafactor", {"lr": 0.005, "weight_decay": 0.01}, {"real_view": True}),
    ("adafactor", {"variant": "paper", "relative_step": False, "learning_rate": 0.05},
     "AdaFactor", {"lr": 0.05, "relative_step": False, "momentum_dtype": "float64"},
     {"lib": "po", "shape": (2, 4), "real_view": True}),
    ("sm3", {"learning_rate": 0.1}, "SM3", {"lr": 0.1},
     {"lib": "po", "shape": (2, 4), "real_view": True}),
    ("sm3", {"learning_rate": 0.1, "momentum": 0.5, "b2": 0.9}, "SM3",
     {"lr": 0.1, "momentum": 0.5, "beta": 0.9},
     {"lib": "po", "real_view": True}),
]


def make_problem():
  rng = np.random.default_rng(20261202)
  a = rng.uniform(0.5, 3.0, size=8)
  t = rng.normal(size=8) * 2.0 + 1j * rng.normal(size=8) * 0.05
  z0 = rng.normal(size=8) * 0.1 + 1j * rng.normal(size=8) * 3.0
  return a, t, z0


def torch_run(cls_name, kwargs, a, t, z0, options=None):
  options = options or {}
  shape = tuple(options.get("shape", (8,)))
  lib = torch.optim if options.get("lib", "torch") == "torch" else PO
  kwargs = dict(kwargs)
  if kwargs.get("momentum_dtype") == "float64":
    kwargs["momentum_dtype"] = torch.float64
  at = torch.tensor(a.reshape(shape))
  tt = torch.tensor(t.reshape(shape))
  z = torch.tensor(z0.reshape(shape), dtype=torch.complex128)
  if options.get("real_view"):
    # The reference rejects complex parameters: run it on the real view.
    x = torch.view_as_real(z).clone().requires_grad_(True)
    tr = torch.view_as_real(tt)
    loss_fn = lambda: torch.sum(at[..., None] * (x - tr) ** 2)
    read = lambda: torch.view_as_complex(x.detach().clone()).numpy()
    param = x
  else:
    z.requires_grad_(True)
    loss_fn = lambda: torch.sum(at * torch.abs(z - tt) ** 2)
    read = lambda: z.detach().numpy().copy()
    param = z
  opt = getattr(lib, cls_name)([param], foreach=False, **kwargs)
  out = []
  for step in range(1, NUM_STEPS + 1):
    opt.zero_grad()
    loss_fn().backward()
    opt.step()
    if step in STEPS:
      out.append(read())
  return np.stack(out)


def torch_call(cls_name, kwargs, options):
  lib = "torch.optim" if options.get("lib", "torch") == "torch" else "pytorch_optimizer"
  call = f"{lib}.{cls_name}({kwargs})"
  if options.get("real_view"):
    call += " on torch.view_as_real(z) (the reference rejects complex params)"
  return call


def main():
  a, t, z0 = make_problem()
  data = dict(a=a, t=t, z0=z0, steps=STEPS)
  for k, (name, kw, cls_name, tkw, *opt) in enumerate(SETTINGS):
    options = opt[0] if opt else {}
    data[f"s{k}_name"] = np.asarray(name)
    data[f"s{k}_kwargs"] = np.asarray(json.dumps(kw))
    data[f"s{k}_torch"] = np.asarray(torch_call(cls_name, tkw, options))
    data[f"s{k}_shape"] = np.asarray(options.get("shape", (8,)), np.int32)
    data[f"s{k}_traj"] = torch_run(cls_name, tkw, a, t, z0, options)
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes), torch {torch.__version__}")


if __name__ == "__main__":
  main()
