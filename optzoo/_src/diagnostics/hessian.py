"""Hessian-vector products, dense Hessians and matrix-free Lanczos spectra.

Everything here works on any ``loss_fn(params, batch) -> scalar`` whose
``params`` are an arbitrary pytree (``None`` leaves and scalars included).
The Lanczos vector space is the raveled parameter vector
(:func:`jax.flatten_util.ravel_pytree`); eigenvectors are handed back as
params-shaped pytrees.

These are *host-level* tools (like ``optax.tree`` utilities, not like an
``update`` function): they return NumPy arrays, so they may synchronize with
the host. Each heavy kernel (one whole Lanczos run, one dense Hessian) is one
``jax.jit`` call, compiled once per ``(loss_fn, shapes, num_iters)``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optzoo._src import optional
from optzoo._src import validation

__all__ = [
    "hvp",
    "make_hvp_fn",
    "dense_hessian",
    "lanczos",
    "LanczosResult",
    "hessian_eigenvalues",
    "HessianEigenResult",
    "hessian_spectral_density",
    "SpectralDensity",
]

LossFn = Callable[..., jax.Array]

# Dense Hessians above this many parameters need an explicit `max_params`.
DENSE_MAX_PARAMS = 4096


# ---------------------------------------------------------------------------
# Calling and validating the loss
# ---------------------------------------------------------------------------


def call_loss(loss_fn: LossFn, params: Any, batch: Any) -> jax.Array:
  """``loss_fn(params, batch)``, or ``loss_fn(params)`` when ``batch is None``."""
  return loss_fn(params) if batch is None else loss_fn(params, batch)


class _ById:
  """Wraps an unhashable callable so that it can be a static ``jit`` argument."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


def as_static(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` itself when hashable (jit caches by it), else a by-identity wrapper."""
  try:
    hash(fn)
    return fn
  except TypeError:
    return _ById(fn)


def _shapes(tree: Any) -> str:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if not leaves:
    return "{}"
  parts = []
  for path, leaf in leaves[:12]:
    shape = getattr(leaf, "shape", ())
    dtype = getattr(leaf, "dtype", type(leaf).__name__)
    parts.append(f"{jax.tree_util.keystr(path) or '<root>'}: {tuple(shape)} {dtype}")
  more = f", ... ({len(leaves) - 12} more)" if len(leaves) > 12 else ""
  return "{" + ", ".join(parts) + more + "}"


def _check_batch_leading_dims(batch: Any, where: str) -> None:
  """All array leaves of ``batch`` with ndim >= 1 must share their first axis."""
  if batch is None:
    return
  dims = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
    shape = getattr(leaf, "shape", None)
    if shape is not None and len(shape) >= 1:
      dims.setdefault(int(shape[0]), []).append(jax.tree_util.keystr(path))
  if len(dims) > 1:
    desc = "; ".join(f"{n} rows: {', '.join(p) or '<root>'}" for n, p in dims.items())
    raise ValueError(
        f"{where}: the arrays in `batch` disagree on the batch (leading)"
        f" dimension ({desc}). Every example needs an input and a target;"
        " slice them to the same number of rows. (If a leaf really is not"
        " per-example, close over it instead: `loss_fn=lambda p, b:"
        " loss(p, b, extra)`.)"
    )


def check_loss(loss_fn: LossFn, params: Any, batch: Any, where: str):
  """Validates ``loss_fn``/``params``/``batch``; returns ``(flat_params, unravel)``.

  Raises a clear error when ``loss_fn`` is not callable, ``params`` has no
  (or non-float) leaves, ``batch`` leaves disagree on their leading dimension,
  the loss cannot be evaluated on ``batch`` (wrong input shape), or the loss
  is not a real scalar.
  """
  if not callable(loss_fn):
    raise TypeError(
        f"{where}: `loss_fn` must be a callable `loss_fn(params, batch) ->"
        f" scalar`, got {type(loss_fn).__name__}."
    )
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{where}: every leaf of `params` must be a real floating-point"
          f" array (the Hessian is taken with respect to them), but"
          f" {jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}."
          " Move integer/boolean state out of `params` (close over it in"
          " `loss_fn`)."
      )
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError(f"{where}: `params` has no array leaves.")
  _check_batch_leading_dims(batch, where)
  call = "loss_fn(params)" if batch is None else "loss_fn(params, batch)"
  try:
    out = jax.eval_shape(lambda p, b: call_loss(loss_fn, p, b), params, batch)
  except Exception as e:  # noqa: BLE001 - re-raised with context below.
    raise ValueError(
        f"{where}: `{call}` could not be evaluated: {type(e).__name__}: {e}\n"
        f"  batch shapes: {_shapes(batch)}\n  params shapes: {_shapes(params)}\n"
        "Check that the batch has the input shape the model expects (and"
        " pass `batch=None` only if `loss_fn` takes `params` alone)."
    ) from e
  if isinstance(out, (tuple, list)) or not hasattr(out, "shape"):
    raise ValueError(
        f"{where}: `{call}` must return a scalar loss, got"
        f" {type(out).__name__}. If it returns `(loss, aux)`, pass"
        " `lambda p, b: loss_fn(p, b)[0]`."
    )
  if out.shape != ():
    raise ValueError(
        f"{where}: `{call}` must return a scalar loss, got an array of shape"
        f" {tuple(out.shape)}. Reduce it, e.g. `jnp.mean(per_example_losses)`."
    )
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(
        f"{where}: `{call}` must return a real floating-point scalar, got"
        f" dtype {out.dtype}."
    )
  return flat, unravel


def _check_key(key: Any, where: str) -> jax.Array:
  if key is None:
    return jax.random.key(0)
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key))
  try:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      return key
    if key.shape == (2,) and key.dtype == jnp.uint32:
      return jax.random.wrap_key_data(key)
  except AttributeError:
    pass
  raise TypeError(
      f"{where}: `key` must be a jax.random.key (or an int seed), got"
      f" {type(key).__name__}."
  )


# ---------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------


def _hvp_tree(loss_fn: LossFn, params: Any, batch: Any, v: Any) -> Any:
  """Forward-over-reverse HVP on pytrees (no validation)."""
  v = jax.tree.map(lambda p, t: jnp.asarray(t, jnp.result_type(p)), params, v)
  grad_fn = jax.grad(lambda p: call_loss(loss_fn, p, batch))
  return jax.jvp(grad_fn, (params,), (v,))[1]


def hvp(loss_fn: LossFn, params: Any, v: Any, batch: Any = None) -> Any:
  r"""Hessian-vector product :math:`H(\theta)\,v` of a scalar loss, on pytrees.

  Forward-over-reverse (``jax.jvp`` of ``jax.grad``): costs about one extra
  gradient evaluation and never forms :math:`H`,

  .. math::
    H(\theta)\,v = \frac{d}{d\epsilon}\nabla_\theta L(\theta + \epsilon v)
    \Big|_{\epsilon=0}.

  Pure JAX: usable under ``jax.jit`` and ``jax.vmap`` (over ``v``).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (``loss_fn(params)`` when
      ``batch`` is ``None``).
    params: the point :math:`\theta`, any pytree of float arrays.
    v: the direction, a pytree with the structure of ``params``.
    batch: the data ``loss_fn`` is evaluated on, or ``None``.

  Returns:
    :math:`Hv`, a pytree shaped like ``params``.

  Examples:
    >>> import jax.numpy as jnp, optzoo.diagnostics as dg
    >>> f = lambda p: p["x"] ** 2 - p["y"] ** 2
    >>> hv = dg.hvp(f, {"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 1.0})
    >>> float(hv["x"]), float(hv["y"])
    (2.0, -2.0)
  """
  if not callable(loss_fn):
    raise TypeError(f"hvp: `loss_fn` must be callable, got {type(loss_fn).__name__}.")
  if jax.tree.structure(params) != jax.tree.structure(v):
    raise ValueError(
        "hvp: `v` must have the pytree structure of `params`; got"
        f" {jax.tree.structure(v)} vs {jax.tree.structure(params)}."
    )
  return _hvp_tree(loss_fn, params, batch, v)


def make_hvp_fn(loss_fn: LossFn, batch: Any = None) -> Callable[[Any, Any], Any]:
  """Returns ``hvp_fn(params, v) -> Hv`` for the extra argument ``hvp_fn``.

  This is the ``hvp_fn`` extra-argument convention of optzoo:
  a pure, jittable callable closing over ``loss_fn`` and ``batch``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    batch: the data to evaluate the Hessian on (closed over), or ``None``.

  Returns:
    ``hvp_fn(params, v)`` returning the pytree :math:`H(\\text{params})\\,v`.
  """
  if not callable(loss_fn):
    raise TypeError(
        f"make_hvp_fn: `loss_fn` must be callable, got {type(loss_fn).__name__}.")

  def hvp_fn(params, v):
    return _hvp_tree(loss_fn, params, batch, v)

  return hvp_fn


# ---------------------------------------------------------------------------
# Dense Hessian
# ---------------------------------------------------------------------------


def _dense_hessian_impl(loss_fn, params, batch):
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda x: call_loss(loss_fn, unravel(x), batch))(flat)


_dense_hessian_jit = jax.jit(_dense_hessian_impl, static_argnums=0)


def dense_hessian(
    loss_fn: LossFn,
    params: Any,
    batch: Any = None,
    *,
    max_params: int = DENSE_MAX_PARAMS,
) -> np.ndarray:
  r"""The exact Hessian matrix of ``loss_fn`` at ``params`` (small models only).

  .. math::
    H_{ij} = \frac{\partial^2 L}{\partial\theta_i\,\partial\theta_j},

  in the order of ``jax.flatten_util.ravel_pytree(params)[0]``. Computed with
  ``jax.hessian`` (forward-over-reverse) in one jitted call; memory is
  :math:`O(n^2)`, so models with more than ``max_params`` parameters are
  refused (use :func:`hessian_eigenvalues` instead).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays.
    batch: the data, or ``None`` (then ``loss_fn(params)`` is called).
    max_params: refuse larger models (keyword only).

  Returns:
    A symmetric ``(n, n)`` NumPy array (symmetrized: :math:`(H + H^T)/2`).
  """
  flat, _ = check_loss(loss_fn, params, batch, "dense_hessian")
  validation.check_int("max_params", max_params, minimum=1)
  if flat.size > max_params:
    raise ValueError(
        f"dense_hessian: the model has {flat.size} parameters, more than"
        f" max_params={max_params}; a dense Hessian needs {flat.size}^2"
        " entries. Use hessian_eigenvalues (Lanczos) or raise max_params."
    )
  h = np.asarray(_dense_hessian_jit(as_static(loss_fn), params, batch))
  return 0.5 * (h + h.T)


# ---------------------------------------------------------------------------
# Lanczos with full reorthogonalization
# ---------------------------------------------------------------------------


class LanczosResult(NamedTuple):
  """The output of :func:`lanczos`.

  Attributes:
    alphas: ``(m,)`` diagonal of the tridiagonal matrix :math:`T_m`.
    betas: ``(m,)`` off-diagonal; ``betas[j]`` couples :math:`q_j` and
      :math:`q_{j+1}` (``betas[m-1]`` is the residual norm, not part of
      :math:`T_m`; a zero marks a breakdown where the run restarted with a
      fresh vector orthogonal to the basis).
    basis: ``(m, n)`` orthonormal Lanczos vectors :math:`q_0 \\dots q_{m-1}`.
    residual_norms: ``(m,)`` norm of the residual vector left at step ``j``
      (equal to ``betas[j]`` except at a breakdown, where ``betas[j]`` is 0):
      :math:`AQ_m = Q_mT_m + \\sum_j r_j e_j^T` with :math:`\\|r_j\\|` =
      ``residual_norms[j]`` wherever ``betas[j] == 0``, and at the last step.
  """

  alphas: jax.Array
  betas: jax.Array
  basis: jax.Array
  residual_norms: jax.Array


def _orth(basis, w):
  # Classical Gram-Schmidt twice ("twice is enough"); rows not yet filled are 0.
  w = w - basis.T @ (basis @ w)
  return w - basis.T @ (basis @ w)


def _lanczos_impl(matvec, v0, num_iters, key):
  n = v0.shape[0]
  dtype = v0.dtype
  m = num_iters
  tol = 1e3 * jnp.finfo(dtype).eps
  tiny = jnp.finfo(dtype).tiny
  q0 = v0 / jnp.linalg.norm(v0)
  basis = jnp.zeros((m + 1, n), dtype).at[0].set(q0)
  alphas = jnp.zeros((m,), dtype)
  betas = jnp.zeros((m,), dtype)
  resid = jnp.zeros((m,), dtype)

  def body(j, carry):
    basis, alphas, betas, resid = carry
    q = basis[j]
    hq = matvec(q)
    alpha = jnp.vdot(q, hq)
    w = _orth(basis, hq)
    beta = jnp.linalg.norm(w)
    # Breakdown (an invariant subspace was found): continue with a random
    # vector orthogonal to the basis and put a zero in T (block diagonal).
    broke = beta <= tol * jnp.maximum(jnp.linalg.norm(hq), tiny)
    def restart(_):
      r = _orth(basis, jax.random.normal(jax.random.fold_in(key, j), (n,), dtype))
      r_norm = jnp.linalg.norm(r)
      return r / jnp.where(r_norm > 0, r_norm, 1)

    def proceed(_):
      return w / jnp.where(beta > 0, beta, 1)

    q_next = jax.lax.cond(broke, restart, proceed, None)
    return (basis.at[j + 1].set(q_next), alphas.at[j].set(alpha),
            betas.at[j].set(jnp.where(broke, jnp.zeros_like(beta), beta)),
            resid.at[j].set(beta))

  basis, alphas, betas, resid = jax.lax.fori_loop(
      0, m, body, (basis, alphas, betas, resid))
  return LanczosResult(alphas, betas, basis[:m], resid)


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_iters: int,
    key: Optional[jax.Array] = None,
) -> LanczosResult:
  r"""Lanczos tridiagonalization of a symmetric operator, full reorthogonalization.

  Builds an orthonormal basis :math:`Q_m = [q_0,\dots,q_{m-1}]` of the Krylov
  space :math:`\mathcal K_m(A, v_0)` and the tridiagonal
  :math:`T_m = Q_m^T A Q_m`, whose eigenvalues (Ritz values) approximate the
  extreme eigenvalues of :math:`A` first. Every new vector is
  Gram-Schmidt-orthogonalized (twice) against the whole basis, so the Ritz
  values do not show spurious copies. On a breakdown (an exactly invariant
  subspace), the run continues with a random vector orthogonal to the basis:
  with ``num_iters = n`` the Ritz values are all eigenvalues of :math:`A`.

  Pure JAX (``lax.fori_loop``): call it under ``jax.jit``. Memory is
  :math:`(m+1)\,n` numbers.

  Args:
    matvec: ``v -> A v`` on flat vectors of shape ``(n,)``; ``A`` symmetric.
    v0: ``(n,)`` start vector (need not be normalized, must be nonzero).
    num_iters: number of Lanczos steps ``m`` (static), ``1 <= m <= n``.
    key: PRNG key for restarts after a breakdown.

  Returns:
    A :class:`LanczosResult` ``(alphas, betas, basis)``.
  """
  validation.check_int("num_iters", num_iters, minimum=1)
  if v0.ndim != 1:
    raise ValueError(f"lanczos: `v0` must be a flat vector, got shape {v0.shape}.")
  if num_iters > v0.shape[0]:
    raise ValueError(
        f"lanczos: `num_iters`={num_iters} exceeds the dimension {v0.shape[0]}.")
  key = _check_key(key, "lanczos")
  return _lanczos_impl(matvec, v0, num_iters, key)


def _tridiag(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
  m = alphas.shape[0]
  t = np.diag(alphas.astype(np.float64))
  if m > 1:
    off = betas[: m - 1].astype(np.float64)
    t += np.diag(off, 1) + np.diag(off, -1)
  return t


def _hessian_lanczos_impl(loss_fn, params, batch, v0, key, num_iters):
  _, unravel = ravel_pytree(params)

  def matvec(x):
    return ravel_pytree(_hvp_tree(loss_fn, params, batch, unravel(x)))[0].astype(x.dtype)

  return _lanczos_impl(matvec, v0, num_iters, key)


_hessian_lanczos_jit = jax.jit(
    _hessian_lanczos_impl, static_argnames=("loss_fn", "num_iters"))


def run_hessian_lanczos(loss_fn, params, batch, flat, num_iters, key, v0=None):
  """One jitted Lanczos run on the Hessian (inputs already validated)."""
  k_start, k_restart = jax.random.split(key)
  if v0 is None:
    v0 = jax.random.normal(k_start, flat.shape, flat.dtype)
  return _hessian_lanczos_jit(as_static(loss_fn), params, batch, v0, k_restart,
                              num_iters=num_iters)


def default_num_iters(k: int, n: int) -> int:
  return int(min(n, max(2 * k + 40, 3 * k)))


class HessianEigenResult(NamedTuple):
  """The output of :func:`hessian_eigenvalues`.

  Attributes:
    eigenvalues: ``(k,)`` float64; largest first for ``which="top"``,
      smallest first for ``which="bottom"``.
    eigenvectors: list of ``k`` unit-norm params-shaped pytrees (Ritz
      vectors), or ``None`` unless ``return_eigenvectors=True``.
    residuals: ``(k,)`` Lanczos residual bounds
      :math:`\\|H y - \\theta y\\| \\le |\\beta_m s_{m}|` (plus the
      couplings dropped at breakdowns); each Ritz value is within
      ``residual`` of an eigenvalue of :math:`H` (up to rounding).
    ritz_values: all ``num_iters`` Ritz values, ascending.
    num_iters: the number of Lanczos steps (Hessian-vector products) used.
  """

  eigenvalues: np.ndarray
  eigenvectors: Optional[list]
  residuals: np.ndarray
  ritz_values: np.ndarray
  num_iters: int


def ritz(res: LanczosResult):
  """Ritz values (ascending), eigenvectors of T, and residual bounds (NumPy)."""
  alphas = np.asarray(res.alphas, np.float64)
  betas = np.asarray(res.betas, np.float64)
  theta, s = np.linalg.eigh(_tridiag(alphas, betas))
  # ||A y - theta y|| <= sum_j |r_j| |s_j| over the dropped couplings
  # (breakdowns, betas == 0) and the last step.
  r = np.asarray(res.residual_norms, np.float64)
  dropped = np.where(betas == 0, r, 0.0)
  dropped[-1] = r[-1]
  resid = np.abs(dropped) @ np.abs(s)
  # Floor at the working precision: the bound ignores rounding errors.
  eps = float(jnp.finfo(res.alphas.dtype).eps)
  resid = np.maximum(resid, eps * float(np.max(np.abs(theta))))
  return theta, s, resid


def ritz_vector(res: LanczosResult, s_col: np.ndarray) -> jax.Array:
  basis = res.basis
  y = jnp.asarray(s_col, basis.dtype) @ basis
  return y / jnp.linalg.norm(y)


def hessian_eigenvalues(
    loss_fn: LossFn,
    params: Any,
    batch: Any = None,
    *,
    k: int = 5,
    which: str = "top",
    num_iters: Optional[int] = None,
    return_eigenvectors: bool = False,
    key: Optional[jax.Array] = None,
) -> HessianEigenResult:
  r"""Top-k or bottom-k Hessian eigenvalues by matrix-free Lanczos.

  Runs ``num_iters`` Lanczos steps on :math:`H(\theta)` using only
  Hessian-vector products (:func:`hvp`, forward-over-reverse), with full
  reorthogonalization, in one ``jax.jit``-compiled ``lax.fori_loop``. The
  Hessian is never materialized: memory is ``num_iters + 1`` parameter
  vectors. Extreme Ritz values converge first; check ``residuals`` (each
  returned value is within its residual of a true eigenvalue) and raise
  ``num_iters`` when they are not small enough.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays (the point :math:`\theta`).
    batch: the data, or ``None`` (then ``loss_fn(params)`` is called).
    k: how many eigenvalues (keyword only), ``1 <= k <= n``.
    which: ``"top"`` (largest algebraic, descending) or ``"bottom"``
      (smallest algebraic, ascending; negative curvature).
    num_iters: Lanczos steps, ``k <= num_iters <= n``; default
      ``min(n, 2k + 40)``.
    return_eigenvectors: also return the Ritz vectors as pytrees.
    key: PRNG key of the random start vector (default ``jax.random.key(0)``).

  Returns:
    A :class:`HessianEigenResult`.

  Raises:
    ValueError: non-scalar loss, batch that does not fit the model, ``k``
      larger than the number of parameters, bad ``which``/``num_iters``.

  Examples:
    >>> import jax.numpy as jnp, optzoo.diagnostics as dg
    >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1., 2., 3., 4.]) * p ** 2)
    >>> r = dg.hessian_eigenvalues(f, jnp.zeros(4), k=2)
    >>> [round(float(e), 6) for e in r.eigenvalues]
    [4.0, 3.0]

  References:
    Lanczos, `An iteration method for the solution of the eigenvalue problem
    <https://doi.org/10.6028/jres.045.026>`_, 1950; Ghorbani, Krishnan & Xiao,
    `An investigation into neural net optimization via Hessian eigenvalue
    density <https://arxiv.org/abs/1901.10159>`_, ICML 2019.
  """
  where = "hessian_eigenvalues"
  flat, unravel = check_loss(loss_fn, params, batch, where)
  n = int(flat.size)
  validation.check_int("k", k, minimum=1)
  if k > n:
    raise ValueError(
        f"{where}: `k`={k} is larger than the number of parameters ({n}).")
  validation.check_choice("which", which, ("top", "bottom"))
  if num_iters is None:
    num_iters = max(default_num_iters(k, n), k)
  validation.check_int("num_iters", num_iters, minimum=1)
  if num_iters < k:
    raise ValueError(f"{where}: `num_iters`={num_iters} must be >= k={k}.")
  if num_iters > n:
    raise ValueError(
        f"{where}: `num_iters`={num_iters} exceeds the number of parameters"
        f" ({n}); use num_iters <= {n} (num_iters = {n} is exact).")
  key = _check_key(key, where)
  res = run_hessian_lanczos(loss_fn, params, batch, flat, num_iters, key)
  theta, s, resid = ritz(res)
  idx = np.argsort(-theta)[:k] if which == "top" else np.argsort(theta)[:k]
  vecs = None
  if return_eigenvectors:
    vecs = [unravel(ritz_vector(res, s[:, i])) for i in idx]
  return HessianEigenResult(
      eigenvalues=theta[idx], eigenvectors=vecs, residuals=resid[idx],
      ritz_values=theta, num_iters=num_iters)


# ---------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
  """A Hessian eigenvalue density estimate (stochastic Lanczos quadrature).

  Attributes:
    grid: ``(num_points,)`` eigenvalue axis.
    density: ``(num_points,)`` Gaussian-broadened density on ``grid``; it
      integrates to about 1 (a probability density of eigenvalues).
    nodes: ``(num_probes, num_iters)`` quadrature nodes (Ritz values).
    weights: ``(num_probes, num_iters)`` quadrature weights (each row sums
      to 1): the spectral measure of probe ``v`` is ``sum_i w_i delta(x -
      nodes_i)``, exact for polynomials of degree ``< 2 num_iters``.
    sigma: the Gaussian broadening width.
    num_params: the Hessian's dimension ``n``.
  """

  grid: np.ndarray
  density: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  sigma: float
  num_params: int

  def fraction_above(self, threshold: float = 0.0) -> float:
    """Estimated fraction of eigenvalues ``> threshold`` (from the nodes)."""
    return float(np.mean(np.sum(self.weights * (self.nodes > threshold), axis=1)))

  def trace(self) -> float:
    """Hutchinson-style estimate of ``tr(H)``."""
    return float(self.num_params * np.mean(np.sum(self.weights * self.nodes, axis=1)))

  def plot(self, ax=None, log: bool = True):
    """Plots the density (log scale by default); returns the axes."""
    plt = optional.import_optional("matplotlib.pyplot", "SpectralDensity.plot")
    if ax is None:
      _, ax = plt.subplots()
    y = np.maximum(self.density, 1e-12) if log else self.density
    ax.plot(self.grid, y)
    if log:
      ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    return ax


def hessian_spectral_density(
    loss_fn: LossFn,
    params: Any,
    batch: Any = None,
    *,
    num_iters: int = 30,
    num_probes: int = 4,
    num_points: int = 512,
    sigma: Optional[float] = None,
    grid: Optional[np.ndarray] = None,
    key: Optional[jax.Array] = None,
) -> SpectralDensity:
  r"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

  For each of ``num_probes`` Rademacher probes :math:`v` (unit norm),
  ``num_iters`` Lanczos steps give Ritz values :math:`\theta_i` and weights
  :math:`\tau_i = (e_1^T s_i)^2`, a Gauss quadrature of the spectral measure
  of :math:`v`: :math:`v^T f(H) v \approx \sum_i \tau_i f(\theta_i)`. The
  density is the probe average of Gaussian-broadened quadratures,

  .. math::
    \phi(t) = \frac{1}{P}\sum_{p=1}^{P}\sum_{i=1}^{m} \tau_i^{(p)}
      \frac{1}{\sigma\sqrt{2\pi}}
      \exp\Big(-\frac{(t - \theta_i^{(p)})^2}{2\sigma^2}\Big).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: any pytree of float arrays.
    batch: the data, or ``None``.
    num_iters: Lanczos steps per probe (at most the parameter count).
    num_probes: number of random probes.
    num_points: grid size when ``grid`` is not given.
    sigma: Gaussian broadening; default 1% of the spectral range.
    grid: eigenvalue grid; default spans the Ritz values +- 5% of the range.
    key: PRNG key (default ``jax.random.key(0)``).

  Returns:
    A :class:`SpectralDensity`.

  References:
    Ghorbani, Krishnan & Xiao, `An investigation into neural net optimization
    via Hessian eigenvalue density <https://arxiv.org/abs/1901.10159>`_, ICML
    2019; Lin, Saad & Yang, `Approximating spectral densities of large
    matrices <https://arxiv.org/abs/1308.5467>`_, SIAM Review 2016.
  """
  where = "hessian_spectral_density"
  flat, _ = check_loss(loss_fn, params, batch, where)
  n = int(flat.size)
  validation.check_int("num_iters", num_iters, minimum=1)
  if num_iters > n:
    raise ValueError(
        f"{where}: `num_iters`={num_iters} exceeds the number of parameters ({n}).")
  validation.check_int("num_probes", num_probes, minimum=1)
  validation.check_int("num_points", num_points, minimum=2)
  if sigma is not None:
    validation.check_positive("sigma", sigma)
  key = _check_key(key, where)
  nodes, weights = [], []
  for p in range(num_probes):
    kp = jax.random.fold_in(key, p)
    k_probe, k_run = jax.random.split(kp)
    v0 = jax.random.rademacher(k_probe, flat.shape, flat.dtype)
    res = run_hessian_lanczos(loss_fn, params, batch, flat, num_iters, k_run, v0=v0)
    theta, s, _ = ritz(res)
    nodes.append(theta)
    weights.append(s[0, :] ** 2)
  nodes = np.stack(nodes)
  weights = np.stack(weights)
  lo, hi = float(nodes.min()), float(nodes.max())
  span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
  if sigma is None:
    sigma = 0.01 * span
  if grid is None:
    grid = np.linspace(lo - 0.05 * span - 3 * sigma, hi + 0.05 * span + 3 * sigma,
                       num_points)
  grid = np.asarray(grid, np.float64)
  z = (grid[None, None, :] - nodes[:, :, None]) / sigma
  gauss = np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
  density = np.mean(np.sum(weights[:, :, None] * gauss, axis=1), axis=0)
  return SpectralDensity(grid=grid, density=density, nodes=nodes, weights=weights,
                         sigma=float(sigma), num_params=n)
