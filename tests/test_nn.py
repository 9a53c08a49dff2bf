"""optzoo.nn (Flax helpers) and optzoo.apps.data (offline datasets).

The BatchNorm / WeightNorm / GroupNorm checks compare the Flax models against
independent NumPy forward passes written here from the equations
(Salimans & Kingma 2016; Ioffe & Szegedy 2015; Wu & He 2018), not against the modules themselves.
"""
import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optzoo
from optzoo import nn as zn


@pytest.fixture(scope="module")
def digits():
  return zn.load_digits()


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def test_digits_split_is_fixed_and_scaled(digits):
  d2 = zn.load_digits()
  assert digits.x_train.shape == (1438, 8, 8, 1) and digits.x_test.shape == (359, 8, 8, 1)
  assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
  assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
  np.testing.assert_array_equal(digits.y_test, d2.y_test)
  other = zn.load_digits(seed=1)
  assert not np.array_equal(other.y_test, digits.y_test)
  assert sorted(set(digits.y_train.tolist())) == list(range(10))


def test_batches_deterministic_full_and_shuffled(digits):
  x, y = digits.x_train, digits.y_train
  a = [yy for _, yy in zn.batches(x, y, 100, seed=3, epoch=1)]
  b = [yy for _, yy in zn.batches(x, y, 100, seed=3, epoch=1)]
  c = [yy for _, yy in zn.batches(x, y, 100, seed=3, epoch=2)]
  assert len(a) == len(x) // 100 and all(len(v) == 100 for v in a)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert not all(np.array_equal(u, v) for u, v in zip(a, c))
  # each epoch visits distinct examples
  xs = np.concatenate([xx for xx, _ in zn.batches(x, y, 100, seed=0)])
  assert len(np.unique(xs.reshape(len(xs), -1), axis=0)) > 0.97 * len(xs)
  with pytest.raises(ValueError, match="batch_size"):
    next(zn.batches(x, y, 0, seed=0))


def _write_idx(directory, n=40, hw=28, seed=0, gz=True):
  rng = np.random.default_rng(seed)
  imgs = rng.integers(0, 256, size=(n, hw, hw), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n, dtype=np.uint8)
  op = gzip.open if gz else open
  ext = ".gz" if gz else ""
  for stem in ("train", "t10k"):
    with op(os.path.join(directory, f"{stem}-images-idx3-ubyte{ext}"), "wb") as f:
      f.write((2051).to_bytes(4, "big") + n.to_bytes(4, "big")
              + hw.to_bytes(4, "big") + hw.to_bytes(4, "big") + imgs.tobytes())
    with op(os.path.join(directory, f"{stem}-labels-idx1-ubyte{ext}"), "wb") as f:
      f.write((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes())
  return imgs, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_loader(tmp_path, gz):
  imgs, labels = _write_idx(str(tmp_path), gz=gz)
  d = zn.load_fashion_mnist(str(tmp_path))
  assert d.x_train.shape == (40, 28, 28, 1) and d.num_classes == 10
  np.testing.assert_allclose(d.x_train[..., 0] * 255.0, imgs, atol=1e-4)
  np.testing.assert_array_equal(d.y_test, labels)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setenv("OPTZOO_FASHION_MNIST_DIR", str(tmp_path))
  with pytest.raises(zn.DatasetError, match="apt-get install -y dataset-fashion-mnist"):
    zn.load_dataset("fashion-mnist")
  with pytest.raises(zn.DatasetError, match="unknown dataset 'cifar'"):
    zn.load_dataset("cifar")


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


def test_norm_switch_validation():
  with pytest.raises(ValueError, match="norm"):
    zn.MLP(norm="spectral")
  with pytest.raises(ValueError, match="instance"):
    zn.MLP(norm="instance")
  with pytest.raises(ValueError, match="arch"):
    zn.make_model("resnet")
  assert zn.MLP(norm="BatchNorm").norm == "batch"
  assert zn.CNN(norm="ln").norm == "layer"
  with pytest.raises(ValueError, match="norm"):
    zn.NNXMLP(64, norm="weight", rngs=nnx.Rngs(0))


def _np_forward_bn(params, stats, x, eps=1e-5):
  h = x.reshape(len(x), -1) @ params["Dense_0"]["kernel"]
  h = (h - stats["mean"]) / np.sqrt(stats["var"] + eps)
  h = np.maximum(h * params["BatchNorm_0"]["scale"] + params["BatchNorm_0"]["bias"], 0)
  return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def test_batchnorm_moving_averages_and_eval_mode(digits):
  """Training updates r <- m r + (1-m) batch_stat (biased var); evaluation
  uses the moving averages, so an example's logits do not depend on the batch."""
  model = zn.MLP(hidden=(8,), norm="batch", bn_momentum=0.9)
  x, y = digits.x_train[:32], digits.y_train[:32]
  state = zn.create_train_state(model, optax.sgd(0.0), x, seed=0)
  p = jax.tree.map(np.asarray, state.params)
  h = x.reshape(32, -1).astype(np.float64) @ p["Dense_0"]["kernel"]
  state, _ = zn.train_step(state, x, y)
  bs = jax.tree.map(np.asarray, state.batch_stats)["BatchNorm_0"]
  np.testing.assert_allclose(bs["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bs["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5)
  state, _ = zn.train_step(state, x, y)
  bs = jax.tree.map(np.asarray, state.batch_stats)["BatchNorm_0"]
  np.testing.assert_allclose(bs["mean"], 0.19 * h.mean(0), rtol=1e-5, atol=1e-6)
  # evaluation: NumPy forward with the running statistics
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          x, train=False)
  np.testing.assert_allclose(logits, _np_forward_bn(p, bs, x.astype(np.float64)),
                             rtol=1e-4, atol=1e-4)
  one = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                       x[:1], train=False)
  np.testing.assert_allclose(one[0], logits[0], rtol=1e-5, atol=1e-5)
  # training mode uses batch statistics instead
  train_logits, _ = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats}, x, train=True,
      mutable=["batch_stats"])
  assert np.max(np.abs(np.asarray(train_logits) - np.asarray(logits))) > 1e-2
  ev = zn.eval_step(state, x, y)
  ce = -np.mean(jax.nn.log_softmax(np.asarray(logits, np.float64))[np.arange(32), y])
  np.testing.assert_allclose(float(ev["loss"]), ce, rtol=1e-5)


def test_weight_norm_reparameterization(digits):
  model = zn.MLP(hidden=(8,), norm="weight")
  x = digits.x_train[:5]
  v = model.init(jax.random.PRNGKey(0), x)["params"]
  v = jax.tree.map(np.asarray, v)
  scale0 = np.linspace(0.5, 2.0, 8)
  v["WeightNorm_0"]["Dense_0/kernel/scale"] = scale0.astype(np.float32)
  out = np.asarray(model.apply({"params": v}, x))
  k0 = v["Dense_0"]["kernel"]
  w0 = scale0 * k0 / np.linalg.norm(k0, axis=0)  # per output unit: ||w|| = g
  k1 = v["Dense_1"]["kernel"]
  w1 = v["WeightNorm_1"]["Dense_1/kernel/scale"] * k1 / np.linalg.norm(k1, axis=0)
  h = np.maximum(x.reshape(5, -1) @ w0 + v["Dense_0"]["bias"], 0)
  np.testing.assert_allclose(out, h @ w1 + v["Dense_1"]["bias"], rtol=1e-4, atol=1e-5)


def test_groupnorm_and_layernorm_match_numpy(digits):
  x = digits.x_train[:6]
  for norm, groups in (("group", 4), ("layer", 1)):
    model = zn.MLP(hidden=(8,), norm=norm, num_groups=4)
    v = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(1), x)["params"])
    h = (x.reshape(6, -1) @ v["Dense_0"]["kernel"]).astype(np.float64)
    hg = h.reshape(6, groups, 8 // groups)
    eps = 1e-6
    hn = ((hg - hg.mean(-1, keepdims=True)) / np.sqrt(hg.var(-1, keepdims=True) + eps)).reshape(6, 8)
    nname = "GroupNorm_0" if norm == "group" else "LayerNorm_0"
    hn = np.maximum(hn * v[nname]["scale"] + v[nname]["bias"], 0)
    ref = hn @ v["Dense_1"]["kernel"] + v["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply({"params": v}, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,norm", [("mlp", n) for n in zn.NORMS if n != "instance"]
                         + [("cnn", "instance"), ("cnn", "batch")])
def test_every_norm_trains(digits, arch, norm):
  d = digits.subset(n_train=320, n_test=100)
  model = zn.make_model(arch, norm=norm, **({"channels": (8, 8)} if arch == "cnn" else {"hidden": (32,)}))
  hist = zn.fit(model, optax.adam(1e-2), d, epochs=3, batch_size=32, seed=0)
  first = np.mean(hist["train_loss"][:3])
  last = np.mean(hist["train_loss"][-5:])
  assert np.isfinite(last) and last < 0.8 * first, (first, last)
  assert hist["steps"] == 30
  assert (hist["state"].batch_stats is not None) == (norm == "batch")
  leaves = jax.tree.leaves(hist["state"].params)
  assert all(l.dtype == jnp.float32 for l in leaves)


def test_fit_deterministic_and_compiles_once(digits):
  d = digits.subset(n_train=256, n_test=64)
  model = zn.MLP(hidden=(16,), norm="batch")
  h1 = zn.fit(model, optzoo.adam(1e-3), d, epochs=2, batch_size=32, seed=5)
  h2 = zn.fit(model, optzoo.adam(1e-3), d, epochs=2, batch_size=32, seed=5)
  h3 = zn.fit(model, optzoo.adam(1e-3), d, epochs=2, batch_size=32, seed=6)
  assert h1["train_loss"] == h2["train_loss"] and h1["test_accuracy"] == h2["test_accuracy"]
  assert h1["train_loss"] != h3["train_loss"]
  # no recompilation from step to step: a fresh state compiles once
  state = zn.create_train_state(model, optzoo.adam(1e-3), d.x_train[:32])
  before = zn.train_step._cache_size()
  for x, y in zn.batches(d.x_train, d.y_train, 32, seed=0):
    state, _ = zn.train_step(state, x, y)
  assert zn.train_step._cache_size() == before + 1
  with pytest.raises(ValueError, match="batch_size"):
    zn.fit(model, optzoo.adam(1e-3), d.subset(n_train=10), batch_size=32)


class _RecState(tuple):
  pass


def _recorder():
  """An ExtraArgs transformation that stores the extra args it receives."""

  def init(params):
    del params
    return {"value": jnp.zeros(()), "value_sq": jnp.zeros(()),
            "gfn_norm": jnp.zeros(()), "vfn": jnp.zeros(()), "bs": jnp.zeros(()),
            "key": jnp.zeros((2,), jnp.uint32)}

  def update(updates, state, params=None, *, value, value_sq, grad_fn, value_fn,
             batch_size, key, **unknown):
    del state, unknown
    g = grad_fn(params, 0)
    new = {"value": value, "value_sq": value_sq, "vfn": value_fn(params, 1),
           "gfn_norm": optax.tree.norm(jax.tree.map(lambda a, b: a - b, g, updates)),
           "bs": jnp.asarray(batch_size, jnp.float64),
           "key": jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key}
    return jax.tree.map(jnp.zeros_like, updates), new

  return optax.GradientTransformationExtraArgs(init, update)


def test_train_step_passes_extra_args(digits):
  x, y = digits.x_train[:16], digits.y_train[:16]
  model = zn.MLP(hidden=(8,))
  state = zn.create_train_state(model, _recorder(), x, seed=0)
  state, m = zn.train_step(state, x, y)
  s = state.opt_state
  logits = np.asarray(model.apply({"params": state.params}, x), np.float64)
  per_ex = -jax.nn.log_softmax(logits)[np.arange(16), y]
  np.testing.assert_allclose(float(s["value"]), per_ex.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(s["value_sq"]), np.mean(per_ex ** 2), rtol=1e-5)
  np.testing.assert_allclose(float(s["vfn"]), per_ex.mean(), rtol=1e-5)
  assert float(s["gfn_norm"]) < 1e-6  # grad_fn(params, i) == grads of this batch
  assert float(s["bs"]) == 16
  # a plain GradientTransformation (no extra args) also works
  plain = optax.GradientTransformation(*optax.sgd(0.1)[:2])
  st2 = zn.create_train_state(model, plain, x, seed=0)
  st2, m2 = zn.train_step(st2, x, y)
  assert int(st2.step) == 1 and np.isfinite(float(m2["loss"]))


def test_nnx_helpers(digits):
  d = digits.subset(n_train=320, n_test=100)
  model = zn.NNXMLP(64, hidden=(32,), norm="batch", rngs=nnx.Rngs(0))
  opt = zn.nnx_optimizer(model, optzoo.adam(1e-2))
  stats0 = np.asarray(model.norms[0].mean.value).copy()
  before = zn.nnx_eval(model, d.x_test, d.y_test)
  losses = [float(zn.nnx_train_step(model, opt, x, y))
            for e in range(3) for x, y in zn.batches(d.x_train, d.y_train, 32, seed=0, epoch=e)]
  after = zn.nnx_eval(model, d.x_test, d.y_test)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
  assert after["accuracy"] > before["accuracy"] + 0.3
  # BatchStat moved (moving averages) but is not part of the optimizer state
  assert np.max(np.abs(np.asarray(model.norms[0].mean.value) - stats0)) > 1e-3
  n_opt = sum(np.size(l) for l in jax.tree.leaves(nnx.state(opt.opt_state)))
  n_par = sum(np.size(l) for l in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n_opt >= 2 * n_par  # Adam: two moments per parameter...
  n_stats = sum(np.size(l) for l in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
  assert (n_opt - 2 * n_par) < n_stats  # ...and none for the batch statistics
  # eval mode is restored to train mode afterwards
  assert model.norms[0].use_running_average is False
