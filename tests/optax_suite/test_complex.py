"""Complex parameters: torch's ``view_as_real`` semantics, against torch.

torch.optim treats a complex parameter as two independent real coordinates
(``torch.view_as_real``): second moments, maxima, clipping and square roots
are taken per real / imaginary part. optzoo does the same. (optax uses the
modulus ``|g|^2`` for complex second moments: a documented difference.)

* Replays ``tests/fixtures/complex_parabola.npz`` (torch 2.13 and
  pytorch_optimizer 4.1, complex128, 300 steps, written by
  tests/gen_complex_fixtures.py) to <= 1e-6 relative, with a negative control
  (optax's modulus form does not match). The references that reject complex
  parameters (torch.optim.Adafactor, pytorch_optimizer.AdaFactor / SM3) ran on
  the explicit real view ``torch.view_as_real(z)``.
* A complex leaf gives exactly the update of its real view, for every Team
  SGD / Team Adam alias and scaling primitive (per tensor for the norm-based,
  factored and cover-set methods, on a complex matrix).
* Convergence of every Team Adam method on the complex64 parabola is
  test_alias.test_optimization (float32 and complex64, 10000 steps); here we
  only check that it covers every registered Team Adam method (but the 8-bit
  ones, ``COMPLEX_NOT_YET``).
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optax_suite import test_alias

RTOL = 1e-6
FLOOR = 1e-3
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures",
                       "complex_parabola.npz")


@functools.lru_cache(maxsize=None)
def _fixture():
  with np.load(FIXTURE) as f:
    d = {k: f[k] for k in f.files}
  n = len([k for k in d if k.endswith("_traj")])
  settings = [(str(d[f"s{k}_name"]), json.loads(str(d[f"s{k}_kwargs"])),
               str(d[f"s{k}_torch"]), d[f"s{k}_traj"]) for k in range(n)]
  return d, settings


def _trajectory(tx, d, shape=(8,)):
  """optzoo's run of the fixture problem, its 8 entries reshaped to ``shape``."""
  d = {k: (np.reshape(d[k], shape) if k in ("a", "t", "z0") else d[k]) for k in d}
  a, t = jnp.asarray(d["a"]), jnp.asarray(d["t"])
  loss = lambda z: jnp.sum(a * jnp.abs(z - t) ** 2)
  steps = np.asarray(d["steps"])

  @jax.jit
  def run(z):
    def body(carry, _):
      z, s = carry
      g = jnp.conj(jax.grad(loss)(z))  # = torch's z.grad
      u, s = tx.update(g, s, z)
      z = optax.apply_updates(z, u)
      return (z, s), z
    _, zs = jax.lax.scan(body, (z, tx.init(z)), None, length=int(steps[-1]))
    return zs[steps - 1]

  return np.asarray(run(jnp.asarray(d["z0"], jnp.complex128)))


def _rel_err(actual, expected):
  out = 0.0
  for part in (np.real, np.imag):
    a, e = part(actual), part(expected)
    out = max(out, float(np.max(np.abs(a - e) / np.maximum(np.abs(e), FLOOR))))
  return out


_SETTINGS = _fixture()[1]


@pytest.mark.parametrize("k", range(len(_SETTINGS)),
                         ids=[f"{s[0]}{k}" for k, s in enumerate(_SETTINGS)])
def test_matches_torch_on_complex_params(k):
  d, settings = _fixture()
  name, kwargs, torch_call, expected = settings[k]
  got = _trajectory(getattr(optzoo, name)(**kwargs), d, tuple(d[f"s{k}_shape"]))
  assert got.shape == expected.shape, (got.shape, expected.shape)
  assert np.all(np.isfinite(got))
  err = _rel_err(got, expected)
  assert err <= RTOL, f"{name}({kwargs}) vs {torch_call}: max rel err {err:.3g}"


def test_negative_control_modulus_form_does_not_match():
  """optax's |g|^2 second moment is a different trajectory (the fixture
  discriminates the two conventions)."""
  d, settings = _fixture()
  _, _, _, expected = settings[0]  # adam(0.1)
  err = _rel_err(_trajectory(optax.adam(0.1, eps=1e-8), d), expected)
  assert err > 1e-2, err


def _setting(name, torch_prefix):
  d, settings = _fixture()
  k = next(k for k, s in enumerate(settings)
           if s[0] == name and s[2].startswith(torch_prefix))
  return d, k, settings[k]


def test_negative_control_adamax_modulus_form_does_not_match():
  """optax.adamax takes |g| of a complex entry (the modulus), not per part."""
  d, k, (_, kwargs, _, expected) = _setting("adamax", "torch.optim.Adamax({'lr': 0.1})")
  assert kwargs == {"learning_rate": 0.1}
  err = _rel_err(_trajectory(optax.adamax(0.1, eps=1e-8), d), expected)
  assert err > 1e-2, err


def _on_leading_part_axis(inner):
  """``inner`` on the real view with the part axis first, shape (2,) + s."""
  def init_fn(params):
    return inner.init(jnp.stack([params.real, params.imag]))

  def update_fn(updates, state, params):
    u, state = inner.update(jnp.stack([updates.real, updates.imag]), state,
                            jnp.stack([params.real, params.imag]))
    return jax.lax.complex(u[0], u[1]), state

  return optax.GradientTransformation(init_fn, update_fn)


def _on_separate_parts(inner):
  """``inner`` on the real and the imaginary part as two separate tensors."""
  def init_fn(params):
    return (inner.init(params.real), inner.init(params.imag))

  def update_fn(updates, state, params):
    ur, sr = inner.update(updates.real, state[0], params.real)
    ui, si = inner.update(updates.imag, state[1], params.imag)
    return jax.lax.complex(ur, ui), (sr, si)

  return optax.GradientTransformation(init_fn, update_fn)


@pytest.mark.parametrize("name,prefix,alternative", [
    ("adafactor", "torch.optim.Adafactor", _on_leading_part_axis),
    ("adafactor", "torch.optim.Adafactor", _on_separate_parts),
    ("sm3", "pytorch_optimizer.SM3", _on_separate_parts)],
    ids=["adafactor_leading_axis", "adafactor_separate", "sm3_separate"])
def test_negative_control_other_real_views_do_not_match(name, prefix, alternative):
  """The fixture discriminates torch.view_as_real's layout (the part axis
  last: a factored axis of Adafactor, an SM3 cover of size 2) from a leading
  part axis and from two independent real tensors. (SM3's covers do not
  depend on the order of the axes, so a leading axis would match for it.)"""
  d, k, (_, kwargs, _, expected) = _setting(name, prefix)
  shape = tuple(d[f"s{k}_shape"])
  assert shape == (2, 4)
  ok = _rel_err(_trajectory(getattr(optzoo, name)(**kwargs), d, shape), expected)
  err = _rel_err(_trajectory(alternative(getattr(optzoo, name)(**kwargs)), d, shape),
                 expected)
  assert ok <= RTOL and err > 1e-2, (ok, err)


# Team Adam methods whose complex-parameter support is not implemented yet
# (None left.)
COMPLEX_NOT_YET: set = set()


# Team SGD / Team Adam methods without a complex reference trajectory: no
# torch-family class of that name (nag, sgdw, adabound, swats: checked
# against their real view in test_complex_leaf_equals_its_real_view; the
# 8-bit Adams, whose reference bitsandbytes needs CUDA: checked bit for bit
# against their real view in tests/test_quantized.py), and two methods not
# compared on complex parameters (L-BFGS; Muon, which torch.optim.Muon
# rejects complex parameters for).
NO_COMPLEX_FIXTURE = {"nag", "sgdw", "adabound", "swats", "lbfgs", "muon",
                      "adam_8bit", "adamw_8bit"}


def test_fixture_covers_every_complex_capable_method():
  """Every other Team SGD / Team Adam method has a reference trajectory."""
  names = {s[0] for s in _SETTINGS}
  methods = {i.name for f in ("Team SGD", "Team Adam")
             for i in optzoo.list_optimizers(family=f)}
  missing = methods - names - COMPLEX_NOT_YET - NO_COMPLEX_FIXTURE
  assert not missing, missing


def test_team_adam_complex_convergence_is_covered():
  tested = {o["opt_name"] for o in test_alias._OPTIMIZERS_UNDER_TEST}
  team_adam = {i.name for i in optzoo.list_optimizers(family="Team Adam")}
  assert team_adam - COMPLEX_NOT_YET <= tested, team_adam - COMPLEX_NOT_YET - tested


_ELEMENTWISE = [
    ("adam", dict(learning_rate=0.1)), ("amsgrad", dict(learning_rate=0.1)),
    ("adamw", dict(learning_rate=0.1)), ("nadam", dict(learning_rate=0.1)),
    ("radam", dict(learning_rate=0.1)), ("adagrad", dict(learning_rate=0.1)),
    ("rmsprop", dict(learning_rate=0.01, centered=True, momentum=0.9)),
    ("adabound", dict(learning_rate=0.1, final_lr=0.05, amsbound=True)),
    ("swats", dict(learning_rate=0.1)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1)),
    ("sgdw", dict(learning_rate=0.05)), ("nag", dict(learning_rate=0.05)),
    ("scale_by_rms", dict(bias_correction=True)),
    ("adamax", dict(learning_rate=0.1, weight_decay=0.01)),
    ("adadelta", dict(learning_rate=1.0, weight_decay=0.01)),
    ("rprop", dict(learning_rate=0.01)), ("asgd", dict(learning_rate=0.05)),
    ("add_decayed_weights", dict(weight_decay=0.1)), ("add_l2", dict(weight_decay=0.1)),
    # N(0, sigma^2) per real / imaginary part (not a complex normal).
    ("add_gradient_noise", dict(eta=0.01)),
    ("generic_adam", dict()),
]

# Not elementwise (per-tensor norms, factored / cover-set statistics): a
# complex matrix gives exactly the update of its real view, a (3, 4, 2) tensor
# (LARS' default mask, ndim > 1, is the same for both).
_PER_TENSOR = [
    ("lars", dict(learning_rate=0.1, weight_decay=0.01, trust_coefficient=0.1)),
    ("lars", dict(learning_rate=0.1, nesterov=True, eps=1e-8)),
    ("lamb", dict(learning_rate=0.05)),
    ("lamb", dict(learning_rate=0.05, pre_norm=True, weight_decay=0.01,
                  weight_decouple=False)),
    ("scale_by_lamb_trust_ratio", dict()), ("scale_by_lars_trust_ratio", dict()),
    ("adafactor", dict(learning_rate=0.05, weight_decay=0.01)),
    ("adafactor", dict(variant="paper", weight_decay=0.01)),
    ("adafactor", dict(variant="paper", weight_decouple=False, weight_decay=0.01)),
    ("scale_by_factored_rms", dict()),
    ("sm3", dict(learning_rate=0.1)), ("sm3", dict(learning_rate=0.1, momentum=0.5, b2=0.9)),
    ("scale_by_sm3", dict()),
    # Complex matrices go to the fallback (torch.optim.Muon rejects them), as
    # the 3-D real view does.
    ("muon", dict(learning_rate=0.02)),
]


def _to_real(z):
  return jnp.stack([z.real, z.imag], -1)


@pytest.mark.parametrize("name,kwargs", _ELEMENTWISE, ids=[n for n, _ in _ELEMENTWISE])
def test_complex_leaf_equals_its_real_view(name, kwargs):
  """The defining property of torch's view_as_real treatment, bit for bit."""
  _check_real_view(getattr(optzoo, name)(**kwargs), (5,))


@pytest.mark.parametrize("name,kwargs", _PER_TENSOR,
                         ids=[f"{n}{k}" for k, (n, _) in enumerate(_PER_TENSOR)])
def test_complex_matrix_equals_its_real_view(name, kwargs):
  _check_real_view(getattr(optzoo, name)(**kwargs), (3, 4))


# Gradient compression: a complex leaf is compressed as its real view (2n
# real entries), one replica outside shard_map.
_COMPRESSION = [
    ("topk_compression", dict(ratio=0.3)),
    ("randomk_compression", dict(ratio=0.3, key=1)),
    ("qsgd", dict(num_levels=4, error_feedback=True)),
    ("ef_signsgd", dict()), ("ef_signsgd", dict(layerwise=True)),
    ("signsgd_majority_vote", dict(momentum=0.9)),
]


@pytest.mark.parametrize("name,kwargs", _COMPRESSION,
                         ids=[f"{n}{k}" for k, (n, _) in enumerate(_COMPRESSION)])
def test_compressed_complex_matrix_equals_its_real_view(name, kwargs):
  _check_real_view(optax.chain(getattr(optzoo, name)(**kwargs), optzoo.sgd(0.05)),
                   (3, 4))


_INJECTED = _PER_TENSOR[::2] + [(n, k) for n, k in _ELEMENTWISE if n in (
    "adamax", "adadelta", "rprop", "asgd", "add_l2")]


@pytest.mark.parametrize("name,kwargs", _INJECTED,
                         ids=[f"{n}{k}" for k, (n, _) in enumerate(_INJECTED)])
def test_injected_hyperparameters_on_complex_params(name, kwargs):
  """inject_hyperparams (whose floats become complex arrays when the params
  are complex) gives the same updates and state structure as literals."""
  tx = getattr(optzoo, name)(**kwargs)
  tx_inj = optax.inject_hyperparams(getattr(optzoo, name))(**kwargs)
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4)), jnp.complex128)
  g = jnp.asarray(rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4)), jnp.complex128)
  s, s_inj = tx.init(z), tx_inj.init(z)
  for _ in range(3):
    u, s = jax.jit(tx.update)(g, s, z)
    u_inj, s_inj = jax.jit(tx_inj.update)(g, s_inj, z)
    np.testing.assert_allclose(np.asarray(u_inj), np.asarray(u), rtol=1e-12, atol=1e-14)
    assert u.dtype == z.dtype and u_inj.dtype == z.dtype
  assert (jax.tree.structure(s_inj.inner_state) == jax.tree.structure(s))


@pytest.mark.parametrize("variant", ["vanilla", "momentum"])
def test_koala_complex_matrix_equals_its_real_view(variant):
  """KOALA's per-layer statistics of a complex leaf are those of its real
  view (no part of the gradient dropped)."""
  _check_real_view(optzoo.koala(learning_rate=0.1, variant=variant), (3, 4),
                   value=jnp.asarray(1.5), value_sq=jnp.asarray(2.5))


@pytest.mark.parametrize("method,granularity", [
    ("sphere_sgd", "joint"), ("sphere_sgd", "filter"),
    ("weight_rescaling", "tensor"), ("weight_rescaling", "filter")])
def test_sphere_projection_of_a_complex_matrix_equals_its_real_view(method, granularity):
  """Norms of complex leaves are those of the real view (|w|^2 summed); a
  filter of a complex (3, 4) kernel (axis -1) is the (3, 1, 2) slab of its
  real view (axis -2)."""
  def build(axis):
    if method == "sphere_sgd":
      return optzoo.sphere_sgd(0.05, granularity=granularity, axis=axis)
    return optax.chain(optzoo.sgd(0.05),
                       optzoo.weight_rescaling(granularity=granularity, axis=axis))
  _check_real_view(build(-1), (3, 4), build(-2) if granularity == "filter" else None)


def test_muon_orthogonalization_rejects_complex_leaves():
  z = jnp.ones((3, 4), jnp.complex64)
  with pytest.raises(TypeError, match="complex"):
    optzoo.newton_schulz(z)
  tx = optzoo.scale_by_muon()
  with pytest.raises(TypeError, match="fallback"):
    tx.update(z, tx.init(z), z)


def _check_real_view(tx, shape, tx_real=None, **extra):
  """``tx`` on complex params equals ``tx_real`` (default ``tx``) on their
  real view, 20 steps of a quadratic; ``extra``: constant extra args."""
  tx_real = tx if tx_real is None else tx_real
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=shape) + 3j * rng.normal(size=shape), jnp.complex64)
  t = jnp.asarray(rng.normal(size=shape) + 0.1j * rng.normal(size=shape), jnp.complex64)
  to_real = _to_real

  def run(tx, p, grad_fn):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(grad_fn(p), s, p, **extra)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, tx.init(p)), None, length=20)[0][0]

  zc = jax.jit(lambda z: run(tx, z, lambda z: 2 * (z - t)))(z0)
  zr = jax.jit(lambda x: run(tx_real, x, lambda x: 2 * (x - to_real(t))))(to_real(z0))
  np.testing.assert_allclose(np.asarray(to_real(zc)), np.asarray(zr), rtol=2e-6,
                             atol=1e-7)
