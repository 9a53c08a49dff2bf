"""Look before you tune: loss-landscape and training diagnostics for JAX models.

* Curvature: :func:`hvp` / :func:`make_hvp_fn` (forward-over-reverse
  Hessian-vector products on pytrees), :func:`dense_hessian` (small models),
  :func:`hessian_eigenvalues` (matrix-free Lanczos, top-k / bottom-k),
  :func:`hessian_spectral_density` (stochastic Lanczos quadrature),
  :func:`lanczos` (the raw algorithm for any symmetric operator).
* Critical points: :func:`classify_critical_point` (local minimum / maximum /
  saddle point, with the escape direction), :func:`minimum_ratio`.
* Flatness: :func:`sharpness` (top eigenvalue, worst-case and random loss
  increase at radius rho), :func:`local_entropy_flatness`.
* Training: :func:`monitor_norms` (an ``optax`` transformation recording
  gradient/update norms and the loss in its state; :func:`norm_history`
  reads them back), :func:`batch_size_experiment`.

>>> import jax.numpy as jnp, optzoo.diagnostics as dg
>>> dg.classify_critical_point(lambda p: p["x"]**2 - p["y"]**2,
...                            {"x": 0.0, "y": 0.0}).label
'saddle point'
"""
from optzoo._src.diagnostics.batch_size import BatchSizeReport
from optzoo._src.diagnostics.batch_size import BatchSizeRun
from optzoo._src.diagnostics.batch_size import batch_size_experiment
from optzoo._src.diagnostics.batch_size import scaled_learning_rate
from optzoo._src.diagnostics.hessian import HessianEigenResult
from optzoo._src.diagnostics.hessian import LanczosResult
from optzoo._src.diagnostics.hessian import SpectralDensity
from optzoo._src.diagnostics.hessian import dense_hessian
from optzoo._src.diagnostics.hessian import hessian_eigenvalues
from optzoo._src.diagnostics.hessian import hessian_spectral_density
from optzoo._src.diagnostics.hessian import hvp
from optzoo._src.diagnostics.hessian import lanczos
from optzoo._src.diagnostics.hessian import make_hvp_fn
from optzoo._src.diagnostics.landscape import CriticalPoint
from optzoo._src.diagnostics.landscape import FlatnessResult
from optzoo._src.diagnostics.landscape import SharpnessResult
from optzoo._src.diagnostics.landscape import classify_critical_point
from optzoo._src.diagnostics.landscape import local_entropy_flatness
from optzoo._src.diagnostics.landscape import minimum_ratio
from optzoo._src.diagnostics.landscape import sharpness
from optzoo._src.diagnostics.monitor import MonitorNormsState
from optzoo._src.diagnostics.monitor import NormHistory
from optzoo._src.diagnostics.monitor import find_monitor_states
from optzoo._src.diagnostics.monitor import monitor_norms
from optzoo._src.diagnostics.monitor import norm_history

__all__ = [
    "BatchSizeReport",
    "BatchSizeRun",
    "CriticalPoint",
    "FlatnessResult",
    "HessianEigenResult",
    "LanczosResult",
    "MonitorNormsState",
    "NormHistory",
    "SharpnessResult",
    "SpectralDensity",
    "batch_size_experiment",
    "classify_critical_point",
    "dense_hessian",
    "find_monitor_states",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hvp",
    "lanczos",
    "local_entropy_flatness",
    "make_hvp_fn",
    "minimum_ratio",
    "monitor_norms",
    "norm_history",
    "scaled_learning_rate",
    "sharpness",
]

#  / Please don't use symbols in `_src`: they \
#  \ are not part of the optzoo public API.   /
