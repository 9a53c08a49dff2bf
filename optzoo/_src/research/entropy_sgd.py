"""Entropy-SGD (Chaudhari et al., ICLR 2017) and a local-energy flatness probe.

Entropy-SGD estimates the gradient of the local entropy with an inner Langevin
(SGLD) loop run inside one ``update`` call, through a ``grad_fn(params, i)``
extra argument, like ``optax.contrib.sam(opaque_mode=True)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src import transform
from optzoo._src.diagnostics import landscape

__all__ = ["EntropySGDState", "entropy_sgd", "local_energy", "scoped_gamma"]

_GRAD_FN_HOW = (
    "pass a callable `grad_fn(params, i) -> grads` (i = inner step index, use it"
    " to pick a minibatch), e.g. `tx.update(grads, state, params,"
    " grad_fn=lambda p, i: jax.grad(loss)(p, batches[i]))`."
)


def scoped_gamma(
    gamma: Union[float, optax.Schedule],
    gamma_scoping: float,
    count: jax.Array,
    gamma_max: Optional[Any] = None,
) -> jax.Array:
  r"""The scoped coupling :math:`\gamma_t = \min(\gamma_0 (1+\gamma_1)^t, \gamma_{max})`.

  ``count`` is the number of outer updates already made (0 for the first
  one). If ``gamma`` is a schedule it is called with ``count`` instead and
  ``gamma_scoping`` is ignored. Returned as a float32/float64 scalar.

  Overflow-safe: :math:`(1+\gamma_1)^t` overflows (to ``inf``) after about
  88k steps in float32 with :math:`\gamma_1 = 10^{-3}`; both the power and
  the product are clamped to the dtype's largest finite value, so the result
  is always finite (never ``inf``, never ``0 * inf = nan`` when
  :math:`\gamma_0 = 0`) and is bit-identical to the plain formula wherever
  that one is finite. ``gamma_max`` (a number or a traced scalar) then caps
  it; ``None`` means no cap beyond the dtype's maximum.
  """
  t = jnp.asarray(count)
  if callable(gamma):
    g = jnp.asarray(gamma(t))
    if jnp.issubdtype(g.dtype, jnp.floating):
      g = jnp.minimum(g, jnp.finfo(g.dtype).max)
  else:
    dt = tree.float_dtype()
    big = jnp.finfo(dt).max
    power = jnp.minimum(
        jnp.power(jnp.asarray(1.0 + gamma_scoping, dt), t.astype(dt)), big)
    g = jnp.minimum(jnp.asarray(gamma, dt) * power, big)
  if gamma_max is not None:
    g = jnp.minimum(g, gamma_max)
  return g


def _leaf_normals(key: jax.Array, tree: Any) -> Any:
  """Standard normals shaped like ``tree``: one sub-key per leaf, in leaf order."""
  leaves, treedef = jax.tree.flatten(tree)
  if not leaves:
    return tree
  keys = jax.random.split(key, len(leaves))
  out = [jax.random.normal(k, jnp.shape(l), jnp.result_type(l))
         for k, l in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------------
# Entropy-SGD
# ---------------------------------------------------------------------------


class EntropySGDState(NamedTuple):
  """State of :func:`entropy_sgd`.

  Attributes:
    count: int32 number of outer updates made (drives the γ scoping).
    key: PRNG key of the Langevin noise (used when no ``key`` extra arg is
      given).
    outer: state of the outer ``chain(add_l2, trace, scale_by_learning_rate)``.
  """

  count: jax.Array
  key: jax.Array
  outer: optax.OptState


@registry.register(
    family="research",
    summary="Entropy-SGD: SGLD inner loop estimates the local-entropy gradient (grad_fn extra arg).",
    paper="Chaudhari et al., Entropy-SGD: Biasing Gradient Descent Into Wide Valleys, ICLR 2017",
    reference="NumPy re-derivation of ucla-vision/entropy-sgd python/optim.py (+ paper options)",
    verified="NumPy re-derivation of ucla-vision/entropy-sgd python/optim.py (tests/research/test_entropy.py)",
    extra_args=("grad_fn",),
    needs_params=True,
)
@validation.renamed(inner_steps="num_inner_steps", inner_lr="inner_learning_rate",
                    seed="key")
def entropy_sgd(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    num_inner_steps: int = 20,
    inner_learning_rate: float = 0.1,
    noise: float = 1e-4,
    mu_decay: float = 0.75,
    gamma: Union[float, optax.Schedule] = 1e-4,
    gamma_scoping: float = 1e-3,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    *,
    inner_momentum: Optional[float] = None,
    mu_weighting: str = "paper",
    noise_form: str = "code",
    gamma_max: Optional[float] = None,
    scale_outer_by_gamma: bool = False,
    key: Union[jax.Array, int] = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Entropy-SGD (opaque mode): L Langevin steps inside every ``update``.

  One call of ``update(grads, state, params, grad_fn=...)`` runs, with
  :math:`x` = ``params``, :math:`x' = \mu = x` and a fresh inner momentum
  buffer :math:`b`, for :math:`\ell = 0..L-1`:

  .. math::

    g_\ell &= \nabla f(x'; \text{batch } \ell) + \lambda x'
        \quad(\texttt{grad\_fn(x', }\ell\texttt{)})\\
    b_\ell &= m' b_{\ell-1} + g_\ell \ (b_0 = g_0), \qquad
    d_\ell = g_\ell + m' b_\ell \ \text{(Nesterov) or } b_\ell\\
    x' &\leftarrow x' - \eta' \big(d_\ell - \gamma_t (x - x')\big) + \sigma\,\xi_\ell,
        \qquad \xi_\ell \sim \mathcal N(0, I)\\
    \mu &\leftarrow (1-\alpha)\,\mu + \alpha\, x' \quad\text{(paper)}
        \quad\text{or}\quad \mu \leftarrow \alpha\,\mu + (1-\alpha)\, x'
        \quad\text{(code)}

  with :math:`\sigma = \epsilon\sqrt{2\eta'}` (``noise_form="code"``) or
  :math:`\epsilon\sqrt{\eta'}` (``"paper"``), :math:`m'` the inner momentum
  and :math:`\lambda` the weight decay; then the outer step treats :math:`G = x - \mu` as the gradient of an
  ordinary torch-style SGD with coupled L2 and (Nesterov) momentum:
  :math:`x \leftarrow x - \eta\,\mathrm{SGD}_{m}(G + \lambda x)`. The ``grads``
  passed to ``update`` are discarded when ``num_inner_steps > 0`` (as in the
  official code); with ``num_inner_steps = 0`` this is plain SGD on ``grads``.
  Scoping: :math:`\gamma_t = \min(\gamma_0 (1 + \gamma_1)^t, \gamma_{max})`
  with :math:`t` the number of outer updates made so far (0 for the first);
  ``gamma`` may also be an optax schedule of :math:`t`. The cap
  :math:`\gamma_{max}` defaults to :math:`1/\eta'` (``gamma_max=None``): at
  :math:`\eta'\gamma = 1` the coupling term pulls :math:`x'` exactly back
  onto :math:`x` every inner step (then :math:`x - \langle x'\rangle \approx
  \eta' \nabla f(x)`, the :math:`\gamma \to \infty` limit of the local
  entropy gradient); beyond it the explicit SGLD step overshoots, and beyond
  :math:`2/\eta'` it diverges. Without a cap :math:`(1+\gamma_1)^t`
  overflows after about 88k updates in float32 with the defaults and the
  updates become NaN. The official codes have no cap; the default one only
  changes runs once :math:`\gamma_t > 1/\eta'` (with the defaults, after
  about 11.5k outer updates). Pass a larger ``gamma_max`` to follow the
  uncapped scoping further (γ itself is always kept finite, see
  :func:`scoped_gamma`).

  **Paper vs official code.** Defaults: the paper's μ
  weighting, the official codes' noise and outer-step forms
  (the published runs used them); every variant is an option:

  * μ average: the paper's Algorithm 1 writes
    :math:`\mu \leftarrow (1-\alpha)\mu + \alpha x'` with :math:`\alpha=0.75`
    (weight 0.75 on the *new* sample); the code does
    ``mw.mul_(0.75).add_(0.25, w)`` (weight 0.75 on the *old* average).
    Default ``mu_weighting="paper"``; ``"code"`` reproduces the code. In both
    cases ``mu_decay`` is the constant 0.75.
  * Noise: the code's step noise has std :math:`\epsilon\sqrt{2\eta'}`
    (``noise_form="code"``, the default: read from both official codes, the
    usual SGLD temperature convention); the paper's Algorithm 1 is recalled
    as :math:`\sqrt{\eta'}\,\epsilon` (``noise_form="paper"``) [recall, not
    re-read].
  * Outer step: the paper writes :math:`x \leftarrow x - \eta\gamma(x-\mu)`;
    both official codes use :math:`x - \eta (x-\mu)` (γ absorbed into η).
    The absorbed form is the default (the paper's form with η and the code's
    with ``learning_rate = η γ`` coincide when there is no scoping);
    ``scale_outer_by_gamma=True`` gives the paper's form.
  * Scoping: the PyTorch port computes ``g0*(1+g1)**state['t']`` but never
    increments ``t``, so γ never grows there (a bug); the Lua code, used for
    the paper's experiments, increments it. We increment it.
  * The PyTorch port seeds the outer momentum buffer with the ordinary
    gradient of the first call; we start it from the first :math:`G`
    (``torch.optim.SGD`` semantics). Weight decay enters both the inner
    gradient (before the inner momentum) and :math:`G`, as in the PyTorch
    port. The Lua code instead adds it after the inner momentum and puts no
    momentum on :math:`G` at all (its outer buffer only accumulates the
    discarded ordinary gradient); ``momentum=0, inner_momentum=0.9`` is close
    to that.

  Noise comes from ``state.key`` (or from a ``key`` extra argument): each
  update splits ``key -> (next_key, sub)``; inner step ``ℓ`` uses
  ``jax.random.fold_in(sub, ℓ)`` split into one key per leaf (tree-leaf order).

  Args:
    learning_rate: outer learning rate η (float or schedule of the outer step).
    num_inner_steps: number L of Langevin steps per update (0 = plain SGD).
    inner_learning_rate: SGLD step size η'.
    noise: thermal noise ε (``noise = 0`` makes the method deterministic).
    mu_decay: the averaging constant α = 0.75 (see ``mu_weighting``).
    gamma: scope γ₀ (float) or a schedule of the outer step count.
    gamma_scoping: γ₁ of the exponential scoping.
    momentum: outer momentum coefficient (also the inner one by default).
    nesterov: Nesterov momentum for the outer and inner loops.
    weight_decay: coupled L2 λ (inner gradients and the outer G).
    inner_momentum: momentum of the inner loop (default: ``momentum``).
    mu_weighting: ``"paper"`` or ``"code"`` (see above).
    noise_form: ``"code"`` (std ε√(2η')) or ``"paper"`` (std ε√η').
    gamma_max: cap on the scoped γ; ``None`` (default) caps it at
      ``1 / inner_learning_rate`` (see above).
    scale_outer_by_gamma: use the paper's outer step η γ (x - μ).
    key: the PRNG key (or an integer seed) of the noise key kept in the
      state.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    and ``grad_fn`` (when ``num_inner_steps > 0``), and accepts ``key``.

  Example::

    tx = optzoo.entropy_sgd(0.1, num_inner_steps=5)
    grad_fn = lambda p, i: jax.grad(loss)(p, batches[i])
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)

  References:
    Chaudhari et al., `Entropy-SGD: Biasing Gradient Descent Into Wide Valleys
    <https://arxiv.org/abs/1611.01838>`_, ICLR 2017; code
    `ucla-vision/entropy-sgd <https://github.com/ucla-vision/entropy-sgd>`_.
  """
  _check_entropy_sgd_args(
      learning_rate, num_inner_steps, inner_learning_rate, noise, mu_decay,
      gamma, gamma_scoping, momentum, nesterov, weight_decay, inner_momentum,
      mu_weighting, noise_form, gamma_max, scale_outer_by_gamma, key)
  langevin = functools.partial(
      _langevin_average,
      num_steps=num_inner_steps,
      learning_rate=inner_learning_rate,
      momentum=momentum if inner_momentum is None else inner_momentum,
      nesterov=nesterov,
      weight_decay=weight_decay,
      noise_std=_noise_std(noise, inner_learning_rate, noise_form),
      weights=((1.0 - mu_decay, mu_decay) if mu_weighting == "paper"
               else (mu_decay, 1.0 - mu_decay)))
  outer = optax.chain(
      transform.add_l2(weight_decay),
      transform.trace(momentum, nesterov=nesterov),
      transform.scale_by_learning_rate(learning_rate),
  )
  init_key = key

  def init_fn(params):
    return EntropySGDState(
        count=jnp.zeros([], jnp.int32),
        key=tree.as_key(init_key),
        outer=outer.init(params),
    )

  def update_fn(updates, state, params=None, *, grad_fn=None, key=None, **extra):
    del extra
    validation.require_params(params, "entropy_sgd")
    count = state.count
    next_key, sub = jax.random.split(state.key)
    if key is not None:
      next_key, sub = state.key, key
    if (not isinstance(num_inner_steps, jax.core.Tracer)
        and int(num_inner_steps) == 0):
      g_outer = updates
    else:
      validation.require_extra_arg(grad_fn, "grad_fn", "entropy_sgd", _GRAD_FN_HOW)
      cap = (1.0 / inner_learning_rate) if gamma_max is None else gamma_max
      gamma_t = scoped_gamma(gamma, gamma_scoping, count, cap)
      mu = langevin(params, grad_fn, gamma_t, sub)
      if scale_outer_by_gamma:
        g_outer = jax.tree.map(
            lambda p, m: (gamma_t.astype(p.dtype) * (p - m)).astype(p.dtype), params, mu)
      else:
        g_outer = jax.tree.map(lambda p, m: (p - m).astype(p.dtype), params, mu)
    new_updates, outer_state = outer.update(g_outer, state.outer, params)
    new_updates = optax.tree_utils.tree_cast_like(new_updates, updates)
    return new_updates, EntropySGDState(
        count=optax.safe_increment(count), key=next_key, outer=outer_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_entropy_sgd_args(
    learning_rate, num_inner_steps, inner_learning_rate, noise, mu_decay, gamma,
    gamma_scoping, momentum, nesterov, weight_decay, inner_momentum,
    mu_weighting, noise_form, gamma_max, scale_outer_by_gamma, key) -> None:
  validation.check_lr(learning_rate)
  validation.check_int("num_inner_steps", num_inner_steps, minimum=0)
  validation.check_positive("inner_learning_rate", inner_learning_rate)
  validation.check_nonneg("noise", noise)
  validation.check_unit_interval("mu_decay", mu_decay)
  if not callable(gamma):
    validation.check_nonneg("gamma", gamma)
  validation.check_nonneg("gamma_scoping", gamma_scoping)
  validation.check_beta("momentum", momentum)
  validation.check_bool("nesterov", nesterov)
  validation.check_nonneg("weight_decay", weight_decay)
  if inner_momentum is not None:
    validation.check_beta("inner_momentum", inner_momentum)
  validation.check_choice("mu_weighting", mu_weighting, ("paper", "code"))
  validation.check_choice("noise_form", noise_form, ("paper", "code"))
  if gamma_max is not None:
    validation.check_positive("gamma_max", gamma_max)
  validation.check_bool("scale_outer_by_gamma", scale_outer_by_gamma)
  validation.check_key("key", key)


def _noise_std(noise, inner_learning_rate, noise_form):
  """The SGLD noise std: ε√(2η') (code) or ε√η' (paper)."""
  c_noise = 2.0 if noise_form == "code" else 1.0
  if (isinstance(noise, jax.core.Tracer)
      or isinstance(inner_learning_rate, jax.core.Tracer)):
    # injected hyperparameters
    return noise * jnp.sqrt(c_noise * inner_learning_rate)
  return float(noise) * float(np.sqrt(c_noise * float(inner_learning_rate)))


def _langevin_average(params, grad_fn, gamma_t, key, *, num_steps,
                      learning_rate, momentum, nesterov, weight_decay,
                      noise_std, weights):
  """Entropy-SGD's inner loop: the average μ of ``num_steps`` SGLD iterates x'.

  ``weights = (w_old, w_new)`` of the μ average; see :func:`entropy_sgd`.
  """
  x = params
  w_old, w_new = weights

  def body(i, carry):
    xp, mu, buf = carry
    g = grad_fn(xp, i)
    g = jax.tree.map(lambda gi, p: (gi + weight_decay * p).astype(p.dtype), g, xp)
    buf = jax.tree.map(
        lambda b, gi: jnp.where(i == 0, gi, momentum * b + gi).astype(b.dtype),
        buf, g)
    if nesterov:
      d = jax.tree.map(lambda gi, b: gi + momentum * b, g, buf)
    else:
      d = buf
    z = _leaf_normals(jax.random.fold_in(key, i), xp)

    def step(p, xc, di, zi):
      gt = gamma_t.astype(p.dtype)
      new = p - learning_rate * (di - gt * (xc - p)) + noise_std * zi
      return new.astype(p.dtype)

    xp = jax.tree.map(step, xp, x, d, z)
    mu = jax.tree.map(lambda m, p: (w_old * m + w_new * p).astype(m.dtype), mu, xp)
    return xp, mu, buf

  zeros = optax.tree_utils.tree_zeros_like(x)
  _, mu, _ = jax.lax.fori_loop(0, num_steps, body, (x, x, zeros))
  return mu


# ---------------------------------------------------------------------------
# Replicated-SGD
# ---------------------------------------------------------------------------


@registry.register(
    family="research",
    summary="Local energy dE(sigma) = E_z[L(w + sigma z*w)] - L(w): a rescaling-invariant flatness probe.",
    paper="Pittorino et al., ICLR 2021 (after Jiang et al., ICLR 2020)",
    reference="closed form on quadratics (tests)",
    verified="closed form on quadratics (tests/research/test_entropy.py)",
    kind="utility",
)
@validation.renamed(n_samples="num_samples")
def local_energy(
    loss_fn: Callable[[Any, Any], jax.Array] = None,
    params: Any = None,
    batch: Any = None,
    sigmas: Any = (0.1,),
    num_samples: int = 16,
    key: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Local energy :math:`\delta E(w,\sigma) = \mathbb E_z[L(w + \sigma z\odot |w|)] - L(w)`.

  Multiplicative Gaussian noise :math:`z \sim \mathcal N(0, I)`, so the
  measure is invariant to per-weight rescalings. Monte Carlo with
  ``num_samples`` draws (the same draws for every σ). Returns an array with
  one value per σ. ``loss_fn(params, batch)`` must return a scalar (loss or
  error). The sampler is the one of
  ``optzoo.diagnostics.local_entropy_flatness(relative=True)``, whose
  ``local_energy`` field this is, vectorized over σ.
  """
  if loss_fn is None or params is None:
    raise ValueError("local_energy needs `loss_fn(params, batch)` and `params`.")
  validation.check_int("num_samples", num_samples, minimum=1)
  sig = jnp.atleast_1d(jnp.asarray(sigmas))
  key = jax.random.PRNGKey(0) if key is None else key

  def energy(s):
    _, incs = landscape.loss_increases(loss_fn, params, batch, key, s,
                                       num_samples, relative=True)
    return jnp.mean(incs)

  return jax.vmap(energy)(sig)
