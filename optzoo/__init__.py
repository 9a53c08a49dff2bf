"""optzoo: the optimizer zoo for JAX.

Every method is a small, composable ``optax.GradientTransformation``.

>>> import optzoo, optax
>>> tx = optzoo.adam(1e-3)                       # = torch.optim.Adam numerics
>>> tx = optax.chain(optzoo.scale_by_rms(0.99), optzoo.trace(0.9),
...                  optzoo.scale_by_learning_rate(1e-2))  # RMSProp + momentum
"""

__version__ = "0.1.0"

# Composable primitives.
from optzoo._src.transform import add_decayed_weights
from optzoo._src.transform import add_l2
from optzoo._src.transform import rectify
from optzoo._src.transform import scale_by_adagrad
from optzoo._src.transform import scale_by_adam
from optzoo._src.transform import scale_by_bounds
from optzoo._src.transform import scale_by_learning_rate
from optzoo._src.transform import scale_by_nadam
from optzoo._src.transform import scale_by_radam
from optzoo._src.transform import scale_by_rms
from optzoo._src.transform import trace

# Team SGD and Team Adam.
from optzoo._src.alias import adabound
from optzoo._src.alias import adagrad
from optzoo._src.alias import adam
from optzoo._src.alias import adamw
from optzoo._src.alias import amsgrad
from optzoo._src.alias import nadam
from optzoo._src.alias import nag
from optzoo._src.alias import radam
from optzoo._src.alias import rmsprop
from optzoo._src.alias import sgd
from optzoo._src.alias import sgdw

# Training dynamics (schedules, wrappers, tools), research methods.
from optzoo._src.dynamics import *  # noqa: F401,F403
from optzoo._src.dynamics import __all__ as _dynamics_all
from optzoo._src.research import *  # noqa: F401,F403
from optzoo._src.research import __all__ as _research_all
from optzoo._src.perf import *  # noqa: F401,F403
from optzoo._src.perf import __all__ as _perf_all
from optzoo._src.reliability import *  # noqa: F401,F403
from optzoo._src.reliability import __all__ as _reliability_all
from optzoo._src.communication import *  # noqa: F401,F403
from optzoo._src.communication import __all__ as _communication_all

# Registry.
from optzoo._src.base import MethodInfo
from optzoo._src.registry import list_optimizers
from optzoo._src.registry import get_info

from optzoo import diagnostics  # noqa: E402  (public submodule)
from optzoo import schedules  # noqa: E402  (public submodule)
from optzoo.diagnostics import monitor_norms

__all__ = [
    "MethodInfo",
    "diagnostics",
    "monitor_norms",
    "adabound",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "add_l2",
    "amsgrad",
    "get_info",
    "list_optimizers",
    "nadam",
    "nag",
    "radam",
    "rectify",
    "rmsprop",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_bounds",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "schedules",
    "sgd",
    "sgdw",
    "trace",
] + list(_dynamics_all) + list(_research_all) + list(_perf_all) + list(
    _reliability_all) + list(_communication_all)

#  / Please don't use symbols in `_src`: they \
#  \ are not part of the optzoo public API.   /
