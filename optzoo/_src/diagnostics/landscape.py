"""Loss-landscape diagnostics: critical points, minimum ratio, sharpness, flatness."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optzoo._src import validation
from optzoo._src.diagnostics import hessian as H

__all__ = [
    "CriticalPoint",
    "classify_critical_point",
    "minimum_ratio",
    "SharpnessResult",
    "sharpness",
    "FlatnessResult",
    "local_entropy_flatness",
]

LABELS = ("local minimum", "local maximum", "saddle point", "degenerate",
          "not a critical point")


def _default_eig_rtol(dtype) -> float:
  return float(max(1e-6, 100 * np.finfo(np.dtype(dtype)).eps))


def _method(method: str, n: int, where: str) -> str:
  validation.check_choice("method", method, ("auto", "dense", "lanczos"))
  if method == "auto":
    return "dense" if n <= 1024 else "lanczos"
  if method == "dense" and n > H.DENSE_MAX_PARAMS:
    raise ValueError(
        f"{where}: method='dense' with {n} parameters (> {H.DENSE_MAX_PARAMS});"
        " use method='lanczos'.")
  return method


@jax.jit
def _flat_norm(x):
  return jnp.linalg.norm(x)


@functools.partial(jax.jit, static_argnums=0)
def _grad_flat_jit(loss_fn, params, batch):
  g = jax.grad(lambda p: H.call_loss(loss_fn, p, batch))(params)
  return ravel_pytree(g)[0]


def _grad_flat(loss_fn, params, batch):
  return _grad_flat_jit(H.as_static(loss_fn), params, batch)


@dataclasses.dataclass(frozen=True)
class CriticalPoint:
  """The output of :func:`classify_critical_point`.

  Attributes:
    label: ``"local minimum"``, ``"local maximum"``, ``"saddle point"``,
      ``"degenerate"`` (a critical point whose Hessian is semidefinite with
      eigenvalues within ``eig_tol`` of 0: the second-order test is
      inconclusive) or ``"not a critical point"``.
    grad_norm: :math:`\\|\\nabla L(\\theta)\\|_2`.
    min_eigenvalue, max_eigenvalue: extreme Hessian eigenvalues.
    eigenvalues: all eigenvalues (``method="dense"``) or the Lanczos Ritz
      values (``method="lanczos"``), ascending.
    escape_direction: for a critical point with negative curvature (a saddle),
      the unit eigenvector of the most negative eigenvalue as a params-shaped
      pytree: :math:`L(\\theta + \\epsilon u) \\approx L(\\theta) +
      \\tfrac12\\lambda_{\\min}\\epsilon^2 < L(\\theta)`. ``None`` otherwise.
    minimum_ratio: fraction of eigenvalues ``> eig_tol`` (dense only, else
      ``None``; see :func:`minimum_ratio` for large models).
    grad_tol, eig_tol: the thresholds used.
    method: ``"dense"`` or ``"lanczos"``.
  """

  label: str
  grad_norm: float
  min_eigenvalue: float
  max_eigenvalue: float
  eigenvalues: np.ndarray
  escape_direction: Any
  minimum_ratio: Optional[float]
  grad_tol: float
  eig_tol: float
  method: str

  @property
  def is_critical(self) -> bool:
    return self.label != "not a critical point"


def classify_critical_point(
    loss_fn: H.LossFn,
    params: Any,
    batch: Any = None,
    *,
    grad_tol: float = 1e-6,
    eig_tol: Optional[float] = None,
    eig_rtol: Optional[float] = None,
    method: str = "auto",
    num_iters: Optional[int] = None,
    key: Optional[jax.Array] = None,
) -> CriticalPoint:
  r"""Is ``params`` a local minimum, a local maximum, a saddle point, or none?

  The second-order test: at a critical point (:math:`\|\nabla L\| \le`
  ``grad_tol``) the Taylor expansion is
  :math:`L(\theta + \delta) \approx L(\theta) + \tfrac12 \delta^T H \delta`,
  so

  * all eigenvalues of :math:`H` > ``eig_tol`` → local minimum;
  * all < ``-eig_tol`` → local maximum;
  * some > ``eig_tol`` and some < ``-eig_tol`` → saddle point, escaped along
    the eigenvector :math:`u` of the most negative eigenvalue
    (``escape_direction``);
  * otherwise (eigenvalues within ``eig_tol`` of zero) → ``"degenerate"``:
    higher-order terms decide.

  Small models use the dense Hessian; large ones the extreme Ritz values of
  a Lanczos run (``method="auto"`` switches at 1024 parameters).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays.
    batch: the data, or ``None`` (then ``loss_fn(params)`` is called).
    grad_tol: gradient-norm threshold of a critical point (absolute).
    eig_tol: absolute eigenvalue threshold; default
      ``eig_rtol * max|lambda|``.
    eig_rtol: relative threshold; default ``max(1e-6, 100 eps(dtype))``.
    method: ``"auto"``, ``"dense"`` or ``"lanczos"``.
    num_iters: Lanczos steps (``method="lanczos"``); default ``min(n, 60)``.
    key: PRNG key of the Lanczos start vector.

  Returns:
    A :class:`CriticalPoint`.

  Examples:
    >>> import jax.numpy as jnp, optzoo.diagnostics as dg
    >>> cp = dg.classify_critical_point(lambda p: p[0]**2 - p[1]**2,
    ...                                 jnp.zeros(2))
    >>> cp.label
    'saddle point'
  """
  where = "classify_critical_point"
  flat, unravel = H.check_loss(loss_fn, params, batch, where)
  n = int(flat.size)
  validation.check_nonneg("grad_tol", grad_tol)
  if eig_tol is not None:
    validation.check_nonneg("eig_tol", eig_tol)
  if eig_rtol is None:
    eig_rtol = _default_eig_rtol(flat.dtype)
  validation.check_nonneg("eig_rtol", eig_rtol)
  method = _method(method, n, where)
  key = H._check_key(key, where)  # pylint: disable=protected-access

  g = _grad_flat(loss_fn, params, batch)
  grad_norm = float(_flat_norm(g))

  if method == "dense":
    hess = H.dense_hessian(loss_fn, params, batch, max_params=max(n, 1))
    evals, evecs = np.linalg.eigh(hess)
    u_min = evecs[:, 0]
  else:
    if num_iters is None:
      num_iters = min(n, 60)
    validation.check_int("num_iters", num_iters, minimum=1)
    if num_iters > n:
      raise ValueError(f"{where}: `num_iters`={num_iters} exceeds n={n}.")
    res = H.run_hessian_lanczos(loss_fn, params, batch, flat, num_iters, key)
    evals, s, _ = H.ritz(res)
    u_min = np.asarray(H.ritz_vector(res, s[:, 0]), np.float64)
  lam_min, lam_max = float(evals[0]), float(evals[-1])
  tol = float(eig_tol) if eig_tol is not None else float(
      eig_rtol * max(abs(lam_min), abs(lam_max)))

  if grad_norm > grad_tol:
    label = "not a critical point"
  elif lam_min > tol:
    label = "local minimum"
  elif lam_max < -tol:
    label = "local maximum"
  elif lam_min < -tol and lam_max > tol:
    label = "saddle point"
  else:
    label = "degenerate"

  escape = None
  if label != "not a critical point" and lam_min < -tol:
    u = np.asarray(u_min, np.float64)
    gdot = float(np.dot(np.asarray(g, np.float64), u))
    # Deterministic sign: descend along the gradient if it is not exactly 0,
    # else make the largest-magnitude entry positive.
    sign = -np.sign(gdot) if abs(gdot) > 0 else np.sign(u[np.argmax(np.abs(u))])
    u = u * (sign if sign != 0 else 1.0)
    escape = unravel(jnp.asarray(u, flat.dtype))

  ratio = float(np.mean(evals > tol)) if method == "dense" else None
  return CriticalPoint(
      label=label, grad_norm=grad_norm, min_eigenvalue=lam_min,
      max_eigenvalue=lam_max, eigenvalues=np.asarray(evals), escape_direction=escape,
      minimum_ratio=ratio, grad_tol=float(grad_tol), eig_tol=tol, method=method)


def minimum_ratio(
    loss_fn: H.LossFn,
    params: Any,
    batch: Any = None,
    *,
    tol: Optional[float] = None,
    method: str = "auto",
    num_iters: int = 60,
    num_probes: int = 8,
    key: Optional[jax.Array] = None,
) -> float:
  r"""The minimum ratio: the fraction of positive Hessian eigenvalues.

  .. math::
    \text{minimum ratio} = \frac{\#\{i : \lambda_i(H) > \text{tol}\}}{n}.

  1 at a strict local minimum; at a saddle point it says how "close to a
  minimum" the point is (few descent directions left). Small models
  (``method="dense"``) count exactly. Large ones (``method="lanczos"``)
  estimate it from the stochastic Lanczos quadrature measure
  (:func:`hessian_spectral_density`): the SLQ weight on Ritz values
  ``> tol``, averaged over ``num_probes`` probes.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays.
    batch: the data, or ``None``.
    tol: eigenvalues ``<= tol`` do not count as positive; default
      ``max(1e-6, 100 eps) * max|lambda|``.
    method: ``"auto"`` (dense up to 1024 parameters), ``"dense"``,
      ``"lanczos"``.
    num_iters: Lanczos steps per probe (SLQ).
    num_probes: SLQ probes.
    key: PRNG key.

  Returns:
    A float in [0, 1].
  """
  where = "minimum_ratio"
  flat, _ = H.check_loss(loss_fn, params, batch, where)
  n = int(flat.size)
  method = _method(method, n, where)
  if tol is not None:
    validation.check_number("tol", tol)
  rtol = _default_eig_rtol(flat.dtype)
  if method == "dense":
    evals = np.linalg.eigvalsh(H.dense_hessian(loss_fn, params, batch,
                                               max_params=max(n, 1)))
    t = tol if tol is not None else rtol * float(np.max(np.abs(evals)))
    return float(np.mean(evals > t))
  dens = H.hessian_spectral_density(
      loss_fn, params, batch, num_iters=min(num_iters, n), num_probes=num_probes,
      key=key, num_points=2)
  t = tol if tol is not None else rtol * float(np.max(np.abs(dens.nodes)))
  return dens.fraction_above(t)


# ---------------------------------------------------------------------------
# Sharpness and flatness
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SharpnessResult:
  """The output of :func:`sharpness`.

  Attributes:
    loss: :math:`L(\\theta)`.
    top_eigenvalue: :math:`\\lambda_{\\max}(H)` (``None`` when not computed).
    worst_case_increase: :math:`\\max_{\\delta \\in B} L(\\theta+\\delta) -
      L(\\theta)` estimated by projected gradient ascent (a lower bound on the
      true maximum).
    random_increase: mean of :math:`L(\\theta+\\delta) - L(\\theta)` over
      random :math:`\\delta` on the boundary of :math:`B`.
    random_increase_std: its standard deviation over the draws.
    worst_case_perturbation: the maximizing :math:`\\delta` (params pytree).
    rho: the radius; perturbation: ``"l2"`` or ``"box"``.
  """

  loss: float
  top_eigenvalue: Optional[float]
  worst_case_increase: float
  random_increase: float
  random_increase_std: float
  worst_case_perturbation: Any
  rho: float
  perturbation: str


def _sharpness_impl(loss_fn, params, batch, key, rho, num_ascent_steps, num_random,
                    box, v_top):
  flat, unravel = ravel_pytree(params)
  dtype = flat.dtype

  def loss_flat(x):
    return H.call_loss(loss_fn, unravel(x), batch).astype(dtype)

  loss0 = loss_flat(flat)
  radius = rho * (jnp.abs(flat) + 1) if box else rho

  def project(d):
    if box:
      return jnp.clip(d, -radius, radius)
    nrm = jnp.linalg.norm(d)
    return d * jnp.minimum(1.0, rho / jnp.where(nrm > 0, nrm, 1.0))

  def sign(x):  # ties go to +1, so zero-gradient coordinates still move.
    return jnp.where(x >= 0, 1.0, -1.0).astype(dtype)

  def to_boundary(direction):
    if box:
      return radius * sign(direction)
    nrm = jnp.linalg.norm(direction)
    return rho * direction / jnp.where(nrm > 0, nrm, 1.0)

  g0 = jax.grad(loss_flat)(flat)
  cands = jnp.stack([to_boundary(g0), to_boundary(v_top), to_boundary(-v_top)])
  cvals = jax.vmap(loss_flat)(flat[None] + cands)
  best = jnp.argmax(cvals)
  delta0, val0 = cands[best], cvals[best]

  def ascent(t, carry):
    delta, best_d, best_v = carry
    val, g = jax.value_and_grad(loss_flat)(flat + delta)
    better = val > best_v
    best_d = jnp.where(better, delta, best_d)
    best_v = jnp.where(better, val, best_v)
    step = 0.5 / jnp.sqrt(t + 1.0)
    if box:
      delta = project(delta + step * radius * sign(g))
    else:
      gn = jnp.linalg.norm(g)
      delta = project(delta + step * rho * g / jnp.where(gn > 0, gn, 1.0))
    return delta, best_d, best_v

  delta, best_d, best_v = jax.lax.fori_loop(
      0, num_ascent_steps, ascent, (delta0, delta0, val0))
  last = loss_flat(flat + delta)
  best_d = jnp.where(last > best_v, delta, best_d)
  best_v = jnp.maximum(last, best_v)

  def rand_inc(k):
    z = jax.random.normal(k, flat.shape, dtype)
    return loss_flat(flat + to_boundary(z)) - loss0

  incs = jax.lax.map(rand_inc, jax.random.split(key, num_random))
  return loss0, best_v - loss0, jnp.mean(incs), jnp.std(incs), unravel(best_d)


_sharpness_jit = jax.jit(
    _sharpness_impl,
    static_argnames=("loss_fn", "num_ascent_steps", "num_random", "box"))


def sharpness(
    loss_fn: H.LossFn,
    params: Any,
    batch: Any = None,
    *,
    rho: float = 0.05,
    perturbation: str = "l2",
    num_ascent_steps: int = 10,
    num_random: int = 16,
    compute_eigenvalue: bool = True,
    num_iters: int = 20,
    key: Optional[jax.Array] = None,
) -> SharpnessResult:
  r"""Sharpness of the loss at ``params``: top eigenvalue and perturbed losses.

  * ``top_eigenvalue``: :math:`\lambda_{\max}(H)` by Lanczos
    (:func:`hessian_eigenvalues`, ``num_iters`` steps).
  * ``worst_case_increase``: :math:`\max_{\delta\in B}L(\theta+\delta) -
    L(\theta)`, with :math:`B = \{\|\delta\|_2 \le \rho\}` (``"l2"``, the SAM
    neighbourhood) or the box :math:`|\delta_i| \le \rho(1+|\theta_i|)`
    (``"box"``, Keskar et al.'s :math:`\epsilon`-sharpness). Estimated by
    ``num_ascent_steps`` projected (normalized / sign) gradient-ascent steps
    started from the best of the SAM step :math:`\rho\,g/\|g\|` and
    :math:`\pm\rho\,u_{\max}` (top eigenvector); the best point seen is kept,
    so this is a lower bound on the true maximum.
  * ``random_increase``: mean increase over ``num_random`` random points on
    the boundary of :math:`B` (Gaussian direction scaled to norm
    :math:`\rho`, or random box corners).

  Near a minimum, :math:`\text{worst} \approx \tfrac12\rho^2\lambda_{\max}`
  while :math:`\text{random} \approx \tfrac12\rho^2\,\mathrm{tr}(H)/n`.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays.
    batch: the data, or ``None``.
    rho: perturbation radius (> 0).
    perturbation: ``"l2"`` or ``"box"``.
    num_ascent_steps: projected ascent steps (>= 0).
    num_random: random perturbations (>= 1).
    compute_eigenvalue: also run Lanczos for :math:`\lambda_{\max}` (its
      eigenvector then also seeds the ascent).
    num_iters: Lanczos steps for :math:`\lambda_{\max}`.
    key: PRNG key.

  Returns:
    A :class:`SharpnessResult`.

  References:
    Keskar et al., `On large-batch training for deep learning: generalization
    gap and sharp minima <https://arxiv.org/abs/1609.04836>`_, ICLR 2017;
    Foret et al., `Sharpness-aware minimization
    <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
  """
  where = "sharpness"
  flat, unravel = H.check_loss(loss_fn, params, batch, where)
  n = int(flat.size)
  validation.check_positive("rho", rho)
  validation.check_choice("perturbation", perturbation, ("l2", "box"))
  validation.check_int("num_ascent_steps", num_ascent_steps, minimum=0)
  validation.check_int("num_random", num_random, minimum=1)
  validation.check_bool("compute_eigenvalue", compute_eigenvalue)
  validation.check_int("num_iters", num_iters, minimum=1)
  key = H._check_key(key, where)  # pylint: disable=protected-access
  k_lanczos, k_rand = jax.random.split(key)
  top = None
  v_top = jnp.zeros_like(flat)
  if compute_eigenvalue:
    res = H.run_hessian_lanczos(loss_fn, params, batch, flat, min(num_iters, n),
                                k_lanczos)
    theta, s, _ = H.ritz(res)
    v_top = H.ritz_vector(res, s[:, -1])
    top = float(theta[-1])
  loss0, worst, rmean, rstd, best_d = _sharpness_jit(
      H.as_static(loss_fn), params, batch, k_rand, jnp.asarray(rho, flat.dtype),
      num_ascent_steps=num_ascent_steps, num_random=num_random,
      box=(perturbation == "box"), v_top=v_top)
  return SharpnessResult(
      loss=float(loss0), top_eigenvalue=top, worst_case_increase=float(worst),
      random_increase=float(rmean), random_increase_std=float(rstd),
      worst_case_perturbation=best_d, rho=float(rho), perturbation=perturbation)


@dataclasses.dataclass(frozen=True)
class FlatnessResult:
  """The output of :func:`local_entropy_flatness`.

  Attributes:
    loss: :math:`L(\\theta)`.
    local_entropy_gap: :math:`-\\tfrac1\\beta\\log\\frac1S\\sum_s
      e^{-\\beta\\Delta_s}` (smaller = flatter; :math:`\\le` ``local_energy``).
    local_energy: :math:`\\frac1S\\sum_s \\Delta_s`, the mean loss increase
      (the :math:`\\beta\\to0` limit).
    increases: the ``S`` sampled :math:`\\Delta_s`.
    sigma, beta, relative: the settings used.
  """

  loss: float
  local_entropy_gap: float
  local_energy: float
  increases: np.ndarray
  sigma: float
  beta: float
  relative: bool


def _flatness_impl(loss_fn, params, batch, key, sigma, beta, num_samples, relative):
  flat, unravel = ravel_pytree(params)
  dtype = flat.dtype

  def loss_flat(x):
    return H.call_loss(loss_fn, unravel(x), batch).astype(dtype)

  loss0 = loss_flat(flat)
  scale = sigma * jnp.abs(flat) if relative else sigma

  def inc(k):
    z = jax.random.normal(k, flat.shape, dtype)
    return loss_flat(flat + scale * z) - loss0

  incs = jax.lax.map(inc, jax.random.split(key, num_samples))
  gap = -(jax.nn.logsumexp(-beta * incs) - jnp.log(num_samples)) / beta
  return loss0, gap, jnp.mean(incs), incs


_flatness_jit = jax.jit(
    _flatness_impl, static_argnames=("loss_fn", "num_samples", "relative"))


def local_entropy_flatness(
    loss_fn: H.LossFn,
    params: Any,
    batch: Any = None,
    *,
    sigma: float = 0.01,
    num_samples: int = 32,
    beta: float = 1.0,
    relative: bool = False,
    key: Optional[jax.Array] = None,
) -> FlatnessResult:
  r"""A sampling (SGLD-free) estimate of local-entropy flatness.

  The local entropy of Chaudhari et al. (Entropy-SGD) at inverse temperature
  :math:`\beta` and coupling :math:`\gamma` is
  :math:`F(\theta) = \log\int e^{-\beta L(\theta') -
  \frac{\beta\gamma}2\|\theta'-\theta\|^2}d\theta'`. Substituting
  :math:`\theta' = \theta + \sigma z`, :math:`\sigma = (\beta\gamma)^{-1/2}`,
  :math:`z \sim \mathcal N(0, I)`, gives, up to a constant,

  .. math::
    -\frac{F(\theta)}{\beta} = L(\theta) + \underbrace{\Big(-\frac1\beta
    \log \mathbb E_z\, e^{-\beta[L(\theta+\sigma z) - L(\theta)]}\Big)}_{
    \text{local\_entropy\_gap}},

  estimated by plain Monte Carlo over ``num_samples`` draws (no SGLD chain;
  biased upward for few samples, by Jensen). The gap is 0 for a perfectly
  flat neighbourhood and grows with sharpness; as :math:`\beta \to 0` it
  tends to the *local energy* :math:`\mathbb E_z[L(\theta+\sigma z)] -
  L(\theta)` (Jiang et al.; Pittorino et al.), returned too. With
  ``relative=True`` the noise is multiplicative, :math:`\sigma z \odot
  |\theta|`, which makes the measure invariant to per-weight rescaling.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays.
    batch: the data, or ``None``.
    sigma: noise scale (> 0).
    num_samples: Monte Carlo samples (>= 1).
    beta: inverse temperature (> 0).
    relative: multiplicative noise.
    key: PRNG key.

  Returns:
    A :class:`FlatnessResult`.

  References:
    Chaudhari et al., `Entropy-SGD: biasing gradient descent into wide
    valleys <https://arxiv.org/abs/1611.01838>`_, ICLR 2017; Pittorino et al.,
    `Entropic gradient descent algorithms and wide flat minima
    <https://arxiv.org/abs/2006.07897>`_, ICLR 2021.
  """
  where = "local_entropy_flatness"
  flat, _ = H.check_loss(loss_fn, params, batch, where)
  validation.check_positive("sigma", sigma)
  validation.check_int("num_samples", num_samples, minimum=1)
  validation.check_positive("beta", beta)
  validation.check_bool("relative", relative)
  key = H._check_key(key, where)  # pylint: disable=protected-access
  loss0, gap, energy, incs = _flatness_jit(
      H.as_static(loss_fn), params, batch, key, jnp.asarray(sigma, flat.dtype),
      jnp.asarray(beta, flat.dtype), num_samples=num_samples, relative=relative)
  return FlatnessResult(
      loss=float(loss0), local_entropy_gap=float(gap), local_energy=float(energy),
      increases=np.asarray(incs), sigma=float(sigma), beta=float(beta),
      relative=bool(relative))
