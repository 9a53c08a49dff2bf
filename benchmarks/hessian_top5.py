"""Benchmark: top-5 Hessian eigenvalues of a >=100k-parameter Flax MLP.

Goal: under one minute on 2 CPU cores, without materializing the
Hessian (a dense float32 Hessian of this model would need n^2 * 4 bytes,
about 51 GB). Run on demand:

    taskset -c 0,1 python benchmarks/hessian_top5.py [--iters 50] [--train-steps 200]

It trains the MLP briefly on sklearn digits (not timed), then times
``optzoo.diagnostics.hessian_eigenvalues(k=5)`` on the whole training set:
the first call (compile + run) and a second call (run only), and prints the
eigenvalues with their Lanczos residual bounds.
"""
from __future__ import annotations

import argparse
import os
import time


import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optzoo.diagnostics as dg  # noqa: E402
from optzoo.apps.data import load_digits  # noqa: E402


class MLP(nn.Module):
  width: int = 300

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(10)(x)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--width", type=int, default=300)
  ap.add_argument("--iters", type=int, default=None,
                  help="Lanczos steps (default: optzoo's default for k=5)")
  ap.add_argument("--train-steps", type=int, default=200)
  ap.add_argument("--k", type=int, default=5)
  args = ap.parse_args()

  ds = load_digits()
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  model = MLP(args.width)
  params = model.init(jax.random.key(0), x[:1])
  n = sum(p.size for p in jax.tree.leaves(params))
  print(f"jax {jax.__version__}, devices {jax.devices()}, cpu count {os.cpu_count()}")
  print(f"MLP 64-{args.width}-{args.width}-10: {n:,} parameters; batch {x.shape[0]}")
  assert n >= 100_000, "the benchmark needs >= 100k parameters"

  def loss_fn(p, batch):
    xb, yb = batch
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

  tx = optax.adam(1e-3)

  @jax.jit
  def train(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss_fn)(p, (x, y))
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (p, tx.init(p)), None, length=args.train_steps)[0][0]

  if args.train_steps:
    params = jax.block_until_ready(train(params))
    print(f"trained {args.train_steps} full-batch Adam steps; loss"
          f" {float(loss_fn(params, (x, y))):.4f}")

  times = []
  for label in ("first call (compile + run)", "second call (run only)"):
    t0 = time.perf_counter()
    res = dg.hessian_eigenvalues(loss_fn, params, (x, y), k=args.k,
                                 num_iters=args.iters)
    times.append(time.perf_counter() - t0)
    print(f"{label}: {times[-1]:.2f} s, {res.num_iters} Lanczos steps (HVPs)")
  for lam, r in zip(res.eigenvalues, res.residuals):
    print(f"  lambda = {lam: .6e}   residual bound {r:.2e}")
  dt = times[0]
  ok = dt < 60
  print(f"top-{args.k} in {dt:.2f} s including compilation ->"
        f" {'OK' if ok else 'TOO SLOW'} (goal < 60 s)")


if __name__ == "__main__":
  main()
