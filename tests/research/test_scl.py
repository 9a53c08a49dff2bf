"""SCL (sparse connectivity learning, Tang et al. 2021)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo


def test_step_ste_binary_forward_identity_backward():
  m = jnp.asarray([-1.0, -0.0, 0.0, 1e-9, 2.0])
  s = optzoo.step_ste(m)
  np.testing.assert_array_equal(np.asarray(s), [0, 0, 0, 1, 1])
  g = jax.grad(lambda m: jnp.sum(jnp.arange(5.0) * optzoo.step_ste(m)))(m)
  np.testing.assert_array_equal(np.asarray(g), np.arange(5.0))


def test_masked_dense_forward_and_ste_gradients():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5))
  layer = optzoo.MaskedDense(3)
  v = layer.init(jax.random.PRNGKey(0), x)
  p = dict(v["params"])
  p["mask"] = jnp.asarray(rng.normal(size=(5, 3)))          # mixed signs
  p["bias"] = jnp.asarray(rng.normal(size=3))
  w, m, b = (np.asarray(p[k]) for k in ("kernel", "mask", "bias"))
  on = (m > 0).astype(float)
  out = layer.apply({"params": p}, x)
  np.testing.assert_allclose(out, x @ (w * on) + b, rtol=1e-12)
  tgt = rng.normal(size=(7, 3))
  loss = lambda q: 0.5 * jnp.sum((layer.apply({"params": q}, x) - tgt) ** 2)
  g = jax.grad(loss)(p)
  g_eff = x.T @ (x @ (w * on) + b - tgt)                   # dL/dW_eff
  np.testing.assert_allclose(g["mask"], g_eff * w, rtol=1e-10)     # identity STE
  np.testing.assert_allclose(g["kernel"], g_eff * on, rtol=1e-10, atol=1e-14)
  assert set(np.unique(np.asarray(optzoo.step_ste(p["mask"])))) <= {0.0, 1.0}


def test_masked_conv_matches_masked_kernel():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)))
  layer = optzoo.MaskedConv(4, kernel_size=(3, 3))
  v = layer.init(jax.random.PRNGKey(0), x)
  p = dict(v["params"])
  p["mask"] = jnp.asarray(rng.normal(size=p["mask"].shape))
  out = layer.apply({"params": p}, x)
  ref = jax.lax.conv_general_dilated(x, p["kernel"] * (p["mask"] > 0), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(out, ref + p["bias"], rtol=1e-12)


@pytest.mark.parametrize("norm", ["rms", "l2", "max"])
def test_normalize_mask_gradients_per_feature(norm):
  rng = np.random.default_rng(2)
  g = {"k": jnp.asarray(rng.normal(size=(6, 4)) * np.array([1e-3, 1.0, 10.0, 1e2])),
       "v": jnp.asarray(rng.normal(size=5) * 7.0), "n": None}
  tx = optzoo.normalize_mask_gradients(norm, eps=0.0)
  out, _ = tx.update(g, tx.init(g))
  k = np.asarray(out["k"])
  stat = {"rms": lambda a, ax: np.sqrt(np.mean(a**2, ax)),
          "l2": lambda a, ax: np.linalg.norm(a, axis=ax),
          "max": lambda a, ax: np.max(np.abs(a), ax)}[norm]
  np.testing.assert_allclose(stat(k, 0), np.ones(4), rtol=1e-12)
  np.testing.assert_allclose(stat(np.asarray(out["v"]), None), 1.0, rtol=1e-12)
  # directions are kept
  np.testing.assert_allclose(k / np.asarray(g["k"]), np.broadcast_to(
      (k / np.asarray(g["k"]))[0], k.shape), rtol=1e-12)


def test_connection_count_and_penalty_gradient():
  params = {"d0": {"kernel": jnp.ones((2, 3)), "mask": jnp.asarray([[1.0, -1, 2], [0, 3, -2]])},
            "d1": {"mask": jnp.asarray([0.5, -0.5])}}
  assert int(optzoo.connection_count(params)) == 4
  g = jax.grad(lambda p: 0.3 * optzoo.connection_count(p))(params)
  np.testing.assert_allclose(g["d0"]["mask"], 0.3 * np.ones((2, 3)))
  np.testing.assert_allclose(g["d0"]["kernel"], np.zeros((2, 3)))
  tx = optzoo.add_count_penalty(0.3)
  u, _ = tx.update({"m": jnp.zeros(3)}, tx.init(None))
  np.testing.assert_allclose(u["m"], 0.3)


def test_sparse_connectivity_matches_manual_composition():
  rng = np.random.default_rng(3)
  params = {"l": {"kernel": jnp.asarray(rng.normal(size=(4, 3))),
                  "mask": jnp.asarray(rng.normal(size=(4, 3))),
                  "bias": jnp.asarray(rng.normal(size=3))}}
  tx = optzoo.sparse_connectivity(0.1, mask_learning_rate=0.05, count_penalty=0.2,
                                  momentum=0.9, mask_momentum=0.5)
  s = tx.init(params)
  p = params
  w, m, b = (np.asarray(params["l"][k]) for k in ("kernel", "mask", "bias"))
  bw = bm = bb = None
  for t in range(20):
    gk = np.sin(w + t); gm = np.cos(3 * m + t); gb = np.sin(b - t)
    u, s = tx.update({"l": {"kernel": jnp.asarray(gk), "mask": jnp.asarray(gm),
                            "bias": jnp.asarray(gb)}}, s, p)
    p = optax.apply_updates(p, u)
    # oracle: SGD momentum 0.9 on weights; normalized + penalty, momentum 0.5 on masks
    gmn = gm / (np.sqrt(np.mean(gm**2, 0, keepdims=True)) + 1e-8) + 0.2
    bw = gk if bw is None else 0.9 * bw + gk
    bb = gb if bb is None else 0.9 * bb + gb
    bm = gmn if bm is None else 0.5 * bm + gmn
    w, b, m = w - 0.1 * bw, b - 0.1 * bb, m - 0.05 * bm
  np.testing.assert_allclose(p["l"]["kernel"], w, rtol=1e-12)
  np.testing.assert_allclose(p["l"]["bias"], b, rtol=1e-12)
  np.testing.assert_allclose(p["l"]["mask"], m, rtol=1e-12)


def _train_masked(count_penalty, steps=150):
  """Masked 2-layer MLP on a synthetic task where only 4 of 16 inputs matter."""
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.tanh(optzoo.MaskedDense(16)(x))
      return optzoo.MaskedDense(3)(x)

  rng = np.random.default_rng(4)
  x = rng.normal(size=(256, 16)).astype(np.float32)
  w_true = np.zeros((16, 3), np.float32)
  w_true[:4] = rng.normal(size=(4, 3))
  y = np.argmax(x @ w_true, -1)
  net = Net()
  params = net.init(jax.random.PRNGKey(0), x)["params"]
  tx = optzoo.sparse_connectivity(0.1, mask_learning_rate=0.02, count_penalty=count_penalty)
  state = tx.init(params)

  def loss(p):
    logits = net.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    l, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l

  for _ in range(steps):
    params, state, l = step(params, state)
  acc = float(np.mean(np.argmax(net.apply({"params": params}, x), -1) == y))
  return int(optzoo.connection_count(params)), acc, params


def test_count_regularizer_lowers_connections_and_masks_stay_binary():
  n0, acc0, _ = _train_masked(0.0)
  n1, acc1, p1 = _train_masked(0.3)
  assert n1 < 0.5 * n0, (n0, n1)
  assert acc1 > 0.9, acc1          # still learns the task (chance = 1/3)
  # The surviving first-layer connections come mostly from the 4 useful inputs.
  on = np.asarray(optzoo.step_ste(p1["MaskedDense_0"]["mask"]))
  assert on[:4].sum() > 0.5 * on.sum(), on.sum(1)
  for leaf in (p1["MaskedDense_0"]["mask"], p1["MaskedDense_1"]["mask"]):
    assert set(np.unique(np.asarray(optzoo.step_ste(leaf)))) <= {0.0, 1.0}


def test_sparse_connectivity_dtypes_and_jit():
  p = {"d": {"kernel": jnp.ones((3, 2), jnp.bfloat16), "mask": jnp.ones((3, 2), jnp.bfloat16),
             "bias": jnp.zeros(2, jnp.float32)}, "none": None}
  tx = optzoo.sparse_connectivity(0.1)
  s = tx.init(p)
  u, s2 = jax.jit(tx.update)(p, s, p)
  assert jax.tree.map(lambda a: a.dtype, u) == jax.tree.map(lambda a: a.dtype, p)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), s2) == jax.tree.map(
      lambda a: (a.shape, a.dtype), s)


def test_scl_bad_input():
  with pytest.raises(ValueError, match="norm"):
    optzoo.normalize_mask_gradients("l1")
  with pytest.raises(ValueError, match="count_penalty"):
    optzoo.sparse_connectivity(0.1, count_penalty=-1.0)
  with pytest.raises(TypeError, match="weight_optimizer"):
    optzoo.sparse_connectivity(0.1, weight_optimizer=3)
