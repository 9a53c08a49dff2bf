"""The same optzoo training code, data-parallel and fully sharded.

    python -m benchmarks.sharding_example            # 8 simulated CPU devices

This is what a user does on a TPU pod: build a ``Mesh`` over the devices,
say how parameters and the batch are laid out with ``NamedSharding``, and
``jax.jit`` the unchanged training step. optzoo adds nothing: its
transformations are plain elementwise/tree code, so XLA's sharding
propagation places the optimizer state like the parameters and runs the
update without moving parameters between devices.

* data parallel: parameters replicated, the batch split over ``data``;
* fully sharded (FSDP / ZeRO-3 style): parameters *and* optimizer state split
  over ``data`` too; the batch is still split over ``data``; XLA gathers
  weights for the matmuls and reduce-scatters the gradients.

On a real pod you would skip the XLA_FLAGS line and use ``jax.devices()``.
Run on CPU, the script checks that both layouts give the same loss curve as
a single device, and that the optimizer state carries the params' sharding.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import optzoo  # noqa: E402


# ----------------------------------------------------------------------------
# Ordinary training code: nothing here knows about devices.
# ----------------------------------------------------------------------------
def init_params(key, sizes=(64, 256, 256, 10)):
  params = {}
  for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, sub = jax.random.split(key)
    params[f"dense{i}"] = {
        "kernel": jax.random.normal(sub, (m, n), jnp.float32) / np.sqrt(m),
        "bias": jnp.zeros((n,), jnp.float32)}
  return params


def loss_fn(params, x, y):
  h = x
  names = sorted(params)
  for name in names[:-1]:
    h = jax.nn.gelu(h @ params[name]["kernel"] + params[name]["bias"])
  logits = h @ params[names[-1]]["kernel"] + params[names[-1]]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train_step(tx):
  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return train_step


def data(step, batch=256):
  rng = np.random.default_rng(step)
  x = rng.normal(size=(batch, 64)).astype(np.float32)
  y = (x[:, :10].argmax(-1)).astype(np.int32)   # a learnable rule
  return x, y


# ----------------------------------------------------------------------------
# Layouts: the only device-aware part.
# ----------------------------------------------------------------------------
def param_shardings(params, mesh, fully_sharded):
  def spec(x):
    if not fully_sharded:
      return NamedSharding(mesh, P())                 # replicated
    # Split the largest dimension that the mesh divides; else replicate.
    n = mesh.shape["data"]
    dims = sorted(range(x.ndim), key=lambda d: -x.shape[d])
    for d in dims:
      if x.shape[d] % n == 0:
        axes = [None] * x.ndim
        axes[d] = "data"
        return NamedSharding(mesh, P(*axes))
    return NamedSharding(mesh, P())
  return jax.tree.map(spec, params)


def train(tx, layout, steps=30, mesh=None):
  params = init_params(jax.random.key(0))
  batch_sharding = None
  if layout != "single":
    shardings = param_shardings(params, mesh, layout == "fully sharded")
    params = jax.device_put(params, shardings)
    batch_sharding = NamedSharding(mesh, P("data"))
  opt_state = tx.init(params)          # state inherits the params' sharding
  step = make_train_step(tx)
  losses = []
  for t in range(steps):
    x, y = data(t)
    if batch_sharding is not None:
      x, y = jax.device_put((x, y), batch_sharding)
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))
  return params, opt_state, np.array(losses)


def describe(params, opt_state):
  k = params["dense1"]["kernel"]
  mu = [leaf for leaf in jax.tree.leaves(opt_state) if leaf.shape == k.shape]
  return f"dense1/kernel {k.sharding.spec}, its Adam moments " + ", ".join(
      str(m.sharding.spec) for m in mu)


def main():
  devices = np.array(jax.devices())
  print(f"{len(devices)} devices: {devices[0].platform}")
  mesh = Mesh(devices, ("data",))
  tx = optzoo.adamw(3e-3, weight_decay=1e-2)
  _, _, ref = train(tx, "single")
  for layout in ("data parallel", "fully sharded"):
    params, opt_state, losses = train(tx, layout, mesh=mesh)
    err = np.max(np.abs(losses - ref) / np.abs(ref))
    print(f"{layout:>14}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
          f"  (max rel. diff. to 1 device {err:.1e});  {describe(params, opt_state)}")
    assert err < 1e-4, err


if __name__ == "__main__":
  main()
