"""Data-parallel and fully sharded training with optzoo on any JAX cluster.

The same script runs on one process, on N processes on one machine (CPU,
gloo collectives) and on a TPU pod slice; see docs/multi_process.md.

    # 1 process, 8 simulated CPU devices
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel.py

    # 2 processes x 4 CPU devices on localhost
    for i in 0 1; do
      XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/data_parallel.py \
          --coordinator 127.0.0.1:12355 --num-processes 2 --process-id $i &
    done; wait

    # TPU pod slice: the same command on every host (JAX finds the cluster)
    python examples/data_parallel.py --tpu

Modes (``--mode``): ``dp`` (params replicated, batch sharded: jit inserts the
gradient all-reduce), ``fsdp`` (params and optimizer state split over the
data axis), ``powersgd`` (the step inside ``jax.shard_map``: local gradients,
PowerSGD's compressed all-reduce, then Adam) and ``local_sgd``.
"""
from __future__ import annotations

import argparse


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--coordinator", default=None, help="host:port of process 0")
  ap.add_argument("--num-processes", type=int, default=1)
  ap.add_argument("--process-id", type=int, default=0)
  ap.add_argument("--tpu", action="store_true", help="auto-detected TPU cluster")
  ap.add_argument("--mode", default="fsdp", choices=("dp", "fsdp", "powersgd", "local_sgd"))
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--optimizer", default="adam", help="any optzoo alias, e.g. koala")
  a = ap.parse_args()

  import jax
  if a.tpu:
    jax.distributed.initialize()
  elif a.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=a.coordinator,
                               num_processes=a.num_processes, process_id=a.process_id)

  import flax.linen as nn
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P

  import optzoo

  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  n = mesh.shape["data"]

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(256)(x))
      x = nn.relu(nn.Dense(256)(x))
      return nn.Dense(10)(x)

  model = MLP()
  rng = np.random.default_rng(0)         # the same data on every process
  w_true = rng.normal(size=(64, 10))
  xs = rng.normal(size=(a.steps, 32 * n, 64)).astype(np.float32)
  ys = np.argmax(xs @ w_true, -1).astype(np.int32)

  def garr(x, spec):                    # each process fills its own shards
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec),
                                        lambda idx: x[idx])

  host_params = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64))))["params"]

  def loss_fn(p, x, y):
    l = optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y)
    return jnp.mean(l), l

  gx, gy = garr(xs, P(None, "data")), garr(ys, P(None, "data"))
  if a.mode in ("dp", "fsdp"):
    tx = getattr(optzoo, a.optimizer)()
    spec = lambda x: P("data") if a.mode == "fsdp" and x.shape[0] % n == 0 else P()
    pspecs = jax.tree.map(spec, host_params)
    params = jax.tree.map(lambda x, s: garr(x, s), host_params, pspecs)
    state = jax.jit(tx.init)(params)

    @jax.jit
    def train(p, s, xs, ys):
      def step(c, b):
        p, s = c
        (loss, l), g = jax.value_and_grad(loss_fn, has_aux=True)(p, *b)
        u, s = tx.update(g, s, p, value=loss, value_sq=jnp.mean(l ** 2))
        return (optax.apply_updates(p, u), s), loss
      (p, s), losses = jax.lax.scan(step, (p, s), (xs, ys))
      return p, s, losses
    params, state, losses = train(params, state, gx, gy)
  else:
    inner = optzoo.adam(1e-3)
    tx = (optax.chain(optzoo.powersgd(rank=4, start_iter=10), inner)
          if a.mode == "powersgd" else optzoo.local_sgd(inner, sync_period=4))
    # Per-replica params (local SGD lets them drift between syncs).
    pspecs = jax.tree.map(lambda _: P("data"), host_params)
    params = jax.tree.map(lambda x: garr(np.broadcast_to(x, (n,) + x.shape), P("data")),
                          host_params)
    st = optzoo.replicate_state(tx.init(host_params), n)
    sspecs = optzoo.replica_specs(st)
    state = jax.tree.map(lambda x, s: garr(x, s), jax.device_get(st), sspecs)

    def train(p, s, xs, ys):
      p = jax.tree.map(lambda v: v[0], p)
      def step(c, b):
        p, s = c
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, *b)
        u, s = tx.update(g, s, p)      # local gradient in, all-reduce inside
        return (optax.apply_updates(p, u), s), jax.lax.pmean(loss, "data")
      (p, s), losses = jax.lax.scan(step, (p, s), (xs, ys))
      return jax.tree.map(lambda v: v[None], p), s, losses
    train = jax.jit(jax.shard_map(train, mesh=mesh,
                                  in_specs=(pspecs, sspecs, P(None, "data"), P(None, "data")),
                                  out_specs=(pspecs, sspecs, P())))
    params, state, losses = train(params, state, gx, gy)

  if jax.process_index() == 0:
    losses = np.asarray(losses.addressable_shards[0].data)
    msg = (f"{jax.process_count()} process(es), {n} devices, mode={a.mode}:"
           f" loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if a.mode in ("powersgd", "local_sgd"):
      stats = optzoo.communication_stats(state)
      msg += (f"; last step sent {stats['comm_bytes']} bytes/replica vs"
              f" {stats['dense_bytes']} dense")
    print(msg, flush=True)


if __name__ == "__main__":
  main()
