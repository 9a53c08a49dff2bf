"""Communication-efficient data parallelism on a real 2-process JAX cluster.

    python benchmarks/communication.py            # 2 processes x 4 CPU devices
    python benchmarks/communication.py --processes 4 --devices 2

Launches the processes on localhost (gloo CPU collectives, see
``tests/multiprocess.py``) and, for each method, inside ``jax.shard_map``
over the 8-device ``"data"`` axis:

1. an MLP (``--mlp``: ``2M`` = 512-1024-1024-512-10, the default, or
   ``10M`` = 1024-2048-2048-1024-1024-10, or comma-separated widths): bytes
   one replica sends per step (``optzoo.communication_stats``; for local SGD
   the mean over a sync period) and the step time (median of 3 steps after a
   warm-up; local SGD: the mean over two sync periods);
2. digits (scikit-learn, 64-512-512-10 MLP): test accuracy after a fixed
   budget of 300 steps (global batch 256, Adam 1e-3 after the compressor).

The baseline is a dense mean all-reduce of the gradients. Prints a markdown
table; ``--json PATH`` also writes the numbers. ``--only "dense,powersgd r4"``
runs the methods whose name contains one of the comma-separated strings;
each method's progress is appended to progress.txt as it finishes. The load
average (``os.getloadavg``) before and after is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import multiprocess  # noqa: E402  (tests/multiprocess.py)

MLPS = {"10M": (1024, 2048, 2048, 1024, 1024, 10), "2M": (512, 1024, 1024, 512, 10)}
SMALL = (64, 512, 512, 10)


def mlp_sizes(spec):
  """``--mlp``: a preset name or comma-separated layer widths."""
  if spec in MLPS:
    return MLPS[spec]
  return tuple(int(w) for w in spec.split(","))


def methods(optzoo, optax, inner):
  """name -> factory of the chain (compressor, then the optimizer)."""
  return {
      "dense all-reduce": lambda: optax.chain(dense_allreduce(), inner()),
      "powersgd r4": lambda: optax.chain(optzoo.powersgd(rank=4, start_iter=10), inner()),
      "powersgd r1": lambda: optax.chain(optzoo.powersgd(rank=1, start_iter=10), inner()),
      "top-k 1%": lambda: optax.chain(optzoo.topk_compression(0.01), inner()),
      "random-k 1%": lambda: optax.chain(optzoo.randomk_compression(0.01), inner()),
      "qsgd s=16": lambda: optax.chain(optzoo.qsgd(16), inner()),
      "ef-signsgd": lambda: optax.chain(optzoo.ef_signsgd(), inner()),
      "signsgd majority": lambda: optax.chain(optzoo.signsgd_majority_vote(0.9), inner()),
      "local sgd H=4": lambda: optzoo.local_sgd(inner(), sync_period=4),
  }


def dense_allreduce():
  import jax
  import optax
  def update(g, s, p=None):
    return jax.lax.pmean(g, "data"), s
  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def worker(args):
  pid, nproc = multiprocess.initialize()
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  import optzoo
  from optzoo.apps import data as zdata

  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  n = mesh.shape["data"]

  def garr(x, spec):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec),
                                        lambda idx: x[idx])

  def mlp_init(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return {f"l{i}": {"w": (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
                      "b": np.zeros((b,), np.float32)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}

  def mlp(p, x):
    k = len(p)
    for i in range(k):
      x = x @ p[f"l{i}"]["w"] + p[f"l{i}"]["b"]
      if i < k - 1:
        x = jax.nn.relu(x)
    return x

  def loss_fn(p, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp(p, x), y))

  def setup(tx, host_params):
    # params per replica (local SGD needs it; the others stay identical)
    stacked = jax.tree.map(lambda x: np.broadcast_to(x, (n,) + x.shape), host_params)
    pspec = jax.tree.map(lambda _: P("data"), host_params)
    params = jax.tree.map(lambda x, s: garr(x, s), stacked, pspec)
    st = optzoo.replicate_state(tx.init(host_params), n)
    sspec = optzoo.replica_specs(st)
    state = jax.tree.map(lambda x, s: garr(x, s), jax.device_get(st), sspec)
    return params, state, pspec, sspec

  def local_step(tx):
    def step(p, s, x, y):
      g = jax.grad(loss_fn)(p, x, y)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s
    return step

  def bytes_of(s):
    leaves = [x for x in jax.tree.leaves(s, is_leaf=lambda x: hasattr(x, "comm_bytes"))
              if hasattr(x, "comm_bytes")]
    if not leaves:
      return None
    return sum(x.comm_bytes[None] for x in leaves)

  results = {}
  big_sizes = mlp_sizes(args.mlp)
  big = mlp_init(big_sizes)
  n_big = sum(v.size for v in jax.tree.leaves(big))
  digits = zdata.load_digits(seed=0)
  small = mlp_init(SMALL, seed=1)
  n_small = sum(v.size for v in jax.tree.leaves(small))
  rng = np.random.default_rng(0)
  steps, gb = args.steps, 256
  idx = rng.integers(0, len(digits.x_train), size=(steps, gb))
  xs = garr(digits.x_train[idx].reshape(steps, gb, -1).astype(np.float32), P(None, "data"))
  ys = garr(digits.y_train[idx].astype(np.int32), P(None, "data"))
  bx = garr(np.random.default_rng(1).normal(size=(n * 8, big_sizes[0])).astype(np.float32), P("data"))
  by = garr(np.random.default_rng(2).integers(0, 10, size=(n * 8,)).astype(np.int32), P("data"))

  def selected(name):
    return not args.only or any(w.strip() in name for w in args.only.split(","))

  def progress(msg):
    # Appended to progress.txt beside the results (the launcher keeps the
    # workers' output until they exit), so a long run can be followed.
    if pid == 0:
      with open(os.path.join(os.path.dirname(args.worker_out), "progress.txt"),
                "a") as fh:
        fh.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

  for name, make in methods(optzoo, optax, lambda: optzoo.sgd(0.01)).items():
    if not selected(name):
      continue
    tx = make()
    params, state, pspec, sspec = setup(tx, big)
    inner = local_step(tx)

    def one(p, s, x, y):
      lp = jax.tree.map(lambda a: a[0], p)
      ls = s
      lp, ls = inner(lp, ls, x, y)
      b = bytes_of(ls)
      b = jnp.zeros((1,), jnp.int32) if b is None else b
      return jax.tree.map(lambda a: a[None], lp), ls, b
    f = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=(pspec, sspec, P("data"), P("data")),
                              out_specs=(pspec, sspec, P("data"))), donate_argnums=(0, 1))
    times, sent = [], []
    for i in range(12):
      t0 = time.perf_counter()
      params, state, b = f(params, state, bx, by)
      jax.block_until_ready(params)
      times.append(time.perf_counter() - t0)
      sent.append(int(np.asarray(b.addressable_shards[0].data)[0]))
    dense = 4 * n_big
    if name == "dense all-reduce":
      sent = [dense] * len(sent)
    per_step = float(np.mean(sent[10:12])) if name.startswith("powersgd") else float(np.mean(sent[4:12]))
    # local SGD: the mean over two sync periods (a median would be a step
    # without communication); the others: the median of the last 3 steps
    step_s = (float(np.mean(times[4:12])) if name.startswith("local")
              else statistics.median(times[9:12]))
    results[name] = {"bytes_per_step": per_step, "ratio": dense / max(per_step, 1),
                     "step_ms": 1e3 * step_s}
    progress(f"{n_big / 1e6:.1f}M MLP, {name}: {results[name]}")
    del params, state

  for name, make in methods(optzoo, optax, lambda: optzoo.adam(1e-3)).items():
    if not selected(name):
      continue
    tx = make()
    params, state, pspec, sspec = setup(tx, small)
    inner = local_step(tx)

    def train(p, s, xs, ys):
      lp = jax.tree.map(lambda a: a[0], p)
      def body(c, b):
        return inner(*c, *b), None
      (lp, s), _ = jax.lax.scan(body, (lp, s), (xs, ys))
      return jax.tree.map(lambda a: a[None], lp), s
    f = jax.jit(jax.shard_map(train, mesh=mesh,
                              in_specs=(pspec, sspec, P(None, "data"), P(None, "data")),
                              out_specs=(pspec, sspec)))
    params, state = f(params, state, xs, ys)
    p0 = jax.tree.map(lambda a: np.asarray(a.addressable_shards[0].data)[0], params)
    logits = np.asarray(mlp(p0, jnp.asarray(digits.x_test.reshape(len(digits.x_test), -1),
                                            jnp.float32)))
    acc = float(np.mean(np.argmax(logits, -1) == digits.y_test))
    results.setdefault(name, {})["digits_acc"] = acc
    stats = optzoo.communication_stats(state) if name != "dense all-reduce" else None
    results[name]["digits_bytes_per_step"] = (
        4 * n_small if stats is None else stats["comm_bytes"])
    progress(f"digits, {name}: test accuracy {acc:.4f}")

  meta = {"processes": nproc, "devices": jax.device_count(), "params_big": int(n_big),
          "mlp": list(big_sizes),
          "params_small": int(n_small), "digits_steps": steps}
  if pid == 0:
    with open(args.worker_out, "w") as fh:
      json.dump({"meta": meta, "results": results}, fh)


def table(res):
  meta, rows = res["meta"], res["results"]
  dense = rows.get("dense all-reduce", {})
  big = f"{meta['params_big'] / 1e6:.1f}M"
  lines = [f"{meta['processes']} processes x {meta['devices'] // meta['processes']} CPU"
           f" devices; MLP {'-'.join(map(str, meta['mlp']))} ({big} params); digits MLP"
           f" {meta['params_small'] / 1e3:.0f}K params, {meta['digits_steps']} steps;"
           f" load average {res.get('load_before', '?')} before,"
           f" {res.get('load_after', '?')} after; {res.get('wall_s', 0):.0f} s",
           "",
           f"| method | bytes/step/replica ({big} MLP) | fewer bytes vs dense | step time (ms)"
           " | digits test acc | Δ acc vs dense (points) |",
           "|---|---:|---:|---:|---:|---:|"]
  for name, r in rows.items():
    lines.append(
        f"| {name} | {r.get('bytes_per_step', float('nan')):,.0f} |"
        f" {r.get('ratio', float('nan')):.1f}x | {r.get('step_ms', float('nan')):.0f} |"
        f" {100 * r.get('digits_acc', float('nan')):.1f}% |"
        f" {100 * (r.get('digits_acc', 0) - dense.get('digits_acc', 0)):+.1f} |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--devices", type=int, default=4, help="CPU devices per process")
  ap.add_argument("--steps", type=int, default=300, help="digits training steps")
  ap.add_argument("--mlp", default="2M",
                  help="the step-time MLP: " + ", ".join(MLPS) + " or comma-separated widths")
  ap.add_argument("--only", default="",
                  help="comma-separated: run the methods whose name contains one")
  ap.add_argument("--json", default=None)
  ap.add_argument("--timeout", type=float, default=3000)
  ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker_out:
    worker(args)
    return
  import tempfile
  out = os.path.join(tempfile.mkdtemp(prefix="optzoo_comm_"), "res.json")
  print("progress:", os.path.join(os.path.dirname(out), "progress.txt"), flush=True)
  mlp_sizes(args.mlp)  # fail early on a bad spec
  extra = ["--steps", str(args.steps), "--mlp", args.mlp, "--worker-out", out]
  if args.only:
    extra += ["--only", args.only]
  env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  load = lambda: "/".join(f"{x:.1f}" for x in os.getloadavg())
  load_before, t0 = load(), time.perf_counter()
  multiprocess.launch(os.path.abspath(__file__), args.processes, args.devices,
                              extra, timeout=args.timeout, env=env)
  with open(out) as fh:
    res = json.load(fh)
  res.update(load_before=load_before, load_after=load(),
             wall_s=time.perf_counter() - t0)
  print(table(res))
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(res, fh, indent=1)


if __name__ == "__main__":
  main()
