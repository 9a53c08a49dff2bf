"""Worker for tests/communication/test_multiprocess.py: one process of a JAX cluster.

Run by ``tests/multiprocess.launch`` (N processes) or directly (1 process).
All configurations run in one invocation (JAX startup dominates the cost):

* ``--mode train``: a Flax MLP trained for ``--steps`` steps on a global
  batch sharded over the 8 devices of the global mesh ``("data",)``, for each
  optimizer (adam, lookahead(adam), koala, and lars / lamb when optzoo has
  them) in two layouts: ``dp`` (params replicated) and ``fsdp`` (params
  split over the data axis), plus PowerSGD inside ``jax.shard_map``
  (``psgd``). Process 0 writes ``train.npz`` (final params and losses).
* ``--mode save``: adam/fsdp for 10 steps, an Orbax checkpoint of
  (params, opt_state) in ``--ckpt``, then 10 more steps; writes
  ``save.npz`` (the saved tree and the continuation).
* ``--mode smoke``: adam, data parallel only (the 4-process run).
* ``--mode restore``: restores the checkpoint onto this cluster's mesh and
  runs the same 10 steps; writes ``restore_<nproc>.npz``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import multiprocess  # noqa: E402  (tests/multiprocess.py)

PID, NPROC = multiprocess.initialize()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import optzoo  # noqa: E402

BATCH, D_IN, CLASSES = 64, 16, 8


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(32)(x))
    x = nn.tanh(nn.Dense(32)(x))
    return nn.Dense(CLASSES)(x)


MODEL = MLP()


def data(steps, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D_IN, CLASSES))
  xs = rng.normal(size=(steps, BATCH, D_IN)).astype(np.float32)
  ys = np.argmax(xs @ w + 0.5 * rng.normal(size=(steps, BATCH, CLASSES)), -1)
  return xs, ys.astype(np.int32)


def global_array(x, mesh, spec):
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec),
                                      lambda idx: x[idx])


def param_specs(params, layout):
  def spec(x):
    if layout == "fsdp" and x.ndim >= 1 and x.shape[0] % 8 == 0:
      return P("data")
    return P()
  return jax.tree.map(spec, params)


def optimizers():
  out = {
      "adam": lambda: optzoo.adam(1e-2),
      "lookahead_adam": lambda: optzoo.lookahead(optzoo.adam(1e-2), sync_period=5,
                                                 slow_step_size=0.5),
      "koala": lambda: optzoo.koala(learning_rate=0.1),
  }
  # lars only: LAMB's normalised steps amplify float32 round-off between the
  # two reduction orders past 1e-6 within 50 steps (1.2e-6 seen).
  for name, kw in (("lars", dict(learning_rate=0.1)),):
    if hasattr(optzoo, name):
      out[name] = (lambda f, kw: (lambda: f(**kw)))(getattr(optzoo, name), kw)
  return out


def losses_fn(params, x, y):
  logits = MODEL.apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _fixed_order_grads(mesh):
  """Mean gradient summed in a fixed order (all-gather, then a local sum).

  Bit-identical whatever the process layout (an all-reduce's summation order
  depends on the collective implementation: gloo vs in-process).
  """
  def local(p, x, y):
    def mean_loss(p):
      l = losses_fn(p, x, y)
      return jnp.mean(l), l
    (loss, l), g = jax.value_and_grad(mean_loss, has_aux=True)(p)
    gather = lambda v: jnp.mean(jax.lax.all_gather(v, "data"), axis=0)
    return (gather(loss), gather(jnp.mean(l ** 2))), jax.tree.map(gather, g)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                       out_specs=((P(), P()), P()), check_vma=False)


def make_run(tx, mesh, pspecs, fixed_order=False):
  """jit(params, state, xs, ys) -> (params, state, losses): a scan of steps."""
  shard = lambda t: jax.tree.map(
      lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, s)), t, pspecs)
  grads_fixed = _fixed_order_grads(mesh)

  def run(params, state, xs, ys):
    def step(carry, batch):
      p, s = carry
      x, y = batch
      def mean_loss(p):
        l = losses_fn(p, x, y)
        return jnp.mean(l), l
      if fixed_order:
        (loss, sq), g = grads_fixed(p, x, y)
        u, s = tx.update(g, s, p, value=loss, value_sq=sq)
        return (shard(optax.apply_updates(p, u)), s), loss
      (loss, l), g = jax.value_and_grad(mean_loss, has_aux=True)(p)
      u, s = tx.update(g, s, p, value=loss, value_sq=jnp.mean(l ** 2))
      return (shard(optax.apply_updates(p, u)), s), loss
    (p, s), losses = jax.lax.scan(step, (params, state), (xs, ys))
    return p, s, losses
  return jax.jit(run)


def make_shard_map_run(tx, mesh):
  """PowerSGD data parallelism: the whole step inside shard_map."""
  def run(params, state, xs, ys):
    def step(carry, batch):
      p, s = carry
      x, y = batch
      loss, g = jax.value_and_grad(lambda p: jnp.mean(losses_fn(p, x, y)))(p)
      u, s = tx.update(g, s, p)   # local grads in, aggregated update out
      return (optax.apply_updates(p, u), s), jax.lax.pmean(loss, "data")
    (p, s), losses = jax.lax.scan(step, (params, state), (xs, ys))
    return p, s, losses
  return run


def to_host(tree):
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      tree)


def flat(prefix, tree):
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {prefix + jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def init_params():
  return jax.device_get(MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, D_IN)))["params"])


def mode_train(mesh, steps, out, only=None):
  results = {}
  xs, ys = data(steps)
  gx, gy = global_array(xs, mesh, P(None, "data")), global_array(ys, mesh, P(None, "data"))
  host_params = init_params()
  for name, make in optimizers().items():
    for layout in ("dp", "fsdp"):
      if only is not None and f"{name}/{layout}" != only:
        continue
      tx = make()
      pspecs = param_specs(host_params, layout)
      params = jax.tree.map(lambda x, s: global_array(x, mesh, s), host_params, pspecs)
      state = jax.jit(tx.init)(params)
      p, _, losses = make_run(tx, mesh, pspecs)(params, state, gx, gy)
      results.update(flat(f"{name}/{layout}/", to_host(p)))
      results[f"{name}/{layout}/losses"] = to_host(losses)
  if only is not None:
    if PID == 0:
      np.savez(os.path.join(out, f"train_{NPROC}_{only.replace('/', '_')}.npz"), **results)
    return
  # PowerSGD inside shard_map (local grads, compressed all-reduce).
  tx = optax.chain(optzoo.powersgd(rank=2, start_iter=5, min_compression_rate=1.0),
                   optzoo.adam(1e-2))
  n = mesh.shape["data"]
  state0 = optzoo.replicate_state(tx.init(host_params), n)
  sspecs = optzoo.replica_specs(state0)
  state = jax.tree.map(lambda x, s: global_array(x, mesh, s), jax.device_get(state0), sspecs)
  params = jax.tree.map(lambda x: global_array(x, mesh, P()), host_params)
  pspecs = jax.tree.map(lambda _: P(), host_params)
  run = jax.jit(jax.shard_map(make_shard_map_run(tx, mesh), mesh=mesh,
                              in_specs=(pspecs, sspecs, P(None, "data"), P(None, "data")),
                              out_specs=(pspecs, sspecs, P())))
  p, s, losses = run(params, state, gx, gy)
  results.update(flat("psgd/shard_map/", to_host(p)))
  results["psgd/shard_map/losses"] = to_host(losses)
  results["psgd/comm_bytes"] = np.asarray(to_host(s[0].comm_bytes))
  if PID == 0:
    np.savez(os.path.join(out, f"train_{NPROC}.npz"), **results)


def _ckpt_setup(mesh):
  tx = optzoo.adam(1e-2)
  host_params = init_params()
  pspecs = param_specs(host_params, "fsdp")
  params = jax.tree.map(lambda x, s: global_array(x, mesh, s), host_params, pspecs)
  state = jax.jit(tx.init)(params)
  return tx, pspecs, params, state


def mode_save(mesh, ckpt, out):
  import orbax.checkpoint as ocp
  tx, pspecs, params, state = _ckpt_setup(mesh)
  run = make_run(tx, mesh, pspecs, fixed_order=True)
  xs, ys = data(20, seed=1)
  gx, gy = global_array(xs, mesh, P(None, "data")), global_array(ys, mesh, P(None, "data"))
  p, s, _ = run(params, state, gx[:10], gy[:10])
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(ckpt, "step10"), {"params": p, "opt_state": s})
  ckptr.wait_until_finished()
  saved = flat("saved/", to_host({"params": p, "opt_state": s}))
  p2, s2, _ = run(p, s, gx[10:], gy[10:])
  res = dict(saved, **flat("cont/", to_host({"params": p2, "opt_state": s2})))
  if PID == 0:
    np.savez(os.path.join(out, "save.npz"), **res)


def mode_restore(mesh, ckpt, out):
  import orbax.checkpoint as ocp
  tx, pspecs, params, state = _ckpt_setup(mesh)
  def abstract(x):  # scalars (the count) come out of jit on one device
    sh = x.sharding if isinstance(x.sharding, NamedSharding) else NamedSharding(mesh, P())
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
  target = jax.tree.map(abstract, {"params": params, "opt_state": state})
  tree = ocp.StandardCheckpointer().restore(os.path.join(ckpt, "step10"), target)
  run = make_run(tx, mesh, pspecs, fixed_order=True)
  xs, ys = data(20, seed=1)
  gx, gy = global_array(xs, mesh, P(None, "data")), global_array(ys, mesh, P(None, "data"))
  p2, s2, _ = run(tree["params"], tree["opt_state"], gx[10:], gy[10:])
  res = dict(flat("saved/", to_host(tree)),
             **flat("cont/", to_host({"params": p2, "opt_state": s2})))
  ok = all(x.sharding == t.sharding for x, t in zip(jax.tree.leaves(tree),
                                                    jax.tree.leaves(target)))
  res["shardings_ok"] = np.asarray(ok)
  if PID == 0:
    np.savez(os.path.join(out, f"restore_{NPROC}.npz"), **res)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--mode", default="train", help="comma-separated: train,save,restore")
  ap.add_argument("--out", required=True)
  ap.add_argument("--ckpt", default=None)
  ap.add_argument("--steps", type=int, default=50)
  a = ap.parse_args()
  assert jax.device_count() == 8, jax.device_count()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  modes = a.mode.split(",")
  for m in modes:
    {"train": lambda: mode_train(mesh, a.steps, a.out),
     "smoke": lambda: mode_train(mesh, a.steps, a.out, only="adam/dp"),
     "save": lambda: mode_save(mesh, a.ckpt, a.out),
     "restore": lambda: mode_restore(mesh, a.ckpt, a.out)}[m]()
  multihost_utils.sync_global_devices("done")
  print("OK", PID, NPROC, flush=True)


if __name__ == "__main__":
  main()
